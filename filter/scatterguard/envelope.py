"""The SMTP envelope of one message: reverse-path, recipients and what the MTA knew of the client.

The envelope comes from the command line, the environment (Exim passes tainted values there) or a
batch SMTP stream; this module only validates and holds it. Nothing in it touches the network.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scatterguard.errors import UsageError

# RFC 5321 §4.1.2 mailboxes; used where email-validator refuses an address that SMTP allows
# (special-use names such as "localhost", quoted local parts) and the MTA has already accepted.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# RFC 5321 §4.1.2 Quoted-string: printable ASCII, backslash pairs.
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_PLAIN_ADDRESS = re.compile(
    rf"({_DOT_ATOM}|{_QUOTED})@((?:{_LABEL}\.)*{_LABEL}\.?|\[[0-9A-Fa-f:.v]+\])\Z"
)
# Bytes that must never travel inside an envelope value: they could split a log line, a header
# or an argument.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")

ENV_PREFIX = "SCATTERGUARD_"
ENV_FIELDS = ("client_address", "helo", "queue_id", "sasl_user")
# Queue ids become part of quarantine ids and log lines: keep them to what MTAs produce.
_QUEUE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
MAX_HELO = 255


@dataclass(frozen=True)
class Address:
    """A validated mailbox: the text as given, and its domain in ASCII (A-labels), lower case."""

    text: str
    local_part: str
    domain: str


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


def parse_address(text: str, what: str = "address") -> Address:
    """Validate one mailbox (syntax only, never DNS) and return it with its ASCII domain."""
    if _FORBIDDEN.search(text):
        raise UsageError(f"{what} contains control characters")
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    if not text or "@" not in text:
        raise UsageError(f"{what} {text!r} is not an address")
    # Imported here: email-validator costs import time and only addresses that exist need it.
    import email_validator

    try:
        valid = email_validator.validate_email(
            text, check_deliverability=False, globally_deliverable=False
        )
    except email_validator.EmailNotValidError as exc:
        plain = _PLAIN_ADDRESS.match(text)
        if plain is None:
            raise UsageError(f"{what} {text!r} is not valid: {exc}") from None
        return Address(text, plain.group(1), plain.group(2).rstrip(".").lower())
    return Address(text, valid.local_part, valid.ascii_domain.rstrip(".").lower())


def parse_sender(text: str) -> Address | None:
    """Parse the reverse-path; ``""`` and ``<>`` are the null reverse-path (RFC 5321 §4.5.5)."""
    if text in ("", "<>"):
        return None
    return parse_address(text, "sender")


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


def from_values(
    sender: str | None,
    recipients: Sequence[str],
    options: Mapping[str, str | None],
    environ: Mapping[str, str],
    *,
    require_recipients: bool = True,
) -> Envelope:
    """Build an envelope from option values, falling back to ``SCATTERGUARD_*`` variables.

    An option given on the command line wins over the environment, even when it is empty (Postfix
    passes ``--helo=`` when the client gave none).
    """
    merged: dict[str, str | None] = {}
    for name in ENV_FIELDS:
        value = options.get(name)
        if value is None:
            value = environ.get(ENV_PREFIX + name.upper())
        merged[name] = value or None
    if sender is None:
        raise UsageError("no sender given (use -f '' for the null reverse-path)")
    if require_recipients and not recipients:
        raise UsageError("no recipients given")
    return Envelope(
        sender=parse_sender(sender),
        recipients=tuple(parse_recipient(r) for r in recipients),
        client_address=_parse_ip(merged["client_address"]),
        helo=_parse_helo(merged["helo"]),
        queue_id=_parse_queue_id(merged["queue_id"]),
        sasl_user=_clean(merged["sasl_user"], "SASL user"),
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
