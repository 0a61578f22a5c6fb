"""DMARC's DNS: the Tree Walk, Policy Discovery, Organizational Domains and Identifier Alignment.

This module owns, over our resolver (RFC 9989):

- The DNS Tree Walk (§4.10), DMARC Policy Discovery (§4.10.1) and the Organizational Domain
  (§4.10.2), in :class:`OrgDomains`, :func:`discover` and :func:`organizational_domain`.
- :func:`aligned`: strict or relaxed Identifier Alignment (§3.2.10, §4.4), also used by the
  checks for the relaxed match of the reverse-path with a DKIM ``d=`` (DESIGN.md).
- :func:`exists`: whether a name exists, for ``np`` (§3.2.13).

Record parsing lives in :mod:`scatterguard.core.dmarcrecord`; the evaluation of a message in
:mod:`scatterguard.checks.dmarc`.

Choices where RFC 9989 leaves room, made here once:

- A temporary DNS failure at any step of a tree walk makes the walk fail (``temperror``): a walk
  that skipped a name could pick another Organizational Domain or policy (§5.3.6: "the message
  cannot be considered to pass or fail").
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

from dataclasses import dataclass

from scatterguard.checks.resolver import Resolver, Status
from scatterguard.core.dmarcrecord import DmarcRecord, parse_record
from scatterguard.core.domains import ascii_domain, within

# RFC 9989 §4.10 step 4: a walk jumps from a name of eight or more labels to seven.
WALK_LABELS = 7


def _normalise(domain: str) -> str | None:
    """An identifier as compared in alignment: A-labels, lower case, no trailing dot (RFC 4343)."""
    return ascii_domain(domain.strip())


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


@dataclass(frozen=True)
class TemporaryFailure:
    """Policy Discovery could not finish: a lookup failed temporarily (``reason`` says where)."""

    reason: str


def discover(org: OrgDomains, author: str) -> Discovery | TemporaryFailure | None:
    """DMARC Policy Discovery (RFC 9989 §4.10.1): a record, a temporary failure, or None (none).

    The record at the Author Domain wins; else the walk from it gives the Organizational Domain's
    record, or the PSD's (psd=y) when the Organizational Domain has none.
    """
    first = org.record_at(author)
    if first.temporary:
        return TemporaryFailure(f"DMARC record lookup failed: {first.detail}")
    if first.record is not None:
        return Discovery(author, first.record)
    walk = org.walk(author)
    if walk.failure is not None:
        return TemporaryFailure(f"DMARC tree walk failed: {walk.failure}")
    if not walk.found:
        return None
    by_name = dict(walk.found)
    org_domain = walk.organizational_domain
    if org_domain in by_name:
        return Discovery(org_domain, by_name[org_domain])
    name, record = walk.found[-1]  # the psd=y record of the Public Suffix Domain
    return Discovery(name, record)


def exists(resolver: Resolver, domain: str) -> bool | None:
    """RFC 9989 §3.2.13 and Appendix A.4: a name exists unless it is NXDOMAIN; None if unknown."""
    answer = resolver.query(domain, "A")
    if answer.temporary:
        return None
    return answer.status is not Status.NXDOMAIN
