"""The message as it came in: its original bytes and a view of its header fields.

Nothing here re-serialises a message. Header fields are located as byte spans of the original; a
new field is prepended as bytes, and removing a field cuts exactly its span. Every other byte (line
endings, 8-bit data, NULs, bare CRs) goes out as it came in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# RFC 5322 §3.6.8: a field name is printable US-ASCII except colon. We also tolerate the
# whitespace some senders put before the colon ("Subject : x"), as MTAs do.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
MAX_HEADER_FIELDS = 20_000


@dataclass(frozen=True)
class Header:
    """One header field: its name and where its bytes are in the original message."""

    name: str  # as written, decoded as Latin-1 so no byte is lost
    start: int
    end: int  # exclusive; includes the field's final line ending

    def raw(self, data: bytes) -> bytes:
        """The field's bytes, folding and line ending included."""
        return data[self.start : self.end]


class Message:
    """Original bytes plus parsed header field positions; never rewritten in place."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers, self.body_offset, self.problem = _scan(data)
        self.linesep = _linesep(data)

    @property
    def size(self) -> int:
        """The number of bytes as received."""
        return len(self.data)

    @property
    def body(self) -> bytes:
        """The bytes after the header section (and after its empty separator line)."""
        return self.data[self.body_offset :]

    def fields(self, name: str) -> Iterator[Header]:
        """The fields named ``name`` (case-insensitive), top to bottom."""
        wanted = name.lower()
        return (h for h in self.headers if h.name.lower() == wanted)

    def values(self, name: str) -> list[str]:
        """The unfolded values of the fields named ``name``, decoded leniently as UTF-8."""
        return [self.value(h) for h in self.fields(name)]

    def value(self, header: Header) -> str:
        """One field's value: everything after the colon, unfolded, ends stripped."""
        raw = header.raw(self.data)
        colon = raw.index(b":")
        text = re.sub(rb"\r?\n(?=[ \t])", b"", raw[colon + 1 :])
        return text.strip(b" \t\r\n").decode("utf-8", "replace")

    def with_header(self, field: bytes, remove: Iterable[Header] = ()) -> bytes:
        """Return the message with ``field`` prepended and the ``remove`` fields cut out.

        ``field`` is ``Name: value`` without a line ending; the message's own line ending is used.
        """
        spans = sorted((h.start, h.end) for h in remove)
        parts = [field + self.linesep]
        position = 0
        for start, end in spans:
            parts.append(self.data[position:start])
            position = end
        parts.append(self.data[position:])
        return b"".join(parts)


def _scan(data: bytes) -> tuple[list[Header], int, str | None]:
    """Find the header fields, the offset of the body, and what makes the structure ambiguous.

    The header section ends at the first empty line, or at the first line that is neither a field
    nor a continuation (such a message has no separator; its body starts there, as in Postfix).

    Two shapes are reported as problems, because what we check would not be what a reader sees:
    a first line that is a continuation (a header field we prepend would swallow it, and the
    fields after it would appear to readers), and more than MAX_HEADER_FIELDS fields (we stop
    reading there to bound our work, so a From further down would go unchecked).
    """
    if data[:1] in (b" ", b"\t"):
        return [], 0, "the message starts with a continuation line"
    headers: list[Header] = []
    name: str | None = None
    start = 0
    position = 0
    size = len(data)
    while position < size:
        newline = data.find(b"\n", position)
        line_end = size if newline < 0 else newline + 1
        line = data[position:line_end]
        if line in (b"\n", b"\r\n"):
            if name is not None:
                headers.append(Header(name, start, position))
            return headers, line_end, None
        if line[:1] in (b" ", b"\t") and name is not None:
            position = line_end
            continue
        if name is not None:
            headers.append(Header(name, start, position))
            name = None
        field = _FIELD.match(line)
        if field is None:
            return headers, position, None
        if len(headers) >= MAX_HEADER_FIELDS:
            return headers, position, f"more than {MAX_HEADER_FIELDS} header fields"
        name = field.group(1).decode("latin-1")
        start = position
        position = line_end
    if name is not None:
        headers.append(Header(name, start, size))
    return headers, size, None


def _linesep(data: bytes) -> bytes:
    newline = data.find(b"\n")
    if newline > 0 and data[newline - 1 : newline] == b"\r":
        return b"\r\n"
    return b"\n"
