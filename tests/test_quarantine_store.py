"""The QuarantineStore port: what every quarantine backend must do, the same way.

Written against :class:`scatterguard.actions.ports.QuarantineStore` only, and run once per
backend in ``BACKENDS``. A new backend (PostgreSQL) adds a factory there, skipped where its
server is not available; everything below must then pass unchanged. What only one backend has
(the directory's tmp/, links, modes, damaged files) is tested in that backend's own file
(``test_quarantine.py``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scatterguard import config
from scatterguard.actions.ports import QuarantineStore
from scatterguard.actions.quarantine import backends
from scatterguard.actions.quarantine import release as releasing
from scatterguard.actions.quarantine.directory import Store
from scatterguard.actions.quarantine.entry import Metadata, NotFound, Purged, valid_id
from scatterguard.core.envelope import Address, Envelope
from scatterguard.core.message import Payload
from scatterguard.core.verdict import Action, Decision, Rule
from scatterguard.errors import ConfigError, QuarantineError, ReinjectError

T0 = datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC)
AR = "mx.rcpt.example; spf=fail smtp.mailfrom=reject.example; dkim=none"
DATA = b"From: ceo@reject.example\r\nSubject: pay now\r\n\r\n\xe9t\xe9 \x00\r\n.\r\n"


class Clock:
    """A settable clock shared by every handle on one store."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Backend:
    """One backend under test: ``open()`` gives another handle on the same stored entries,
    as a second process (or a second host, for a shared backend) would have."""

    open: Callable[[], QuarantineStore]
    clock: Clock


def _directory(tmp_path: Path, clock: Clock) -> Iterator[Backend]:
    yield Backend(lambda: Store(tmp_path / "quarantine", clock), clock)


# name → a generator of a Backend on empty storage (it cleans up after the test).
BACKENDS: dict[str, Callable[[Path, Clock], Iterator[Backend]]] = {
    "directory": _directory,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from BACKENDS[request.param](tmp_path, Clock())


@pytest.fixture
def store(backend: Backend) -> QuarantineStore:
    return backend.open()


def meta(queue_id: str | None = "4AbCdE", **changes: object) -> Metadata:
    values: dict[str, object] = {
        "sender": "ceo@reject.example",
        "recipients": ("bob@rcpt.example", "carol@rcpt.example"),
        "client_address": "203.0.113.9",
        "helo": "bad.example",
        "queue_id": queue_id,
        "reasons": ("DMARC fail, policy reject",),
        "authentication_results": AR,
    }
    values.update(changes)
    return Metadata(**values)  # type: ignore[arg-type]


class Recorder:
    """A reinjector that records what it was given, or fails as told."""

    def __init__(self, error: str | None = None) -> None:
        self.calls: list[tuple[str, tuple[str, ...], bytes]] = []
        self.error = error

    def __call__(self, sender: str, recipients: Sequence[str], data: Payload) -> None:
        if self.error:
            raise ReinjectError(self.error)
        self.calls.append((sender, tuple(recipients), bytes(data)))


# ---- add, put, get, scan ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(DATA, id="crlf-8bit-nul"),
        pytest.param(DATA.replace(b"\r\n", b"\n"), id="lf"),
        pytest.param(b"Subject: x\r\n\r\nbare\rcr and no final newline", id="bare-cr-no-eol"),
        pytest.param(b"", id="empty"),
    ],
)
def test_get_returns_the_exact_bytes_and_metadata(store: QuarantineStore, data: bytes) -> None:
    """What was put comes back byte for byte, with its metadata, size, digest and time."""
    entry = store.put(meta(), data)
    assert valid_id(entry.id)
    assert (entry.size, entry.received) == (len(data), T0)
    assert store.get(entry.id) == (entry, data)


def test_add_keeps_the_envelope_and_the_decision(store: QuarantineStore) -> None:
    """add(), the filter's call, stores the envelope, the decision and the A-R value."""
    envelope = Envelope(
        sender=Address("ceo@reject.example", "ceo", "reject.example"),
        recipients=("bob@rcpt.example",),
        helo="bad.example",
        queue_id="4AbCdE",
    )
    decision = Decision(Action.QUARANTINE, Rule.DMARC_QUARANTINE, False, ("DMARC fail",))
    entry, data = store.get(store.add(DATA, envelope, decision, AR))
    assert data == DATA
    assert entry.metadata == Metadata(
        "ceo@reject.example",
        ("bob@rcpt.example",),
        helo="bad.example",
        queue_id="4AbCdE",
        reasons=("DMARC fail",),
        authentication_results=AR,
    )
    null = store.add(DATA, Envelope(sender=None, recipients=("bob@rcpt.example",)), decision, AR)
    assert store.get(null)[0].metadata.sender == ""


def test_a_retried_delivery_is_one_entry(backend: Backend, store: QuarantineStore) -> None:
    """The same queue id, envelope and bytes again (even from another handle, later) is the
    first entry unchanged; other recipients of the same queue id are an entry of their own."""
    first = store.put(meta(), DATA)
    backend.clock.now = T0 + timedelta(minutes=5)
    assert backend.open().put(meta(), DATA) == first
    other = store.put(meta(recipients=("dave@rcpt.example",)), DATA)
    assert other.id != first.id
    assert [e.id for e in store.scan().entries] == [first.id, other.id]


def test_scan_lists_oldest_first_and_an_empty_store_is_empty(
    backend: Backend, store: QuarantineStore
) -> None:
    """A store nobody wrote to scans empty; entries come oldest first, from every handle."""
    assert store.scan().entries == []
    assert store.scan().unreadable == []
    made = []
    for minutes in (0, 2, 1):
        backend.clock.now = T0 + timedelta(minutes=minutes)
        made.append(store.put(meta(queue_id=f"Q{minutes}"), DATA))
    assert backend.open().scan().entries == [made[0], made[2], made[1]]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "0" * 31, "A" * 32, "x\x1b[2J", ""])
def test_ids_of_the_wrong_shape_are_not_found(store: QuarantineStore, bad: str) -> None:
    """An id that is not 32 lower-case hex digits names no entry, for every call that takes
    one; the error shows it escaped."""
    store.put(meta(), DATA)
    for call in (store.get, store.delete, lambda i: store.locked(i).__enter__()):
        with pytest.raises(NotFound, match="is not a quarantine id") as caught:
            call(bad)
        assert "\x1b" not in str(caught.value)


def test_unknown_ids_are_not_found(store: QuarantineStore) -> None:
    """A well-formed id that names no entry is NotFound, for every call that takes one."""
    missing = "0" * 32
    for call in (store.get, store.delete, lambda i: store.locked(i).__enter__()):
        with pytest.raises(NotFound, match=f"no entry {missing}"):
            call(missing)
    store.put(meta(), DATA)
    with pytest.raises(NotFound):
        store.get(missing)


# ---- delete, purge ---------------------------------------------------------------------------


def test_delete_removes_one_entry(backend: Backend, store: QuarantineStore) -> None:
    """delete() removes that entry only, for every handle; a second delete is NotFound."""
    gone, kept = store.put(meta(queue_id="Q1"), DATA), store.put(meta(queue_id="Q2"), DATA)
    store.delete(gone.id)
    assert backend.open().scan().entries == [kept]
    with pytest.raises(NotFound):
        store.get(gone.id)
    with pytest.raises(NotFound):
        store.delete(gone.id)


def test_purge_removes_what_is_older_than_the_cutoff(
    backend: Backend, store: QuarantineStore
) -> None:
    """purge() removes entries received before now - older_than, counts them, keeps the rest;
    without ``now`` it uses the store's clock."""
    ages = {"old": 40, "older": 31, "young": 29}
    made = {}
    for name, days in ages.items():
        backend.clock.now = T0 - timedelta(days=days)
        made[name] = store.put(meta(queue_id=name), DATA)
    backend.clock.now = T0
    assert store.purge(timedelta(days=30), now=T0) == Purged(2)
    assert store.scan().entries == [made["young"]]
    assert store.purge(timedelta(days=30)) == Purged(0)
    backend.clock.now = T0 + timedelta(days=2)
    assert store.purge(timedelta(days=30)) == Purged(1)
    assert store.scan().entries == []


def test_purge_of_an_empty_store_removes_nothing(store: QuarantineStore) -> None:
    """A purge before anything was quarantined is no error."""
    assert store.purge(timedelta(days=1), now=T0) == Purged(0)


# ---- locking ---------------------------------------------------------------------------------


def test_locked_is_exclusive_and_never_waits(backend: Backend, store: QuarantineStore) -> None:
    """While one handle holds an entry, another is refused at once (QuarantineError, not
    NotFound); once the holder let go, it may hold it; other entries are not held."""
    entry = store.put(meta(queue_id="Q1"), DATA)
    other = store.put(meta(queue_id="Q2"), DATA)
    second = backend.open()
    with store.locked(entry.id):
        with pytest.raises(QuarantineError, match="being released or deleted") as caught:
            second.locked(entry.id).__enter__()
        assert not isinstance(caught.value, NotFound)
        with second.locked(other.id):
            pass
        assert store.get(entry.id)[1] == DATA  # holding does not hide the entry
    with second.locked(entry.id):
        pass


def test_a_held_entry_removed_by_its_holder_is_gone_for_the_next(
    backend: Backend, store: QuarantineStore
) -> None:
    """The second of two administrators finds the entry gone once the first removed it: while
    the first still holds it, and after."""
    entry = store.put(meta(), DATA)
    second = backend.open()
    with store.locked(entry.id):
        store.delete(entry.id)
        with pytest.raises(NotFound):
            second.locked(entry.id).__enter__()
    with pytest.raises(NotFound):
        second.locked(entry.id).__enter__()


# ---- release ---------------------------------------------------------------------------------


def test_release_reinjects_with_the_original_envelope_then_removes(
    store: QuarantineStore,
) -> None:
    """release() hands the message to its recipients from its sender, with the stored A-R
    field on top (ours from the message removed), and only then removes the entry."""
    forged = b"Authentication-Results: mx.rcpt.example; dmarc=pass\r\n" + DATA
    entry = store.put(meta(), forged)
    reinjector = Recorder()
    assert releasing.release(store, entry.id, reinjector) == entry
    [(sender, recipients, data)] = reinjector.calls
    assert (sender, recipients) == (
        "ceo@reject.example",
        ("bob@rcpt.example", "carol@rcpt.example"),
    )
    assert data == (
        b"Authentication-Results: mx.rcpt.example;\r\n\tspf=fail smtp.mailfrom=reject.example;"
        b"\r\n\tdkim=none\r\n" + DATA
    )
    assert store.scan().entries == []


def test_release_of_the_null_sender_keeps_it_null(store: QuarantineStore) -> None:
    """A message from <> is released from <> (the empty sender), never from an address."""
    entry = store.put(meta(sender="", authentication_results=""), DATA)
    reinjector = Recorder()
    releasing.release(store, entry.id, reinjector)
    assert reinjector.calls == [("", ("bob@rcpt.example", "carol@rcpt.example"), DATA)]


def test_failed_release_keeps_the_entry(store: QuarantineStore) -> None:
    """When the re-injection fails, nothing is removed and a later release can succeed."""
    entry = store.put(meta(), DATA)
    with pytest.raises(releasing.NotReleased, match="not released, entry kept: queue full"):
        releasing.release(store, entry.id, Recorder("queue full"))
    assert store.get(entry.id) == (entry, DATA)
    releasing.release(store, entry.id, Recorder())
    assert store.scan().entries == []


def test_release_of_a_held_entry_is_refused_before_anything_is_sent(
    backend: Backend, store: QuarantineStore
) -> None:
    """Two releases at once deliver one copy: the second is refused while the first runs and
    finds the entry gone afterwards."""
    entry = store.put(meta(), DATA)
    started, proceed = threading.Event(), threading.Event()
    slow_calls: list[bytes] = []

    def slow(sender: str, recipients: object, data: Payload) -> None:
        started.set()
        assert proceed.wait(10)
        slow_calls.append(bytes(data))

    first = threading.Thread(target=releasing.release, args=(store, entry.id, slow))
    first.start()
    assert started.wait(10)
    second, reinjector = backend.open(), Recorder()
    with pytest.raises(QuarantineError, match="being released or deleted"):
        releasing.release(second, entry.id, reinjector)
    proceed.set()
    first.join(10)
    with pytest.raises(NotFound):
        releasing.release(second, entry.id, reinjector)
    assert (len(slow_calls), reinjector.calls) == (1, [])


def test_release_that_cannot_remove_says_it_was_sent(store: QuarantineStore) -> None:
    """A release whose entry cannot be removed after the re-injection says the message went
    (a second release would deliver it twice) and names the entry."""
    entry = store.put(meta(), DATA)

    class Sticky:
        """The store under test, but its delete fails."""

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        def delete(self, entry_id: str) -> None:
            raise QuarantineError("quarantine: cannot remove it: read-only file system")

    reinjector = Recorder()
    with pytest.raises(releasing.ReleasedNotRemoved) as caught:
        releasing.release(Sticky(), entry.id, reinjector)  # type: ignore[arg-type]
    assert caught.value.entry_id == entry.id
    assert str(caught.value) == (
        f"release {entry.id}: re-injected, but the entry could not be removed"
        " (quarantine: cannot remove it: read-only file system)"
    )
    assert len(reinjector.calls) == 1


# ---- choosing the backend --------------------------------------------------------------------


def test_every_backend_is_configurable_openable_and_tested() -> None:
    """The names config accepts, the openers and the backends this file tests are the same."""
    assert set(config.QUARANTINE_BACKENDS) == set(backends.OPENERS) == set(BACKENDS)


def test_open_store_opens_the_configured_backend(tmp_path: Path) -> None:
    """The default backend is the directory named by quarantine.directory, untouched until
    used; a name no opener knows (a Config built by hand) is a ConfigError naming the key."""
    loaded = config.parse({"quarantine": {"directory": str(tmp_path / "q")}})
    store = backends.open_store(loaded)
    assert isinstance(store, Store)
    assert store.directory == tmp_path / "q"
    assert not store.directory.exists()
    wrong = dataclasses.replace(
        loaded, quarantine=dataclasses.replace(loaded.quarantine, backend="postgresql")
    )
    with pytest.raises(ConfigError, match=r"quarantine\.backend"):
        backends.open_store(wrong)
