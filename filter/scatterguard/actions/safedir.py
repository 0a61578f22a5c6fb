"""The quarantine store's directories, held open and checked, so no link planted in it is followed.

``quarantine purge``, ``show``, ``release`` and ``delete`` may run as root on a store that belongs
to the filter's user. A symbolic link in the place of ``tmp/``, ``delivered/``, one of its hour
directories, ``pending/`` or an entry would otherwise make root read, write or delete files
elsewhere. So every part of the store is opened with ``O_NOFOLLOW`` relative to the descriptor
of the directory that holds it (``openat(2)``), never by a path resolved again later, and checked
with ``fstat`` on the descriptor itself (no window between the check and the use).

The rule, for every part (the store directory, its entries, ``tmp/`` and its files,
``delivered/``, its hour directories and markers, ``pending/`` and its lock files):

- it is not a symbolic link, and it is what it must be (a directory, or a regular file);
- the store directory belongs to the user running scatterguard, except that root may use a store
  that belongs to another user (the filter's user): that user is then the store's owner;
- every other part belongs to the store's owner or to root (only root could have made it so).

A part that breaks the rule is refused with :class:`UnsafeStore`, which names it and says why;
nothing is done inside it. Only the last component of the configured ``quarantine.directory`` is
opened without following links: its parent directories are the administrator's to choose.

:func:`write_all` is the one loop that writes a buffer whole to a descriptor of the store (an
entry, a claim file); :func:`copy_file` copies a spooled message into an entry in the kernel.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from scatterguard.errors import QuarantineError

DIRECTORY_MODE = 0o700
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the place of a file must not hang the open (it is refused below).
_FILE = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UnsafeStore(QuarantineError):
    """A part of the store is a symbolic link, not what it must be, or a third user's."""


class Directory:
    """One directory of the store, open; names in it are resolved relative to its descriptor."""

    def __init__(self, fd: int, path: Path, owners: frozenset[int], owner: int) -> None:
        self.fd = fd
        self.path = path
        self.owners = owners  # who may own the parts inside: the store's owner and root
        self.owner = owner  # the store's owner

    @classmethod
    def root(cls, path: Path) -> Directory:
        """Open the store directory itself; raises FileNotFoundError when it does not exist."""
        fd = _open_directory(path, None, path)
        try:
            info = os.fstat(fd)
            euid = os.geteuid()
            if euid != 0 and info.st_uid != euid:
                raise UnsafeStore(
                    f"quarantine: {path} is owned by uid {info.st_uid}, not by uid {euid} that"
                    " runs scatterguard; refused"
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, frozenset({info.st_uid, 0}), info.st_uid)

    @classmethod
    def create_root(cls, path: Path) -> Directory:
        """The store directory, created (mode 0700, parents as ``mkdir -p``) when missing."""
        try:
            return cls.root(path)
        except FileNotFoundError:
            pass
        except NotADirectoryError:
            raise _in_the_way(path) from None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot create directory {path.parent}: {reason(exc)}"
            ) from None
        try:
            os.mkdir(path, DIRECTORY_MODE)
            # The umask may have taken bits away: set the mode explicitly.
            os.chmod(path, DIRECTORY_MODE, follow_symlinks=False)
        except FileExistsError:
            pass  # another process made it first; root() below checks what is there
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot create directory {path}: {reason(exc)}"
            ) from None
        _sync_path(path.parent)
        try:
            return cls.root(path)
        except (FileNotFoundError, NotADirectoryError):
            raise _in_the_way(path) from None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the descriptor (once)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def sub(self, name: str) -> Directory:
        """Open the directory ``name`` in this one; FileNotFoundError when it does not exist."""
        path = self.path / name
        fd = _open_directory(name, self.fd, path)
        try:
            self._check_owner(os.fstat(fd), path)
        except BaseException:
            os.close(fd)
            raise
        return Directory(fd, path, self.owners, self.owner)

    def make(self, name: str) -> Directory:
        """The directory ``name`` in this one, created (mode 0700) when missing."""
        path = self.path / name
        try:
            os.mkdir(name, DIRECTORY_MODE, dir_fd=self.fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise QuarantineError(
                f"quarantine: cannot create directory {path}: {reason(exc)}"
            ) from None
        else:
            created = self.sub(name)
            try:
                # The umask may have taken bits away: set the mode on the descriptor.
                os.fchmod(created.fd, DIRECTORY_MODE)
                self._give_to_owner(created.fd)
                self.sync()
            except BaseException:
                created.close()
                raise
            return created
        try:
            return self.sub(name)
        except (FileNotFoundError, NotADirectoryError):
            raise _in_the_way(path) from None

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open the regular file ``name`` in this one, never through a link; return its fd."""
        path = self.path / name
        try:
            fd = os.open(name, flags | _FILE, mode, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link(path) from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeStore(f"quarantine: {path} is not a regular file; refused")
            self._check_owner(info, path)
            if flags & os.O_CREAT and info.st_uid == 0:
                self._give_to_owner(fd)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def names(self) -> list[str]:
        """The names in this directory, sorted."""
        return sorted(os.listdir(self.fd))

    def lstat(self, name: str) -> os.stat_result:
        """``name``'s own status (a link is not followed)."""
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def check(self, name: str, info: os.stat_result) -> None:
        """Refuse ``name`` (seen as ``info``) when it is a link or a third user's."""
        if stat.S_ISLNK(info.st_mode):
            raise _link(self.path / name)
        self._check_owner(info, self.path / name)

    def unlink(self, name: str) -> None:
        """Remove the name ``name`` from this directory (a link itself, never its target)."""
        os.unlink(name, dir_fd=self.fd)

    def rmdir(self, name: str) -> None:
        """Remove the empty directory ``name`` from this one."""
        os.rmdir(name, dir_fd=self.fd)

    def rename_into(self, name: str, target: Directory, new_name: str) -> None:
        """Rename ``name`` here to ``new_name`` in ``target``, both by descriptor."""
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=target.fd)

    def sync(self) -> None:
        """fsync this directory so a rename or unlink in it survives a crash."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise QuarantineError(f"quarantine: cannot sync {self.path}: {reason(exc)}") from None

    def _give_to_owner(self, fd: int) -> None:
        """A part root just made in another user's store becomes that user's.

        Root may use the store (a root server, an administrator trying ``filter`` by hand), but
        a directory or file it leaves as ``root:root 0700`` is one the store's owner can no
        longer open: the filter, run as that user, would defer every message from then on.
        """
        if self.owner != 0 and os.geteuid() == 0:
            os.fchown(fd, self.owner, os.fstat(self.fd).st_gid)

    def _check_owner(self, info: os.stat_result, path: Path) -> None:
        if info.st_uid not in self.owners:
            raise UnsafeStore(
                f"quarantine: {path} is owned by uid {info.st_uid}, not by the store's owner"
                f" (uid {self.owner}) or root; refused"
            )


def _open_directory(name: str | Path, dir_fd: int | None, path: Path) -> int:
    try:
        return os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                raise exc from None
            if stat.S_ISLNK(info.st_mode):
                raise _link(path) from None
        raise


def _link(path: Path) -> UnsafeStore:
    return UnsafeStore(f"quarantine: {path} is a symbolic link; refused (links are never followed)")


def _in_the_way(path: Path) -> QuarantineError:
    return QuarantineError(
        f"quarantine: cannot create directory {path}: something else is in the way"
    )


def _sync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise QuarantineError(f"quarantine: cannot sync {path}: {reason(exc)}") from None


def reason(exc: OSError) -> str:
    """The human reason of an OS error (a full disk said plainly)."""
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    """Write all of ``data`` to ``fd``: at the file position, or from ``offset`` (``pwrite``).

    A write may take less than it was given; the rest is written again, and a write that takes
    nothing at all is a full device (OSError ENOSPC), never an endless loop.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
        if offset is not None:
            offset += written


def copy_file(source: int, target: int, count: int) -> None:
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
