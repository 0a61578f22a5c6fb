"""The SMTP envelope of one message: reverse-path, recipients and what the MTA knew of the client.

The envelope comes from the command line, the environment (Exim passes tainted values there) or a
batch SMTP stream; gathering those is the front ends' work (:mod:`scatterguard.frontends.request`).
This module only validates and holds the values. Nothing in it touches the network or reads the
environment.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from scatterguard.core import domains
from scatterguard.errors import UsageError

# Bytes that must never travel inside an envelope value: they could split a log line, a header
# or an argument.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")

# Queue ids become part of quarantine ids and log lines: keep them to what MTAs produce.
_QUEUE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
MAX_HELO = 255


@dataclass(frozen=True)
class Address:
    """A non-null reverse-path as the MTA handed it over, and the one reading of it we act on.

    ``text`` is the path exactly as given (without one enclosing ``<>``): it is what the
    re-injection gets back, byte for byte. ``domain`` is the DNS domain after the path's last
    ``@`` outside quotes and brackets, in ASCII (A-labels), lower case, without a final dot; it is
    the one domain SPF evaluates, DMARC aligns and the A-R header reports. It is None when there is
    no such domain (an address literal, a path without a usable domain). ``strict`` is True only
    when the whole path follows RFC 5321 §4.1.2 (RFC 6531 §3.3 for UTF-8) with the obsolete forms
    MTAs pass on: only such a path can be verified, since only there every reader agrees on
    where the local part ends.
    """

    text: str
    local_part: str
    domain: str | None
    strict: bool = True
    problem: str | None = None  # why the path is not strict, or has no domain


@dataclass(frozen=True)
class Envelope:
    """Everything the MTA tells us about a message besides its bytes."""

    sender: Address | None  # None is the null reverse-path <>
    recipients: tuple[str, ...]
    client_address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    helo: str | None = None
    queue_id: str | None = None
    sasl_user: str | None = None

    @property
    def sender_text(self) -> str:
        """The reverse-path as text, ``""`` for the null reverse-path."""
        return self.sender.text if self.sender else ""


def parse_sender(text: str) -> Address | None:
    """Parse the reverse-path; ``""`` and ``<>`` are the null reverse-path (RFC 5321 §4.5.5).

    Only control characters are refused: every other reverse-path the MTA accepted is filtered,
    and one we cannot read strictly is simply never verified (DESIGN.md §verification).
    """
    if _FORBIDDEN.search(text):
        # Not something an MTA hands over: a configuration fault, never a bounce.
        raise UsageError("sender contains control characters")
    if text in ("", "<>"):
        return None
    return parse_path(text)


# RFC 5321 §4.1.2 atext, and RFC 6531 §3.3's UTF8-non-ascii (any character above ASCII but a
# surrogate, which is how Python carries argv bytes that were not UTF-8).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_WORD_CHARS = re.compile(rf"[{_ATEXT}\u0080-\ud7ff\ue000-\U0010ffff]+")
# RFC 5321 §4.1.2 qtextSMTP and quoted-pairSMTP, with UTF-8 (RFC 6531 §3.3).
_QUOTED_STRING = re.compile(
    r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\ud7ff\ue000-\U0010ffff]|\\[\x20-\x7e])*"'
)
# What a label may hold before IDNA: the ASCII of domains.LABEL and any non-ASCII character.
_RAW_LABEL = re.compile(r"[A-Za-z0-9_\u0080-\ud7ff\ue000-\U0010ffff-]+\Z")
# RFC 5321 §4.1.3 General-address-literal: Standardized-tag ":" 1*dcontent.
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")


def parse_path(text: str) -> Address:
    """Read a non-null reverse-path the way its domain is found by every MTA; never raises.

    The domain is what follows the last ``@`` that is outside a quoted string and outside an
    address literal: that is where Postfix (``pipe`` flag ``q`` quotes the local part) and Exim
    (whose BSMTP ``MAIL FROM`` carries the local part unquoted, so ``"a@b"@x`` arrives as
    ``a@b@x``) both put it. The path is strict when, besides, it is an RFC 5321 §4.1.2 Path:
    an optional source route (ignored, RFC 5321 Appendix C), a local part of atoms and quoted
    strings joined by dots (empty atoms allowed: Exim passes ``"a..b"`` as ``a..b``), ``@``, and
    a domain or an address literal (RFC 5321 §4.1.3).
    """
    path = text[1:-1] if text.startswith("<") and text.endswith(">") else text
    at = _last_at(path)
    if at is None:
        return Address(path, path, None, False, "no @ outside quotes")
    local, rest = path[:at], path[at + 1 :]
    domain, domain_problem = _domain(rest)
    mailbox = _strip_route(local)
    if mailbox is None:
        return Address(path, local, domain, False, "malformed source route")
    problem = _local_problem(mailbox) or domain_problem
    # An address literal is a strict path that names no domain: it can never be verified.
    strict = problem is None or problem == _LITERAL
    return Address(path, mailbox, domain, strict, problem)


_LITERAL = "an address literal names no domain"


def _last_at(path: str) -> int | None:
    """The index of the last ``@`` outside quoted strings and ``[...]``, or None."""
    found = None
    quoted = escaped = False
    depth = 0
    for index, char in enumerate(path):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == "@" and depth == 0:
            found = index
    return found


def _strip_route(local: str) -> str | None:
    """The local part without an RFC 5321 §4.1.2 A-d-l (``@a,@b:``); None if the route is bad."""
    if not local.startswith("@"):
        return local
    # The route ends at the first ":" outside an address literal (``@[IPv6:...]`` holds colons).
    depth = 0
    for index, char in enumerate(local):
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(0, depth - 1)
        elif char == ":" and depth == 0:
            route, mailbox = local[:index], local[index + 1 :]
            break
    else:
        return None
    for hop in route.split(","):
        if not hop.startswith("@") or _domain(hop[1:])[1] not in (None, _LITERAL):
            return None
    return mailbox


def _local_problem(local: str) -> str | None:
    """Why ``local`` is not a local part of dot-separated atoms and quoted strings, or None."""
    if not local:
        return "empty local part"
    position = 0
    size = len(local)
    expect_word = True  # at the start or after a dot: an atom, a quoted string or another dot
    while position < size:
        if local[position] == ".":
            position += 1
            expect_word = True
            continue
        match = _QUOTED_STRING.match(local, position) or _WORD_CHARS.match(local, position)
        if match is None:
            return f"character {local[position]!r} outside quotes in the local part"
        if not expect_word:
            return "two words of the local part without a dot between them"
        position = match.end()
        expect_word = False
    return None


def _domain(text: str) -> tuple[str | None, str | None]:
    """``(domain, problem)``: the DNS domain as lower-case A-labels, or None and why not."""
    if text.startswith("[") and text.endswith("]"):
        return None, _LITERAL if _literal(text[1:-1]) else "malformed address literal"
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > domains.MAX_DOMAIN * 4:
        return None, "no domain"
    labels = name.split(".")
    if not all(_RAW_LABEL.match(label) for label in labels):
        return None, "malformed domain"
    if not name.isascii():
        try:
            name = domains.to_alabels(name)
        except (UnicodeError, ValueError):
            return None, "domain is not a valid IDN"
    name = name.lower()
    if not domains.is_name(name):
        return None, "malformed domain"
    return name, None


def _literal(inner: str) -> bool:
    """RFC 5321 §4.1.3: an IPv4 address, ``IPv6:`` and an IPv6 address, or a general literal."""
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return bool(_GENERAL_LITERAL.match(inner))
    return True


def parse_recipient(text: str) -> str:
    """Check one recipient: the MTA accepted it, so only reject what could inject or split.

    A leading "-" is allowed: recipients always follow "--" in the re-injection command (the
    configuration refuses a command where they do not), so they cannot become options.
    """
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text or _FORBIDDEN.search(text):
        raise UsageError(f"recipient {text!r} is not usable")
    return text


def parse_envelope(
    sender: str,
    recipients: Sequence[str],
    *,
    client_address: str | None = None,
    helo: str | None = None,
    queue_id: str | None = None,
    sasl_user: str | None = None,
) -> Envelope:
    """Validate the envelope's values as the MTA handed them over; raises UsageError.

    An empty value is the same as none (Postfix passes ``--helo=`` when the client gave none).
    Every refusal names the value: a bad envelope is a configuration fault, never a bounce.
    """
    return Envelope(
        sender=parse_sender(sender),
        recipients=tuple(parse_recipient(r) for r in recipients),
        client_address=_parse_ip(client_address or None),
        helo=_parse_helo(helo or None),
        queue_id=_parse_queue_id(queue_id or None),
        sasl_user=_clean(sasl_user or None, "SASL user"),
    )


def _parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if text is None or text.lower() == "unknown":
        return None
    candidate = text.strip()
    if candidate.lower().startswith("ipv6:"):
        candidate = candidate[5:]
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        raise UsageError(f"client address {text!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_helo(text: str | None) -> str | None:
    value = _clean(text, "HELO name")
    if value is None:
        return None
    # An over-long HELO is the client's fault, not ours: keep the check going without it.
    return value if len(value) <= MAX_HELO else None


def _parse_queue_id(text: str | None) -> str | None:
    if text is None:
        return None
    if not _QUEUE_ID.match(text):
        raise UsageError(f"queue id {text!r} is not a plain MTA queue id")
    return text


def _clean(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    if _FORBIDDEN.search(text):
        raise UsageError(f"{what} contains control characters")
    return text or None
