"""The decision: from what the checks found to what happens to the message.

:func:`decide` is pure and total. It never raises and never touches the network, the clock or the
disk; everything it needs (the report, the envelope, the :class:`DecisionSettings`, the message's
age) is passed in. It implements DESIGN.md §Decision, including the rule the project exists for: a
bounce goes only to a verified reverse-path; otherwise what deserved a bounce is quarantined.
Each :class:`Decision` names the :class:`Rule` that settled it, beside the reasons for people.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from scatterguard.core.envelope import Envelope
from scatterguard.core.results import AuthReport, Policy, Result
from scatterguard.errors import (
    DMARC_REJECT_STATUS,
    DNS_TEMPFAIL_STATUS,
    SPF_REJECT_STATUS,
    TEMPFAIL_STATUS,
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Status lines go to the MTA, which copies them into DSNs and logs: only our own words, and
# only domain-like characters from anything else.
_SAFE_DOMAIN = re.compile(r"[^a-z0-9.-]")


class Action(enum.Enum):
    """What the filter does with the message."""

    DELIVER = "deliver"
    QUARANTINE = "quarantine"
    BOUNCE = "bounce"
    DEFER = "defer"

    def __str__(self) -> str:
        return self.value


class Rule(enum.Enum):
    """Which rule of DESIGN.md §Decision settled the message, one value per branch.

    The values are stable (lower case, underscores): they are ``check --json``'s ``"rule"`` and
    become log and metric labels. Reject-class outcomes (rules 3 and 4) have one value for the
    bounce to a verified reverse-path and one for the quarantine that replaces it (rule 6).
    """

    MALFORMED = "malformed"  # the header section is ambiguous: quarantined, before any rule
    AUTHENTICATED = "authenticated"  # rule 1: the client authenticated (SASL)
    TRUSTED_NETWORK = "trusted_network"  # rule 1: the client is in trusted_networks
    DEFER_TEMPERROR = "defer_temperror"  # rule 2: the outcome is open: deferred
    # rule 2: still open past defer_max_age under a reject, quarantine or unread policy
    DEFER_MAX_AGE_QUARANTINE = "defer_max_age_quarantine"
    DMARC_QUARANTINE = "dmarc_quarantine"  # rule 3: DMARC fail under quarantine
    DMARC_REJECT = "dmarc_reject"  # rules 3, 6: DMARC fail under reject, bounced
    DMARC_REJECT_UNVERIFIED = "dmarc_reject_unverified"  # ... quarantined: not verified
    SPF_FAIL_NO_DMARC = "spf_fail_no_dmarc"  # rules 4, 6: SPF fail, no DMARC policy, bounced
    SPF_FAIL_NO_DMARC_UNVERIFIED = "spf_fail_no_dmarc_unverified"  # ... quarantined
    DELIVER = "deliver"  # rule 5: nothing that calls for action
    INTERNAL_ERROR = "internal_error"  # decide() itself failed: deferred

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Decision:
    """The action, the rule that chose it, whether the reverse-path is verified, the reasons,
    and the MTA status line."""

    action: Action
    rule: Rule
    reverse_path_verified: bool
    reasons: tuple[str, ...]
    # For BOUNCE and DEFER: the one line for the MTA, starting with an RFC 3463 enhanced code.
    status: str | None = None


@dataclass(frozen=True)
class DecisionSettings:
    """The parts of the configuration that decide() reads."""

    trusted_networks: Sequence[Network] = ()
    defer_max_age: float = 4 * 3600.0


def decide(
    report: AuthReport,
    envelope: Envelope,
    settings: DecisionSettings,
    age: float | None = None,
) -> Decision:
    """Apply DESIGN.md §Decision. ``age`` is seconds since the message arrived (None: unknown)."""
    try:
        return _decide(report, envelope, settings, age)
    except Exception as exc:  # noqa: BLE001 - decide() is total: our own bug must not lose mail
        return Decision(
            Action.DEFER,
            Rule.INTERNAL_ERROR,
            False,
            (f"internal error while deciding: {type(exc).__name__}",),
            TEMPFAIL_STATUS,
        )


def trusted_client(envelope: Envelope, networks: Sequence[Network]) -> str | None:
    """Why the client counts as trusted (SASL or trusted_networks), or None."""
    if envelope.sasl_user:
        return "client authenticated (SASL)"
    address = envelope.client_address
    if address is not None:
        for network in networks:
            if address.version == network.version and address in network:
                return f"client {address} is in trusted_networks"
    return None


# DESIGN.md §verification: a DKIM signature verifies the reverse-path only when SPF for the MAIL
# FROM identity says nothing against the envelope. fail, softfail, temperror and permerror all say
# that a replayed signed message may carry a forged MAIL FROM at the signing domain.
DKIM_VERIFIES_WITH_SPF = frozenset({Result.NONE, Result.NEUTRAL})


def verification(report: AuthReport, envelope: Envelope, trusted: str | None) -> str | None:
    """Why the reverse-path counts as verified, or None when it does not (DESIGN.md).

    The null reverse-path is never verified (RFC 5321 §4.5.5: nothing is ever sent to it), nor is
    one the envelope parser could not read strictly: the MTA might bounce to another domain than
    the one checked. SPF counts only when it was evaluated for exactly the reverse-path's domain.
    """
    sender = envelope.sender
    if sender is None:
        return None
    if trusted is not None:
        return f"reverse-path verified: {trusted}"
    if not sender.strict or sender.domain is None:
        return None
    domain = sender.domain
    spf = report.spf
    spf_for_sender = spf.identity == "mailfrom" and spf.domain == domain
    if spf_for_sender and spf.result is Result.PASS:
        return f"reverse-path verified: SPF pass for {_safe(domain)}"
    # The same identity for both: a "none" for another domain says nothing about this envelope.
    spf_silent = spf_for_sender and spf.result in DKIM_VERIFIES_WITH_SPF
    if report.reverse_path_dkim_aligned and spf_silent:
        return (
            f"reverse-path verified: DKIM signature aligned with {_safe(domain)} "
            f"and SPF {spf.result}"
        )
    return None


def effective_policy(policy: Policy | None, testing: bool) -> Policy | None:
    """RFC 9989 ``t=y``: the domain owner asks for one step less than the published policy."""
    if policy is None or not testing:
        return policy
    return {Policy.REJECT: Policy.QUARANTINE}.get(policy, Policy.NONE)


def _decide(
    report: AuthReport, envelope: Envelope, settings: DecisionSettings, age: float | None
) -> Decision:
    trusted = trusted_client(envelope, settings.trusted_networks)
    verified_why = verification(report, envelope, trusted)
    verified = verified_why is not None
    reasons: list[str] = []

    # A message whose header section we cannot read the way its reader will is kept, not sent:
    # neither delivering what we did not check nor bouncing what we could not read is safe. This
    # comes before trust: a prepended A-R field would swallow a leading continuation line even
    # from a trusted client, letting it write inside our own header.
    if report.malformed is not None:
        reason = f"malformed message: {report.malformed}"
        return Decision(Action.QUARANTINE, Rule.MALFORMED, verified, (reason,))

    # Rule 1: authenticated or trusted clients are delivered.
    if trusted is not None:
        rule = Rule.AUTHENTICATED if envelope.sasl_user else Rule.TRUSTED_NETWORK
        return Decision(Action.DELIVER, rule, verified, (trusted,))

    dmarc = report.dmarc
    spf = report.spf
    policy = effective_policy(dmarc.policy, dmarc.testing) if dmarc is not None else None
    # "No DMARC policy" (rules 2 and 4) is something DMARC found out; a report where DMARC was
    # not evaluated (a front end that sees only the envelope) says nothing about it, so neither
    # rule 4 nor its open twin in rule 2 can apply there.
    no_policy = dmarc is not None and dmarc.policy is None

    # Rule 2: temporary DNS failure that leaves the outcome open. DMARC temperror is open unless
    # the policy (after t=y) is none: then neither pass nor fail could change the action. Its
    # policy is None when the policy itself could not be read; that is open, and stricter than
    # any policy (dmarc.check_dmarc reports the strictest open domain, rule 3).
    open_reason = None
    open_under_policy = False
    if dmarc is not None and dmarc.result is Result.TEMPERROR and policy is not Policy.NONE:
        shown = (
            f"policy {dmarc.policy}" if dmarc.policy is not None else "a policy we could not read"
        )
        if dmarc.testing and dmarc.policy is not None:
            shown += " (t=y)"
        open_reason = f"DMARC temperror for {_safe(dmarc.domain)} under {shown}"
        open_under_policy = True
    elif no_policy and spf.identity == "mailfrom" and spf.result is Result.TEMPERROR:
        open_reason = f"SPF temperror for {_safe(spf.domain)} and no DMARC policy"
    if open_reason is not None:
        if age is None or not age > settings.defer_max_age:
            return Decision(
                Action.DEFER, Rule.DEFER_TEMPERROR, verified, (open_reason,), DNS_TEMPFAIL_STATUS
            )
        if open_under_policy:
            # Deferring forever ends in the MTA's own bounce, maybe to a forged sender; delivering
            # could deliver a spoof of a domain that asked for reject or quarantine. Keep it.
            reasons.append(f"{open_reason}, and the message is older than defer_max_age")
            reasons.append("quarantined: neither a possible spoof delivered nor a bounce sent")
            rule = Rule.DEFER_MAX_AGE_QUARANTINE
            return Decision(Action.QUARANTINE, rule, verified, _with(reasons, verified_why))
        reasons.append(
            f"{open_reason}, but the message is older than defer_max_age: deciding on what we have"
        )

    # Rule 3: DMARC. A reject-class outcome keeps its status line and its two rules (rule 6).
    reject: tuple[str, Rule, Rule] | None = None
    if dmarc is not None and dmarc.result is Result.FAIL:
        domain = _safe(dmarc.domain)
        shown = f"{dmarc.policy}" + (" (t=y)" if dmarc.testing else "")
        if policy is Policy.REJECT:
            reasons.append(f"DMARC fail for {domain}, policy {shown}")
            status = DMARC_REJECT_STATUS.format(domain=domain)
            reject = (status, Rule.DMARC_REJECT, Rule.DMARC_REJECT_UNVERIFIED)
        elif policy is Policy.QUARANTINE:
            reasons.append(f"DMARC fail for {domain}, policy {shown}")
            rule = Rule.DMARC_QUARANTINE
            return Decision(Action.QUARANTINE, rule, verified, _with(reasons, verified_why))
        else:
            reasons.append(f"DMARC fail for {domain}, policy {shown}: delivering")
    elif dmarc is not None and dmarc.result is Result.PASS:
        reasons.append(f"DMARC pass for {_safe(dmarc.domain)}")

    # Rule 4: no DMARC policy, SPF fail for the MAIL FROM identity. A DKIM signature aligned
    # with the envelope domain is forwarded, intact mail: it continues, but (SPF fail) it does
    # not verify the reverse-path.
    spf_fail = spf.identity == "mailfrom" and spf.result is Result.FAIL
    if spf_fail and dmarc is None:
        domain = _safe(spf.domain)
        reasons.append(f"SPF fail for {domain}; DMARC not evaluated, so rule 4 does not apply")
    elif reject is None and no_policy and spf_fail:
        domain = _safe(spf.domain)
        if report.reverse_path_dkim_aligned:
            reasons.append(f"SPF fail for {domain}, but a DKIM signature aligned with it verifies")
        else:
            reasons.append(f"SPF fail for {domain} and no DMARC policy")
            status = SPF_REJECT_STATUS.format(domain=domain)
            reject = (status, Rule.SPF_FAIL_NO_DMARC, Rule.SPF_FAIL_NO_DMARC_UNVERIFIED)

    # Rule 6: reject-class becomes a bounce only for a verified reverse-path.
    if reject is not None:
        status, bounced, unverified = reject
        if verified:
            return Decision(Action.BOUNCE, bounced, True, _with(reasons, verified_why), status)
        why = "null reverse-path" if envelope.sender is None else "reverse-path not verified"
        reasons.append(f"would be rejected, but {why}: quarantined instead of bounced")
        return Decision(Action.QUARANTINE, unverified, False, tuple(reasons))

    # Rule 5.
    if not reasons:
        reasons.append("no authentication failure that calls for action")
    return Decision(Action.DELIVER, Rule.DELIVER, verified, _with(reasons, verified_why))


def _with(reasons: list[str], verified_why: str | None) -> tuple[str, ...]:
    return (*reasons, verified_why) if verified_why else tuple(reasons)


def _safe(domain: str | None) -> str:
    if not domain:
        return "the sender's domain"
    return _SAFE_DOMAIN.sub("?", domain.lower())[:253]
