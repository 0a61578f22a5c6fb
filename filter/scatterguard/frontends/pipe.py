"""The pipe filter's answer: what was done (:class:`~scatterguard.pipeline.Done`) → exit code and
status line.

Postfix's pipe(8) and Exim's pipe transport read the filter's exit status, and on 69 and 75 the
one line it printed: 0 when the message was delivered or quarantined, 69 (EX_UNAVAILABLE) when the
MTA is to return it to its verified sender, 75 (EX_TEMPFAIL) when the MTA is to retry it
(DESIGN.md §Contract). Nothing else, ever. The same :class:`~scatterguard.pipeline.Done` becomes
250/550/451 at SMTP time; that mapping belongs to the SMTP front ends, not here and not in the
pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from scatterguard.core.verdict import Action
from scatterguard.errors import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, TEMPFAIL_STATUS
from scatterguard.pipeline import BOUNCE_STATUS, Done


@dataclass(frozen=True)
class Outcome:
    """The exit code and, for 69 and 75, the one status line for the MTA."""

    code: int
    status: str | None = None


def answer(done: Done) -> Outcome:
    """The exit code and status line that tell the MTA what became of the message."""
    if done.action is Action.BOUNCE:
        return Outcome(EX_UNAVAILABLE, done.status or BOUNCE_STATUS)
    if done.action is Action.DEFER:
        return Outcome(EX_TEMPFAIL, done.status or TEMPFAIL_STATUS)
    return Outcome(EX_OK)
