"""DMARC (RFC 9989, which obsoletes RFC 7489): the result of a message, one entry per From domain.

:func:`check_dmarc` takes the Author Domains (:mod:`scatterguard.core.authors`), evaluates each
one (§5.3.2-§5.3.5) with the policy and alignment of :mod:`scatterguard.checks.orgdomain`, and
combines them into one :class:`~scatterguard.core.results.DmarcResult`. It never raises.

Choices where RFC 9989 leaves room, made here once:

- Several From domains (one field listing several, or repeated From fields) are each evaluated; the
  message fails if any fails, under the strictest policy among the failing ones (§11.5, DESIGN.md
  rule 3). A domain without a DMARC record cannot fail, so ``none`` + ``pass`` is ``pass``; any
  ``temperror`` (and no ``fail``) is ``temperror``, because that domain might have failed; and a
  ``temperror`` whose effective policy (after ``t=y``) is stricter than the strictest failing one,
  or could not be read, is ``temperror`` even beside a ``fail``.
- At most :data:`~scatterguard.core.authors.MAX_AUTHOR_DOMAINS` distinct From domains are
  evaluated (§11.5: limit the work). A message naming more is a DMARC ``fail`` with policy
  ``quarantine`` and no DNS at all: §11.5 allows "a negative disposition decision ... prior to and
  instead of" DMARC processing, and evaluating only some domains would let an attacker hide the
  spoofed one behind ten others. ``quarantine`` rather than ``reject``: no domain owner asked for
  it, so nothing is bounced and a postmaster can release the message.
- SPF counts only for the MAIL FROM identity (§4.4.2). For the null reverse-path that identity is
  ``postmaster@<HELO>`` (RFC 7208 §2.4, cited by RFC 9989 §3.2.4), which is how
  :mod:`scatterguard.checks.spf` reports it: ``identity == "mailfrom"``, ``domain`` = the HELO name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scatterguard.checks import orgdomain
from scatterguard.checks.orgdomain import OrgDomains
from scatterguard.checks.resolver import Resolver
from scatterguard.core.authors import MAX_AUTHOR_DOMAINS, NoAuthorDomain, from_domains
from scatterguard.core.envelope import Address
from scatterguard.core.message import Message
from scatterguard.core.results import (
    DkimResult,
    DmarcCause,
    DmarcDomainResult,
    DmarcResult,
    Policy,
    Result,
    SpfResult,
)


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
    found = orgdomain.discover(org, author)
    if isinstance(found, orgdomain.TemporaryFailure):
        return DmarcDomainResult(
            Result.TEMPERROR, author, reason=found.reason, cause=DmarcCause.DNS_ERROR
        )
    if found is None:
        detail = org.record_at(author).detail
        reason = f"no DMARC record ({detail})" if detail else "no DMARC record"
        return DmarcDomainResult(Result.NONE, author, reason=reason, cause=DmarcCause.NO_RECORD)
    record = found.record
    if not record.applicable:
        return DmarcDomainResult(
            Result.NONE,
            author,
            record_domain=found.domain,
            reason=f"DMARC record at {found.domain} not applied: " + "; ".join(record.problems),
            cause=DmarcCause.RECORD_NOT_APPLIED,
        )

    spf_aligned = dkim_aligned = False
    open_outcome: list[str] = []
    for ident in identifiers:
        if ident.kind == "dkim" and dkim_aligned:
            continue  # one aligned signature is enough (§4.4.1)
        if not ident.passed and spf_aligned:
            continue  # already a pass: a temperror can no longer change the outcome
        strict = record.strict_spf if ident.kind == "spf" else record.strict_dkim
        match = orgdomain.aligned(org, author, ident.domain, strict)
        if ident.passed and match:
            if ident.kind == "spf":
                spf_aligned = True
            else:
                dkim_aligned = True
        elif match is None or (match and not ident.passed):
            # Either alignment could not be determined, or an aligned identifier's own check
            # ended in temperror: asked again later, it might pass.
            open_outcome.append(f"{ident.kind.upper()} {ident.domain}")

    cause: DmarcCause | None = None
    if spf_aligned or dkim_aligned:
        result = Result.PASS
        how = " and ".join(
            name for name, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok
        )
        reason = f"aligned {how} pass"
    elif open_outcome:
        result, cause = Result.TEMPERROR, DmarcCause.OUTCOME_OPEN
        reason = "outcome open: temporary failure for " + ", ".join(open_outcome)
    else:
        result = Result.FAIL
        reason = "no aligned SPF or DKIM pass"

    if found.domain == author:
        policy = record.p  # §4.10.1: the Author Domain's own record gives p
    elif record.np_differs:
        exists = orgdomain.exists(org.resolver, author)
        if exists is None:
            # Whether np or sp applies is unknown: report the stricter, and a failure cannot be
            # told apart from a milder one, so its outcome stays open.
            policy = _stricter(record.subdomain_policy(False), record.subdomain_policy(True))
            reason += "; existence of the domain unknown (np)"
            if result is Result.FAIL:
                result, cause = Result.TEMPERROR, DmarcCause.EXISTENCE_UNKNOWN
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
        cause=cause,
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
        cause=chosen.cause,
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
    if isinstance(domains, NoAuthorDomain):
        return DmarcResult(Result.PERMERROR, None, None, reason=domains.reason, cause=domains.cause)
    if len(domains) > MAX_AUTHOR_DOMAINS:
        return DmarcResult(
            Result.FAIL,
            domains[0],
            Policy.QUARANTINE,
            reason=f"the From header fields name more than {MAX_AUTHOR_DOMAINS} domains: "
            "not evaluated, treated as a DMARC failure (RFC 9989 §11.5)",
            cause=DmarcCause.TOO_MANY_DOMAINS,
        )
    org = OrgDomains(resolver)
    identifiers = _identifiers(spf, dkim, sender)
    return _combine(tuple(_evaluate(org, domain, identifiers) for domain in domains))
