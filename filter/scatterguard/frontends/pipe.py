"""The pipe filter: read one message as the MTA hands it over, filter it, answer in exit codes.

:func:`filter_stream` reads the message (argv or BSMTP, :mod:`scatterguard.frontends.intake`)
and its envelope (:class:`~scatterguard.frontends.request.FilterRequest`) and runs
:func:`scatterguard.pipeline.run_filter`; the in-process filter and the resident server's
workers both come through it. :func:`answer` turns what was done
(:class:`~scatterguard.pipeline.Done`) into the exit code and status line.

Postfix's pipe(8) and Exim's pipe transport read the filter's exit status, and on 69 and 75 the
one line it printed: 0 when the message was delivered or quarantined, 69 (EX_UNAVAILABLE) when the
MTA is to return it to its verified sender, 75 (EX_TEMPFAIL) when the MTA is to retry it
(DESIGN.md §Contract). Nothing else, ever. The same :class:`~scatterguard.pipeline.Done` becomes
250/550/451 at SMTP time; that mapping belongs to the SMTP front ends, not here and not in the
pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from scatterguard.core.verdict import Action
from scatterguard.errors import (
    EX_OK,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    TEMPFAIL_STATUS,
    ScatterguardError,
)
from scatterguard.pipeline import (
    BOUNCE_STATUS,
    Collaborators,
    Done,
    describe,
    log_line,
    run_filter,
)

if TYPE_CHECKING:
    from scatterguard.config import Config
    from scatterguard.core.message import Spooled
    from scatterguard.frontends.request import FilterRequest


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


def filter_stream(
    request: FilterRequest,
    stdin: BinaryIO,
    config: Config,
    *,
    services: Collaborators,
    confirm: Callable[[], None] | None = None,
) -> Done:
    """Read one message as the MTA hands it over (argv or BSMTP) and filter it; never raises.

    The in-process filter and the resident server's workers both come through here, so they run
    exactly the same code, with collaborators built once per process (``services``).
    """
    from scatterguard.actions import spool
    from scatterguard.frontends import intake

    started = time.monotonic()
    logger = services.logger
    data: bytes | Spooled | None = None
    try:
        # A large message is spooled in the state directory (see scatterguard.actions.spool).
        if request.bsmtp:
            batch = intake.read_bsmtp(stdin, services.spool)
            data = batch.data
            request = request.from_bsmtp(batch.sender, batch.recipients)
        else:
            data = intake.read_message(stdin, services.spool)
        envelope = request.envelope()
    except ScatterguardError as exc:
        spool.close(data)
        done = Done.deferred(TEMPFAIL_STATUS)
        log_line(logger, None, None, None, done, started, describe(exc))
        return done
    except BaseException:
        spool.close(data)
        raise
    try:
        return run_filter(
            data,
            envelope,
            config,
            reinjector=services.reinjector,
            quarantine=services.quarantine,
            resolver=services.resolver,
            logger=logger,
            now=services.clock,
            delivered=services.delivered,
            confirm=confirm,
        )
    finally:
        spool.close(data)
