"""core.authors: the Author Domains of every From field (RFC 5322 §3.4, RFC 9989 §5.3.1)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scatterguard.core.authors import MAX_AUTHOR_DOMAINS, NoAuthorDomain, from_domains
from scatterguard.core.message import Message
from scatterguard.core.results import DmarcCause

NO_FIELD = NoAuthorDomain(DmarcCause.NO_FROM_FIELD, "no From header field")
NO_ADDRESS = NoAuthorDomain(DmarcCause.NO_FROM_ADDRESS, "the From header field has no address")
NO_DOMAIN = NoAuthorDomain(DmarcCause.NO_FROM_DOMAIN, "the From header field has no usable domain")


def message(*froms: str, linesep: str = "\r\n") -> Message:
    """A message with one From field per argument."""
    lines = [f"From: {value}" for value in froms] + ["Subject: test", "", "body"]
    return Message(linesep.join(lines).encode("utf-8") + linesep.encode())


# ---------------------------------------------------------------------------------------------
# From extraction (RFC 5322 §3.4, RFC 9989 §5.3.1).


@pytest.mark.parametrize(
    ("froms", "expected"),
    [
        pytest.param(("a@Example.COM",), ["example.com"], id="bare-addr-spec-lowered"),
        pytest.param(("Alice <alice@example.com.>",), ["example.com"], id="angle-trailing-dot"),
        pytest.param(
            ('"Smith, John (x@evil.example)" <john@b.example>, c@d.example',),
            ["b.example", "d.example"],
            id="quoted-display-name-and-list",
        ),
        pytest.param(
            ("(a (nested \\) comment) x@evil.example) real@bank.example (y@evil.example)",),
            ["bank.example"],
            id="nested-comments-with-quoted-pair",
        ),
        pytest.param(
            ("=?utf-8?q?ceo@bank.example?= <a@evil.example>",),
            ["evil.example"],
            id="encoded-word-display-name-ignored",
        ),
        pytest.param(
            ("=?UTF-8?B?w6lsw6hvbm9yZQ==?= <x@b.example>",),
            ["b.example"],
            id="base64-encoded-word",
        ),
        pytest.param(("undisclosed-recipients:;",), NO_ADDRESS, id="empty-group"),
        pytest.param(
            ("grp: a@x.example, B <b@y.example>;, z@w.example",),
            ["x.example", "y.example", "w.example"],
            id="group-with-members",
        ),
        pytest.param(
            ("<@route.example,@r2.example:user@c.example>",),
            ["c.example"],
            id="obsolete-route-dropped",
        ),
        pytest.param(
            ("a@x.example", "b@y.example"), ["x.example", "y.example"], id="repeated-from"
        ),
        pytest.param(
            ("a@x.example, b@X.example, c@x.example.",), ["x.example"], id="duplicates-once"
        ),
        pytest.param(("Jörg <j@bücher.example>",), ["xn--bcher-kva.example"], id="idn-a-label"),
        pytest.param(("x@faß.example",), ["xn--fa-hia.example"], id="idna2008-eszett"),
        pytest.param(("a@b@c.example",), ["b", "c.example"], id="double-at-counts-both"),
        pytest.param(("Alice <a@x.example",), ["x.example"], id="unterminated-angle"),
        pytest.param(
            ('"unterminated a@x.example',),
            NO_ADDRESS,
            id="unterminated-quote",
        ),
        pytest.param(("a@[192.0.2.1]",), NO_DOMAIN, id="address-literal"),
        pytest.param(("a@bank..example",), NO_DOMAIN, id="empty-label"),
        pytest.param(("nobody",), NO_ADDRESS, id="no-at"),
        pytest.param(
            ("bad@exa mple.com, good@example.org",), ["exa", "example.org"], id="broken-and-good"
        ),
        pytest.param((), NO_FIELD, id="no-from"),
    ],
)
def test_from_domains(froms: tuple[str, ...], expected: list[str] | NoAuthorDomain) -> None:
    """Every addr-spec of every From field counts; display names and comments never do."""
    assert from_domains(message(*froms)) == expected


def test_from_domains_bare_lf() -> None:
    """LF-only messages are read like CRLF ones, folded fields included."""
    data = b"From: Alice\n <alice@example.com>,\n\tbob@example.org\nSubject: x\n\nbody\n"
    assert from_domains(Message(data)) == ["example.com", "example.org"]


def test_from_domains_thousand_addresses_capped() -> None:
    """A thousand addresses are read; the list stops one past the cap of distinct domains."""
    value = ", ".join(f"User {i} <u{i}@d{i}.example>" for i in range(1000))
    domains = from_domains(message(value))
    assert domains == [f"d{i}.example" for i in range(MAX_AUTHOR_DOMAINS + 1)]


def test_from_domains_thousand_addresses_one_domain() -> None:
    """A thousand addresses of one domain give that one domain."""
    value = ", ".join(f"u{i}@example.com" for i in range(1000))
    assert from_domains(message(value)) == ["example.com"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a@" * 20_000, ["a"], id="many-at-signs"),
        pytest.param("(" * 50_000 + "a@x.example", NO_ADDRESS, id="open-comments"),
        pytest.param("<" * 50_000, NO_ADDRESS, id="many-angles"),
        pytest.param("=?a?q?" * 10_000, NO_ADDRESS, id="broken-words"),
        pytest.param("g:" * 20_000 + "a@x.example;", ["x.example"], id="many-group-colons"),
    ],
)
def test_from_domains_pathological(value: str, expected: list[str] | NoAuthorDomain) -> None:
    """Huge hostile From values are read in one linear pass and give a plain answer."""
    assert from_domains(message(value)) == expected


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_from_domains_never_raises(data: bytes) -> None:
    """Arbitrary bytes, as a whole message or as a From value, never make it raise."""
    for raw in (data, b"From: " + data + b"\r\n\r\n"):
        result = from_domains(Message(raw))
        assert isinstance(result, (list, NoAuthorDomain))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='<>()[]":;@.,\\ \t=?ab\u00fc', max_size=120))
def test_from_domains_never_raises_on_structure(value: str) -> None:
    """Tangled structure characters never make it raise, and domains are always clean."""
    result = from_domains(message(value))
    if isinstance(result, list):
        assert all(d == d.lower() and d.isascii() and d for d in result)
