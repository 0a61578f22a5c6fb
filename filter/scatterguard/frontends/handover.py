"""The hand-over between ``scatterguard filter`` and a resident ``scatterguard serve``.

Wire format on a UNIX stream socket, each frame a 4-byte big-endian length and a JSON object:

    client → server   {"v": 2, "argv": [...], "env": {...}, "deadline": D, "timeout": S}
                      plus the client's stdin descriptor as SCM_RIGHTS ancillary data on the
                      same sendmsg (the message itself is never copied through the client)
    server → client   {"ready": NONCE}      the message is read and decided; may I act?
    client → server   {"go": NONCE}         yes: I am alive and well within my deadline
    server → client   {"code": 0 | 69 | 75, "status": "one line" | null}

The server never acts (re-injects, quarantines, answers a bounce) without a fresh "go" from a
live client. The reason is how a message gets truncated: the client is the MTA's child, and its
stdin is the MTA's pipe. A client that gives up (its deadline, a server that vanished) exits 75;
the MTA then stops writing and closes the pipe in the middle of the message, and a server that
later reads that pipe to EOF holds a short copy. "go" is sent only after the server has read the
message to EOF and only while the client is within ``D``, which is below the MTA's own time limit:
so the MTA had not given up when that EOF was written, and the message is whole.

``D`` is the client's CLOCK_MONOTONIC deadline for "go" (system-wide on Linux; the server and the
filter run on one host), ``S`` the seconds it had left when it sent the request. The server takes
the earlier of ``D`` and receipt + ``S`` (a clock it cannot compare gains nothing), drops a
request already out of time without reading its message (it sat in the listen queue while its
client gave up), and works under that deadline. After "go" the action runs under the server's
own deadline; should the client's answer deadline pass meanwhile, the client exits 75 and the
retry finds the delivery record (or the same quarantine id, or the same bounce decision): one
outcome.

A client that gives up before "go" closes the connection (the server can no longer act) and then
drains its stdin to EOF before it exits 75, so the MTA's writer is never left blocked behind a
descriptor a server may never read. The peer's credentials are checked both ways (SO_PEERCRED):
the server refuses peers it does not know before reading anything; the client hands its stdin
only to a server running as root, as its own user, or as ``server.user``. A request of another
wire version is refused (75) without acting; an old server answers a new client with nothing,
which is also 75.

Only light parts of the standard library are imported (no dataclasses, typing or argparse):
the client side runs in every filter process, before anything else.
"""

from __future__ import annotations

import array
import json
import math
import os
import select
import socket
import struct
import time

from scatterguard import defaults

# typing itself costs ~3 ms to import; mypy treats this name as True all the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence
    from typing import Any

VERSION = 2
MAX_FRAME = 1 << 20
# How long an allowed peer has, after its connection is accepted, to send its request frame.
# The filter sends it in one sendmsg right after connecting, so this only bounds a stuck peer.
FRAME_TIMEOUT = 2.0
# A request with less time left than this when a worker reads it is dropped unread: its client
# is giving up or gone.
MIN_LEFT = 0.1
# Draining stdin after giving up gets at least this long (the MTA writes from its queue file).
DRAIN_MIN = 2.0
_LENGTH = struct.Struct("!I")
_CREDENTIALS = struct.Struct("3i")


class HandoverError(Exception):
    """The exchange with the server broke off or made no sense."""


class Request:
    """What the server received: the filter's argv, its SCATTERGUARD_* environment, stdin,
    and the client's deadline for "go" on the server's monotonic clock."""

    __slots__ = ("argv", "deadline", "env", "peer_pid", "peer_uid", "stdin_fd")

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        stdin_fd: int,
        peer_uid: int,
        peer_pid: int,
        deadline: float,
    ) -> None:
        self.argv = argv
        self.env = env
        self.stdin_fd = stdin_fd
        self.peer_uid = peer_uid
        self.peer_pid = peer_pid
        self.deadline = deadline

    def left(self) -> float:
        """Seconds until the client stops accepting "ready"."""
        return self.deadline - time.monotonic()


class Reply:
    """The filter's outcome as the server decided and acted on it."""

    __slots__ = ("code", "status")

    def __init__(self, code: int, status: str | None) -> None:
        self.code = code
        self.status = status


def peer(conn: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end (SO_PEERCRED: as of connect/listen)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    pid, uid, _gid = _CREDENTIALS.unpack(creds)
    return pid, uid


def connect(path: str, timeout: float) -> socket.socket | None:
    """Connect to the server, or None when there is no server to hand over to."""
    if not path:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(max(0.001, min(timeout, 5.0)))
    try:
        sock.connect(path)
    except OSError:
        # No socket, nobody listening, or no permission: do the work in-process.
        sock.close()
        return None
    return sock


def check_server(sock: socket.socket, trusted: Collection[int]) -> None:
    """Refuse (HandoverError) a server that runs as a user we do not hand mail to."""
    try:
        pid, uid = peer(sock)
    except OSError as exc:
        raise HandoverError(f"cannot read the server's credentials: {exc}") from None
    if uid not in trusted:
        raise HandoverError(
            f"the process listening on server.socket (pid {pid}) runs as uid {uid}, not as root, "
            "our own user or server.user: nothing handed over"
        )


def hand_over(
    sock: socket.socket,
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdin_fd: int,
    go_by: float,
    answer_by: float,
) -> Reply:
    """Send the request with ``stdin_fd``, confirm the server's "ready" before ``go_by`` and
    wait for its answer until ``answer_by`` (both monotonic). Raises HandoverError."""
    env = {
        k: v
        for k, v in environ.items()
        if k.startswith(defaults.ENV_PREFIX) and k != "SCATTERGUARD_CONFIG"
    }
    try:
        frame = _frame(
            {
                "v": VERSION,
                "argv": list(argv),
                "env": env,
                "deadline": go_by,
                "timeout": _remaining(go_by),
            }
        )
        fds = array.array("i", [stdin_fd])
        sock.settimeout(_remaining(go_by))
        try:
            sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
            if sent < len(frame):
                sock.sendall(frame[sent:])
        except (BrokenPipeError, ConnectionResetError) as exc:
            # A server that refuses a peer answers and closes before it reads anything: its
            # answer is still ours to read.
            try:
                return _reply(_read_frame(sock, go_by), confirmed=False)
            except (OSError, HandoverError):
                raise exc from None
        document = _read_frame(sock, go_by)
        if "ready" in document:
            nonce = document["ready"]
            if not isinstance(nonce, str) or len(document) != 1:
                raise HandoverError(f"the server asked nonsense: {document!r:.200}")
            # The deadline is read again here: only a client still within it may say go.
            sock.settimeout(_remaining(go_by))
            sock.sendall(_frame({"go": nonce}))
            document = _read_frame(sock, answer_by)
            return _reply(document, confirmed=True)
        return _reply(document, confirmed=False)
    except (OSError, ValueError) as exc:
        raise HandoverError(f"hand-over to the server failed: {exc}") from None


def _reply(document: Mapping[str, Any], *, confirmed: bool) -> Reply:
    code = document.get("code")
    status = document.get("status")
    if code not in (0, 69, 75) or not (status is None or isinstance(status, str)):
        raise HandoverError(f"the server answered nonsense: {document!r:.200}")
    if code != 0 and not status:
        raise HandoverError("the server answered without a status line")
    if code != 75 and not confirmed:
        # A server may only act on our "go": an outcome before it is a broken server.
        raise HandoverError(f"the server answered {code} without asking to act")
    return Reply(code, status)


def drain(fd: int, until: float) -> None:
    """Read and discard ``fd`` to EOF, for at most until ``until`` (and ``DRAIN_MIN`` seconds).

    Called after giving up, once the server can no longer act: the MTA's writer finishes
    instead of blocking on a pipe whose other reader (the server) may never read it.
    """
    limit = max(until, time.monotonic() + DRAIN_MIN)
    try:
        while True:
            left = limit - time.monotonic()
            if left <= 0:
                return
            readable, _, _ = select.select([fd], [], [], left)
            if readable and not os.read(fd, 65536):
                return
    except (OSError, ValueError):
        return


def receive(conn: socket.socket, timeout: float = FRAME_TIMEOUT) -> Request:
    """Read one request on an accepted connection (server side), with the peer's credentials.

    Raises HandoverError (or OSError) for a request that is malformed, of another version, or
    not complete within ``timeout``; no descriptor it carried is left open.
    """
    pid, uid = peer(conn)
    received = time.monotonic()
    deadline = received + timeout
    conn.settimeout(timeout)
    fds = array.array("i")
    try:
        # Close-on-exec: the re-injection command must not inherit the MTA's pipe.
        header, ancillary, _flags, _addr = conn.recvmsg(
            _LENGTH.size, socket.CMSG_SPACE(2 * fds.itemsize), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        if not header:
            raise HandoverError("connection closed before the request")
        if len(header) < _LENGTH.size:
            header += _read_exact(conn, _LENGTH.size - len(header), deadline)
        (size,) = _LENGTH.unpack(header)
        if size > MAX_FRAME:
            raise HandoverError(f"request frame of {size} bytes")
        document = _decode(_read_exact(conn, size, deadline))
        if document.get("v") != VERSION:
            raise HandoverError(f"request of wire version {document.get('v')!r:.20}, not {VERSION}")
        if len(fds) != 1:
            raise HandoverError(f"expected one file descriptor, got {len(fds)}")
        argv = document.get("argv")
        env = document.get("env")
        if not isinstance(argv, list) or not isinstance(env, dict):
            raise HandoverError("malformed request")
        if not all(isinstance(item, str) for item in argv) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise HandoverError("malformed environment in request")
        client_deadline = min(
            _seconds(document.get("deadline"), "deadline"),
            received + _seconds(document.get("timeout"), "timeout"),
        )
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Request(list(argv), dict(env), fds[0], uid, pid, client_deadline)


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HandoverError(f"malformed {name} in request")
    return float(value)


def hung_up(conn: socket.socket) -> bool:
    """True when the client closed its end (or sent more than it may before "ready")."""
    conn.settimeout(0.0)
    try:
        # EOF, or bytes the client had no business sending yet: either way, do not go on.
        conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def confirm(conn: socket.socket, deadline: float) -> None:
    """Ask the client for "go" and wait for it until ``deadline`` (server side).

    Returns only when the client answered with this very request's nonce, so the "go" was sent
    after the "ready" and by a client that was alive then. Raises HandoverError otherwise.
    """
    nonce = os.urandom(8).hex()
    try:
        if hung_up(conn):
            raise HandoverError("the client hung up (or spoke out of turn) before it was asked")
        conn.settimeout(_remaining(deadline))
        conn.sendall(_frame({"ready": nonce}))
        document = _read_frame(conn, deadline)
    except (OSError, ValueError) as exc:
        raise HandoverError(f"the client did not confirm: {exc}") from None
    if document != {"go": nonce}:
        raise HandoverError(f"the client did not confirm: {document!r:.100}")


def answer(conn: socket.socket, code: int, status: str | None) -> None:
    """Send the reply (server side)."""
    conn.sendall(_frame({"code": code, "status": status}))


def _frame(document: Mapping[str, Any]) -> bytes:
    data = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return _LENGTH.pack(len(data)) + data


def _read_frame(sock: socket.socket, deadline: float) -> dict[str, Any]:
    (size,) = _LENGTH.unpack(_read_exact(sock, _LENGTH.size, deadline))
    if size > MAX_FRAME:
        raise HandoverError(f"frame of {size} bytes")
    return _decode(_read_exact(sock, size, deadline))


def _decode(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
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
