"""A quarantine entry: its metadata, its id, and the record every backend stores it as.

The record is one JSON object (:func:`to_record`, :func:`from_record`): the envelope (``sender``
is ``""`` for the null reverse-path), the client address, HELO, queue id, the decision and its
reasons, the value of the Authentication-Results field the filter would have prepended, the time
received (ISO 8601, UTC, to the microsecond), the size and SHA-256 of the message bytes, and
``format``. The message bytes are kept beside it exactly as the MTA handed them to us: before our
Authentication-Results field was prepended, never re-serialised. How the record and the bytes are
laid out is the backend's (:mod:`scatterguard.actions.quarantine.directory`: one JSON line, then
the bytes); the record itself is the same everywhere, so an entry keeps its id and its content
whichever store holds it.

Ids: nothing from the message or the envelope becomes a path or a key as it is. An entry's id is
the first 128 bits (32 hex digits) of a SHA-256 over the queue id, the sender, the recipients and
the digest of the message bytes, so a retried delivery of the same queue id finds its entry
instead of adding a second one, while a message that the MTA splits into several deliveries (one
queue id, different recipients) gets one entry per delivery and loses none. Ids given on the
command line are checked against ``^[0-9a-f]{32}$`` (:func:`check_id`) before any store uses them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scatterguard.actions import spool
from scatterguard.core.terminal import printable
from scatterguard.errors import QuarantineError

if TYPE_CHECKING:
    from scatterguard.core.envelope import Envelope
    from scatterguard.core.message import Spooled
    from scatterguard.core.verdict import Decision

FORMAT = 1
ID_LENGTH = 32
_ID = re.compile(r"[0-9a-f]{32}\Z")


class NotFound(QuarantineError):
    """No entry has the given id."""


@dataclass(frozen=True)
class Metadata:
    """What the store keeps about a message besides its bytes."""

    sender: str  # "" is the null reverse-path
    recipients: tuple[str, ...]
    client_address: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    action: str = "quarantine"
    reverse_path_verified: bool = False
    reasons: tuple[str, ...] = ()
    authentication_results: str = ""

    @classmethod
    def from_decision(
        cls, envelope: Envelope, decision: Decision, authentication_results: str
    ) -> Metadata:
        """The metadata of a message the filter decided to quarantine."""
        return cls(
            sender=envelope.sender_text,
            recipients=tuple(envelope.recipients),
            client_address=str(envelope.client_address) if envelope.client_address else None,
            helo=envelope.helo,
            queue_id=envelope.queue_id,
            action=str(decision.action),
            reverse_path_verified=decision.reverse_path_verified,
            reasons=tuple(decision.reasons),
            authentication_results=authentication_results,
        )


@dataclass(frozen=True)
class Entry:
    """One stored message's id and metadata (its bytes come from the store's ``get``)."""

    id: str
    received: datetime  # aware, UTC
    size: int
    sha256: str
    metadata: Metadata

    def as_json(self) -> dict[str, Any]:
        """The object ``quarantine list --json`` prints for this entry."""
        meta = self.metadata
        return {
            "id": self.id,
            "received": format_time(self.received),
            "sender": meta.sender,
            "recipients": list(meta.recipients),
            "client_address": meta.client_address,
            "helo": meta.helo,
            "queue_id": meta.queue_id,
            "action": meta.action,
            "reverse_path_verified": meta.reverse_path_verified,
            "reasons": list(meta.reasons),
            "authentication_results": meta.authentication_results,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class Scan:
    """The entries found in the store, oldest first, and the entries that could not be read."""

    entries: list[Entry]
    unreadable: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Purged:
    """What a purge did: how many entries it removed, and the parts it refused (and why)."""

    removed: int
    refused: tuple[str, ...] = ()


def utcnow() -> datetime:
    """The current time, aware, in UTC: a store's default clock."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the microsecond (entries sort by it)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def valid_id(entry_id: str) -> bool:
    """True when ``entry_id`` has the shape of an id; only such ids ever become paths."""
    return bool(_ID.match(entry_id))


def check_id(entry_id: str) -> None:
    """Raise NotFound, naming the id escaped for a terminal, unless it has the shape of an id."""
    if not valid_id(entry_id):
        raise NotFound(
            f"quarantine: '{printable(entry_id)}' is not a quarantine id (32 hex digits)"
        )


def entry_id(metadata: Metadata, data: bytes | Spooled) -> str:
    """The deterministic id of a message and its envelope (see the module docstring)."""
    return digest_id(metadata, spool.sha256(data))


def digest_id(metadata: Metadata, digest: str) -> str:
    """The id of a message whose bytes have the SHA-256 ``digest`` (hex)."""
    # JSON of a list is an unambiguous encoding: no value can shift into its neighbour.
    key = json.dumps(
        [
            FORMAT,
            metadata.queue_id or "",
            metadata.sender,
            list(metadata.recipients),
            digest,
        ]
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:ID_LENGTH]


def to_record(entry: Entry) -> dict[str, Any]:
    """The record of an entry: what ``list --json`` prints, and the format number."""
    record = entry.as_json()
    record["format"] = FORMAT
    return record


def record_line(entry: Entry) -> bytes:
    """The record as compact JSON in ASCII, so it holds no raw newline; no newline at its end."""
    return json.dumps(to_record(entry), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def from_record(entry_id: str, head: bytes | str, where: Path | str) -> Entry:
    """Parse and check a record; anything unexpected is a damaged entry (named by ``where``)."""
    try:
        record = json.loads(head)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError("unknown format")
        if record.get("id") != entry_id:
            raise ValueError("id does not match the file name")
        received = datetime.fromisoformat(_text(record["received"]).replace("Z", "+00:00"))
        if received.tzinfo is None:
            raise ValueError("received has no time zone")
        metadata = Metadata(
            sender=_text(record["sender"]),
            recipients=tuple(_text(r) for r in _list(record["recipients"])),
            client_address=_optional_text(record.get("client_address")),
            helo=_optional_text(record.get("helo")),
            queue_id=_optional_text(record.get("queue_id")),
            action=_text(record["action"]),
            reverse_path_verified=bool(record["reverse_path_verified"]),
            reasons=tuple(_text(r) for r in _list(record["reasons"])),
            authentication_results=_text(record["authentication_results"]),
        )
        size = record["size"]
        digest = _text(record["sha256"])
        if not isinstance(size, int) or size < 0:
            raise ValueError("bad size")
        return Entry(entry_id, received.astimezone(UTC), size, digest, metadata)
    except (ValueError, KeyError, TypeError) as exc:
        raise QuarantineError(f"quarantine: {where} is damaged ({exc})") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value
