"""DNS faults (issue 7 item 3): each ends as an RFC 8601 result word and the right exit code.

The loopback DNS server misbehaves in every way issue 7 lists: silence, SERVFAIL, REFUSED,
truncation with TCP refused, malformed replies, a 64 KB TXT record, CNAME loops (answered with
SERVFAIL, as recursive resolvers do, and with NOERROR, as some forwarders do), two SPF records, a
garbage DMARC record and more than 10 SPF lookups. Each must show up as a result word in the
AuthReport and in ``check --json``, never as an escaped exception, and must lead ``scatterguard
filter`` to the exit code DESIGN.md asks for: temporary trouble defers (75) unless another check
already settles the outcome; permanent trouble decides.

The message is signed by ``d=sender.example`` (key ``s1``) unless a case says otherwise; the
reverse-path ``alice@sender.example`` passes SPF from 192.0.2.5 through an include, so a fault can
hit SPF, DKIM or DMARC alone.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dnsserver import DnsServer
from scatterguard import pipeline
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config, DnsConfig
from scatterguard.core import envelope as envelope_mod
from scatterguard.core.message import Message
from scatterguard.core.results import AuthReport
from signing import Signer, sample_message
from test_filter import AUTHSERV, Filter

SENDER = "alice@sender.example"
CLIENT = "192.0.2.5"
HELO = "mx.sender.example"
SPF_NAME = "_spf.provider.example"
KEY_NAME = "s1._domainkey.sender.example"
DMARC_NAME = "_dmarc.sender.example"
# Text that brings a TXT record near the 64 KB a DNS message can carry (RFC 1035 §4.2.2).
BIG = 64_000

EXIT = {"deliver": 0, "quarantine": 0, "bounce": 69, "defer": 75}


@functools.cache
def _signer() -> Signer:
    return Signer("sender.example", "s1")


@functools.cache
def _message(signed: bool) -> bytes:
    plain = sample_message(from_addr=SENDER, to_addr="bob@rcpt.example")
    return _signer().sign(plain) if signed else plain


def _zone(dns: DnsServer, *, spf: bool = True, key: bool = True, dmarc: bool = True) -> None:
    """The healthy zone; leave a part out to replace it with a broken one."""
    if spf:
        dns.records.add_txt("sender.example", f"v=spf1 include:{SPF_NAME} -all")
    dns.records.add_txt(SPF_NAME, "v=spf1 ip4:192.0.2.0/24 -all")
    if key:
        _signer().publish(dns)
    if dmarc:
        dns.records.add_txt(DMARC_NAME, "v=DMARC1; p=reject")


def _words(report: AuthReport) -> tuple[str, tuple[str, ...], str]:
    return (
        report.spf.result.value,
        tuple(sig.result.value for sig in report.dkim),
        report.dmarc.result.value,
    )


def _evaluate(resolver: Resolver, data: bytes, client: str = CLIENT) -> pipeline.Evaluation:
    config = Config(authserv_id=AUTHSERV, dns=DnsConfig(resolver.nameservers, resolver.timeout))
    envelope = envelope_mod.parse_envelope(
        SENDER, ["bob@rcpt.example"], client_address=client, helo=HELO
    )
    return pipeline.evaluate(Message(data), envelope, config, resolver, time.time())


# ---------------------------------------------------------------------------------------------
# Every transport-level fault at every place a lookup can go wrong, through evaluate().

KINDS = ("timeout", "servfail", "refused", "truncate", "malformed", "cname-loop")
KINDS += ("cname-loop-noerror",)
TEMP = "temperror"

# where → (faulted name, (spf, dkim, dmarc) words, action). A fault in SPF or DKIM alone leaves
# the other one aligned, so DMARC still passes; a DMARC fault leaves the outcome open.
TARGETS: dict[str, tuple[str, tuple[str, tuple[str, ...], str], str]] = {
    "spf": (SPF_NAME, (TEMP, ("pass",), "pass"), "deliver"),
    "dkim": (KEY_NAME, ("pass", (TEMP,), "pass"), "deliver"),
    "dmarc": (DMARC_NAME, ("pass", ("pass",), TEMP), "defer"),
    "everything": ("example.", (TEMP, (TEMP,), TEMP), "defer"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", list(TARGETS))
def test_fault_is_temperror(
    dns_server: DnsServer, resolver: Resolver, target: str, kind: str
) -> None:
    """A transport fault is temperror where it happens, and defers only if DMARC is left open."""
    name, words, action = TARGETS[target]
    _zone(dns_server)
    dns_server.fault(name, kind)
    evaluation = _evaluate(resolver, _message(signed=True))
    assert _words(evaluation.report) == words
    assert evaluation.decision.action.value == action
    if action == "defer":
        assert evaluation.decision.status is not None
        assert evaluation.decision.status.startswith("4.4.3 ")


def test_healthy_zone_passes(dns_server: DnsServer, resolver: Resolver) -> None:
    """Without a fault, the same message passes everything: the faults above make the difference."""
    _zone(dns_server)
    evaluation = _evaluate(resolver, _message(signed=True))
    assert _words(evaluation.report) == ("pass", ("pass",), "pass")
    assert evaluation.decision.action.value == "deliver"


def test_truncated_answer_is_retried_over_tcp(dns_server: DnsServer, resolver: Resolver) -> None:
    """A 64 KB SPF record does not fit UDP: it is fetched over TCP and evaluated (RFC 7766)."""
    _zone(dns_server, spf=False)
    dns_server.records.add_txt("sender.example", _big_spf())
    evaluation = _evaluate(resolver, _message(signed=False))
    assert evaluation.report.spf.result.value == "pass"
    transports = {t for name, kind, t in dns_server.queries if name == "sender.example."}
    assert transports == {"udp", "tcp"}


# ---------------------------------------------------------------------------------------------
# The faults issue 7 names, through `check --json` and `filter` as subprocesses.


def _big_spf() -> str:
    """A valid SPF record of about 64 KB: many ip4 mechanisms (no lookups), ours last."""
    padding = []
    index = 0
    while sum(len(p) + 1 for p in padding) < BIG:
        padding.append(f"ip4:203.0.113.{index % 256}/32")
        index += 1
    return "v=spf1 " + " ".join(padding) + " ip4:192.0.2.0/24 -all"


def _silence(dns: DnsServer) -> None:
    _zone(dns)
    dns.silent = True


def _everywhere(kind: str) -> Callable[[DnsServer], None]:
    def setup(dns: DnsServer) -> None:
        _zone(dns)
        dns.fault("example.", kind)

    return setup


def _big_spf_record(dns: DnsServer) -> None:
    _zone(dns, spf=False)
    dns.records.add_txt("sender.example", _big_spf())


def _big_dmarc_record(dns: DnsServer) -> None:
    _zone(dns, dmarc=False)
    dns.records.add_txt(DMARC_NAME, "v=DMARC1; p=reject; x=" + "y" * BIG)


def _big_key_record(dns: DnsServer) -> None:
    _zone(dns, key=False)
    dns.records.add_txt(KEY_NAME, "v=DKIM1; k=rsa; p=" + "A" * BIG)


def _cname_loop(dns: DnsServer) -> None:
    _zone(dns, dmarc=False)
    dns.records.add(DMARC_NAME, "CNAME", "_dmarc.loop.example.")
    dns.records.add("_dmarc.loop.example", "CNAME", f"{DMARC_NAME}.")


def _cname_loop_noerror(dns: DnsServer) -> None:
    _zone(dns)
    dns.fault(DMARC_NAME, "cname-loop-noerror")


def _two_spf_records(dns: DnsServer) -> None:
    _zone(dns, spf=False)
    dns.records.add_txt("sender.example", "v=spf1 ip4:192.0.2.0/24 -all")
    dns.records.add_txt("sender.example", "v=spf1 -all")


def _garbage_dmarc(record: bytes) -> Callable[[DnsServer], None]:
    def setup(dns: DnsServer) -> None:
        _zone(dns, dmarc=False)
        dns.records.add_txt(DMARC_NAME, record)

    return setup


def _spf_too_many_lookups(dns: DnsServer) -> None:
    # RFC 7208 §4.6.4: more than 10 mechanisms that need DNS is permerror. Every host exists, so
    # the void-lookup limit (2) is not what stops the evaluation.
    _zone(dns, spf=False)
    hosts = [f"h{i}.sender.example" for i in range(11)]
    for index, host in enumerate(hosts):
        dns.records.add(host, "A", f"198.51.100.{index + 1}")
    mechanisms = " ".join(f"a:{host}" for host in hosts)
    dns.records.add_txt("sender.example", f"v=spf1 {mechanisms} ip4:192.0.2.0/24 -all")


def _spf_include_loop(dns: DnsServer) -> None:
    _zone(dns, spf=False)
    dns.records.add_txt("sender.example", "v=spf1 include:sender.example ip4:192.0.2.0/24 -all")


@dataclass(frozen=True)
class Fault:
    """One named fault, the words it must produce and what the filter must do."""

    name: str
    setup: Callable[[DnsServer], None]
    spf: str
    dkim: tuple[str, ...]
    dmarc: str
    action: str
    signed: bool = True
    policy: str | None = "reject"  # dmarc.policy in check --json


FAULTS = [
    Fault("silence", _silence, TEMP, (TEMP,), TEMP, "defer", policy=None),
    Fault("servfail", _everywhere("servfail"), TEMP, (TEMP,), TEMP, "defer", policy=None),
    Fault("refused", _everywhere("refused"), TEMP, (TEMP,), TEMP, "defer", policy=None),
    Fault(
        "truncated-tcp-refused",
        _everywhere("truncate"),
        TEMP,
        (TEMP,),
        TEMP,
        "defer",
        policy=None,
    ),
    Fault("malformed", _everywhere("malformed"), TEMP, (TEMP,), TEMP, "defer", policy=None),
    Fault("txt-64k-spf", _big_spf_record, "pass", (), "pass", "deliver", signed=False),
    Fault("txt-64k-dmarc", _big_dmarc_record, "pass", ("pass",), "pass", "deliver"),
    Fault("txt-64k-dkim-key", _big_key_record, "pass", ("permerror",), "pass", "deliver"),
    Fault("cname-loop", _cname_loop, "pass", ("pass",), TEMP, "defer", policy=None),
    Fault("cname-loop-noerror", _cname_loop_noerror, "pass", ("pass",), TEMP, "defer", policy=None),
    Fault("two-spf-records", _two_spf_records, "permerror", (), "fail", "quarantine", signed=False),
    Fault(
        "garbage-dmarc-policy",
        _garbage_dmarc(b"v=DMARC1; p=bogus; \xff\x00 =;;"),
        "pass",
        (),
        "none",
        "deliver",
        signed=False,
        policy=None,
    ),
    Fault(
        "garbage-dmarc-record",
        _garbage_dmarc(b"\x00\xff v=DMARC1 p=reject garbage"),
        "pass",
        (),
        "none",
        "deliver",
        signed=False,
        policy=None,
    ),
    Fault(
        "spf-over-10-lookups",
        _spf_too_many_lookups,
        "permerror",
        (),
        "fail",
        "quarantine",
        signed=False,
    ),
    Fault(
        "spf-include-loop", _spf_include_loop, "permerror", (), "fail", "quarantine", signed=False
    ),
]
BY_NAME = {fault.name: fault for fault in FAULTS}
FAULT_IDS = [pytest.param(fault.name, id=fault.name) for fault in FAULTS]


def _args() -> list[str]:
    return [f"--sender={SENDER}", f"--client-address={CLIENT}", f"--helo={HELO}"]


def _run(mta: Filter, command: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    argv = [sys.executable, "-m", "scatterguard", "--config", str(mta.config), *command]
    return subprocess.run(
        argv, input=data, capture_output=True, timeout=60, env=environ, check=False
    )


@pytest.fixture
def mta(tmp_path: Path, dns_server: DnsServer) -> Filter:
    """A configured filter (DNS timeout 0.5 s) pointed at the loopback server."""
    return Filter(tmp_path, dns_server)


@pytest.mark.parametrize("name", FAULT_IDS)
def test_check_json_reports_result_words(mta: Filter, dns_server: DnsServer, name: str) -> None:
    """``check --json`` shows each fault as RFC 8601 words and decides, exit 0, one log line."""
    fault = BY_NAME[name]
    fault.setup(dns_server)
    done = _run(
        mta, ["check", "--json", *_args(), "--", "bob@rcpt.example"], _message(fault.signed)
    )
    assert done.returncode == 0
    # check logs its one line per message to stderr.
    [line] = done.stderr.decode().splitlines()
    assert f"action='{fault.action}'" in line
    document = json.loads(done.stdout)
    assert document["spf"]["result"] == fault.spf
    assert [sig["result"] for sig in document["dkim"]] == list(fault.dkim)
    assert document["dmarc"]["result"] == fault.dmarc
    assert document["dmarc"]["policy"] == fault.policy
    assert document["action"] == fault.action
    rendered = document["authentication_results"]
    assert rendered.startswith(f"{AUTHSERV}; spf={fault.spf} ")
    assert f"dmarc={fault.dmarc}" in rendered


@pytest.mark.parametrize("name", FAULT_IDS)
def test_filter_exit_code(mta: Filter, dns_server: DnsServer, name: str) -> None:
    """``filter`` turns each fault into the exit code of its action, and acts on nothing else."""
    fault = BY_NAME[name]
    fault.setup(dns_server)
    data = _message(fault.signed)
    done = _run(mta, ["filter", *_args(), "--", "bob@rcpt.example"], data)
    assert done.returncode == EXIT[fault.action]
    assert done.stderr == b""
    calls = mta.sendmail.calls
    if fault.action == "defer":
        assert done.stdout.startswith(b"4.4.3 ")
        assert done.stdout.count(b"\n") == 1
    else:
        assert done.stdout == b""
    if fault.action == "deliver":
        [call] = calls
        assert call.data.endswith(data)
        header = call.data[: len(call.data) - len(data)].decode("ascii")
        assert f"spf={fault.spf} " in header
        assert f"dmarc={fault.dmarc}" in header
    else:
        assert calls == []
    assert len(mta.entries()) == (1 if fault.action == "quarantine" else 0)
    [line] = mta.syslog.lines()
    assert f"action='{fault.action}'" in line
    assert "error=" not in line
