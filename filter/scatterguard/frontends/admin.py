"""``scatterguard quarantine list|show|release|delete|purge``: what an administrator sees.

Presentation only: the work is the configured store's
(:func:`scatterguard.actions.quarantine.backends.open_store`, behind the
:class:`~scatterguard.actions.ports.QuarantineStore` port) and the release's
(:mod:`scatterguard.actions.quarantine.release`). The command functions take the store and output
streams, know nothing of argparse, and return 0 on success and 1 on failure with one line on
``err`` per problem. Everything they print that came from a message or an envelope is escaped
(:func:`scatterguard.core.terminal.printable`), so no control character reaches the terminal;
``list --json`` escapes everything beyond ASCII.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from scatterguard.actions.quarantine.entry import format_time
from scatterguard.actions.quarantine.release import ReleasedNotRemoved
from scatterguard.actions.quarantine.release import release as release_entry
from scatterguard.core.message import Message
from scatterguard.core.terminal import printable
from scatterguard.errors import QuarantineError, UsageError

if TYPE_CHECKING:
    from scatterguard.actions.ports import QuarantineStore, Reinjector


def main(
    config_path: str | None,
    command: str,
    *,
    entry_id: str | None = None,
    as_json: bool = False,
    older_than: float | None = None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run one quarantine command against the configured store; return its exit code."""
    from scatterguard import config as config_mod
    from scatterguard.actions.quarantine.backends import open_store

    config = config_mod.load(config_path)
    store = open_store(config)
    if command == "list":
        return list_entries(store, as_json=as_json, out=out, err=err)
    if command == "purge":
        days = older_than if older_than is not None else config.quarantine.purge_after_days
        code = purge(store, days, out, err=err)
        # This host's delivery record, in the state directory, keeps its own age (KEEP_HOURS);
        # the store's purge above prunes the one 0.1.0 kept in the quarantine directory.
        from scatterguard import services

        refused = services.delivery_record(config).prune()
        for problem in refused:
            _fail(err, f"purge: {problem.removeprefix('quarantine: ')}")
        return 1 if refused else code
    if entry_id is None:
        raise UsageError(f"quarantine {command} needs an ID")
    if command == "show":
        return show(store, entry_id, out, err)
    if command == "release":
        from scatterguard.actions.reinject import CommandReinjector

        reinjector = CommandReinjector(config.reinject.command, config.reinject.timeout)
        return release(store, entry_id, reinjector, out, err)
    if command == "delete":
        return delete(store, entry_id, out, err)
    raise UsageError(f"no quarantine command {command!r}")


def _fail(err: TextIO | None, exc: Exception | str) -> int:
    stream = sys.stderr if err is None else err
    stream.write(printable(str(exc).replace("\n", " ")) + "\n")
    return 1


def _sender(text: str) -> str:
    return printable(text) if text else "<>"


def _short_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def list_entries(
    store: QuarantineStore, *, as_json: bool, out: TextIO, err: TextIO | None = None
) -> int:
    """Print the entries, oldest first: a JSON array, or an aligned table for people."""
    try:
        scan = store.scan()
    except QuarantineError as exc:
        return _fail(err, exc)
    for name in scan.unreadable:
        _fail(err, f"quarantine: entry {name} is unreadable; skipped")
    if as_json:
        # ensure_ascii: every control character (and all else beyond ASCII) is escaped.
        json.dump([entry.as_json() for entry in scan.entries], out, indent=2, ensure_ascii=True)
        out.write("\n")
        return 0
    if not scan.entries:
        out.write("The quarantine is empty.\n")
        return 0
    rows = [("ID", "RECEIVED (UTC)", "SENDER", "RECIPIENTS", "REASONS")]
    for entry in scan.entries:
        meta = entry.metadata
        recipients = _clip(printable(meta.recipients[0]), 40) if meta.recipients else "-"
        if len(meta.recipients) > 1:
            recipients += f" (+{len(meta.recipients) - 1})"
        rows.append(
            (
                entry.id,
                _short_time(entry.received),
                _clip(_sender(meta.sender), 40),
                recipients,
                printable("; ".join(meta.reasons)) or "-",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[4]]).rstrip() + "\n")
    return 0


def show(store: QuarantineStore, entry_id: str, out: TextIO, err: TextIO | None = None) -> int:
    """Print an entry's metadata and its message's header section (never the body)."""
    try:
        entry, data = store.get(entry_id)
    except QuarantineError as exc:
        return _fail(err, exc)
    meta = entry.metadata
    lines = [
        f"id:          {entry.id}",
        f"received:    {format_time(entry.received)}",
        f"sender:      {_sender(meta.sender)}",
        f"recipients:  {', '.join(printable(r) for r in meta.recipients) or '-'}",
        f"client:      {printable(meta.client_address or '-')}",
        f"helo:        {printable(meta.helo or '-')}",
        f"queue id:    {printable(meta.queue_id or '-')}",
        f"action:      {printable(meta.action)}",
        f"verified:    {'yes' if meta.reverse_path_verified else 'no'} (reverse-path)",
        f"size:        {entry.size} bytes",
        "reasons:",
        *(f"  - {printable(reason)}" for reason in meta.reasons),
        f"Authentication-Results: {printable(meta.authentication_results) or '-'}",
        "",
    ]
    message = Message(data)
    header_section = data[: message.body_offset]
    for raw in header_section.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if not line:
            continue
        # Folded continuation lines start with a tab: show it as the spaces a terminal would.
        text = line.decode("utf-8", "backslashreplace").expandtabs(8)
        lines.append(printable(text))
    out.write("\n".join(lines) + "\n")
    return 0


def release(
    store: QuarantineStore,
    entry_id: str,
    reinjector: Reinjector,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Re-inject an entry with its original envelope; it is removed only once that succeeded."""
    try:
        entry = release_entry(store, entry_id, reinjector)
    except ReleasedNotRemoved as exc:
        # The message is on its way; a second release would deliver it twice.
        return _fail(
            err,
            f"{exc}; remove it with 'scatterguard quarantine delete {exc.entry_id}',"
            " do not release it again",
        )
    except QuarantineError as exc:
        return _fail(err, exc)
    meta = entry.metadata
    out.write(
        f"released {entry.id} from {_sender(meta.sender)} to {len(meta.recipients)} recipient(s)\n"
    )
    return 0


def delete(store: QuarantineStore, entry_id: str, out: TextIO, err: TextIO | None = None) -> int:
    """Remove an entry without delivering it."""
    try:
        with store.locked(entry_id):
            store.delete(entry_id)
    except QuarantineError as exc:
        return _fail(err, exc)
    out.write(f"deleted {entry_id}\n")
    return 0


def purge(
    store: QuarantineStore,
    older_than_days: float,
    out: TextIO,
    now: datetime | None = None,
    err: TextIO | None = None,
) -> int:
    """Remove entries received more than ``older_than_days`` days before ``now``."""
    if not math.isfinite(older_than_days) or older_than_days < 0:
        return _fail(err, f"purge: {older_than_days!r} is not a number of days")
    try:
        purged = store.purge(timedelta(days=older_than_days), now)
    except (QuarantineError, OverflowError) as exc:
        return _fail(err, exc)
    for problem in purged.refused:
        _fail(err, f"purge: {problem.removeprefix('quarantine: ')}")
    noun = "entry" if purged.removed == 1 else "entries"
    out.write(f"purged {purged.removed} {noun} older than {older_than_days:g} days\n")
    return 1 if purged.refused else 0
