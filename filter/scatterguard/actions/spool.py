"""The spool: a large message's bytes in an anonymous file, seen through a read-only map.

A message above :data:`THRESHOLD` bytes is not held in memory. Intake streams it into an
anonymous file (:func:`tempfile.TemporaryFile`: ``O_TMPFILE`` on Linux, so the file never has a
name and a filter killed at any moment leaves nothing behind) in ``<state.directory>/spool``
(:class:`SpoolDirectory`). That directory is the filter user's own and host-local, on a disk,
where ``/tmp`` may be a tmpfs, which is memory again.

The quarantine may be elsewhere, on another file system (even one shared by several hosts).
Quarantining a spooled message copies it into the entry in the kernel either way: with
``copy_file_range``, and with ``sendfile`` where that refuses to cross file systems (EXDEV). The
entry is written, fsynced and renamed inside the quarantine's own ``tmp/``, so its crash safety
does not depend on where the spool is; and the spool file is never linked into the quarantine
(an entry starts with its metadata line), so nothing needs the two on one file system.

The rest of the filter sees the file through a read-only ``mmap`` (:attr:`SpoolFile.view`), which
:class:`~scatterguard.core.message.Message` reads like bytes: only the pages it touches (the header
section; the body only when DKIM verifies it) come into memory. Re-injection and the quarantine
copy from the file descriptor (``sendfile``, ``copy_file_range``) and the digests read the file
in chunks, so none of them brings the body into this process's memory.

Small messages, the common case, stay ``bytes`` and cost no extra system call.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
from collections.abc import Callable
from io import FileIO
from pathlib import Path

from scatterguard.actions.safedir import Directory
from scatterguard.core.message import Spooled
from scatterguard.errors import SpoolError

# Messages up to this size stay in memory; larger ones go to the spool file.
THRESHOLD = 1024 * 1024
# How much is copied at a time from stdin into the spool file.
CHUNK = 1024 * 1024


class SpoolFile:
    """A message in an anonymous spool file, mapped read-only; close it when done."""

    def __init__(self, file: FileIO) -> None:
        self.file = file
        self.size = os.fstat(file.fileno()).st_size
        # An empty file cannot be mapped; the spool only ever holds messages above THRESHOLD.
        self.view = mmap.mmap(file.fileno(), self.size, prot=mmap.PROT_READ)

    def fileno(self) -> int:
        """The spool file's descriptor, to copy from with sendfile or copy_file_range."""
        return self.file.fileno()

    def sha256(self) -> str:
        """The SHA-256 of the bytes, read from the file in chunks (the map is not touched)."""
        self.file.seek(0)
        return hashlib.file_digest(self.file, "sha256").hexdigest()

    def close(self) -> None:
        """Unmap and close the file; the kernel frees its blocks (the file has no name)."""
        # A BufferError means a memoryview of the map is still alive somewhere (a bug of ours).
        # Raising here, after the message was delivered, would make the MTA deliver it again;
        # the map goes when that view does.
        with contextlib.suppress(BufferError):
            self.view.close()
        self.file.close()

    def __enter__(self) -> SpoolFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def sha256(data: bytes | Spooled) -> str:
    """The SHA-256 of a message's bytes, in memory or spooled, as hex digits."""
    if not isinstance(data, bytes):
        return data.sha256()
    return hashlib.sha256(data).hexdigest()


def size(data: bytes | Spooled) -> int:
    """The number of bytes of a message, in memory or spooled."""
    return len(data) if isinstance(data, bytes) else data.size


def close(data: bytes | Spooled | None) -> None:
    """Close a spooled message; bytes and None need nothing."""
    if data is not None and not isinstance(data, bytes):
        data.close()


class SpoolDirectory:
    """Where intake spools a large message: ``path``, created when missing, checked.

    Called (by :class:`Spool`) only when a message outgrows memory, so a small message costs no
    system call. ``path``'s parent (the state directory) is created as ``mkdir -p`` would, mode
    0700, when missing; ``path`` itself is checked as every part of the store is
    (:mod:`scatterguard.actions.safedir`): a link there is refused, never followed. Spool files
    are anonymous: no reader ever takes one for anything, and no purge needs to meet them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> Path:
        with Directory.create_root(self.path.parent) as root, root.make(self.path.name):
            pass
        return self.path


class Spool:
    """Collects a message: in memory up to ``threshold`` bytes, beyond that in a spool file.

    ``directory`` is called (once) when the first byte beyond the threshold arrives, and returns
    the directory for the spool file; None keeps everything in memory whatever its size.
    """

    def __init__(self, directory: Callable[[], Path] | None, threshold: int = THRESHOLD) -> None:
        self._directory = directory
        self._threshold = threshold
        self._memory = bytearray()
        self._file: FileIO | None = None
        self._where: Path | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; raises SpoolError when the spool file cannot be written."""
        self.size += len(data)
        if self._file is None:
            self._memory += data
            if self._directory is None or len(self._memory) <= self._threshold:
                return
            self._file = self._open(self._directory())
            data, self._memory = memoryview(self._memory), bytearray()
        self._write(self._file, data)

    def finish(self) -> bytes | Spooled:
        """The collected message: bytes, or the spool file mapped read-only."""
        if self._file is None:
            return bytes(self._memory)
        file, self._file = self._file, None
        try:
            return SpoolFile(file)
        except (OSError, ValueError) as exc:
            file.close()
            raise SpoolError(f"spool: cannot map the spool file: {_reason(exc)}") from None

    def discard(self) -> None:
        """Drop what was collected (the spool file's blocks are freed at once)."""
        self._memory = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self, directory: Path) -> FileIO:
        import tempfile  # only large messages pay for this import

        self._where = directory
        try:
            return tempfile.TemporaryFile(dir=directory, buffering=0)
        except OSError as exc:
            raise SpoolError(
                f"spool: cannot create a file in {directory}: {_reason(exc)}"
            ) from None

    def _write(self, file: FileIO, data: bytes | memoryview) -> None:
        view = memoryview(data)
        fd = file.fileno()
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self.discard()
            raise SpoolError(
                f"spool: cannot write a file in {self._where}: {_reason(exc)}"
            ) from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on the device"
        return exc.strerror or str(exc)
    return str(exc)
