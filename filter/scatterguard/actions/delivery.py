"""The record of re-injected messages, so that a retry after a crash delivers nothing twice.

The MTA retries a message whenever the filter does not exit 0, including when the filter is
killed while, or just after, the re-injection command hands the message back. Three things keep
such a retry from delivering a second copy:

- A **claim**: an exclusive lock (flock) on ``pending/<key>``, held while the message is filtered
  and re-injected. A retry that arrives while an earlier attempt is still running waits for it.
  A claim that cannot be taken (the directory cannot be written) defers the message.
- A **re-injection process**: the command runs under a forked child (named ``sg-reinject``) that
  records the delivery itself as soon as the command succeeds — first into the claim's file
  through the descriptor it inherited, then as a marker — and holds the claim until then. A
  SIGKILL of the filter, its deadline, or a stopping server never interrupts it halfway: the
  retry waits for the claim and then finds the record. The child is bounded by the re-injection
  command's own timeout.
- A **marker** named after the message, written right after a successful re-injection; a retry
  that finds it (or a claim file that says ``delivered``) exits 0 at once.

What is left is the window every store-and-forward hand-off has (RFC 1047): the re-injection
process itself (or the MTA's command) killed after the MTA committed its copy and before the
delivery is recorded.

A marker's name is a digest of the queue id, the envelope and the message bytes: the same
delivery attempt of the same queue file, never a different message (a message without a queue id
is never recorded). Markers live in hourly directories under ``<state.directory>/delivered`` and
are dropped after ``KEEP_HOURS``, well past any retry of a message the MTA still holds for a
killed filter (those retries come within minutes). Markers are not fsynced: they guard against a
killed process, whose writes the kernel keeps, not against a power failure.

The record is host-local: it says what *this* host handed back to *its* MTA, so it lives in the
state directory, never beside a quarantine that several hosts may share. Version 0.1.0 kept it
in ``<quarantine.directory>/delivered``. That earlier record is read, never written
(``legacy``): a retry after an upgrade of a message re-injected before it still finds its
claim file or marker there, and a re-injection process the old version left running is waited
for. It empties itself, since nothing new is written there and ``quarantine purge`` prunes it
(:func:`prune_store`); after ``KEEP_HOURS`` it holds nothing that could matter. Reading it in
place was chosen over moving it at start-up: the filter has no start-up of its own (one process
per message), a move across file systems is not atomic while old and new filters may run side
by side during the upgrade, and a marker is worth keeping only for two days anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import signal
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scatterguard.actions import spool
from scatterguard.actions.safedir import Directory, UnsafeStore, write_all
from scatterguard.core.envelope import Envelope
from scatterguard.core.message import Spooled
from scatterguard.errors import QuarantineError, ReinjectError

if TYPE_CHECKING:
    from scatterguard.actions.ports import Reinjector
    from scatterguard.core.message import Payload

KEEP_HOURS = 48
_HOUR = re.compile(r"[0-9]{10}\Z")
# The name the re-injection process shows in ps and /proc/<pid>/comm (at most 15 bytes).
PROCESS_NAME = b"sg-reinject"
MAX_REPORT = 2000
# What the claim's file holds: an attempt, or a delivery (the same length, see claim()).
ATTEMPT = b"attempt  \n"
DELIVERED = b"delivered\n"
# Re-injection processes left running when their parent gave up waiting (its deadline passed).
_UNREAPED: list[int] = []


@dataclass
class Claim:
    """The held claim on one message: its key, the locked file, and whether it is delivered."""

    key: str
    fd: int
    done: bool


class DeliveryRecord:
    """Claims and markers of re-injected messages under one directory.

    ``legacy``, when given, is where an earlier version kept the record: it is consulted (read
    only) for markers and claim files, and never written (see the module docstring).
    """

    def __init__(
        self,
        directory: Path,
        clock: Callable[[], float] = time.time,
        *,
        legacy: Path | None = None,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.legacy = legacy if legacy != directory else None

    @staticmethod
    def key(envelope: Envelope, data: bytes | Spooled) -> str | None:
        """The marker name for this delivery, or None when the MTA gave no queue id."""
        if not envelope.queue_id:
            return None
        document = json.dumps(
            [
                "delivered-1",
                envelope.queue_id,
                envelope.sender_text,
                list(envelope.recipients),
                # A spooled message is hashed from its file, in chunks, not through its map.
                spool.sha256(data),
            ]
        )
        return hashlib.sha256(document.encode("utf-8")).hexdigest()[:40]

    def seen(self, key: str) -> bool:
        """True when a marker for ``key`` was written in the last KEEP_HOURS hours (here, or in
        the earlier version's record)."""
        if self._seen(self._open, key):
            return True
        legacy = self.legacy
        return legacy is not None and self._seen(lambda: _open_legacy(legacy), key)

    def _seen(self, opener: Callable[[], Directory], key: str) -> bool:
        now = self.clock()
        try:
            with opener() as record:
                # One listing instead of an open per hour: most hours have no directory (and
                # an earlier version's record, once pruned, has none at all).
                present = set(record.names())
                for hours in range(KEEP_HOURS + 1):
                    name = _hour(now - hours * 3600)
                    if name not in present:
                        continue
                    try:
                        with record.sub(name) as hour:
                            hour.check(key, hour.lstat(key))
                            return True
                    except OSError:
                        continue  # no marker (or no hour directory) there
        except OSError:
            # No record yet (or a file in its place, which note() and claim() report): no marker.
            # A part that is a link or a third user's raises UnsafeStore: the message defers.
            return False
        return False

    def _open(self, *, create: bool = False) -> Directory:
        """The record's directory, checked as every part of the store (:mod:`.safedir`)."""
        if create:
            with Directory.create_root(self.directory.parent) as root:
                return root.make(self.directory.name)
        with Directory.root(self.directory.parent) as root:
            return root.sub(self.directory.name)

    def _done_earlier(self, key: str, ours: os.stat_result) -> bool:
        """True when the earlier version's claim file for ``key`` says ``delivered``.

        Its lock is taken shared first: a re-injection process the earlier version started
        (before the upgrade) holds it until the delivery is recorded, so this waits for it, and
        the marker it then writes is found by :meth:`seen`. Nothing there is created or changed.

        ``ours`` is the claim file this process holds locked. Two spellings of one directory
        (a linked parent, a bind mount, ``..``) make the earlier record this very file: then it
        is no earlier record, and its lock (ours) is not waited for, which would wait forever.
        """
        if self.legacy is None:
            return False
        path = self.legacy / "pending" / key
        try:
            with _open_legacy(self.legacy) as record, record.sub("pending") as pending:
                fd = pending.open(key, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise QuarantineError(
                f"cannot read the earlier record {path}: {exc.strerror}"
            ) from None
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) == (ours.st_dev, ours.st_ino):
                return False  # the claim file itself: its state is read already
            fcntl.flock(fd, fcntl.LOCK_SH)
            return os.pread(fd, len(DELIVERED), 0) == DELIVERED
        except OSError as exc:
            raise QuarantineError(
                f"cannot read the earlier record {path}: {exc.strerror}"
            ) from None
        finally:
            os.close(fd)

    def prune(self) -> list[str]:
        """:func:`prune` this record (a missing one is nothing to do); return what it refused.

        The earlier version's record, in the quarantine directory, is pruned by the quarantine's
        own purge (:func:`prune_store`).
        """
        try:
            with Directory.root(self.directory.parent) as root:
                return prune_store(root, self.clock(), self.directory.name)
        except FileNotFoundError:
            return []
        except UnsafeStore as exc:
            return [str(exc)]
        except OSError as exc:
            return [f"cannot read {self.directory.parent}: {exc.strerror or exc}"]

    def note(self, key: str) -> None:
        """Write the marker; a failure is ignored (the message is delivered, deferring now
        would be what delivers it twice)."""
        name = _hour(self.clock())
        try:
            with self._open(create=True) as record:
                try:
                    hour = record.sub(name)
                except FileNotFoundError:
                    hour = record.make(name)
                    prune(record, self.clock())
                with hour:
                    os.close(hour.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except (OSError, QuarantineError):
            return

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[Claim]:
        """Hold the claim on ``key`` for the block; waits while another process holds it.

        Raises QuarantineError when the claim cannot be taken (the directory cannot be
        written): without it a killed filter could deliver twice, so the message is deferred
        instead. The lock file is removed when the block ends normally, unless it is the only
        record of a delivery (the hourly marker could not be written); after an exception it is
        kept, since a re-injection process may still hold it and a retry must wait on that
        same file.
        """
        path = self.directory / "pending" / key
        try:
            with self._open(create=True) as record:
                pending = record.make("pending")
        except (OSError, QuarantineError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise QuarantineError(f"cannot record deliveries in {path.parent}: {why}") from None
        with pending:
            try:
                fd = _lock(pending, key)
            except OSError as exc:
                raise QuarantineError(
                    f"cannot record deliveries in {path.parent}: {exc.strerror}"
                ) from None
            try:
                claim = Claim(key, fd, done=False)
                state = os.pread(fd, len(DELIVERED), 0)
                done_earlier = self._done_earlier(key, os.fstat(fd))
                claim.done = state == DELIVERED or done_earlier or self.seen(key)
                if not state:
                    # Allocate the file's block now: marking it delivered later overwrites these
                    # bytes in place, which needs neither the directory nor free space.
                    write_all(fd, ATTEMPT, 0)
                # A claim file kept for days (sendmail down, the MTA retrying) stays fresh, so
                # purge never takes it for one a killed filter left (prune skips locked ones).
                now = self.clock()
                os.utime(fd, (now, now))
            except OSError as exc:
                os.close(fd)
                raise QuarantineError(
                    f"cannot record deliveries in {path}: {exc.strerror}"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                yield claim
                with contextlib.suppress(OSError, QuarantineError):
                    if os.pread(fd, len(DELIVERED), 0) != DELIVERED or self.seen(key):
                        pending.unlink(key)
            finally:
                os.close(fd)

    def reinject(
        self,
        claim: Claim,
        reinjector: Reinjector,
        sender: str,
        recipients: Sequence[str],
        data: Payload,
    ) -> None:
        """Call ``reinjector(sender, recipients, data)`` in a child process that records the
        delivery on success.

        The child inherits the claim's lock, so the claim outlives this process until the
        command has finished and the delivery is recorded: first in the claim's own file,
        through the open descriptor (no directory access, no new block: it cannot fail the way
        a new file can), then as the hourly marker. It ignores SIGTERM, SIGINT and SIGHUP (a
        stopping server or a terminal must not cut a hand-over in half) and has no alarm (fork
        does not inherit timers); the command's own timeout bounds it. Raises ReinjectError
        with the command's diagnostic when the re-injection failed.
        """

        def work() -> None:
            reinjector(sender, recipients, data)
            self._delivered(claim)

        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which ends in os._exit
            os.close(reader)
            _child(writer, work)
        os.close(writer)
        try:
            with os.fdopen(reader, "rb") as pipe:
                report = pipe.read()
        except BaseException:
            # The deadline, most likely: leave the child to finish (it holds the claim).
            _UNREAPED.append(pid)
            raise
        _reap(pid, 0)
        for orphan in list(_UNREAPED):
            if _reap(orphan, os.WNOHANG):
                _UNREAPED.remove(orphan)
        if report == b"ok":
            return
        if report.startswith(b"error "):
            raise ReinjectError(report[6:].decode("utf-8", "replace"))
        raise ReinjectError(
            "the re-injection process died before it reported"
            + (f": {report.decode('utf-8', 'replace')}" if report else "")
        )

    def _delivered(self, claim: Claim) -> None:
        """Record the delivery: in the claim's own file first, then as the marker."""
        with contextlib.suppress(OSError):
            os.pwrite(claim.fd, DELIVERED, 0)
        self.note(claim.key)


def _open_legacy(legacy: Path) -> Directory:
    """An earlier version's record, open and checked; OSError when there is none to read.

    The directory that holds it (the quarantine's) failing to open, whatever the reason, is no
    record: the old version could not have written one there either, and a quarantine out of
    reach (or another user's) must not hold up deliveries. Below it the rule of :mod:`.safedir`
    applies as everywhere: a link or a third user's part is refused.
    """
    try:
        root = Directory.root(legacy.parent)
    except (OSError, UnsafeStore) as exc:
        raise FileNotFoundError(f"no earlier record in {legacy.parent}") from exc
    with root:
        return root.sub(legacy.name)


def prune_store(root: Directory, now: float, name: str = "delivered") -> list[str]:
    """:func:`prune` the delivery record ``name`` in the directory open as ``root`` (the state
    directory, or the quarantine's, where an earlier version kept it); return what it refused."""
    try:
        with root.sub(name) as record:
            return prune(record, now)
    except FileNotFoundError:
        return []
    except UnsafeStore as exc:
        return [str(exc)]


def prune(record: Directory, now: float) -> list[str]:
    """Drop hour directories older than KEEP_HOURS and lock files left as long; return refusals.

    Only names of the record's own shape are touched, each through the descriptor of the
    directory that holds it: a link or a third user's part is left alone and reported.
    """
    refused: list[str] = []
    oldest = _hour(now - KEEP_HOURS * 3600)
    for name in record.names():
        if not _HOUR.match(name) or name >= oldest:
            continue
        try:
            with record.sub(name) as hour:
                _remove_files(hour, None, refused)
            record.rmdir(name)
        except UnsafeStore as exc:
            refused.append(str(exc))
        except OSError:
            continue  # gone already, or something we did not make is left inside
    # Lock files left by killed filters (a retry reuses, then removes, its own).
    try:
        with record.sub("pending") as pending:
            _remove_files(pending, now - KEEP_HOURS * 3600, refused, skip_locked=True)
    except UnsafeStore as exc:
        refused.append(str(exc))
    except OSError:
        pass
    return refused


def _remove_files(
    directory: Directory, older_than: float | None, refused: list[str], *, skip_locked: bool = False
) -> None:
    """Unlink the files in ``directory`` (those last changed before ``older_than``).

    With ``skip_locked`` (lock files), a file some process holds locked is left: a retry, or
    the re-injection process of a killed filter, still guards a delivery with it.
    """
    for name in directory.names():
        try:
            info = directory.lstat(name)
            if stat.S_ISDIR(info.st_mode):
                continue
            if older_than is not None and info.st_mtime >= older_than:
                continue
            directory.check(name, info)
            if skip_locked:
                fd = directory.open(name, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    directory.unlink(name)  # under the lock: a new claim re-checks the inode
                finally:
                    os.close(fd)
                continue
            directory.unlink(name)
        except UnsafeStore as exc:
            refused.append(str(exc))
        except OSError:
            continue


def _lock(pending: Directory, key: str) -> int:
    """Open and flock ``key`` (creating it), making sure the lock is on the file still there."""
    while True:
        fd = pending.open(key, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder removes the file when done; a lock on a removed file guards nothing.
            if os.fstat(fd).st_ino == pending.lstat(key).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _child(writer: int, work: Callable[[], None]) -> None:  # pragma: no cover - child process
    """Run ``work`` in the forked child, report through ``writer`` and exit; never returns."""
    status = 0
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            # A handler that does nothing, not SIG_IGN: an ignored signal would stay ignored in
            # the re-injection command, while a handler is reset when the command is executed.
            signal.signal(signum, _ignore)
        with contextlib.suppress(OSError), open("/proc/self/comm", "wb") as comm:
            comm.write(PROCESS_NAME)
        try:
            work()
        except ReinjectError as exc:
            report = b"error " + str(exc).encode("utf-8", "replace")
        except BaseException as exc:  # noqa: BLE001 - anything else is reported, then exit
            report = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
            status = 1
        else:
            report = b"ok"
        with contextlib.suppress(OSError):
            os.write(writer, report[:MAX_REPORT])
    finally:
        os._exit(status)


def _ignore(_signum: int, _frame: Any) -> None:
    """Let the re-injection finish; the command's timeout bounds it."""


def _reap(pid: int, flags: int) -> bool:
    """Collect a finished child (True), so a long-lived server worker keeps no zombies."""
    try:
        return os.waitpid(pid, flags)[0] != 0
    except ChildProcessError:
        return True


def _hour(moment: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(moment))
