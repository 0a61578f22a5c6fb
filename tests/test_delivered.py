"""The record of re-injected messages: what a retry after a crash finds, and what it forgets."""

from __future__ import annotations

from pathlib import Path

from scatterguard.delivered import KEEP_HOURS, DeliveryRecord
from scatterguard.envelope import Envelope, from_values


def _envelope(queue_id: str | None, recipients: tuple[str, ...] = ("b@y.example",)) -> Envelope:
    return from_values("a@x.example", list(recipients), {"queue_id": queue_id}, {})


def test_key_depends_on_queue_id_envelope_and_bytes() -> None:
    """The same queue file and envelope give one key; any difference gives another; no id, none."""
    key = DeliveryRecord.key(_envelope("4ABC"), b"data")
    assert key == DeliveryRecord.key(_envelope("4ABC"), b"data")
    assert key != DeliveryRecord.key(_envelope("4ABD"), b"data")
    assert key != DeliveryRecord.key(_envelope("4ABC", ("c@y.example",)), b"data")
    assert key != DeliveryRecord.key(_envelope("4ABC"), b"other")
    assert DeliveryRecord.key(_envelope(None), b"data") is None


def test_markers_are_seen_for_two_days_then_pruned(tmp_path: Path) -> None:
    """A marker is found within KEEP_HOURS; old hour directories go when a new hour starts."""
    now = [1_800_000_000.0]
    record = DeliveryRecord(tmp_path / "delivered", clock=lambda: now[0])
    record.note("k1")
    assert record.seen("k1")
    assert not record.seen("k2")
    now[0] += (KEEP_HOURS - 1) * 3600
    assert record.seen("k1")
    now[0] += 3 * 3600
    record.note("k2")
    assert not record.seen("k1")
    assert len(list((tmp_path / "delivered").iterdir())) == 1


def test_unwritable_record_is_ignored(tmp_path: Path) -> None:
    """A marker that cannot be written never raises: the message is already delivered."""
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    record = DeliveryRecord(blocker / "delivered")
    record.note("k1")
    assert not record.seen("k1")
