"""``scatterguard filter``: each action end to end through the real CLI, and every fault a deferral.

The filter runs as a subprocess, exactly as the MTA runs it, with its DNS pointed at the loopback
server, a recording fake sendmail as re-injector, and a real UNIX-socket syslog receiver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dates import RECEIVED_DATE
from dnsserver import DnsServer
from fakes import FakeSendmail
from scatterguard.actions.delivery import DeliveryRecord
from scatterguard.actions.quarantine.directory import Store
from scatterguard.checks.resolver import Answer, Resolver
from scatterguard.config import Config, QuarantineConfig
from scatterguard.core.envelope import parse_envelope
from scatterguard.core.message import Payload
from scatterguard.frontends.pipe import Outcome, answer
from scatterguard.pipeline import run_filter

ZONE = """
sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.sender.example. 300 IN TXT "v=DMARC1; p=reject"
reject.example. 300 IN TXT "v=spf1 -all"
_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject"
verified.example. 300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
nodmarc.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
"""
AUTHSERV = "mx.rcpt.example"


class Syslog:
    """A UNIX datagram socket standing in for /dev/log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)

    def lines(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536).decode("utf-8", "replace"))
            except TimeoutError:
                return out


class Filter:
    """One configured filter: config file, quarantine and state directories, fake sendmail,
    syslog."""

    def __init__(self, tmp: Path, dns: DnsServer, **extra: str) -> None:
        self.sendmail = FakeSendmail(tmp / "sendmail")
        self.quarantine = tmp / "quarantine"
        self.state = Path(extra.pop("state", tmp / "state"))
        self.syslog = Syslog(tmp / "log.sock")
        self.config = tmp / "scatterguard.toml"
        command = ", ".join(f'"{arg}"' for arg in self.sendmail.command())
        settings = {
            "authserv_id": f'"{AUTHSERV}"',
            "trusted_networks": '["10.0.0.0/8"]',
            "timeout": extra.pop("timeout", '"30s"'),
        }
        self.config.write_text(
            "\n".join(f"{k} = {v}" for k, v in settings.items())
            + f'\n[dns]\nnameservers = ["{dns.address}"]\n'
            + f"timeout = {extra.pop('dns_timeout', '0.5')}\n"
            + f"[reinject]\ncommand = [{command}]\n"
            + f'[quarantine]\ndirectory = "{extra.pop("quarantine", self.quarantine)}"\n'
            # Never the built-in /var/lib/scatterguard: the host's own state stays out of tests.
            + f'[state]\ndirectory = "{self.state}"\n'
            + f'[log]\nsocket = "{self.syslog.path}"\n'
            # No hand-over unless a test starts a server: a real one on this host stays out.
            + f'[server]\nsocket = "{extra.pop("server_socket", "")}"\n'
        )

    def run(
        self, args: list[str], data: bytes, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
        environ.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "scatterguard", "--config", str(self.config), "filter", *args],
            input=data,
            capture_output=True,
            timeout=60,
            env=environ,
            check=False,
        )

    def start(self, args: list[str], data: bytes) -> subprocess.Popen[bytes]:
        """Start the filter on ``data`` without waiting for it (to kill it, or its server)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "scatterguard", "--config", str(self.config), "filter", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environ,
        )
        assert process.stdin is not None
        process.stdin.write(data)
        process.stdin.close()
        process.stdin = None  # written; communicate() must not flush it again
        return process

    def entries(self) -> list[Path]:
        if not self.quarantine.exists():
            return []
        return [p for p in self.quarantine.iterdir() if p.is_file()]


@pytest.fixture
def mta(tmp_path: Path, dns_server: DnsServer) -> Filter:
    dns_server.records.add_text(ZONE)
    return Filter(tmp_path, dns_server)


def message(sender: str = "alice@sender.example", extra: bytes = b"") -> bytes:
    return (
        b"Received: from mx.sender.example by mx.rcpt.example; "
        + RECEIVED_DATE
        + b"\n"
        + extra
        + b"From: "
        + sender.encode()
        + b"\nTo: bob@rcpt.example\nSubject: hello\nMessage-ID: <1@sender.example>\n"
        + b"\nHi Bob,\n\xe9t\xe9 \x00\r\n.\n"
    )


def envelope(
    sender: str, client: str, helo: str = "mx.sender.example", queue_id: str = "4AbCdE"
) -> list[str]:
    return [
        "-f",
        sender,
        f"--client-address={client}",
        f"--helo={helo}",
        f"--queue-id={queue_id}",
        "--sasl-user=",
        "--",
        "bob@rcpt.example",
        "carol@rcpt.example",
    ]


def test_deliver_prepends_header_and_keeps_bytes(mta: Filter) -> None:
    """An authenticated message is re-injected: our A-R on top, forged A-R gone, all else intact."""
    forged = b"Authentication-Results: mx.rcpt.example; dmarc=pass header.from=bank.example\n"
    theirs = b"Authentication-Results: mx.sender.example; spf=pass\n"
    data = message(extra=forged + theirs)
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), data)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [call] = mta.sendmail.calls
    assert call.argv == [
        "-G",
        "-i",
        "-f",
        "alice@sender.example",
        "--",
        "bob@rcpt.example",
        "carol@rcpt.example",
    ]
    head, _, rest = call.data.partition(b"\nReceived: ")
    assert head.startswith(
        b"Authentication-Results: mx.rcpt.example;\n\tspf=pass smtp.mailfrom=sender.example;"
    )
    assert b"dmarc=pass header.from=sender.example" in head
    assert b"Received: " + rest == data.replace(forged, b"")
    assert mta.entries() == []


def test_forged_mail_is_quarantined_not_bounced(mta: Filter) -> None:
    """p=reject failure from an unverified reverse-path: quarantined, exit 0, nothing sent."""
    done = mta.run(
        envelope("ceo@reject.example", "203.0.113.9", helo="bad.example"),
        message("ceo@reject.example"),
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert mta.sendmail.calls == []
    assert len(mta.entries()) == 1


def test_same_queue_id_is_quarantined_once(mta: Filter) -> None:
    """A retried delivery of one queue id does not create a second quarantine entry."""
    for _ in range(2):
        done = mta.run(envelope("ceo@reject.example", "203.0.113.9"), message("ceo@reject.example"))
        assert done.returncode == 0
    assert len(mta.entries()) == 1


def test_verified_reverse_path_gets_bounce(mta: Filter) -> None:
    """p=reject failure with SPF pass for the reverse-path: exit 69 and one 5.7.26 line."""
    done = mta.run(envelope("user@verified.example", "198.51.100.7"), message("ceo@reject.example"))
    assert done.returncode == 69
    assert done.stdout.startswith(b"5.7.26 ")
    assert done.stdout.count(b"\n") == 1
    assert done.stderr == b""
    assert mta.sendmail.calls == []
    assert mta.entries() == []


def test_null_sender_is_never_bounced(mta: Filter) -> None:
    """A null reverse-path failing p=reject is quarantined."""
    done = mta.run(
        envelope("", "198.51.100.7", helo="verified.example"), message("ceo@reject.example")
    )
    assert (done.returncode, done.stdout) == (0, b"")
    assert len(mta.entries()) == 1


def test_spf_fail_without_dmarc_is_quarantined(mta: Filter) -> None:
    """No DMARC record and SPF fail: reject-class, unverified, so quarantined."""
    done = mta.run(envelope("x@nodmarc.example", "203.0.113.9"), message("x@nodmarc.example"))
    assert (done.returncode, done.stdout) == (0, b"")
    assert len(mta.entries()) == 1


def test_trusted_client_is_delivered(mta: Filter) -> None:
    """A client in trusted_networks is delivered even when everything fails."""
    done = mta.run(envelope("ceo@reject.example", "10.9.8.7"), message("ceo@reject.example"))
    assert (done.returncode, done.stdout) == (0, b"")
    assert len(mta.sendmail.calls) == 1


def test_silent_dns_defers(mta: Filter, dns_server: DnsServer) -> None:
    """With DNS silent the outcome is open: exit 75 and one 4.x.x line, nothing acted on."""
    dns_server.silent = True
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.4.3 ")
    assert done.stdout.count(b"\n") == 1
    assert mta.sendmail.calls == []
    assert mta.entries() == []


def test_failed_reinjection_defers(mta: Filter) -> None:
    """A re-injection command that exits non-zero means the message was not delivered: 75."""
    mta.sendmail.fail_with(1)
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.3.0 ")
    assert mta.entries() == []


def test_unwritable_quarantine_defers(tmp_path: Path, dns_server: DnsServer) -> None:
    """A quarantine that cannot be written (a file where the directory should be) defers."""
    dns_server.records.add_text(ZONE)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    mta = Filter(tmp_path, dns_server, quarantine=str(blocker / "q"))
    done = mta.run(envelope("ceo@reject.example", "203.0.113.9"), message("ceo@reject.example"))
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.")
    assert mta.sendmail.calls == []


def test_unwritable_delivery_record_defers_deliveries(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """A message to deliver is deferred when its delivery cannot be recorded (the record lives
    in the state directory): unrecorded, a kill could deliver it twice."""
    dns_server.records.add_text(ZONE)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    mta = Filter(tmp_path, dns_server, state=str(blocker / "state"))
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.")
    assert mta.sendmail.calls == []
    assert any("cannot record deliveries" in line for line in mta.syslog.lines())


def test_unwritable_quarantine_does_not_hold_up_deliveries(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """The quarantine out of reach defers only what is to be quarantined: a delivery is recorded
    in the state directory, and its retry finds the record there (issue 13, item 6)."""
    dns_server.records.add_text(ZONE)
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    mta = Filter(tmp_path, dns_server, quarantine=str(blocker / "q"))
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4NoQuarantine")
    assert mta.run(args, message()).returncode == 0
    again = mta.run(args, message())
    assert (again.returncode, again.stdout, again.stderr) == (0, b"", b"")
    assert len(mta.sendmail.calls) == 1
    assert any("already re-injected" in line for line in mta.syslog.lines())
    assert (mta.state / "delivered").is_dir()
    forged = mta.run(envelope("ceo@reject.example", "203.0.113.9"), message("ceo@reject.example"))
    assert forged.returncode == 75
    assert len(mta.sendmail.calls) == 1


def test_quarantine_and_state_are_separate(mta: Filter) -> None:
    """Configured apart, a delivery writes only in the state directory and a quarantined message
    only in the quarantine: nothing host-local is left beside a quarantine that may be shared."""
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4Separate")
    assert mta.run(args, message()).returncode == 0
    assert not mta.quarantine.exists()
    assert sorted(p.name for p in mta.state.iterdir()) == ["delivered"]
    forged = envelope("ceo@reject.example", "203.0.113.9", queue_id="4Forged")
    assert mta.run(forged, message("ceo@reject.example")).returncode == 0
    [entry] = mta.entries()
    assert sorted(p.name for p in mta.quarantine.iterdir()) == sorted(["tmp", entry.name])
    assert sorted(p.name for p in mta.state.iterdir()) == ["delivered"]


def _old_marker(mta: Filter, args: list[str], data: bytes, *, claim_file: bool = False) -> Path:
    """The delivery record of ``args``/``data`` as version 0.1.0 left it, built by hand.

    0.1.0 kept the record in ``<quarantine.directory>/delivered``: an empty marker file named
    after the key in the directory of the hour (UTC) it was written, or, when that could not be
    written, the claim file ``pending/<key>`` holding ``delivered``.
    """
    sender = args[args.index("-f") + 1]
    recipients = args[args.index("--") + 1 :]
    queue_id = next(a.partition("=")[2] for a in args if a.startswith("--queue-id="))
    key = DeliveryRecord.key(parse_envelope(sender, recipients, queue_id=queue_id), data)
    assert key is not None
    old = mta.quarantine / "delivered"
    if claim_file:
        path = old / "pending" / key
        path.parent.mkdir(parents=True)
        path.write_bytes(b"delivered\n")
    else:
        path = old / time.strftime("%Y%m%d%H", time.gmtime()) / key
        path.parent.mkdir(parents=True)
        path.touch()
    mta.quarantine.chmod(0o700)
    return path


@pytest.mark.parametrize("claim_file", [False, True], ids=["marker", "claim-file"])
def test_retry_after_an_upgrade_finds_the_old_record(mta: Filter, claim_file: bool) -> None:
    """A message 0.1.0 re-injected (its record in the quarantine directory) and retried after
    the upgrade is not re-injected again; the old record is read, never written (issue 13,
    item 6). Another message is delivered as usual and recorded in the state directory."""
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4Upgraded")
    old = _old_marker(mta, args, message(), claim_file=claim_file)
    before = sorted((p, p.stat().st_mtime_ns) for p in mta.quarantine.rglob("*"))
    retry = mta.run(args, message())
    assert (retry.returncode, retry.stdout, retry.stderr) == (0, b"", b"")
    assert mta.sendmail.calls == []
    assert any("already re-injected" in line for line in mta.syslog.lines())
    assert sorted((p, p.stat().st_mtime_ns) for p in mta.quarantine.rglob("*")) == before
    assert old.exists()
    other = envelope("alice@sender.example", "192.0.2.5", queue_id="4AfterUpgrade")
    assert mta.run(other, message()).returncode == 0
    assert len(mta.sendmail.calls) == 1
    assert mta.run(other, message()).returncode == 0
    assert len(mta.sendmail.calls) == 1
    assert sorted((p, p.stat().st_mtime_ns) for p in mta.quarantine.rglob("*")) == before


def test_deadline_defers(tmp_path: Path, dns_server: DnsServer) -> None:
    """When the filter's own deadline passes first, it defers (the MTA's limit is never hit)."""
    dns_server.records.add_text(ZONE)
    dns_server.silent = True
    mta = Filter(tmp_path, dns_server, timeout="1", dns_timeout="10")
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.3.0 ")
    assert any("deadline" in line for line in mta.syslog.lines())


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-f", "a@sender.example", "--"], id="no-recipients"),
        pytest.param(["-f", "a\x07b@sender.example", "--", "b@rcpt.example"], id="bad-sender"),
        pytest.param(["--bogus-option", "--", "b@rcpt.example"], id="unknown-option"),
        pytest.param(["--queue-id=../../x", "-f", "", "--", "b@rcpt.example"], id="queue-id-path"),
    ],
)
def test_bad_arguments_defer(mta: Filter, args: list[str]) -> None:
    """Bad arguments are a configuration fault: 75 with one status line, logged, never a bounce."""
    done = mta.run(args, message())
    assert done.returncode == 75
    assert done.stdout.count(b"\n") == 1
    assert done.stderr == b""
    assert mta.syslog.lines()


def test_broken_config_defers(tmp_path: Path, dns_server: DnsServer) -> None:
    """An unknown key in the configuration makes the filter defer, not crash."""
    mta = Filter(tmp_path, dns_server)
    mta.config.write_text(mta.config.read_text() + "bogus = 1\n")
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert done.returncode == 75
    assert done.stderr == b""


@pytest.mark.parametrize("eol", [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")])
def test_bsmtp_delivers(mta: Filter, eol: bytes) -> None:
    """Exim's batch SMTP: envelope from the batch, client data from the environment."""
    body = [b"From: alice@sender.example", b"Subject: dots", b"", b".hidden", b"..", b"end"]
    stuffed = [b"From: alice@sender.example", b"Subject: dots", b"", b"..hidden", b"...", b"end"]
    batch = eol.join(
        [
            b"MAIL FROM:<alice@sender.example>",
            b"RCPT TO:<bob@rcpt.example>",
            b"RCPT TO:<carol@rcpt.example>",
            b"DATA",
            *stuffed,
            b".",
            b"",
        ]
    )
    env = {"SCATTERGUARD_CLIENT_ADDRESS": "192.0.2.5", "SCATTERGUARD_HELO": "mx.sender.example"}
    done = mta.run(["--bsmtp"], batch, env)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [call] = mta.sendmail.calls
    assert call.argv[-3:] == ["--", "bob@rcpt.example", "carol@rcpt.example"]
    assert call.data.endswith(eol.join(body) + eol)
    assert b"spf=pass" in call.data.split(eol + b"From:")[0]


def test_bsmtp_cut_short_defers(mta: Filter) -> None:
    """A batch cut short inside DATA defers: the message is not acted on."""
    done = mta.run(
        ["--bsmtp"],
        b"MAIL FROM:<a@sender.example>\nRCPT TO:<b@rcpt.example>\nDATA\nFrom: a\n\nbody\n",
    )
    assert done.returncode == 75
    assert mta.sendmail.calls == []


def test_one_log_line_per_message_that_cannot_be_forged(mta: Filter) -> None:
    """Syslog gets one line per message; a Message-ID holding CR/LF cannot split it."""
    data = message().replace(
        b"Message-ID: <1@sender.example>", b"Message-ID: <x>\r\nfake=line\n action=deliver"
    )
    mta.run(envelope("alice@sender.example", "192.0.2.5"), data)
    lines = mta.syslog.lines()
    assert len(lines) == 1
    assert "\n" not in lines[0].rstrip("\n")
    assert "action='deliver'" in lines[0]
    assert "queue_id='4AbCdE'" in lines[0]
    assert lines[0].startswith("<22>")  # facility mail (2 * 8) + info (6)


# ---------------------------------------------------------------------------------------------
# In-process: the same pipeline with a recording re-injector, for properties and injected faults.


class _Recorder:
    """A re-injector that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], bytes]] = []

    def __call__(self, sender: str, recipients: Sequence[str], data: Payload) -> None:
        self.calls.append((sender, tuple(recipients), bytes(data)))


class _Quiet:
    def info(self, event: str, **values: object) -> None:
        self.last = values

    error = info


def _in_process(resolver: Resolver, data: bytes, tmp: Path) -> tuple[Outcome, _Recorder]:
    config = Config(authserv_id=AUTHSERV, quarantine=QuarantineConfig(directory=tmp / "q"))
    recorder = _Recorder()
    env = parse_envelope("alice@sender.example", ["bob@rcpt.example"], client_address="192.0.2.5")
    done = run_filter(
        data,
        env,
        config,
        reinjector=recorder,
        quarantine=Store(tmp / "q"),
        resolver=resolver,
        logger=_Quiet(),
    )
    return answer(done), recorder


header_line = st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(header_line, max_size=6),
    body=st.binary(max_size=3000),
    eol=st.sampled_from([b"\n", b"\r\n"]),
    forged=st.booleans(),
)
def test_delivered_bytes_are_header_plus_original(
    tmp_path: Path,
    dns_server: DnsServer,
    values: list[bytes],
    body: bytes,
    eol: bytes,
    forged: bool,
) -> None:
    """For arbitrary header and body bytes, what is re-injected is our A-R field + the original."""
    dns_server.records.add_text(ZONE)
    resolver = Resolver([(dns_server.host, dns_server.port)], timeout=0.5)
    ours = b"Authentication-Results: " + AUTHSERV.encode() + b"; dmarc=pass" + eol
    fields = [b"From: alice@sender.example" + eol]
    fields += [b"X-Test-%d: " % i + value + eol for i, value in enumerate(values)]
    original = b"".join(fields) + eol + body
    data = (ours if forged else b"") + original
    outcome, recorder = _in_process(resolver, data, tmp_path)
    assert outcome.code == 0
    [(sender, recipients, sent)] = recorder.calls
    assert (sender, recipients) == ("alice@sender.example", ("bob@rcpt.example",))
    head, separator, rest = sent.partition(eol + b"From: ")
    assert separator
    assert head.startswith(b"Authentication-Results: " + AUTHSERV.encode() + b";")
    assert b"From: " + rest == original


class _Exploding(Resolver):
    """A resolver with a bug: every lookup raises."""

    def query(self, name: str, rdtype: str) -> Answer:
        raise RuntimeError("bug in a check")


def test_exception_inside_a_check_defers(tmp_path: Path) -> None:
    """An exception raised inside the checks ends in exit 75 with nothing sent or kept."""
    outcome, recorder = _in_process(_Exploding([("127.0.0.1", 9)]), message(), tmp_path)
    assert outcome.code == 75
    assert outcome.status is not None
    assert outcome.status.startswith("4.")
    assert recorder.calls == []
    assert not (tmp_path / "q").exists() or not any((tmp_path / "q").iterdir())


def test_retry_after_a_delivery_is_not_delivered_twice(mta: Filter) -> None:
    """A retry of a message already re-injected (the filter was killed before exiting) exits 0
    without a second copy; another queue id is delivered as usual."""
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4RetryMe")
    assert mta.run(args, message()).returncode == 0
    again = mta.run(args, message())
    assert (again.returncode, again.stdout, again.stderr) == (0, b"", b"")
    assert len(mta.sendmail.calls) == 1
    assert any("already re-injected" in line for line in mta.syslog.lines())
    other = envelope("alice@sender.example", "192.0.2.5", queue_id="4Another")
    assert mta.run(other, message()).returncode == 0
    assert len(mta.sendmail.calls) == 2


def test_failed_reinjection_leaves_no_marker(mta: Filter) -> None:
    """Only a re-injection that succeeded is recorded: after a failure the retry delivers."""
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4FailOnce")
    mta.sendmail.fail_with(1)
    assert mta.run(args, message()).returncode == 75
    mta.sendmail.fail_with(None)
    assert mta.run(args, message()).returncode == 0
    assert len(mta.sendmail.calls) == 1


def wait_until(what: str, condition: Callable[[], bool], limit: float = 20.0) -> None:
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _reinjectors() -> list[int]:
    """The pids of running re-injection processes (they name themselves sg-reinject)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_bytes().strip() == b"sg-reinject":
                    found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "retry_while_running",
    [
        pytest.param(False, id="retry-after-the-reinjection-finished"),
        pytest.param(True, id="retry-while-the-reinjection-still-runs"),
    ],
)
def test_filter_killed_during_reinjection_delivers_once(
    mta: Filter, retry_while_running: bool
) -> None:
    """A filter SIGKILLed while the re-injection command runs: the command still completes, its
    process records the delivery, and the MTA's retry (even one that starts at once) waits for
    it and then exits 0 without a second copy."""
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4KillMid")
    mta.sendmail.delay(1.5)
    first = mta.start(args, message())
    wait_until("the re-injection command to start", lambda: bool(mta.sendmail.running()))
    first.kill()
    assert first.wait(timeout=10) == -signal.SIGKILL
    assert mta.sendmail.calls == []
    mta.sendmail.delay(None)
    if not retry_while_running:
        wait_until("the re-injection to finish", lambda: len(mta.sendmail.calls) == 1)
        wait_until("the re-injection process to exit", lambda: not _reinjectors())
    retry = mta.run(args, message())
    assert (retry.returncode, retry.stdout, retry.stderr) == (0, b"", b"")
    assert len(mta.sendmail.calls) == 1
    assert any("already re-injected" in line for line in mta.syslog.lines())


def test_deadline_during_reinjection_defers_and_the_retry_delivers_once(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """The filter's deadline passing during a slow re-injection defers (75) without cutting the
    command short; the command's copy is recorded, so the retry does not deliver a second one."""
    dns_server.records.add_text(ZONE)
    mta = Filter(tmp_path, dns_server, timeout='"1s"')
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4SlowOne")
    mta.sendmail.delay(3)
    first = mta.run(args, message())
    assert first.returncode == 75
    assert first.stdout.startswith(b"4.")
    mta.sendmail.delay(None)
    retry = mta.run(args, message())
    assert retry.returncode == 0
    assert len(mta.sendmail.calls) == 1
    assert any("already re-injected" in line for line in mta.syslog.lines())


def test_killed_reinjection_process_is_retried(mta: Filter) -> None:
    """A re-injection process killed before the command accepted the message leaves no marker:
    the filter defers and the retry delivers."""
    args = envelope("alice@sender.example", "192.0.2.5", queue_id="4ChildDies")
    mta.sendmail.delay(30)
    first = mta.start(args, message())
    wait_until("the re-injection command to start", lambda: bool(mta.sendmail.running()))
    for pid in _reinjectors():
        os.kill(pid, signal.SIGKILL)
    for path in mta.sendmail.running():
        # The command too (it would otherwise commit its copy after the retry's).
        os.kill(int(path.name.split("-")[1]), signal.SIGKILL)
    assert first.wait(timeout=10) == 75
    mta.sendmail.delay(None)
    assert mta.run(args, message()).returncode == 0
    assert len(mta.sendmail.calls) == 1


# ---------------------------------------------------------------------------------------------
# Issue 12 items 4, 5, 6, 7 and 13 through the real CLI.

ISSUE12_ZONE = """
lists.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
openrej.example. 300 IN TXT "v=spf1 include:slow.openrej-dns.example -all"
_dmarc.openrej.example. 300 IN TXT "v=DMARC1; p=reject"
_dmarc.nonefail.example. 300 IN TXT "v=DMARC1; p=none"
ptrv.example. 300 IN TXT "v=spf1 ptr -all"
_dmarc.ptrv.example. 300 IN TXT "v=DMARC1; p=reject"
""" + "".join(f"50.113.0.203.in-addr.arpa. 300 IN PTR n{n}.attacker.example.\n" for n in range(10))


def _old_message(sender: str, age: float) -> bytes:
    """A message whose topmost Received field is ``age`` seconds old."""
    import email.utils

    date = email.utils.formatdate(time.time() - age).encode()
    return message(sender).replace(RECEIVED_DATE, date)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("user@[IPv6:2001:db8::1]", id="ipv6-literal"),
        pytest.param("user@[192.0.2.1]", id="ipv4-literal"),
        pytest.param("bounce@mail_out.nodmarc.example", id="underscore"),
        pytest.param("a..b@nodmarc.example", id="exim-unquoted-dots"),
        pytest.param("a@b@nodmarc.example", id="exim-unquoted-at"),
        pytest.param('"a b"@nodmarc.example', id="quoted"),
        pytest.param("user@nodmarc.example.", id="trailing-dot"),
        pytest.param("üser@nodmarc.example", id="smtputf8"),
        pytest.param("@relay.example:user@nodmarc.example", id="source-route"),
        pytest.param("not an address", id="no-domain"),
    ],
)
def test_reverse_paths_the_mta_accepted_are_filtered(mta: Filter, path: str) -> None:
    """Issue 12 item 7: every reverse-path an MTA can hand over is filtered (here delivered,
    exit 0, not 75), and the re-injection gets it back byte for byte."""
    done = mta.run(envelope(path, "192.0.2.5"), message("x@nodmarc.example"))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [call] = mta.sendmail.calls
    assert call.argv[:4] == ["-G", "-i", "-f", path]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("a..b@nodmarc.example", id="exim-unquoted-dots"),
        pytest.param("a@b@nodmarc.example", id="exim-unquoted-at"),
        pytest.param("user@[IPv6:2001:db8::1]", id="ipv6-literal"),
    ],
)
def test_bsmtp_reverse_paths_are_filtered(mta: Filter, path: str) -> None:
    """The same through Exim's BSMTP: filtered, and the path re-injected as it came."""
    batch = (
        f"MAIL FROM:<{path}>\nRCPT TO:<bob@rcpt.example>\nDATA\n".encode()
        + message("x@nodmarc.example").replace(b"\n.", b"\n..")  # dot-stuffed
        + b".\n"
    )
    done = mta.run(["--bsmtp"], batch, {"SCATTERGUARD_CLIENT_ADDRESS": "192.0.2.5"})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [call] = mta.sendmail.calls
    assert call.argv[:4] == ["-G", "-i", "-f", path]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"a>b@nodmarc.example", id="exim-unquoted-angle"),
        pytest.param(b"\xe9t\xe9@nodmarc.example", id="latin-1-local-part"),
    ],
)
def test_bsmtp_paths_with_angles_or_8_bit_octets_are_filtered(mta: Filter, path: bytes) -> None:
    """Adversarial review of issue 12 item 7: Exim writes '"a>b"@x' as ``<a>b@x>`` and passes
    8-bit octets as they came; both were refused (exit 75 until Exim gives up and bounces to an
    unverified sender) or cut at the inner '>'. Now filtered, and re-injected octet for octet,
    sender and recipient alike."""
    batch = (
        b"MAIL FROM:<"
        + path
        + b">\nRCPT TO:<"
        + path
        + b">\nDATA\n"
        + message("x@nodmarc.example").replace(b"\n.", b"\n..")  # dot-stuffed
        + b".\n"
    )
    done = mta.run(["--bsmtp"], batch, {"SCATTERGUARD_CLIENT_ADDRESS": "192.0.2.5"})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    [call] = mta.sendmail.calls
    assert [os.fsencode(arg) for arg in call.argv] == [b"-G", b"-i", b"-f", path, b"--", path]


def test_unparsable_reverse_path_is_never_bounced(mta: Filter) -> None:
    """Exim's unquoted a@b@verified.example is not strict: SPF passes for verified.example, yet a
    p=reject failure is quarantined; the strict '"a@b"@verified.example' is bounced (69)."""
    loose = mta.run(envelope("a@b@verified.example", "198.51.100.7"), message("ceo@reject.example"))
    assert (loose.returncode, loose.stdout) == (0, b"")
    assert len(mta.entries()) == 1
    strict = mta.run(
        envelope('"a@b"@verified.example', "198.51.100.7", queue_id="4Strict"),
        message("ceo@reject.example"),
    )
    assert strict.returncode == 69
    assert strict.stdout.startswith(b"5.7.26 ")


def test_spf_is_evaluated_for_the_domain_reported(mta: Filter) -> None:
    """Issue 12 item 5: '"a@b"@nodmarc.example' from a client nodmarc.example's SPF refuses was
    evaluated by pyspf for 'b"@nodmarc.example' (none) and delivered; it is SPF fail for
    nodmarc.example, with no DMARC policy: reject-class, unverified, quarantined."""
    done = mta.run(envelope('"a@b"@nodmarc.example', "203.0.113.9"), message("x@nodmarc.example"))
    assert (done.returncode, done.stdout) == (0, b"")
    assert mta.sendmail.calls == []
    assert len(mta.entries()) == 1


def test_check_json_reports_spf_for_the_evaluated_domain(mta: Filter) -> None:
    """``check --json`` names the domain SPF was evaluated for, and its result."""
    import json

    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "scatterguard", "--config", str(mta.config)),
            *("check", "--json", *envelope('"a@b"@nodmarc.example', "203.0.113.9")),
        ],
        input=message("x@nodmarc.example"),
        capture_output=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["spf"]["result"], report["spf"]["domain"]) == ("fail", "nodmarc.example")
    assert report["action"] == "quarantine"
    # DESIGN.md §Layers: the rule that decided, machine-readable, beside the reasons.
    assert report["rule"] == "spf_fail_no_dmarc_unverified"


def test_dkim_replay_with_forged_mail_from_is_not_bounced(
    mta: Filter, dns_server: DnsServer
) -> None:
    """Issue 12 item 13: a message signed by lists.example, From a p=reject domain, replayed with
    MAIL FROM anyone@lists.example by a client lists.example's SPF refuses, is quarantined, not
    bounced to that forged address (exit 0, not 69)."""
    from signing import Signer

    dns_server.records.add_text(ISSUE12_ZONE)
    signer = Signer("lists.example")
    signer.publish(dns_server)
    signed = signer.sign(message("ceo@reject.example"))
    done = mta.run(envelope("anyone@lists.example", "203.0.113.9"), signed)
    assert (done.returncode, done.stdout) == (0, b"")
    assert len(mta.entries()) == 1
    assert mta.sendmail.calls == []


def test_open_reject_domain_beside_failing_none_domain_defers(
    mta: Filter, dns_server: DnsServer
) -> None:
    """Issue 12 item 6: From openrej.example (SPF temperror, p=reject) and nonefail.example (fails,
    p=none) was delivered under the failing p=none; the open p=reject domain keeps it open: 75."""
    dns_server.records.add_text(ISSUE12_ZONE)
    dns_server.fault("openrej-dns.example", "timeout")
    data = message("a@openrej.example, b@nonefail.example")
    done = mta.run(envelope("bounce@openrej.example", "203.0.113.9"), data)
    assert done.returncode == 75
    assert done.stdout.startswith(b"4.4.3 ")
    assert mta.sendmail.calls == []


def test_open_reject_outcome_past_defer_max_age_is_quarantined(
    mta: Filter, dns_server: DnsServer
) -> None:
    """Issue 12 item 4 / rule 2: past defer_max_age, an outcome still open under p=reject was
    delivered; it is quarantined (exit 0, nothing re-injected)."""
    dns_server.records.add_text(ISSUE12_ZONE)
    dns_server.fault("openrej-dns.example", "timeout")
    data = _old_message("a@openrej.example", 5 * 3600)
    done = mta.run(envelope("bounce@openrej.example", "203.0.113.9"), data)
    assert (done.returncode, done.stdout) == (0, b"")
    assert mta.sendmail.calls == []
    assert len(mta.entries()) == 1


def test_attackers_reverse_zone_does_not_make_the_victims_spf_temperror(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """Issue 12 item 4: ten PTR names in the attacker's zone whose A lookups time out (2.5 s each)
    used up the 20 s SPF budget: temperror, deferred. The ptr mechanism does not match: SPF fail,
    DMARC p=reject fails, unverified: quarantined, exit 0, in well under the budget."""
    dns_server.records.add_text(ZONE + ISSUE12_ZONE)
    dns_server.fault("attacker.example", "timeout")
    mta = Filter(tmp_path, dns_server, dns_timeout="2.5", timeout='"60s"')
    started = time.monotonic()
    done = mta.run(envelope("ceo@ptrv.example", "203.0.113.50"), message("ceo@ptrv.example"))
    assert (done.returncode, done.stdout) == (0, b"")
    assert len(mta.entries()) == 1
    assert time.monotonic() - started < 15


# ---- configuration that would break the contract (issue 12, item 11) --------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        pytest.param(("[log]\n", '[log]\ntarget = "stderr"\n'), "log.target", id="log-stderr"),
        pytest.param(('"-f", "{sender}"', '"-f{sender}"'), "reinject.command", id="f-glued"),
        pytest.param(('"-f", "{sender}", ', ""), "reinject.command", id="no-sender"),
        pytest.param(('"-f", "{sender}"', '"-i", "{sender}"'), "reinject.command", id="bare"),
    ],
)
def test_contract_breaking_config_defers_naming_the_key(
    mta: Filter, change: tuple[str, str], key: str
) -> None:
    """stderr logging or a command that drops the reverse-path: 75, one line, stderr empty.

    The reason goes to syslog (never to the MTA's stderr) and names the key; nothing is
    re-injected or quarantined.
    """
    text = mta.config.read_text()
    assert change[0] in text
    mta.config.write_text(text.replace(change[0], change[1], 1))
    done = mta.run(envelope("alice@sender.example", "192.0.2.5"), message())
    assert (done.returncode, done.stderr) == (75, b"")
    assert done.stdout.count(b"\n") == 1
    logged = " ".join(mta.syslog.lines())
    assert key in logged
    assert "action='defer'" in logged
    assert mta.sendmail.calls == []
    assert mta.entries() == []


# ---- exit codes outside MTA input (issue 12, item 12) -----------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--help"], id="help"),
        pytest.param(["-h"], id="h"),
        pytest.param(["--version"], id="version"),
        pytest.param(["-f", "a@sender.example", "--help", "--", "b@rcpt.example"], id="help-late"),
        pytest.param(["--no-such-option"], id="unknown-option"),
    ],
)
def test_filter_help_and_version_defer_with_one_line(mta: Filter, args: list[str]) -> None:
    """Filter mode's contract holds for --help too: exit 75, only the status line on stdout."""
    done = mta.run(args, message())
    assert (done.returncode, done.stderr) == (75, b"")
    assert done.stdout == b"4.3.0 Temporary mail filter failure, try again later\n"
    assert "action='defer'" in " ".join(mta.syslog.lines())


def test_version_before_filter_defers_with_one_line(mta: Filter) -> None:
    """``scatterguard --version filter`` is filter mode as well: 75 and one line."""
    done = subprocess.run(
        [sys.executable, "-m", "scatterguard", "--version", "--config", str(mta.config), "filter"],
        input=message(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (75, b"")
    assert done.stdout.count(b"\n") == 1


def _run_with(mta: Filter, args: list[str], data: bytes, fd: str) -> tuple[int, bytes, bytes]:
    """Run the filter with fd 1 or fd 2 closed, or stdout a pipe nobody reads ("broken")."""
    command = [sys.executable, "-m", "scatterguard", "--config", str(mta.config), "filter", *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    if fd == "broken":
        reader, writer = os.pipe()
        os.close(reader)
        try:
            done = subprocess.run(
                command, input=data, stdout=writer, stderr=subprocess.PIPE, env=environ,
                timeout=60, check=False,
            )  # fmt: skip
        finally:
            os.close(writer)
        return done.returncode, b"", done.stderr
    closed = {"stdout": 1, "stderr": 2}[fd]
    shell = f'exec "$@" {closed}>&-'
    done = subprocess.run(
        ["/bin/sh", "-c", shell, "sh", *command], input=data, capture_output=True, env=environ,
        timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("fd", ["stdout", "stderr", "broken"])
@pytest.mark.parametrize(
    ("case", "code"),
    [
        pytest.param("deliver", 0, id="deliver"),
        pytest.param("quarantine", 0, id="quarantine"),
        pytest.param("bounce", 69, id="bounce"),
        pytest.param("defer", 75, id="defer"),
        pytest.param("help", 75, id="help"),
    ],
)
def test_closed_or_broken_stdout_keeps_the_exit_code(
    mta: Filter, fd: str, case: str, code: int
) -> None:
    """With fd 1 or 2 closed, or stdout a broken pipe, the exit code is still 0/69/75.

    The status line simply cannot be written; no traceback appears anywhere, and a message is
    still delivered (or quarantined) exactly once.
    """
    args = {
        "deliver": envelope("alice@sender.example", "192.0.2.5"),
        "quarantine": envelope("ceo@reject.example", "203.0.113.9"),
        "bounce": envelope("user@verified.example", "198.51.100.7"),
        "defer": ["--bogus", "--", "b@rcpt.example"],
        "help": ["--help"],
    }[case]
    data = {
        "quarantine": message("ceo@reject.example"),
        "bounce": message("ceo@reject.example"),
    }.get(case, message())
    returncode, stdout, stderr = _run_with(mta, args, data, fd)
    assert returncode == code, stderr
    assert b"Traceback" not in stdout + stderr
    assert stderr == b""
    if fd == "stderr" and code:
        assert stdout.count(b"\n") == 1
    assert len(mta.sendmail.calls) == (1 if case == "deliver" else 0)
    assert len(mta.entries()) == (1 if case == "quarantine" else 0)


@pytest.mark.parametrize(
    ("where", "part"),
    [
        pytest.param("quarantine", "tmp", id="quarantine-tmp"),
        pytest.param("state", "delivered", id="delivered"),
        pytest.param("state", "delivered/pending", id="delivered-pending"),
        # Where 0.1.0 kept the record, which is still read after an upgrade.
        pytest.param("quarantine", "delivered", id="old-delivered"),
        pytest.param("quarantine", "delivered/pending", id="old-delivered-pending"),
    ],
)
def test_linked_store_part_defers_and_writes_nothing_through_it(
    mta: Filter, tmp_path: Path, where: str, part: str
) -> None:
    """A link planted in the store (issue 12, item 8): the filter defers, logs which part, and
    creates nothing in the link's target (no lock file, no entry, no spool file)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for directory in (mta.quarantine, mta.state):
        (directory / "delivered" / "pending").mkdir(parents=True)
        directory.chmod(0o700)
    (mta.quarantine / "tmp").mkdir()
    root = mta.quarantine if where == "quarantine" else mta.state
    os.rename(root / part, tmp_path / "displaced")
    (root / part).symlink_to(victim)
    # A quarantined message needs tmp/, a delivery needs delivered/pending/ (and reads the old).
    sender, client = (
        ("ceo@reject.example", "203.0.113.9")
        if part == "tmp"
        else ("alice@sender.example", "192.0.2.5")
    )
    done = mta.run(envelope(sender, client), message(sender))
    assert (done.returncode, done.stderr) == (75, b"")
    assert done.stdout.count(b"\n") == 1
    assert "symbolic link" in " ".join(mta.syslog.lines())
    assert list(victim.iterdir()) == []
    assert mta.sendmail.calls == []


@pytest.mark.parametrize(
    "before",
    [
        pytest.param(["--conf", "{config}", "filter"], id="conf-space"),
        pytest.param(["--conf={config}", "filter"], id="conf-equals"),
        pytest.param(["--config", "{config}", "filter", "--queue=4Abbrev"], id="queue-abbrev"),
    ],
)
def test_abbreviated_options_defer_and_never_crash(mta: Filter, before: list[str]) -> None:
    """An option written short (``--conf`` for ``--config``) is no option: argparse took it as
    the full name while the readers before the hand-over did not, and ``--conf FILE filter``
    ended in a traceback and exit 1, which the MTA bounces. Now it is a usage error in filter
    mode: exit 75, one status line, nothing on stderr, nothing delivered."""
    argv = [arg.format(config=mta.config) for arg in before]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "scatterguard",
            *argv,
            *envelope("alice@sender.example", "192.0.2.5"),
        ],
        input=message(),
        capture_output=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert done.returncode == 75, done
    assert done.stdout.startswith(b"4."), done.stdout
    assert done.stdout.count(b"\n") == 1, done.stdout
    assert done.stderr == b"", done.stderr
    assert mta.sendmail.calls == []
