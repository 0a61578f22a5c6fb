"""Intake: the message and its envelope as the MTA hands them over.

Postfix's pipe passes the envelope as arguments and the message on stdin. Exim's ``use_bsmtp``
passes both on stdin as batch SMTP: ``MAIL FROM``, one or more ``RCPT TO``, ``DATA``, the
dot-stuffed message and a lone ``.`` (LF or CRLF). Either way the message bytes are kept exactly
as they were, apart from BSMTP's dot-unstuffing.

Both are read as a stream: a message up to :data:`scatterguard.actions.spool.THRESHOLD` bytes is
kept in memory as ``bytes``; a larger one goes on into a spool file
(:mod:`scatterguard.actions.spool`) and comes back as a
:class:`~scatterguard.actions.spool.SpoolFile`. BSMTP is unstuffed on the way, a block at a time, so
the stuffed stream is never held as a whole either.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from scatterguard.actions import spool as spool_mod
from scatterguard.actions.spool import Spool
from scatterguard.core.message import Spooled
from scatterguard.errors import InputError

# A message larger than this is not read into memory; it is refused with a temporary error so the
# MTA keeps it (its own message_size_limit should be lower).
DEFAULT_MAX_INPUT = 512 * 1024 * 1024
# RFC 5321 §4.5.3.1.4 allows 512 octets for a command line; Exim writes MAIL FROM and RCPT TO
# with their parameters, still far below this. A longer line is not BSMTP.
MAX_COMMAND = 64 * 1024
# How much of the DATA section is read and unstuffed at a time.
BLOCK = 64 * 1024
_VERB = re.compile(rb"([A-Za-z]+)(?:[ \t]+([A-Za-z]+)[ \t]*:[ \t]*)?(.*)\Z", re.DOTALL)
_DOT = ord(".")


@dataclass(frozen=True)
class Batch:
    """One message from a batch SMTP stream: the envelope as text, and the unstuffed bytes."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes | Spooled


def read_all(stream: BinaryIO, limit: int = DEFAULT_MAX_INPUT) -> bytes:
    """Read the whole stream, refusing (as an input error) more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"message larger than {limit} bytes")
    return data


def read_message(
    stream: BinaryIO,
    spool: Callable[[], Path] | None,
    limit: int = DEFAULT_MAX_INPUT,
    threshold: int | None = None,
) -> bytes | Spooled:
    """Read the whole stream: bytes up to ``threshold``, else a spool file in ``spool()``.

    ``threshold`` defaults to :data:`scatterguard.actions.spool.THRESHOLD`. More than ``limit``
    bytes is an input error; without ``spool`` this is :func:`read_all`.
    """
    if spool is None:
        return read_all(stream, limit)
    threshold = spool_mod.THRESHOLD if threshold is None else threshold
    # One read, as read_all does: a message that fits costs nothing more than before.
    head = stream.read(min(limit, threshold) + 1)
    if len(head) > limit:
        raise InputError(f"message larger than {limit} bytes")
    if len(head) <= threshold:
        return head
    sink = Spool(spool, threshold)
    try:
        sink.write(head)
        del head
        while chunk := stream.read(min(BLOCK * 16, limit - sink.size + 1)):
            sink.write(chunk)
            if sink.size > limit:
                raise InputError(f"message larger than {limit} bytes")
        return sink.finish()
    except BaseException:
        sink.discard()
        raise


def parse_bsmtp(stream: bytes) -> Batch:
    """Parse one message in batch SMTP (RFC 2442 style, as Exim's ``use_bsmtp`` writes it)."""
    return read_bsmtp(io.BytesIO(stream), None, limit=None)


def read_bsmtp(
    stream: BinaryIO,
    spool: Callable[[], Path] | None,
    limit: int | None = DEFAULT_MAX_INPUT,
    threshold: int | None = None,
) -> Batch:
    """Read one message in batch SMTP from a stream, unstuffing DATA into memory or the spool.

    The stream may hold at most ``limit`` bytes (None: no limit); the message is spooled as in
    :func:`read_message` (with ``spool`` None it stays in memory).
    """
    reader = _Reader(stream, limit)
    sender, recipients = _envelope(reader)
    sink = Spool(spool, spool_mod.THRESHOLD if threshold is None else threshold)
    try:
        rest = _unstuff(reader, sink)
        _end(reader, rest)
        data = sink.finish()
    except BaseException:
        sink.discard()
        raise
    return Batch(sender, tuple(recipients), data)


class _Reader:
    """The stream, counted against the size limit."""

    def __init__(self, stream: BinaryIO, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.count = 0

    def line(self) -> bytes:
        line = self.stream.readline(MAX_COMMAND + 1)
        self._count(line)
        if len(line) > MAX_COMMAND:
            raise InputError(f"BSMTP command line longer than {MAX_COMMAND} bytes")
        return line

    def block(self) -> bytes:
        data = self.stream.read(BLOCK)
        self._count(data)
        return data

    def _count(self, data: bytes) -> None:
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise InputError(f"message larger than {self.limit} bytes")


def _envelope(reader: _Reader) -> tuple[str, list[str]]:
    """The commands up to and including DATA: the reverse-path and the recipients."""
    sender: str | None = None
    recipients: list[str] = []
    while True:
        line = reader.line()
        if not line:
            raise InputError("BSMTP batch ended before DATA")
        text = line.rstrip(b"\r\n")
        if not text.strip():
            continue
        match = _VERB.match(text)
        if match is None:
            raise InputError(f"not a BSMTP command: {_show(text)}")
        verb = match.group(1).upper()
        keyword = (match.group(2) or b"").upper()
        if verb in (b"HELO", b"EHLO", b"RSET", b"NOOP") and sender is None:
            continue
        if verb == b"MAIL" and keyword == b"FROM" and sender is None:
            sender = _path(match.group(3), "MAIL FROM")
        elif verb == b"RCPT" and keyword == b"TO" and sender is not None:
            recipients.append(_path(match.group(3), "RCPT TO"))
        elif verb == b"DATA" and not keyword and sender is not None and recipients:
            return sender, recipients
        else:
            raise InputError(f"unexpected BSMTP command {_show(text)}")


def _unstuff(reader: _Reader, sink: Spool) -> bytes:
    """Copy DATA up to the lone dot into ``sink``, removing one leading dot (RFC 5321 §4.5.2).

    Lines end at LF (a CRLF line ends at its LF too). The stream is read a block at a time and
    copied in runs: a run ends only where a line starts with a dot. Returns what was read after
    the lone dot's line.
    """
    pending = b""
    position = 0
    line_start = True  # position is at the start of a line
    eof = False
    while True:
        available = len(pending) - position
        # At a line start, three bytes (or the end) tell a lone dot from a stuffed one.
        if not eof and (available == 0 or (line_start and available < 3)):
            block = reader.block()
            if block:
                pending = pending[position:] + block
                position = 0
            else:
                eof = True
            continue
        if available == 0:
            raise InputError("BSMTP batch ended inside DATA (no lone '.')")
        if line_start and pending[position] == _DOT:
            for terminator in (b".\n", b".\r\n"):
                if pending.startswith(terminator, position):
                    return pending[position + len(terminator) :]
            if eof and available == 1:
                return b""
            position += 1
        hit = pending.find(b"\n.", position)
        end = hit + 1 if hit >= 0 else len(pending)
        line_start = hit >= 0 or pending.endswith(b"\n")
        if end > position:
            sink.write(memoryview(pending)[position:end])
        position = end


def _end(reader: _Reader, rest: bytes) -> None:
    """After the lone dot, only white space and QUIT: a second message would be lost."""
    tail = rest.lstrip()
    while True:
        core = tail.rstrip()
        if len(core) > len(b"QUIT") or (core and not b"QUIT".startswith(core.upper())):
            raise InputError("BSMTP batch holds more than one message")
        # Keep one byte of the white space after the core: "QU IT" must not become "QUIT".
        tail = tail[: len(core) + 1]
        block = reader.block()
        if not block:
            break
        tail = (tail + block) if core else block.lstrip()
    if core and core.upper() != b"QUIT":
        raise InputError("BSMTP batch holds more than one message")


def _path(text: bytes, what: str) -> str:
    """The address inside ``<...>``, decoded as argv is; ESMTP parameters after it are ignored.

    Exim's pipe transport writes ``MAIL FROM:<%s>`` and ``RCPT TO:<%s>`` with the address as it
    holds it: the local part unquoted (``"a>b"@x`` becomes ``a>b@x``), any octets, and nothing
    after the ``>``. So a line that ends with ``>`` carries its path whole, up to that last
    ``>``, whatever '>' or '"' the local part holds; only a line with parameters after the path
    (batches not written by Exim) is scanned for the closing ``>``, quote-aware. Octets that are
    not UTF-8 are kept as surrogate escapes, as Python keeps them in argv, so the re-injection
    gets the same bytes back: a reverse-path the MTA accepted is filtered, never refused and
    deferred until the MTA bounces it (issue 12 item 7).
    """
    text = text.strip()
    if not text.startswith(b"<"):
        raise InputError(f"{what} without <...>: {_show(text)}")
    if text.endswith(b">"):
        return _decode(text[1:-1])
    quoted = False
    escaped = False
    for index in range(1, len(text)):
        char = text[index : index + 1]
        if escaped:
            escaped = False
        elif char == b"\\":
            escaped = True
        elif char == b'"':
            quoted = not quoted
        elif char == b">" and not quoted and text[index + 1 : index + 2].isspace():
            return _decode(text[1:index])
    raise InputError(f"{what} has no closing '>': {_show(text)}")


def _decode(path: bytes) -> str:
    """A path's octets as a str, the way Python decodes argv (UTF-8, surrogate escapes)."""
    return path.decode("utf-8", "surrogateescape")


def _show(text: bytes) -> str:
    return repr(text[:80])[2:-1]
