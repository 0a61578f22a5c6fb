"""core.explain: the ``check --json`` document and its text form, built from values only."""

from __future__ import annotations

import json

from scatterguard.core.authresults import Rendered
from scatterguard.core.explain import document, text
from scatterguard.core.results import (
    AuthReport,
    DkimCause,
    DkimResult,
    DmarcCause,
    DmarcDomainResult,
    DmarcResult,
    Policy,
    Result,
    SpfResult,
)
from scatterguard.core.verdict import Action, Decision, Rule

RENDERED = Rendered("mx.rcpt.example", ("spf=pass smtp.mailfrom=sender.example",))
REPORT = AuthReport(
    spf=SpfResult(Result.PASS, "mailfrom", "sender.example", "matched ip4"),
    dkim=(
        DkimResult(
            Result.FAIL,
            "sender.example",
            "s1",
            "rsa-sha256",
            "body hash did not verify",
            cause=DkimCause.BODY_HASH,
        ),
    ),
    dmarc=DmarcResult(
        Result.FAIL,
        "from.example",
        Policy.REJECT,
        per_domain=(DmarcDomainResult(Result.FAIL, "from.example", Policy.REJECT),),
        reason="from.example: no aligned SPF or DKIM pass",
    ),
)
BOUNCE = Decision(
    Action.BOUNCE,
    Rule.DMARC_REJECT,
    True,
    ("DMARC fail for from.example, policy reject",),
    "5.7.26 DMARC policy of from.example rejects unauthenticated mail",
)


def test_document_has_the_contract_keys_and_the_rule() -> None:
    """The object carries DESIGN.md's keys, the rule beside the reasons, and each check's cause."""
    found = document(REPORT, BOUNCE, RENDERED)
    assert list(found) == [
        "action",
        "rule",
        "reverse_path_verified",
        "reasons",
        "spf",
        "dkim",
        "dmarc",
        "authentication_results",
        "status",
    ]
    assert (found["action"], found["rule"]) == ("bounce", "dmarc_reject")
    assert found["spf"] == {
        "result": "pass",
        "domain": "sender.example",
        "identity": "mailfrom",
        "reason": "matched ip4",
        "cause": None,
    }
    assert [(sig["result"], sig["cause"]) for sig in found["dkim"]] == [("fail", "body_hash")]
    assert (found["dmarc"]["result"], found["dmarc"]["policy"]) == ("fail", "reject")
    assert found["dmarc"]["domains"][0]["cause"] is None
    assert found["authentication_results"] == RENDERED.value
    assert found["status"].startswith("5.7.26 ")
    json.dumps(found)  # plain JSON values only


def test_document_without_status_and_with_a_dmarc_cause() -> None:
    """A delivery has no status member; a DMARC cause is shown by its stable value."""
    report = AuthReport(
        spf=REPORT.spf,
        dkim=(),
        dmarc=DmarcResult(Result.PERMERROR, None, None, cause=DmarcCause.NO_FROM_FIELD),
    )
    decision = Decision(Action.DELIVER, Rule.DELIVER, True, ("nothing to act on",))
    found = document(report, decision, RENDERED)
    assert "status" not in found
    assert (found["dkim"], found["dmarc"]["cause"]) == ([], "no_from_field")


def test_not_evaluated_is_null_not_none() -> None:
    """DKIM and DMARC that were not evaluated are null in JSON and "not evaluated" as text."""
    report = AuthReport(spf=REPORT.spf, dkim=None, dmarc=None)
    decision = Decision(Action.DELIVER, Rule.DELIVER, True, ("nothing to act on",))
    found = document(report, decision, RENDERED)
    assert (found["dkim"], found["dmarc"]) == (None, None)
    shown = text(found)
    assert "DKIM:     not evaluated" in shown
    assert "DMARC:    not evaluated" in shown
    assert "none (no signature)" not in shown


def test_text_names_the_rule_and_escapes_what_a_terminal_would_act_on() -> None:
    """The text form shows action, rule and status, and no raw control character."""
    decision = Decision(
        Action.QUARANTINE, Rule.DMARC_REJECT_UNVERIFIED, False, ("evil\x1b[2J reason",)
    )
    shown = text(document(REPORT, decision, RENDERED))
    assert shown.splitlines()[:2] == ["action:   quarantine", "rule:     dmarc_reject_unverified"]
    assert "\x1b" not in shown
    assert "evil\\x1b[2J reason" in shown
    assert "DKIM:     fail (d=sender.example s=s1 a=rsa-sha256)" in shown
