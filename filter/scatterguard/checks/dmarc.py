"""DMARC (RFC 9989, which obsoletes RFC 7489) in our own code, over our resolver.

This module owns:

- :func:`from_domains`: the Author Domains of a message, from our own small RFC 5322 tokenizer
  over every ``From`` field (comments, quoted strings, groups, angle-addrs, bare addr-specs;
  RFC 2047 encoded words in display names are skipped as words). IDNs become A-labels (RFC 9989
  §5.3.1). It never raises.
- The DNS Tree Walk (RFC 9989 §4.10), DMARC Policy Discovery (§4.10.1) and the Organizational
  Domain (§4.10.2), in :class:`OrgDomains` and :func:`organizational_domain`.
- :func:`aligned`: strict or relaxed Identifier Alignment (§3.2.10, §4.4), also used by the
  checks for the relaxed match of the reverse-path with a DKIM ``d=`` (DESIGN.md).
- :func:`check_dmarc`: the DMARC result of a message, one entry per From domain.
- Record parsing lives in :mod:`scatterguard.core.dmarcrecord`; :func:`parse_record` is re-exported.

Choices where RFC 9989 leaves room, made here once:

- A temporary DNS failure at any step of a tree walk makes the walk fail (``temperror``): a walk
  that skipped a name could pick another Organizational Domain or policy (§5.3.6: "the message
  cannot be considered to pass or fail").
- Several From domains (one field listing several, or repeated From fields) are each evaluated; the
  message fails if any fails, under the strictest policy among the failing ones (§11.5, DESIGN.md
  rule 3). A domain without a DMARC record cannot fail, so ``none`` + ``pass`` is ``pass``; any
  ``temperror`` (and no ``fail``) is ``temperror``, because that domain might have failed; and a
  ``temperror`` whose effective policy (after ``t=y``) is stricter than the strictest failing one,
  or could not be read, is ``temperror`` even beside a ``fail``.
- At most :data:`MAX_AUTHOR_DOMAINS` distinct From domains are evaluated (§11.5: limit the work).
  A message naming more is a DMARC ``fail`` with policy ``quarantine`` and no DNS at all: §11.5
  allows "a negative disposition decision ... prior to and instead of" DMARC processing, and
  evaluating only some domains would let an attacker hide the spoofed one behind ten others.
  ``quarantine`` rather than ``reject``: no domain owner asked for it, so nothing is bounced and a
  postmaster can release the message.
- SPF counts only for the MAIL FROM identity (§4.4.2). For the null reverse-path that identity is
  ``postmaster@<HELO>`` (RFC 7208 §2.4, cited by RFC 9989 §3.2.4), which is how
  :mod:`scatterguard.checks.spf` reports it: ``identity == "mailfrom"``, ``domain`` = the HELO name.
- Non-existence for ``np`` is RFC 9989's (§3.2.13, Appendix A.4): the name is NXDOMAIN. A name
  with records of any type exists, so one lookup (type A) tells; NODATA means "exists".
- Relaxed alignment never walks an identifier that lies outside the Author Domain's
  Organizational Domain: their Organizational Domains cannot be equal then, and walking a domain
  the sender controls would let a slow nameserver turn a ``fail`` into a ``temperror``.
- No public suffix list: a domain with no DMARC record at or above it is its own Organizational
  Domain (§4.10.2, "the initial target domain"), so between such domains relaxed alignment is as
  strict as strict alignment.
- :class:`OrgDomains` remembers records and walks for one message; the resolver's TTL-honouring
  cache is what carries answers across messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scatterguard.checks.resolver import Resolver, Status
from scatterguard.core.dmarcrecord import DmarcRecord, parse_record
from scatterguard.core.domains import ascii_domain, within
from scatterguard.core.envelope import Address
from scatterguard.core.message import Message
from scatterguard.core.results import (
    DkimResult,
    DmarcDomainResult,
    DmarcResult,
    Policy,
    Result,
    SpfResult,
)

__all__ = [
    "MAX_AUTHOR_DOMAINS",
    "DmarcRecord",
    "OrgDomains",
    "aligned",
    "check_dmarc",
    "from_domains",
    "organizational_domain",
    "parse_record",
    "walk_names",
]

MAX_AUTHOR_DOMAINS = 10
# RFC 9989 §4.10 step 4: a walk jumps from a name of eight or more labels to seven.
WALK_LABELS = 7


# ---------------------------------------------------------------------------------------------
# Author Domains: RFC 5322 §3.4 address lists, tokenized by hand.

# RFC 5322 §3.2.3 atext (plus UTF-8, RFC 6532 §3.2): everything but specials, space and controls.
_ATOM = re.compile(r'[^\x00-\x20\x7f()<>\[\]:;@\\,."]+')
# RFC 2047 §2 encoded-word; in a phrase it is one word whatever its text holds.
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=")
_STRUCTURE = "<>,;:@."
Token = tuple[str, str]  # (kind, text); kind is "atom", "qs", "literal", "encoded" or a special


def from_domains(message: Message) -> list[str] | str:
    """The distinct Author Domains of all From fields, in order, as lower-case A-labels.

    Returns a reason string instead when there is no usable From domain. The list stops at
    ``MAX_AUTHOR_DOMAINS + 1`` entries, so a caller can tell "more than the cap" without this
    function doing unbounded work.
    """
    values = message.values("From")
    if not values:
        return "no From header field"
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
    if addresses:
        return "the From header field has no usable domain"
    return "the From header field has no address"


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


def _normalise(domain: str) -> str | None:
    """An identifier as compared in alignment: A-labels, lower case, no trailing dot (RFC 4343)."""
    return ascii_domain(domain.strip())


# ---------------------------------------------------------------------------------------------
# The DNS Tree Walk, Policy Discovery and Organizational Domains.


@dataclass(frozen=True)
class Lookup:
    """The DMARC record at one name: a record, none, or a temporary failure."""

    record: DmarcRecord | None = None
    temporary: bool = False
    detail: str = ""


@dataclass(frozen=True)
class Walk:
    """One DNS Tree Walk (RFC 9989 §4.10): the records found, longest name first."""

    start: str
    found: tuple[tuple[str, DmarcRecord], ...] = ()
    failure: str | None = None  # a temporary DNS failure stopped the walk

    @property
    def organizational_domain(self) -> str:
        """RFC 9989 §4.10.2: select from the records found, longest to shortest.

        Meaningful only when the walk did not fail.
        """
        for name, record in self.found:
            # Rule 1: psd=n marks the Organizational Domain itself.
            if record.psd == "n":
                return name
            # Rule 2: psd=y (not at the start) marks a PSD; the domain one label below is it.
            if record.psd == "y" and name != self.start:
                return _one_below(self.start, name)
        # Rule 3: the record with the fewest labels; without any record, the start itself.
        return self.found[-1][0] if self.found else self.start


def walk_names(domain: str) -> list[str]:
    """The names a tree walk from ``domain`` asks for, in order (without ``_dmarc.``).

    RFC 9989 §4.10 steps 3-7: the domain itself; then, from eight labels or more, straight to the
    last seven; then one label less at a time, down to one label. The root is never asked.
    """
    labels = domain.split(".")
    names = [domain]
    below = WALK_LABELS if len(labels) > WALK_LABELS else len(labels) - 1
    names.extend(".".join(labels[-count:]) for count in range(below, 0, -1))
    return names


def _one_below(start: str, ancestor: str) -> str:
    labels = start.split(".")
    return ".".join(labels[-(ancestor.count(".") + 2) :])


class OrgDomains:
    """DMARC record lookups and tree walks over one resolver, remembered for one message.

    Make one per message (``check_dmarc`` does): within a message the same names come up again
    (the From domain's walk serves policy discovery and alignment alike), while across messages
    the resolver's cache honours the TTLs that this object would not.
    """

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._records: dict[str, Lookup] = {}
        self._walks: dict[str, Walk] = {}

    def record_at(self, domain: str) -> Lookup:
        """The DMARC record at ``_dmarc.<domain>`` (RFC 9989 §4.10 steps 1-2 and 5-6).

        TXT records that are not DMARC records are discarded; several DMARC records at one name
        count as none.
        """
        cached = self._records.get(domain)
        if cached is not None:
            return cached
        answer = self.resolver.txt("_dmarc." + domain)
        if answer.temporary:
            lookup = Lookup(temporary=True, detail=answer.detail or f"DNS failure at {domain}")
        elif answer.status is Status.OK:
            records = [r for r in (parse_record(t) for t in answer.texts()) if r is not None]
            if len(records) == 1:
                lookup = Lookup(records[0])
            elif records:
                lookup = Lookup(
                    detail=f"{len(records)} DMARC records at _dmarc.{domain}: none used"
                )
            else:
                lookup = Lookup()
        else:
            lookup = Lookup()
        self._records[domain] = lookup
        return lookup

    def walk(self, domain: str) -> Walk:
        """The DNS Tree Walk from ``domain`` (RFC 9989 §4.10), stopping at psd=y or psd=n.

        ``domain`` is a normalised name (lower-case A-labels, no trailing dot).
        """
        cached = self._walks.get(domain)
        if cached is not None:
            return cached
        found: list[tuple[str, DmarcRecord]] = []
        failure = None
        for name in walk_names(domain):
            lookup = self.record_at(name)
            if lookup.temporary:
                failure = lookup.detail
                break
            if lookup.record is not None:
                found.append((name, lookup.record))
                if lookup.record.psd in ("y", "n"):
                    break
        walk = Walk(domain, tuple(found), failure)
        self._walks[domain] = walk
        return walk

    def organizational_domain(self, domain: str) -> str | None:
        """The Organizational Domain (RFC 9989 §4.10.2); None on a temporary DNS failure."""
        walk = self.walk(domain)
        return None if walk.failure is not None else walk.organizational_domain

    def known_organizational_domain(self, domain: str) -> str | None:
        """The Organizational Domain if a complete walk from ``domain`` was already made."""
        walk = self._walks.get(domain)
        if walk is None or walk.failure is not None:
            return None
        return walk.organizational_domain


def organizational_domain(resolver: Resolver, domain: str) -> str | None:
    """The Organizational Domain of ``domain`` (RFC 9989 §4.10.2); None on a temporary failure.

    A name that is no DNS name cannot be walked; like a walk that finds nothing, it is its own
    Organizational Domain ("the initial target domain").
    """
    normal = _normalise(domain)
    if normal is None:
        return domain.strip().rstrip(".").lower()
    return OrgDomains(resolver).organizational_domain(normal)


def aligned(org: OrgDomains | Resolver, a: str, b: str, strict: bool) -> bool | None:
    """Identifier Alignment of ``a`` and ``b`` (RFC 9989 §3.2.10); None on a temporary failure.

    Strict: the same name, ignoring case and a trailing dot. Relaxed: the same Organizational
    Domain. Pass the Author Domain (or whichever side is trusted more) as ``a``: its walk is made
    first, and ``b`` is only walked when it lies within ``a``'s Organizational Domain.
    """
    orgs = org if isinstance(org, OrgDomains) else OrgDomains(org)
    first, second = _normalise(a), _normalise(b)
    if first is None or second is None:
        return False
    if first == second:
        return True
    if strict:
        return False
    # An Organizational Domain is its domain or an ancestor, so two domains without a common
    # last label cannot share one: no DNS needed.
    if first.rsplit(".", 1)[-1] != second.rsplit(".", 1)[-1]:
        return False
    first_org = orgs.organizational_domain(first)
    if first_org is None:
        return None
    if not within(second, first_org):
        return False
    second_org = orgs.organizational_domain(second)
    if second_org is None:
        return None
    return first_org == second_org


@dataclass(frozen=True)
class Discovery:
    """The DMARC Policy Record that applies to an Author Domain (RFC 9989 §4.10.1)."""

    domain: str  # where the record is
    record: DmarcRecord


def discover(org: OrgDomains, author: str) -> Discovery | str | None:
    """DMARC Policy Discovery (RFC 9989 §4.10.1): a record, None, or a temporary failure reason.

    The record at the Author Domain wins; else the walk from it gives the Organizational Domain's
    record, or the PSD's (psd=y) when the Organizational Domain has none.
    """
    first = org.record_at(author)
    if first.temporary:
        return f"DMARC record lookup failed: {first.detail}"
    if first.record is not None:
        return Discovery(author, first.record)
    walk = org.walk(author)
    if walk.failure is not None:
        return f"DMARC tree walk failed: {walk.failure}"
    if not walk.found:
        return None
    by_name = dict(walk.found)
    org_domain = walk.organizational_domain
    if org_domain in by_name:
        return Discovery(org_domain, by_name[org_domain])
    name, record = walk.found[-1]  # the psd=y record of the Public Suffix Domain
    return Discovery(name, record)


def _exists(resolver: Resolver, domain: str) -> bool | None:
    """RFC 9989 §3.2.13 and Appendix A.4: a name exists unless it is NXDOMAIN; None if unknown."""
    answer = resolver.query(domain, "A")
    if answer.temporary:
        return None
    return answer.status is not Status.NXDOMAIN


# ---------------------------------------------------------------------------------------------
# Evaluation.


@dataclass(frozen=True)
class _Identifier:
    """An Authenticated Identifier candidate: a passing (or temperror) SPF or DKIM domain."""

    kind: str  # "spf" or "dkim"
    domain: str
    passed: bool  # False: its check ended in temperror (it might have passed)


def _identifiers(
    spf: SpfResult, dkim: Sequence[DkimResult], sender: Address | None
) -> list[_Identifier]:
    found: list[_Identifier] = []
    # RFC 9989 §4.4.2: SPF counts for the MAIL FROM identity only (for <> that is
    # postmaster@HELO, RFC 7208 §2.4, and spfcheck reports it as "mailfrom").
    spf_domain = spf.domain or (sender.domain if sender is not None else None)
    if spf.identity == "mailfrom" and spf_domain and spf.result in (Result.PASS, Result.TEMPERROR):
        found.append(_Identifier("spf", spf_domain, spf.result is Result.PASS))
    # §4.4.1: each verified signature's d=; a signature whose l= leaves body unsigned does not
    # count (DkimResult.counts), nor could it after a retry, so its temperror is no open outcome.
    for signature in dkim:
        if not signature.domain:
            continue
        if signature.counts:
            found.append(_Identifier("dkim", signature.domain, True))
        elif signature.result is Result.TEMPERROR and signature.covers_body:
            found.append(_Identifier("dkim", signature.domain, False))
    return found


def _stricter(first: Policy, second: Policy) -> Policy:
    return first if first.strictness >= second.strictness else second


def _evaluate(org: OrgDomains, author: str, identifiers: list[_Identifier]) -> DmarcDomainResult:
    """DMARC for one Author Domain (RFC 9989 §5.3.2-§5.3.5)."""
    found = discover(org, author)
    if isinstance(found, str):
        return DmarcDomainResult(Result.TEMPERROR, author, reason=found)
    if found is None:
        detail = org.record_at(author).detail
        reason = f"no DMARC record ({detail})" if detail else "no DMARC record"
        return DmarcDomainResult(Result.NONE, author, reason=reason)
    record = found.record
    if not record.applicable:
        return DmarcDomainResult(
            Result.NONE,
            author,
            record_domain=found.domain,
            reason=f"DMARC record at {found.domain} not applied: " + "; ".join(record.problems),
        )

    spf_aligned = dkim_aligned = False
    open_outcome: list[str] = []
    for ident in identifiers:
        if ident.kind == "dkim" and dkim_aligned:
            continue  # one aligned signature is enough (§4.4.1)
        if not ident.passed and spf_aligned:
            continue  # already a pass: a temperror can no longer change the outcome
        strict = record.strict_spf if ident.kind == "spf" else record.strict_dkim
        match = aligned(org, author, ident.domain, strict)
        if ident.passed and match:
            if ident.kind == "spf":
                spf_aligned = True
            else:
                dkim_aligned = True
        elif match is None or (match and not ident.passed):
            # Either alignment could not be determined, or an aligned identifier's own check
            # ended in temperror: asked again later, it might pass.
            open_outcome.append(f"{ident.kind.upper()} {ident.domain}")

    if spf_aligned or dkim_aligned:
        result = Result.PASS
        how = " and ".join(
            name for name, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok
        )
        reason = f"aligned {how} pass"
    elif open_outcome:
        result = Result.TEMPERROR
        reason = "outcome open: temporary failure for " + ", ".join(open_outcome)
    else:
        result = Result.FAIL
        reason = "no aligned SPF or DKIM pass"

    if found.domain == author:
        policy = record.p  # §4.10.1: the Author Domain's own record gives p
    elif record.np_differs:
        exists = _exists(org.resolver, author)
        if exists is None:
            # Whether np or sp applies is unknown: report the stricter, and a failure cannot be
            # told apart from a milder one, so its outcome stays open.
            policy = _stricter(record.subdomain_policy(False), record.subdomain_policy(True))
            reason += "; existence of the domain unknown (np)"
            if result is Result.FAIL:
                result = Result.TEMPERROR
        else:
            policy = record.subdomain_policy(exists)
            if not exists:
                reason += "; non-existent domain (np)"
    else:
        policy = record.subdomain_policy(exists=True)

    # The Organizational Domain is reported when a walk from the Author Domain was needed anyway
    # (policy found at an ancestor, or relaxed alignment); RFC 9989 §4.10.2 asks for no walk
    # otherwise, and none is made just to fill this field.
    return DmarcDomainResult(
        result,
        author,
        policy=policy,
        record_domain=found.domain,
        organizational_domain=org.known_organizational_domain(author)
        or (author if record.psd == "n" and found.domain == author else None),
        testing=record.testing,
        spf_aligned=spf_aligned,
        dkim_aligned=dkim_aligned,
        reason=reason,
    )


# Stricter than any published policy: an open domain whose policy could not be read at all.
_UNKNOWN = 3


def _severity(result: DmarcDomainResult) -> tuple[int, int]:
    """How hard a domain's policy bites: ``(effective, published)`` strictness.

    The effective policy is one step down under t=y (RFC 9989 §4.7), and it is what compares
    between domains. An open (``temperror``) domain without a policy is one whose policy could
    not be read: it might be anything, so it ranks above reject.
    """
    policy = result.policy
    if policy is None:
        return (_UNKNOWN, _UNKNOWN) if result.result is Result.TEMPERROR else (0, 0)
    effective = policy.strictness - (1 if result.testing and policy.strictness else 0)
    return effective, policy.strictness


def _combine(results: tuple[DmarcDomainResult, ...]) -> DmarcResult:
    """One verdict over all From domains (RFC 9989 §11.5, DESIGN.md rule 3).

    Any failing domain fails the message under the strictest failing policy, unless a domain
    whose outcome is still open has a stricter policy (or one we could not read): then that
    domain might fail too, under a policy that would change the action, so the whole result
    stays open (``temperror``, rule 2). Without a failure, any open domain keeps it open; the
    strictest open one is reported, so decide() sees the policy that matters.
    """
    several = f" ({len(results)} From domains)" if len(results) > 1 else ""
    failing = [r for r in results if r.result is Result.FAIL]
    # max() keeps the first of equals: the earliest From domain among the strictest.
    pending = [r for r in results if r.result is Result.TEMPERROR]
    strictest_open = max(pending, key=_severity) if pending else None
    note = ""
    if failing:
        chosen = max(failing, key=_severity)
        result = Result.FAIL
        if strictest_open is not None and _severity(strictest_open)[0] > _severity(chosen)[0]:
            note = f"; stricter than the failing {chosen.domain}, so the outcome stays open"
            chosen, result = strictest_open, Result.TEMPERROR
    elif strictest_open is not None:
        chosen, result = strictest_open, Result.TEMPERROR
    else:
        chosen = next((r for r in results if r.result is Result.PASS), results[0])
        result = chosen.result if chosen.result is Result.PASS else Result.NONE
    return DmarcResult(
        result,
        chosen.domain,
        chosen.policy if result is not Result.NONE else None,
        testing=chosen.testing if result is not Result.NONE else False,
        per_domain=results,
        reason=f"{chosen.domain}: {chosen.reason}{note}{several}",
    )


def check_dmarc(
    resolver: Resolver,
    message: Message,
    spf: SpfResult,
    dkim: Sequence[DkimResult],
    sender: Address | None,
) -> DmarcResult:
    """DMARC (RFC 9989) for a message: each From domain evaluated, then combined. Never raises.

    ``permerror`` when the message has no usable From domain (decide() treats it as "no DMARC
    policy"); ``policy`` is the published policy (``p``, ``sp`` or ``np``) before the ``t=y``
    downgrade, which is reported in ``testing`` and applied by decide().
    """
    domains = from_domains(message)
    if isinstance(domains, str):
        return DmarcResult(Result.PERMERROR, None, None, reason=domains)
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return DmarcResult(
            Result.FAIL,
            domains[0],
            Policy.QUARANTINE,
            reason=f"the From header fields name more than {MAX_AUTHOR_DOMAINS} domains: "
            "not evaluated, treated as a DMARC failure (RFC 9989 §11.5)",
        )
    org = OrgDomains(resolver)
    identifiers = _identifiers(spf, dkim, sender)
    return _combine(tuple(_evaluate(org, domain, identifiers) for domain in domains))
