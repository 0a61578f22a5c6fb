"""SPF checks (RFC 7208) through our resolver, against the real DNS server on loopback."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import pytest

from dnsserver import DnsServer
from scatterguard.checks.resolver import Answer, Resolver, Status
from scatterguard.checks.spf import MAX_REASON, OutOfTime, ResolverQuery, check_spf, spf_domain
from scatterguard.core.envelope import Envelope, parse_sender
from scatterguard.core.results import Result, SpfCause, SpfResult

PASS, FAIL, SOFTFAIL, NEUTRAL = Result.PASS, Result.FAIL, Result.SOFTFAIL, Result.NEUTRAL
NONE, TEMPERROR, PERMERROR = Result.NONE, Result.TEMPERROR, Result.PERMERROR

# One zone for every case: each case uses its own names, so the table stays readable.
ZONE = """
pass.example.        300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
soft.example.        300 IN TXT "v=spf1 ip4:192.0.2.0/24 ~all"
neutral.example.     300 IN TXT "v=spf1 ?all"
norecord.example.    300 IN A   192.0.2.10
norecord.example.    300 IN TXT "some-site-verification=abc"
two.example.         300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
two.example.         300 IN TXT "v=spf1 -all"
syntax.example.      300 IN TXT "v=spf1 ip4:192.0.2.300 -all"
unknown.example.     300 IN TXT "v=spf1 frobnicate:192.0.2.1 -all"
void.example.        300 IN TXT "v=spf1 a:v1.void.example a:v2.void.example a:v3.void.example -all"
twovoid.example.     300 IN TXT "v=spf1 a:v1.void.example a:v2.void.example ip4:192.0.2.0/24 -all"
slowinc.example.     300 IN TXT "v=spf1 include:slow.example -all"
failinc.example.     300 IN TXT "v=spf1 include:broken.example -all"
include.example.     300 IN TXT "v=spf1 include:pass.example -all"
redirect.example.    300 IN TXT "v=spf1 redirect=pass.example"
mx.example.          300 IN TXT "v=spf1 mx -all"
mx.example.          300 IN MX  10 mail.mx.example.
mail.mx.example.     300 IN A   192.0.2.25
a.example.           300 IN TXT "v=spf1 a:host.a.example -all"
host.a.example.      300 IN A   192.0.2.33
host.a.example.      300 IN AAAA 2001:db8::33
ptr.example.         300 IN TXT "v=spf1 ptr -all"
10.2.0.192.in-addr.arpa. 300 IN PTR mail.ptr.example.
10.2.0.192.in-addr.arpa. 300 IN PTR host.broken.ptr.example.
mail.ptr.example.    300 IN A   192.0.2.10
six.example.         300 IN TXT "v=spf1 ip6:2001:db8:1::/48 -all"
sixa.example.        300 IN TXT "v=spf1 a:host.a.example -all"
alias.example.       300 IN CNAME real.example.
real.example.        300 IN TXT "v=spf1 ip4:192.0.2.10 -all"
viacname.example.    300 IN TXT "v=spf1 a:www.viacname.example -all"
www.viacname.example. 300 IN CNAME server.real.example.
server.real.example. 300 IN A   192.0.2.10
mail.helo.example.   300 IN TXT "v=spf1 a -all"
mail.helo.example.   300 IN A   192.0.2.10
macro.example.       300 IN TXT "v=spf1 exists:%{ir}.%{l}._spf.%{d} -all"
10.2.0.192.alice._spf.macro.example. 300 IN A 127.0.0.2
quoted.example.      300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
lod.example.         300 IN TXT "v=spf1 exists:%{l}.%{o}.%{d}.m.lod.example -all"
a@b.lod.example.lod.example.m.lod.example. 300 IN A 127.0.0.2
"""

# Eleven a: mechanisms that each find an address: only the count of lookups breaks the record.
ZONE += 'many.example. 300 IN TXT "v=spf1 {} -all"\n'.format(
    " ".join(f"a:h{n}.many.example" for n in range(1, 12))
)
ZONE += "".join(f"h{n}.many.example. 300 IN A 198.51.100.{n}\n" for n in range(1, 12))


SENDER_DOMAIN = "<the sender's domain>"


@dataclass(frozen=True)
class Case:
    """One SPF check: the envelope, the expected results and what the DNS server must have seen."""

    sender: str  # "" is the null reverse-path
    client: str | None
    helo: str | None
    mailfrom: Result
    helo_result: Result | None = None  # None: the HELO identity is not checked
    domain: str | None = SENDER_DOMAIN  # the domain both results name
    faults: tuple[tuple[str, str], ...] = ()
    asked: tuple[tuple[str, str], ...] = ()  # (name, type) the server must have been asked


def _envelope(case: Case) -> Envelope:
    return Envelope(
        sender=parse_sender(case.sender),
        recipients=("rcpt@example.org",),
        client_address=ipaddress.ip_address(case.client) if case.client else None,
        helo=case.helo,
    )


CASES = [
    pytest.param(
        Case("alice@pass.example", "192.0.2.10", "mx.client.test", PASS,
             asked=(("pass.example.", "TXT"),)),
        id="pass-ip4",
    ),
    pytest.param(
        Case("alice@pass.example", "198.51.100.7", "mx.client.test", FAIL,
             asked=(("pass.example.", "TXT"),)),
        id="fail",
    ),
    pytest.param(Case("alice@soft.example", "198.51.100.7", None, SOFTFAIL), id="softfail"),
    pytest.param(Case("alice@neutral.example", "198.51.100.7", None, NEUTRAL), id="neutral"),
    pytest.param(
        Case("alice@norecord.example", "192.0.2.10", None, NONE,
             asked=(("norecord.example.", "TXT"),)),
        id="none-no-record",
    ),
    pytest.param(
        Case("alice@nowhere.example", "192.0.2.10", None, NONE,
             asked=(("nowhere.example.", "TXT"),)),
        id="none-nxdomain",
    ),
    pytest.param(Case("alice@two.example", "192.0.2.10", None, PERMERROR), id="permerror-two"),
    pytest.param(
        Case("alice@syntax.example", "192.0.2.10", None, PERMERROR), id="permerror-bad-ip4"
    ),
    pytest.param(
        Case("alice@unknown.example", "192.0.2.10", None, PERMERROR),
        id="permerror-unknown-mechanism",
    ),
    pytest.param(
        Case("alice@many.example", "192.0.2.10", None, PERMERROR,
             asked=(("h10.many.example.", "A"),)),
        id="permerror-over-10-lookups",
    ),
    pytest.param(
        Case("alice@void.example", "192.0.2.10", None, PERMERROR,
             asked=(("v3.void.example.", "A"),)),
        id="permerror-void-limit",
    ),
    pytest.param(
        Case("alice@twovoid.example", "192.0.2.10", None, PASS,
             asked=(("v2.void.example.", "A"),)),
        id="two-void-lookups-allowed",
    ),
    pytest.param(
        Case("alice@slow.example", "192.0.2.10", None, TEMPERROR,
             faults=(("slow.example", "timeout"),), asked=(("slow.example.", "TXT"),)),
        id="temperror-timeout",
    ),
    pytest.param(
        Case("alice@slowinc.example", "192.0.2.10", None, TEMPERROR,
             faults=(("slow.example", "timeout"),), asked=(("slow.example.", "TXT"),)),
        id="temperror-timeout-in-include",
    ),
    pytest.param(
        Case("alice@broken.example", "192.0.2.10", None, TEMPERROR,
             faults=(("broken.example", "servfail"),), asked=(("broken.example.", "TXT"),)),
        id="temperror-servfail",
    ),
    pytest.param(
        Case("alice@failinc.example", "192.0.2.10", None, TEMPERROR,
             faults=(("broken.example", "servfail"),)),
        id="temperror-servfail-in-include",
    ),
    pytest.param(
        Case("alice@broken.example", "192.0.2.10", None, TEMPERROR,
             faults=(("broken.example", "refused"),)),
        id="temperror-refused",
    ),
    pytest.param(
        Case("alice@include.example", "192.0.2.10", None, PASS,
             asked=(("include.example.", "TXT"), ("pass.example.", "TXT"))),
        id="include",
    ),
    pytest.param(
        Case("alice@redirect.example", "198.51.100.7", None, FAIL,
             asked=(("pass.example.", "TXT"),)),
        id="redirect",
    ),
    pytest.param(
        Case("alice@mx.example", "192.0.2.25", None, PASS,
             asked=(("mx.example.", "MX"), ("mail.mx.example.", "A"))),
        id="mx",
    ),
    pytest.param(
        Case("alice@a.example", "192.0.2.33", None, PASS, asked=(("host.a.example.", "A"),)),
        id="a",
    ),
    pytest.param(
        Case("alice@ptr.example", "192.0.2.10", None, PASS,
             asked=(("10.2.0.192.in-addr.arpa.", "PTR"), ("mail.ptr.example.", "A"))),
        id="ptr",
    ),
    pytest.param(
        Case("alice@ptr.example", "192.0.2.77", None, FAIL,
             faults=(("77.2.0.192.in-addr.arpa", "timeout"),),
             asked=(("77.2.0.192.in-addr.arpa.", "PTR"),)),
        id="ptr-lookup-error-does-not-match",
    ),
    pytest.param(
        Case("alice@ptr.example", "192.0.2.10", None, PASS,
             faults=(("broken.ptr.example", "servfail"),),
             asked=(("host.broken.ptr.example.", "A"), ("mail.ptr.example.", "A"))),
        id="ptr-name-with-dns-error-skipped",
    ),
    pytest.param(Case("alice@six.example", "2001:db8:1::25", None, PASS), id="ipv6-ip6"),
    pytest.param(Case("alice@six.example", "2001:db8:2::25", None, FAIL), id="ipv6-ip6-fail"),
    pytest.param(
        Case("alice@sixa.example", "2001:db8::33", None, PASS,
             asked=(("host.a.example.", "AAAA"),)),
        id="ipv6-a-uses-aaaa",
    ),
    pytest.param(
        Case("alice@pass.example", "2001:db8::10", None, FAIL), id="ipv6-client-ip4-record"
    ),
    pytest.param(
        Case("alice@alias.example", "192.0.2.10", None, PASS, asked=(("alias.example.", "TXT"),)),
        id="cname-record",
    ),
    pytest.param(
        Case("alice@viacname.example", "192.0.2.10", None, PASS,
             asked=(("www.viacname.example.", "A"),)),
        id="cname-in-mechanism",
    ),
    pytest.param(
        Case("alice@macro.example", "192.0.2.10", None, PASS,
             asked=(("10.2.0.192.alice._spf.macro.example.", "A"),)),
        id="macro-exists",
    ),
    pytest.param(
        Case("", "192.0.2.10", "mail.helo.example", PASS, PASS, domain="mail.helo.example",
             asked=(("mail.helo.example.", "TXT"),)),
        id="null-sender-helo-pass",
    ),
    pytest.param(
        Case("", "198.51.100.7", "mail.helo.example", FAIL, FAIL, domain="mail.helo.example"),
        id="null-sender-helo-fail",
    ),
    pytest.param(
        Case("", "192.0.2.10", "MAIL.Helo.Example.", PASS, PASS, domain="mail.helo.example"),
        id="null-sender-helo-case-and-dot",
    ),
    pytest.param(Case("", "192.0.2.10", None, NONE, NONE, domain=None), id="null-sender-no-helo"),
    pytest.param(
        Case("", "192.0.2.10", "[192.0.2.10]", NONE, NONE, domain=None),
        id="null-sender-helo-literal",
    ),
    pytest.param(
        Case("", "192.0.2.10", "192.0.2.10", NONE, NONE, domain=None),
        id="null-sender-helo-bare-ip",
    ),
    pytest.param(
        Case("", "192.0.2.10", "localhost", NONE, NONE, domain=None),
        id="null-sender-helo-single-label",
    ),
    pytest.param(
        Case("", None, "mail.helo.example", NONE, NONE, domain="mail.helo.example"),
        id="null-sender-no-client",
    ),
    pytest.param(Case("alice@pass.example", None, None, NONE), id="no-client-address"),
    pytest.param(
        Case("alice@[192.0.2.10]", "192.0.2.10", None, NONE, domain=None),
        id="sender-address-literal",
    ),
    pytest.param(
        Case("alice@[IPv6:2001:db8::1]", "192.0.2.10", None, NONE, domain=None),
        id="sender-ipv6-literal",
    ),
    # Issue 12 item 5: pyspf splits at the first "@"; the domain evaluated is the one we report.
    pytest.param(
        Case('"a@b"@quoted.example', "198.51.100.7", None, FAIL,
             asked=(("quoted.example.", "TXT"),)),
        id="quoted-at-evaluates-the-reported-domain",
    ),
    pytest.param(
        Case('"a@b"@quoted.example', "192.0.2.10", None, PASS), id="quoted-at-passes"
    ),
    pytest.param(
        Case("a@b@lod.example", "192.0.2.10", None, PASS,
             asked=(("a\\@b.lod.example.lod.example.m.lod.example.", "A"),)),
        id="exim-unquoted-at-l-o-d-macros",
    ),
    pytest.param(
        Case("@a.example,@b.example:x@quoted.example", "198.51.100.7", None, FAIL),
        id="source-route-ignored",
    ),
    pytest.param(Case("not an address", "192.0.2.10", None, NONE, domain=None), id="no-domain"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_check_spf(dns_server: DnsServer, resolver: Resolver, case: Case) -> None:
    """check_spf gives the expected results for each identity and asks our DNS server for them."""
    dns_server.records.add_text(ZONE)
    for name, kind in case.faults:
        dns_server.fault(name, kind)
    envelope = _envelope(case)
    mailfrom, helo = check_spf(resolver, envelope)
    domain = case.domain
    if domain == SENDER_DOMAIN:
        assert envelope.sender is not None
        domain = envelope.sender.domain
    assert (mailfrom.result, mailfrom.identity) == (case.mailfrom, "mailfrom"), mailfrom.reason
    assert mailfrom.domain == domain
    if case.helo_result is None:
        assert helo is None
    else:
        assert helo is not None
        assert (helo.result, helo.identity, helo.domain) == (case.helo_result, "helo", domain)
    assert len(mailfrom.reason) <= MAX_REASON
    seen = {(name.lower(), kind) for name, kind, _transport in dns_server.queries}
    for wanted in case.asked:
        assert wanted in seen, f"the DNS server was not asked {wanted}: {sorted(seen)}"


def test_no_dns_without_client_or_domain(dns_server: DnsServer, resolver: Resolver) -> None:
    """Checks that cannot apply (no client address, a literal HELO) send no query at all."""
    dns_server.records.add_text(ZONE)
    for case in (
        Case("alice@pass.example", None, None, NONE),
        Case("", "192.0.2.10", "[192.0.2.10]", NONE, NONE),
        Case("", "192.0.2.10", None, NONE, NONE),
    ):
        check_spf(resolver, _envelope(case))
    assert dns_server.queries == []


def test_null_sender_reports_one_evaluation_twice(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    """For <> the MAIL FROM identity is postmaster@HELO (RFC 7208 §2.4), evaluated once."""
    dns_server.records.add_text(ZONE)
    envelope = _envelope(Case("", "192.0.2.10", "mail.helo.example", PASS))
    mailfrom, helo = check_spf(resolver, envelope)
    assert helo is not None
    assert helo == SpfResult(PASS, "helo", "mail.helo.example", mailfrom.reason)
    assert mailfrom == SpfResult(PASS, "mailfrom", "mail.helo.example", helo.reason)
    txt_queries = [q for q in dns_server.queries if q[:2] == ("mail.helo.example.", "TXT")]
    assert len(txt_queries) == 1


def test_explanation_is_data_and_truncated(dns_server: DnsServer, resolver: Resolver) -> None:
    """An exp= text full of header syntax and control bytes comes back cut short and one line."""
    dns_server.records.add_text('exp.example. 300 IN TXT "v=spf1 -all exp=why.exp.example"')
    hostile = b"x; spf=pass smtp.mailfrom=bank.example\r\nX-Evil: 1 " + b"A" * 200
    dns_server.records.add_txt("why.exp.example.", hostile)
    mailfrom, _ = check_spf(resolver, _envelope(Case("bob@exp.example", "192.0.2.10", None, FAIL)))
    assert mailfrom.result is FAIL
    assert mailfrom.reason.startswith("x; spf=pass smtp.mailfrom=bank.example??X-Evil: 1 AAA")
    assert len(mailfrom.reason) == MAX_REASON
    assert "\r" not in mailfrom.reason
    assert "\n" not in mailfrom.reason


def test_exp_lookup_failure_keeps_the_result(dns_server: DnsServer, resolver: Resolver) -> None:
    """A timeout fetching the exp= text leaves the fail result alone (RFC 7208 §6.2)."""
    dns_server.records.add_text('exp.example. 300 IN TXT "v=spf1 -all exp=why.exp.example"')
    dns_server.fault("why.exp.example", "timeout")
    mailfrom, _ = check_spf(resolver, _envelope(Case("bob@exp.example", "192.0.2.10", None, FAIL)))
    assert mailfrom.result is FAIL


def test_receiver_fills_the_r_macro(dns_server: DnsServer, resolver: Resolver) -> None:
    """The receiver name is passed in for %{r}, never looked up from the host."""
    dns_server.records.add_text('exp.example. 300 IN TXT "v=spf1 -all exp=why.exp.example"')
    dns_server.records.add_txt("why.exp.example.", "checked by %{r}")
    envelope = _envelope(Case("bob@exp.example", "192.0.2.10", None, FAIL))
    mailfrom, _ = check_spf(resolver, envelope, receiver="mx.scatterguard.test")
    assert mailfrom.reason == "checked by mx.scatterguard.test"
    mailfrom, _ = check_spf(resolver, envelope)
    assert mailfrom.reason == "checked by unknown"


def test_query_time_bounds_the_evaluation(dns_server: DnsServer, resolver: Resolver) -> None:
    """Once the overall SPF time budget is spent, the result is temperror (RFC 7208 §4.6.4)."""
    dns_server.records.add_text(ZONE)
    envelope = _envelope(Case("alice@pass.example", "192.0.2.10", None, TEMPERROR))
    mailfrom, _ = check_spf(resolver, envelope, query_time=-1.0)
    assert mailfrom.result is TEMPERROR
    assert "exceeded" in mailfrom.reason
    assert dns_server.queries == []


def test_cache_hit_still_counts_void(dns_server: DnsServer, resolver: Resolver) -> None:
    """Void lookups count per use, also when the resolver answers from its cache."""
    record = "v=spf1 a:gone.example a:gone.example a:gone.example -all"
    dns_server.records.add_txt("rep.example.", record)
    mailfrom, _ = check_spf(
        resolver, _envelope(Case("bob@rep.example", "192.0.2.10", None, PERMERROR))
    )
    assert mailfrom.result is PERMERROR
    assert "Void lookup" in mailfrom.reason


@pytest.mark.parametrize(
    ("case", "query_time", "cause"),
    [
        pytest.param(Case("alice@pass.example", "192.0.2.10", None, PASS), 20.0, None, id="pass"),
        pytest.param(Case("alice@pass.example", "198.51.100.7", None, FAIL), 20.0, None, id="fail"),
        pytest.param(
            Case("alice@syntax.example", "192.0.2.10", None, PERMERROR), 20.0, None, id="permerror"
        ),
        pytest.param(
            Case("alice@norecord.example", "192.0.2.10", None, NONE),
            20.0,
            SpfCause.NO_RECORD,
            id="no-record",
        ),
        pytest.param(
            Case("alice@pass.example", None, None, NONE),
            20.0,
            SpfCause.NO_CLIENT_ADDRESS,
            id="no-client",
        ),
        pytest.param(
            Case("not an address", "192.0.2.10", None, NONE), 20.0, SpfCause.NO_DOMAIN, id="no-at"
        ),
        pytest.param(
            Case("alice@localhost", "192.0.2.10", None, NONE),
            20.0,
            SpfCause.NOT_A_DOMAIN,
            id="one-label",
        ),
        pytest.param(
            Case("", "192.0.2.10", None, NONE), 20.0, SpfCause.NO_DOMAIN, id="null-no-helo"
        ),
        pytest.param(
            Case("", "192.0.2.10", "[192.0.2.10]", NONE),
            20.0,
            SpfCause.NOT_A_DOMAIN,
            id="null-literal-helo",
        ),
        pytest.param(
            Case(
                "alice@pass.example",
                "192.0.2.10",
                None,
                TEMPERROR,
                faults=(("pass.example", "servfail"),),
            ),
            20.0,
            SpfCause.DNS_ERROR,
            id="servfail",
        ),
        pytest.param(
            Case("alice@pass.example", "192.0.2.10", None, TEMPERROR),
            -1.0,
            SpfCause.TIME_BUDGET,
            id="out-of-time",
        ),
    ],
)
def test_cause(
    dns_server: DnsServer, resolver: Resolver, case: Case, query_time: float, cause: SpfCause | None
) -> None:
    """Each SPF result carries a cause code where the word alone does not say why."""
    dns_server.records.add_text(ZONE)
    for name, kind in case.faults:
        dns_server.fault(name, kind)
    mailfrom, _helo = check_spf(resolver, _envelope(case), query_time=query_time)
    assert (mailfrom.result, mailfrom.cause) == (case.mailfrom, cause), mailfrom.reason


class _BrokenResolver(Resolver):
    """A resolver with a bug: every lookup raises."""

    def query(self, name: str, rdtype: str) -> Answer:
        raise RuntimeError(f"bug while asking {name}/{rdtype}")


def test_library_or_resolver_bug_is_temperror() -> None:
    """An unexpected exception inside the evaluation becomes temperror, so the MTA retries."""
    resolver = _BrokenResolver([("127.0.0.1", 9)], timeout=0.1)
    envelope = _envelope(Case("alice@pass.example", "192.0.2.10", "mail.helo.example", TEMPERROR))
    mailfrom, helo = check_spf(resolver, envelope)
    assert mailfrom.result is TEMPERROR
    assert mailfrom.cause is SpfCause.INTERNAL_ERROR
    assert "RuntimeError" in mailfrom.reason
    assert helo is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("mail.example", "mail.example", id="plain"),
        pytest.param("Mail.Example.", "mail.example", id="case-and-final-dot"),
        pytest.param("bücher.example", "xn--bcher-kva.example", id="u-label"),
        pytest.param("localhost", None, id="single-label"),
        pytest.param("[192.0.2.1]", None, id="address-literal"),
        pytest.param("[IPv6:2001:db8::1]", None, id="ipv6-literal"),
        pytest.param("192.0.2.1", None, id="bare-ipv4"),
        pytest.param("a..example", None, id="empty-label"),
        pytest.param("a" * 64 + ".example", None, id="long-label"),
        pytest.param("mail example", None, id="space"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="missing"),
    ],
)
def test_spf_domain(text: str | None, expected: str | None) -> None:
    """Only multi-label domain names are SPF domains (RFC 7208 §4.3)."""
    assert spf_domain(text) == expected


def test_dns_answers_in_pyspf_shapes(dns_server: DnsServer, resolver: Resolver) -> None:
    """Our dns() override returns each record type in the form pyspf's mechanisms consume."""
    dns_server.records.add_text(
        """
        shape.example. 300 IN A 192.0.2.1
        shape.example. 300 IN AAAA 2001:db8::1
        shape.example. 300 IN MX 10 mx1.shape.example.
        shape.example. 300 IN MX 0 .
        shape.example. 300 IN TXT "v=spf1 " "-all"
        10.2.0.192.in-addr.arpa. 300 IN PTR host.shape.example.
        """
    )
    query = ResolverQuery(resolver, i="192.0.2.10", s="a@shape.example", h="shape.example")
    shapes = {kind: query.dns("shape.example", kind) for kind in ("A", "AAAA", "MX", "TXT")}
    shapes["PTR"] = query.dns("10.2.0.192.in-addr.arpa", "PTR")
    assert shapes["A"] == ["192.0.2.1"]
    assert shapes["AAAA"] == ["2001:db8::1"]
    assert sorted(shapes["MX"]) == [(0, ""), (10, "mx1.shape.example")]
    assert shapes["TXT"] == [[b"v=spf1 ", b"-all"]]
    assert shapes["PTR"] == ["host.shape.example"]


def test_spent_budget_is_not_skipped_in_ptr(dns_server: DnsServer, resolver: Resolver) -> None:
    """A spent time budget ends the evaluation even where one failed PTR lookup would be skipped."""
    dns_server.records.add_text(ZONE)
    query = ResolverQuery(resolver, i="192.0.2.10", s="a@ptr.example", h="ptr.example")
    assert query.validated_ptrs() == ["mail.ptr.example"]
    query = ResolverQuery(resolver, i="192.0.2.10", s="a@ptr.example", h="ptr.example")
    query.deadline = time.monotonic() - 1
    with pytest.raises(OutOfTime):
        query.validated_ptrs()


# Issue 12 item 4: the client's reverse zone answers the PTR validation lookups. 203.0.113.50's
# PTR names lie in attacker.example, whose nameserver never answers.
PTR_ATTACK_ZONE = (
    """
ptrv.example. 300 IN TXT "v=spf1 ptr -all"
pm.example.   300 IN TXT "v=spf1 exists:%{p}._p.pm.example -all"
mail.pm.example._p.pm.example. 300 IN A 127.0.0.2
mail.pm.example. 300 IN A 203.0.113.52
"""
    + "".join(f"50.113.0.203.in-addr.arpa. 300 IN PTR n{n}.attacker.example.\n" for n in range(10))
    + "".join(f"51.113.0.203.in-addr.arpa. 300 IN PTR gone{n}.ptrv.example.\n" for n in range(5))
    + "52.113.0.203.in-addr.arpa. 300 IN PTR n1.attacker.example.\n"
    + ("52.113.0.203.in-addr.arpa. 300 IN PTR mail.pm.example.\n")
)


@pytest.mark.parametrize(
    ("sender", "client", "expected"),
    [
        pytest.param("a@ptrv.example", "203.0.113.50", FAIL, id="timing-out-names-do-not-match"),
        pytest.param("a@ptrv.example", "203.0.113.51", FAIL, id="void-names-are-not-void-lookups"),
        pytest.param("a@pm.example", "203.0.113.52", PASS, id="p-macro-prefers-the-domain"),
    ],
)
def test_attackers_reverse_zone_cannot_make_spf_temperror(
    dns_server: DnsServer, resolver: Resolver, sender: str, client: str, expected: Result
) -> None:
    """PTR names whose address lookups time out use up no more than the PTR share of the budget
    (the mechanism does not match, RFC 7208 §5.5), and nonexistent PTR names are no void
    lookups: the client's reverse zone never turns the domain's SPF into temperror or permerror."""
    dns_server.records.add_text(PTR_ATTACK_ZONE)
    dns_server.fault("attacker.example", "timeout")
    envelope = _envelope(Case(sender, client, None, expected))
    started = time.monotonic()
    mailfrom, _ = check_spf(resolver, envelope, query_time=2.0)
    assert mailfrom.result is expected, mailfrom.reason
    # 2 s budget, 0.5 s for PTR validation, lookups of 0.5 s: far from ten timeouts.
    assert time.monotonic() - started < 1.5
    asked = [name for name, _kind, _ in dns_server.queries if "attacker" in name]
    assert len(set(asked)) <= 10


PTR_TARGET_ZONE = (
    """
ptrt.example. 300 IN TXT "v=spf1 ptr -all"
ptrx.example. 300 IN TXT "v=spf1 ptr:mail.ptrt.example -all"
mail.ptrt.example. 300 IN A 203.0.113.53
"""
    + "".join(f"53.113.0.203.in-addr.arpa. 300 IN PTR n{n}.attacker.example.\n" for n in range(9))
    + "53.113.0.203.in-addr.arpa. 300 IN PTR mail.ptrt.example.\n"
)


@pytest.mark.parametrize(
    "sender",
    [
        pytest.param("a@ptrt.example", id="ptr-for-the-current-domain"),
        pytest.param("a@ptrx.example", id="ptr-with-a-domain-spec"),
    ],
)
def test_ptr_names_outside_the_target_domain_are_never_looked_up(
    dns_server: DnsServer, resolver: Resolver, sender: str
) -> None:
    """RFC 7208 §5.5: only a validated name in the target domain can match, so the client's
    PTR names outside it are not validated at all: nine names in the attacker's timing-out zone
    cost no lookup, and the one name in the target domain still validates and passes."""
    dns_server.records.add_text(PTR_TARGET_ZONE)
    dns_server.fault("attacker.example", "timeout")
    envelope = _envelope(Case(sender, "203.0.113.53", None, PASS))
    mailfrom, _ = check_spf(resolver, envelope, query_time=2.0)
    assert mailfrom.result is PASS, mailfrom.reason
    assert not [name for name, _kind, _ in dns_server.queries if "attacker" in name]


# --- issue 12 item 4, adversarial review: a lookup cut short by the PTR share ------------------


class _Latency(Resolver):
    """A resolver behind a network with latency: every lookup takes 50 ms, and the client's
    reverse zone (the attacker's) answers only after 470 ms, just inside a 0.5 s PTR share. A
    lookup whose timeout is shorter than its latency times out, as over a real network."""

    def _lookup(self, name: str, rdtype: str) -> Answer:
        delay = 0.47 if name.endswith(".in-addr.arpa") else 0.05
        if delay >= self.timeout:
            time.sleep(self.timeout)
            return Answer(Status.TIMEOUT, detail="no answer in time")
        time.sleep(delay)
        return super()._lookup(name, rdtype)


SLOW_PTR_ZONE = """
slowptr.example. 300 IN TXT "v=spf1 ptr a:mail.slowptr.example -all"
mail.slowptr.example. 300 IN A 198.51.100.7
60.113.0.203.in-addr.arpa. 300 IN PTR mail.slowptr.example.
"""


def test_a_lookup_cut_short_by_the_ptr_share_is_not_cached(dns_server: DnsServer) -> None:
    """The attacker's reverse zone answers just inside the PTR share and names a host of the
    victim's domain: validating it gets what is left of the share, too little, and times out.
    That timeout is ours, not the name's: the victim's own ``a:`` for the same host must still
    be looked up and give ``fail``, not the cached timeout's ``temperror`` (RFC 7208 §5.5)."""
    dns_server.records.add_text(SLOW_PTR_ZONE)
    resolver = _Latency([(dns_server.host, dns_server.port)], timeout=0.5)
    envelope = _envelope(Case("a@slowptr.example", "203.0.113.60", None, FAIL))
    mailfrom, _ = check_spf(resolver, envelope, query_time=2.0)
    assert mailfrom.result is FAIL, mailfrom.reason
    assert not any(answer.temporary for _, answer in resolver.cache.values())
