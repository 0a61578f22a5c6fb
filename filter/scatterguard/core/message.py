"""The message as it came in: its original bytes and a view of its header fields.

Nothing here re-serialises a message. Header fields are located as byte spans of the original; a
new field is prepended as bytes, and removing a field cuts exactly its span. Every other byte (line
endings, 8-bit data, NULs, bare CRs) goes out as it came in.

The original is ``bytes``, or a large message's spool file (a :class:`Spooled`:
:class:`~scatterguard.actions.spool.SpoolFile`), read through its read-only map with the operations
bytes and ``mmap`` share (``find``, slicing, regular expressions), and only as far as the header
section: the body is touched only by whoever asks for it. What is sent on is a :class:`Payload`: the
new field, then spans of the original, so a spooled message is copied from its file and never joined
in memory.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

# RFC 5322 §3.6.8: a field name is printable US-ASCII except colon. We also tolerate the
# whitespace some senders put before the colon ("Subject : x"), as MTAs do.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
MAX_HEADER_FIELDS = 20_000

# What a message's bytes are read through: bytes, or the read-only map of its spool file.
Buffer = bytes | mmap.mmap


class Spooled(Protocol):
    """A large message kept in a file, read through its read-only map.

    The file itself is the actions layer's (:class:`~scatterguard.actions.spool.SpoolFile`); the
    core only reads the map and passes the rest on.
    """

    @property
    def size(self) -> int:
        """The number of bytes in the file."""

    @property
    def view(self) -> mmap.mmap:
        """The read-only map of the whole file."""

    def fileno(self) -> int:
        """The file's descriptor, for copying from it."""

    def sha256(self) -> str:
        """The SHA-256 of the bytes, as hex digits."""

    def close(self) -> None:
        """Unmap and close the file."""


@dataclass(frozen=True)
class Header:
    """One header field: its name and where its bytes are in the original message."""

    name: str  # as written, decoded as Latin-1 so no byte is lost
    start: int
    end: int  # exclusive; includes the field's final line ending

    def raw(self, data: Buffer) -> bytes:
        """The field's bytes, folding and line ending included."""
        return data[self.start : self.end]


@dataclass(frozen=True)
class Payload:
    """The bytes to send on: ``prefix``, then the spans ``keep`` of the original ``source``.

    Re-injection writes it without joining it (a spooled source is copied from its file); the
    fields cut out of the original are simply the gaps between the spans.
    """

    prefix: bytes
    source: bytes | Spooled
    keep: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, data: bytes | Spooled, prefix: bytes = b"") -> Payload:
        """The whole of ``data``, after ``prefix``."""
        size = len(data) if isinstance(data, bytes) else data.size
        return cls(prefix, data, ((0, size),) if size else ())

    @property
    def size(self) -> int:
        """The number of bytes sent."""
        return len(self.prefix) + sum(end - start for start, end in self.keep)

    def __bytes__(self) -> bytes:
        """The payload joined in memory (for tests and fakes; re-injection streams it)."""
        source = self.source if isinstance(self.source, bytes) else self.source.view
        return b"".join([self.prefix, *(source[start:end] for start, end in self.keep)])


class Message:
    """Original bytes plus parsed header field positions; never rewritten in place."""

    def __init__(self, data: bytes | Spooled) -> None:
        # source: what the message is copied from (the spool file itself when spooled);
        # data: what it is read through (the file's read-only map when spooled).
        self.source = data
        self.data: Buffer = data if isinstance(data, bytes) else data.view
        self.headers, self.body_offset, self.problem = _scan(self.data)
        self.linesep = _linesep(self.data)

    @property
    def size(self) -> int:
        """The number of bytes as received."""
        return len(self.data)

    @property
    def body(self) -> bytes:
        """The bytes after the header section (and after its empty separator line), copied."""
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

    def prepend(self, field: bytes, remove: Iterable[Header] = ()) -> Payload:
        """The message with ``field`` prepended and the ``remove`` fields cut out, unjoined.

        ``field`` is ``Name: value`` without a line ending; the message's own line ending is used.

        Our field ends where we say, whatever the message's first bytes: a message without a
        header section (its first line is a continuation, has no field name, starts with a
        NUL or a bare CR; see :func:`_scan`, which then puts the body at offset 0) would
        otherwise continue our field (RFC 5322 §2.2.3: a line starting with white space is
        part of the field before it) or be read as header fields we never checked. Such a
        message gets an empty line after our field, so every reader sees what we saw: our
        field, then the message's bytes, unchanged, as the body.
        """
        keep = []
        position = 0
        for start, end in sorted((h.start, h.end) for h in remove):
            if start > position:
                keep.append((position, start))
            position = max(position, end)
        if position < self.size:
            keep.append((position, self.size))
        prefix = field + self.linesep
        if self.body_offset == 0 and self.size:
            prefix += self.linesep  # the header section is ours alone (see above)
        return Payload(prefix, self.source, tuple(keep))

    def with_header(self, field: bytes, remove: Iterable[Header] = ()) -> bytes:
        """:meth:`prepend`, joined into bytes."""
        return bytes(self.prepend(field, remove))


def _scan(data: Buffer) -> tuple[list[Header], int, str | None]:
    """Find the header fields, the offset of the body, and what makes the structure ambiguous.

    The header section ends at the first empty line, or at the first line that is neither a field
    nor a continuation (such a message has no separator; its body starts there, as in Postfix).

    Two shapes are reported as problems, because what we check would not be what a reader sees:
    a first line that is a continuation (a header field we prepend would swallow it, and the
    fields after it would appear to readers), and more than MAX_HEADER_FIELDS fields (we stop
    reading there to bound our work, so a From further down would go unchecked).

    Lines are matched where they lie, not copied out: the line that ends the header section
    may be the whole body of a message without line breaks.
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
        if line_end - position <= 2 and data[position:line_end] in (b"\n", b"\r\n"):
            if name is not None:
                headers.append(Header(name, start, position))
            return headers, line_end, None
        if data[position : position + 1] in (b" ", b"\t") and name is not None:
            position = line_end
            continue
        if name is not None:
            headers.append(Header(name, start, position))
            name = None
        field = _FIELD.match(data, position, line_end)
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


def _linesep(data: Buffer) -> bytes:
    """The line ending of the first line (LF when there is none)."""
    newline = data.find(b"\n")
    if newline > 0 and data[newline - 1 : newline] == b"\r":
        return b"\r\n"
    return b"\n"
