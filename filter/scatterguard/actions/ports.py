"""The ports of the actions layer: what the pipeline and the front ends need from the world.

Each Protocol here is the whole of what its callers use, so a second implementation (a
PostgreSQL quarantine, an SMTP re-injector, a fake in a test) implements the same port:

- :class:`Reinjector`: hand a message back to the mail system
  (:class:`scatterguard.actions.reinject.CommandReinjector`);
- :class:`QuarantineStore`: keep, list, show, release, delete and purge quarantined messages
  (:class:`scatterguard.actions.quarantine.directory.Store`; the shared behaviour every backend
  must have is ``tests/test_quarantine_store.py``);
- :class:`DeliveryLedger`: the record that keeps a retry from delivering twice
  (:class:`scatterguard.actions.delivery.DeliveryRecord`; host-local by design).

Only typing is imported at run time: the pipeline imports this module on every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager
    from datetime import datetime, timedelta

    from scatterguard.actions.quarantine.entry import Entry, Metadata, Purged, Scan
    from scatterguard.core.envelope import Envelope
    from scatterguard.core.message import Payload, Spooled
    from scatterguard.core.verdict import Decision


class Reinjector(Protocol):
    """Something that takes a message back into the mail system or raises ReinjectError."""

    def __call__(self, sender: str, recipients: Sequence[str], data: Payload) -> None: ...


class QuarantineStore(Protocol):
    """Where quarantined messages are kept.

    Errors are :class:`~scatterguard.errors.QuarantineError`; an id that names no entry (or
    that has not the shape of an id, :func:`~scatterguard.actions.quarantine.entry.check_id`)
    is :class:`~scatterguard.actions.quarantine.entry.NotFound`.
    """

    def add(
        self,
        data: bytes | Spooled,
        envelope: Envelope,
        decision: Decision,
        authentication_results: str,
    ) -> str:
        """Quarantine a message the filter decided on; return its id."""
        ...

    def put(self, metadata: Metadata, data: bytes | Spooled) -> Entry:
        """Store a message durably; the same message and envelope again return the same entry."""
        ...

    def scan(self) -> Scan:
        """Every entry, oldest first, and the ids of those that could not be read."""
        ...

    def get(self, entry_id: str) -> tuple[Entry, bytes]:
        """One entry and its message bytes, checked against the stored size and digest."""
        ...

    def locked(self, entry_id: str) -> AbstractContextManager[None]:
        """Hold one entry exclusively for the block, or raise QuarantineError at once.

        A second holder is refused while the first holds it (it never waits); once the first
        has removed the entry, the second finds it gone (NotFound).
        """
        ...

    def delete(self, entry_id: str) -> None:
        """Remove one entry durably."""
        ...

    def purge(self, older_than: timedelta, now: datetime | None = None) -> Purged:
        """Remove entries received more than ``older_than`` before ``now`` (the store's clock)."""
        ...


class Claim(Protocol):
    """A held claim on one delivery: whether an earlier attempt already delivered it."""

    @property
    def done(self) -> bool: ...


ClaimT = TypeVar("ClaimT", bound=Claim)


class DeliveryLedger(Protocol[ClaimT]):
    """The record of re-injected messages, so that a retry after a crash delivers nothing twice.

    Generic in its claim: the claim a ledger hands out is the claim it takes back.
    """

    def key(self, envelope: Envelope, data: bytes | Spooled) -> str | None:
        """The record's name for this delivery, or None when it cannot be recorded."""
        ...

    def claim(self, key: str) -> AbstractContextManager[ClaimT]:
        """Hold the claim on ``key`` for the block, waiting while another process holds it."""
        ...

    def reinject(
        self,
        claim: ClaimT,
        reinjector: Reinjector,
        sender: str,
        recipients: Sequence[str],
        data: Payload,
    ) -> None:
        """Re-inject with ``reinjector`` and record the delivery under ``claim`` on success."""
        ...
