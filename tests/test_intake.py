"""Batch SMTP intake (Exim use_bsmtp) and the stdin size cap."""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scatterguard.errors import InputError
from scatterguard.frontends.intake import parse_bsmtp, read_all


@pytest.mark.parametrize(
    "eol",
    [pytest.param(b"\n", id="lf"), pytest.param(b"\r\n", id="crlf")],
)
def test_batch(eol: bytes) -> None:
    """Envelope and dot-unstuffed message come out of a batch; line endings are kept."""
    message = [b"Subject: x", b"", b"..leading dot", b".", b"end"]
    stuffed = [b"Subject: x", b"", b"...leading dot", b"..", b"end"]
    stream = eol.join(
        [
            b"MAIL FROM:<a@x.example> SIZE=10",
            b"RCPT TO:<b@y.example>",
            b"RCPT TO:<c@y.example> ORCPT=rfc822;c@y.example",
            b"DATA",
            *stuffed,
            b".",
            b"",
        ]
    )
    batch = parse_bsmtp(stream)
    assert batch.sender == "a@x.example"
    assert batch.recipients == ("b@y.example", "c@y.example")
    assert batch.data == eol.join(message) + eol


def test_null_sender_and_quoted_local_part() -> None:
    """MAIL FROM:<> is the null reverse-path; quoted local parts may hold '>'."""
    batch = parse_bsmtp(b'MAIL FROM:<>\nRCPT TO:<"odd>name"@y.example>\nDATA\nx\n.\nQUIT\n')
    assert batch.sender == ""
    assert batch.recipients == ('"odd>name"@y.example',)
    assert batch.data == b"x\n"


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        pytest.param(b"", "before DATA", id="empty"),
        pytest.param(b"RCPT TO:<b@y>\nDATA\n.\n", "unexpected", id="rcpt-first"),
        pytest.param(b"MAIL FROM:<a@x>\nDATA\n.\n", "unexpected", id="no-rcpt"),
        pytest.param(b"MAIL FROM:<a@x>\nRCPT TO:<b@y>\nDATA\nbody\n", "no lone", id="no-dot"),
        pytest.param(b"MAIL FROM:a@x\nRCPT TO:<b@y>\nDATA\n.\n", "without", id="no-brackets"),
        pytest.param(b"MAIL FROM:<a@x\nRCPT TO:<b@y>\nDATA\n.\n", "closing", id="unclosed"),
        pytest.param(
            b"MAIL FROM:<a@x>\nRCPT TO:<b@y>\nDATA\n.\nMAIL FROM:<c@x>\nRCPT TO:<b@y>\nDATA\n.\n",
            "more than one",
            id="two-messages",
        ),
        pytest.param(b"\x00\x01garbage\n", "BSMTP", id="garbage"),
    ],
)
def test_malformed_batches(stream: bytes, message: str) -> None:
    """A malformed batch is an input error (the filter defers), never a partial message."""
    with pytest.raises(InputError, match=message):
        parse_bsmtp(stream)


@given(st.binary(max_size=500))
def test_bsmtp_parser_never_crashes(stream: bytes) -> None:
    """Arbitrary bytes either parse or raise InputError, nothing else."""
    with contextlib.suppress(InputError):
        parse_bsmtp(stream)


def test_read_all_cap() -> None:
    """Input above the cap is refused rather than read without bound."""
    assert read_all(io.BytesIO(b"x" * 10), limit=10) == b"x" * 10
    with pytest.raises(InputError):
        read_all(io.BytesIO(b"x" * 11), limit=10)


# --- issue 12 item 7, adversarial review: paths as Exim's pipe transport writes them ----------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(b"a>b@x.example", id="unquoted-angle"),  # '"a>b"@x.example' to Exim
        pytest.param(b"a> b@x.example", id="unquoted-angle-space"),
        pytest.param(b'a"b>c@x.example', id="unbalanced-quote"),  # '"a\\"b>c"@x.example'
        pytest.param(b"\xe9t\xe9@x.example", id="latin-1"),
        pytest.param(b"a@x.example\xff", id="8-bit-domain"),
    ],
)
def test_exim_paths_come_out_as_written(path: bytes) -> None:
    """Exim's pipe transport writes ``MAIL FROM:<%s>`` and ``RCPT TO:<%s>`` with the address as
    it holds it: local part unquoted, any octets, no parameters. The path is everything between
    the angle brackets, decoded as argv is (surrogateescape), so the re-injection gets the very
    octets back; it is never cut at an inner '>' nor refused (deferred until Exim bounces)."""
    batch = parse_bsmtp(b"MAIL FROM:<" + path + b">\nRCPT TO:<" + path + b">\nDATA\nx\n.\n")
    assert os.fsencode(batch.sender) == path
    assert [os.fsencode(r) for r in batch.recipients] == [path]
