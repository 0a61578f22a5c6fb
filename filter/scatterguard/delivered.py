"""The record of messages already re-injected, so that a retry after a crash delivers nothing twice.

The MTA retries a message whenever the filter does not exit 0, including when the filter is
killed after the re-injection command accepted the message but before the filter exited. To keep
such a retry from delivering a second copy, a marker named after the message is written right
after a successful re-injection, and a retry that finds it exits 0 at once.

A marker's name is a digest of the queue id, the envelope and the message bytes: the same
delivery attempt of the same queue file, never a different message (a message without a queue id
is never recorded). Markers live in hourly directories under ``<quarantine.directory>/delivered``
and are dropped after ``KEEP_HOURS``, well past any retry of a message the MTA still holds for a
killed filter (those retries come within minutes). Markers are not fsynced: they guard against a
killed process, whose writes the kernel keeps, not against a power failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from scatterguard.envelope import Envelope

KEEP_HOURS = 48


class DeliveryRecord:
    """Markers of re-injected messages under one directory."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.clock = clock

    @staticmethod
    def key(envelope: Envelope, data: bytes) -> str | None:
        """The marker name for this delivery, or None when the MTA gave no queue id."""
        if not envelope.queue_id:
            return None
        document = json.dumps(
            [
                "delivered-1",
                envelope.queue_id,
                envelope.sender_text,
                list(envelope.recipients),
                hashlib.sha256(data).hexdigest(),
            ]
        )
        return hashlib.sha256(document.encode("utf-8")).hexdigest()[:40]

    def seen(self, key: str) -> bool:
        """True when a marker for ``key`` was written in the last KEEP_HOURS hours."""
        now = self.clock()
        return any(
            (self.directory / _hour(now - hours * 3600) / key).exists()
            for hours in range(KEEP_HOURS + 1)
        )

    def note(self, key: str) -> None:
        """Write the marker; a failure is ignored (the message is delivered, deferring now
        would be what delivers it twice)."""
        hour = self.directory / _hour(self.clock())
        try:
            if not hour.is_dir():
                hour.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._prune()
            with open(hour / key, "x"):
                pass
        except OSError:
            return

    def _prune(self) -> None:
        oldest = _hour(self.clock() - KEEP_HOURS * 3600)
        for entry in os.scandir(self.directory):
            if entry.is_dir(follow_symlinks=False) and entry.name < oldest:
                shutil.rmtree(entry.path, ignore_errors=True)


def _hour(moment: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(moment))
