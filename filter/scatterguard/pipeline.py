"""Orchestration: intake → checks → decide → act, the one place that knows the order.

:func:`evaluate` is shared by ``check`` (which only explains) and ``filter`` (which acts).
:func:`run_filter` holds the filter's promise: every message ends delivered, quarantined, bounced
to a verified sender, or deferred. Every failure on the way — bad input, DNS trouble, an
unwritable quarantine, a crash in our code, the deadline — is a deferral.

What was done comes back as a :class:`Done` value, in no protocol's words: the front end answers
it in its own (the pipe filter with exit 0/69/75 and one status line,
:mod:`scatterguard.frontends.pipe`; at SMTP time 250/451/550). The collaborators (resolver,
re-injector, quarantine store, delivery record, spool, logger, clock) are built once per process
by :mod:`scatterguard.services` and passed in.
"""

from __future__ import annotations

import email.utils
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Protocol

from scatterguard.actions.ports import ClaimT, DeliveryLedger, QuarantineStore, Reinjector
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config
from scatterguard.core import authresults, verdict
from scatterguard.core.envelope import Envelope
from scatterguard.core.message import Message, Spooled
from scatterguard.core.results import AuthReport
from scatterguard.core.verdict import Action, Decision
from scatterguard.errors import (
    TEMPFAIL_STATUS,
)
from scatterguard.journal import Logger


@dataclass(frozen=True)
class Evaluation:
    """What the checks found, what was decided, and the A-R header that records it."""

    report: AuthReport
    decision: Decision
    rendered: authresults.Rendered


class Collaborators(Protocol):
    """What filtering needs besides the configuration, built once per process
    (:class:`scatterguard.services.Services`)."""

    @property
    def resolver(self) -> Resolver: ...
    @property
    def reinjector(self) -> Reinjector: ...
    @property
    def quarantine(self) -> QuarantineStore: ...
    @property
    def delivered(self) -> DeliveryLedger[Any] | None: ...
    @property
    def spool(self) -> Callable[[], Path] | None: ...
    @property
    def logger(self) -> Logger: ...
    @property
    def clock(self) -> Callable[[], float]: ...


ALREADY = "already re-injected"
BOUNCE_STATUS = "5.7.1 Message rejected by policy"


def evaluate(
    message: Message,
    envelope: Envelope,
    config: Config,
    resolver: Resolver,
    now: float,
) -> Evaluation:
    """Run the checks and decide; acts on nothing."""
    from scatterguard.checks import report as checks  # deferred: pulls in the check libraries

    report = checks.run(resolver, message, envelope, config)
    settings = verdict.DecisionSettings(config.trusted_networks, config.defer_max_age)
    decision = verdict.decide(report, envelope, settings, arrival_age(message, now))
    sender_domain = envelope.sender.domain if envelope.sender else None
    rendered = authresults.render(config.authserv_id, report, sender_domain)
    return Evaluation(report, decision, rendered)


def arrival_age(message: Message, now: float) -> float | None:
    """Seconds since our MTA received the message: the date of the topmost Received field."""
    for header in message.fields("Received"):
        value = message.value(header)
        _, semicolon, date = value.rpartition(";")
        if not semicolon:
            return None
        try:
            parsed = email.utils.parsedate_to_datetime(date.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return max(0.0, now - parsed.timestamp())
    return None


@dataclass(frozen=True)
class Done:
    """What became of one message, for the front end to answer in its own protocol.

    ``action`` is what was done, not what was decided: a delivery whose re-injection failed is
    a deferral. ``deliver``: re-injected (or found re-injected by an earlier attempt);
    ``quarantine``: kept, ``entry`` is the quarantine id; ``bounce``: nothing done, the front end
    asks for the message to be returned (the pipe to its MTA, SMTP with a 5xx reply);
    ``defer``: nothing done, the front end asks for a retry. ``status`` is, for the last two,
    the RFC 3463 enhanced status code and its text (``5.7.26 ...``, ``4.3.0 ...``).
    """

    action: Action
    status: str | None = None
    entry: str | None = None

    @classmethod
    def delivered(cls) -> Done:
        """Re-injected."""
        return cls(Action.DELIVER)

    @classmethod
    def quarantined(cls, entry: str) -> Done:
        """Kept in the quarantine under the id ``entry``."""
        return cls(Action.QUARANTINE, entry=entry)

    @classmethod
    def bounce(cls, status: str) -> Done:
        """To be returned to its (verified) sender, with this status."""
        return cls(Action.BOUNCE, status)

    @classmethod
    def deferred(cls, status: str = TEMPFAIL_STATUS) -> Done:
        """To be retried later, with this status."""
        return cls(Action.DEFER, status)


def act(
    message: Message,
    envelope: Envelope,
    evaluation: Evaluation,
    config: Config,
    reinjector: Reinjector,
    quarantine: QuarantineStore,
) -> Done:
    """Carry out the decision and say what was done. Raises on failure; the caller turns that
    into a deferral."""
    decision = evaluation.decision
    if decision.action is Action.DELIVER:
        remove = list(authresults.ours(message, config.authserv_id))
        payload = message.prepend(evaluation.rendered.field(message.linesep), remove)
        reinjector(envelope.sender_text, envelope.recipients, payload)
        return Done.delivered()
    if decision.action is Action.QUARANTINE:
        entry = quarantine.add(message.source, envelope, decision, evaluation.rendered.value)
        return Done.quarantined(entry)
    if decision.action is Action.BOUNCE and decision.reverse_path_verified:
        return Done.bounce(decision.status or BOUNCE_STATUS)
    if decision.action is Action.BOUNCE:
        # decide() never does this; if it ever did, keeping the message beats backscatter.
        entry = quarantine.add(message.source, envelope, decision, evaluation.rendered.value)
        return Done.quarantined(entry)
    return Done.deferred(decision.status or TEMPFAIL_STATUS)


def log_line(
    logger: Logger,
    message: Message | None,
    envelope: Envelope | None,
    evaluation: Evaluation | None,
    done: Done | None,
    started: float,
    error: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    note: str | None = None,
) -> None:
    """The one canonical line per message (no bodies, values escaped by the renderer).

    ``done`` is None when nothing was to be done (``check``): the action is the decision's.
    """
    values: dict[str, Any] = {"ms": round((clock() - started) * 1000)}
    if envelope is not None:
        values.update(
            queue_id=envelope.queue_id,
            sender=envelope.sender_text or "<>",
            rcpts=len(envelope.recipients),
            client=str(envelope.client_address) if envelope.client_address else None,
        )
    if message is not None:
        ids = message.values("Message-ID")
        values.update(message_id=ids[0][:200] if ids else None, size=message.size)
    if evaluation is not None:
        report = evaluation.report
        values.update(
            spf=f"{report.spf.result}",
            # None: not evaluated (AuthReport), distinct from "none".
            dkim=None
            if report.dkim is None
            else [f"{sig.domain}:{sig.result}" for sig in report.dkim] or "none",
            dmarc=None if report.dmarc is None else f"{report.dmarc.result}",
            action=str(evaluation.decision.action),
            verified=evaluation.decision.reverse_path_verified,
            reasons=list(evaluation.decision.reasons),
        )
    if done is not None and done.action in (Action.BOUNCE, Action.DEFER):
        values["status"] = done.status
        values["action"] = str(done.action)
    elif evaluation is None:
        values["action"] = "deliver"
    if error:
        values["error"] = error
    if note:
        values["note"] = note
    logger.info("message", **values)


def run_filter(
    data: bytes | Spooled,
    envelope: Envelope,
    config: Config,
    *,
    reinjector: Reinjector,
    quarantine: QuarantineStore,
    resolver: Resolver,
    logger: Logger,
    now: Callable[[], float] = time.time,
    delivered: DeliveryLedger[ClaimT] | None = None,
    confirm: Callable[[], None] | None = None,
) -> Done:
    """Filter one message whose bytes and envelope are already read; never raises.

    Returns what was done (:class:`Done`); every failure is a deferral.

    ``confirm``, when given, is called right before anything is acted on (or answered as done);
    when it raises, nothing is, and the message is deferred. The resident server confirms there
    that its client is still alive and within its deadline
    (:func:`scatterguard.frontends.handover.confirm`).
    """
    confirmed = confirm or _no_confirmation
    started = time.monotonic()
    message: Message | None = None
    evaluation: Evaluation | None = None
    try:
        message = Message(data)
        key = delivered.key(envelope, data) if delivered is not None else None
        if delivered is None or key is None:
            evaluation = evaluate(message, envelope, config, resolver, now())
            confirmed()
            done = act(message, envelope, evaluation, config, reinjector, quarantine)
        else:
            # One attempt at a time per queue file: a retry that arrives while an earlier
            # attempt (or its re-injection process) is still running waits for it.
            with delivered.claim(key) as claim:
                if claim.done:
                    # A retry of a delivery that went through before the filter was killed.
                    confirmed()
                    done = Done.delivered()
                    log_line(logger, message, envelope, None, done, started, note=ALREADY)
                    return done
                evaluation = evaluate(message, envelope, config, resolver, now())
                guarded = functools.partial(delivered.reinject, claim, reinjector)
                confirmed()
                done = act(message, envelope, evaluation, config, guarded, quarantine)
    except Exception as exc:  # noqa: BLE001 - every failure must end in a retry, never a loss
        done = Done.deferred(TEMPFAIL_STATUS)
        log_line(logger, message, envelope, evaluation, done, started, error=describe(exc))
        return done
    log_line(logger, message, envelope, evaluation, done, started)
    return done


def _no_confirmation() -> None:
    """The in-process filter is its own client: nothing to confirm."""


def describe(exc: BaseException) -> str:
    """A short, single-line description of an error for the log."""
    text = str(exc).replace("\n", " ")[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
