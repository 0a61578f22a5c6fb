"""The message view: header spans over the original bytes, and byte-exact prepending."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scatterguard.core.message import Message


@pytest.mark.parametrize(
    ("data", "names", "body"),
    [
        pytest.param(b"A: 1\nB: 2\n\nbody\n", ["A", "B"], b"body\n", id="lf"),
        pytest.param(b"A: 1\r\nB: 2\r\n\r\nbody\r\n", ["A", "B"], b"body\r\n", id="crlf"),
        pytest.param(b"A: 1\n continued\nB: 2\n\nx", ["A", "B"], b"x", id="folded"),
        pytest.param(b"A: 1\nB: 2\n", ["A", "B"], b"", id="headers-only"),
        pytest.param(b"A: 1\nB: 2", ["A", "B"], b"", id="no-final-newline"),
        pytest.param(
            b"A: 1\nnot a header\nmore\n", ["A"], b"not a header\nmore\n", id="no-separator"
        ),
        pytest.param(b"\nbody", [], b"body", id="empty-header-section"),
        pytest.param(b"Subject : spaced\n\nx", ["Subject"], b"x", id="space-before-colon"),
        pytest.param(b"A: \xff\x00\rx\n\nb\x00", ["A"], b"b\x00", id="8bit-nul-bare-cr"),
        pytest.param(b"", [], b"", id="empty"),
    ],
)
def test_scan(data: bytes, names: list[str], body: bytes) -> None:
    """Header names and the body offset are found without changing a byte."""
    message = Message(data)
    assert [h.name for h in message.headers] == names
    assert message.body == body
    for header in message.headers:
        assert header.raw(data).startswith(header.name.encode("latin-1"))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"A: 1\n\nbody", None, id="plain"),
        pytest.param(b" folded\nFrom: x@y.example\n\nb", "continuation", id="continuation-first"),
        pytest.param(b"\tx\n\nb", "continuation", id="tab-first"),
        pytest.param(b"X:\n" * 20_001 + b"From: x@y.example\n\nb", "more than", id="too-many"),
        pytest.param(b"X:\n" * 20_000 + b"\nb", None, id="exactly-the-cap"),
    ],
)
def test_ambiguous_structure(data: bytes, problem: str | None) -> None:
    """A leading continuation line or too many fields is reported as a structural problem."""
    found = Message(data).problem
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_values_unfold() -> None:
    """Values are unfolded and stripped; lookups ignore case."""
    message = Message(b"Subject: hello\r\n world\r\nsubject: two\r\n\r\n")
    assert message.values("SUBJECT") == ["hello world", "two"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"A: 1\nX: drop\nB: 2\n\nbody", b"New: v\nA: 1\nB: 2\n\nbody", id="lf"),
        pytest.param(
            b"A: 1\r\nX: drop\r\n fold\r\n\r\nb", b"New: v\r\nA: 1\r\n\r\nb", id="crlf-folded"
        ),
    ],
)
def test_with_header(data: bytes, expected: bytes) -> None:
    """Prepending uses the message's line ending and removal cuts exactly the field's span."""
    message = Message(data)
    assert message.with_header(b"New: v", list(message.fields("X"))) == expected


lines = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))


@given(
    st.lists(st.tuples(st.from_regex(rb"\A[A-Za-z-]{1,10}\Z"), lines), max_size=8),
    st.binary(max_size=200),
    st.sampled_from([b"\n", b"\r\n"]),
)
def test_prepend_keeps_every_other_byte(
    fields: list[tuple[bytes, bytes]], body: bytes, eol: bytes
) -> None:
    """For arbitrary header and body bytes, output = our field + the original bytes, exactly."""
    data = b"".join(name + b": " + value + eol for name, value in fields) + eol + body
    message = Message(data)
    assert message.with_header(b"X-Ours: 1") == b"X-Ours: 1" + message.linesep + data


@given(st.binary(max_size=2000))
def test_parsing_never_raises(data: bytes) -> None:
    """Header parsing never raises on arbitrary bytes, and the spans lie inside the message."""
    message = Message(data)
    for header in message.headers:
        assert 0 <= header.start < header.end <= len(data)
        message.value(header)
    assert 0 <= message.body_offset <= len(data)


# ---- a prepended field ends where we say (issue 12, item 10) ---------------------------------

OURS = b"X-Ours: 1;\n\tsecond=clause"


def _first_field_end(payload: bytes) -> tuple[str, int]:
    """The first field of ``payload`` as our parser sees it: its name and where it ends."""
    first = Message(payload).headers[0]
    return first.name, first.end


def _python_first_value(payload: bytes) -> str:
    """The first field's unfolded value as Python's own mail parser reads it."""
    import email.parser
    import email.policy

    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(payload)
    name, value = parsed.items()[0]
    assert name == "X-Ours"
    return " ".join(value.split())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b" continued: x\nFrom: a@b.example\n\nbody", id="space-continuation"),
        pytest.param(b"\tcontinued\r\nFrom: a@b.example\r\n\r\nbody", id="tab-continuation-crlf"),
        pytest.param(b"no colon here\nFrom: a@b.example\n\nbody", id="no-colon"),
        pytest.param(b"\r continued\nFrom: a@b.example\n\nbody", id="bare-cr-then-space"),
        pytest.param(b"\r\n continued\r\n\r\nbody", id="empty-header-section-crlf"),
        pytest.param(b"\n continued\n", id="empty-header-section-lf"),
        pytest.param(b"\x00 nul: x\n\nbody", id="nul"),
        pytest.param(b": no name\n\nbody", id="colon-first"),
        pytest.param(b" ", id="one-space"),
    ],
)
def test_prepended_field_ends_where_we_say(data: bytes) -> None:
    """No message bytes extend the field we prepend, whatever its first line (item 10).

    Our parser and Python's both see our field, and only it, up to its own line ending; the
    original bytes follow unchanged (after a separator when they have no header section).
    """
    message = Message(data)
    field = OURS.replace(b"\n", message.linesep)  # as authresults folds it
    payload = message.with_header(field)
    ours = field + message.linesep
    assert payload.startswith(ours)
    assert payload.endswith(data)
    assert _first_field_end(payload) == ("X-Ours", len(ours))
    assert _python_first_value(payload) == "1; second=clause"


@given(
    st.binary(max_size=300),
    st.sampled_from([b"", b"A: 1\n", b"A: 1\r\n", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00"]),
)
def test_no_message_extends_our_field(data: bytes, start: bytes) -> None:
    """For arbitrary bytes, our field ends at its own line ending, in our parser and Python's."""
    data = start + data
    message = Message(data)
    field = OURS.replace(b"\n", message.linesep)  # as authresults folds it
    payload = message.with_header(field)
    ours = field + message.linesep
    assert payload.startswith(ours)
    assert payload.endswith(data)
    assert len(payload) - len(ours) - len(data) in (0, len(message.linesep))
    assert _first_field_end(payload) == ("X-Ours", len(ours))
    assert _python_first_value(payload) == "1; second=clause"
