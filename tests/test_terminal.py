"""Text from mail shown on a terminal: one escaping for ``check`` and the quarantine commands."""

from __future__ import annotations

from typing import Any

import pytest

from scatterguard.core import explain
from scatterguard.core.terminal import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("plain été", "plain été", id="printable-kept"),
        pytest.param("\x1b[2J\x07", "\\x1b[2J\\x07", id="c0"),
        pytest.param("a\r\nb\tc", "a\\x0d\\x0ab\\x09c", id="line-breaks-and-tab"),
        pytest.param("\x85\xa0", "\\x85\\xa0", id="c1-and-nbsp"),
        pytest.param("evil\u202etxt.exe", "evil\\u202etxt.exe", id="bidi-override"),
        pytest.param("\u2028", "\\u2028", id="line-separator"),
        pytest.param("\U000e0001tag", "\\U000e0001tag", id="astral-tag"),
        pytest.param("\ud800", "\\ud800", id="lone-surrogate"),
    ],
)
def test_printable_escapes_what_a_terminal_acts_on(text: str, shown: str) -> None:
    """Every non-printable character becomes an escape of its own width; the rest is kept."""
    assert printable(text) == shown
    assert printable(shown) == shown  # an escape is printable: escaping twice changes nothing


def _document(reason: str) -> dict[str, Any]:
    return {
        "action": "quarantine",
        "rule": "spf_fail_no_dmarc_unverified",
        "reverse_path_verified": False,
        "reasons": [reason],
        "spf": {"result": "fail", "identity": "mailfrom", "domain": "x.example"},
        "dkim": [],
        "dmarc": {"result": "none", "domain": None, "policy": None, "testing": False},
        "authentication_results": "mx.example; spf=fail",
    }


def test_check_text_escapes_as_the_quarantine_commands_do() -> None:
    """``check`` (without --json) shows a bidi override as ``\\u202e``, as ``quarantine show``
    does; it used to print ``\\x202e``, which reads as ``\\x20`` followed by ``2e``."""
    text = explain.text(_document("From evil\u202eexample.com"))
    assert "  - From evil\\u202eexample.com\n" in text
    assert all(c.isprintable() for c in text.replace("\n", ""))
