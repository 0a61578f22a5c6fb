"""Release: hand a quarantined message to its recipients with its original envelope, then remove it.

The entry is held (:meth:`~scatterguard.actions.ports.QuarantineStore.locked`) from the moment it
is read until it is removed, so two releases of one entry at once deliver one copy: the second is
refused, or finds the entry gone. The entry is removed only once the re-injection succeeded; when
the removal itself fails, the message is already on its way and :class:`ReleasedNotRemoved` says
so, since a second release would deliver it twice. Works over any backend of the store port.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from scatterguard.core import authresults
from scatterguard.core.message import Message, Payload
from scatterguard.errors import QuarantineError, ReinjectError

if TYPE_CHECKING:
    from scatterguard.actions.ports import QuarantineStore, Reinjector
    from scatterguard.actions.quarantine.entry import Entry

# RFC 5322 §2.2: a header field body we prepend must be printable US-ASCII.
_HEADER_VALUE = re.compile(r"[\x20-\x7e]+\Z")


class NotReleased(QuarantineError):
    """The re-injection failed: nothing was delivered and the entry is kept."""


class ReleasedNotRemoved(QuarantineError):
    """The message was re-injected but its entry could not be removed: never release it again."""

    def __init__(self, entry_id: str, cause: QuarantineError) -> None:
        super().__init__(
            f"release {entry_id}: re-injected, but the entry could not be removed ({cause})"
        )
        self.entry_id = entry_id


def release_payload(entry: Entry, data: bytes) -> Payload:
    """What a release re-injects: the stored A-R header prepended, as a delivery would.

    A delivery removes every A-R field carrying our authserv-id and prepends ours (RFC 8601 §5);
    a release does the same with the A-R value recorded at quarantine time, so a forged
    ``dmarc=pass`` under our name never reaches the mailbox, and the recipient can still see
    what the checks found.
    """
    value = entry.metadata.authentication_results
    if not value:
        return Payload.of(data)
    if not _HEADER_VALUE.match(value):
        raise QuarantineError(f"quarantine: entry {entry.id} has an unusable A-R value")
    authserv_id, *clauses = value.split("; ")
    message = Message(data)
    rendered = authresults.Rendered(authserv_id, tuple(clauses))
    remove = list(authresults.ours(message, authserv_id))
    return message.prepend(rendered.field(message.linesep), remove)


def release(store: QuarantineStore, entry_id: str, reinjector: Reinjector) -> Entry:
    """Re-inject an entry with its original envelope and remove it; return what was released.

    Raises QuarantineError when the entry cannot be held or read (nothing was sent),
    :class:`NotReleased` when the re-injection failed (the entry is kept), and
    :class:`ReleasedNotRemoved` when it was sent but is still in the store.
    """
    with store.locked(entry_id):
        entry, data = store.get(entry_id)
        payload = release_payload(entry, data)
        meta = entry.metadata
        try:
            reinjector(meta.sender, meta.recipients, payload)
        except ReinjectError as exc:
            raise NotReleased(f"release {entry.id}: not released, entry kept: {exc}") from None
        try:
            store.delete(entry.id)
        except QuarantineError as exc:
            raise ReleasedNotRemoved(entry.id, exc) from None
    return entry
