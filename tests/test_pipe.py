"""What the pipeline did, and how the pipe filter answers it: ``Done`` → 0/69/75.

The pipeline says what became of a message in no protocol's words (``pipeline.Done``); the pipe
front end alone turns that into an exit code and one status line (DESIGN.md §Contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from dnsserver import DnsServer
from scatterguard import pipeline
from scatterguard.actions.quarantine.directory import Store
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config
from scatterguard.core.envelope import parse_envelope
from scatterguard.core.message import Payload
from scatterguard.core.verdict import Action
from scatterguard.errors import TEMPFAIL_STATUS, ReinjectError
from scatterguard.frontends import pipe
from scatterguard.pipeline import Done
from test_filter import ZONE, message

AUTHSERV = "mx.rcpt.example"


class Log:
    """Keeps the one line per message."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def info(self, event: str, **values: object) -> None:
        self.lines.append(values)

    error = info


def _filter(
    tmp: Path, dns: DnsServer, sender: str, client: str, from_: str = "", *, fail: bool = False
) -> tuple[Done, Log]:
    """One message (From ``from_``, else the sender) through run_filter, re-injected by a
    function that succeeds or fails."""
    dns.records.add_text(ZONE)

    def reinject(sender: str, recipients: Sequence[str], data: Payload) -> None:
        if fail:
            raise ReinjectError("sendmail exited with status 75")

    log = Log()
    envelope = parse_envelope(sender, ["bob@rcpt.example"], client_address=client)
    done = pipeline.run_filter(
        message(from_ or sender),
        envelope,
        Config(authserv_id=AUTHSERV),
        reinjector=reinject,
        quarantine=Store(tmp / "q"),
        resolver=Resolver([(dns.host, dns.port)], timeout=0.5),
        logger=log,
    )
    return done, log


def test_what_was_done_names_the_entry(tmp_path: Path, dns_server: DnsServer) -> None:
    """A quarantined message is reported with the id of the entry the store wrote."""
    done, log = _filter(tmp_path, dns_server, "ceo@reject.example", "203.0.113.9")
    [entry] = Store(tmp_path / "q").entries()
    assert done == Done.quarantined(entry.id)
    assert log.lines[-1]["action"] == "quarantine"


def test_what_was_done_is_not_what_was_decided(tmp_path: Path, dns_server: DnsServer) -> None:
    """A delivery whose re-injection failed is reported as a deferral, with the 4.3.0 line."""
    done, log = _filter(tmp_path, dns_server, "alice@sender.example", "192.0.2.5", fail=True)
    assert done == Done.deferred(TEMPFAIL_STATUS)
    assert (log.lines[-1]["action"], log.lines[-1]["status"]) == ("defer", TEMPFAIL_STATUS)
    delivered, _ = _filter(tmp_path, dns_server, "alice@sender.example", "192.0.2.5")
    assert delivered == Done.delivered()


def test_a_bounce_is_asked_of_the_front_end(tmp_path: Path, dns_server: DnsServer) -> None:
    """A verified sender whose message fails DMARC p=reject: nothing is done, the front end is
    asked to return the message, with the decision's status."""
    done, log = _filter(
        tmp_path, dns_server, "user@verified.example", "198.51.100.7", "ceo@reject.example"
    )
    assert done.action is Action.BOUNCE
    assert str(done.status).startswith("5.7.26 ")
    assert (log.lines[-1]["action"], log.lines[-1]["status"]) == ("bounce", done.status)
    assert Store(tmp_path / "q").entries() == []


@pytest.mark.parametrize(
    ("done", "code", "status"),
    [
        pytest.param(Done.delivered(), 0, None, id="delivered"),
        pytest.param(Done.quarantined("0" * 32), 0, None, id="quarantined"),
        pytest.param(Done.bounce("5.7.26 DMARC says no"), 69, "5.7.26 DMARC says no", id="bounce"),
        pytest.param(Done.deferred("4.4.3 DNS"), 75, "4.4.3 DNS", id="deferred"),
        pytest.param(Done.deferred(), 75, TEMPFAIL_STATUS, id="deferred-default"),
        pytest.param(Done(Action.BOUNCE), 69, pipeline.BOUNCE_STATUS, id="bounce-default"),
    ],
)
def test_the_pipe_answers_what_was_done(done: Done, code: int, status: str | None) -> None:
    """The pipe front end maps each outcome to its exit code and, for 69 and 75, one line."""
    assert pipe.answer(done) == pipe.Outcome(code, status)
