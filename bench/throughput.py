"""Throughput through a real Postfix: the pipe filters and amavisd-new, on one Postfix, one run.

Postfix is configured by the end-to-end harness (tests/e2e/harness.py) from hooks/, exactly as the
tests use it, and then given the benchmark's extras with postconf: local mail goes to Maildirs (so
delivered messages can be counted), the pipe services run the benchmark's venv, and there are
services for the null filter, the resident server and amavisd-new. Which one filters the mail
received on port 25 is the ``content_filter`` of the ``smtp`` service, switched with
``postconf -P`` and ``postfix reload`` between batches.

Postfix, every program it starts (smtpd, qmgr, pipe, the filters, sendmail, postdrop, pickup,
cleanup, local) and amavisd-new run in one cgroup, so a batch's CPU time is the difference of two
readings of its ``cpu.stat``. The DNS server and this program (the SMTP client) are outside it.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from measure import CpuGroup

from e2e import harness

MAILDIR = Path("/home/alice/Maildir")
RECIPIENT = "alice@example.net"
AMAVIS_CONF = "/run/scatterguard-bench/amavis.conf"
AMAVIS_PID = Path("/run/amavis/amavisd.pid")
SUBMIT_THREADS = 4

# The amavisd-new side of Postfix, as Debian's README.Postfix and amavisd-new's README.postfix give
# it: a "smtp-amavis" client towards port 10024 and a re-injection smtpd on 127.0.0.1:10025 that
# filters nothing. The second client differs only in not using PIPELINING towards amavisd-new.
AMAVIS_CLIENT = (
    "{name} unix - - n - 2 smtp -o smtp_data_done_timeout=1200 -o smtp_send_xforward_command=yes"
    " -o smtp_dns_support_level=disabled -o max_use=20 -o smtp_tls_security_level=none{extra}"
)
AMAVIS_REINJECT = (
    "127.0.0.1:10025/inet=127.0.0.1:10025 inet n - n - - smtpd -o content_filter="
    " -o local_recipient_maps= -o relay_recipient_maps= -o smtpd_restriction_classes="
    " -o smtpd_delay_reject=no -o smtpd_client_restrictions=permit_mynetworks,reject"
    " -o smtpd_helo_restrictions= -o smtpd_sender_restrictions="
    " -o smtpd_recipient_restrictions=permit_mynetworks,reject"
    " -o smtpd_data_restrictions=reject_unauth_pipelining -o smtpd_end_of_data_restrictions="
    " -o mynetworks=127.0.0.0/8 -o smtpd_error_sleep_time=0 -o smtpd_soft_error_limit=1001"
    " -o smtpd_hard_error_limit=1000 -o smtpd_client_connection_count_limit=0"
    " -o smtpd_client_connection_rate_limit=0 -o smtpd_authorized_xforward_hosts=127.0.0.0/8"
    " -o receive_override_options=no_header_body_checks,no_unknown_recipient_checks,no_milters"
)
AMAVIS_SETTINGS = """\
# Written by scatterguard's bench/ for one run; read after Debian's own conf.d files.
use strict;
$myhostname = 'mx.example.net';
$mydomain = 'example.net';
@local_domains_maps = (['.example.net']);
@mynetworks = qw(127.0.0.0/8);
# What the benchmark compares: DKIM verification on, spam and virus scanning off.
@bypass_virus_checks_maps = (1);
@bypass_spam_checks_maps = (1);
$enable_dkim_verification = 1;
$enable_dkim_signing = 0;
$inet_socket_port = 10024;
$forward_method = 'smtp:[127.0.0.1]:10025';
$notify_method = 'smtp:[127.0.0.1]:10025';
# As many as the pipe filters get: two at a time.
$max_servers = 2;
1;
"""


@dataclass
class Batch:
    """One batch of messages through one configuration."""

    config: str
    messages: int
    seconds: float  # from the first connection to the last message in the mailbox
    submit_seconds: float
    cpu: float | None  # seconds of CPU in the MTA's cgroup
    dns_cpu: float | None
    verified: int  # delivered messages whose filter recorded dkim=pass
    problems: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class BenchPostfix(harness.Postfix):
    """The e2e harness's Postfix (hooks/ applied), with the benchmark's services added."""

    def __init__(self, group: CpuGroup) -> None:
        super().__init__()
        self.group = group
        self.filters: dict[str, str] = {}  # config name -> content_filter value
        self.ours: bytes | None = None  # main.cf and master.cf as this benchmark wrote them

    def add_services(
        self,
        *,
        scatterguard_argv: str,
        null_argv: str,
        server_argv: str | None,
        amavis: bool,
    ) -> None:
        # The command and its arguments: the fields after the first seven of the entry (postconf
        # -F glues continuation lines together without a space, -M does not).
        entry = harness.run(["postconf", "-M", "scatterguard/unix"]).stdout.split()
        hook_command = " ".join(entry[7:])
        if "argv=/usr/bin/scatterguard filter " not in hook_command:
            raise RuntimeError(f"unexpected scatterguard service in hooks/: {hook_command}")
        flags = hook_command.split("argv=")[0].strip()  # "pipe flags=Rq user=... null_sender="
        filter_args = hook_command.split("argv=/usr/bin/scatterguard filter ", 1)[1]
        harness.run(
            [
                "postconf",
                "-F",
                f"scatterguard/unix/command={flags} argv={scatterguard_argv} {filter_args}",
            ]
        )
        self.filters["scatterguard"] = "scatterguard:dummy"
        entries = [
            f"nullfilter/unix=nullfilter unix - n n - 2 {flags} argv={null_argv} {filter_args}"
        ]
        self.filters["null"] = "nullfilter:dummy"
        if server_argv:
            entries.append(
                f"sgserver/unix=sgserver unix - n n - 2 {flags} argv={server_argv} {filter_args}"
            )
            self.filters["server"] = "sgserver:dummy"
        if amavis:
            entries.append("smtp-amavis/unix=" + AMAVIS_CLIENT.format(name="smtp-amavis", extra=""))
            entries.append(
                "smtp-amavis-nopipe/unix="
                + AMAVIS_CLIENT.format(
                    name="smtp-amavis-nopipe", extra=" -o smtp_discard_ehlo_keywords=pipelining"
                )
            )
            entries.append(AMAVIS_REINJECT)
            self.filters["amavis"] = "smtp-amavis:[127.0.0.1]:10024"
            self.filters["amavis-nopipe"] = "smtp-amavis-nopipe:[127.0.0.1]:10024"
        for entry in entries:
            harness.run(["postconf", "-M", entry])
        settings = {"home_mailbox": "Maildir/"}
        # Only for services that exist: Postfix warns about (and postfix check reports) others.
        services = [value.split(":")[0] for value in self.filters.values()]
        for service in services:
            settings[f"{service}_destination_concurrency_limit"] = "2"
        for service in services:
            if service.startswith(("nullfilter", "sgserver")):
                settings[f"{service}_destination_recipient_limit"] = "100"
                settings[f"{service}_time_limit"] = "400s"
        harness.run(["postconf", "-e", *(f"{k}={v}" for k, v in settings.items())])
        check = harness.run(["postfix", "check"], check=False)
        if check.returncode != 0 or check.stderr:
            raise RuntimeError(f"postfix check: {check.stderr}")
        self.ours = fingerprint()

    def restore(self) -> None:
        """Put the original configuration back, unless another program has changed it since."""
        if self.ours is None or fingerprint() == self.ours:
            super().restore()

    def start(self) -> None:
        harness.POSTFIX_LOG.touch()
        if Path("/usr/lib/postfix/configure-instance.sh").exists():
            harness.run(["/usr/lib/postfix/configure-instance.sh", "-"], check=False)
        if harness.run(["postfix", "status"], check=False).returncode == 0:
            self.stop()
        # Started inside the cgroup: the master and everything it ever starts stay in it.
        self.group.run(["postfix", "start"], timeout=60)
        harness.wait_for("Postfix to listen on port 25", harness._smtp_listening)

    def use(self, config: str) -> None:
        """Make the smtp service hand its mail to ``config``'s filter."""
        value = self.filters[config]
        harness.run(["postconf", "-P", f"smtp/inet/content_filter={value}"])
        self.ours = fingerprint()
        harness.run(["postfix", "reload"])
        time.sleep(1.5)  # let the old smtpd processes go (reload is asynchronous)

    def queue_empty(self) -> bool:
        return not harness.run(["postqueue", "-j"]).stdout.strip()


def others_using_postfix() -> list[str]:
    """Command lines of other processes that reconfigure this Postfix (the e2e tests, tests/all)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        # The e2e tests, tests/all, and the package's autopkgtest (which runs this Postfix too).
        markers = ("tests/e2e", "tests/all", "tests/package", "autopkgtest")
        if any(m in text for m in markers) or ("pytest" in text and " e2e" in text):
            found.append(text.strip())
    return found


def wait_until_postfix_is_free(say: Callable[[str], None], timeout: float = 1800) -> str:
    """Wait while the e2e tests (which reconfigure Postfix too) run; '' or a warning."""
    deadline = time.monotonic() + timeout
    told = 0.0
    while others := others_using_postfix():
        if time.monotonic() > deadline:
            return f"went ahead although another program uses Postfix: {others[0][:100]}"
        if time.monotonic() - told > 60:
            say(f"waiting for another user of Postfix to finish: {others[0][:100]}")
            told = time.monotonic()
        time.sleep(5)
    return ""


def fingerprint() -> bytes:
    """The Postfix configuration as it is now, to notice another program changing it."""
    return b"".join(Path(f"/etc/postfix/{name}").read_bytes() for name in ("main.cf", "master.cf"))


class Amavis:
    """Debian's amavisd-new, started by hand with the benchmark's settings read last."""

    def __init__(self, group: CpuGroup, dns_port: int) -> None:
        self.group = group
        self.dns_port = dns_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.stop_packaged()
        Path(AMAVIS_CONF).write_text(AMAVIS_SETTINGS)
        Path(AMAVIS_CONF).chmod(0o644)
        AMAVIS_PID.parent.mkdir(exist_ok=True)
        os.chown(AMAVIS_PID.parent, *_ids("amavis"))
        argv = ["/usr/sbin/amavisd"]
        for directory in ("/usr/share/amavis/conf.d", "/etc/amavis/conf.d"):
            for name in sorted(os.listdir(directory)):
                if not name.endswith(("~", ".dpkg-old", ".dpkg-new", ".dpkg-dist")):
                    argv += ["-c", f"{directory}/{name}"]
        argv += ["-c", AMAVIS_CONF, "foreground"]
        # amavisd-new gives Mail::DKIM a Net::DNS resolver that reads /etc/resolv.conf and nothing
        # else. It gets a private one, pointing at the benchmark's DNS server, in a mount
        # namespace of its own (Net::DNS reads "options port:N"; the rest of the machine keeps
        # its resolver).
        resolv = Path("/run/scatterguard-bench/amavis-resolv.conf")
        resolv.write_text(f"nameserver 127.0.0.1\noptions port:{self.dns_port}\n")
        resolv.chmod(0o644)
        script = f'mount --bind {resolv} /etc/resolv.conf && exec "$@"'
        argv = ["unshare", "--mount", "sh", "-c", script, "sh", *argv]
        env = dict(os.environ)
        log = open("/run/scatterguard-bench/amavis.out", "wb")  # noqa: SIM115 - lives with the daemon
        self.proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=log, preexec_fn=self.group.preexec, cwd="/"
        )
        harness.wait_for(
            "amavisd-new to listen on 10024",
            lambda: _listening(10024),
            timeout=60,
            report=lambda: Path("/run/scatterguard-bench/amavis.out").read_text(),
        )

    def stop_packaged(self) -> None:
        """Stop an amavisd-new the package started (its postinst does on a machine with systemd)."""
        if AMAVIS_PID.exists():
            subprocess.run(["/usr/sbin/amavisd", "stop"], capture_output=True, check=False)
        if shutil.which("systemctl") and Path("/run/systemd/system").exists():
            subprocess.run(["systemctl", "stop", "amavis"], capture_output=True, check=False)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def delivered() -> list[Path]:
    new = MAILDIR / "new"
    try:
        return [new / name for name in os.listdir(new)]
    except FileNotFoundError:
        return []


def clear_maildir() -> None:
    for sub in ("new", "cur", "tmp"):
        directory = MAILDIR / sub
        if directory.is_dir():
            for name in os.listdir(directory):
                (directory / name).unlink(missing_ok=True)


def submit(messages: Sequence[bytes], sender: str, client: str, helo: str) -> None:
    """Send ``messages`` to port 25 from a few threads, one SMTP session each."""
    errors: list[BaseException] = []

    def worker(part: Sequence[bytes]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", 25, "localhost", timeout=120) as smtp:
                smtp.ehlo("localhost")
                code, text = smtp.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE] HELO={helo}")
                if code != 220:
                    raise RuntimeError(f"XCLIENT refused: {code} {text!r}")
                smtp.ehlo(helo)
                for data in part:
                    smtp.sendmail(sender, [RECIPIENT], data)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(messages[i::SUBMIT_THREADS],))
        for i in range(SUBMIT_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"submission failed: {errors[0]!r}")


def run_batch(
    postfix: BenchPostfix,
    config: str,
    messages: Sequence[bytes],
    *,
    sender: str,
    client: str,
    helo: str,
    dns_group: CpuGroup,
    timeout: float = 900.0,
) -> Batch:
    """Send ``messages`` through ``config`` and wait until all are in alice's Maildir."""
    if postfix.ours is not None and fingerprint() != postfix.ours:
        raise RuntimeError(
            "Postfix was reconfigured by another program during the benchmark (the e2e tests?)"
        )
    postfix.use(config)
    clear_maildir()
    postfix.mark_log()
    cpu0, dns0 = postfix.group.usage(), dns_group.usage()
    started = time.perf_counter()
    submit(messages, sender, client, helo)
    submitted = time.perf_counter() - started
    deadline = started + timeout
    problems = ""
    polls = 0
    while len(delivered()) < len(messages):
        if time.perf_counter() > deadline:
            problems = f"timed out: {len(delivered())} of {len(messages)} delivered"
            break
        polls += 1
        if polls % 100 == 0 and (fingerprint() != postfix.ours or not harness._master_running()):
            raise RuntimeError(
                "Postfix was stopped or reconfigured by another program during the benchmark"
            )
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    cpu1, dns1 = postfix.group.usage(), dns_group.usage()
    verified = 0
    for path in delivered():
        head = path.read_bytes().partition(b"\n\n")[0]
        if b"dkim=pass" in head:
            verified += 1
    deferred = postfix.log().count("status=deferred")
    if deferred:
        problems += f" {deferred} deferrals in the Postfix log"
    clear_maildir()
    harness.wait_for("the queue to empty", postfix.queue_empty, timeout=60)
    return Batch(
        config,
        len(messages),
        seconds,
        submitted,
        None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        None if dns0 is None or dns1 is None else dns1 - dns0,
        verified,
        problems.strip(),
    )


def pipe_argv(*words: str) -> str:
    """A pipe(8) argv prefix: pipe(8) splits on whitespace and knows no quoting."""
    for word in words:
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"pipe(8) cannot pass {shlex.quote(word)} as one argument")
    return " ".join(words)
