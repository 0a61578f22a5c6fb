"""DKIM verification (RFC 6376, 8301, 8463) with real keys, through the loopback DNS server."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsserver import DnsServer
from scatterguard.checks.dkim import (
    MAX_REASON,
    MAX_SIGNED_FIELDS,
    _content_end,
    _Verifier,
    canonical_body,
    check_dkim,
    crlf,
)
from scatterguard.checks.resolver import Answer, Resolver
from scatterguard.config import DkimConfig
from scatterguard.core.message import Message
from scatterguard.core.results import DkimCause, DkimResult, Result
from signing import Signer, key, sample_message

PASS, FAIL, NEUTRAL = Result.PASS, Result.FAIL, Result.NEUTRAL
TEMPERROR, PERMERROR = Result.TEMPERROR, Result.PERMERROR

DOMAIN = "sender.example"
KEY_NAME = f"s1._domainkey.{DOMAIN}"
CONFIG = DkimConfig()

Edit = Callable[[bytes], bytes]


def _check(resolver: Resolver, data: bytes, config: DkimConfig = CONFIG) -> tuple[DkimResult, ...]:
    return check_dkim(resolver, Message(data), config, timeout=resolver.timeout)


# The b= value of a signature field, folding included, up to the end of the field.
_B_TAG = re.compile(rb"[;\s]b=((?:[A-Za-z0-9+/=]|\r?\n[ \t]|[ \t])+)")


def _b_value(signed: bytes) -> str:
    """The b= of the first DKIM-Signature field, white space removed."""
    found = _B_TAG.search(signed)
    assert found is not None
    return re.sub(rb"\s+", b"", found.group(1)).decode()


def _replace(old: bytes, new: bytes) -> Edit:
    """Replace the first occurrence (in the signature field, which is on top)."""

    def edit(signed: bytes) -> bytes:
        assert old in signed, old
        return signed.replace(old, new, 1)

    return edit


def _add_tags(text: bytes) -> Edit:
    return _replace(b"DKIM-Signature: ", b"DKIM-Signature: " + text)


def _remove_tag(tag: bytes) -> Edit:
    def edit(signed: bytes) -> bytes:
        return re.sub(rb"(?<=[;\s])" + tag + rb"=[^;]*;", b"", signed, count=1)

    return edit


# A hand-written tag list that passes every syntax check; its b= and bh= prove nothing.
VALID_TAGS = (
    b"v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.example; s=s1; h=from:subject; "
    b"bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA=="
)


# --- pass --------------------------------------------------------------------------------------

BODY_8BIT = b"caf\xc3\xa9 \xff\xfe raw 8-bit\r\nNUL here: \x00 and there\x00\r\n"
BODY_SPACES = b"trailing  \t \r\n  several   spaces\there\r\n\r\n\r\n\r\n"


@pytest.mark.parametrize(
    ("kind", "canonicalize", "linesep", "body"),
    [
        pytest.param("rsa2048", "relaxed/relaxed", b"\r\n", None, id="rsa2048-relaxed-crlf"),
        pytest.param("rsa2048", "simple/simple", b"\r\n", None, id="rsa2048-simple-crlf"),
        pytest.param("rsa2048", "relaxed/simple", b"\n", None, id="rsa2048-relaxed-simple-lf"),
        pytest.param("rsa2048", "simple/relaxed", b"\n", None, id="rsa2048-simple-relaxed-lf"),
        pytest.param("ed25519", "relaxed/relaxed", b"\r\n", None, id="ed25519-relaxed-crlf"),
        pytest.param("ed25519", "simple/simple", b"\n", None, id="ed25519-simple-lf"),
        pytest.param("rsa1024", "relaxed/relaxed", b"\r\n", None, id="rsa1024-accepted"),
        pytest.param("rsa2048", "relaxed/relaxed", b"\r\n", BODY_SPACES, id="relaxed-spaces"),
        pytest.param("rsa2048", "simple/simple", b"\n", BODY_SPACES, id="simple-spaces-lf"),
        pytest.param("rsa2048", "relaxed/relaxed", b"\r\n", BODY_8BIT, id="8bit-nul-relaxed"),
        pytest.param("ed25519", "simple/simple", b"\n", BODY_8BIT, id="8bit-nul-simple-lf"),
        pytest.param("rsa2048", "relaxed/relaxed", b"\r\n", b"", id="empty-body-relaxed"),
        pytest.param("rsa2048", "simple/simple", b"\r\n", b"", id="empty-body-simple"),
        pytest.param("rsa2048", "relaxed/relaxed", b"\r\n", b"a\rb\r\r\n\r\n", id="bare-cr"),
    ],
)
def test_pass(
    dns_server: DnsServer,
    resolver: Resolver,
    kind: str,
    canonicalize: str,
    linesep: bytes,
    body: bytes | None,
) -> None:
    """A message signed with a published key verifies, whatever the key, c= and line ending."""
    signer = Signer(DOMAIN, "s1", kind)
    signer.publish(dns_server)
    message = sample_message(linesep=linesep, **({} if body is None else {"body": body}))
    signed = signer.sign(message, canonicalize=canonicalize)

    (result,) = _check(resolver, signed)

    assert result.result is PASS, result.reason
    assert result.cause is None
    assert (result.domain, result.selector) == (DOMAIN, "s1")
    assert result.algorithm == signer.key.algorithm.decode()
    assert result.covers_body
    assert result.b_prefix is not None
    assert len(result.b_prefix) >= 8
    assert _b_value(signed).startswith(result.b_prefix)
    assert (KEY_NAME + ".", "TXT", "udp") in dns_server.queries


def test_pass_upper_case_domain_reported_lower(dns_server: DnsServer, resolver: Resolver) -> None:
    """d= is reported in lower case, and a key published in lower case is found for it."""
    signer = Signer("Sender.EXAMPLE", "s1")
    Signer(DOMAIN, "s1").publish(dns_server)
    (result,) = _check(resolver, signer.sign(sample_message()))
    assert (result.result, result.domain) == (PASS, DOMAIN)


def test_pass_key_split_into_strings(dns_server: DnsServer, resolver: Resolver) -> None:
    """A key record of several character-strings is joined before parsing (RFC 6376 §3.6.2.2)."""
    signer = Signer(DOMAIN, "s1")
    record = signer.record().encode()
    dns_server.records.add_txt(KEY_NAME, record[:40], record[40:300], record[300:])
    (result,) = _check(resolver, signer.sign(sample_message()))
    assert result.result is PASS, result.reason


def test_pass_beside_other_txt_records(dns_server: DnsServer, resolver: Resolver) -> None:
    """TXT records at the key name that are not DKIM keys are ignored."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    dns_server.records.add_txt(KEY_NAME, "some-site-verification=abc123")
    dns_server.records.add_txt(KEY_NAME, "v=spf1 -all")
    (result,) = _check(resolver, signer.sign(sample_message()))
    assert result.result is PASS, result.reason


def test_pass_testing_mode_is_noted(dns_server: DnsServer, resolver: Resolver) -> None:
    """A key with t=y still verifies; the reason says it is in testing mode."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server, t="y")
    (result,) = _check(resolver, signer.sign(sample_message()))
    assert result.result is PASS
    assert "t=y" in result.reason


# --- fail --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "reason", "cause"),
    [
        pytest.param(
            lambda m: m + b"P.S. added later\r\n",
            "body hash",
            DkimCause.BODY_HASH,
            id="body-appended",
        ),
        pytest.param(
            _replace(b"this is a test", b"this is a TEST"),
            "body hash",
            DkimCause.BODY_HASH,
            id="body-changed",
        ),
        pytest.param(
            _replace(b"Subject: Hello", b"Subject: Hullo"),
            "did not verify",
            DkimCause.BAD_SIGNATURE,
            id="subject",
        ),
        pytest.param(
            _replace(b"To: ", b"From: mallory@evil.example\r\nTo: "),
            "did not verify",
            DkimCause.BAD_SIGNATURE,
            id="second-from-added",
        ),
    ],
)
def test_fail(
    dns_server: DnsServer, resolver: Resolver, edit: Edit, reason: str, cause: DkimCause
) -> None:
    """A signed message changed after signing fails (and never passes), with its cause."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    (result,) = _check(resolver, edit(signer.sign(sample_message())))
    assert result.result is FAIL
    assert reason in result.reason
    assert result.cause is cause


@pytest.mark.parametrize("kind", [pytest.param("rsa2048", id="rsa"), pytest.param("ed25519")])
def test_fail_other_key(dns_server: DnsServer, resolver: Resolver, kind: str) -> None:
    """A signature made with another key than the published one fails."""
    Signer(DOMAIN, "s1", kind).publish(dns_server)
    impostor = Signer(DOMAIN, "s1", kind, key_index=1)
    (result,) = _check(resolver, impostor.sign(sample_message()))
    assert result.result is FAIL
    assert "did not verify" in result.reason


def test_fail_truncated_ed25519_signature(dns_server: DnsServer, resolver: Resolver) -> None:
    """An Ed25519 b= of the wrong length fails instead of crashing PyNaCl."""
    signer = Signer(DOMAIN, "s1", "ed25519")
    signer.publish(dns_server)
    signed = signer.sign(sample_message())
    b = _b_value(signed)
    folded = _B_TAG.search(signed)
    assert folded is not None
    signed = signed.replace(folded.group(1), b[:-8].encode(), 1)
    (result,) = _check(resolver, signed)
    assert result.result is FAIL


# --- permerror ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broken:
    """A signature or key that cannot be used: the expected reason and what the DNS served."""

    reason: str
    cause: DkimCause
    edit: Edit | None = None  # applied to the signed message
    handmade: bytes | None = None  # instead of signing: this tag list on the unsigned message
    record: dict[str, str] | str | None = field(default_factory=dict)  # None: nothing published
    kind: str = "rsa2048"
    sign: dict[str, object] = field(default_factory=dict)
    asks_dns: bool = True


ED_KEY = key("ed25519").public

BROKEN = [
    pytest.param(
        Broken("no key for signature", DkimCause.NO_KEY, record=None), id="no-key-nxdomain"
    ),
    pytest.param(Broken("revoked", DkimCause.KEY_REVOKED, record={"p": ""}), id="revoked-key"),
    pytest.param(
        Broken("unusable", DkimCause.KEY_SYNTAX, record={"p": "!!notbase64"}), id="key-not-base64"
    ),
    pytest.param(
        Broken(
            "unusable",
            DkimCause.KEY_SYNTAX,
            record={"p": base64.b64encode(b"not a key at all").decode()},
        ),
        id="key-not-der",
    ),
    pytest.param(
        Broken(
            "unusable",
            DkimCause.KEY_SYNTAX,
            kind="ed25519",
            record={"p": base64.b64encode(b"x" * 31).decode()},
        ),
        id="ed25519-key-31-octets",
    ),
    pytest.param(
        Broken(
            "not a key for rsa-sha256",
            DkimCause.INAPPROPRIATE_KEY,
            record={"k": "ed25519", "p": ED_KEY},
        ),
        id="ed25519-key-for-rsa-signature",
    ),
    pytest.param(
        Broken("not a key for", DkimCause.INAPPROPRIATE_KEY, record={"k": "dsa"}),
        id="unknown-key-type",
    ),
    pytest.param(
        Broken("not for email", DkimCause.INAPPROPRIATE_KEY, record={"s": "tlsrpt"}),
        id="key-service-tlsrpt",
    ),
    pytest.param(
        Broken("excludes this hash", DkimCause.INAPPROPRIATE_KEY, record={"h": "sha1"}),
        id="key-hash-sha1-only",
    ),
    pytest.param(
        Broken("no DKIM key record", DkimCause.NO_KEY, record={"v": "DKIM2"}), id="key-version-2"
    ),
    pytest.param(
        Broken("no DKIM key record", DkimCause.NO_KEY, record="garbage;;=="),
        id="key-record-garbage",
    ),
    pytest.param(
        Broken(
            "forbids i= subdomains",
            DkimCause.DOMAIN_MISMATCH,
            record={"t": "s"},
            sign={"identity": b"@mail.sender.example"},
        ),
        id="key-t-s-with-subdomain-i",
    ),
    pytest.param(
        Broken(
            "malformed tag list",
            DkimCause.MALFORMED_SIGNATURE,
            handmade=b"this is not a tag list",
            asks_dns=False,
        ),
        id="garbage-tags",
    ),
    pytest.param(
        Broken(
            "duplicated tag d=",
            DkimCause.MALFORMED_SIGNATURE,
            edit=_add_tags(b"d=other.example; "),
            asks_dns=False,
        ),
        id="duplicated-d",
    ),
    pytest.param(
        Broken(
            "required tag missing: bh=",
            DkimCause.MISSING_TAG,
            edit=_remove_tag(b"bh"),
            asks_dns=False,
        ),
        id="missing-bh",
    ),
    pytest.param(
        Broken(
            "required tag missing: s=",
            DkimCause.MISSING_TAG,
            edit=_remove_tag(b"s"),
            asks_dns=False,
        ),
        id="missing-s",
    ),
    pytest.param(
        Broken("required tag missing", DkimCause.MISSING_TAG, handmade=b"v=1", asks_dns=False),
        id="only-v",
    ),
    pytest.param(
        Broken(
            "invalid signature",
            DkimCause.MALFORMED_SIGNATURE,
            edit=_replace(b"a=rsa-sha256", b"a=rsa-md5"),
            asks_dns=False,
        ),
        id="unknown-algorithm",
    ),
    pytest.param(
        Broken(
            "invalid signature",
            DkimCause.MALFORMED_SIGNATURE,
            edit=_replace(b"v=1;", b"v=2;"),
            asks_dns=False,
        ),
        id="version-2",
    ),
    pytest.param(
        Broken(
            "unknown canonicalisation",
            DkimCause.UNSUPPORTED_ALGORITHM,
            edit=_replace(b"c=relaxed/simple", b"c=loose/simple"),
            asks_dns=False,
        ),
        id="unknown-c",
    ),
    pytest.param(
        Broken(
            "i= is not in the d= domain",
            DkimCause.DOMAIN_MISMATCH,
            edit=_replace(b"i=@sender.example", b"i=@x.example"),
            asks_dns=False,
        ),
        id="i-outside-d",
    ),
    pytest.param(
        Broken(
            "i= is not in the d= domain",
            DkimCause.DOMAIN_MISMATCH,
            edit=_replace(b"i=@sender.example", b"i=sender.example"),
            asks_dns=False,
        ),
        id="i-equals-d-without-at",
    ),
    pytest.param(
        Broken(
            "l= is not a decimal number",
            DkimCause.MALFORMED_SIGNATURE,
            edit=_add_tags(b"l=; "),
            asks_dns=False,
        ),
        id="l-empty",
    ),
    pytest.param(
        Broken(
            "l= is not a decimal number",
            DkimCause.MALFORMED_SIGNATURE,
            edit=_add_tags(b"l=-5; "),
            asks_dns=False,
        ),
        id="l-negative",
    ),
    pytest.param(
        Broken(
            "expired",
            DkimCause.SIGNATURE_EXPIRED,
            edit=_add_tags(b"x=1000000000; "),
            asks_dns=False,
        ),
        id="expired-x",
    ),
    pytest.param(
        Broken(
            "in the future",
            DkimCause.MALFORMED_SIGNATURE,
            edit=_replace(b"t=", b"t=9999999999; y="),
            asks_dns=False,
        ),
        id="t-in-future",
    ),
    pytest.param(
        Broken(
            "b= is not valid base64",
            DkimCause.MALFORMED_SIGNATURE,
            handmade=VALID_TAGS.replace(b"b=dGVzdA==", b"b=abc"),
            asks_dns=False,
        ),
        id="b-not-base64",
    ),
    pytest.param(
        Broken(
            "does not include From",
            DkimCause.FROM_NOT_SIGNED,
            handmade=VALID_TAGS.replace(b"h=from:subject", b"h=subject"),
            asks_dns=False,
        ),
        id="from-not-signed",
    ),
    pytest.param(
        Broken(
            f"more than {MAX_SIGNED_FIELDS}",
            DkimCause.MALFORMED_SIGNATURE,
            handmade=VALID_TAGS.replace(b"h=from", b"h=from" + b":x-a" * 200),
            asks_dns=False,
        ),
        id="h-too-long",
    ),
    pytest.param(
        Broken(
            "run of more than",
            DkimCause.MALFORMED_SIGNATURE,
            handmade=VALID_TAGS.replace(b"b=", b"b=" + b" " * 300),
            asks_dns=False,
        ),
        id="whitespace-run",
    ),
    pytest.param(
        Broken(
            "longer than",
            DkimCause.MALFORMED_SIGNATURE,
            handmade=(VALID_TAGS + b"; z=" + b"x" * 40_000),
            asks_dns=False,
        ),
        id="field-too-long",
    ),
    pytest.param(
        Broken(
            "rsa-sha1",
            DkimCause.UNSUPPORTED_ALGORITHM,
            sign={"algorithm": "rsa-sha1"},
            asks_dns=False,
        ),
        id="rsa-sha1",
    ),
    pytest.param(
        Broken("512 bits", DkimCause.INAPPROPRIATE_KEY, kind="rsa512"), id="rsa512-refused"
    ),
]


@pytest.mark.parametrize("case", BROKEN)
def test_permerror(dns_server: DnsServer, resolver: Resolver, case: Broken) -> None:
    """A signature or key that cannot be used is permerror, never fail or pass."""
    signer = Signer(DOMAIN, "s1", case.kind)
    if isinstance(case.record, dict):
        signer.publish(dns_server, **case.record)
    elif isinstance(case.record, str):
        signer.publish(dns_server, case.record)
    message = sample_message()
    if case.handmade is not None:
        signed = b"DKIM-Signature: " + case.handmade + b"\r\n" + message
    else:
        signed = signer.sign(message, **case.sign)
        if case.edit:
            signed = case.edit(signed)

    (result,) = _check(resolver, signed)

    assert result.result is PERMERROR, result.reason
    assert case.reason in result.reason
    assert result.cause is case.cause
    assert bool(dns_server.queries) == case.asks_dns


def test_permerror_nodata(dns_server: DnsServer, resolver: Resolver) -> None:
    """A key name that exists without TXT records (no data) is permerror."""
    dns_server.records.add(KEY_NAME, "A", "192.0.2.1")
    (result,) = _check(resolver, Signer(DOMAIN, "s1").sign(sample_message()))
    assert result.result is PERMERROR
    assert "no key for signature" in result.reason


def test_permerror_two_key_records(dns_server: DnsServer, resolver: Resolver) -> None:
    """Two DKIM key records at one name are permerror, not a coin toss (RFC 6376 §3.6.2.2)."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    Signer(DOMAIN, "s1", key_index=1).publish(dns_server)
    (result,) = _check(resolver, signer.sign(sample_message()))
    assert result.result is PERMERROR
    assert "2 DKIM key records" in result.reason


# --- temperror ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["timeout", "servfail", "refused", "malformed", "truncate"])
def test_temperror(dns_server: DnsServer, resolver: Resolver, fault: str) -> None:
    """A key lookup that fails for now is temperror, never fail: the MTA retries later."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    dns_server.fault(KEY_NAME, fault)
    (result,) = _check(resolver, signer.sign(sample_message()))
    assert result.result is TEMPERROR
    assert result.cause is DkimCause.KEY_UNAVAILABLE
    assert KEY_NAME in result.reason


def test_temperror_lookup_budget(dns_server: DnsServer, resolver: Resolver) -> None:
    """Once the lookup time budget is spent, later signatures are temperror without a lookup."""
    slow = [Signer(f"slow{n}.example", "s1") for n in range(2)]
    for signer in slow:
        signer.publish(dns_server)
        dns_server.fault(signer.name, "timeout")
    signed = slow[1].sign(slow[0].sign(sample_message()))
    results = check_dkim(resolver, Message(signed), CONFIG, timeout=0.1)
    assert [r.result for r in results] == [TEMPERROR, TEMPERROR]
    assert "took longer than" in results[1].reason
    assert results[1].cause is DkimCause.TIME_BUDGET
    assert {q[0] for q in dns_server.queries} == {slow[1].name + "."}


class BrokenResolver(Resolver):
    """A resolver with a bug: every lookup raises."""

    def query(self, name: str, rdtype: str) -> Answer:
        raise RuntimeError("resolver bug")


def test_unexpected_error_is_temperror(dns_server: DnsServer) -> None:
    """An unexpected exception becomes temperror for that signature and does not escape."""
    resolver = BrokenResolver([(dns_server.host, dns_server.port)], timeout=0.5)
    (result,) = _check(resolver, Signer(DOMAIN, "s1").sign(sample_message()))
    assert result.result is TEMPERROR
    assert "RuntimeError" in result.reason
    assert result.cause is DkimCause.INTERNAL_ERROR


# --- l= ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "expected", "covers_body"),
    [
        pytest.param(lambda m: m, PASS, True, id="l-covers-whole-body"),
        pytest.param(lambda m: m + b"Click here!\r\n", PASS, False, id="l-partial-appended"),
        pytest.param(_replace(b"this is a test", b"this is a TEST"), FAIL, True, id="l-changed"),
    ],
)
def test_length(
    dns_server: DnsServer, resolver: Resolver, edit: Edit, expected: Result, covers_body: bool
) -> None:
    """A signature whose l= leaves body text unsigned keeps its result but does not cover it."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    (result,) = _check(resolver, edit(signer.sign(sample_message(), length=True)))
    assert result.result is expected, result.reason
    assert result.covers_body is covers_body
    assert result.counts is (expected is PASS and covers_body)


# --- several signatures, limits ------------------------------------------------------------------


def test_several_signatures_in_order(dns_server: DnsServer, resolver: Resolver) -> None:
    """Each field has its own result, top to bottom; shared c= bodies verify alike."""
    first = Signer(DOMAIN, "s1")
    second = Signer("esp.example", "k2", "ed25519")
    unpublished = Signer("gone.example", "s1")
    first.publish(dns_server)
    second.publish(dns_server)
    signed = sample_message()
    for signer in (first, second, unpublished):
        signed = signer.sign(signed, canonicalize="relaxed/relaxed")

    results = _check(resolver, signed)

    assert [(r.domain, r.result) for r in results] == [
        ("gone.example", PERMERROR),
        ("esp.example", PASS),
        (DOMAIN, PASS),
    ]
    assert results[1].algorithm == "ed25519-sha256"


def test_no_signature(dns_server: DnsServer, resolver: Resolver) -> None:
    """A message without DKIM-Signature gives no results and no lookups."""
    assert _check(resolver, sample_message()) == ()
    assert dns_server.queries == []


def test_size_cap(dns_server: DnsServer, resolver: Resolver) -> None:
    """Above max_message_size every signature is neutral, and nothing is looked up."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    signed = signer.sign(signer.sign(sample_message()))
    config = DkimConfig(max_message_size=len(signed) - 1)

    results = _check(resolver, signed, config)

    reason = f"message larger than {len(signed) - 1} bytes; DKIM not verified"
    assert [(r.result, r.reason) for r in results] == [(NEUTRAL, reason)] * 2
    assert {r.cause for r in results} == {DkimCause.MESSAGE_TOO_LARGE}
    assert results[0].domain == DOMAIN
    assert dns_server.queries == []
    assert _check(resolver, signed, DkimConfig(max_message_size=len(signed)))[0].result is PASS


@pytest.mark.parametrize(("limit", "verified"), [(0, 0), (2, 2), (5, 3)])
def test_max_signatures(
    dns_server: DnsServer, resolver: Resolver, limit: int, verified: int
) -> None:
    """Only the first max_signatures fields are verified; the rest are neutral."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    signed = sample_message()
    for _ in range(3):
        signed = signer.sign(signed)

    results = _check(resolver, signed, DkimConfig(max_signatures=limit))

    assert [r.result for r in results] == [PASS] * verified + [NEUTRAL] * (3 - verified)
    assert all(f"first {limit} DKIM" in r.reason for r in results[verified:])
    assert all(r.cause is DkimCause.SIGNATURE_LIMIT for r in results[verified:])


def test_many_garbage_signatures_stay_bounded(dns_server: DnsServer, resolver: Resolver) -> None:
    """A thousand signature fields: the first few are verified, all are reported, b= kept apart."""
    fields = b"".join(
        b"DKIM-Signature: v=1; d=x%d.example; s=s; b=AAAAAAAAAAAA%04dQQ==\r\n" % (n, n)
        for n in range(1000)
    )
    results = _check(resolver, fields + sample_message())
    assert len(results) == 1000
    assert [r.result for r in results[:6]] == [PERMERROR] * 5 + [NEUTRAL]
    prefixes = [r.b_prefix for r in results]
    assert len(set(prefixes)) == 1000
    assert prefixes[7] == "AAAAAAAAAAAA0007"
    assert dns_server.queries == []


def test_long_whitespace_run_in_body(dns_server: DnsServer, resolver: Resolver) -> None:
    """A megabyte of spaces in one body line is canonicalised in linear time and verifies."""
    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    # Signed over the short form (dkimpy's own signer is quadratic on such runs); the long form
    # has the same relaxed canonical body (RFC 6376 §3.4.4), so the signature still holds.
    signed = signer.sign(sample_message(body=b"start end\r\n"), canonicalize="relaxed/relaxed")
    long_body = b"start" + b" " * 1_000_000 + b"end \r\n" + b"\t" * 100_000 + b"\r\n"
    (result,) = _check(resolver, signed.replace(b"start end\r\n", long_body))
    assert result.result is PASS, result.reason


def test_dnsfunc_speaks_dkimpy_contract(dns_server: DnsServer, resolver: Resolver) -> None:
    """dkimpy's own verify() can use our dnsfunc: the key through our resolver, None if absent."""
    import dkim

    signer = Signer(DOMAIN, "s1")
    signer.publish(dns_server)
    signed = signer.sign(sample_message())
    verifier = _Verifier(resolver, Message(signed), budget=5.0)
    assert verifier.dnsfunc(KEY_NAME.encode() + b".") == signer.record().encode()
    assert verifier.dnsfunc(b"nothing._domainkey.sender.example.") is None
    assert dkim.verify(signed, dnsfunc=verifier.dnsfunc) is True


def test_unsigned_and_oversized_mail_do_not_import_dkimpy() -> None:
    """Start-up cost: dkimpy is imported only when a signature is to be verified."""
    program = textwrap.dedent(
        """
        import sys
        from scatterguard.config import DkimConfig
        from scatterguard.checks.dkim import check_dkim
        from scatterguard.core.message import Message
        from scatterguard.checks.resolver import Resolver
        resolver = Resolver([("127.0.0.1", 9)], timeout=0.1)
        assert check_dkim(resolver, Message(b"From: a@b.example\\n\\nhi\\n"), DkimConfig()) == ()
        big = Message(b"DKIM-Signature: v=1; d=b.example\\nFrom: a@b.example\\n\\n" + b"x" * 100)
        (result,) = check_dkim(resolver, big, DkimConfig(max_message_size=10))
        assert result.result.value == "neutral"
        print(sorted(m for m in sys.modules if m == "dkim" or m.startswith(("dkim.", "nacl"))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# --- properties --------------------------------------------------------------------------------

_body_bytes = st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r", b"\n", b"\r\n", b"x y"]))


@given(parts=_body_bytes)
def test_canonical_body_matches_dkimpy(parts: list[bytes]) -> None:
    """Our linear body canonicalisation gives exactly dkimpy's bytes, simple and relaxed."""
    from dkim.canonicalization import Relaxed, Simple

    body = re.sub(rb"\r?\n", b"\r\n", b"".join(parts))
    assert canonical_body(body, b"simple") == Simple.canonicalize_body(body)
    assert canonical_body(body, b"relaxed") == Relaxed.canonicalize_body(body)


@given(parts=_body_bytes)
def test_crlf_normalises_as_the_regular_expression(parts: list[bytes]) -> None:
    """Line endings become CRLF exactly as ``\\r?\\n`` → CRLF does, for any mix of CR and LF."""
    body = b"".join(parts)
    assert crlf(body) == crlf(memoryview(body)) == re.sub(rb"\r?\n", b"\r\n", body)


@given(parts=_body_bytes, piece=st.integers(1, 8))
def test_content_end_is_rstrip_without_the_copy(parts: list[bytes], piece: int) -> None:
    """The end of a body's content is found piece by piece, whatever the piece size."""
    body = b"".join(parts)
    assert _content_end(body, piece) == len(body.rstrip(b"\r\n"))


_TAG_NAMES = ["v", "a", "b", "bh", "c", "d", "h", "i", "l", "q", "s", "t", "x", "z", "", "D"]
_tag_values = st.one_of(
    st.sampled_from(
        [
            "1",
            "rsa-sha256",
            "ed25519-sha256",
            "rsa-sha1",
            "sender.example",
            "s1",
            "from:to",
            "relaxed/relaxed",
            "simple",
            "",
            "@sender.example",
            "10",
            "dGVzdA==",
            "=",
            ";",
        ]
    ),
    st.text(max_size=40),
)
_tag_list = st.lists(
    st.tuples(st.sampled_from(_TAG_NAMES), _tag_values, st.sampled_from(["", " ", "\r\n\t"])),
    max_size=12,
).map(lambda tags: ";".join(f"{sp}{n}={v}" for n, v, sp in tags).encode("utf-8", "replace"))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tags=st.one_of(_tag_list, st.binary(max_size=200)),
    headers=st.binary(max_size=300),
    body=st.binary(max_size=300),
    separator=st.sampled_from([b"\r\n", b"\n", b""]),
)
def test_never_raises(
    dns_server: DnsServer,
    resolver: Resolver,
    tags: bytes,
    headers: bytes,
    body: bytes,
    separator: bytes,
) -> None:
    """check_dkim returns one well-formed result per field on any bytes, and never raises."""
    Signer(DOMAIN, "s1").publish(dns_server)
    data = b"DKIM-Signature: " + tags + separator + headers + separator + body
    message = Message(data)
    results = check_dkim(resolver, message, CONFIG, timeout=0.5)
    assert len(results) == sum(1 for h in message.headers if h.name.lower() == "dkim-signature")
    for result in results:
        assert result.result in (PASS, FAIL, NEUTRAL, TEMPERROR, PERMERROR)
        assert len(result.reason) <= MAX_REASON
        assert not re.search(r"[\x00-\x1f\x7f]", result.reason)
        assert result.b_prefix is None or re.fullmatch(r"[A-Za-z0-9+/]+", result.b_prefix)
