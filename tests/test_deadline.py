"""The SIGALRM deadline of a one-message-at-a-time process (frontends/deadline.py)."""

from __future__ import annotations

import signal
import time

import pytest

from scatterguard.errors import DeadlineExceeded
from scatterguard.frontends.deadline import deadline


def test_a_block_past_its_deadline_raises_and_the_timer_is_restored() -> None:
    """Code still running at the deadline is interrupted; the old handler comes back."""
    previous = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"0\.05s"), deadline(0.05):
        time.sleep(5)
    assert time.monotonic() - started < 2
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_block_within_its_deadline_is_left_alone() -> None:
    """A block that ends in time ends normally, and no alarm is left behind."""
    with deadline(5):
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _sleep_catching_exceptions() -> None:
    try:
        time.sleep(5)
    except Exception:  # noqa: BLE001 - what the test is about
        pytest.fail("the alarm was caught as an Exception")


def test_an_except_exception_cannot_swallow_the_deadline() -> None:
    """The alarm passes a broad ``except Exception`` inside the block: it is never lost."""
    with pytest.raises(DeadlineExceeded), deadline(0.05):
        _sleep_catching_exceptions()
