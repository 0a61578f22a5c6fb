"""``scatterguard serve`` and the hand-over: the pipe contract at daemon speed, nothing lost.

The server runs as a real process on a UNIX socket; the filter client is run exactly as the MTA
runs it. The message must come out the same as in-process, the workers keep their DNS cache, and
every failure of the server after the hand-over (killed mid-message, garbage, a stall) ends in
exit 75 with nothing acted on twice.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import scatterguard
from dnsserver import DnsServer
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
    mta.sendmail, mta.quarantine = bootstrap.sendmail, bootstrap.quarantine
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
