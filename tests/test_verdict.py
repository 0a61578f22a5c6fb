"""decide(): every row of DESIGN.md §Decision and of reverse-path verification."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scatterguard.core.envelope import Address, Envelope
from scatterguard.core.results import AuthReport, DmarcResult, Policy, Result, SpfResult
from scatterguard.core.verdict import Action, DecisionSettings, Rule, decide, effective_policy
from scatterguard.errors import DMARC_REJECT_STATUS, DNS_TEMPFAIL_STATUS, TEMPFAIL_STATUS

SETTINGS = DecisionSettings(
    trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),), defer_max_age=4 * 3600
)
SENDER = Address("alice@sender.example", "alice", "sender.example")


def envelope(
    sender: Address | None = SENDER, client: str = "198.51.100.7", sasl: str | None = None
) -> Envelope:
    return Envelope(
        sender=sender,
        recipients=("bob@rcpt.example",),
        client_address=ipaddress.ip_address(client),
        helo="mx.sender.example",
        sasl_user=sasl,
    )


def report(
    spf: str = "none",
    dmarc: str = "none",
    policy: str | None = None,
    testing: bool = False,
    dkim_rp: bool = False,
) -> AuthReport:
    return AuthReport(
        spf=SpfResult(Result(spf), "mailfrom", "sender.example"),
        dkim=(),
        dmarc=DmarcResult(
            Result(dmarc), "from.example", Policy(policy) if policy else None, testing=testing
        ),
        reverse_path_dkim_aligned=dkim_rp,
    )


@pytest.mark.parametrize(
    ("rep", "env", "age", "action", "verified", "rule"),
    [
        pytest.param(
            report(spf="fail", dmarc="fail", policy="reject"),
            envelope(sasl="alice"),
            None,
            Action.DELIVER,
            True,
            Rule.AUTHENTICATED,
            id="rule1-sasl-delivers-and-verifies",
        ),
        pytest.param(
            report(spf="fail", dmarc="fail", policy="reject"),
            envelope(client="10.1.2.3"),
            None,
            Action.DELIVER,
            True,
            Rule.TRUSTED_NETWORK,
            id="rule1-trusted-network-delivers",
        ),
        pytest.param(
            report(dmarc="temperror", policy="reject"),
            envelope(),
            60.0,
            Action.DEFER,
            False,
            Rule.DEFER_TEMPERROR,
            id="rule2-dmarc-temperror-defers",
        ),
        pytest.param(
            report(dmarc="temperror", policy=None),
            envelope(),
            None,
            Action.DEFER,
            False,
            Rule.DEFER_TEMPERROR,
            id="rule2-dmarc-discovery-temperror-defers",
        ),
        pytest.param(
            report(spf="temperror"),
            envelope(),
            60.0,
            Action.DEFER,
            False,
            Rule.DEFER_TEMPERROR,
            id="rule2-no-policy-spf-temperror-defers",
        ),
        pytest.param(
            report(spf="temperror", dmarc="pass", policy="reject"),
            envelope(),
            60.0,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule2-spf-temperror-with-dmarc-pass-delivers",
        ),
        pytest.param(
            report(dmarc="temperror", policy="none"),
            envelope(),
            60.0,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule2-temperror-under-p-none-is-not-open",
        ),
        pytest.param(
            report(spf="temperror"),
            envelope(),
            5 * 3600.0,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule2-past-defer-max-age-decides",
        ),
        pytest.param(
            report(dmarc="temperror", policy="reject"),
            envelope(),
            5 * 3600.0,
            Action.QUARANTINE,
            False,
            Rule.DEFER_MAX_AGE_QUARANTINE,
            id="rule2-open-p-reject-past-max-age-quarantines",
        ),
        pytest.param(
            report(spf="pass", dmarc="temperror", policy="quarantine"),
            envelope(),
            5 * 3600.0,
            Action.QUARANTINE,
            True,
            Rule.DEFER_MAX_AGE_QUARANTINE,
            id="rule2-open-p-quarantine-past-max-age-quarantines",
        ),
        pytest.param(
            report(dmarc="temperror", policy=None),
            envelope(),
            5 * 3600.0,
            Action.QUARANTINE,
            False,
            Rule.DEFER_MAX_AGE_QUARANTINE,
            id="rule2-open-unread-policy-past-max-age-quarantines",
        ),
        pytest.param(
            report(dmarc="temperror", policy="reject", testing=True),
            envelope(),
            5 * 3600.0,
            Action.QUARANTINE,
            False,
            Rule.DEFER_MAX_AGE_QUARANTINE,
            id="rule2-open-p-reject-t-y-past-max-age-quarantines",
        ),
        pytest.param(
            report(dmarc="temperror", policy="quarantine", testing=True),
            envelope(),
            60.0,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule2-open-under-effective-none-is-not-open",
        ),
        pytest.param(
            report(spf="temperror", dmarc="permerror"),
            envelope(),
            5 * 3600.0,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule2-spf-temperror-no-from-past-max-age-decides",
        ),
        pytest.param(
            report(spf="pass", dmarc="fail", policy="reject"),
            envelope(),
            None,
            Action.BOUNCE,
            True,
            Rule.DMARC_REJECT,
            id="rule3-reject-verified-bounces",
        ),
        pytest.param(
            report(spf="softfail", dmarc="fail", policy="reject"),
            envelope(),
            None,
            Action.QUARANTINE,
            False,
            Rule.DMARC_REJECT_UNVERIFIED,
            id="rule3-reject-unverified-quarantines",
        ),
        pytest.param(
            report(spf="pass", dmarc="fail", policy="quarantine"),
            envelope(),
            None,
            Action.QUARANTINE,
            True,
            Rule.DMARC_QUARANTINE,
            id="rule3-quarantine-policy",
        ),
        pytest.param(
            report(spf="fail", dmarc="fail", policy="none"),
            envelope(),
            None,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule3-p-none-continues",
        ),
        pytest.param(
            report(spf="pass", dmarc="fail", policy="reject", testing=True),
            envelope(),
            None,
            Action.QUARANTINE,
            True,
            Rule.DMARC_QUARANTINE,
            id="rule3-t-y-reject-becomes-quarantine",
        ),
        pytest.param(
            report(spf="pass", dmarc="fail", policy="quarantine", testing=True),
            envelope(),
            None,
            Action.DELIVER,
            True,
            Rule.DELIVER,
            id="rule3-t-y-quarantine-becomes-none",
        ),
        pytest.param(
            report(spf="pass", dmarc="pass", policy="reject"),
            envelope(),
            None,
            Action.DELIVER,
            True,
            Rule.DELIVER,
            id="rule3-pass-delivers",
        ),
        pytest.param(
            report(spf="fail"),
            envelope(),
            None,
            Action.QUARANTINE,
            False,
            Rule.SPF_FAIL_NO_DMARC_UNVERIFIED,
            id="rule4-spf-fail-unverified-quarantines",
        ),
        pytest.param(
            report(spf="fail", dkim_rp=True),
            envelope(),
            None,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule4-spf-fail-with-aligned-dkim-continues-unverified",
        ),
        pytest.param(
            report(spf="fail", dmarc="permerror"),
            envelope(),
            None,
            Action.QUARANTINE,
            False,
            Rule.SPF_FAIL_NO_DMARC_UNVERIFIED,
            id="rule4-applies-without-usable-from",
        ),
        pytest.param(
            report(spf="softfail"),
            envelope(),
            None,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule4-softfail-continues",
        ),
        pytest.param(
            report(spf="neutral"),
            envelope(),
            None,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule4-neutral-continues",
        ),
        pytest.param(
            report(spf="permerror"),
            envelope(),
            None,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule4-permerror-continues",
        ),
        pytest.param(
            report(spf="none"),
            envelope(),
            None,
            Action.DELIVER,
            False,
            Rule.DELIVER,
            id="rule5-nothing-delivers",
        ),
        pytest.param(
            report(spf="pass", dmarc="fail", policy="reject"),
            envelope(sender=None),
            None,
            Action.QUARANTINE,
            False,
            Rule.DMARC_REJECT_UNVERIFIED,
            id="rule6-null-sender-never-bounced",
        ),
        pytest.param(
            report(spf="none", dmarc="fail", policy="reject", dkim_rp=True),
            envelope(),
            None,
            Action.BOUNCE,
            True,
            Rule.DMARC_REJECT,
            id="rule6-dkim-aligned-spf-none-bounces",
        ),
        pytest.param(
            report(spf="neutral", dmarc="fail", policy="reject", dkim_rp=True),
            envelope(),
            None,
            Action.BOUNCE,
            True,
            Rule.DMARC_REJECT,
            id="rule6-dkim-aligned-spf-neutral-bounces",
        ),
        *(
            pytest.param(
                report(spf=word, dmarc="fail", policy="reject", dkim_rp=True),
                envelope(),
                None,
                Action.QUARANTINE,
                False,
                Rule.DMARC_REJECT_UNVERIFIED,
                id=f"rule6-dkim-replay-spf-{word}-not-verified",
            )
            for word in ("fail", "softfail", "temperror", "permerror")
        ),
        pytest.param(
            report(spf="pass", dmarc="fail", policy="reject", dkim_rp=True),
            envelope(sender=Address("a@b@sender.example", "a@b", "sender.example", strict=False)),
            None,
            Action.QUARANTINE,
            False,
            Rule.DMARC_REJECT_UNVERIFIED,
            id="rule6-non-strict-reverse-path-never-verified",
        ),
        pytest.param(
            AuthReport(
                spf=SpfResult(Result.PASS, "mailfrom", "other.example"),
                dkim=(),
                dmarc=DmarcResult(Result.FAIL, "from.example", Policy.REJECT),
            ),
            envelope(),
            None,
            Action.QUARANTINE,
            False,
            Rule.DMARC_REJECT_UNVERIFIED,
            id="rule6-spf-pass-for-another-domain-does-not-verify",
        ),
        pytest.param(
            AuthReport(
                spf=SpfResult(Result.NONE, "mailfrom", "other.example"),
                dkim=(),
                dmarc=DmarcResult(Result.FAIL, "from.example", Policy.REJECT),
                reverse_path_dkim_aligned=True,
            ),
            envelope(),
            None,
            Action.QUARANTINE,
            False,
            Rule.DMARC_REJECT_UNVERIFIED,
            id="rule6-spf-none-for-another-domain-lets-no-dkim-signature-verify",
        ),
        pytest.param(
            report(spf="fail", dkim_rp=False),
            envelope(sender=None),
            None,
            Action.QUARANTINE,
            False,
            Rule.SPF_FAIL_NO_DMARC_UNVERIFIED,
            id="rule6-null-sender-spf-fail-quarantined",
        ),
    ],
)
def test_decision_table(
    rep: AuthReport, env: Envelope, age: float | None, action: Action, verified: bool, rule: Rule
) -> None:
    """Each row of the decision table gives its action, verification and rule."""
    decision = decide(rep, env, SETTINGS, age)
    assert decision.action is action, decision.reasons
    assert decision.rule is rule, decision.reasons
    assert decision.reverse_path_verified is verified
    assert decision.reasons
    if action is Action.BOUNCE:
        assert decision.status is not None
        assert decision.status.startswith("5.7.")
    if action is Action.DEFER:
        assert decision.status is not None
        assert decision.status.startswith("4.")


@pytest.mark.parametrize(
    ("rep", "code"),
    [
        pytest.param(
            report(spf="pass", dmarc="fail", policy="reject"), "5.7.26", id="dmarc-5.7.26"
        ),
        pytest.param(
            report(spf="neutral", dkim_rp=True, dmarc="fail", policy="reject"),
            "5.7.26",
            id="dmarc-first",
        ),
    ],
)
def test_bounce_status_codes(rep: AuthReport, code: str) -> None:
    """Bounces carry the RFC 7372 code of the failing mechanism."""
    decision = decide(rep, envelope(), SETTINGS)
    assert decision.status is not None
    assert decision.status.split()[0] == code


@pytest.mark.parametrize(
    ("env", "action"),
    [
        pytest.param(envelope(), Action.QUARANTINE, id="untrusted-quarantined"),
        pytest.param(envelope(sasl="alice"), Action.QUARANTINE, id="trusted-quarantined-too"),
    ],
)
def test_malformed_messages_are_kept(env: Envelope, action: Action) -> None:
    """An ambiguous header section is quarantined, even from a trusted client."""
    rep = AuthReport(
        spf=SpfResult(Result.PASS, "mailfrom", "sender.example"),
        dkim=(),
        dmarc=DmarcResult(Result.FAIL, "from.example", Policy.REJECT),
        malformed="the message starts with a continuation line",
    )
    decision = decide(rep, env, SETTINGS)
    assert decision.action is action
    assert decision.rule is Rule.MALFORMED
    if action is Action.QUARANTINE:
        assert "malformed" in decision.reasons[0]


def test_internal_error_defers_with_the_one_filter_failure_status() -> None:
    """A bug inside decide() defers, with the same 4.3.0 line as every other failure of ours."""
    broken = AuthReport(spf=None, dkim=(), dmarc=None)  # type: ignore[arg-type]
    decision = decide(broken, envelope(), SETTINGS)
    assert (decision.action, decision.rule) == (Action.DEFER, Rule.INTERNAL_ERROR)
    assert decision.status == TEMPFAIL_STATUS


def test_status_lines_come_from_the_one_table() -> None:
    """Bounce and DNS deferral lines are the texts of errors.py, with the domain filled in."""
    bounce = decide(report(spf="pass", dmarc="fail", policy="reject"), envelope(), SETTINGS)
    assert bounce.status == DMARC_REJECT_STATUS.format(domain="from.example")
    defer = decide(report(spf="temperror"), envelope(), SETTINGS, 60.0)
    assert defer.status == DNS_TEMPFAIL_STATUS


def test_rule_values_are_stable_labels() -> None:
    """Rule values are distinct lower-case words joined by underscores (JSON and metric labels)."""
    values = [rule.value for rule in Rule]
    assert len(set(values)) == len(values)
    assert all(re.fullmatch(r"[a-z]+(?:_[a-z]+)*", value) for value in values)
    assert all(str(rule) == rule.value for rule in Rule)


def not_evaluated(spf: str) -> AuthReport:
    """What a front end that sees only the envelope reports: SPF, and no DKIM or DMARC at all."""
    return AuthReport(
        spf=SpfResult(Result(spf), "mailfrom", "sender.example"), dkim=None, dmarc=None
    )


def test_rule4_does_not_fire_when_dmarc_was_not_evaluated() -> None:
    """SPF fail is reject-class only with no DMARC policy found; not evaluated is not "none"."""
    found_none = decide(report(spf="fail", dmarc="none"), envelope(), SETTINGS)
    assert found_none.rule is Rule.SPF_FAIL_NO_DMARC_UNVERIFIED
    decision = decide(not_evaluated("fail"), envelope(), SETTINGS)
    assert (decision.action, decision.rule) == (Action.DELIVER, Rule.DELIVER), decision.reasons
    assert decision.status is None
    assert any("DMARC not evaluated" in reason for reason in decision.reasons)


def test_spf_temperror_is_not_open_when_dmarc_was_not_evaluated() -> None:
    """Rule 2's SPF branch is rule 4's twin: without a DMARC finding nothing is left open."""
    assert decide(report(spf="temperror"), envelope(), SETTINGS, 60.0).action is Action.DEFER
    decision = decide(not_evaluated("temperror"), envelope(), SETTINGS, 60.0)
    assert (decision.action, decision.rule) == (Action.DELIVER, Rule.DELIVER)


@given(
    spf=st.sampled_from(list(Result)),
    null_sender=st.booleans(),
    age=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_not_evaluated_never_decides_on_dmarc_or_its_absence(
    spf: Result, null_sender: bool, age: float | None
) -> None:
    """Without DKIM and DMARC evaluated, no SPF result makes a message reject-class or open."""
    report_ = AuthReport(spf=SpfResult(spf, "mailfrom", "sender.example"), dkim=None, dmarc=None)
    decision = decide(report_, envelope(sender=None if null_sender else SENDER), SETTINGS, age)
    assert (decision.action, decision.rule) == (Action.DELIVER, Rule.DELIVER)


def test_spf_fail_alone_never_bounces() -> None:
    """SPF fail cannot bounce: it excludes SPF pass, and aligned DKIM or trust stop rule 4 first."""
    decision = decide(report(spf="fail"), envelope(), SETTINGS)
    assert decision.action is Action.QUARANTINE
    assert any("SPF fail" in reason for reason in decision.reasons)


def test_status_line_never_carries_foreign_characters() -> None:
    """A hostile From domain cannot put line breaks or markup into the MTA status line."""
    rep = AuthReport(
        spf=SpfResult(Result.PASS, "mailfrom", "sender.example"),
        dkim=(),
        dmarc=DmarcResult(Result.FAIL, "evil.example\r\n5.0.0 <b>", Policy.REJECT),
    )
    decision = decide(rep, envelope(), SETTINGS)
    assert decision.action is Action.BOUNCE
    assert decision.status is not None
    assert not set("\r\n<>") & set(decision.status)


@pytest.mark.parametrize(
    ("policy", "testing", "expected"),
    [
        pytest.param(Policy.REJECT, False, Policy.REJECT, id="reject"),
        pytest.param(Policy.REJECT, True, Policy.QUARANTINE, id="reject-t"),
        pytest.param(Policy.QUARANTINE, True, Policy.NONE, id="quarantine-t"),
        pytest.param(Policy.NONE, True, Policy.NONE, id="none-t"),
        pytest.param(None, True, None, id="no-policy"),
    ],
)
def test_effective_policy(policy: Policy | None, testing: bool, expected: Policy | None) -> None:
    """t=y lowers the policy by one step."""
    assert effective_policy(policy, testing) is expected


# The rules that may settle each action: a bounce only ever comes from a reject-class rule.
RULES_OF = {
    Action.DELIVER: {Rule.AUTHENTICATED, Rule.TRUSTED_NETWORK, Rule.DELIVER},
    Action.BOUNCE: {Rule.DMARC_REJECT, Rule.SPF_FAIL_NO_DMARC},
    Action.DEFER: {Rule.DEFER_TEMPERROR, Rule.INTERNAL_ERROR},
    Action.QUARANTINE: {
        Rule.MALFORMED,
        Rule.DEFER_MAX_AGE_QUARANTINE,
        Rule.DMARC_QUARANTINE,
        Rule.DMARC_REJECT_UNVERIFIED,
        Rule.SPF_FAIL_NO_DMARC_UNVERIFIED,
    },
}
results = st.sampled_from(list(Result))
policies = st.none() | st.sampled_from(list(Policy))
domains = st.none() | st.just("sender.example") | st.text(max_size=30)


@given(
    spf=results,
    spf_identity=st.sampled_from(["mailfrom", "helo"]),
    dmarc=results,
    policy=policies,
    testing=st.booleans(),
    domain=domains,
    dkim_rp=st.booleans(),
    null_sender=st.booleans(),
    sasl=st.none() | st.text(max_size=5),
    age=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_decide_never_raises(
    spf: Result,
    spf_identity: str,
    dmarc: Result,
    policy: Policy | None,
    testing: bool,
    domain: str | None,
    dkim_rp: bool,
    null_sender: bool,
    sasl: str | None,
    age: float | None,
) -> None:
    """decide() is total: any combination of results gives a decision, and bounces are verified."""
    rep = AuthReport(
        spf=SpfResult(spf, spf_identity, domain),
        dkim=(),
        dmarc=DmarcResult(dmarc, domain, policy, testing=testing),
        reverse_path_dkim_aligned=dkim_rp,
    )
    env = envelope(sender=None if null_sender else SENDER, sasl=sasl)
    decision = decide(rep, env, SETTINGS, age)
    assert isinstance(decision.action, Action)
    assert decision.rule in RULES_OF[decision.action]
    if decision.action is Action.BOUNCE:
        assert decision.reverse_path_verified
        assert not null_sender
    if null_sender:
        assert not decision.reverse_path_verified
    # DESIGN.md §verification: without trust, only SPF pass, or DKIM with SPF none/neutral.
    if decision.reverse_path_verified and not sasl:
        assert spf_identity == "mailfrom"
        by_spf = spf is Result.PASS and domain == SENDER.domain
        assert by_spf or (dkim_rp and spf in (Result.NONE, Result.NEUTRAL))
    # Rule 2: an outcome open under reject, quarantine or an unread policy is never delivered
    # (nor bounced) to anyone but a trusted client: deferred, or past defer_max_age kept.
    effective = effective_policy(policy, testing)
    if dmarc is Result.TEMPERROR and effective is not Policy.NONE and not sasl:
        assert decision.action in (Action.DEFER, Action.QUARANTINE)
