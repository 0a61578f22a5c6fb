"""End to end: mail through a real Postfix and a real Exim, each configured from hooks/.

Each scenario of issue 4 runs once per MTA and per mode, with the filter working in-process and
with a resident server it hands messages to (the ``world`` fixture is parametrized): what arrives
in a mailbox, what stays in the queue, what is quarantined, and that no bounce goes anywhere it
should not.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

from e2e.conftest import World
from e2e.harness import (
    ALICE,
    AUTHSERV_ID,
    BANK_DOMAIN,
    BOB,
    FILTER,
    FORGER_IP,
    LOCAL_IP,
    SENDER_DOMAIN,
    SENDER_IP,
    Postfix,
    header_names,
    header_values,
    is_dsn,
    mailbox,
    make_message,
    quarantine_list,
    reset_quarantine,
    scatterguard,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

FORGED_FROM = f"Your Bank <alerts@{BANK_DOMAIN}>"


def forged_message(subject: str) -> tuple[bytes, str]:
    """A message claiming to be from the p=reject bank, unsigned."""
    return make_message(from_=FORGED_FROM, to=[ALICE], subject=subject)


def wait_quarantined(world: World, count: int = 1) -> list[dict[str, object]]:
    """Wait until the quarantine holds ``count`` entries and the MTA has nothing left to do."""
    entries = world.wait(
        f"{count} quarantine entr{'y' if count == 1 else 'ies'}",
        lambda: (lambda found: found if len(found) == count else None)(quarantine_list()),
    )
    world.wait_idle("the quarantined message to leave the queue")
    return list(entries)


def test_aligned_signed_message_is_delivered_with_our_header_on_top(world: World) -> None:
    """A DKIM-signed, SPF-passing, aligned message reaches both mailboxes once, A-R on top."""
    data, message_id = world.signed_message(
        [ALICE, BOB],
        "aligned",
        extra_headers=[
            # A forgery of our own header (removed) and another host's header (kept).
            f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from={SENDER_DOMAIN}",
            f"Authentication-Results: relay.{SENDER_DOMAIN}; spf=pass",
        ],
    )
    world.send(f"news@{SENDER_DOMAIN}", [ALICE, BOB], data, SENDER_IP, f"mail.{SENDER_DOMAIN}")
    world.wait_idle("delivery")

    for user in ("alice", "bob"):
        copies = world.copies(user, message_id)
        assert len(copies) == 1, f"{user}: {len(copies)} copies\n{world.report()}"
        delivered = copies[0]
        ours = [
            v
            for v in header_values(delivered, "Authentication-Results")
            if v.startswith(f"{AUTHSERV_ID};")
        ]
        assert len(ours) == 1, ours
        assert re.search(r"\bdkim=pass\b", ours[0]), ours[0]
        assert re.search(r"\bdmarc=pass\b", ours[0]), ours[0]
        assert re.search(r"\bspf=pass\b", ours[0]), ours[0]
        names = [n.lower() for n in header_names(delivered)]
        first_ar = names.index("authentication-results")
        assert first_ar < names.index("dkim-signature"), names
        assert header_values(delivered, "Authentication-Results")[0] == ours[0]
        assert f"relay.{SENDER_DOMAIN}; spf=pass" in header_values(
            delivered, "Authentication-Results"
        )
        assert world.key.verifies(delivered), "the DKIM signature no longer verifies"
        # Postfix's flags=R adds one for the filter; re-injection must not leave a second.
        assert len(header_values(delivered, "Return-Path")) == 1, header_names(delivered)
    # Both recipients went through the filter in one run, and the re-injected copy did not.
    assert world.mta.filter_deliveries() == 2, world.report()
    assert world.filter_runs(message_id) == 1, world.report()
    world.assert_no_bounce()


def test_sender_that_looks_like_an_option_is_delivered(world: World) -> None:
    """A reverse-path such as <-f@...> is an address, not an option, all the way through."""
    data, message_id = world.signed_message([ALICE], "dash")
    sender = f"-f@{SENDER_DOMAIN}"
    with contextlib.ExitStack() as stack:
        if isinstance(world.mta, Postfix):
            # Postfix refuses such addresses at SMTP time unless told otherwise; where it is,
            # they reach the filter's command line.
            stack.enter_context(world.mta.settings(allow_min_user="yes"))
        world.send(sender, [ALICE], data, SENDER_IP, f"mail.{SENDER_DOMAIN}")
        world.wait_idle("delivery")

    [delivered] = world.copies("alice", message_id)
    assert header_values(delivered, "Return-Path") == [f"<{sender}>"]
    world.assert_no_bounce()


def test_forged_p_reject_message_is_quarantined_without_bounce(world: World) -> None:
    """A From and MAIL FROM in a p=reject domain, sent from outside its SPF, is only quarantined."""
    data, message_id = forged_message("forged")
    world.send(f"alerts@{BANK_DOMAIN}", [ALICE], data, FORGER_IP, "forger.test")

    [entry] = wait_quarantined(world)
    assert entry["sender"] == f"alerts@{BANK_DOMAIN}"
    assert entry["recipients"] == [ALICE]
    assert world.copies("alice", message_id) == []
    world.assert_no_bounce()


def test_p_reject_failure_with_verified_sender_bounces_to_it(world: World) -> None:
    """A p=reject failure whose reverse-path passed SPF comes back to that sender with 5.7.x."""
    data, message_id = forged_message("bounce me")
    world.send(BOB, [ALICE], data, LOCAL_IP, "workstation.example.net")

    dsn = world.wait(
        "a DSN in bob's mailbox",
        lambda: [m for m in mailbox("bob") if is_dsn(m)],
        timeout=60,
    )
    world.wait_idle("the bounce to be delivered")
    assert len(dsn) == 1
    text = dsn[0].decode("utf-8", "replace")
    assert re.search(r"\b5\.7\.\d{1,3}\b", text), text
    assert message_id in text, "the DSN does not return the message (or its headers)"
    assert world.copies("alice", message_id) == []
    assert quarantine_list() == []


def test_silent_dns_defers_then_delivers_exactly_once(world: World) -> None:
    """With DNS silent the message waits in the queue; once DNS answers it is delivered once."""
    world.dns.silent = True
    data, message_id = world.signed_message([ALICE], "dns outage")
    world.send(f"news@{SENDER_DOMAIN}", [ALICE], data, SENDER_IP, f"mail.{SENDER_DOMAIN}")

    world.wait(
        "the filter to defer the message",
        world.mta.deferred_by_filter,
        timeout=90,
    )
    assert len(world.mta.queue()) == 1
    assert world.copies("alice", message_id) == []
    world.assert_no_bounce()

    world.dns.silent = False
    world.retry_until_delivered("alice", message_id)
    world.wait_idle("the queue to drain")
    assert len(world.copies("alice", message_id)) == 1
    world.assert_no_bounce()


def test_unwritable_quarantine_defers_never_bounces(world: World) -> None:
    """A filter that cannot quarantine defers (never bounces) until it can quarantine again."""
    reset_quarantine(writable=False)
    world.filter_may_fail = True
    data, message_id = forged_message("nowhere to put it")
    world.send(f"alerts@{BANK_DOMAIN}", [ALICE], data, FORGER_IP, "forger.test")

    world.wait(
        "the filter to defer the message",
        world.mta.deferred_by_filter,
        timeout=60,
    )
    assert len(world.mta.queue()) == 1
    assert world.copies("alice", message_id) == []
    world.assert_no_bounce()

    # Once the quarantine works again, the next attempt quarantines the message.
    reset_quarantine()
    world.mta.flush()
    wait_quarantined(world)
    assert world.copies("alice", message_id) == []
    world.assert_no_bounce()


def test_filter_that_cannot_start_defers_never_bounces(world: World) -> None:
    """A filter program the MTA cannot execute leaves the message deferred, never bounced."""
    program = Path(os.path.realpath(FILTER))
    world.expected_problems.append(r"execvp /usr/bin/scatterguard: Permission denied")
    program.chmod(0o644)
    try:
        data, message_id = world.signed_message([ALICE], "no filter")
        world.send(f"news@{SENDER_DOMAIN}", [ALICE], data, SENDER_IP, f"mail.{SENDER_DOMAIN}")
        world.wait("the MTA to defer the message", world.mta.deferred_by_filter)
    finally:
        program.chmod(0o755)
    assert len(world.mta.queue()) == 1
    assert world.copies("alice", message_id) == []
    world.assert_no_bounce()


def test_null_sender_p_reject_failure_is_quarantined(world: World) -> None:
    """A bounce (null reverse-path) failing p=reject is quarantined: <> is never bounced."""
    data, message_id = forged_message("a bounce of sorts")
    world.send("", [ALICE], data, FORGER_IP, "forger.test")

    [entry] = wait_quarantined(world)
    assert entry["sender"] in ("", "<>")
    assert world.copies("alice", message_id) == []
    world.assert_no_bounce()


def test_released_quarantine_entry_reaches_the_mailbox(world: World) -> None:
    """`scatterguard quarantine release` hands the message back to the MTA, which delivers it."""
    data, message_id = forged_message("release me")
    world.send(f"alerts@{BANK_DOMAIN}", [ALICE], data, FORGER_IP, "forger.test")
    [entry] = wait_quarantined(world)

    scatterguard("quarantine", "release", str(entry["id"]))

    world.wait(
        "the released message in alice's mailbox",
        lambda: world.copies("alice", message_id),
        timeout=60,
    )
    world.wait_idle("the queue to drain")
    assert len(world.copies("alice", message_id)) == 1
    assert quarantine_list() == []
    # The released copy was not filtered (and quarantined) again.
    assert world.mta.filter_deliveries() == 1, world.report()
    world.assert_no_bounce()
