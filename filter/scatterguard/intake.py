"""Intake: the message and its envelope as the MTA hands them over.

Postfix's pipe passes the envelope as arguments and the message on stdin. Exim's ``use_bsmtp``
passes both on stdin as batch SMTP: ``MAIL FROM``, one or more ``RCPT TO``, ``DATA``, the
dot-stuffed message and a lone ``.`` (LF or CRLF). Either way the message bytes are kept exactly
as they were, apart from BSMTP's dot-unstuffing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

from scatterguard.errors import InputError

# A message larger than this is not read into memory; it is refused with a temporary error so the
# MTA keeps it (its own message_size_limit should be lower).
DEFAULT_MAX_INPUT = 512 * 1024 * 1024
_VERB = re.compile(rb"([A-Za-z]+)(?:[ \t]+([A-Za-z]+)[ \t]*:[ \t]*)?(.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class Batch:
    """One message from a batch SMTP stream: the envelope as text, and the unstuffed bytes."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


def read_all(stream: BinaryIO, limit: int = DEFAULT_MAX_INPUT) -> bytes:
    """Read the whole stream, refusing (as an input error) more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"message larger than {limit} bytes")
    return data


def parse_bsmtp(stream: bytes) -> Batch:
    """Parse one message in batch SMTP (RFC 2442 style, as Exim's ``use_bsmtp`` writes it)."""
    sender: str | None = None
    recipients: list[str] = []
    position = 0
    size = len(stream)
    while True:
        if position >= size:
            raise InputError("BSMTP batch ended before DATA")
        line, position = _line(stream, position)
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
            break
        else:
            raise InputError(f"unexpected BSMTP command {_show(text)}")
    data, position = _unstuff(stream, position)
    rest = stream[position:].strip()
    if rest and rest.upper() not in (b"QUIT",):
        # More than one message in the batch: we could act on only one and lose the rest.
        raise InputError("BSMTP batch holds more than one message")
    return Batch(sender, tuple(recipients), data)


def _line(stream: bytes, position: int) -> tuple[bytes, int]:
    end = stream.find(b"\n", position)
    end = len(stream) if end < 0 else end + 1
    return stream[position:end], end


def _unstuff(stream: bytes, position: int) -> tuple[bytes, int]:
    """Collect DATA lines up to the lone dot, removing one leading dot (RFC 5321 §4.5.2)."""
    parts: list[bytes] = []
    size = len(stream)
    while position < size:
        line, position = _line(stream, position)
        if line in (b".\n", b".\r\n", b"."):
            return b"".join(parts), position
        parts.append(line[1:] if line.startswith(b".") else line)
    raise InputError("BSMTP batch ended inside DATA (no lone '.')")


def _path(text: bytes, what: str) -> str:
    """The address inside ``<...>``, allowing quoted local parts; ESMTP parameters are ignored."""
    text = text.strip()
    if not text.startswith(b"<"):
        raise InputError(f"{what} without <...>: {_show(text)}")
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
        elif char == b">" and not quoted:
            try:
                return text[1:index].decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{what} is not UTF-8: {_show(text)}") from None
    raise InputError(f"{what} has no closing '>': {_show(text)}")


def _show(text: bytes) -> str:
    return repr(text[:80])[2:-1]
