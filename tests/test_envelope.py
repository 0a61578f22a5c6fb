"""The envelope's values as the MTA hands them over: reverse-paths, recipients, client values.

Merging options with SCATTERGUARD_* variables is the front ends' part: tests/test_request.py.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scatterguard.core.envelope import parse_envelope, parse_sender
from scatterguard.errors import UsageError


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        pytest.param("", None, id="empty-is-null"),
        pytest.param("<>", None, id="brackets-are-null"),
        pytest.param("alice@Example.TEST", "example.test", id="lower-cased"),
        pytest.param("<bob@mail.example>", "mail.example", id="angle"),
        pytest.param("user@münchen.example", "xn--mnchen-3ya.example", id="idn-to-a-label"),
        pytest.param("root@localhost", "localhost", id="special-use-name"),
        pytest.param("prvs=1234=bob@bounce.example", "bounce.example", id="batv"),
    ],
)
def test_senders(text: str, domain: str | None) -> None:
    """Valid reverse-paths give their ASCII domain; "" and <> are the null reverse-path."""
    sender = parse_sender(text)
    assert (sender.domain if sender else None) == domain


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a@b\r\nRCPT TO:<x@y>", id="crlf"),
        pytest.param("a\x00@example.test", id="nul"),
        pytest.param("a\x7f@example.test", id="del"),
    ],
)
def test_bad_senders(text: str) -> None:
    """A sender with control characters is a usage error (the filter defers, never bounces):
    no MTA hands one over."""
    with pytest.raises(UsageError):
        parse_sender(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"client_address": "not-an-ip"}, "client address", id="bad-ip"),
        pytest.param({"queue_id": "../../etc/passwd"}, "queue id", id="queue-id-path"),
        pytest.param({"helo": "a\nb"}, "HELO", id="helo-newline"),
    ],
)
def test_bad_envelope_values(options: dict[str, str], message: str) -> None:
    """Hostile envelope values are refused with a message naming them."""
    with pytest.raises(UsageError, match=message):
        parse_envelope("a@x.example", ["b@y.example"], **options)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param("2001:db8::1", "2001:db8::1", id="ipv6"),
        pytest.param("IPv6:2001:db8::1", "2001:db8::1", id="ipv6-tag"),
        pytest.param("::ffff:192.0.2.1", "192.0.2.1", id="v4-mapped"),
        pytest.param("unknown", None, id="postfix-unknown"),
    ],
)
def test_client_addresses(client: str, expected: str | None) -> None:
    """IPv6, tagged and v4-mapped client addresses are understood."""
    envelope = parse_envelope("a@x.example", ["b@y.example"], client_address=client)
    assert (str(envelope.client_address) if envelope.client_address else None) == expected


def test_recipients_checked() -> None:
    """A recipient with CR/LF, or an empty one, is a usage error."""
    for bad in ("b@y.example\r\nDATA", "", "<>"):
        with pytest.raises(UsageError, match="recipient"):
            parse_envelope("a@x.example", [bad])


def test_recipient_may_start_with_a_dash() -> None:
    """A recipient like -oi@y.example is taken: it always follows "--" when re-injected."""
    assert parse_envelope("a@x.example", ["-oi@y.example"]).recipients == ("-oi@y.example",)


def test_long_helo_is_dropped() -> None:
    """A 300-character HELO is the client's fault: it is ignored, not an error."""
    envelope = parse_envelope("a@x.example", ["b@y.example"], helo="h" * 300)
    assert envelope.helo is None


@pytest.mark.parametrize(
    ("text", "domain", "strict"),
    [
        pytest.param("user@[IPv6:2001:db8::1]", None, True, id="ipv6-literal"),
        pytest.param("user@[192.0.2.1]", None, True, id="ipv4-literal"),
        pytest.param("user@[x-tag:some@thing]", None, True, id="general-literal"),
        pytest.param(
            "bounce@mail_out.sender.example", "mail_out.sender.example", True, id="underscore"
        ),
        pytest.param("a..b@sender.example", "sender.example", True, id="exim-unquoted-dots"),
        pytest.param(".a.@sender.example", "sender.example", True, id="exim-edge-dots"),
        pytest.param('"a@b"@victim.example', "victim.example", True, id="quoted-at"),
        pytest.param('"a b\\"c"@victim.example', "victim.example", True, id="quoted-pair"),
        pytest.param('"a".b@victim.example', "victim.example", True, id="obsolete-words"),
        pytest.param("user@Sender.Example.", "sender.example", True, id="trailing-dot"),
        pytest.param("üser@bücher.example", "xn--bcher-kva.example", True, id="smtputf8"),
        pytest.param("@a.example,@b.example:u@c.example", "c.example", True, id="source-route"),
        pytest.param("@[IPv6:::1]:u@c.example", "c.example", True, id="source-route-literal"),
        pytest.param("a@b@victim.example", "victim.example", False, id="exim-unquoted-at"),
        pytest.param("a b@victim.example", "victim.example", False, id="exim-unquoted-space"),
        pytest.param("@victim.example", "victim.example", False, id="empty-local-part"),
        pytest.param('a"b"@victim.example', "victim.example", False, id="words-without-dot"),
        pytest.param("@a.example:@b:u@c.example", "c.example", False, id="bad-route"),
        pytest.param("no-at-sign", None, False, id="no-at"),
        pytest.param("not an address", None, False, id="words"),
        pytest.param("a@-bad-.example", None, False, id="bad-label"),
        pytest.param("user@", None, False, id="empty-domain"),
        pytest.param('"a@b', None, False, id="unclosed-quote"),
        pytest.param("user@[bogus]", None, False, id="bad-literal"),
        pytest.param("user@[IPv6:2001:db8::zz]", None, False, id="bad-ipv6-literal"),
    ],
)
def test_reverse_paths_as_mtas_hand_them_over(text: str, domain: str | None, strict: bool) -> None:
    """Every reverse-path Postfix or Exim can pass is read, never refused: the domain after the
    last @ outside quotes and literals, and whether the whole path is strict (verifiable)."""
    sender = parse_sender(text)
    assert sender is not None
    assert (sender.domain, sender.strict) == (domain, strict)
    assert sender.text == text
    if not strict or domain is None:
        assert sender.problem


@given(st.text(max_size=80))
def test_parse_sender_never_raises_but_for_control_characters(text: str) -> None:
    """Arbitrary text parses (or raises UsageError for a control character); the domain reported
    is what follows the last @ of the text, and a strict path has exactly one unquoted @."""
    try:
        sender = parse_sender(text)
    except UsageError:
        assert re.search(r"[\x00-\x1f\x7f]", text)
        return
    if sender is None:
        assert text in ("", "<>")
        return
    if sender.domain is not None:
        raw = sender.text.rpartition("@")[2].rstrip(".")
        assert sender.domain == raw.lower() or not raw.isascii()


def test_empty_values_are_none() -> None:
    """An empty client address, HELO, queue id or SASL user is the same as none given."""
    envelope = parse_envelope(
        "", ["b@y.example"], client_address="", helo="", queue_id="", sasl_user=""
    )
    values = (envelope.client_address, envelope.helo, envelope.queue_id, envelope.sasl_user)
    assert values == (None, None, None, None)
