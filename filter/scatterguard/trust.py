"""Whose server a filter may hand mail to, and whether a socket's directory is safe to trust.

Shared by the configuration (which refuses an unsafe ``server.socket``), the hand-over client (the
fast path: standard library only, no typing or dataclasses) and the server.
"""

from __future__ import annotations

import os
import pwd
import stat

# typing itself costs ~3 ms to import; mypy treats this name as True all the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Collection


def trusted_uids(user: str) -> frozenset[int]:
    """Who may run the server a client hands mail to: root, the client's own user, ``user``.

    The client's own user is the server's in the packaged set-up (the MTA hooks run the filter
    as the server's user); a process of that user could read the mail anyway.
    """
    uids = {0, os.geteuid()}
    if user:
        try:  # noqa: SIM105 - contextlib is not imported on the client's fast path
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            pass
    return frozenset(uids)


def unsafe_directory(path: str, trusted: Collection[int]) -> str | None:
    """Why someone outside ``trusted`` could put their own socket at ``path``; None if nobody can.

    Every directory on the way must belong to a trusted user. The socket's own directory (or the
    last existing one, when the rest is still to be created) must be writable by its owner
    alone; one further up may be writable by others only with the sticky bit (as /tmp), which
    keeps them from replacing the trusted directory below it. Symbolic links are checked where
    they stand and where they lead. A relative path is unsafe: it names a socket in whatever
    directory the process happens to run in (the MTA's, for the filter), which nobody checked.
    """
    if not os.path.isabs(path):
        return f"{path!r} is not an absolute path, so it depends on the working directory"
    directory = os.path.dirname(path) or "/"
    for candidate in dict.fromkeys((directory, os.path.realpath(directory))):
        reason = _unsafe_chain(candidate, trusted)
        if reason is not None:
            return reason
    return None


def _unsafe_chain(directory: str, trusted: Collection[int]) -> str | None:
    parts = [part for part in directory.split("/") if part]
    chain = ["/", *("/" + "/".join(parts[: index + 1]) for index in range(len(parts)))]
    last: tuple[str, os.stat_result] | None = None
    for name in chain:
        try:
            info = os.lstat(name)
        except FileNotFoundError:
            break
        except OSError as exc:
            return f"cannot check {name}: {exc.strerror}"
        if stat.S_ISLNK(info.st_mode):
            # Its owner could point it elsewhere later (even in a sticky directory); where it
            # leads now is checked through realpath.
            if info.st_uid not in trusted:
                return f"{name} is a symbolic link of uid {info.st_uid}, who could redirect it"
            last = None
            continue
        if not stat.S_ISDIR(info.st_mode):
            return f"{name} is not a directory"
        if info.st_uid not in trusted:
            return f"{name} belongs to uid {info.st_uid}, who could put another socket there"
        open_to_others = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if open_to_others and not info.st_mode & stat.S_ISVTX:
            return f"{name} is writable by others, who could put another socket there"
        last = (name, info)
    if last is not None and last[1].st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{last[0]} is writable by others, who could put another socket there"
    return None
