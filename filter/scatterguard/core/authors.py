"""The Author Domains of a message: RFC 5322 §3.4 address lists of every From field, by hand.

:func:`from_domains` reads every ``From`` field with our own small RFC 5322 tokenizer (comments,
quoted strings, groups, angle-addrs, bare addr-specs; RFC 2047 encoded words in display names are
skipped as words) and returns the distinct domains as lower-case A-labels (RFC 9989 §5.3.1). It is
pure, linear in the size of the fields, and never raises; for a message without a usable From
domain it returns a :class:`NoAuthorDomain` that says why. DMARC
(:mod:`scatterguard.checks.dmarc`) evaluates each domain it returns.

Choices, made here once:

- Every ``@`` contributes the domain after it, and an unterminated angle-addr or comment still
  counts: naming one domain more can only make the evaluation stricter.
- Display-names are ignored (RFC 9989 §2.4: display-name attacks are out of scope).
- At most :data:`MAX_AUTHOR_DOMAINS` + 1 domains are returned, so a caller can tell "more than the
  cap" (RFC 9989 §11.5: limit the work) without unbounded work here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from scatterguard.core.domains import ascii_domain
from scatterguard.core.message import Message
from scatterguard.core.results import DmarcCause

MAX_AUTHOR_DOMAINS = 10


@dataclass(frozen=True)
class NoAuthorDomain:
    """Why a message has no Author Domain to evaluate: no From field, address or domain."""

    cause: DmarcCause
    reason: str


_NO_FIELD = NoAuthorDomain(DmarcCause.NO_FROM_FIELD, "no From header field")
_NO_DOMAIN = NoAuthorDomain(DmarcCause.NO_FROM_DOMAIN, "the From header field has no usable domain")
_NO_ADDRESS = NoAuthorDomain(DmarcCause.NO_FROM_ADDRESS, "the From header field has no address")

# RFC 5322 §3.2.3 atext (plus UTF-8, RFC 6532 §3.2): everything but specials, space and controls.
_ATOM = re.compile(r'[^\x00-\x20\x7f()<>\[\]:;@\\,."]+')
# RFC 2047 §2 encoded-word; in a phrase it is one word whatever its text holds.
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=")
_STRUCTURE = "<>,;:@."
Token = tuple[str, str]  # (kind, text); kind is "atom", "qs", "literal", "encoded" or a special


def from_domains(message: Message) -> list[str] | NoAuthorDomain:
    """The distinct Author Domains of all From fields, in order, as lower-case A-labels.

    Returns :class:`NoAuthorDomain` instead when there is no usable From domain. The list stops at
    ``MAX_AUTHOR_DOMAINS + 1`` entries, so a caller can tell "more than the cap" without this
    function doing unbounded work.
    """
    values = message.values("From")
    if not values:
        return _NO_FIELD
    domains: list[str] = []
    seen: dict[str, str | None] = {}
    addresses = 0
    for value in values:
        for raw in _address_domains(value):
            addresses += 1
            if raw not in seen:
                seen[raw] = ascii_domain(raw)
            domain = seen[raw]
            if domain is not None and domain not in domains:
                domains.append(domain)
                if len(domains) > MAX_AUTHOR_DOMAINS:
                    return domains
    if domains:
        return domains
    return _NO_DOMAIN if addresses else _NO_ADDRESS


def _address_domains(value: str) -> Iterator[str]:
    """The raw domain of every addr-spec in one address-list (RFC 5322 §3.4)."""
    element: list[Token] = []
    angles: list[list[Token]] = []
    angle: list[Token] | None = None
    for kind, text in _tokens(value):
        if angle is not None:
            if kind == ">":
                angles.append(angle)
                angle = None
            else:
                angle.append((kind, text))
            continue
        if kind == "<":
            angle = []
        elif kind in (",", ";"):
            yield from _element_domains(element, angles)
            element, angles = [], []
        elif kind == ":":
            # A group's display-name ends here (§3.4 group); its members follow. A display-name
            # holds no "@" or angle-addr when well formed; if this one does, count it anyway.
            yield from _element_domains(element, angles)
            element, angles = [], []
        else:
            element.append((kind, text))
    if angle is not None:
        angles.append(angle)  # an unterminated angle-addr still names an address
    yield from _element_domains(element, angles)


def _element_domains(element: list[Token], angles: list[list[Token]]) -> Iterator[str]:
    """Domains of one mailbox: its angle-addr(s) if any, else the element as a bare addr-spec.

    Words outside an angle-addr are a display-name and are ignored (RFC 9989 §2.4: display-name
    attacks are out of scope). An obsolete route (``<@a,@b:user@c>``, §4.4 obs-route) is dropped.
    Every ``@`` contributes the domain after it, so ``a@x@y`` names both x and y: counting one more
    domain can only make the evaluation stricter.
    """
    if angles:
        for tokens in angles:
            colons = [i for i, (kind, _) in enumerate(tokens) if kind == ":"]
            yield from _spec_domains(tokens[colons[-1] + 1 :] if colons else tokens)
    else:
        yield from _spec_domains(element)


def _spec_domains(tokens: list[Token]) -> Iterator[str]:
    size = len(tokens)
    for index in range(size):
        if tokens[index][0] != "@":
            continue
        following = index + 1
        if following < size and tokens[following][0] == "literal":
            yield tokens[following][1]  # an address literal: no DNS name, never usable for DMARC
            continue
        # dot-atom / obs-domain: atom *("." atom), CFWS around the dots already gone. The run of
        # atoms and dots is taken whole, so "bank..example" stays one (invalid) name instead of
        # becoming "bank"; two atoms in a row end it. Indexes, not slices: a field of many "@"
        # must cost linear time.
        parts: list[str] = []
        while following < size:
            kind, text = tokens[following]
            if kind not in ("atom", ".") or (kind == "atom" and parts and parts[-1] != "."):
                break
            parts.append(text)
            following += 1
        yield "".join(parts)


def _tokens(text: str) -> Iterator[Token]:
    """RFC 5322 §3.2 lexical tokens, skipping whitespace and comments; lenient, linear, total."""
    size = len(text)
    i = 0
    while i < size:
        char = text[i]
        if char == "(":
            # §3.2.2: comments nest and may hold quoted-pairs; an unclosed one runs to the end.
            depth = 0
            while i < size:
                char = text[i]
                if char == "\\":
                    i += 2
                    continue
                if char == "(":
                    depth += 1
                elif char == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        elif char == '"':
            # §3.2.4 quoted-string with quoted-pairs; an unclosed one runs to the end.
            i += 1
            chunks: list[str] = []
            while i < size and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                chunks.append(text[i : i + 1])
                i += 1
            i += 1
            yield "qs", "".join(chunks)
        elif char == "[":
            # §3.4.1 domain-literal.
            end = i + 1
            while end < size and text[end] != "]":
                end += 2 if text[end] == "\\" else 1
            yield "literal", text[i : end + 1]
            i = end + 1
        elif char in _STRUCTURE:
            yield char, char
            i += 1
        else:
            atom = _ATOM.match(text, i)
            if atom is None:
                i += 1  # whitespace, a control character, a stray ")", "]" or "\\"
                continue
            if text.startswith("=?", i):
                encoded = _ENCODED_WORD.match(text, i)
                if encoded is not None:
                    yield "encoded", encoded.group()
                    i = encoded.end()
                    continue
            yield "atom", atom.group()
            i = atom.end()
