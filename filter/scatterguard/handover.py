"""The hand-over between ``scatterguard filter`` and a resident ``scatterguard serve``.

Wire format on a UNIX stream socket, each frame a 4-byte big-endian length and a JSON object:

    client → server   {"v": 1, "argv": [...], "env": {...}}  plus the client's stdin descriptor
                      as SCM_RIGHTS ancillary data on the same sendmsg (the message itself is
                      never copied through the client)
    server → client   {"code": 0 | 69 | 75, "status": "one line" | null}

The server acts (re-injects or quarantines) before it answers, and only on a complete request. If
the server is absent the client does the work itself; if it fails after the hand-over — it dies,
stalls past the deadline, or answers garbage — the client exits 75 and the MTA retries.

Only light parts of the standard library are imported (no dataclasses, typing or argparse):
the client side runs in every filter process, before anything else.
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import time

# typing itself costs ~3 ms to import; mypy treats this name as True all the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

# Where the filter looks for its configuration and, by default, for the server. The fast path
# reads them before the config module (and its imports) is loaded; config.py takes them from here.
DEFAULT_CONFIG = "/etc/scatterguard/scatterguard.toml"
DEFAULT_SOCKET = "/run/scatterguard/scatterguard.sock"
DEFAULT_TIMEOUT = 300.0
VERSION = 1
MAX_FRAME = 1 << 20
_LENGTH = struct.Struct("!I")
ENV_PREFIX = "SCATTERGUARD_"


class HandoverError(Exception):
    """The exchange with the server broke off or made no sense."""


class Request:
    """What the server received: the filter's argv, its SCATTERGUARD_* environment, stdin."""

    __slots__ = ("argv", "env", "peer_pid", "peer_uid", "stdin_fd")

    def __init__(
        self, argv: list[str], env: dict[str, str], stdin_fd: int, peer_uid: int, peer_pid: int
    ) -> None:
        self.argv = argv
        self.env = env
        self.stdin_fd = stdin_fd
        self.peer_uid = peer_uid
        self.peer_pid = peer_pid


class Reply:
    """The filter's outcome as the server decided and acted on it."""

    __slots__ = ("code", "status")

    def __init__(self, code: int, status: str | None) -> None:
        self.code = code
        self.status = status


def connect(path: str, timeout: float) -> socket.socket | None:
    """Connect to the server, or None when there is no server to hand over to."""
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(min(timeout, 5.0))
    try:
        sock.connect(path)
    except OSError:
        # No socket, nobody listening, or no permission: do the work in-process.
        sock.close()
        return None
    return sock


def hand_over(
    sock: socket.socket,
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdin_fd: int,
    deadline: float,
) -> Reply:
    """Send the request with ``stdin_fd`` and wait for the reply until ``deadline`` (monotonic)."""
    env = {
        k: v for k, v in environ.items() if k.startswith(ENV_PREFIX) and k != "SCATTERGUARD_CONFIG"
    }
    frame = _frame({"v": VERSION, "argv": list(argv), "env": env})
    fds = array.array("i", [stdin_fd])
    try:
        sock.settimeout(_remaining(deadline))
        sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        if sent < len(frame):
            sock.sendall(frame[sent:])
        document = _read_frame(sock, deadline)
    except (OSError, ValueError) as exc:
        raise HandoverError(f"hand-over to the server failed: {exc}") from None
    code = document.get("code")
    status = document.get("status")
    if code not in (0, 69, 75) or not (status is None or isinstance(status, str)):
        raise HandoverError(f"the server answered nonsense: {document!r:.200}")
    if code != 0 and not status:
        raise HandoverError("the server answered without a status line")
    return Reply(code, status)


def receive(conn: socket.socket, timeout: float = 10.0) -> Request:
    """Read one request on an accepted connection (server side), with the peer's credentials."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    deadline = time.monotonic() + timeout
    conn.settimeout(timeout)
    fds = array.array("i")
    header, ancillary, _flags, _addr = conn.recvmsg(_LENGTH.size, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    try:
        if len(header) < _LENGTH.size:
            header += _read_exact(conn, _LENGTH.size - len(header), deadline)
        (size,) = _LENGTH.unpack(header)
        if size > MAX_FRAME:
            raise HandoverError(f"request frame of {size} bytes")
        document = _decode(_read_exact(conn, size, deadline))
        if len(fds) != 1:
            raise HandoverError(f"expected one file descriptor, got {len(fds)}")
        argv = document.get("argv")
        env = document.get("env")
        if document.get("v") != VERSION or not isinstance(argv, list) or not isinstance(env, dict):
            raise HandoverError("malformed request")
        if not all(isinstance(item, str) for item in argv) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise HandoverError("malformed environment in request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Request(list(argv), dict(env), fds[0], uid, pid)


def answer(conn: socket.socket, code: int, status: str | None) -> None:
    """Send the reply (server side)."""
    conn.sendall(_frame({"code": code, "status": status}))


def _frame(document: Mapping[str, Any]) -> bytes:
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return _LENGTH.pack(len(data)) + data


def _read_frame(sock: socket.socket, deadline: float) -> dict[str, Any]:
    (size,) = _LENGTH.unpack(_read_exact(sock, _LENGTH.size, deadline))
    if size > MAX_FRAME:
        raise HandoverError(f"reply frame of {size} bytes")
    return _decode(_read_exact(sock, size, deadline))


def _decode(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HandoverError("frame is not JSON") from None
    if not isinstance(document, dict):
        raise HandoverError("frame is not a JSON object")
    return document


def _read_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks = []
    while size:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(min(size, 65536))
        if not chunk:
            raise HandoverError("connection closed mid-frame")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HandoverError("deadline passed")
    return left
