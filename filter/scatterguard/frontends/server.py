"""``scatterguard serve``: a resident pool of pre-started workers behind a UNIX socket.

A pipe filter starts one process per message, and importing the check libraries costs more than
the checks themselves. The server imports everything once, forks a small pool of workers that
share the listening socket, and each worker keeps its DNS cache (honouring TTLs) across
messages. A worker receives the filter client's stdin descriptor (SCM_RIGHTS), reads the message
from it directly, runs exactly the same code as the in-process filter
(:func:`scatterguard.frontends.pipe.filter_stream`), asks the client to confirm right before it acts
(the client must still be alive and within its deadline, see
:mod:`scatterguard.frontends.handover`), acts, and only then answers with the exit code and status
line, which the client relays to the MTA.

Only root, the server's own user and ``server.allowed_users`` may hand messages over (checked with
SO_PEERCRED right after accept, before anything is read). The master process restarts workers
that die; SIGTERM lets every worker finish the message it holds, then removes the socket.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import signal
import socket
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO

from scatterguard import trust
from scatterguard.config import Config
from scatterguard.errors import EX_TEMPFAIL, TEMPFAIL_STATUS, ConfigError
from scatterguard.frontends import handover
from scatterguard.frontends.deadline import deadline
from scatterguard.frontends.request import parse_filter

if TYPE_CHECKING:
    from scatterguard.services import Services

REFUSED_STATUS = "4.7.0 Mail filter refused the hand-over, try again later"
ACCEPT_POLL = 1.0
# A worker that dies this soon after its start is not restarted at once (it would spin).
RESTART_BACKOFF = 1.0


# Every module a message can need, imported once before the workers are forked, so each worker
# starts warm and shares those pages with its siblings.
WARM_MODULES = (
    "authres",
    "authres.dmarc",
    "dkim",
    "email_validator",
    "structlog",
    # dnspython parses each record type with a module it imports on the first answer of that
    # type: the types the checks ask for, and the CNAME an answer may carry.
    "dns.rdtypes.ANY.TXT",
    "dns.rdtypes.ANY.MX",
    "dns.rdtypes.ANY.PTR",
    "dns.rdtypes.ANY.CNAME",
    "dns.rdtypes.IN.A",
    "dns.rdtypes.IN.AAAA",
    # A message above 1 MiB is spooled in an anonymous file (tempfile, which brings shutil).
    "tempfile",
    "scatterguard.checks.report",
    "scatterguard.pipeline",
    "scatterguard.services",
    "scatterguard.frontends.pipe",
    "scatterguard.frontends.intake",
    "scatterguard.actions.quarantine.directory",
    "scatterguard.actions.reinject",
)


def warm_imports() -> None:
    """Import every library a message can need, once, before the workers are forked."""
    for name in WARM_MODULES:
        importlib.import_module(name)


def allowed_uids(config: Config) -> frozenset[int]:
    """Root, our own user, and the configured ``allowed_users``."""
    uids = {0, os.geteuid()}
    for name in config.server.allowed_users:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ConfigError(f"server.allowed_users: no such user {name!r}") from None
    return frozenset(uids)


def listen(path: str) -> socket.socket:
    """Bind the socket, replacing a stale one left by a server that died."""
    if not path:
        raise ConfigError("server.socket is empty: the server has nowhere to listen")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)
            else:
                probe.close()
                raise ConfigError(f"another server is already listening on {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # Anyone may connect; who may hand over is decided per connection by SO_PEERCRED.
        os.chmod(path, 0o666)  # noqa: S103 - connecting grants nothing without the right peer
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"server.socket: cannot listen on {path}: {exc.strerror}") from None
    return sock


def serve(config: Config, *, on_ready: Callable[[str], None] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit code."""
    from scatterguard import journal

    uids = allowed_uids(config)
    # The --socket option bypasses the configuration's check of the path.
    path = config.server.socket
    reason = trust.unsafe_directory(path, trust.trusted_uids(config.server.user))
    if path and reason is not None:
        raise ConfigError(f"server.socket: {path!r} is unsafe: {reason}")
    warm_imports()
    logger = journal.setup(config.log)
    sock = listen(config.server.socket)
    count = config.server.workers or os.cpu_count() or 1

    def stop(_signum: int, _frame: Any) -> None:
        # Raised, not flagged: waitpid() is restarted after a handler that returns (PEP 475).
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    workers: dict[int, float] = {}
    try:
        for _ in range(count):
            pid, started = _spawn(sock, config, uids)
            workers[pid] = started
        logger.info("serve", socket=config.server.socket, workers=count, pid=os.getpid())
        if on_ready is not None:
            on_ready(config.server.socket)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                pid, status = 0, 0
            if pid in workers:
                lived = time.monotonic() - workers.pop(pid)
                logger.info("worker-exit", pid=pid, status=status, seconds=round(lived, 1))
                if lived < RESTART_BACKOFF:
                    time.sleep(RESTART_BACKOFF)
            while len(workers) < count:
                new, started = _spawn(sock, config, uids)
                workers[new] = started
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(config.server.socket)
        logger.info("serve-stop", socket=config.server.socket)
    return 0


class _Stop(BaseException):
    """SIGTERM or SIGINT reached the master process."""


def _spawn(sock: socket.socket, config: Config, uids: frozenset[int]) -> tuple[int, float]:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = 0
        try:
            _worker(sock, config, uids)
        except BaseException:  # noqa: BLE001 - a worker must never return into the master's code
            code = 1
        finally:
            os._exit(code)
    return pid, time.monotonic()


def _worker(sock: socket.socket, config: Config, uids: frozenset[int]) -> None:
    """Accept and handle connections one at a time until told to stop."""
    from scatterguard.services import Services

    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The collaborators, once per worker for its whole life: the resolver's cache (with TTLs)
    # serves every message, and no message pays for building a store or a re-injector.
    services = Services.from_config(config)
    sock.settimeout(ACCEPT_POLL)
    while not stopping:
        try:
            conn, _ = sock.accept()
        except (TimeoutError, InterruptedError):
            continue
        with conn:
            conn.settimeout(None)
            handle(conn, config, uids, services)


def handle(conn: socket.socket, config: Config, uids: frozenset[int], services: Services) -> None:
    """Serve one request: check the peer, read the request, filter, confirm, act, answer.

    The peer's credentials are checked before anything is read, so a peer that may not hand
    over costs no wait. An allowed peer has :data:`handover.FRAME_TIMEOUT` for its request. A
    request whose client is out of time is dropped unread; otherwise the message is filtered
    under the client's deadline (and our own ``timeout``), and acted on only after the client's
    "go" (:func:`handover.confirm`), from then on under our own deadline alone.
    """
    from scatterguard import pipeline

    logger = services.logger
    try:
        pid, uid = handover.peer(conn)
    except OSError as exc:
        logger.info("handover", action="refused", error=pipeline.describe(exc))
        return
    if uid not in uids:
        logger.info("handover", action="refused", uid=uid, pid=pid)
        # Never blocks: a small frame into an empty socket buffer, sent without waiting.
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            handover.answer(conn, EX_TEMPFAIL, REFUSED_STATUS)
        return
    own_deadline = time.monotonic() + config.timeout
    try:
        request = handover.receive(conn)
    except (handover.HandoverError, OSError, ValueError) as exc:
        logger.info("handover", action="refused", uid=uid, pid=pid, error=pipeline.describe(exc))
        with contextlib.suppress(OSError):
            conn.settimeout(0.0)
            handover.answer(conn, EX_TEMPFAIL, REFUSED_STATUS)
        return
    try:
        stdin = os.fdopen(request.stdin_fd, "rb")
    except OSError as exc:
        # A directory, say: no message to read. Refused, and the worker lives on.
        with contextlib.suppress(OSError):
            os.close(request.stdin_fd)
        logger.info("handover", action="refused", uid=uid, pid=pid, error=pipeline.describe(exc))
        with contextlib.suppress(OSError):
            conn.settimeout(0.0)
            handover.answer(conn, EX_TEMPFAIL, REFUSED_STATUS)
        return
    with stdin:
        left = min(request.left(), own_deadline - time.monotonic())
        if left < handover.MIN_LEFT or handover.hung_up(conn):
            # It waited in the listen queue while its client gave up (or went away): its
            # message may be incomplete, and nobody waits for the outcome.
            logger.info("handover", action="dropped", uid=uid, pid=pid, left=round(left, 3))
            return
        code, status = _filter(conn, request, stdin, config, services, left, own_deadline)
    with contextlib.suppress(OSError):
        conn.settimeout(max(0.001, own_deadline - time.monotonic()))
        handover.answer(conn, code, status)


def _filter(
    conn: socket.socket,
    request: handover.Request,
    stdin: BinaryIO,
    config: Config,
    services: Services,
    left: float,
    own_deadline: float,
) -> tuple[int, str | None]:
    """Filter the handed-over message; every failure, a bad argv included, is a 75.

    The argv and environment are read exactly as the in-process filter reads its own
    (:func:`scatterguard.frontends.request.parse_filter`); ``--help`` and the like are usage
    errors there, and print nothing.
    """
    from scatterguard import pipeline
    from scatterguard.frontends import pipe

    def confirm() -> None:
        handover.confirm(conn, request.deadline)
        # Confirmed: the action is finished under our own deadline, not cut off by the
        # client's (its retry then finds the delivery record or the same quarantine entry).
        signal.setitimer(signal.ITIMER_REAL, max(0.001, own_deadline - time.monotonic()))

    try:
        filter_request = parse_filter(request.argv, request.env)
        with deadline(left):
            done = pipe.filter_stream(
                filter_request, stdin, config, services=services, confirm=confirm
            )
        outcome = pipe.answer(done)
        return outcome.code, outcome.status
    except Exception as exc:  # noqa: BLE001 - a bad request defers one message, not the worker
        services.logger.info(
            "message", action="defer", status=TEMPFAIL_STATUS, error=pipeline.describe(exc)
        )
        return EX_TEMPFAIL, TEMPFAIL_STATUS
