"""core.domains: the one label syntax every check reads domain names with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scatterguard.checks import dkim as dkimcheck
from scatterguard.checks import spf as spfcheck
from scatterguard.core import envelope
from scatterguard.core.domains import ascii_domain, is_name, within


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("example.com", True, id="plain"),
        pytest.param("Example.COM", True, id="any-case"),
        pytest.param("_dmarc.example.com", True, id="leading-underscore"),
        pytest.param("bounce_.example.com", True, id="trailing-underscore"),
        pytest.param("a-b.example", True, id="inner-hyphen"),
        pytest.param("-ab.example", False, id="leading-hyphen"),
        pytest.param("ab-.example", False, id="trailing-hyphen"),
        pytest.param("x", True, id="one-label"),
        pytest.param("a" * 63 + ".example", True, id="label-of-63"),
        pytest.param("a" * 64 + ".example", False, id="label-of-64"),
        pytest.param(".".join(["a" * 63] * 3) + "." + "a" * 61, True, id="name-of-253"),
        pytest.param(".".join(["a" * 63] * 3) + "." + "a" * 62, False, id="name-of-254"),
        pytest.param("example.com.", False, id="final-dot"),
        pytest.param("a..b", False, id="empty-label"),
        pytest.param("", False, id="empty"),
        pytest.param("exa mple.com", False, id="space"),
        pytest.param("example.com\n", False, id="final-newline"),
        pytest.param("b\u00fccher.example", False, id="u-label"),
    ],
)
def test_is_name(text: str, expected: bool) -> None:
    """A name is 1 to 253 characters of labels: letters, digits, "_" anywhere, "-" inside."""
    assert is_name(text) is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("Example.COM", "example.com", id="lower-case"),
        pytest.param("example.com.", "example.com", id="one-final-dot-dropped"),
        pytest.param("example.com..", None, id="two-final-dots"),
        pytest.param("b\u00fccher.example", "xn--bcher-kva.example", id="idn"),
        pytest.param("[192.0.2.1]", None, id="address-literal"),
        pytest.param("", None, id="empty"),
        pytest.param("a" * 1100, None, id="far-too-long"),
    ],
)
def test_ascii_domain(raw: str, expected: str | None) -> None:
    """A domain becomes lower-case A-labels without its final dot, or None."""
    assert ascii_domain(raw) == expected


@pytest.mark.parametrize(
    ("name", "ancestor", "expected"),
    [
        pytest.param("example.com", "example.com", True, id="same"),
        pytest.param("mail.example.com", "example.com", True, id="below"),
        pytest.param("badexample.com", "example.com", False, id="suffix-is-not-below"),
        pytest.param("example.com", "mail.example.com", False, id="above"),
    ],
)
def test_within(name: str, ancestor: str, expected: bool) -> None:
    """A name is within itself and its ancestors, never within a mere string suffix."""
    assert within(name, ancestor) is expected


names = st.text(alphabet="aZ09_-.\u00fc\u3002 !", max_size=80)


@given(names)
def test_every_reader_agrees(text: str) -> None:
    """The envelope, DMARC, SPF and DKIM read a domain name the same way."""
    ours = ascii_domain(text)
    # The envelope refuses some names before IDNA, but what it accepts, it reads alike.
    domain, _problem = envelope._domain(text)
    assert domain is None or domain == ours
    if text.isascii():
        assert bool(dkimcheck._DNS_NAME.match(text.encode("ascii"))) is is_name(text)
        spf_name = spfcheck.spf_domain(text)
        assert spf_name is None or is_name(spf_name)
