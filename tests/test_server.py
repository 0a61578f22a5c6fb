"""``scatterguard serve`` and the hand-over: the pipe contract at daemon speed, nothing lost.

The server runs as a real process on a UNIX socket; the filter client is run exactly as the MTA
runs it. The message must come out the same as in-process, the workers keep their DNS cache, and
every failure of the server after the hand-over (killed mid-message, garbage, a stall) ends in
exit 75 with nothing acted on twice.
"""

from __future__ import annotations

import array
import copy
import json
import math
import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hostile
import scatterguard
from dnsserver import DnsServer
from hostile import HostileHandover
from scatterguard import config as config_mod
from scatterguard import trust
from scatterguard.errors import ConfigError
from scatterguard.frontends.server import REFUSED_STATUS
from test_filter import ZONE, Filter, envelope, message, wait_until


class Server:
    """A ``scatterguard serve`` process for one test."""

    def __init__(self, mta: Filter, workers: int = 1) -> None:
        # A directory every user can traverse, as /run/scatterguard is, so that a client running
        # as another user reaches the socket and is turned away by its credentials, not by paths.
        self.directory = Path(tempfile.mkdtemp(prefix="sg-server-"))
        self.directory.chmod(0o755)  # holds only the socket, like /run/scatterguard
        self.socket = str(self.directory / "sg.sock")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scatterguard",
                "--config",
                str(mta.config),
                "serve",
                "--socket",
                self.socket,
                "--workers",
                str(workers),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if Path(self.socket).exists():
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(self.socket)
                    return
                except OSError:
                    pass
                finally:
                    probe.close()
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start")

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path, dns_server: DnsServer) -> Iterator[tuple[Filter, Server]]:
    dns_server.records.add_text(ZONE)
    bootstrap = Filter(tmp_path, dns_server)
    server = Server(bootstrap)
    mta = Filter(tmp_path / "client", dns_server, server_socket=server.socket)
    # The client and the server share the quarantine and the fake sendmail of the server's config.
    mta.config.write_text(
        bootstrap.config.read_text().replace('socket = ""', f'socket = "{server.socket}"')
    )
    mta.sendmail, mta.quarantine, mta.state = (
        bootstrap.sendmail,
        bootstrap.quarantine,
        bootstrap.state,
    )
    mta.syslog = bootstrap.syslog
    try:
        yield mta, server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("sender", "client", "from_", "code", "delivered", "quarantined"),
    [
        pytest.param(
            "alice@sender.example", "192.0.2.5", "alice@sender.example", 0, 1, 0, id="deliver"
        ),
        pytest.param(
            "ceo@reject.example", "203.0.113.9", "ceo@reject.example", 0, 0, 1, id="quarantine"
        ),
        pytest.param(
            "user@verified.example", "198.51.100.7", "ceo@reject.example", 69, 0, 0, id="bounce"
        ),
    ],
)
def test_actions_through_the_server(
    served: tuple[Filter, Server],
    sender: str,
    client: str,
    from_: str,
    code: int,
    delivered: int,
    quarantined: int,
) -> None:
    """Through the server each action comes out as it does in-process."""
    mta, _ = served
    done = mta.run(envelope(sender, client), message(from_))
    assert done.returncode == code
    assert done.stderr == b""
    assert (done.stdout == b"") is (code == 0)
    assert len(mta.sendmail.calls) == delivered
    assert len(mta.entries()) == quarantined
    logged = mta.syslog.lines()
    assert any("queue_id='4AbCdE'" in line for line in logged)


def test_delivered_bytes_match_in_process(
    served: tuple[Filter, Server], tmp_path: Path, dns_server: DnsServer
) -> None:
    """The server re-injects the very bytes the in-process filter would."""
    mta, _ = served
    data = message(extra=b"Authentication-Results: mx.rcpt.example; dmarc=pass\n")
    assert mta.run(envelope("alice@sender.example", "192.0.2.5"), data).returncode == 0
    alone = Filter(tmp_path / "alone", dns_server)
    assert alone.run(envelope("alice@sender.example", "192.0.2.5"), data).returncode == 0
    assert mta.sendmail.calls[0].data == alone.sendmail.calls[0].data
    assert mta.sendmail.calls[0].argv == alone.sendmail.calls[0].argv


def test_workers_keep_their_dns_cache(served: tuple[Filter, Server], dns_server: DnsServer) -> None:
    """A second message from the same sender is checked without asking DNS again."""
    mta, _ = served
    mta.run(envelope("alice@sender.example", "192.0.2.5", queue_id="Q1"), message())
    asked = len(dns_server.queries)
    assert asked > 0
    mta.run(envelope("alice@sender.example", "192.0.2.5", queue_id="Q2"), message())
    assert len(dns_server.queries) == asked
    assert len(mta.sendmail.calls) == 2


def test_bsmtp_and_environment_travel(served: tuple[Filter, Server]) -> None:
    """Exim's batch SMTP on stdin and the client data in the environment reach the worker."""
    mta, _ = served
    batch = (
        b"MAIL FROM:<alice@sender.example>\nRCPT TO:<bob@rcpt.example>\nDATA\n"
        + re.sub(rb"(?m)^\.", b"..", message())
        + b".\n"
    )
    env = {"SCATTERGUARD_CLIENT_ADDRESS": "192.0.2.5", "SCATTERGUARD_HELO": "mx.sender.example"}
    done = mta.run(["--bsmtp"], batch, env)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert b"spf=pass" in mta.sendmail.calls[0].data


def test_server_killed_mid_message_defers_then_delivers_once(
    served: tuple[Filter, Server], dns_server: DnsServer
) -> None:
    """A worker killed while it holds a message: the client exits 75; the retry delivers once."""
    mta, server = served
    dns_server.silent = True
    client = mta.start(envelope("alice@sender.example", "192.0.2.5"), message())
    time.sleep(1.0)  # the worker is now waiting on silent DNS
    for pid in server.workers():
        os.kill(pid, signal.SIGKILL)
    out, err = client.communicate(timeout=30)
    assert client.returncode == 75
    assert out.startswith(b"4.")
    assert out.count(b"\n") == 1
    assert err == b""
    assert mta.sendmail.calls == []
    dns_server.silent = False
    time.sleep(1.5)  # the master restarts the worker
    assert mta.run(envelope("alice@sender.example", "192.0.2.5"), message()).returncode == 0
    assert len(mta.sendmail.calls) == 1


def test_worker_killed_during_reinjection_delivers_once(
    served: tuple[Filter, Server], dns_server: DnsServer
) -> None:
    """A worker killed while its re-injection command runs: the command finishes and is
    recorded, so the client's deferral is retried without a second copy."""
    mta, server = served
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4WorkerDies")
    mta.sendmail.delay(1.5)
    client = mta.start(args, message())
    wait_until("the re-injection command to start", lambda: bool(mta.sendmail.running()))
    for pid in server.workers():
        os.kill(pid, signal.SIGKILL)
    out, _ = client.communicate(timeout=30)
    assert client.returncode == 75
    assert out.startswith(b"4.")
    mta.sendmail.delay(None)
    time.sleep(1.5)  # the master restarts the worker
    assert mta.run(args, message()).returncode == 0
    assert len(mta.sendmail.calls) == 1
    assert any("already re-injected" in line for line in mta.syslog.lines())


def _fake_server(path: str, behaviour: str) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        conn.recvmsg(65536, socket.CMSG_SPACE(4))
        if behaviour == "garbage":
            conn.sendall(b"\x00\x00\x00\x05hello")
        elif behaviour == "wrong-code":
            conn.sendall(b'\x00\x00\x00\x1a{"code": 1, "status": "x"}'[:30])
        elif behaviour == "stall":
            time.sleep(5)
        conn.close()
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("behaviour", ["garbage", "wrong-code", "close", "stall"])
def test_broken_server_defers(tmp_path: Path, dns_server: DnsServer, behaviour: str) -> None:
    """A server that answers garbage, a forbidden code, nothing, or too late: exit 75."""
    path = str(tmp_path / "fake.sock")
    mta = Filter(tmp_path, dns_server, server_socket=path, timeout="1")
    thread = _fake_server(path, behaviour)
    started = time.monotonic()
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.")
    assert done.stdout.count(b"\n") == 1
    assert done.stderr == b""
    assert time.monotonic() - started < 4.5
    assert mta.sendmail.calls == []
    thread.join(timeout=10)


def test_absent_server_means_in_process(tmp_path: Path, dns_server: DnsServer) -> None:
    """A configured socket nobody listens on: the filter does the work itself."""
    dns_server.records.add_text(ZONE)
    mta = Filter(tmp_path, dns_server, server_socket=str(tmp_path / "nobody.sock"))
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert len(mta.sendmail.calls) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the client as another user")
def test_foreign_user_is_refused(served: tuple[Filter, Server], tmp_path: Path) -> None:
    """A client whose peer credentials are not an allowed user is refused with a deferral."""
    mta, _ = served
    nobody = pwd.getpwnam("nobody")
    # The unprivileged client must be able to read its configuration: pytest's own temporary
    # directories are private to root, so the client's copy lives in a directory of its own.
    public = Path(tempfile.mkdtemp(prefix="sg-client-"))
    public.chmod(0o755)
    config = public / "scatterguard.toml"
    config.write_text(mta.config.read_text())
    config.chmod(0o644)
    # Debian's interpreter, which any user may run; the client needs only the standard library
    # and our package, copied where that user can read it (the checkout may sit under /root).
    source_root = public / "lib"
    shutil.copytree(Path(scatterguard.__file__).resolve().parent, source_root / "scatterguard")
    for path in source_root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    source_root.chmod(0o755)
    done = subprocess.run(
        [
            "/usr/bin/python3",
            "-m",
            "scatterguard",
            "--config",
            str(config),
            "filter",
            *envelope("alice@sender.example", "192.0.2.5"),
        ],
        input=message(),
        capture_output=True,
        timeout=60,
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        env={"PYTHONPATH": str(source_root), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 75, done.stderr
    assert done.stdout.startswith(b"4.7.0 ")
    assert mta.sendmail.calls == []
    shutil.rmtree(public)


def test_serve_reports_an_unusable_socket_path(tmp_path: Path) -> None:
    """A socket path the server cannot bind is a clear one-line error, not a traceback."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scatterguard",
            "serve",
            "--socket",
            str(tmp_path / "no" / "s.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("scatterguard: server.socket: cannot listen on")
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------------
# Issue 12 items 2, 3, 9 and 12: hand-overs whose client gave up, is slow, silent, vanished or
# foreign; a server of the wrong user; a worker that must survive any argv.

NOBODY = 65534
# Postfix's pipe(8) writes the message under its time limit and closes the pipe when the limit
# passes: whatever the reader has by then is all it will ever get. The tests' stand-in limit.
WRITER_LIMIT = 4.0


def _started_workers(server: Server) -> list[int]:
    """The worker pids once the master has forked them (it listens before it forks)."""
    wait_until("the workers to start", lambda: bool(server.workers()))
    return server.workers()


def _frame(document: dict[str, object]) -> bytes:
    """One hand-over frame: a 4-byte length and a JSON object."""
    data = json.dumps(document, separators=(",", ":")).encode()
    return struct.pack("!I", len(data)) + data


def _quick_client(mta: Filter, tmp: Path, timeout: str) -> Filter:
    """The same client with its own deadline (the ``timeout`` key) of ``timeout``."""
    quick = copy.copy(mta)
    quick.config = tmp / f"quick-{timeout}.toml"
    quick.config.write_text(
        mta.config.read_text().replace('timeout = "30s"', f"timeout = {timeout}")
    )
    return quick


def _busy_worker(mta: Filter, seconds: float) -> subprocess.Popen[bytes]:
    """Occupy the single worker with a message whose re-injection takes ``seconds``."""
    mta.sendmail.delay(seconds)
    blocker = mta.start(
        envelope("alice@sender.example", "192.0.2.5", queue_id="4Blocker"), message()
    )
    wait_until("the blocker's re-injection to start", lambda: bool(mta.sendmail.running()))
    # Only the blocker sleeps: the delay is read when the fake starts.
    mta.sendmail.delay(None)
    return blocker


class TimedWriter(threading.Thread):
    """Writes a message into a pipe as the MTA does: until done, EPIPE, or its time limit."""

    def __init__(self, fd: int, data: bytes, limit: float) -> None:
        super().__init__(daemon=True)
        self.fd, self.data, self.limit = fd, data, limit
        self.result = ""
        self.seconds = 0.0

    def run(self) -> None:
        started = time.monotonic()
        os.set_blocking(self.fd, False)
        view = memoryview(self.data)
        try:
            while view:
                left = started + self.limit - time.monotonic()
                if left <= 0:
                    self.result = "time-limit"
                    return
                _, writable, _ = select.select([], [self.fd], [], left)
                if writable:
                    try:
                        view = view[os.write(self.fd, view[:65536]) :]
                    except BlockingIOError:
                        continue
            self.result = "done"
        except BrokenPipeError:
            self.result = "epipe"
        finally:
            self.seconds = time.monotonic() - started
            os.close(self.fd)


def _start_fed(
    mta: Filter, args: list[str], data: bytes, limit: float
) -> tuple[subprocess.Popen[bytes], TimedWriter]:
    """Start the filter with a pipe on stdin that a timed writer fills, as Postfix's pipe does."""
    reader, writer = os.pipe()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "scatterguard", "--config", str(mta.config), "filter", *args],
        stdin=reader,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ,
    )
    os.close(reader)
    feeder = TimedWriter(writer, data, limit)
    feeder.start()
    return process, feeder


@pytest.mark.parametrize(
    ("sender", "client"),
    [
        pytest.param("alice@sender.example", "192.0.2.5", id="deliver"),
        pytest.param("ceo@reject.example", "203.0.113.9", id="quarantine"),
    ],
)
def test_request_queued_past_its_deadline_is_never_acted_on(
    served: tuple[Filter, Server], tmp_path: Path, sender: str, client: str
) -> None:
    """A request still waiting for a worker when its client exits 75 is dropped unread."""
    mta, _ = served
    blocker = _busy_worker(mta, 5.0)
    quick = _quick_client(mta, tmp_path, "1")
    started = time.monotonic()
    done = quick.run(envelope(sender, client, queue_id="4Queued"), message(sender))
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.")
    assert done.stdout.count(b"\n") == 1
    assert time.monotonic() - started < 4.0
    assert blocker.wait(timeout=30) == 0
    time.sleep(2.0)  # the worker is free again and has seen the queued request
    assert len(mta.sendmail.calls) == 1  # the blocker's
    assert mta.entries() == []
    # The retry, with a live client, is acted on once.
    assert mta.run(envelope(sender, client, queue_id="4Queued"), message(sender)).returncode == 0
    assert len(mta.sendmail.calls) + len(mta.entries()) == 2


def test_request_of_a_killed_client_is_never_acted_on(served: tuple[Filter, Server]) -> None:
    """A client killed while its request waits for a worker: the request is dropped unread."""
    mta, _ = served
    blocker = _busy_worker(mta, 3.0)
    victim = mta.start(
        envelope("ceo@reject.example", "203.0.113.9", queue_id="4Killed"),
        message("ceo@reject.example"),
    )
    time.sleep(0.5)  # connected and sent: its request is in the queue
    victim.kill()
    victim.wait(timeout=10)
    assert blocker.wait(timeout=30) == 0
    time.sleep(1.5)
    assert len(mta.sendmail.calls) == 1  # the blocker's
    assert mta.entries() == []


def test_large_message_whose_client_gives_up_is_never_truncated(
    served: tuple[Filter, Server], tmp_path: Path
) -> None:
    """174 KB+ handed over while no worker is free: never a short copy, and the MTA's writer
    finishes (or gets EPIPE) long before its own time limit."""
    mta, _ = served
    blocker = _busy_worker(mta, WRITER_LIMIT + 2.0)
    quick = _quick_client(mta, tmp_path, "1")
    data = message(extra=b"X-Filler: " + b"f" * 70 + b"\n") + b"line of body text\n" * 12000
    assert len(data) > 174 * 1024
    process, feeder = _start_fed(
        quick, envelope("alice@sender.example", "192.0.2.5", queue_id="4Large"), data, WRITER_LIMIT
    )
    out, err = process.communicate(timeout=30)
    feeder.join(timeout=30)
    assert process.returncode == 75, err
    assert out.startswith(b"4.")
    assert out.count(b"\n") == 1
    assert feeder.result in ("done", "epipe"), feeder.result
    assert feeder.seconds < WRITER_LIMIT / 2
    assert blocker.wait(timeout=30) == 0
    time.sleep(2.0)
    assert len(mta.sendmail.calls) == 1  # the blocker's, never a copy of the large message
    assert mta.entries() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_idle_foreign_connections_do_not_stall_the_server(served: tuple[Filter, Server]) -> None:
    """Connections from a user who may not hand over are closed unread, at once."""
    mta, server = served
    holder = subprocess.Popen(
        [
            "/usr/bin/python3",
            "-c",
            "import socket, sys, time\n"
            "held = []\n"
            "for _ in range(5):\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "    s.connect(sys.argv[1])\n"
            "    held.append(s)\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n",
            server.socket,
        ],
        stdout=subprocess.PIPE,
        user=NOBODY,
        group=NOBODY,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"ready\n"
        started = time.monotonic()
        done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
        assert done.returncode == 0, done.stdout
        assert time.monotonic() - started < 4.0
        assert len(mta.sendmail.calls) == 1
    finally:
        holder.kill()
        holder.wait()


def test_silent_allowed_peer_gets_a_short_frame_deadline(served: tuple[Filter, Server]) -> None:
    """An allowed peer that connects and sends half a frame is dropped within seconds."""
    mta, server = served
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(server.socket)
    peer.sendall(b"\x00\x00")
    peer.settimeout(15)
    started = time.monotonic()
    received = b""
    while chunk := peer.recv(65536):
        received += chunk
    assert time.monotonic() - started < 4.0
    # Either no answer at all or a deferral: never anything acted on.
    assert received in (b"", _frame({"code": 75, "status": REFUSED_STATUS}))
    peer.close()
    assert mta.run(envelope("alice@sender.example", "192.0.2.5"), message()).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to serve as another user")
def test_client_refuses_a_server_of_another_user(tmp_path: Path, dns_server: DnsServer) -> None:
    """A socket served by a user who is neither root nor ours gets no message: exit 75."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    path = str(directory / "sg.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o666)  # noqa: S103 - the impostor's socket must be reachable, as ours is
    # listen() records the credentials a client sees (SO_PEERCRED): the impostor's.
    impostor = subprocess.Popen(
        [
            "/usr/bin/python3",
            "-c",
            "import socket, struct, sys\n"
            "s = socket.socket(fileno=int(sys.argv[1]))\n"
            "s.listen()\n"
            "print('ready', flush=True)\n"
            "c, _ = s.accept()\n"
            "data, fds, _, _ = c.recvmsg(65536, socket.CMSG_SPACE(4))\n"
            "print('got-fd' if fds else 'no-fd', flush=True)\n"
            'reply = b\'{"code":0,"status":null}\'\n'
            "c.sendall(struct.pack('!I', len(reply)) + reply)\n",
            str(listener.fileno()),
        ],
        stdout=subprocess.PIPE,
        pass_fds=[listener.fileno()],
        user=NOBODY,
        group=NOBODY,
    )
    listener.close()
    assert impostor.stdout is not None
    assert impostor.stdout.readline() == b"ready\n"
    mta = Filter(tmp_path, dns_server, server_socket=path)
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.")
    assert done.stdout.count(b"\n") == 1
    out, _ = impostor.communicate(timeout=10)
    assert out == b"no-fd\n"
    assert mta.sendmail.calls == []


@pytest.mark.parametrize("parent", ["/tmp", "/dev/shm"])
def test_config_refuses_a_socket_others_could_replace(
    tmp_path: Path, dns_server: DnsServer, parent: str
) -> None:
    """server.socket in a directory others may write to is a configuration error naming it."""
    if not os.path.isdir(parent) or not os.stat(parent).st_mode & stat.S_IWOTH:
        pytest.skip(f"{parent} is not world-writable here")
    path = f"{parent}/sg-test-{os.getpid()}.sock"
    with pytest.raises(ConfigError, match=r"server\.socket"):
        config_mod.parse({"server": {"socket": path}})
    with pytest.raises(ConfigError, match=r"server\.socket"):
        config_mod.parse({"server": {"socket": f"{parent}/sg-missing-{os.getpid()}/s.sock"}})
    # The filter defers (and logs the key) instead of handing mail to whoever listens there.
    mta = Filter(tmp_path, dns_server, server_socket=path)
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert mta.sendmail.calls == []
    # And says why, naming the key, where a postmaster looks.
    checked = subprocess.run(
        [sys.executable, "-m", "scatterguard", "--config", str(mta.config), "check"],
        input=message(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 1
    assert b"server.socket" in checked.stderr
    assert b"writable by others" in checked.stderr


def test_config_accepts_a_closed_directory_under_a_sticky_one(tmp_path: Path) -> None:
    """A private directory of ours under /tmp (sticky) cannot be replaced: accepted."""
    directory = Path(tempfile.mkdtemp(prefix="sg-sock-"))
    try:
        directory.chmod(0o755)
        path = str(directory / "s.sock")
        assert config_mod.parse({"server": {"socket": path}}).server.socket == path
        directory.chmod(0o777)
        with pytest.raises(ConfigError, match=r"server\.socket"):
            config_mod.parse({"server": {"socket": path}})
    finally:
        shutil.rmtree(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a link of another user")
def test_config_refuses_a_link_another_user_could_redirect(tmp_path: Path) -> None:
    """A link in a sticky directory that leads somewhere safe, owned by someone else: refused."""
    safe = tmp_path / "run"
    safe.mkdir(mode=0o755)
    link = Path(tempfile.mkdtemp(prefix="sg-link-")) / "link"
    try:
        link.parent.chmod(0o1777)
        link.symlink_to(safe)
        assert config_mod.parse({"server": {"socket": f"{link}/s.sock"}}).server.socket
        os.lchown(link, NOBODY, NOBODY)
        with pytest.raises(ConfigError, match=r"server\.socket.*symbolic link"):
            config_mod.parse({"server": {"socket": f"{link}/s.sock"}})
    finally:
        shutil.rmtree(link.parent)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["filter", "--help"], id="filter-help"),
        pytest.param(["filter", "-h"], id="filter-h"),
        pytest.param(["--version", "filter"], id="version"),
        pytest.param(["filter", "--no-such-option"], id="bad-option"),
        pytest.param(["filter", "-f"], id="missing-value"),
    ],
)
def test_any_argv_handed_over_defers_and_the_worker_survives(
    served: tuple[Filter, Server], argv: list[str]
) -> None:
    """``filter --help`` and other argv argparse exits on: one 75 answer, the same worker."""
    mta, server = served
    before = _started_workers(server)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    config = ["--config", str(mta.config)]
    done = subprocess.run(
        [sys.executable, "-m", "scatterguard", *config, *argv],
        input=message(),
        capture_output=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.")
    assert done.stdout.count(b"\n") == 1
    assert done.stderr == b""
    time.sleep(0.5)
    assert server.workers() == before
    assert server.process.poll() is None
    assert mta.run(envelope("alice@sender.example", "192.0.2.5"), message()).returncode == 0
    assert len(mta.sendmail.calls) == 1


HANDOVERS = {case.name: case for case in hostile.handovers()}


def _run_steps(path: str, case: HostileHandover) -> list[dict[str, object]]:
    """Play the hostile client against the server at ``path``; the frames it got back."""
    reader, writer = os.pipe()
    os.write(writer, hostile.standard_message())
    os.close(writer)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list[dict[str, object]] = []
    nonce = ""
    try:
        sock.connect(path)
        sock.settimeout(10)
        for step in case.steps:
            ancillary = []
            if step.fds:
                fds = array.array("i", [reader] * step.fds)
                ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
            if step.kind == "request":
                document: dict[str, object] = {
                    "v": 2,
                    "argv": hostile.handover_argv(),
                    "env": {},
                    "deadline": time.monotonic() + step.seconds,
                    "timeout": step.seconds,
                }
                document.update(dict(step.fields))
                sock.sendmsg([hostile.handover_frame(document)], ancillary)
            elif step.kind == "raw":
                sock.sendmsg([step.data], ancillary)
            elif step.kind == "read":
                header = _recv_exact(sock, 4)
                if not header:
                    break
                frame = json.loads(_recv_exact(sock, int.from_bytes(header, "big")))
                got.append(frame)
                nonce = str(frame.get("ready", nonce))
            elif step.kind == "go":
                sock.sendall(hostile.handover_frame({"go": step.data.decode() or nonce}))
            elif step.kind == "sleep":
                time.sleep(step.seconds)
            elif step.kind == "close":
                break
    except OSError:
        pass
    finally:
        sock.close()
        os.close(reader)
    return got


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in HANDOVERS])
def test_hostile_handover(served: tuple[Filter, Server], name: str) -> None:
    """Slow, silent, vanished, foreign and malformed hand-overs: never acted on (but the
    genuine one), the worker lives on, and the next genuine client is served at once."""
    mta, server = served
    case = HANDOVERS[name]
    if case.foreign and os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    before = _started_workers(server)
    if case.foreign:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child plays the foreign client and exits
            try:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                got = _run_steps(server.socket, case)
                os._exit(0 if all(frame.get("code") == 75 for frame in got) else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    else:
        got = _run_steps(server.socket, case)
        answers = [frame for frame in got if "code" in frame]
        assert len(answers) <= 1
        if case.expect == hostile.NOTHING:
            assert all(frame["code"] == 75 for frame in answers), answers
        else:
            assert answers == [{"code": 0, "status": None}]
    started = time.monotonic()
    follow = mta.run(envelope("alice@sender.example", "192.0.2.5", queue_id="4Next"), message())
    assert follow.returncode == 0
    assert time.monotonic() - started < 5.0
    assert server.workers() == before
    hostile_copies = [
        call for call in mta.sendmail.calls if b"Message-ID: <1@sender" not in call.data
    ]
    assert len(mta.sendmail.calls) == (2 if case.expect == hostile.DELIVER else 1), hostile_copies
    assert mta.entries() == []


# ---------------------------------------------------------------------------------------------
# Adversarial review of the hand-over (issue12-attack2): variants of items 2, 3 and 9.


def test_a_relative_socket_path_is_unsafe_wherever_it_is_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative server.socket resolves against whatever directory the process runs in.

    The filter's fast path reads the raw configuration and ``serve --socket`` bypasses it; with
    ``sg.sock`` only "/" was checked, so a client whose working directory others may write to
    (or a server started there) used a socket anyone could have put there.
    """
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    # A relative PYTHONPATH (the Debian run's "filter:tests") must survive the chdir.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in paths if p)}
    monkeypatch.chdir(shared)
    trusted = trust.trusted_uids("")
    for path in ("sg.sock", "./sg.sock", "sub/sg.sock", "../shared/sg.sock"):
        reason = trust.unsafe_directory(path, trusted)
        assert reason is not None, path
        assert "absolute" in reason
    done = subprocess.run(
        [sys.executable, "-m", "scatterguard", "serve", "--socket", "sg.sock"],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "server.socket" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (shared / "sg.sock").exists()


@pytest.mark.parametrize("key", ["timeout", "dns.timeout", "reinject.timeout"])
@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, 1e10, "100000000d", 86401],
    ids=["nan", "inf", "1e10", "d", "day+1"],
)
def test_config_refuses_a_timeout_no_clock_can_keep(key: str, value: object) -> None:
    """A timeout that is not finite or beyond a day is a configuration error naming the key.

    Such a timeout was accepted (``check`` exited 0), yet no timer can hold it (settimeout and
    setitimer raise, NaN compares false): every message deferred until the MTA gave up and
    bounced it to a reverse-path nobody verified.
    """
    section, _, name = key.rpartition(".")
    data: dict[str, object] = {name: value} if not section else {section: {name: value}}
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_mod.parse(data)
    assert config_mod.parse({"timeout": 86400}).timeout == 86400


def test_a_descriptor_that_is_no_stream_defers_and_the_worker_survives(
    served: tuple[Filter, Server], tmp_path: Path
) -> None:
    """An allowed peer that passes a directory instead of a pipe: one 75, the same worker.

    ``os.fdopen`` of a directory raises outside every handler, so the worker died (and, dying
    early, cost the next hand-over a second of restart back-off).
    """
    mta, server = served
    before = _started_workers(server)
    directory = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        peer.connect(server.socket)
        request = {
            "v": 2,
            "argv": ["filter", "-f", "alice@sender.example", "--", "bob@example.net"],
            "env": {},
            "deadline": time.monotonic() + 20,
            "timeout": 20,
        }
        fds = array.array("i", [directory])
        peer.sendmsg([_frame(request)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        peer.settimeout(15)
        received = b""
        while chunk := peer.recv(65536):
            received += chunk
    finally:
        peer.close()
        os.close(directory)
    assert received == _frame({"code": 75, "status": REFUSED_STATUS})
    time.sleep(0.5)
    assert server.workers() == before
    assert mta.run(envelope("alice@sender.example", "192.0.2.5"), message()).returncode == 0
