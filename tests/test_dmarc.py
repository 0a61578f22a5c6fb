"""DMARC (RFC 9989): record parsing, the DNS tree walk, alignment, check_dmarc.

Everything that needs DNS runs against the real loopback DNS server; SPF and DKIM results are
built as values, since only their outcome and domain matter to DMARC.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsserver import DnsServer
from scatterguard.checks.dmarc import check_dmarc
from scatterguard.checks.orgdomain import (
    OrgDomains,
    TemporaryFailure,
    aligned,
    discover,
    organizational_domain,
    walk_names,
)
from scatterguard.checks.resolver import Resolver
from scatterguard.core.authors import MAX_AUTHOR_DOMAINS
from scatterguard.core.dmarcrecord import parse_record
from scatterguard.core.envelope import Address
from scatterguard.core.message import Message
from scatterguard.core.results import DkimResult, DmarcCause, Policy, Result, SpfResult

# ---------------------------------------------------------------------------------------------
# Helpers.


def message(*froms: str, linesep: str = "\r\n") -> Message:
    """A message with one From field per argument."""
    lines = [f"From: {value}" for value in froms] + ["Subject: test", "", "body"]
    return Message(linesep.join(lines).encode("utf-8") + linesep.encode())


def spf(domain: str | None, result: str = "pass", identity: str = "mailfrom") -> SpfResult:
    return SpfResult(Result(result), identity, domain)


def dkim(domain: str, result: str = "pass", covers_body: bool = True) -> DkimResult:
    return DkimResult(Result(result), domain, "s1", "rsa-sha256", covers_body=covers_body)


def sender(domain: str) -> Address:
    return Address(f"bounce@{domain}", "bounce", domain)


NO_SPF = spf(None, "none")


def load(server: DnsServer, records: Sequence[tuple[str, str]]) -> None:
    """Publish (name, text) pairs: a text starting with "A " is an A record, else a TXT."""
    for name, text in records:
        if text.startswith("A "):
            server.records.add(name, "A", text[2:])
        else:
            server.records.add_txt(name, text)


def txt_queries(server: DnsServer) -> list[str]:
    """The distinct TXT names asked for, in order, without the trailing dot."""
    names: list[str] = []
    for name, rdtype, _transport in server.queries:
        bare = name.rstrip(".")
        if rdtype == "TXT" and bare not in names:
            names.append(bare)
    return names


# ---------------------------------------------------------------------------------------------
# Record parsing (RFC 9989 §4.7, §4.8).


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(b"v=DMARC1; p=reject", {"p": Policy.REJECT}, id="minimal"),
        pytest.param(
            b"v=DMARC1; p=quarantine; sp=none; np=reject; psd=n; t=y; adkim=s; aspf=s",
            {
                "p": Policy.QUARANTINE,
                "sp": Policy.NONE,
                "np": Policy.REJECT,
                "psd": "n",
                "testing": True,
                "strict_dkim": True,
                "strict_spf": True,
            },
            id="every-tag",
        ),
        pytest.param(
            b"v=DMARC1; p=reject; pct=0; rua=mailto:r@example.org; ri=3600; fo=1; rf=afrf",
            {"p": Policy.REJECT, "problems": ()},
            id="pct-and-reporting-tags-ignored",
        ),
        pytest.param(
            b"v=DMARC1; P=Reject; SP=QUARANTINE; T=Y; ADKIM=S",
            {"p": Policy.REJECT, "sp": Policy.QUARANTINE, "testing": True, "strict_dkim": True},
            id="names-and-values-case-insensitive",
        ),
        pytest.param(
            b"  v = DMARC1 ;\tp = reject ;  ",
            {"p": Policy.REJECT},
            id="whitespace-around-separators",
        ),
        pytest.param(
            b"v=DMARC1; rua=mailto:r@example.org",
            {"p": Policy.NONE, "applicable": True},
            id="missing-p-is-none",
        ),
        pytest.param(
            b"v=DMARC1; p=bogus",
            {"p": Policy.NONE, "applicable": False},
            id="invalid-p-without-rua-not-applied",
        ),
        pytest.param(
            b"v=DMARC1; p=bogus; rua=mailto:r@example.org!10m",
            {"p": Policy.NONE, "applicable": True},
            id="invalid-p-with-rua-is-none",
        ),
        pytest.param(
            b"v=DMARC1; p=reject; sp=rejected; rua=mailto:r@example.org",
            {"p": Policy.NONE, "sp": None, "applicable": True},
            id="invalid-sp-with-rua-is-none",
        ),
        pytest.param(
            b"v=DMARC1; p=reject; np=x; rua=not a uri",
            {"applicable": False},
            id="invalid-np-and-invalid-rua-not-applied",
        ),
        pytest.param(
            b"v=DMARC1; p=reject; t=maybe; psd=x; adkim=q; aspf=",
            {
                "p": Policy.REJECT,
                "testing": False,
                "psd": "u",
                "strict_dkim": False,
                "strict_spf": False,
            },
            id="invalid-other-values-default",
        ),
        pytest.param(
            b"v=DMARC1; p=reject; p=none; foo=bar; junk; =x",
            {"p": Policy.REJECT},
            id="repeated-unknown-malformed-tags",
        ),
        pytest.param(b"v=DMARC1; p=re\xffject", {"applicable": False}, id="non-ascii-value"),
        pytest.param(b"v=dmarc1; p=reject", None, id="version-is-case-sensitive"),
        pytest.param(b"p=reject; v=DMARC1", None, id="version-not-first"),
        pytest.param(b"v=DMARC1 p=reject", None, id="missing-separator-after-version"),
        pytest.param(b"v=DMARC2; p=reject", None, id="other-version"),
        pytest.param(b"v=spf1 -all", None, id="spf-record"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\x00\xff;;==", None, id="garbage"),
    ],
)
def test_parse_record(text: bytes, expected: dict[str, object] | None) -> None:
    """Each tag is read per RFC 9989; non-DMARC text gives None; bad values fall back."""
    record = parse_record(text)
    if expected is None:
        assert record is None
        return
    assert record is not None
    for name, value in expected.items():
        assert getattr(record, name) == value, name


@pytest.mark.parametrize(
    ("text", "exists", "policy"),
    [
        pytest.param(b"v=DMARC1; p=reject", True, Policy.REJECT, id="p-only-existing"),
        pytest.param(b"v=DMARC1; p=reject", False, Policy.REJECT, id="p-only-nonexistent"),
        pytest.param(b"v=DMARC1; p=reject; sp=none", False, Policy.NONE, id="sp-for-np"),
        pytest.param(b"v=DMARC1; p=none; np=reject", True, Policy.NONE, id="np-not-existing"),
        pytest.param(b"v=DMARC1; p=none; np=reject", False, Policy.REJECT, id="np"),
    ],
)
def test_subdomain_policy(text: bytes, exists: bool, policy: Policy) -> None:
    """Subdomains get np (non-existent), else sp, else p (RFC 9989 §4.10.1)."""
    record = parse_record(text)
    assert record is not None
    assert record.subdomain_policy(exists) is policy


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_record_never_raises(data: bytes) -> None:
    """Arbitrary bytes give a record or None, never an exception."""
    parse_record(data)
    parse_record(b"v=DMARC1;" + data)


# ---------------------------------------------------------------------------------------------
# The DNS Tree Walk (RFC 9989 §4.10) and Organizational Domains (§4.10.2).


@pytest.mark.parametrize(
    ("domain", "names"),
    [
        pytest.param("example.com", ["example.com", "com"], id="two-labels"),
        pytest.param("com", ["com"], id="one-label-no-root"),
        pytest.param(
            "a.b.c.d.e.f.g",
            ["a.b.c.d.e.f.g", "b.c.d.e.f.g", "c.d.e.f.g", "d.e.f.g", "e.f.g", "f.g", "g"],
            id="seven-labels-one-at-a-time",
        ),
        pytest.param(
            "a.b.c.d.e.f.g.h",
            [
                "a.b.c.d.e.f.g.h",
                "b.c.d.e.f.g.h",
                "c.d.e.f.g.h",
                "d.e.f.g.h",
                "e.f.g.h",
                "f.g.h",
                "g.h",
                "h",
            ],
            id="eight-labels",
        ),
        pytest.param(
            "a.b.c.d.e.f.g.h.i.j.mail.example.com",
            [
                "a.b.c.d.e.f.g.h.i.j.mail.example.com",
                "g.h.i.j.mail.example.com",
                "h.i.j.mail.example.com",
                "i.j.mail.example.com",
                "j.mail.example.com",
                "mail.example.com",
                "example.com",
                "com",
            ],
            id="rfc-example-jumps-to-seven",
        ),
    ],
)
def test_walk_names(domain: str, names: list[str]) -> None:
    """The walk asks the domain, jumps to seven labels from eight or more, then climbs."""
    assert walk_names(domain) == names


@pytest.mark.parametrize(
    ("records", "domain", "org", "queried"),
    [
        pytest.param(
            (),
            "a.mail.example.com",
            "a.mail.example.com",
            ["a.mail.example.com", "mail.example.com", "example.com", "com"],
            id="no-records-domain-itself",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=none"),),
            "a.mail.example.com",
            "example.com",
            ["a.mail.example.com", "mail.example.com", "example.com", "com"],
            id="record-at-ancestor",
        ),
        pytest.param(
            (
                ("_dmarc.mail.example.com", "v=DMARC1; p=none"),
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
            ),
            "a.mail.example.com",
            "example.com",
            ["a.mail.example.com", "mail.example.com", "example.com", "com"],
            id="fewest-labels-wins",
        ),
        pytest.param(
            (
                ("_dmarc.mail.example.com", "v=DMARC1; p=none; psd=n"),
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
            ),
            "a.mail.example.com",
            "mail.example.com",
            ["a.mail.example.com", "mail.example.com"],
            id="psd-n-stops-the-walk",
        ),
        pytest.param(
            (("_dmarc.com", "v=DMARC1; p=reject; psd=y"),),
            "a.mail.example.com",
            "example.com",
            ["a.mail.example.com", "mail.example.com", "example.com", "com"],
            id="psd-y-one-label-below",
        ),
        pytest.param(
            (
                ("_dmarc.giant.bank.example", "v=DMARC1; p=reject"),
                ("_dmarc.bank.example", "v=DMARC1; p=reject; psd=y"),
            ),
            "mail.giant.bank.example",
            "giant.bank.example",
            ["mail.giant.bank.example", "giant.bank.example", "bank.example"],
            id="psd-y-rfc-example-stops",
        ),
        pytest.param(
            (("_dmarc.bank.example", "v=DMARC1; p=reject; psd=y"),),
            "mail.mega.bank.example",
            "mega.bank.example",
            ["mail.mega.bank.example", "mega.bank.example", "bank.example"],
            id="psd-y-without-org-record",
        ),
        pytest.param(
            (("_dmarc.bank.example", "v=DMARC1; p=reject; psd=y"),),
            "bank.example",
            "bank.example",
            ["bank.example"],
            id="psd-y-at-start-is-itself",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=none"),
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
            ),
            "mail.example.com",
            "mail.example.com",
            ["mail.example.com", "example.com", "com"],
            id="two-records-count-as-none",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=spf1 -all"),
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
            ),
            "mail.example.com",
            "example.com",
            ["mail.example.com", "example.com", "com"],
            id="non-dmarc-txt-discarded",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=reject"),),
            "a.b.c.d.e.f.g.h.i.j.example.com",
            "example.com",
            [
                "a.b.c.d.e.f.g.h.i.j.example.com",
                "f.g.h.i.j.example.com",
                "g.h.i.j.example.com",
                "h.i.j.example.com",
                "i.j.example.com",
                "j.example.com",
                "example.com",
                "com",
            ],
            id="cut-off-at-eight-labels",
        ),
    ],
)
def test_organizational_domain(
    dns_server: DnsServer,
    resolver: Resolver,
    records: Sequence[tuple[str, str]],
    domain: str,
    org: str,
    queried: list[str],
) -> None:
    """The walk selects psd=n, one below psd=y, or the fewest labels, asking exactly these names."""
    load(dns_server, records)
    assert organizational_domain(resolver, domain) == org
    assert txt_queries(dns_server) == [f"_dmarc.{name}" for name in queried]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(("_dmarc.example.com", "servfail"), id="servfail-mid-walk"),
        pytest.param(("_dmarc.com", "timeout"), id="timeout-at-top"),
        pytest.param(("_dmarc.a.example.com", "refused"), id="refused-at-start"),
    ],
)
def test_organizational_domain_temporary_failure(
    dns_server: DnsServer, resolver: Resolver, fault: tuple[str, str]
) -> None:
    """A temporary failure anywhere in the walk gives None, never a guess."""
    dns_server.records.add_txt("_dmarc.a.example.com", "v=DMARC1; p=none")
    dns_server.fault(*fault)
    assert organizational_domain(resolver, "a.example.com") is None


# ---------------------------------------------------------------------------------------------
# Alignment (RFC 9989 §3.2.10, §4.4).

ORG_ZONE = (
    ("_dmarc.example.com", "v=DMARC1; p=reject"),
    ("_dmarc.mail.example.com", "v=DMARC1; p=none"),
    ("_dmarc.other.com", "v=DMARC1; p=reject"),
)


@pytest.mark.parametrize(
    ("a", "b", "strict", "expected", "queried"),
    [
        pytest.param("Example.COM.", "example.com", True, True, [], id="strict-equal-no-dns"),
        pytest.param("mail.example.com", "example.com", True, False, [], id="strict-different"),
        pytest.param("example.com", "EXAMPLE.com", False, True, [], id="relaxed-equal-no-dns"),
        pytest.param(
            "example.com",
            "a.mail.example.com",
            False,
            True,
            [
                "_dmarc.example.com",
                "_dmarc.com",
                "_dmarc.a.mail.example.com",
                "_dmarc.mail.example.com",
            ],
            id="relaxed-same-org",
        ),
        pytest.param(
            "example.com",
            "other.com",
            False,
            False,
            ["_dmarc.example.com", "_dmarc.com"],
            id="relaxed-other-org-not-walked",
        ),
        pytest.param("example.com", "example.net", False, False, [], id="no-common-suffix"),
        pytest.param("example.com", "", False, False, [], id="empty-identifier"),
    ],
)
def test_aligned(
    dns_server: DnsServer,
    resolver: Resolver,
    a: str,
    b: str,
    strict: bool,
    expected: bool,
    queried: list[str],
) -> None:
    """Strict compares names; relaxed compares Organizational Domains, asking DNS only if needed."""
    load(dns_server, ORG_ZONE)
    assert aligned(resolver, a, b, strict) is expected
    assert txt_queries(dns_server) == queried


def test_organizational_domain_of_no_dns_name(dns_server: DnsServer, resolver: Resolver) -> None:
    """A name that cannot be asked for is its own Organizational Domain, without DNS."""
    assert organizational_domain(resolver, "Bank..Example.") == "bank..example"
    assert dns_server.queries == []


def test_aligned_temporary_failure(dns_server: DnsServer, resolver: Resolver) -> None:
    """Relaxed alignment is unknown (None) when a walk fails temporarily."""
    load(dns_server, ORG_ZONE)
    dns_server.fault("_dmarc.com", "servfail")
    assert aligned(OrgDomains(resolver), "example.com", "mail.example.com", False) is None


# ---------------------------------------------------------------------------------------------
# check_dmarc: one From domain.

REJECT = (("_dmarc.example.com", "v=DMARC1; p=reject"),)


@pytest.mark.parametrize(
    ("records", "froms", "spf_result", "signatures", "mail_from", "expected"),
    [
        pytest.param(
            REJECT,
            ("a@example.com",),
            spf("example.com"),
            (),
            "example.com",
            (Result.PASS, Policy.REJECT, "example.com", True, False),
            id="spf-strictly-aligned",
        ),
        pytest.param(
            REJECT,
            ("a@example.com",),
            spf("bounce.example.com"),
            (),
            "bounce.example.com",
            (Result.PASS, Policy.REJECT, "example.com", True, False),
            id="spf-relaxed-aligned",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=reject; aspf=s"),),
            ("a@example.com",),
            spf("bounce.example.com"),
            (),
            "bounce.example.com",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="aspf-strict-fails",
        ),
        pytest.param(
            REJECT,
            ("a@example.com",),
            NO_SPF,
            (dkim("mail.example.com"),),
            "other.example",
            (Result.PASS, Policy.REJECT, "example.com", False, True),
            id="dkim-relaxed-aligned",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=reject; adkim=s"),),
            ("a@example.com",),
            NO_SPF,
            (dkim("mail.example.com"),),
            "other.example",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="adkim-strict-fails",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=reject; adkim=s"),),
            ("a@example.com",),
            NO_SPF,
            (dkim("other.example"), dkim("EXAMPLE.com")),
            "other.example",
            (Result.PASS, Policy.REJECT, "example.com", False, True),
            id="adkim-strict-second-signature",
        ),
        pytest.param(
            REJECT,
            ("a@example.com",),
            NO_SPF,
            (dkim("example.com", covers_body=False), dkim("example.com", "fail")),
            "other.example",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="partial-body-and-failed-signatures-do-not-count",
        ),
        pytest.param(
            REJECT,
            ("a@example.com",),
            spf("example.com", identity="helo"),
            (),
            None,
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="helo-identity-does-not-count",
        ),
        pytest.param(
            REJECT,
            ("MAILER-DAEMON@example.com",),
            spf("mx.example.com"),
            (),
            None,
            (Result.PASS, Policy.REJECT, "example.com", True, False),
            id="null-sender-postmaster-at-helo",
        ),
        pytest.param(
            REJECT,
            ("a@example.com",),
            spf("example.com", "softfail"),
            (),
            "example.com",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="spf-softfail-fails",
        ),
        pytest.param(
            (),
            ("a@example.com",),
            spf("example.com"),
            (),
            "example.com",
            (Result.NONE, None, None, False, False),
            id="no-record-none",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=spf1 -all"),),
            ("a@example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.NONE, None, None, False, False),
            id="garbage-record-none",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
                ("_dmarc.example.com", "v=DMARC1; p=none"),
            ),
            ("a@example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.NONE, None, None, False, False),
            id="multiple-records-none",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=rejekt"),),
            ("a@example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.NONE, None, "example.com", False, False),
            id="invalid-p-without-rua-not-applied",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=rejekt; rua=mailto:d@example.com"),),
            ("a@example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.NONE, "example.com", False, False),
            id="invalid-p-with-rua-is-none",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=reject; pct=0"),),
            ("a@example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="pct-ignored",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine"),
                ("www.example.com", "A 192.0.2.1"),
            ),
            ("a@www.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.QUARANTINE, "example.com", False, False),
            id="sp-for-existing-subdomain",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=reject; sp=none; np=quarantine"),
                ("www.example.com", "A 192.0.2.1"),
            ),
            ("a@www.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.NONE, "example.com", False, False),
            id="np-not-for-existing-subdomain",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=reject; sp=none; np=quarantine"),
                ("_spf.txtonly.example.com", "v=spf1 -all"),
            ),
            ("a@txtonly.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.NONE, "example.com", False, False),
            id="np-not-for-name-without-address-records",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=none; sp=none; np=reject"),),
            ("a@ghost.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="np-for-nonexistent-subdomain",
        ),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=none; sp=quarantine"),),
            ("a@ghost.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.QUARANTINE, "example.com", False, False),
            id="nonexistent-falls-back-to-sp",
        ),
        pytest.param(
            REJECT,
            ("a@ghost.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="nonexistent-falls-back-to-p",
        ),
        pytest.param(
            (
                ("_dmarc.mail.example.com", "v=DMARC1; p=none"),
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
            ),
            ("a@x.mail.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.REJECT, "example.com", False, False),
            id="organizational-domain-record-not-the-closest",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=reject; sp=none"),
                ("_dmarc.www.example.com", "v=DMARC1; p=quarantine"),
            ),
            ("a@www.example.com",),
            NO_SPF,
            (),
            "example.com",
            (Result.FAIL, Policy.QUARANTINE, "www.example.com", False, False),
            id="own-record-gives-p",
        ),
        pytest.param(
            (
                ("_dmarc.example.com", "v=DMARC1; p=reject"),
                ("_dmarc.mail.example.com", "v=DMARC1; p=none; psd=n"),
            ),
            ("a@mail.example.com",),
            NO_SPF,
            (dkim("example.com"),),
            "other.example",
            (Result.FAIL, Policy.NONE, "mail.example.com", False, False),
            id="psd-n-own-organization",
        ),
        pytest.param(
            (
                ("_dmarc.bank.example", "v=DMARC1; p=reject; sp=quarantine; psd=y"),
                ("mega.bank.example", "A 192.0.2.2"),
            ),
            ("a@mega.bank.example",),
            NO_SPF,
            (dkim("giant.bank.example"),),
            "other.example",
            (Result.FAIL, Policy.QUARANTINE, "bank.example", False, False),
            id="psd-y-record-applies-sp",
        ),
        pytest.param(
            (("_dmarc.bank.example", "v=DMARC1; p=reject; psd=y"),),
            ("a@mail.mega.bank.example",),
            NO_SPF,
            (dkim("mega.bank.example"),),
            "other.example",
            (Result.PASS, Policy.REJECT, "bank.example", False, True),
            id="psd-y-aligns-below-psd",
        ),
        pytest.param(
            (
                ("_dmarc.giant.bank.example", "v=DMARC1; p=reject"),
                ("_dmarc.bank.example", "v=DMARC1; p=none; psd=y"),
            ),
            ("a@giant.bank.example",),
            spf("mail.giant.bank.example"),
            (dkim("mail.mega.bank.example"),),
            "mail.giant.bank.example",
            (Result.PASS, Policy.REJECT, "giant.bank.example", True, False),
            id="rfc-psd-example",
        ),
        pytest.param(
            (("_dmarc.xn--bcher-kva.example", "v=DMARC1; p=reject"),),
            ("Jörg <j@Bücher.example>",),
            NO_SPF,
            (dkim("xn--bcher-kva.example"),),
            "other.example",
            (Result.PASS, Policy.REJECT, "xn--bcher-kva.example", False, True),
            id="idn-from",
        ),
    ],
)
def test_check_dmarc_one_domain(
    dns_server: DnsServer,
    resolver: Resolver,
    records: Sequence[tuple[str, str]],
    froms: tuple[str, ...],
    spf_result: SpfResult,
    signatures: tuple[DkimResult, ...],
    mail_from: str | None,
    expected: tuple[Result, Policy | None, str | None, bool, bool],
) -> None:
    """Each tag, alignment mode and walk outcome gives the RFC 9989 result and policy."""
    load(dns_server, records)
    envelope_sender = sender(mail_from) if mail_from else None
    result = check_dmarc(resolver, message(*froms), spf_result, signatures, envelope_sender)
    (only,) = result.per_domain
    got = (result.result, result.policy, only.record_domain, only.spf_aligned, only.dkim_aligned)
    assert got == expected, result.reason
    assert result.domain == only.domain


@pytest.mark.parametrize("testing", [True, False], ids=["t-y", "t-n"])
def test_check_dmarc_testing(dns_server: DnsServer, resolver: Resolver, testing: bool) -> None:
    """t=y is reported beside the published policy, which stays as published."""
    flag = "y" if testing else "n"
    dns_server.records.add_txt("_dmarc.example.com", f"v=DMARC1; p=reject; t={flag}")
    result = check_dmarc(resolver, message("a@example.com"), NO_SPF, (), None)
    assert (result.result, result.policy, result.testing) == (Result.FAIL, Policy.REJECT, testing)
    assert result.per_domain[0].testing is testing


def test_check_dmarc_queries_for_subdomain(dns_server: DnsServer, resolver: Resolver) -> None:
    """A From subdomain without a record walks up to the policy, then asks whether it exists."""
    dns_server.records.add_txt("_dmarc.example.com", "v=DMARC1; p=reject; np=quarantine")
    result = check_dmarc(resolver, message("a@x.y.example.com"), NO_SPF, (), None)
    assert (result.result, result.policy) == (Result.FAIL, Policy.QUARANTINE)
    assert txt_queries(dns_server) == [
        "_dmarc.x.y.example.com",
        "_dmarc.y.example.com",
        "_dmarc.example.com",
        "_dmarc.com",
    ]
    assert ("x.y.example.com.", "A") in [(n, t) for n, t, _ in dns_server.queries]


def test_check_dmarc_cut_off_at_eight_labels(dns_server: DnsServer, resolver: Resolver) -> None:
    """A From domain of twelve labels costs eight record lookups, skipping to seven labels."""
    dns_server.records.add_txt("_dmarc.example.com", "v=DMARC1; p=reject")
    author = "a.b.c.d.e.f.g.h.i.j.example.com"
    result = check_dmarc(resolver, message(f"x@{author}"), NO_SPF, (), None)
    (only,) = result.per_domain
    assert (result.result, only.record_domain) == (Result.FAIL, "example.com")
    assert only.organizational_domain == "example.com"
    assert txt_queries(dns_server) == [
        f"_dmarc.{author}",
        "_dmarc.f.g.h.i.j.example.com",
        "_dmarc.g.h.i.j.example.com",
        "_dmarc.h.i.j.example.com",
        "_dmarc.i.j.example.com",
        "_dmarc.j.example.com",
        "_dmarc.example.com",
        "_dmarc.com",
    ]


def test_check_dmarc_no_from(resolver: Resolver) -> None:
    """Without a usable From the result is permerror with a reason, and no policy."""
    result = check_dmarc(resolver, message("undisclosed-recipients:;"), NO_SPF, (), None)
    assert (result.result, result.policy, result.domain) == (Result.PERMERROR, None, None)
    assert "no address" in result.reason
    assert result.cause is DmarcCause.NO_FROM_ADDRESS


@pytest.mark.parametrize(
    ("records", "fault", "spf_result", "expected"),
    [
        pytest.param((), None, NO_SPF, (Result.NONE, DmarcCause.NO_RECORD), id="no-record"),
        pytest.param(
            (("_dmarc.example.com", "v=DMARC1; p=bogus"),),
            None,
            NO_SPF,
            (Result.NONE, DmarcCause.RECORD_NOT_APPLIED),
            id="record-not-applied",
        ),
        pytest.param(
            REJECT,
            ("_dmarc.example.com", "servfail"),
            NO_SPF,
            (Result.TEMPERROR, DmarcCause.DNS_ERROR),
            id="discovery-servfail",
        ),
        pytest.param(
            REJECT,
            None,
            spf("example.com", "temperror"),
            (Result.TEMPERROR, DmarcCause.OUTCOME_OPEN),
            id="aligned-spf-temperror",
        ),
        pytest.param(REJECT, None, spf("example.com"), (Result.PASS, None), id="pass"),
        pytest.param(REJECT, None, NO_SPF, (Result.FAIL, None), id="fail"),
    ],
)
def test_check_dmarc_cause(
    dns_server: DnsServer,
    resolver: Resolver,
    records: Sequence[tuple[str, str]],
    fault: tuple[str, str] | None,
    spf_result: SpfResult,
    expected: tuple[Result, DmarcCause | None],
) -> None:
    """Each result carries the cause code beside its text, per domain and for the message."""
    load(dns_server, records)
    if fault is not None:
        dns_server.fault(*fault)
    result = check_dmarc(resolver, message("a@example.com"), spf_result, (), None)
    assert (result.result, result.cause) == expected, result.reason
    assert (result.per_domain[0].result, result.per_domain[0].cause) == expected


# ---------------------------------------------------------------------------------------------
# check_dmarc: several From domains (RFC 9989 §11.5, DESIGN.md rule 3).

MULTI_ZONE = (
    ("_dmarc.victim.example", "v=DMARC1; p=reject"),
    ("_dmarc.soft.example", "v=DMARC1; p=quarantine"),
    ("_dmarc.testing.example", "v=DMARC1; p=reject; t=y"),
    ("_dmarc.good.example", "v=DMARC1; p=reject"),
    ("_dmarc.example.com", "v=DMARC1; p=reject"),
)


@pytest.mark.parametrize(
    ("froms", "signatures", "expected"),
    [
        pytest.param(
            ("a@good.example, b@victim.example",),
            (dkim("good.example"),),
            (Result.FAIL, "victim.example", Policy.REJECT, False),
            id="two-orgs-one-fails",
        ),
        pytest.param(
            ("a@good.example", "b@victim.example"),
            (dkim("good.example"),),
            (Result.FAIL, "victim.example", Policy.REJECT, False),
            id="repeated-from-different-domains",
        ),
        pytest.param(
            ("a@example.com, b@mail.example.com",),
            (dkim("example.com"),),
            (Result.PASS, "example.com", Policy.REJECT, False),
            id="same-org-twice-passes",
        ),
        pytest.param(
            ("a@soft.example, b@victim.example, c@soft.example",),
            (),
            (Result.FAIL, "victim.example", Policy.REJECT, False),
            id="strictest-failing-policy",
        ),
        pytest.param(
            ("a@testing.example", "b@soft.example"),
            (),
            (Result.FAIL, "testing.example", Policy.REJECT, True),
            id="reject-t-y-against-quarantine",
        ),
        pytest.param(
            ("a@nodmarc.example, b@good.example",),
            (dkim("good.example"),),
            (Result.PASS, "good.example", Policy.REJECT, False),
            id="none-and-pass-is-pass",
        ),
        pytest.param(
            ("a@nodmarc.example, b@victim.example",),
            (),
            (Result.FAIL, "victim.example", Policy.REJECT, False),
            id="none-and-fail-is-fail",
        ),
        pytest.param(
            ("a@nodmarc.example, b@other-nodmarc.example",),
            (),
            (Result.NONE, "nodmarc.example", None, False),
            id="all-none",
        ),
    ],
)
def test_check_dmarc_several_domains(
    dns_server: DnsServer,
    resolver: Resolver,
    froms: tuple[str, ...],
    signatures: tuple[DkimResult, ...],
    expected: tuple[Result, str, Policy | None, bool],
) -> None:
    """Every From domain is evaluated; any failure fails the message under the strictest policy."""
    load(dns_server, MULTI_ZONE)
    result = check_dmarc(resolver, message(*froms), NO_SPF, signatures, None)
    assert (result.result, result.domain, result.policy, result.testing) == expected
    assert len(result.per_domain) == len({r.domain for r in result.per_domain}) >= 2


@pytest.mark.parametrize(
    ("froms", "expected"),
    [
        # Issue 12 item 6: slow.example's policy could not be read; it may be stricter.
        pytest.param(
            ("a@slow.example, b@victim.example",), Result.TEMPERROR, id="temperror-and-fail"
        ),
        pytest.param(
            ("a@slow.example, b@good.example",), Result.TEMPERROR, id="temperror-and-pass"
        ),
        pytest.param(
            ("a@nodmarc.example, b@slow.example",), Result.TEMPERROR, id="none-and-temperror"
        ),
    ],
)
def test_check_dmarc_several_domains_temperror(
    dns_server: DnsServer, resolver: Resolver, froms: tuple[str, ...], expected: Result
) -> None:
    """A temperror whose policy is unknown beats a fail, and pass and none too: it might fail."""
    load(dns_server, MULTI_ZONE)
    dns_server.fault("_dmarc.slow.example", "servfail")
    result = check_dmarc(resolver, message(*froms), NO_SPF, (dkim("good.example"),), None)
    assert result.result is expected


OPEN_ZONE = (
    ("_dmarc.openrej.example", "v=DMARC1; p=reject"),
    ("_dmarc.openrejt.example", "v=DMARC1; p=reject; t=y"),
    ("_dmarc.openquar.example", "v=DMARC1; p=quarantine"),
    ("_dmarc.openlax.example", "v=DMARC1; p=none"),
    ("_dmarc.failnone.example", "v=DMARC1; p=none"),
    ("_dmarc.failquar.example", "v=DMARC1; p=quarantine"),
    ("_dmarc.failquart.example", "v=DMARC1; p=quarantine; t=y"),
    ("_dmarc.failrej.example", "v=DMARC1; p=reject"),
)


@pytest.mark.parametrize(
    ("froms", "expected"),
    [
        pytest.param(
            "a@openrej.example, b@failnone.example",
            (Result.TEMPERROR, "openrej.example", Policy.REJECT),
            id="open-reject-beside-failing-none",
        ),
        pytest.param(
            "a@failquart.example, b@openrej.example",
            (Result.TEMPERROR, "openrej.example", Policy.REJECT),
            id="open-reject-beside-failing-quarantine-t-y",
        ),
        pytest.param(
            "a@openrej.example, b@failquar.example",
            (Result.TEMPERROR, "openrej.example", Policy.REJECT),
            id="open-reject-beside-failing-quarantine",
        ),
        pytest.param(
            "a@openquar.example, b@failrej.example",
            (Result.FAIL, "failrej.example", Policy.REJECT),
            id="open-quarantine-beside-failing-reject-fails",
        ),
        pytest.param(
            "a@openrejt.example, b@failquar.example",
            (Result.FAIL, "failquar.example", Policy.QUARANTINE),
            id="open-reject-t-y-is-not-stricter-than-quarantine",
        ),
        pytest.param(
            "a@openlax.example, b@failnone.example",
            (Result.FAIL, "failnone.example", Policy.NONE),
            id="open-none-beside-failing-none-fails",
        ),
        pytest.param(
            "a@openlax.example, b@openrej.example",
            (Result.TEMPERROR, "openrej.example", Policy.REJECT),
            id="strictest-open-domain-reported",
        ),
    ],
)
def test_open_domain_stricter_than_the_failing_one_keeps_it_open(
    dns_server: DnsServer, resolver: Resolver, froms: str, expected: tuple[Result, str, Policy]
) -> None:
    """An open domain (its aligned DKIM signature ended in temperror) whose effective policy is
    stricter than the strictest failing one keeps the message open (DESIGN.md rule 3)."""
    load(dns_server, OPEN_ZONE)
    open_signatures = tuple(
        dkim(name, "temperror") for name in ("openrej.example", "openrejt.example",
                                             "openquar.example", "openlax.example")
    )  # fmt: skip
    result = check_dmarc(resolver, message(froms), NO_SPF, open_signatures, None)
    assert (result.result, result.domain, result.policy) == expected


def test_check_dmarc_too_many_domains(dns_server: DnsServer, resolver: Resolver) -> None:
    """More distinct From domains than the cap fail as quarantine without any DNS lookup."""
    load(dns_server, MULTI_ZONE)
    names = [f"u{i}@d{i}.example" for i in range(MAX_AUTHOR_DOMAINS)] + ["x@victim.example"]
    result = check_dmarc(resolver, message(", ".join(names)), NO_SPF, (), None)
    assert (result.result, result.policy, result.domain) == (
        Result.FAIL,
        Policy.QUARANTINE,
        "d0.example",
    )
    assert dns_server.queries == []
    assert result.cause is DmarcCause.TOO_MANY_DOMAINS


def test_check_dmarc_at_the_cap(dns_server: DnsServer, resolver: Resolver) -> None:
    """Exactly the cap of From domains is still evaluated domain by domain."""
    load(dns_server, MULTI_ZONE)
    names = [f"u{i}@d{i}.example" for i in range(MAX_AUTHOR_DOMAINS - 1)] + ["x@victim.example"]
    result = check_dmarc(resolver, message(", ".join(names)), NO_SPF, (), None)
    assert (result.result, result.policy, result.domain) == (
        Result.FAIL,
        Policy.REJECT,
        "victim.example",
    )
    assert len(result.per_domain) == MAX_AUTHOR_DOMAINS


# ---------------------------------------------------------------------------------------------
# check_dmarc: temporary DNS failures.

TEMP_ZONE = (
    ("_dmarc.corp.example", "v=DMARC1; p=reject"),
    ("_dmarc.mail.corp.example", "v=DMARC1; p=quarantine"),
)


@pytest.mark.parametrize(
    ("fault", "author", "spf_result", "signatures", "expected"),
    [
        pytest.param(
            ("_dmarc.corp.example", "timeout"),
            "corp.example",
            NO_SPF,
            (),
            Result.TEMPERROR,
            id="timeout-at-the-domain",
        ),
        pytest.param(
            ("_dmarc.corp.example", "servfail"),
            "corp.example",
            NO_SPF,
            (),
            Result.TEMPERROR,
            id="servfail-at-the-domain",
        ),
        pytest.param(
            ("_dmarc.corp.example", "servfail"),
            "www.corp.example",
            NO_SPF,
            (),
            Result.TEMPERROR,
            id="servfail-at-an-ancestor",
        ),
        pytest.param(
            ("_dmarc.example", "servfail"),
            "www.corp.example",
            NO_SPF,
            (),
            Result.TEMPERROR,
            id="servfail-at-the-top-of-the-walk",
        ),
        pytest.param(
            ("_dmarc.example", "servfail"),
            "mail.corp.example",
            NO_SPF,
            (dkim("corp.example"),),
            Result.TEMPERROR,
            id="servfail-in-relaxed-alignment",
        ),
        pytest.param(
            ("_dmarc.example", "servfail"),
            "mail.corp.example",
            spf("mail.corp.example"),
            (dkim("corp.example"),),
            Result.PASS,
            id="servfail-in-alignment-but-equal-spf-passes",
        ),
        pytest.param(
            ("_dmarc.unrelated.test", "servfail"),
            "corp.example",
            spf("corp.example", "temperror"),
            (),
            Result.TEMPERROR,
            id="aligned-spf-temperror-leaves-outcome-open",
        ),
        pytest.param(
            ("_dmarc.unrelated.test", "servfail"),
            "corp.example",
            NO_SPF,
            (dkim("corp.example", "temperror"),),
            Result.TEMPERROR,
            id="aligned-dkim-temperror-leaves-outcome-open",
        ),
        pytest.param(
            ("_dmarc.evil.example", "timeout"),
            "corp.example",
            spf("evil.example", "temperror"),
            (dkim("evil.example"),),
            Result.FAIL,
            id="unaligned-identifiers-never-walked",
        ),
    ],
)
def test_check_dmarc_temporary_failures(
    dns_server: DnsServer,
    resolver: Resolver,
    fault: tuple[str, str],
    author: str,
    spf_result: SpfResult,
    signatures: tuple[DkimResult, ...],
    expected: Result,
) -> None:
    """A DNS timeout or SERVFAIL that leaves the outcome open is temperror, never fail or none."""
    load(dns_server, TEMP_ZONE)
    dns_server.records.add("www.corp.example", "A", "192.0.2.3")
    dns_server.fault(*fault)
    result = check_dmarc(resolver, message(f"a@{author}"), spf_result, signatures, None)
    assert result.result is expected, result.reason
    assert "_dmarc.evil.example" not in txt_queries(dns_server)


def test_check_dmarc_existence_unknown(dns_server: DnsServer, resolver: Resolver) -> None:
    """When np matters and the existence lookup times out, a failure stays open (temperror)."""
    dns_server.records.add_txt("_dmarc.example.com", "v=DMARC1; p=none; np=reject")
    # Discovery's answers are cached first, so only the existence lookup meets the timeout.
    assert not isinstance(discover(OrgDomains(resolver), "ghost.example.com"), TemporaryFailure)
    dns_server.fault("ghost.example.com", "timeout")
    result = check_dmarc(resolver, message("a@ghost.example.com"), NO_SPF, (), None)
    assert (result.result, result.policy) == (Result.TEMPERROR, Policy.REJECT)
    assert result.cause is DmarcCause.EXISTENCE_UNKNOWN
