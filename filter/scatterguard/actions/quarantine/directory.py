"""The directory backend of the quarantine: one crash-safe directory laid out like a Maildir.

The store owns one directory (``quarantine.directory``, mode 0700)::

    <directory>/tmp/            entries being written; never read as entries
    <directory>/<id>            one complete entry per file, mode 0600

Nothing else lives here: the spool and the delivery record are host-local, in the state
directory (:mod:`scatterguard.services`), so the quarantine can be shared without them. A
``delivered/`` left by version 0.1.0 is read by the delivery record and pruned by
:meth:`Store.purge` until it is empty.

An entry file is its record (:mod:`scatterguard.actions.quarantine.entry`) as one line of JSON
(ASCII, so it holds no raw newline), a ``\\n``, and then the message bytes exactly as the MTA
handed them to us. :meth:`Store.get` checks the bytes against the size and SHA-256 in the record.

Crash safety (the Maildir delivery protocol): an entry is written to a uniquely named file in
``tmp/``, fsynced, renamed to its final name, and the directory is fsynced. A crash at any point
leaves either no entry or a complete one; a stale file in ``tmp/`` is never listed and is
removed by :meth:`Store.purge` once it is older than 36 hours (as Maildir readers do). A failed
write raises :class:`~scatterguard.errors.QuarantineError` and removes its temporary file.

Links and other users' files: ``quarantine`` commands may run as root on a store that belongs to
the filter's user, so no part of the store is ever reached through a path resolved again: each
is opened with ``O_NOFOLLOW`` relative to its directory's descriptor and checked on that
descriptor (:mod:`scatterguard.actions.safedir`). A link, or a part owned by neither the store's
owner nor root, is refused (:class:`~scatterguard.actions.safedir.UnsafeStore`): the filter defers,
``purge`` leaves that part alone, purges the rest and reports it.

:class:`Store` is the :class:`~scatterguard.actions.ports.QuarantineStore` port over a directory;
its locks are flocks on the entry files (:meth:`Store.locked`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from io import BufferedReader
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from scatterguard.actions import spool
from scatterguard.actions.quarantine.entry import (
    Entry,
    Metadata,
    NotFound,
    Purged,
    Scan,
    as_utc,
    check_id,
    digest_id,
    from_record,
    record_line,
    utcnow,
    valid_id,
)
from scatterguard.actions.safedir import Directory, UnsafeStore, copy_file, write_all
from scatterguard.actions.safedir import reason as _reason
from scatterguard.errors import QuarantineError

if TYPE_CHECKING:
    from scatterguard.core.envelope import Envelope
    from scatterguard.core.message import Spooled
    from scatterguard.core.verdict import Decision

FILE_MODE = 0o600
# Maildir readers remove files left in tmp/ for 36 hours: a writer never takes that long.
STALE_TMP = timedelta(hours=36)
_T = TypeVar("_T")


class Store:
    """A crash-safe directory of quarantined messages."""

    def __init__(self, directory: Path | str, clock: Callable[[], datetime] = utcnow) -> None:
        # Nothing touches the disk here: the filter builds a store for every message, and only
        # a message that is quarantined needs the directory.
        self.directory = Path(directory)
        self.tmp = self.directory / "tmp"
        self.clock = clock

    def now(self) -> datetime:
        """The store's clock, as an aware UTC datetime (a naive value is taken as UTC)."""
        return as_utc(self.clock())

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
        new_id = digest_id(metadata, digest)
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
            self._write(root, tmp, new_id, record_line(entry) + b"\n", data)
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
                write_all(fd, head)
                if not isinstance(data, bytes):
                    copy_file(data.fileno(), fd, data.size)
                else:
                    write_all(fd, data)
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
        check_id(entry_id)
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

    def entry(self, entry_id: str) -> Entry:
        """The metadata of one entry (the message bytes are not read)."""
        with self._entry_root(entry_id) as root:
            return self._entry(root, entry_id)

    def _read(self, root: Directory, entry_id: str, read: Callable[[BufferedReader], _T]) -> _T:
        """``read`` applied to the open entry file: the one place that maps its OS errors."""
        try:
            with _open(root, entry_id) as handle:
                return read(handle)
        except FileNotFoundError:
            raise NotFound(f"quarantine: no entry {entry_id}") from None
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot read {self.directory / entry_id}: {_reason(exc)}"
            ) from None

    def _entry(self, root: Directory, entry_id: str) -> Entry:
        path = self.directory / entry_id
        head, total = self._read(
            root, entry_id, lambda handle: (handle.readline(), os.fstat(handle.fileno()).st_size)
        )
        entry = from_record(entry_id, head, path)
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

        def measure(handle: BufferedReader) -> tuple[bytes, int, str]:
            head = handle.readline()
            size = os.fstat(handle.fileno()).st_size - len(head)
            return head, size, hashlib.file_digest(handle, "sha256").hexdigest()

        head, size, digest = self._read(root, entry_id, measure)
        entry = from_record(entry_id, head.rstrip(b"\n"), path)
        if size != entry.size or digest != entry.sha256:
            raise QuarantineError(f"quarantine: {path} is damaged (size or digest differs)")
        return entry

    def get(self, entry_id: str) -> tuple[Entry, bytes]:
        """One entry and its message bytes, checked against the stored size and digest."""
        path = self.directory / entry_id
        with self._entry_root(entry_id) as root:
            content = self._read(root, entry_id, BufferedReader.read)
        head, _, data = content.partition(b"\n")
        entry = from_record(entry_id, head, path)
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
        moment = self.now() if now is None else as_utc(now)
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


def _open(root: Directory, entry_id: str) -> BufferedReader:
    """Open an entry for reading, never through a link and never a third user's file.

    The store belongs to the filter's user while ``quarantine show``/``release`` may run as root.
    """
    return os.fdopen(root.open(entry_id, os.O_RDONLY), "rb")
