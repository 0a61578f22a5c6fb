"""End to end: a resident server killed while it holds a message, through a real Postfix and Exim.

The MTA runs ``scatterguard filter``, which hands the message (its stdin, with SCM_RIGHTS) to a
worker of ``scatterguard serve``. With the DNS server silent, that worker is still checking when
the test kills it, or the whole server, with SIGKILL. Nothing may be lost and nothing done twice:
the filter defers (75), the message stays in the MTA's queue with no bounce and no quarantine
entry, and once DNS answers and a server runs again (the master's replacement worker, or a new
server on the stale socket), or none does and the filter works in-process, the retried message
is delivered exactly once.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from e2e.conftest import World
from e2e.harness import ALICE, SENDER_DOMAIN, SENDER_IP, SERVER_WORKERS, quarantine_list

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.mark.parametrize("mode", ["server"])
@pytest.mark.parametrize(
    "kill",
    [
        pytest.param("worker", id="worker-killed"),
        pytest.param("server", id="server-killed-then-new-server"),
        pytest.param("server-gone", id="server-killed-then-none"),
    ],
)
def test_server_killed_mid_message_defers_then_delivers_once(world: World, kill: str) -> None:
    """A server killed while it holds a message: the MTA keeps it queued, then delivers it once."""
    server = world.server
    assert server is not None
    # The filter logs why it defers (the hand-over broke off), and this test checks the way each
    # decision took itself.
    world.filter_may_fail = True
    world.check_path = False
    world.dns.silent = True
    data, message_id = world.signed_message([ALICE], f"killed: {kill}")
    world.send(f"news@{SENDER_DOMAIN}", [ALICE], data, SENDER_IP, f"mail.{SENDER_DOMAIN}")

    worker, client = world.wait(
        "a server worker to hold the filter's stdin", server.holder, timeout=30
    )
    if kill == "worker":
        os.kill(worker, signal.SIGKILL)
    else:
        assert worker in server.kill()

    world.wait("the filter to defer the message", world.mta.deferred_by_filter, timeout=60)
    assert len(world.mta.queue()) == 1, world.report()
    assert world.copies("alice", message_id) == []
    assert quarantine_list() == []
    world.assert_no_bounce()
    # The deferral is the filter's own (the hand-over broke off): no worker decided anything.
    assert world.filter_runs(message_id) == 0, world.report()
    [(pid, line)] = world.decisions()
    assert pid == client, world.report()
    assert "action='defer'" in line, line
    assert "HandoverError" in line, line

    world.dns.silent = False
    if kill == "worker":
        # The master saw its worker die of SIGKILL and started another one.
        world.wait(
            "the master to log the killed worker",
            lambda: [
                line
                for _, line in world.sink.events("worker-exit")
                if re.search(rf"\bpid={worker}\b", line)
                and re.search(rf"\bstatus={signal.SIGKILL.value}\b", line)
            ],
        )
        world.wait(
            "a replacement worker",
            lambda: len(server.workers()) == SERVER_WORKERS and worker not in server.workers(),
        )
    elif kill == "server":
        # A new server replaces the socket the killed one left behind.
        server.start()
    world.retry_until_delivered("alice", message_id)
    world.wait_idle("the queue to drain")

    assert len(world.copies("alice", message_id)) == 1, world.report()
    assert world.filter_runs(message_id) == 1, world.report()
    assert quarantine_list() == []
    world.assert_no_bounce()
    decided = [pid for pid, line in world.decisions() if message_id in line]
    assert len(decided) == 1, world.report()
    if kill == "server-gone":
        # A stale socket nobody answers on: the filter did the work in-process.
        assert decided[0] not in server.seen_workers, world.report()
    else:
        assert decided[0] in server.workers(), world.report()
