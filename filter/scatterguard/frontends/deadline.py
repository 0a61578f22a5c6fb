"""The SIGALRM deadline of a process that handles one message at a time.

The pipe filter keeps its own deadline below the MTA's time limit (DESIGN.md §Command line: the
MTA must never kill it first), and a worker of the resident server keeps the earlier of its
client's deadline and its own.
SIGALRM interrupts whatever runs, a DNS wait or our own code, and the block ends in
:class:`~scatterguard.errors.DeadlineExceeded`: a deferral. It is a front end's tool: a process
serving many messages at once (a milter) needs per-call timeouts instead.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from scatterguard.errors import DeadlineExceeded


class _Alarm(BaseException):
    """Raised by the deadline timer. A BaseException, so no ``except Exception`` swallows it."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise DeadlineExceeded when the block runs longer than ``seconds``."""

    def ring(_signum: int, _frame: Any) -> None:
        raise _Alarm

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Alarm:
        raise DeadlineExceeded(f"the filter's own deadline of {seconds:g}s passed") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
