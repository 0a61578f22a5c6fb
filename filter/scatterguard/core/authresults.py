"""The Authentication-Results header field (RFC 8601) we prepend, and the ones we remove.

Rendering goes through authres, and nothing taken from the message or from DNS can add or fake a
result: every property value is checked against the syntax it must have (a domain, a selector, an
algorithm name) and dropped when it does not match; reasons and explanations are never rendered.
Existing fields that carry our authserv-id are forgeries or stale and are removed (RFC 8601 §5).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scatterguard.core import domains
from scatterguard.core.message import Header, Message
from scatterguard.core.results import AuthReport, Result

FIELD_NAME = "Authentication-Results"
# The names the checks evaluated are the names reported: the one label syntax of core.domains.
_DOMAIN = re.compile(domains.NAME)
_SELECTOR = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,62})\Z")
_ALGORITHM = re.compile(r"[a-z0-9]{1,16}-[a-z0-9]{1,16}\Z")
_B_PREFIX = re.compile(r"[A-Za-z0-9+/]{8,16}\Z")


@dataclass(frozen=True)
class Rendered:
    """Our A-R header: the clauses after the authserv-id, and ways to write them out."""

    authserv_id: str
    clauses: tuple[str, ...]

    @property
    def value(self) -> str:
        """The header value on one line (for JSON output and the quarantine metadata)."""
        return "; ".join((self.authserv_id, *self.clauses))

    def field(self, linesep: bytes = b"\n") -> bytes:
        """``Authentication-Results: ...`` folded one clause per line, without a final newline."""
        fold = ";" + linesep.decode("ascii") + "\t"
        return f"{FIELD_NAME}: {fold.join((self.authserv_id, *self.clauses))}".encode("ascii")


def render(authserv_id: str, report: AuthReport, sender_domain: str | None) -> Rendered:
    """Render the report as A-R clauses: spf (MAIL FROM, or HELO), each dkim, dmarc.

    A method that was not evaluated (None in the report) has no clause: an A-R result is a
    claim about an evaluation (RFC 8601 §2.7), and ``dkim=none`` would say the message carries
    no signature.
    """
    import authres  # deferred: only messages we deliver or quarantine need it

    clauses: list[Any] = []
    spf = report.spf
    smtp = {}
    if spf.identity == "helo" or sender_domain is None:
        if _ok(_DOMAIN, spf.domain):
            smtp["smtp_helo"] = spf.domain
    elif _ok(_DOMAIN, sender_domain):
        smtp["smtp_mailfrom"] = sender_domain
    clauses.append(authres.SPFAuthenticationResult(result=spf.result.value, **smtp))
    for sig in report.dkim or ():
        properties = {}
        if _ok(_DOMAIN, sig.domain):
            properties["header_d"] = sig.domain
        if _ok(_SELECTOR, sig.selector):
            properties["header_s"] = sig.selector
        if _ok(_ALGORITHM, sig.algorithm):
            properties["header_a"] = sig.algorithm
        result = authres.DKIMAuthenticationResult(result=sig.result.value, **properties)
        if _ok(_B_PREFIX, sig.b_prefix):
            # RFC 6008 §4: header.b tells apart several signatures of one domain.
            result.properties.append(
                authres.core.AuthenticationResultProperty("header", "b", sig.b_prefix)
            )
        if sig.result is Result.PASS and not sig.covers_body:
            result.result_comment = "partial body (l=), not counted"
        clauses.append(result)
    if report.dkim == ():
        clauses.append(authres.DKIMAuthenticationResult(result="none"))
    dmarc = report.dmarc
    if dmarc is None:
        return Rendered(authserv_id, tuple(str(clause) for clause in clauses))
    import authres.dmarc

    dmarc_props = {}
    if _ok(_DOMAIN, dmarc.domain):
        dmarc_props["header_from"] = dmarc.domain
    if dmarc.policy is not None:
        dmarc_props["policy"] = dmarc.policy.value
    clauses.append(
        authres.dmarc.DMARCAuthenticationResult(result=dmarc.result.value, **dmarc_props)
    )
    return Rendered(authserv_id, tuple(str(clause) for clause in clauses))


def ours(message: Message, authserv_id: str) -> Iterator[Header]:
    """The A-R fields whose authserv-id is ours (compared case-insensitively, RFC 8601 §2.5)."""
    wanted = authserv_id.lower()
    for header in message.fields(FIELD_NAME):
        if _authserv_id(message.value(header)) == wanted:
            yield header


def _authserv_id(value: str) -> str | None:
    """The first token of an A-R value, skipping comments; a quoted-string is unquoted."""
    text = _strip_comments(value).strip()
    if text.startswith('"'):
        match = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        return re.sub(r"\\(.)", r"\1", match.group(1)).lower() if match else None
    match = re.match(r"[^\s;()]+", text)
    return match.group(0).lower() if match else None


def _strip_comments(text: str) -> str:
    out: list[str] = []
    depth = 0
    escaped = False
    quoted = False
    for char in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if depth == 0:
                out.append(char)
            continue
        if depth == 0 and char == '"':
            quoted = not quoted
        if not quoted and char == "(":
            depth += 1
            continue
        if not quoted and char == ")" and depth:
            depth -= 1
            out.append(" ")
            continue
        if depth == 0:
            out.append(char)
    return "".join(out)


def _ok(pattern: re.Pattern[str], value: str | None) -> bool:
    return value is not None and pattern.match(value) is not None
