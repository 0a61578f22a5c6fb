"""What ``scatterguard check`` prints: the ``--json`` document and its text form for a terminal.

:func:`document` builds the JSON object of DESIGN.md §Command line from the report, the decision
and our A-R field; :func:`text` renders that object for a person. Both are pure: the caller runs
the checks and decides, and writes the result where it belongs.
"""

from __future__ import annotations

import enum
from typing import Any

from scatterguard.core.authresults import Rendered
from scatterguard.core.results import AuthReport, DmarcResult
from scatterguard.core.terminal import printable
from scatterguard.core.verdict import Decision


def document(report: AuthReport, decision: Decision, rendered: Rendered) -> dict[str, Any]:
    """The JSON object of ``check --json`` (DESIGN.md §Contract, plus ``rule`` and causes).

    A check that was not evaluated is ``null`` (DKIM: ``[]`` is "no signature").
    """
    spf = report.spf
    found: dict[str, Any] = {
        "action": decision.action.value,
        "rule": decision.rule.value,
        "reverse_path_verified": decision.reverse_path_verified,
        "reasons": list(decision.reasons),
        "spf": {
            "result": spf.result.value,
            "domain": spf.domain,
            "identity": spf.identity,
            "reason": spf.reason,
            "cause": _value(spf.cause),
        },
        "dkim": None
        if report.dkim is None
        else [
            {
                "domain": sig.domain,
                "selector": sig.selector,
                "algorithm": sig.algorithm,
                "result": sig.result.value,
                "covers_body": sig.covers_body,
                "reason": sig.reason,
                "cause": _value(sig.cause),
            }
            for sig in report.dkim
        ],
        "dmarc": None if report.dmarc is None else _dmarc(report.dmarc),
        "authentication_results": rendered.value,
    }
    if decision.status:
        found["status"] = decision.status
    return found


def _dmarc(dmarc: DmarcResult) -> dict[str, Any]:
    return {
        "result": dmarc.result.value,
        "domain": dmarc.domain,
        "policy": _value(dmarc.policy),
        "testing": dmarc.testing,
        "reason": dmarc.reason,
        "cause": _value(dmarc.cause),
        "domains": [
            {
                "domain": item.domain,
                "result": item.result.value,
                "policy": _value(item.policy),
                "organizational_domain": item.organizational_domain,
                "spf_aligned": item.spf_aligned,
                "dkim_aligned": item.dkim_aligned,
                "cause": _value(item.cause),
            }
            for item in dmarc.per_domain
        ],
    }


def text(found: dict[str, Any]) -> str:
    """A readable summary of a :func:`document`, for a person at a terminal."""
    lines = [f"action:   {found['action']}", f"rule:     {found['rule']}"]
    if found.get("status"):
        lines.append(f"status:   {found['status']}")
    lines.append(f"verified: {'yes' if found['reverse_path_verified'] else 'no'} (reverse-path)")
    spf = found["spf"]
    lines.append(f"SPF:      {spf['result']} ({spf['identity']} {spf['domain'] or '-'})")
    signatures = found["dkim"]
    if signatures is None:
        lines.append("DKIM:     not evaluated")
    elif not signatures:
        lines.append("DKIM:     none (no signature)")
    for sig in signatures or ():
        extra = "" if sig["covers_body"] else ", l= leaves body unsigned"
        lines.append(
            f"DKIM:     {sig['result']} (d={sig['domain']} s={sig['selector']}"
            f" a={sig['algorithm']}{extra})"
        )
    dmarc = found["dmarc"]
    if dmarc is None:
        lines.append("DMARC:    not evaluated")
    else:
        lines.append(
            f"DMARC:    {dmarc['result']} (From {dmarc['domain'] or '-'}, policy "
            f"{dmarc['policy'] or 'none published'}{', t=y' if dmarc['testing'] else ''})"
        )
    lines.append("reasons:")
    lines.extend(f"  - {reason}" for reason in found["reasons"])
    lines.append(f"Authentication-Results: {found['authentication_results']}")
    return "\n".join(printable(line) for line in lines) + "\n"


def _value(word: enum.Enum | None) -> Any:
    return None if word is None else word.value
