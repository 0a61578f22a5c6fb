"""The quarantine store, and the functions behind ``scatterguard quarantine ...``.

The store owns one directory (``quarantine.directory``, mode 0700) laid out like a Maildir::

    <directory>/tmp/            entries being written; never read as entries
    <directory>/<id>            one complete entry per file, mode 0600

Nothing else lives here: the spool and the delivery record are host-local, in the state
directory (:mod:`scatterguard.services`), so the quarantine can be shared without them. A
``delivered/`` left by version 0.1.0 is read by the delivery record and pruned by
:meth:`Store.purge` until it is empty.

An entry file is one line of JSON metadata (ASCII, so it holds no raw newline), a ``\\n``, and then
the message bytes exactly as the MTA handed them to us: before our Authentication-Results header
was prepended (its value is in the metadata) and never re-serialised. The metadata carries the
envelope (``sender`` is ``""`` for the null reverse-path), the client address, HELO, queue id, the
decision and its reasons, the A-R value, the time received (ISO 8601, UTC), and the size and
SHA-256 of the message bytes, which :meth:`Store.get` checks.

Crash safety (the Maildir delivery protocol): an entry is written to a uniquely named file in
``tmp/``, fsynced, renamed to its final name, and the directory is fsynced. A crash at any point
leaves either no entry or a complete one; a stale file in ``tmp/`` is never listed and is
removed by :meth:`Store.purge` once it is older than 36 hours (as Maildir readers do). A failed
write raises :class:`~scatterguard.errors.QuarantineError` and removes its temporary file.

Ids: nothing from the message or the envelope becomes a path. An entry's id is the first 128 bits
(32 hex digits) of a SHA-256 over the queue id, the sender, the recipients and the digest of the
message bytes, so a retried delivery of the same queue id finds its entry instead of adding a
second one, while a message that the MTA splits into several deliveries (one queue id, different
recipients) gets one entry per delivery and loses none. Ids given on the command line are checked
against ``^[0-9a-f]{32}$`` before any path is built from them.

Links and other users' files: ``quarantine`` commands may run as root on a store that belongs to
the filter's user, so no part of the store is ever reached through a path resolved again: each
is opened with ``O_NOFOLLOW`` relative to its directory's descriptor and checked on that
descriptor (:mod:`scatterguard.actions.safedir`). A link, or a part owned by neither the store's
owner nor root, is refused (:class:`~scatterguard.actions.safedir.UnsafeStore`): the filter defers,
``purge`` leaves that part alone, purges the rest and exits 1 naming it.

The command functions (``list_entries``, ``show``, ``release``, ``delete``, ``purge``) take the
store and output streams, know nothing of argparse, and return 0 on success and 1 on failure with
one line on ``err``. Everything they print that came from a message or an envelope is escaped, so
no control character reaches the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BufferedReader
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from scatterguard.actions import spool
from scatterguard.actions.safedir import Directory, UnsafeStore
from scatterguard.core import authresults
from scatterguard.core.message import Message, Payload, Spooled
from scatterguard.errors import QuarantineError, ReinjectError

if TYPE_CHECKING:
    from scatterguard.actions.reinject import Reinjector
    from scatterguard.core.envelope import Envelope
    from scatterguard.core.verdict import Decision

FORMAT = 1
ID_LENGTH = 32
_ID = re.compile(r"[0-9a-f]{32}\Z")
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# Maildir readers remove files left in tmp/ for 36 hours: a writer never takes that long.
STALE_TMP = timedelta(hours=36)
# RFC 5322 §2.2: a header field body we prepend must be printable US-ASCII.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+\Z")


class NotFound(QuarantineError):
    """No entry has the given id."""


@dataclass(frozen=True)
class Metadata:
    """What the store keeps about a message besides its bytes."""

    sender: str  # "" is the null reverse-path
    recipients: tuple[str, ...]
    client_address: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    action: str = "quarantine"
    reverse_path_verified: bool = False
    reasons: tuple[str, ...] = ()
    authentication_results: str = ""

    @classmethod
    def from_decision(
        cls, envelope: Envelope, decision: Decision, authentication_results: str
    ) -> Metadata:
        """The metadata of a message the filter decided to quarantine."""
        return cls(
            sender=envelope.sender_text,
            recipients=tuple(envelope.recipients),
            client_address=str(envelope.client_address) if envelope.client_address else None,
            helo=envelope.helo,
            queue_id=envelope.queue_id,
            action=str(decision.action),
            reverse_path_verified=decision.reverse_path_verified,
            reasons=tuple(decision.reasons),
            authentication_results=authentication_results,
        )


@dataclass(frozen=True)
class Entry:
    """One stored message's id and metadata (its bytes come from :meth:`Store.get`)."""

    id: str
    received: datetime  # aware, UTC
    size: int
    sha256: str
    metadata: Metadata

    def as_json(self) -> dict[str, Any]:
        """The object ``quarantine list --json`` prints for this entry."""
        meta = self.metadata
        return {
            "id": self.id,
            "received": format_time(self.received),
            "sender": meta.sender,
            "recipients": list(meta.recipients),
            "client_address": meta.client_address,
            "helo": meta.helo,
            "queue_id": meta.queue_id,
            "action": meta.action,
            "reverse_path_verified": meta.reverse_path_verified,
            "reasons": list(meta.reasons),
            "authentication_results": meta.authentication_results,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Scan:
    """The entries found in the store, oldest first, and the files that could not be read."""

    entries: list[Entry]
    unreadable: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the microsecond (entries sort by it)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def valid_id(entry_id: str) -> bool:
    """True when ``entry_id`` has the shape of an id; only such ids ever become paths."""
    return bool(_ID.match(entry_id))


def entry_id(metadata: Metadata, data: bytes | Spooled) -> str:
    """The deterministic id of a message and its envelope (see the module docstring)."""
    return _entry_id(metadata, spool.sha256(data))


def _entry_id(metadata: Metadata, digest: str) -> str:
    # JSON of a list is an unambiguous encoding: no value can shift into its neighbour.
    key = json.dumps(
        [
            FORMAT,
            metadata.queue_id or "",
            metadata.sender,
            list(metadata.recipients),
            digest,
        ]
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:ID_LENGTH]


class Store:
    """A crash-safe directory of quarantined messages."""

    def __init__(self, directory: Path | str, clock: Callable[[], datetime] = _utcnow) -> None:
        # Nothing touches the disk here: the filter builds a store for every message, and only
        # a message that is quarantined needs the directory.
        self.directory = Path(directory)
        self.tmp = self.directory / "tmp"
        self.clock = clock

    def now(self) -> datetime:
        """The store's clock, as an aware UTC datetime (a naive value is taken as UTC)."""
        return _utc(self.clock())

    # ---- writing -------------------------------------------------------------------------

    def add(
        self,
        data: bytes | Spooled,
        envelope: Envelope,
        decision: Decision,
        authentication_results: str,
    ) -> str:
        """Quarantine a message the filter decided on; return its id (see :meth:`put`)."""
        return self.put(Metadata.from_decision(envelope, decision, authentication_results), data).id

    def put(self, metadata: Metadata, data: bytes | Spooled) -> Entry:
        """Store a message durably and return its entry; an existing entry is returned as is.

        A spooled message is copied from its file, never read into memory. Raises
        QuarantineError when the entry cannot be written; then nothing is left behind.
        """
        try:
            digest = spool.sha256(data)
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot read the spool file: {_reason(exc)}"
            ) from None
        new_id = _entry_id(metadata, digest)
        with Directory.create_root(self.directory) as root, root.make("tmp") as tmp:
            try:
                existing: Entry | None = self._verified(root, new_id)
            except NotFound:
                existing = None
            except UnsafeStore:
                raise
            except QuarantineError:
                # A damaged entry under this id: the rename below replaces it with a good copy.
                existing = None
            if existing is not None:
                # A retried delivery. The earlier attempt may have died between its rename and
                # its directory fsync, so make the entry durable before the MTA forgets it.
                root.sync()
                return existing
            entry = Entry(
                id=new_id,
                received=self.now(),
                size=spool.size(data),
                sha256=digest,
                metadata=metadata,
            )
            head = json.dumps(_to_record(entry), ensure_ascii=True, separators=(",", ":"))
            self._write(root, tmp, new_id, head.encode("ascii") + b"\n", data)
        return entry

    def _write(
        self, root: Directory, tmp: Directory, final: str, head: bytes, data: bytes | Spooled
    ) -> None:
        """Maildir delivery: tmp file, write, fsync, rename into place, fsync the directory."""
        # The temporary name is ours alone: time, process and randomness, nothing from the mail.
        name = f"{time.time_ns()}.{os.getpid()}.{secrets.token_hex(8)}"
        try:
            fd = tmp.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot create a file in {self.tmp}: {_reason(exc)}"
            ) from None
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                _write_all(fd, head)
                if not isinstance(data, bytes):
                    _copy_file(data.fileno(), fd, data.size)
                else:
                    _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.rename_into(name, root, final)
        except BaseException as exc:
            # Also on the filter's deadline alarm (a BaseException): leave no partial file.
            with contextlib.suppress(OSError):
                tmp.unlink(name)
            if isinstance(exc, OSError):
                raise QuarantineError(
                    f"quarantine: cannot write an entry in {self.directory}: {_reason(exc)}"
                ) from None
            raise
        root.sync()

    # ---- reading -------------------------------------------------------------------------

    def _root(self) -> Directory:
        """The store directory, open and checked; FileNotFoundError when there is none."""
        try:
            return Directory.root(self.directory)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot read directory {self.directory}: {_reason(exc)}"
            ) from None

    def _entry_root(self, entry_id: str) -> Directory:
        """The store directory for a command on one entry; no store means no such entry."""
        self._check_id(entry_id)
        try:
            return self._root()
        except FileNotFoundError:
            raise NotFound(f"quarantine: no entry {entry_id}") from None

    def scan(self) -> Scan:
        """All entries, oldest first; a missing store is an empty one."""
        entries: list[Entry] = []
        unreadable: list[str] = []
        try:
            root = self._root()
        except FileNotFoundError:
            return Scan(entries, unreadable)
        with root:
            for name in self._names(root):
                try:
                    entries.append(self._entry(root, name))
                except NotFound:
                    continue  # deleted while we were looking
                except QuarantineError:
                    unreadable.append(name)
        entries.sort(key=lambda e: (e.received, e.id))
        return Scan(entries, unreadable)

    def entries(self) -> list[Entry]:
        """All readable entries, oldest first."""
        return self.scan().entries

    def _names(self, root: Directory) -> list[str]:
        try:
            names = root.names()
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot read directory {self.directory}: {_reason(exc)}"
            ) from None
        # Only names that have the shape of an id are entries: tmp/, lost+found, editor
        # backups and anything else an administrator put there are not.
        return [name for name in names if valid_id(name)]

    @staticmethod
    def _check_id(entry_id: str) -> None:
        if not valid_id(entry_id):
            raise NotFound(
                f"quarantine: '{_printable(entry_id)}' is not a quarantine id (32 hex digits)"
            )

    def entry(self, entry_id: str) -> Entry:
        """The metadata of one entry (the message bytes are not read)."""
        with self._entry_root(entry_id) as root:
            return self._entry(root, entry_id)

    def _entry(self, root: Directory, entry_id: str) -> Entry:
        path = self.directory / entry_id
        try:
            with _open(root, entry_id) as handle:
                head = handle.readline()
                total = os.fstat(handle.fileno()).st_size
        except FileNotFoundError:
            raise NotFound(f"quarantine: no entry {entry_id}") from None
        except OSError as exc:
            raise QuarantineError(f"quarantine: cannot read {path}: {_reason(exc)}") from None
        entry = _from_record(entry_id, head, path)
        # A cheap check that catches a truncated entry without reading the message.
        if total != len(head) + entry.size:
            raise QuarantineError(f"quarantine: {path} is damaged (its size is wrong)")
        return entry

    def verified(self, entry_id: str) -> Entry:
        """One entry, its message checked as :meth:`get` does, but read in chunks, not kept."""
        with self._entry_root(entry_id) as root:
            return self._verified(root, entry_id)

    def _verified(self, root: Directory, entry_id: str) -> Entry:
        path = self.directory / entry_id
        try:
            with _open(root, entry_id) as handle:
                head = handle.readline()
                size = os.fstat(handle.fileno()).st_size - len(head)
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except FileNotFoundError:
            raise NotFound(f"quarantine: no entry {entry_id}") from None
        except OSError as exc:
            raise QuarantineError(f"quarantine: cannot read {path}: {_reason(exc)}") from None
        entry = _from_record(entry_id, head.rstrip(b"\n"), path)
        if size != entry.size or digest != entry.sha256:
            raise QuarantineError(f"quarantine: {path} is damaged (size or digest differs)")
        return entry

    def get(self, entry_id: str) -> tuple[Entry, bytes]:
        """One entry and its message bytes, checked against the stored size and digest."""
        path = self.directory / entry_id
        with self._entry_root(entry_id) as root:
            try:
                with _open(root, entry_id) as handle:
                    content = handle.read()
            except FileNotFoundError:
                raise NotFound(f"quarantine: no entry {entry_id}") from None
            except OSError as exc:
                raise QuarantineError(f"quarantine: cannot read {path}: {_reason(exc)}") from None
        head, _, data = content.partition(b"\n")
        entry = _from_record(entry_id, head, path)
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise QuarantineError(f"quarantine: {path} is damaged (size or digest differs)")
        return entry, data

    @contextlib.contextmanager
    def locked(self, entry_id: str) -> Iterator[None]:
        """Hold one entry exclusively (release, delete) for the block, or raise at once.

        Two administrators releasing the same entry at the same moment would otherwise both
        re-inject it. The lock is an flock on the entry's own file, taken without waiting: a
        second release is refused while the first runs, and once the first has removed the
        entry the second finds it gone (the lock is checked to be on the file still named so).
        """
        path = self.directory / entry_id
        with self._entry_root(entry_id) as root:
            try:
                fd = root.open(entry_id, os.O_RDONLY)
            except FileNotFoundError:
                raise NotFound(f"quarantine: no entry {entry_id}") from None
            except OSError as exc:
                raise QuarantineError(f"quarantine: cannot open {path}: {_reason(exc)}") from None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise QuarantineError(
                        f"quarantine: entry {entry_id} is being released or deleted by another"
                        " process"
                    ) from None
                try:
                    same = root.lstat(entry_id).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    raise NotFound(f"quarantine: no entry {entry_id}")
                yield
            finally:
                os.close(fd)

    # ---- removing ------------------------------------------------------------------------

    def delete(self, entry_id: str) -> None:
        """Remove one entry durably (a link or a third user's file in its place is refused)."""
        with self._entry_root(entry_id) as root:
            self._delete(root, entry_id)

    def _delete(self, root: Directory, entry_id: str) -> None:
        path = self.directory / entry_id
        try:
            root.check(entry_id, root.lstat(entry_id))
            root.unlink(entry_id)
        except FileNotFoundError:
            raise NotFound(f"quarantine: no entry {entry_id}") from None
        except OSError as exc:
            raise QuarantineError(f"quarantine: cannot remove {path}: {_reason(exc)}") from None
        root.sync()

    def purge(self, older_than: timedelta, now: datetime | None = None) -> Purged:
        """Remove entries received more than ``older_than`` before ``now``.

        Stale files in tmp/ (older than 36 hours, left by a crash) are removed too, uncounted,
        and so are the old markers and lock files of the delivery record version 0.1.0 kept here
        (:mod:`scatterguard.actions.delivery`; today's is in the state directory). A part of
        the store that is a link or a third user's is left alone and reported in the result
        (the store directory itself: UnsafeStore); everything else is still purged.
        """
        moment = self.now() if now is None else _utc(now)
        cutoff = moment - older_than
        refused: list[str] = []
        try:
            root = self._root()
        except FileNotFoundError:
            return Purged(0, ())
        with root:
            removed = self._purge_entries(root, cutoff, refused)
            self._purge_tmp(root, moment, refused)
            from scatterguard.actions import (
                delivery as delivered,  # only a purge needs the delivery record
            )

            refused.extend(delivered.prune_store(root, moment.timestamp()))
        return Purged(removed, tuple(refused))

    def _purge_entries(self, root: Directory, cutoff: datetime, refused: list[str]) -> int:
        removed = 0
        for name in self._names(root):
            try:
                entry = self._entry(root, name)
            except UnsafeStore as exc:
                refused.append(str(exc))
                continue
            except QuarantineError:
                continue  # gone, or damaged: `list` reports it, `delete` removes it
            if entry.received < cutoff:
                try:
                    self._delete(root, entry.id)
                except NotFound:
                    continue
                except UnsafeStore as exc:
                    refused.append(str(exc))
                    continue
                removed += 1
        return removed

    def _purge_tmp(self, root: Directory, moment: datetime, refused: list[str]) -> None:
        limit = (moment - STALE_TMP).timestamp()
        try:
            tmp = root.sub("tmp")
        except FileNotFoundError:
            return
        except UnsafeStore as exc:
            refused.append(str(exc))
            return
        except OSError as exc:
            raise QuarantineError(f"quarantine: cannot read {self.tmp}: {_reason(exc)}") from None
        with tmp:
            try:
                names = tmp.names()
            except OSError as exc:
                raise QuarantineError(
                    f"quarantine: cannot read {self.tmp}: {_reason(exc)}"
                ) from None
            for name in names:
                try:
                    info = tmp.lstat(name)
                    if stat.S_ISDIR(info.st_mode) or info.st_mtime >= limit:
                        continue
                    tmp.check(name, info)
                    tmp.unlink(name)
                except FileNotFoundError:
                    continue
                except UnsafeStore as exc:
                    refused.append(str(exc))
                except OSError as exc:
                    raise QuarantineError(
                        f"quarantine: cannot remove {self.tmp / name}: {_reason(exc)}"
                    ) from None


@dataclass(frozen=True)
class Purged:
    """What a purge did: how many entries it removed, and the parts it refused (and why)."""

    removed: int
    refused: tuple[str, ...] = ()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_file(source: int, target: int, count: int) -> None:
    """Append ``count`` bytes from the start of ``source`` to ``target``, in the kernel."""
    offset = 0
    use_copy_file_range = True
    while offset < count:
        if use_copy_file_range:
            try:
                copied = os.copy_file_range(source, target, count - offset, offset)
            except OSError as exc:
                # Not between these file systems (EXDEV) or not at all: sendfile instead.
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_copy_file_range = False
                continue
        else:
            copied = os.sendfile(target, source, offset, count - offset)
        if copied == 0:
            raise OSError(errno.EIO, "the spool file is shorter than the message")
        offset += copied


def _open(root: Directory, entry_id: str) -> BufferedReader:
    """Open an entry for reading, never through a link and never a third user's file.

    The store belongs to the filter's user while ``quarantine show``/``release`` may run as root.
    """
    return os.fdopen(root.open(entry_id, os.O_RDONLY), "rb")


def _to_record(entry: Entry) -> dict[str, Any]:
    record = entry.as_json()
    record["format"] = FORMAT
    return record


def _from_record(entry_id: str, head: bytes, path: Path) -> Entry:
    """Parse and check the metadata line; anything unexpected is a damaged entry."""
    try:
        record = json.loads(head)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError("unknown format")
        if record.get("id") != entry_id:
            raise ValueError("id does not match the file name")
        received = datetime.fromisoformat(_text(record["received"]).replace("Z", "+00:00"))
        if received.tzinfo is None:
            raise ValueError("received has no time zone")
        metadata = Metadata(
            sender=_text(record["sender"]),
            recipients=tuple(_text(r) for r in _list(record["recipients"])),
            client_address=_optional_text(record.get("client_address")),
            helo=_optional_text(record.get("helo")),
            queue_id=_optional_text(record.get("queue_id")),
            action=_text(record["action"]),
            reverse_path_verified=bool(record["reverse_path_verified"]),
            reasons=tuple(_text(r) for r in _list(record["reasons"])),
            authentication_results=_text(record["authentication_results"]),
        )
        size = record["size"]
        digest = _text(record["sha256"])
        if not isinstance(size, int) or size < 0:
            raise ValueError("bad size")
        return Entry(entry_id, received.astimezone(UTC), size, digest, metadata)
    except (ValueError, KeyError, TypeError) as exc:
        raise QuarantineError(f"quarantine: {path} is damaged ({exc})") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


# ---- the command functions ------------------------------------------------------------------


def _printable(text: str) -> str:
    """Escape every character a terminal could act on (C0/C1 controls, bidi overrides, ...)."""
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


def _fail(err: TextIO | None, exc: Exception) -> int:
    stream = sys.stderr if err is None else err
    stream.write(_printable(str(exc).replace("\n", " ")) + "\n")
    return 1


def _sender(text: str) -> str:
    return _printable(text) if text else "<>"


def _short_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def list_entries(store: Store, *, as_json: bool, out: TextIO, err: TextIO | None = None) -> int:
    """Print the entries, oldest first: a JSON array, or an aligned table for people."""
    try:
        scan = store.scan()
    except QuarantineError as exc:
        return _fail(err, exc)
    for name in scan.unreadable:
        _fail(err, QuarantineError(f"quarantine: entry {name} is unreadable; skipped"))
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
        recipients = _clip(_printable(meta.recipients[0]), 40) if meta.recipients else "-"
        if len(meta.recipients) > 1:
            recipients += f" (+{len(meta.recipients) - 1})"
        rows.append(
            (
                entry.id,
                _short_time(entry.received),
                _clip(_sender(meta.sender), 40),
                recipients,
                _printable("; ".join(meta.reasons)) or "-",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.write("  ".join([*cells, row[4]]).rstrip() + "\n")
    return 0


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def show(store: Store, entry_id: str, out: TextIO, err: TextIO | None = None) -> int:
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
        f"recipients:  {', '.join(_printable(r) for r in meta.recipients) or '-'}",
        f"client:      {_printable(meta.client_address or '-')}",
        f"helo:        {_printable(meta.helo or '-')}",
        f"queue id:    {_printable(meta.queue_id or '-')}",
        f"action:      {_printable(meta.action)}",
        f"verified:    {'yes' if meta.reverse_path_verified else 'no'} (reverse-path)",
        f"size:        {entry.size} bytes",
        "reasons:",
        *(f"  - {_printable(reason)}" for reason in meta.reasons),
        f"Authentication-Results: {_printable(meta.authentication_results) or '-'}",
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
        lines.append(_printable(text))
    out.write("\n".join(lines) + "\n")
    return 0


def release_payload(entry: Entry, data: bytes) -> Payload:
    """What a release re-injects: the stored A-R header prepended, as a delivery would.

    A delivery removes every A-R field carrying our authserv-id and prepends ours (RFC 8601 §5);
    a release does the same with the A-R value recorded at quarantine time, so a forged
    ``dmarc=pass`` under our name never reaches the mailbox, and the recipient can still see
    what the checks found.
    """
    value = entry.metadata.authentication_results
    if not value:
        return Payload.of(data)
    if not _HEADER_VALUE.match(value):
        raise QuarantineError(f"quarantine: entry {entry.id} has an unusable A-R value")
    authserv_id, *clauses = value.split("; ")
    message = Message(data)
    rendered = authresults.Rendered(authserv_id, tuple(clauses))
    remove = list(authresults.ours(message, authserv_id))
    return message.prepend(rendered.field(message.linesep), remove)


def release(
    store: Store,
    entry_id: str,
    reinjector: Reinjector,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Re-inject an entry with its original envelope; remove it only once that succeeded."""
    try:
        with store.locked(entry_id):
            return _release(store, entry_id, reinjector, out, err)
    except QuarantineError as exc:
        return _fail(err, exc)


def _release(
    store: Store, entry_id: str, reinjector: Reinjector, out: TextIO, err: TextIO | None
) -> int:
    try:
        entry, data = store.get(entry_id)
        payload = release_payload(entry, data)
    except QuarantineError as exc:
        return _fail(err, exc)
    meta = entry.metadata
    try:
        reinjector(meta.sender, meta.recipients, payload)
    except ReinjectError as exc:
        return _fail(err, QuarantineError(f"release {entry.id}: not released, entry kept: {exc}"))
    try:
        store.delete(entry.id)
    except QuarantineError as exc:
        # The message is on its way; a second release would deliver it twice.
        return _fail(
            err,
            QuarantineError(
                f"release {entry.id}: re-injected, but the entry could not be removed ({exc});"
                f" remove it with 'scatterguard quarantine delete {entry.id}', do not release"
                " it again"
            ),
        )
    out.write(
        f"released {entry.id} from {_sender(meta.sender)} to {len(meta.recipients)} recipient(s)\n"
    )
    return 0


def delete(store: Store, entry_id: str, out: TextIO, err: TextIO | None = None) -> int:
    """Remove an entry without delivering it."""
    try:
        with store.locked(entry_id):
            store.delete(entry_id)
    except QuarantineError as exc:
        return _fail(err, exc)
    out.write(f"deleted {entry_id}\n")
    return 0


def purge(
    store: Store,
    older_than_days: float,
    out: TextIO,
    now: datetime | None = None,
    err: TextIO | None = None,
) -> int:
    """Remove entries received more than ``older_than_days`` days before ``now``."""
    if not math.isfinite(older_than_days) or older_than_days < 0:
        return _fail(err, QuarantineError(f"purge: {older_than_days!r} is not a number of days"))
    try:
        purged = store.purge(timedelta(days=older_than_days), now)
    except (QuarantineError, OverflowError) as exc:
        return _fail(err, exc)
    for problem in purged.refused:
        _fail(err, QuarantineError(f"purge: {problem.removeprefix('quarantine: ')}"))
    noun = "entry" if purged.removed == 1 else "entries"
    out.write(f"purged {purged.removed} {noun} older than {older_than_days:g} days\n")
    return 1 if purged.refused else 0
