"""Hostile messages and envelopes through the filter (issue 7 items 1, 2 and 4).

Every case from :mod:`hostile` goes through ``scatterguard filter`` as the MTA runs it: a
subprocess with the loopback DNS server, a recording fake sendmail and a syslog socket. Each must
end in exit 0, 69 (only for a verified reverse-path) or 75, with empty stdout on 0 and exactly one
status line on 69/75, empty stderr, bounded time and memory, and the exact bytes: on delivery our
A-R field followed by the original bytes minus the A-R fields carrying our authserv-id; in
quarantine the original bytes.

The same messages also go through :func:`scatterguard.pipeline.run_filter` in-process with three
more envelopes (unverified, null and trusted senders) and through the BSMTP parser, which is
where most of the byte-exactness checks run, cheaply.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hostile
from dnsserver import DnsServer
from hostile import BOUNCE, DEFER, DELIVER, EXIT_CODES, QUARANTINE, HostileMessage
from scatterguard import pipeline
from scatterguard.actions.quarantine.directory import Store
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config, DkimConfig, DnsConfig
from scatterguard.core import envelope as envelope_mod
from scatterguard.core.envelope import Envelope
from scatterguard.core.message import MAX_HEADER_FIELDS, Message, Payload
from scatterguard.frontends import intake, pipe
from signing import Signer
from test_filter import Filter

# Safety bounds, not benchmarks: a hostile message must not make the filter run away.
MAX_SECONDS = 20.0
MAX_RSS_MB = 500.0
AR_PREFIX = f"Authentication-Results: {hostile.AUTHSERV};".encode()


@functools.cache
def _signer(selector: str) -> Signer:
    return Signer("sender.example", selector)


@functools.cache
def _cases() -> dict[str, HostileMessage]:
    return {case.name: case for case in hostile.messages(_signer)}


MESSAGES = [pytest.param(name, id=name) for name in _cases()]
ENVELOPES = {case.name: case for case in hostile.envelopes()}


def _prepare(dns: DnsServer, case: HostileMessage | None = None) -> None:
    dns.records.add_text(hostile.ZONE)
    for selector in case.selectors if case else ():
        _signer(selector).publish(dns)


# ---------------------------------------------------------------------------------------------
# Running the real filter as a subprocess, with its resource use.


@dataclass(frozen=True)
class Run:
    """One finished ``scatterguard filter`` process."""

    returncode: int
    stdout: bytes
    stderr: bytes
    seconds: float  # wall time
    cpu: float  # user + system, the filter and the children it waited for (the re-injector)
    rss_mb: float  # peak resident set size


# Runs argv[2:] with stdin, stdout and stderr passed through, and writes its rusage (wait4) to
# argv[1]. The filter is started from this small process, not from pytest: on Linux a child's
# peak RSS starts at its parent's when it is forked, which would measure the test process.
LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as handle:
    json.dump({"cpu": usage.ru_utime + usage.ru_stime, "rss_kb": usage.ru_maxrss}, handle)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(mta: Filter, args: Sequence[str], data: bytes, env: dict[str, str]) -> Run:
    """Run the filter like ``Filter.run`` does, and measure its time and memory."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    environ.update(env)
    usage_file = mta.config.with_name("rusage.json")
    filter_argv = [sys.executable, "-m", "scatterguard", "--config", str(mta.config), "filter"]
    argv = [sys.executable, "-c", LAUNCHER, str(usage_file), *filter_argv, *args]
    started = time.monotonic()
    done = subprocess.run(
        argv, input=data, capture_output=True, env=environ, timeout=120, check=False
    )
    seconds = time.monotonic() - started
    usage = json.loads(usage_file.read_text())
    usage_file.unlink()
    run = Run(
        returncode=done.returncode,
        stdout=done.stdout,
        stderr=done.stderr,
        seconds=seconds,
        cpu=usage["cpu"],
        rss_mb=usage["rss_kb"] / 1024,  # kilobytes on Linux
    )
    _record(run)
    return run


def _record(run: Run) -> None:
    """With HOSTILE_FIGURES=<file>, append one JSON line per run (for the issue's figures)."""
    target = os.environ.get("HOSTILE_FIGURES")
    if target:
        case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("[")[-1].split("]")[0]
        figures = {"case": case, "exit": run.returncode, "seconds": round(run.seconds, 3)}
        figures.update(cpu=round(run.cpu, 3), rss_mb=round(run.rss_mb, 1))
        with open(target, "a") as handle:
            handle.write(json.dumps(figures) + "\n")


@pytest.fixture
def mta(tmp_path: Path, dns_server: DnsServer) -> Filter:
    """A configured filter whose DKIM work is capped at hostile.MAX_SIGNATURES signatures."""
    mta = Filter(tmp_path, dns_server)
    with mta.config.open("a") as handle:
        handle.write(f"[dkim]\nmax_signatures = {hostile.MAX_SIGNATURES}\n")
    return mta


def assert_protocol(run: Run, expect: str) -> None:
    """Exit code, stdout and stderr as DESIGN.md §Contract wants them, and the safety bounds."""
    assert run.returncode == EXIT_CODES[expect], run
    assert run.stderr == b""
    if run.returncode == 0:
        assert run.stdout == b""
    else:
        assert run.stdout.endswith(b"\n")
        assert run.stdout.count(b"\n") == 1
        assert re.match(rb"[45]\.\d{1,3}\.\d{1,3} \S", run.stdout), run.stdout
        assert run.stdout.startswith(b"5." if run.returncode == 69 else b"4.")
    assert run.seconds < MAX_SECONDS, run.seconds
    assert run.rss_mb < MAX_RSS_MB, run.rss_mb


def log_line(mta: Filter) -> str:
    """The one syslog line the filter wrote for the message."""
    lines = mta.syslog.lines()
    assert len(lines) == 1, lines
    # Python's SysLogHandler ends each datagram with a NUL (RFC 3164 receivers expect it).
    return lines[0].removesuffix("\x00")


# ---------------------------------------------------------------------------------------------
# What the delivered and quarantined bytes must be.


def _linesep(data: bytes) -> bytes:
    newline = data.find(b"\n")
    return b"\r\n" if newline > 0 and data[newline - 1 : newline] == b"\r" else b"\n"


def assert_delivered(case: HostileMessage, delivered: bytes) -> bytes:
    """Our A-R field, then the original minus our-authserv-id A-R fields; returns the field."""
    tail = case.delivered_tail()
    assert delivered.endswith(tail)
    field = delivered[: len(delivered) - len(tail)]
    eol = _linesep(case.data)
    if tail and Message(tail).body_offset == 0:
        # No header section: an empty line after our field, so nothing extends it (item 10).
        assert field.endswith(eol + eol)
        field = field[: -len(eol)]
    assert field.startswith(AR_PREFIX)
    assert field.endswith(eol)
    lines = field[: -len(eol)].split(eol)
    # One field, folded with tabs, printable US-ASCII only (RFC 5322 §2.2, §3.2.2).
    assert all(re.fullmatch(rb"[\t\x20-\x7e]+", line) for line in lines), lines
    assert all(line.startswith(b"\t") for line in lines[1:])
    # Prepending adds exactly one field and leaves every other field where it was: the message
    # an MUA reads has no field that the checks did not see (nor anything glued onto ours).
    after = Message(delivered)
    before = [h.raw(tail) for h in Message(tail).headers]
    assert after.headers[0].raw(delivered) == field
    kept = [h.raw(delivered) for h in after.headers[1:]]
    # Past MAX_HEADER_FIELDS our reading stops (a trusted client's message may go there).
    assert kept == before[: len(kept)]
    assert len(kept) == len(before) or len(after.headers) == MAX_HEADER_FIELDS
    return field


def assert_results(case: HostileMessage, field: bytes) -> None:
    """The RFC 8601 words in our field: SPF pass, the case's DKIM words in order, its DMARC."""
    text = re.sub(rb"\r?\n\t", b" ", field).decode("ascii")
    # Each method's result starts a clause, right after a ";" (RFC 8601 §2.2).
    words = re.findall(r";\s*(\w+)=(\w+)", text)
    assert [word for method, word in words if method == "spf"] == ["pass"]
    assert [word for method, word in words if method == "dkim"] == list(case.dkim or ("none",))
    assert [word for method, word in words if method == "dmarc"] == [case.dmarc]


# ---------------------------------------------------------------------------------------------
# Item 1 and 4: every hostile message through the real filter.


@pytest.mark.parametrize("name", MESSAGES)
def test_hostile_message_through_filter(mta: Filter, dns_server: DnsServer, name: str) -> None:
    """A hostile message ends as the table says, with exact bytes, in bounded time and memory."""
    case = _cases()[name]
    _prepare(dns_server, case)
    run = run_measured(mta, hostile.envelope_args(), case.data, {})
    assert_protocol(run, case.expect)
    line = log_line(mta)
    assert f"action='{case.expect}'" in line
    calls = mta.sendmail.calls
    entries = Store(mta.quarantine).entries() if mta.quarantine.exists() else []
    if case.expect == DELIVER:
        [call] = calls
        assert call.argv == ["-G", "-i", "-f", hostile.SENDER, "--", hostile.RECIPIENT]
        assert_results(case, assert_delivered(case, call.data))
    else:
        assert calls == []
    if case.expect == QUARANTINE:
        [entry] = entries
        assert Store(mta.quarantine).get(entry.id)[1] == case.data
        assert f"dmarc={case.dmarc}" in entry.metadata.authentication_results
    else:
        assert entries == []
    if case.expect == BOUNCE:
        assert "verified=True" in line
        assert run.stdout.startswith(b"5.7.26 ")
        assert f"dmarc='{case.dmarc}'" in line


@pytest.mark.parametrize("name", ["dkim-100-valid", "dkim-100-garbage"])
def test_many_signatures_stay_bounded(
    tmp_path: Path, dns_server: DnsServer, resolver: Resolver, name: str
) -> None:
    """100 DKIM signatures: only dkim.max_signatures keys are ever looked up."""
    case = _cases()[name]
    _prepare(dns_server, case)
    envelope = _envelope(hostile.SENDER, hostile.CLIENT)
    outcome, _, _ = _in_process(case.data, envelope, resolver, tmp_path)
    assert outcome.code == 0
    keys = {name for name, _, _ in dns_server.queries if "._domainkey." in name}
    assert len(keys) == hostile.MAX_SIGNATURES


# ---------------------------------------------------------------------------------------------
# The same messages in-process, under more envelopes, and through BSMTP.


class RecordingLog:
    """A logger that keeps the values of the one line per message."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def info(self, event: str, **values: Any) -> None:
        self.lines.append(values)

    def error(self, event: str, **values: Any) -> None:
        self.lines.append(values)


def _envelope(sender: str, client: str, helo: str = hostile.HELO) -> Envelope:
    return envelope_mod.parse_envelope(
        sender, [hostile.RECIPIENT], client_address=client, helo=helo, queue_id="Q1"
    )


# name → (envelope, what it may end in)
SENDERS: dict[str, tuple[Envelope, frozenset[str]]] = {
    "verified": (_envelope(hostile.SENDER, hostile.CLIENT), frozenset()),  # the case's outcome
    # SPF fails; a DKIM signature aligned with the reverse-path can still verify it (and bounce).
    "spf-fail": (
        _envelope(hostile.SENDER, "203.0.113.9", "forged.example"),
        frozenset({DELIVER, QUARANTINE, BOUNCE}),
    ),
    "null": (_envelope("", "203.0.113.9", "mx.sender.example"), frozenset({DELIVER, QUARANTINE})),
    # A trusted client's message is delivered, unless its structure is ambiguous (quarantine).
    "trusted": (_envelope(hostile.SENDER, "10.1.2.3"), frozenset({DELIVER, QUARANTINE})),
}


def _in_process(
    data: bytes, envelope: Envelope, resolver: Resolver, directory: Path
) -> tuple[pipe.Outcome, list[bytes], RecordingLog]:
    config = Config(
        authserv_id=hostile.AUTHSERV,
        trusted_networks=(*Config.trusted_networks, ipaddress.ip_network("10.0.0.0/8")),
        dkim=DkimConfig(max_signatures=hostile.MAX_SIGNATURES),
        dns=DnsConfig(resolver.nameservers, resolver.timeout),
    )
    sent: list[bytes] = []
    log = RecordingLog()

    def reinject(sender: str, recipients: Sequence[str], message: Payload) -> None:
        assert sender == envelope.sender_text
        assert list(recipients) == list(envelope.recipients)
        sent.append(bytes(message))

    done = pipeline.run_filter(
        data,
        envelope,
        config,
        reinjector=reinject,
        quarantine=Store(directory),
        resolver=resolver,
        logger=log,
    )
    return pipe.answer(done), sent, log


# Known bugs, by test id: each is a strict xfail that says what goes wrong.
KNOWN_BUGS: dict[str, str] = {}
IN_PROCESS = [
    pytest.param(
        name,
        label,
        id=f"{name}-{label}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[f"{name}-{label}"])]
        if f"{name}-{label}" in KNOWN_BUGS
        else [],
    )
    for name in _cases()
    for label in SENDERS
]


@pytest.mark.parametrize(("name", "label"), IN_PROCESS)
def test_hostile_message_in_process(
    tmp_path: Path, dns_server: DnsServer, resolver: Resolver, name: str, label: str
) -> None:
    """Under every kind of sender the outcome is allowed and the bytes are exact."""
    case = _cases()[name]
    _prepare(dns_server, case)
    envelope, allowed = SENDERS[label]
    outcome, sent, log = _in_process(case.data, envelope, resolver, tmp_path)
    [line] = log.lines
    action = line["action"]
    assert action in (allowed or {case.expect}), line
    # Only an ambiguous structure is quarantined for a trusted client, and it always is.
    if label == "trusted":
        assert (action == QUARANTINE) is (Message(case.data).problem is not None), line
    assert outcome.code == EXIT_CODES[action]
    if outcome.code == 69:
        assert line["verified"] is True
    assert "error" not in line, line
    entries = Store(tmp_path).entries()
    if action == DELIVER:
        [delivered] = sent
        assert_delivered(case, delivered)
    else:
        assert sent == []
    if action == QUARANTINE:
        [entry] = entries
        assert Store(tmp_path).get(entry.id)[1] == case.data
    else:
        assert entries == []


@pytest.mark.parametrize("name", MESSAGES)
def test_hostile_message_through_bsmtp(name: str) -> None:
    """Dot-stuffed by Exim's rules and read back, the message is byte for byte the original."""
    case = _cases()[name]
    for eol in (b"\n", b"\r\n"):
        stream = hostile.bsmtp(hostile.SENDER, [hostile.RECIPIENT] * 2, case.data, eol)
        batch = intake.parse_bsmtp(stream)
        assert (batch.sender, batch.recipients) == (hostile.SENDER, (hostile.RECIPIENT,) * 2)
        # A message not ending in a line ending gets one from the writer (Exim does the same).
        ending = b"" if case.data.endswith(b"\n") or not case.data else eol
        assert batch.data == case.data + ending


# ---------------------------------------------------------------------------------------------
# Item 2: hostile envelopes.


@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in ENVELOPES])
def test_hostile_envelope_through_filter(mta: Filter, dns_server: DnsServer, name: str) -> None:
    """A hostile envelope is delivered, quarantined or deferred, never bounced, and logged once."""
    case = ENVELOPES[name]
    _prepare(dns_server)
    data = case.stdin if case.stdin is not None else hostile.standard_message()
    run = run_measured(mta, case.args, data, case.env)
    assert_protocol(run, case.expect)
    line = log_line(mta)
    assert f"action='{case.expect}'" in line
    calls = mta.sendmail.calls
    entries = Store(mta.quarantine).entries() if mta.quarantine.exists() else []
    if case.expect == DELIVER:
        [call] = calls
        recipients = case.args[case.args.index("--") + 1 :]
        assert call.argv[call.argv.index("--") + 1 :] == list(recipients)
        assert call.data.endswith(data)
        assert call.data.startswith(AR_PREFIX)
    else:
        assert calls == []
    if case.expect == QUARANTINE:
        [entry] = entries
        # Through BSMTP the message is the batch's DATA, unstuffed.
        message = intake.parse_bsmtp(data).data if "--bsmtp" in case.args else data
        assert Store(mta.quarantine).get(entry.id)[1] == message
        assert entry.metadata.reverse_path_verified is False
    else:
        assert entries == []
    if case.expect == DEFER:
        assert run.stdout.startswith(b"4.3.0 ")
    # Nothing from a refused envelope reaches the log line raw: no CR, LF or NUL.
    assert not re.search(r"[\r\x00]", line)
    assert "\n" not in line.rstrip("\n")


def test_every_outcome_is_exercised() -> None:
    """The hostile tables reach delivery, quarantine, bounce and deferral (none goes untested)."""
    reached = {case.expect for case in _cases().values()} | {
        case.expect for case in ENVELOPES.values()
    }
    assert reached == {DELIVER, QUARANTINE, BOUNCE, DEFER}
