"""The end-to-end harness: a real Postfix and a real Exim, configured from ``hooks/``, on loopback.

Each MTA is configured from the shipped hook files themselves: Postfix gets Debian's own
``main.cf``/``master.cf`` with ``hooks/postfix/main.cf`` appended (once: :func:`merge_main_cf`
takes out what an earlier copy left) and the entries of ``hooks/postfix/master.cf`` put in place
of Debian's; Exim gets Debian's split configuration (``conf.d`` from the exim4-config package)
with ``hooks/exim4/conf.d/*`` dropped in, turned into one file by Debian's own
``update-exim4.conf``. Only what a test machine needs beyond that (host
name, local domain, XCLIENT for loopback, a log file) is added, and nothing is copied from the
hooks into the tests.

The MTAs run scatterguard from ``/usr/bin/scatterguard`` as the unprivileged ``scatterguard``
user, reading ``/etc/scatterguard/scatterguard.toml``, which points the filter (and only the
filter) at the loopback DNS server and sends its log lines to a socket this harness reads. That
file also names the socket of the resident server (``[server] socket``): where a test runs
:class:`ResidentServer` (``scatterguard serve``, as ``scatterguard.service`` would), the filter
hands each message over to it; where nothing listens there, the filter works in-process.
Test mail is routed without DNS: local domains are delivered to local mailboxes, anything else
fails inside the MTA and would show up in the queue, the logs or a mailbox.

``tests/e2e/install-mtas`` prepares the machine; these tests reconfigure it, so they run only
where that script has left its marker (see :func:`unavailable`).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "hooks"
PREFIX = Path("/opt/scatterguard-e2e")
MARKER = PREFIX / "installed"
VENV = PREFIX / "venv"
EXIM_ROOT = PREFIX / "exim4"
FILTER = Path("/usr/bin/scatterguard")
EXIM = Path("/usr/sbin/exim4")
RUN = Path("/run/scatterguard-e2e")
LOCK = Path("/run/scatterguard-e2e.lock")
QUARANTINE = Path("/var/lib/scatterguard-e2e/quarantine")
# The filter's host-local state (spool, delivery record), apart from the quarantine as the
# package has it; never the package's /var/lib/scatterguard.
STATE = Path("/var/lib/scatterguard-e2e/state")
CONFIG = Path("/etc/scatterguard/scatterguard.toml")
# The resident server's socket, in a directory every user can traverse (as systemd's
# RuntimeDirectory=scatterguard with mode 0755 would make /run/scatterguard).
SERVER_DIR = RUN / "server"
SERVER_SOCKET = SERVER_DIR / "scatterguard.sock"
SERVER_WORKERS = 2
SERVER_OUTPUT = RUN / "server.out"
CONFIG_HEADER = "# Written by scatterguard's end-to-end tests (tests/e2e); removed when they end."
POSTFIX_LOG = Path("/var/log/scatterguard-e2e-postfix.log")
EXIM_LOG = Path("/var/log/exim4/mainlog")
EXIM_PANICLOG = Path("/var/log/exim4/paniclog")
EXIM_CONFIG = Path("/etc/exim4/exim4.conf")

AUTHSERV_ID = "mx.example.net"
LOCAL_DOMAIN = "example.net"
# The made-up Internet the test host lives in (RFC 5737 addresses, RFC 2606 names).
SENDER_DOMAIN = "sender.example"  # p=reject, SPF 192.0.2.10, DKIM selector s1
SENDER_IP = "192.0.2.10"
BANK_DOMAIN = "bank.example"  # p=reject, SPF 198.51.100.0/24 only: the forgers' favourite
FORGER_IP = "203.0.113.66"
LOCAL_IP = "192.0.2.20"  # in example.net's SPF: where bob's own mail comes from
ALICE = "alice@example.net"
BOB = "bob@example.net"
FILTER_USER = "scatterguard"
# The received protocol our Exim hook expects on re-injected mail (SCATTERGUARD_PROTOCOL).
EXIM_PROTOCOL = "scatterguard"


def unavailable(mta: str) -> str | None:
    """Why the end-to-end tests for ``mta`` cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "end-to-end MTA tests need root"
    if not MARKER.exists():
        return (
            f"{MARKER} is missing: run tests/e2e/install-mtas (as root, on a disposable machine: "
            "the tests reconfigure Postfix and Exim)"
        )
    binary = "/usr/sbin/postfix" if mta == "postfix" else str(EXIM)
    if not Path(binary).exists():
        return f"{binary} is missing: run tests/e2e/install-mtas"
    if not os.path.realpath(FILTER).startswith(str(VENV) + "/"):
        return f"{FILTER} is not the e2e venv's ({os.path.realpath(FILTER)}): another installation"
    return None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    timeout: float = 60,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text, and say what it printed when it fails."""
    done = subprocess.run(
        [os.fspath(a) for a in argv],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user,
        group=pwd.getpwnam(user).pw_gid if user else None,
        extra_groups=[] if user else None,
        cwd="/",
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, argv))} exited {done.returncode}\n{done.stdout}{done.stderr}"
        )
    return done


def wait_for(
    what: str,
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    report: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something true; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{report()}" if report else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{details}")
        time.sleep(0.2)


@contextlib.contextmanager
def exclusive_mtas(timeout: float = 1800) -> Iterator[None]:
    """Hold the lock that keeps two programs from driving these MTAs at the same time.

    An e2e session reinstalls the filter, rewrites /etc/postfix, the Exim configuration and
    /etc/scatterguard, restarts Postfix and empties the mailboxes: two sessions at once (or a
    session and a benchmark doing the same) spoil each other's results. Whoever comes second
    waits here for the first to finish.
    """
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"another program held {LOCK} for {timeout:g}s: it still drives the MTAs"
                    ) from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- the filter --------------------------------------------------------------------------------


def install_filter() -> None:
    """Install the checkout into the e2e venv, so the MTAs run the code under test.

    Only the files a build needs are copied out first: building in the checkout would leave
    ``build/`` behind, and the filter user cannot read a checkout under /root anyway.
    """
    stage = RUN / "src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, stage / name)
    shutil.copytree(
        REPO / "filter",
        stage / "filter",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    pip: list[str | os.PathLike[str]] = [
        VENV / "bin" / "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
    ]
    run([*pip, "--no-index", "--force-reinstall", stage], timeout=300)
    shutil.rmtree(stage, ignore_errors=True)


class LogSink:
    """A syslog socket (datagrams) that collects the filter's log lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.fspath(path))
        # The filter runs as its own user and must be able to send here.
        path.chmod(0o666)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace").strip("\x00\n"))

    def events(self, event: str) -> list[tuple[int, str]]:
        """The lines logging ``event``, each with the pid of the process that logged it."""
        found = []
        for line in list(self.lines):
            match = _LOG_LINE.search(line)
            if match and match.group(2) == event:
                found.append((int(match.group(1)), line))
        return found

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


# A line as journal.py sends it to syslog: "<22>scatterguard[PID]: event='message' ...".
_LOG_LINE = re.compile(r"scatterguard\[(\d+)\]: event='([^']*)'")


@dataclass
class FilterSetup:
    """``/etc/scatterguard/scatterguard.toml`` for one MTA, put back as it was afterwards."""

    dns_address: str
    reinject: Sequence[str] | None = None
    _saved: bytes | None = None
    _created_dir: bool = False

    def install(self) -> None:
        # A file with our first line was left by a run that died: it is not the original.
        if CONFIG.exists() and not CONFIG.read_text().startswith(CONFIG_HEADER):
            self._saved = CONFIG.read_bytes()
        elif not CONFIG.parent.exists():
            self._created_dir = True
        CONFIG.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            CONFIG_HEADER,
            f'authserv_id = "{AUTHSERV_ID}"',
            'defer_max_age = "1d"',
            # Well above a few DNS timeouts, well below the MTAs' limits.
            'timeout = "60s"',
            "[dns]",
            f'nameservers = ["{self.dns_address}"]',
            "timeout = 1.0",
            "[quarantine]",
            f'directory = "{QUARANTINE}"',
            "[state]",
            f'directory = "{STATE}"',
            "[log]",
            'target = "syslog"',
            f'socket = "{RUN / "log.sock"}"',
            # Written in both modes: with no server listening, the filter works in-process.
            "[server]",
            f'socket = "{SERVER_SOCKET}"',
            f"workers = {SERVER_WORKERS}",
        ]
        if self.reinject is not None:
            lines += ["[reinject]", "command = " + json.dumps(list(self.reinject))]
        CONFIG.write_text("\n".join(lines) + "\n")
        CONFIG.chmod(0o644)

    def restore(self) -> None:
        if self._saved is not None:
            CONFIG.write_bytes(self._saved)
        else:
            CONFIG.unlink(missing_ok=True)
            if self._created_dir:
                CONFIG.parent.rmdir()


def reset_quarantine(writable: bool = True) -> None:
    """An empty quarantine owned by the filter user, or (``writable=False``) one it cannot use;
    and an empty state directory (spool, delivery record) the filter user can always use."""
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    user = pwd.getpwnam(FILTER_USER)
    os.chown(STATE, user.pw_uid, user.pw_gid)
    STATE.chmod(0o700)
    shutil.rmtree(QUARANTINE, ignore_errors=True)
    QUARANTINE.mkdir(parents=True)
    QUARANTINE.parent.chmod(0o755)
    if writable:
        user = pwd.getpwnam(FILTER_USER)
        os.chown(QUARANTINE, user.pw_uid, user.pw_gid)
        QUARANTINE.chmod(0o700)
    else:
        QUARANTINE.chmod(0o755)


def scatterguard(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``scatterguard`` as the filter user, as a postmaster would."""
    return run([FILTER, *args], user=FILTER_USER, check=check, timeout=120)


def quarantine_list() -> list[dict[str, Any]]:
    """The quarantine entries, from ``scatterguard quarantine list --json``."""
    entries: list[dict[str, Any]] = json.loads(scatterguard("quarantine", "list", "--json").stdout)
    return entries


# --- the resident server ----------------------------------------------------------------------


class ResidentServer:
    """``scatterguard serve`` started by hand, as ``scatterguard.service`` would start it.

    The same command line (``/usr/bin/scatterguard serve``), as the same user, reading the same
    ``/etc/scatterguard/scatterguard.toml`` as the filter the MTAs run, so the socket, the worker
    count and the log target all come from that file. Its workers log to the harness's sink with
    their own pids, which is how a test tells a decision made by the server from one made
    in-process.
    """

    def __init__(self, sink: LogSink) -> None:
        self.sink = sink
        self.process: subprocess.Popen[bytes] | None = None
        # Every worker pid seen, including workers that were killed or replaced since.
        self.seen_workers: set[int] = set()
        SERVER_OUTPUT.write_bytes(b"")

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server was never started"
        return self.process.pid

    def start(self) -> None:
        """Start a server and wait until its master has logged that every worker is up."""
        user = pwd.getpwnam(FILTER_USER)
        SERVER_DIR.mkdir(parents=True, exist_ok=True)
        os.chown(SERVER_DIR, user.pw_uid, user.pw_gid)
        SERVER_DIR.chmod(0o755)
        with SERVER_OUTPUT.open("ab") as output:
            self.process = subprocess.Popen(
                [os.fspath(FILTER), "serve"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                cwd="/",
                # A service's environment, not the test runner's (no PYTHONPATH, no pyenv).
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )
        wait_for("scatterguard serve to start", self._ready, timeout=30, report=self.output)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"scatterguard serve exited {self.process.returncode}\n{self.output()}"
            )
        logged = any(pid == self.pid for pid, _ in self.sink.events("serve"))
        return logged and len(self.workers()) == SERVER_WORKERS and SERVER_SOCKET.is_socket()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def workers(self) -> list[int]:
        """The master's live worker processes (remembered in :attr:`seen_workers`)."""
        if not self.running():
            return []
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return []
        pids = [int(pid) for pid in children if _alive(int(pid))]
        self.seen_workers.update(pids)
        return pids

    def holder(self) -> tuple[int, int] | None:
        """(worker pid, filter pid) once a worker holds the stdin of a running filter.

        The filter passes its stdin to the server with SCM_RIGHTS, so the worker then has the
        very same pipe or socket open (the same inode in /proc/PID/fd) as the filter the MTA
        started: that is the worker holding the message.
        """
        clients: dict[str, int] = {}
        for pid in _filter_clients():
            with contextlib.suppress(OSError):
                clients[os.readlink(f"/proc/{pid}/fd/0")] = pid
        for worker in self.workers():
            for link in _fd_links(worker):
                if link in clients:
                    return worker, clients[link]
        return None

    def kill(self) -> list[int]:
        """SIGKILL the master, then each of its workers; return the workers' pids."""
        assert self.process is not None
        workers = self.workers()
        # The master first: once it is gone, nothing starts a replacement for a killed worker.
        self.process.kill()
        self.process.wait(timeout=30)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for("the killed workers to die", lambda: not any(map(_alive, workers)))
        return workers

    def stop(self) -> int | None:
        """SIGTERM the master, which stops its workers; its exit status, or None if not running."""
        if not self.running():
            return None
        assert self.process is not None
        workers = self.workers()
        self.process.terminate()
        try:
            code = self.process.wait(timeout=60)
        finally:
            # Never leave a worker behind, whatever the master did.
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    if _alive(pid):
                        os.kill(pid, signal.SIGKILL)
        return code

    def output(self) -> str:
        """What the server printed on stdout and stderr (nothing, when all is well)."""
        if not SERVER_OUTPUT.exists():
            return ""
        return "--- scatterguard serve output ---\n" + SERVER_OUTPUT.read_text()[-4000:]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _filter_clients() -> list[int]:
    """Running ``scatterguard filter`` processes (the ones the MTAs start).

    Not their re-injection processes: forks with the same command line that name themselves
    ``sg-reinject`` (see scatterguard.actions.delivery) and belong to the re-injection, like
    sendmail.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            comm = (entry / "comm").read_bytes().strip()
        except OSError:
            continue
        if os.fsencode(FILTER) in argv and b"filter" in argv and comm != b"sg-reinject":
            pids.append(int(entry.name))
    return pids


def _fd_links(pid: int) -> list[str]:
    """What each open file descriptor of ``pid`` refers to (``pipe:[N]``, ``socket:[N]``, ...)."""
    links = []
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                links.append(os.readlink(fd))
    return links


# --- mailboxes ---------------------------------------------------------------------------------


def mailbox(user: str) -> list[bytes]:
    """The messages in ``/var/mail/USER`` (mbox), each without its ``From `` line."""
    path = Path("/var/mail") / user
    if not path.exists():
        return []
    messages: list[bytes] = []
    current: list[bytes] | None = None
    previous_blank = True
    for line in path.read_bytes().splitlines(keepends=True):
        if line.startswith(b"From ") and previous_blank:
            if current is not None:
                messages.append(b"".join(current))
            current = []
        elif current is not None:
            current.append(line)
        previous_blank = line in (b"\n", b"\r\n")
    if current is not None:
        messages.append(b"".join(current))
    return messages


def clear_mailboxes() -> None:
    """Empty every mailbox (a bounce may land in any of them, e.g. root's or Exim's "mail")."""
    for path in Path("/var/mail").iterdir():
        if path.is_file():
            path.write_bytes(b"")


def all_mail() -> dict[str, list[bytes]]:
    """Every message in every mailbox under /var/mail, by user."""
    return {p.name: mailbox(p.name) for p in sorted(Path("/var/mail").iterdir()) if p.is_file()}


def header_values(message: bytes, name: str) -> list[str]:
    """The unfolded values of the header fields called ``name``, top to bottom."""
    head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    fields = re.split(r"\n(?![ \t])", head)
    values = []
    for item in fields:
        key, sep, value = item.partition(":")
        if sep and key.strip().lower() == name.lower():
            values.append(re.sub(r"\s+", " ", value).strip())
    return values


def header_names(message: bytes) -> list[str]:
    head = message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode("utf-8", "replace")
    return [f.partition(":")[0].strip() for f in re.split(r"\n(?![ \t])", head) if f]


def is_dsn(message: bytes) -> bool:
    """True for a delivery status notification (RFC 3464) or a bounce in Exim's own words."""
    text = message.decode("utf-8", "replace").lower()
    return (
        "multipart/report" in text
        or "report-type=delivery-status" in text
        or "mail delivery failed" in text
        or "undelivered mail returned to sender" in text
    )


# --- test messages -----------------------------------------------------------------------------


@dataclass
class DkimKey:
    """An RSA key for DKIM signing, with the TXT record that publishes it."""

    domain: str
    selector: str
    private_pem: bytes = field(repr=False)
    public_b64: str

    @classmethod
    def generate(cls, domain: str, selector: str) -> DkimKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(domain, selector, private_pem, base64.b64encode(public_der).decode())

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}."

    @property
    def record(self) -> str:
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def sign(self, message: bytes) -> bytes:
        import dkim

        signature: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        # dkimpy folds with LF; SMTP wants CRLF on the wire.
        return signature.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message

    def verifies(self, message: bytes) -> bool:
        """Whether the first DKIM signature of ``message`` verifies against this key."""
        import dkim

        record = self.record.encode()

        def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
            asked = name.decode() if isinstance(name, bytes) else name
            return record if asked.rstrip(".") == self.record_name.rstrip(".") else b""

        return bool(dkim.verify(message, dnsfunc=dnsfunc))


def make_message(
    *,
    from_: str,
    to: Iterable[str],
    subject: str,
    extra_headers: Iterable[str] = (),
    body: str = "Hello,\r\n\r\nthis is a test message.\r\n",
) -> tuple[bytes, str]:
    """A small RFC 5322 message with CRLF line ends, and its Message-ID."""
    message_id = email.utils.make_msgid(domain="e2e.test")
    lines = [
        *extra_headers,
        f"From: {from_}",
        f"To: {', '.join(to)}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate()}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode(), message_id


# --- the MTAs ----------------------------------------------------------------------------------


class Mta:
    """What the scenarios need from an MTA; one subclass per MTA."""

    name = ""
    log_path: Path

    def __init__(self) -> None:
        self._log_offset = 0

    # Life cycle.
    def configure(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        """Put the MTA's configuration back as it was before :meth:`configure`."""
        raise NotImplementedError

    # Mail.
    def send(
        self, sender: str, recipients: Sequence[str], data: bytes, client: str, helo: str
    ) -> None:
        raise NotImplementedError

    def queue(self) -> list[str]:
        """The ids of the messages in the MTA's queue."""
        raise NotImplementedError

    def clear_queue(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Retry every queued message now."""
        raise NotImplementedError

    def deferred_by_filter(self) -> bool:
        """Whether the filter has deferred a message that is now waiting in the queue."""
        raise NotImplementedError

    def filter_deliveries(self) -> int:
        """How many times, since :meth:`mark_log`, a recipient was handed to the filter."""
        raise NotImplementedError

    def filter_deferrals(self) -> int:
        """How many times, since :meth:`mark_log`, the filter deferred a recipient."""
        raise NotImplementedError

    def bounces(self) -> list[str]:
        """Log lines since :meth:`mark_log` that show the MTA writing a bounce."""
        raise NotImplementedError

    def reinject_command(self) -> list[str] | None:
        """The [reinject] command for scatterguard, or None for the built-in default."""
        return None

    def problems(self) -> str:
        """Warnings and errors the MTA logged since :meth:`mark_log` (a broken hook shows here)."""
        raise NotImplementedError

    # Logs.
    def mark_log(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", "replace")


class Postfix(Mta):
    """Debian's Postfix with the hooks applied; test mail enters through smtpd with XCLIENT."""

    name = "postfix"
    log_path = POSTFIX_LOG
    etc = Path("/etc/postfix")
    spool = Path("/var/spool/postfix")
    port = 25

    def configure(self) -> None:
        for name in ("main.cf", "master.cf"):
            backup = self.etc / f"{name}.scatterguard-e2e"
            if backup.exists():
                # A previous run died before restoring: its backup is the original.
                shutil.copy2(backup, self.etc / name)
            else:
                shutil.copy2(self.etc / name, backup)
        main = (self.etc / "main.cf").read_text()
        hook_main = (HOOKS / "postfix" / "main.cf").read_text()
        (self.etc / "main.cf").write_text(merge_main_cf(main, hook_main))
        master = (self.etc / "master.cf").read_text()
        hook_master = (HOOKS / "postfix" / "master.cf").read_text()
        (self.etc / "master.cf").write_text(merge_master_cf(master, hook_master))
        settings = {
            "myhostname": AUTHSERV_ID,
            "mydomain": LOCAL_DOMAIN,
            "myorigin": "$mydomain",
            "mydestination": f"{LOCAL_DOMAIN}, $myhostname, localhost",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            # The loopback test client claims the remote client's address and HELO name.
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8",
            "maillog_file": os.fspath(POSTFIX_LOG),
            # No network: nothing leaves this host, and anything that tries to fails loudly.
            "default_transport": "error:no remote delivery in e2e tests",
            "relay_transport": "error:no remote delivery in e2e tests",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
        }
        run(["postconf", "-e", *(f"{k}={v}" for k, v in settings.items())])
        # Postfix names what it does not like: a bad master.cf entry, or a scatterguard_*
        # parameter that matches no service ("unused parameter").
        check = run(["postfix", "check"], check=False)
        assert check.returncode == 0, check.stderr
        assert check.stderr == "", check.stderr
        warnings = run(["postconf", "-n"]).stderr
        assert warnings == "", warnings

    @contextlib.contextmanager
    def settings(self, **values: str) -> Iterator[None]:
        """Change main.cf parameters for the duration of a ``with`` block."""
        before = {name: run(["postconf", "-h", name]).stdout.rstrip("\n") for name in values}
        run(["postconf", "-e", *(f"{k}={v}" for k, v in values.items())])
        run(["postfix", "reload"])
        try:
            yield
        finally:
            run(["postconf", "-e", *(f"{k}={v}" for k, v in before.items())])
            run(["postfix", "reload"])

    def restore(self) -> None:
        for name in ("main.cf", "master.cf"):
            backup = self.etc / f"{name}.scatterguard-e2e"
            if backup.exists():
                shutil.copy2(backup, self.etc / name)
                backup.unlink()

    def start(self) -> None:
        POSTFIX_LOG.touch()
        # Debian's start-up prepares the chroot (hosts, resolv.conf, ...) this way.
        if Path("/usr/lib/postfix/configure-instance.sh").exists():
            run(["/usr/lib/postfix/configure-instance.sh", "-"], check=False)
        if run(["postfix", "status"], check=False).returncode == 0:
            run(["postfix", "stop"])
            wait_for("Postfix to stop", lambda: not _master_running())
        self.purge_foreign_mail()
        run(["postfix", "start"])
        wait_for("Postfix to listen on port 25", _smtp_listening)

    def stop(self) -> None:
        run(["postfix", "stop"], check=False)
        wait_for("Postfix to stop", lambda: not _master_running())

    def purge_foreign_mail(self) -> None:
        """Empty the queue and the maildrop before Postfix starts.

        Mail left by whatever ran on this host before the tests (a CI image once carried a
        message submitted hours earlier) would otherwise be picked up mid-test, bounced by
        the error transport and counted as backscatter. ``postsuper -d ALL`` leaves
        maildrop alone, so its files are removed here, with Postfix stopped.
        """
        run(["postsuper", "-d", "ALL"], check=False)
        maildrop = self.spool / "maildrop"
        for leftover in sorted(maildrop.iterdir()) if maildrop.is_dir() else []:
            print(f"e2e: removing leftover maildrop file {leftover.name}", file=sys.stderr)
            leftover.unlink(missing_ok=True)

    def send(
        self, sender: str, recipients: Sequence[str], data: bytes, client: str, helo: str
    ) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, "localhost", timeout=60) as smtp:
            smtp.ehlo("localhost")
            code, text = smtp.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE] HELO={helo}")
            assert code == 220, (code, text)
            smtp.ehlo(helo)
            smtp.sendmail(sender, list(recipients), data)

    def _entries(self) -> list[dict[str, Any]]:
        out = run(["postqueue", "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue(self) -> list[str]:
        return [entry["queue_id"] for entry in self._entries()]

    def clear_queue(self) -> None:
        run(["postsuper", "-d", "ALL"], check=False)

    def flush(self) -> None:
        run(["postqueue", "-f"])

    def deferred_by_filter(self) -> bool:
        logged = self.filter_deferrals() > 0
        return logged and any(e["queue_name"] == "deferred" for e in self._entries())

    def filter_deferrals(self) -> int:
        return len(re.findall(r"relay=scatterguard, .*status=deferred", self.log()))

    def filter_deliveries(self) -> int:
        return len(
            re.findall(r"postfix/pipe\[\d+\]: \w+: to=<[^>]*>, relay=scatterguard", self.log())
        )

    def bounces(self) -> list[str]:
        return [line for line in self.log().splitlines() if "sender non-delivery" in line]

    def problems(self) -> str:
        pattern = re.compile(r"postfix/[\w/-]+\[\d+\]: (?:warning|error|fatal|panic):")
        return "\n".join(line for line in self.log().splitlines() if pattern.search(line))


# A main.cf parameter definition: a logical line that starts in column 1 with "name =".
_MAIN_CF_PARAMETER = re.compile(r"([A-Za-z0-9_]+)[ \t]*=")


def _main_cf_entries(text: str) -> list[tuple[str | None, list[str]]]:
    """``text`` cut into parameter definitions (name, lines) and other lines (None, [line]).

    Lines keep their line ends. A definition goes on over the lines that start with whitespace
    (postconf(5)); comments, blank lines and anything else stand alone.
    """
    blocks: list[tuple[str | None, list[str]]] = []
    for line in text.splitlines(keepends=True):
        definition = _MAIN_CF_PARAMETER.match(line)
        if definition:
            blocks.append((definition.group(1), [line]))
        elif line[:1] in (" ", "\t") and line.strip() and blocks and blocks[-1][0]:
            blocks[-1][1].append(line)
        else:
            blocks.append((None, [line]))
    return blocks


def merge_main_cf(base: str, hook: str) -> str:
    """``base`` with ``hook`` appended once, as hooks/README.md tells a postmaster to do.

    ``base`` may carry the hook's lines already: a run killed before it restored main.cf, a
    machine whose postmaster followed the README, the autopkgtest's leftovers. Appending again
    would define each parameter twice, and Postfix warns about the earlier one ("overriding
    earlier entry"), which fails :meth:`Postfix.configure`. So an earlier copy of ``hook`` is
    taken out, and so is every other definition (with its continuation lines) of a parameter
    ``hook`` defines; every other line of ``base`` is kept byte for byte. Applying this twice
    gives what applying it once gives.
    """
    lines = base.splitlines(keepends=True)
    hook_lines = hook.splitlines()
    size = len(hook_lines)
    start = 0
    while size and start + size <= len(lines):
        if [line.rstrip("\r\n") for line in lines[start : start + size]] == hook_lines:
            del lines[start : start + size]
        else:
            start += 1
    hook_names = {name for name, _ in _main_cf_entries(hook) if name}
    kept = [
        line
        for name, block in _main_cf_entries("".join(lines))
        if name not in hook_names
        for line in block
    ]
    return "".join(kept).rstrip("\n") + "\n\n" + hook


def merge_master_cf(base: str, hook: str) -> str:
    """Put the entries of ``hook`` in place of ``base``'s entries with the same name and type.

    This is what hooks/README.md tells a postmaster to do; entries that are commented out in the
    hook (the submission example) are not entries, so they change nothing.
    """

    def entries(text: str) -> list[tuple[str | None, list[str]]]:
        blocks: list[tuple[str | None, list[str]]] = []
        for line in text.splitlines():
            if line[:1].strip() and not line.startswith("#"):
                fields = line.split()
                blocks.append((f"{fields[0]}/{fields[1]}", [line]))
            elif line[:1] in (" ", "\t") and line.strip() and blocks and blocks[-1][0]:
                blocks[-1][1].append(line)
            else:
                blocks.append((None, [line]))
        return blocks

    hook_entries = {key: lines for key, lines in entries(hook) if key}
    merged: list[str] = []
    for key, lines in entries(base):
        if key in hook_entries:
            merged.extend(hook_entries.pop(key))
        else:
            merged.extend(lines)
    for lines in hook_entries.values():
        merged.extend(lines)
    return "\n".join(merged) + "\n"


def _master_running() -> bool:
    return run(["postfix", "status"], check=False).returncode == 0


def _smtp_listening() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 25), timeout=1):
            return True
    except OSError:
        return False


class Exim(Mta):
    """Debian's split Exim configuration plus the hooks; test mail enters with ``exim -bs``."""

    name = "exim"
    log_path = EXIM_LOG

    def configure(self) -> None:
        confdir = RUN / "exim4"
        shutil.rmtree(confdir, ignore_errors=True)
        shutil.copytree(EXIM_ROOT / "etc" / "exim4", confdir)
        # The hook files go where hooks/README.md says: /etc/exim4/conf.d/<section>/.
        shutil.copytree(HOOKS / "exim4" / "conf.d", confdir / "conf.d", dirs_exist_ok=True)
        # What a test host needs on top: its name, and no reverse lookups of the made-up client
        # addresses (Exim would ask the system resolver, which is not ours and not on loopback).
        # Nor should Exim verify DKIM itself (it would look the keys up the same way): checking
        # DKIM is the filter's job here. Both are Debian's own switches.
        (confdir / "conf.d" / "main" / "000_e2e").write_text(
            f"MAIN_HARDCODE_PRIMARY_HOSTNAME = {AUTHSERV_ID}\n"
            "MAIN_HOST_LOOKUP =\n"
            "DISABLE_DKIM_VERIFY = 1\n"
        )
        (confdir / "update-exim4.conf.conf").write_text(
            "\n".join(
                [
                    "dc_eximconfig_configtype='local'",
                    f"dc_other_hostnames='{LOCAL_DOMAIN}'",
                    "dc_local_interfaces='127.0.0.1'",
                    "dc_readhost=''",
                    "dc_relay_domains=''",
                    "dc_minimaldns='false'",
                    "dc_relay_nets=''",
                    "dc_smarthost=''",
                    "CFILEMODE='644'",
                    "dc_use_split_config='true'",
                    "dc_hide_mailname=''",
                    "dc_mailname_in_oh='true'",
                    "dc_localdelivery='mail_spool'",
                ]
            )
            + "\n"
        )
        update = EXIM_ROOT / "usr" / "sbin" / "update-exim4.conf"
        run([update, "--confdir", confdir, "--output", EXIM_CONFIG])
        EXIM_CONFIG.chmod(0o644)
        run([EXIM, "-bV"])

    def restore(self) -> None:
        EXIM_CONFIG.unlink(missing_ok=True)

    def start(self) -> None:
        # No daemon: test mail is given to "exim -bs" (Postfix owns port 25), deliveries run
        # from the receiving process, and flush() runs the queue.
        EXIM_LOG.parent.mkdir(parents=True, exist_ok=True)
        EXIM_PANICLOG.unlink(missing_ok=True)

    def stop(self) -> None:
        wait_for("Exim processes to finish", lambda: not _pids_of(EXIM), timeout=60)

    def send(
        self, sender: str, recipients: Sequence[str], data: bytes, client: str, helo: str
    ) -> None:
        # -oMa/-oMs (root only) make the session look like one from `client`; -oMs also spares
        # Exim a reverse lookup.
        argv = [os.fspath(EXIM), "-bs", "-oMa", client, "-oMs", helo]
        with subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as proc:
            session = _StdioSmtp(proc)
            session.expect(220)
            session.command(f"EHLO {helo}", 250)
            session.command(f"MAIL FROM:<{sender}>", 250)
            for rcpt in recipients:
                session.command(f"RCPT TO:<{rcpt}>", 250)
            session.command("DATA", 354)
            session.send_data(data)
            session.expect(250)
            session.command("QUIT", 221)
            proc.wait(timeout=60)

    def queue(self) -> list[str]:
        out = run([EXIM, "-bp"]).stdout
        return re.findall(r"^\s*\S+\s+\S+\s+(\S{16,23})\s", out, re.MULTILINE)

    def clear_queue(self) -> None:
        ids = self.queue()
        if ids:
            run([EXIM, "-Mrm", *ids], check=False)
        # Retry hints from one scenario's deferral must not hold back the next one's mail.
        for hints in Path("/var/spool/exim4/db").glob("retry*"):
            hints.unlink()

    def flush(self) -> None:
        run([EXIM, "-qff"], timeout=120)

    def deferred_by_filter(self) -> bool:
        return self.filter_deferrals() > 0 and bool(self.queue())

    def filter_deferrals(self) -> int:
        return len(re.findall(r"== \S+ R=scatterguard T=scatterguard defer", self.log()))

    def filter_deliveries(self) -> int:
        # One log line per recipient for delivered ("=>" or "->"), failed ("**") or deferred.
        return len(re.findall(r"(?:=>|->|\*\*|==) \S+.* R=scatterguard T=scatterguard", self.log()))

    def bounces(self) -> list[str]:
        return [line for line in self.log().splitlines() if " <= <> R=" in line]

    def reinject_command(self) -> list[str]:
        # As hooks/README.md tells an Exim postmaster to configure it.
        return [
            os.fspath(EXIM),
            "-oMr",
            EXIM_PROTOCOL,
            "-i",
            "-f",
            "{sender}",
            "--",
            "{recipients}",
        ]

    def mark_log(self) -> None:
        super().mark_log()
        EXIM_PANICLOG.unlink(missing_ok=True)

    def problems(self) -> str:
        return EXIM_PANICLOG.read_text() if EXIM_PANICLOG.exists() else ""


class _StdioSmtp:
    """Just enough of an SMTP client to talk to ``exim -bs`` over its stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        self.proc = proc
        self.stdin = proc.stdin
        self.stdout = proc.stdout

    def expect(self, code: int) -> str:
        lines = []
        while True:
            line = self.stdout.readline().decode("utf-8", "replace")
            if not line:
                stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"exim -bs closed the session; wanted {code}: {stderr}")
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                break
        reply = "\n".join(lines)
        assert reply.startswith(str(code)), f"wanted {code}, got: {reply}"
        return reply

    def command(self, text: str, code: int) -> str:
        self.stdin.write(text.encode() + b"\r\n")
        self.stdin.flush()
        return self.expect(code)

    def send_data(self, data: bytes) -> None:
        lines = data.replace(b"\r\n", b"\n").split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        stuffed = b"".join(
            (b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines
        )
        self.stdin.write(stuffed + b".\r\n")
        self.stdin.flush()


def _pids_of(binary: Path) -> list[int]:
    """Processes running ``binary`` (by its resolved path)."""
    target = os.path.realpath(binary)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.path.realpath(entry / "exe") == target:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


MTAS: dict[str, type[Mta]] = {"postfix": Postfix, "exim": Exim}
