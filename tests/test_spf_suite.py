"""The openspf RFC 7208 conformance suite, run through our resolver path on the loopback DNS server.

The suite (``rfc7208-tests.yml``, release 2014.04, with its BSD licence beside it and recorded in
``debian/copyright``) ships in ``tests/data/spf/``, so it runs in every clone and in the Debian
package build; ``SCATTERGUARD_SPF_SUITE`` names another copy. A suite that is not there is a
failure, never a skip. Each YAML document is a scenario: ``zonedata`` is served by a real DNS
server on loopback, and each test (``helo``, ``host``, ``mailfrom`` → ``result``) becomes one
pytest case.

How the zone data is read follows the suite's own conventions (its header comment):

- ``SPF`` entries are served as type SPF (99) and, unless the name has a ``TXT`` entry
  (``TXT: NONE`` included, which stands for "no TXT records"), also as TXT: the suite relies on
  drivers duplicating them, since RFC 7208 implementations read TXT only.
- ``TIMEOUT`` makes the name time out for every record type not listed before it; records listed
  before it still answer (``spftimeout``: TXT answers, SPF times out). It applies to that exact name
  only, which is why this module runs its own server (a small subclass of the shared one) rather
  than ``DnsServer.fault()``, whose faults also cover every name below.
- A TXT/SPF value is one string or a list of strings (character-strings, glued together by the
  checker); text is encoded as UTF-8, so non-ASCII policies reach the checker as the suite means.
  An empty list (``null-text``) is served as one empty string, which the wire format can carry.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.name
import dns.rdatatype
import pytest
import yaml

from dnsserver import DnsServer
from scatterguard.checks.resolver import Resolver
from scatterguard.checks.spf import check_spf, evaluate
from scatterguard.core.envelope import Envelope, parse_sender
from scatterguard.errors import UsageError

# The copy in the repository, and the licence it is distributed under.
SHIPPED = Path(__file__).resolve().parent / "data" / "spf" / "rfc7208-tests.yml"
SHIPPED_LICENSE = SHIPPED.with_suffix(".LICENSE")
SUITE = Path(os.environ.get("SCATTERGUARD_SPF_SUITE") or SHIPPED)
# The 2014.04 release has 203 tests: fewer means a truncated file or another suite.
MIN_CASES = 203

# Short lookups keep the TIMEOUT cases quick; the loopback server answers in well under this.
TIMEOUT = 0.3
# pyspf's default explanation for fail, which the suite calls DEFAULT.
DEFAULT_EXPLANATION = "SPF fail - not authorized"

# Suite tests whose expectation our path cannot meet, each with the reason; strict xfails, so a
# change of behaviour shows up.
KNOWN_DIFFERENCES: dict[str, str] = {}


class SuiteDnsServer(DnsServer):
    """The shared loopback DNS server plus the suite's per-name, per-type TIMEOUT."""

    def __init__(self) -> None:
        super().__init__()
        # name -> the record types that still answer; every other type times out.
        self.timeouts: dict[dns.name.Name, frozenset[int]] = {}

    def reset(self) -> None:
        super().reset()
        self.timeouts.clear()

    def respond(self, data: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - garbage is the base class's business
            return super().respond(data, transport)
        if query.question:
            question = query.question[0]
            answering = self.timeouts.get(question.name)
            if answering is not None and question.rdtype not in answering:
                self.queries.append(
                    (question.name.to_text(), dns.rdatatype.to_text(question.rdtype), transport)
                )
                return None  # silence: the client times out
        return super().respond(data, transport)


def _quoted(strings: list[bytes]) -> str:
    """Master-file text for a TXT/SPF rdata with these character-strings."""
    parts = []
    for data in strings or [b""]:
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        for chunk in chunks:
            text = "".join(
                "\\" + chr(byte)
                if byte in (0x22, 0x5C)
                else chr(byte)
                if 0x20 <= byte < 0x7F
                else f"\\{byte:03d}"
                for byte in chunk
            )
            parts.append(f'"{text}"')
    return " ".join(parts)


def _strings(value: str | list[str]) -> list[bytes]:
    return [item.encode("utf-8") for item in ([value] if isinstance(value, str) else value)]


def load_zone(server: SuiteDnsServer, zonedata: dict[str, list[Any]]) -> None:
    """Serve one scenario's ``zonedata`` (see the module docstring for the conventions)."""
    for name, entries in zonedata.items():
        owner = dns.name.from_text(name)
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        answering: set[int] = set()
        for entry in entries:
            if entry == "TIMEOUT":
                server.timeouts[owner] = frozenset(answering)
                continue
            ((kind, value),) = entry.items()
            if value == "NONE":
                continue
            answering.add(dns.rdatatype.from_text(kind))
            if kind in ("TXT", "SPF"):
                rdata = _quoted(_strings(value))
                server.records.add(name + ".", kind, rdata)
                if kind == "SPF" and not has_txt:
                    server.records.add(name + ".", "TXT", rdata)
            elif kind == "MX":
                preference, exchange = value
                server.records.add(name + ".", "MX", f"{int(preference)} {_absolute(exchange)}")
            elif kind in ("PTR", "CNAME"):
                server.records.add(name + ".", kind, _absolute(value))
            else:
                server.records.add(name + ".", kind, str(value))


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _scenarios() -> list[dict[str, Any]]:
    """The suite's scenarios, or none when the file is not there (test_suite_is_there fails)."""
    if not SUITE.is_file():
        return []
    with SUITE.open("rb") as handle:
        return list(yaml.safe_load_all(handle))


def _cases() -> Iterator[Any]:
    for scenario in _scenarios():
        for name, test in scenario["tests"].items():
            case_id = f"{_slug(scenario['description'])}/{name}"
            marks = []
            if case_id in KNOWN_DIFFERENCES:
                marks.append(pytest.mark.xfail(reason=KNOWN_DIFFERENCES[case_id], strict=True))
            yield pytest.param(scenario["zonedata"], test, id=case_id, marks=marks)


CASES = list(_cases())


def test_suite_ships_with_its_licence() -> None:
    """The suite and its licence are in the repository, so a fresh clone runs the suite too."""
    assert SHIPPED.is_file(), f"{SHIPPED} is missing"
    assert SHIPPED_LICENSE.is_file(), f"{SHIPPED_LICENSE} is missing"
    assert "Redistribution and use" in SHIPPED_LICENSE.read_text()


def test_suite_is_there() -> None:
    """The suite this run uses exists and holds the whole release: a missing suite fails."""
    assert SUITE.is_file(), (
        f"RFC 7208 test suite not found at {SUITE} (it ships in {SHIPPED.parent}; "
        "SCATTERGUARD_SPF_SUITE names another copy)"
    )
    assert len(CASES) >= MIN_CASES, f"{SUITE} has {len(CASES)} tests, expected {MIN_CASES}+"


@pytest.fixture(scope="module")
def suite_server() -> Iterator[SuiteDnsServer]:
    """One loopback DNS server for the suite, reloaded for each case."""
    with SuiteDnsServer() as server:
        yield server


def _envelope_for(test: dict[str, Any]) -> Envelope | None:
    """The envelope scatterguard would build for this test, or None when it could not express it.

    The MTA hands us parsed addresses; some suite senders (an empty local part, label syntax that
    email-validator refuses, upper case it normalises away) cannot come through that parsing
    unchanged, and those are evaluated with the sender exactly as given instead.
    """
    client = ipaddress.ip_address(test["host"])
    if test["mailfrom"] == "":
        return Envelope(sender=None, recipients=(), client_address=client, helo=test["helo"])
    try:
        sender = parse_sender(test["mailfrom"])
    except UsageError:
        return None
    if sender is None or f"{sender.local_part}@{sender.domain}" != test["mailfrom"]:
        return None
    return Envelope(sender=sender, recipients=(), client_address=client, helo=test["helo"])


@pytest.mark.parametrize(("zonedata", "test"), CASES)
def test_rfc7208_suite(
    suite_server: SuiteDnsServer, zonedata: dict[str, list[Any]], test: dict[str, Any]
) -> None:
    """One test of the openspf RFC 7208 suite gives an acceptable result through our resolver."""
    suite_server.reset()
    load_zone(suite_server, zonedata)
    resolver = Resolver([(suite_server.host, suite_server.port)], timeout=TIMEOUT)
    expected = test["result"] if isinstance(test["result"], list) else [test["result"]]
    envelope = _envelope_for(test)
    if envelope is not None:
        mailfrom, helo = check_spf(resolver, envelope)
        if envelope.sender is None:
            # The null reverse-path: the suite's result is for postmaster@HELO, which we report
            # both as the MAIL FROM and as the HELO identity (RFC 7208 §2.3, §2.4).
            assert helo is not None
            assert (helo.result, helo.reason) == (mailfrom.result, mailfrom.reason)
        result, reason = mailfrom.result, mailfrom.reason
    else:
        # The sender exactly as the suite gives it, through the same resolver-backed pyspf query.
        result, reason, _cause = evaluate(resolver, test["host"], test["mailfrom"], test["helo"])
    assert result.value in expected, f"{result.value} not in {expected}: {reason}"
    explanation = test.get("explanation")
    if explanation is not None and result.value == "fail":
        assert reason == (DEFAULT_EXPLANATION if explanation == "DEFAULT" else explanation)
    if expected != ["none"]:
        # Every result other than none needs DNS: it must have come from our resolver.
        assert resolver.lookups > 0
        assert suite_server.queries
