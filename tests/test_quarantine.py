"""The quarantine store and ``scatterguard quarantine``: durability, ids, modes, output, release.

The store is exercised on real directories under tmp_path; release goes through the recording fake
sendmail (tests/fakes.py) behind the real CommandReinjector, and the last tests drive the real CLI.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dates import RECEIVED_DATE
from fakes import FakeSendmail
from scatterguard.actions.quarantine.directory import Store
from scatterguard.actions.quarantine.entry import Metadata, NotFound, Purged, entry_id, valid_id
from scatterguard.actions.reinject import CommandReinjector
from scatterguard.core.envelope import Address, Envelope
from scatterguard.core.message import Message, Payload
from scatterguard.core.verdict import Action, Decision, Rule
from scatterguard.errors import QuarantineError
from scatterguard.frontends import admin

T0 = datetime(2026, 11, 27, 6, 0, 0, tzinfo=UTC)
AR = (
    "mx.rcpt.example; spf=fail smtp.mailfrom=reject.example; dkim=none;"
    " dmarc=fail policy.dmarc=reject header.from=reject.example"
)
DATA = (
    b"Received: from mx.sender.example by mx.rcpt.example; " + RECEIVED_DATE + b"\n"
    b"From: ceo@reject.example\nTo: bob@rcpt.example\nSubject: pay now\n"
    b"\nHi Bob,\n\xe9t\xe9 \x00\r\n.\n"
)


class Clock:
    """A settable clock for the store."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def meta(
    sender: str = "ceo@reject.example",
    recipients: tuple[str, ...] = ("bob@rcpt.example", "carol@rcpt.example"),
    queue_id: str | None = "4AbCdE",
    **extra: object,
) -> Metadata:
    values: dict[str, object] = {
        "client_address": "203.0.113.9",
        "helo": "bad.example",
        "reasons": ("DMARC fail, policy reject", "reverse-path not verified: quarantine"),
        "authentication_results": AR,
    }
    values.update(extra)
    return Metadata(sender, recipients, queue_id=queue_id, **values)  # type: ignore[arg-type]


def files(root: Path) -> list[str]:
    """Every file under ``root``, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Store:
    return Store(tmp_path / "quarantine", clock)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---- the store ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(DATA, id="lf-8bit-nul"),
        pytest.param(DATA.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(b"Subject: x\r\n\r\nbare\rcr and no final newline", id="bare-cr-no-eol"),
        pytest.param(b"Subject: only a header\n", id="no-body"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\n" * 5 + b"x" * 100_000, id="long-line"),
    ],
)
def test_put_then_get_returns_exact_bytes_and_metadata(store: Store, data: bytes) -> None:
    """What goes in comes back byte for byte, with its metadata and the clock's time."""
    entry = store.put(meta(), data)
    got, raw = store.get(entry.id)
    assert raw == data
    assert got == entry
    assert got.metadata == meta()
    assert got.received == T0
    assert got.size == len(data)


def test_add_records_the_envelope_and_decision(store: Store) -> None:
    """add() (the filter's call) keeps sender, recipients, client, HELO, queue id, decision, A-R."""
    envelope = Envelope(
        sender=Address("ceo@reject.example", "ceo", "reject.example"),
        recipients=("bob@rcpt.example",),
        client_address=ipaddress.ip_address("2001:db8::9"),
        helo="bad.example",
        queue_id="4AbCdE",
    )
    decision = Decision(Action.QUARANTINE, Rule.DMARC_QUARANTINE, False, ("DMARC fail",))
    added = store.add(DATA, envelope, decision, AR)
    entry, raw = store.get(added)
    assert raw == DATA
    assert entry.metadata == Metadata(
        sender="ceo@reject.example",
        recipients=("bob@rcpt.example",),
        client_address="2001:db8::9",
        helo="bad.example",
        queue_id="4AbCdE",
        action="quarantine",
        reverse_path_verified=False,
        reasons=("DMARC fail",),
        authentication_results=AR,
    )


def test_null_sender_is_stored_as_empty_string(store: Store) -> None:
    """The null reverse-path is "" in the metadata and "<>" only when shown."""
    envelope = Envelope(sender=None, recipients=("bob@rcpt.example",))
    added = store.add(
        DATA, envelope, Decision(Action.QUARANTINE, Rule.DMARC_QUARANTINE, False, ()), AR
    )
    assert store.get(added)[0].metadata.sender == ""
    out = io.StringIO()
    assert admin.show(store, added, out) == 0
    assert "sender:      <>\n" in out.getvalue()


# An entry file byte for byte: the on-disk format (DESIGN.md) and the id must never change, or a
# retry after an upgrade would not find the entry its first attempt wrote.
GOLDEN_ID = "9111ed612b181b4fcae5c8d4deb514e4"
GOLDEN_FILE = (
    b'{"id":"9111ed612b181b4fcae5c8d4deb514e4","received":"2026-11-27T06:00:00.000000Z",'
    b'"sender":"ceo@reject.example","recipients":["bob@rcpt.example","carol@rcpt.example"],'
    b'"client_address":"203.0.113.9","helo":"bad.example","queue_id":"4AbCdE",'
    b'"action":"quarantine","reverse_path_verified":false,'
    b'"reasons":["DMARC fail, policy reject","reverse-path not verified: quarantine"],'
    b'"authentication_results":"mx.rcpt.example; spf=fail smtp.mailfrom=reject.example;'
    b' dkim=none; dmarc=fail policy.dmarc=reject header.from=reject.example",'
    b'"size":23,"sha256":"ec628cb6d1307486ce56d0e53fd443d1ecc70db4e974c5e874577a871bea31fc",'
    b'"format":1}\nSubject: hi\r\n\r\nbody\x00\xe9\r\n'
)


def test_entry_file_format_is_fixed(store: Store) -> None:
    """An entry is written exactly as every earlier version wrote it, and such a file reads."""
    entry = store.put(meta(), b"Subject: hi\r\n\r\nbody\x00\xe9\r\n")
    assert entry.id == GOLDEN_ID
    assert (store.directory / GOLDEN_ID).read_bytes() == GOLDEN_FILE
    (store.directory / GOLDEN_ID).unlink()
    (store.directory / GOLDEN_ID).write_bytes(GOLDEN_FILE)
    assert store.get(GOLDEN_ID) == (entry, b"Subject: hi\r\n\r\nbody\x00\xe9\r\n")


def test_same_queue_id_retried_is_one_entry(store: Store, clock: Clock) -> None:
    """A retried delivery (same queue id, envelope, bytes) returns the first entry unchanged."""
    first = store.put(meta(), DATA)
    clock.now = T0 + timedelta(minutes=5)
    second = store.put(meta(), DATA)
    assert second == first
    assert second.received == T0
    assert files(store.directory) == [first.id]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param(meta(), meta(), True, id="identical"),
        pytest.param(meta(queue_id=None), meta(queue_id=None), True, id="no-queue-id-identical"),
        pytest.param(meta(), meta(queue_id="4XyZ"), False, id="other-queue-id"),
        pytest.param(
            meta(recipients=("bob@rcpt.example",)),
            meta(recipients=("carol@rcpt.example",)),
            False,
            id="split-delivery-other-recipients",
        ),
        pytest.param(meta(), meta(sender=""), False, id="other-sender"),
        pytest.param(meta(), meta(reasons=("other",)), True, id="reasons-do-not-matter"),
    ],
)
def test_ids_follow_queue_id_envelope_and_bytes(a: Metadata, b: Metadata, same: bool) -> None:
    """Ids are deterministic over queue id, sender, recipients and the message digest."""
    assert (entry_id(a, DATA) == entry_id(b, DATA)) is same
    assert valid_id(entry_id(a, DATA))


def test_other_bytes_give_another_id() -> None:
    """The same envelope with different message bytes is a different entry."""
    assert entry_id(meta(), DATA) != entry_id(meta(), DATA + b"x")


def test_split_delivery_keeps_every_part(store: Store) -> None:
    """One queue id delivered in two recipient batches gives two entries: no recipient is lost."""
    store.put(meta(recipients=("bob@rcpt.example",)), DATA)
    store.put(meta(recipients=("carol@rcpt.example",)), DATA)
    assert sorted(e.metadata.recipients[0] for e in store.entries()) == [
        "bob@rcpt.example",
        "carol@rcpt.example",
    ]


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(0o022, id="umask-022"),
        pytest.param(0o000, id="umask-000"),
        pytest.param(0o077, id="umask-077"),
        pytest.param(0o277, id="umask-277-takes-owner-bits"),
    ],
)
def test_modes_are_0700_and_0600_whatever_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    """The store and tmp/ are created 0700 and entries 0600, set explicitly past the umask."""
    os.umask(mask)
    store = Store(tmp_path / "quarantine", Clock())
    entry = store.put(meta(), DATA)
    os.umask(0o022)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.tmp.stat().st_mode) == 0o700
    assert stat.S_IMODE((store.directory / entry.id).stat().st_mode) == 0o600


def test_missing_parents_are_created(tmp_path: Path) -> None:
    """A store whose parent directories are missing creates them, as ``mkdir -p`` would."""
    store = Store(tmp_path / "var" / "lib" / "scatterguard" / "quarantine", Clock())
    entry = store.put(meta(), DATA)
    assert store.get(entry.id)[1] == DATA


def test_existing_directory_mode_is_left_alone(tmp_path: Path) -> None:
    """A directory the package created (tmpfiles.d) keeps its mode; only tmp/ is made."""
    directory = tmp_path / "quarantine"
    directory.mkdir(mode=0o750)
    directory.chmod(0o750)
    Store(directory, Clock()).put(meta(), DATA)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert stat.S_IMODE((directory / "tmp").stat().st_mode) == 0o700


def test_entries_are_listed_oldest_first(store: Store, clock: Clock) -> None:
    """Entries sort by received time, not by id or by order on disk."""
    times = [T0 + timedelta(hours=h) for h in (5, 1, 3)]
    ids = []
    for number, moment in enumerate(times):
        clock.now = moment
        ids.append(store.put(meta(queue_id=f"Q{number}"), DATA).id)
    assert [e.received for e in store.entries()] == sorted(times)
    assert [e.id for e in store.entries()] == [ids[1], ids[2], ids[0]]


def test_naive_clock_is_taken_as_utc(tmp_path: Path) -> None:
    """A clock returning naive datetimes is read as UTC, never as local time."""
    store = Store(tmp_path / "q", lambda: datetime(2026, 1, 2, 3, 4, 5))
    assert store.put(meta(), DATA).received == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_missing_store_is_empty(tmp_path: Path) -> None:
    """Listing a store that was never written to shows nothing and creates nothing."""
    store = Store(tmp_path / "never", Clock())
    assert store.entries() == []
    assert store.purge(timedelta(days=1)) == Purged(0)
    assert not store.directory.exists()


def test_delete_removes_entry(store: Store) -> None:
    """delete() removes the entry; a second delete is NotFound."""
    entry = store.put(meta(), DATA)
    store.delete(entry.id)
    assert store.entries() == []
    with pytest.raises(NotFound):
        store.delete(entry.id)
    with pytest.raises(NotFound):
        store.get(entry.id)


def test_purge_removes_old_entries_and_stale_temporary_files(store: Store, clock: Clock) -> None:
    """purge() removes entries older than the cut-off and tmp/ leftovers older than 36 hours."""
    for days in (40, 31, 29, 1):
        clock.now = T0 - timedelta(days=days)
        store.put(meta(queue_id=f"D{days}"), DATA)
    stale = store.tmp / "1.2.stale"
    fresh = store.tmp / "3.4.fresh"
    for path, age in ((stale, timedelta(hours=37)), (fresh, timedelta(hours=1))):
        path.write_bytes(b"partial")
        stamp = (T0 - age).timestamp()
        os.utime(path, (stamp, stamp))
    assert store.purge(timedelta(days=30), now=T0) == Purged(2)
    assert sorted(e.metadata.queue_id or "" for e in store.entries()) == ["D1", "D29"]
    assert not stale.exists()
    assert fresh.exists()


# ---- faults and crash safety ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocked", "store_at"),
    [
        pytest.param("quarantine", "quarantine", id="file-is-the-directory"),
        pytest.param("parent", "parent/quarantine", id="file-is-the-parent"),
        pytest.param("quarantine/tmp", "quarantine", id="file-is-tmp"),
    ],
)
def test_file_in_place_of_a_directory_fails_cleanly(
    tmp_path: Path, blocked: str, store_at: str
) -> None:
    """A file where a directory must be: QuarantineError, nothing left behind, even as root."""
    blocker = tmp_path / blocked
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"in the way")
    before = files(tmp_path)
    store = Store(tmp_path / store_at, Clock())
    with pytest.raises(QuarantineError, match="cannot create directory"):
        store.put(meta(), DATA)
    assert files(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_fails_cleanly(store: Store) -> None:
    """A store the filter cannot write to is a QuarantineError and leaves no partial entry."""
    store.put(meta(queue_id="first"), DATA)
    store.directory.chmod(0o500)
    store.tmp.chmod(0o500)
    try:
        with pytest.raises(QuarantineError):
            store.put(meta(queue_id="second"), DATA)
        assert [e.metadata.queue_id for e in store.entries()] == ["first"]
        assert list(store.tmp.iterdir()) == []
    finally:
        store.tmp.chmod(0o700)
        store.directory.chmod(0o700)


FULL_DISK = """
import resource, signal, sys
from datetime import datetime, timezone
from scatterguard.actions.quarantine.directory import Store
from scatterguard.actions.quarantine.entry import Metadata
from scatterguard.errors import QuarantineError
# The device is "full" past 4 KiB for this process: writes fail with EFBIG, as they would with
# ENOSPC, and that works for root too. SIGXFSZ would kill us instead of failing the write.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
store = Store(sys.argv[1], lambda: datetime.now(timezone.utc))
try:
    store.put(Metadata("a@sender.example", ("b@rcpt.example",), queue_id="Q1"), b"x" * 100_000)
except QuarantineError as exc:
    print("QuarantineError:", exc)
"""


def test_full_disk_fails_cleanly(tmp_path: Path) -> None:
    """A write that runs out of space is a QuarantineError; the temporary file is removed."""
    directory = tmp_path / "quarantine"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("QuarantineError: quarantine: cannot write an entry")
    assert files(directory) == []
    assert (directory / "tmp").is_dir()


def test_leftovers_of_a_crash_are_not_entries(store: Store) -> None:
    """Files in tmp/ (a crash mid-write) and foreign names in the store are never listed."""
    entry = store.put(meta(), DATA)
    # A crash between write and rename leaves a partial file in tmp/, even one named like an id.
    (store.tmp / ("0" * 32)).write_bytes(b'{"format":1,')
    (store.tmp / "123.45.abcd").write_bytes(b"")
    (store.directory / "lost+found").mkdir()
    (store.directory / "README").write_text("not an entry")
    (store.directory / (entry.id + "~")).write_bytes(b"editor backup")
    assert [e.id for e in store.entries()] == [entry.id]
    with pytest.raises(NotFound):
        store.get("0" * 32)


def test_symlink_in_place_of_an_entry_is_not_followed(store: Store, tmp_path: Path) -> None:
    """An entry name that is a symbolic link is not read through, even if the target looks valid."""
    entry = store.put(meta(), DATA)
    elsewhere = tmp_path / "elsewhere"
    (store.directory / entry.id).rename(elsewhere)
    (store.directory / entry.id).symlink_to(elsewhere)
    with pytest.raises(QuarantineError, match="is a symbolic link; refused"):
        store.get(entry.id)
    assert store.scan().unreadable == [entry.id]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) - 3], id="truncated-body"),
        pytest.param(lambda b: b[:10], id="truncated-metadata"),
        pytest.param(lambda b: b"not json\n" + b, id="garbage-metadata"),
        pytest.param(lambda b: b.replace(b'"format":1', b'"format":9'), id="unknown-format"),
    ],
)
def test_damaged_entry_is_reported_and_replaced(store: Store, damage: object) -> None:
    """A damaged entry is an error on get, skipped with a warning by list, rewritten by put."""
    entry = store.put(meta(), DATA)
    path = store.directory / entry.id
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(QuarantineError, match="damaged"):
        store.get(entry.id)
    out, err = io.StringIO(), io.StringIO()
    assert admin.list_entries(store, as_json=True, out=out, err=err) == 0
    assert json.loads(out.getvalue()) == []
    assert err.getvalue() == f"quarantine: entry {entry.id} is unreadable; skipped\n"
    assert store.put(meta(), DATA).id == entry.id
    assert store.get(entry.id)[1] == DATA


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=2000),
    sender=st.text(max_size=40),
    recipients=st.lists(st.text(max_size=40), min_size=1, max_size=4),
    reasons=st.lists(st.text(max_size=60), max_size=3),
)
def test_any_bytes_and_text_round_trip(
    data: bytes, sender: str, recipients: list[str], reasons: list[str]
) -> None:
    """Arbitrary message bytes and metadata text (controls, newlines, non-ASCII) round-trip."""
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory) / "q", Clock())
        metadata = Metadata(sender, tuple(recipients), reasons=tuple(reasons))
        entry = store.put(metadata, data)
        assert store.get(entry.id) == (entry, data)
        assert store.entries() == [entry]


# ---- ids from the command line --------------------------------------------------------------

BAD_IDS = [
    pytest.param("../victim", id="dotdot"),
    pytest.param("../../../../etc/passwd", id="dotdot-deep"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("tmp", id="tmp-dir"),
    pytest.param("", id="empty"),
    pytest.param("A" * 32, id="upper-case"),
    pytest.param("0" * 31, id="short"),
    pytest.param("0" * 33, id="long"),
    pytest.param("0" * 32 + "\n", id="trailing-newline"),
    pytest.param("0" * 16 + "/" + "0" * 15, id="slash"),
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_ids_are_refused_before_any_path_is_built(
    store: Store, tmp_path: Path, bad: str
) -> None:
    """Ids that are not 32 lower-case hex digits are refused by every command; nothing changes."""
    store.put(meta(), DATA)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    recorder = FakeSendmail(tmp_path / "sendmail")
    reinjector = CommandReinjector(recorder.command())
    before = files(tmp_path)
    for run in (
        lambda out, err: admin.show(store, bad, out, err),
        lambda out, err: admin.delete(store, bad, out, err),
        lambda out, err: admin.release(store, bad, reinjector, out, err),
    ):
        out, err = io.StringIO(), io.StringIO()
        assert run(out, err) == 1
        assert out.getvalue() == ""
        assert err.getvalue().endswith("is not a quarantine id (32 hex digits)\n")
        assert err.getvalue().count("\n") == 1
    assert files(tmp_path) == before
    assert recorder.calls == []


# ---- the command functions ------------------------------------------------------------------

NASTY = "\x1b[2J\x07evil\u202etxt.exe\r\nforged: line"


def test_list_json_shape(store: Store, clock: Clock) -> None:
    """``list --json`` is an array of objects with id, sender, recipients, reasons, received..."""
    first = store.put(meta(), DATA)
    clock.now = T0 + timedelta(seconds=1)
    second = store.put(meta(sender="", queue_id=None, reasons=(NASTY,)), DATA)
    out = io.StringIO()
    assert admin.list_entries(store, as_json=True, out=out) == 0
    text = out.getvalue()
    assert all(ord(c) < 0x7F for c in text)
    assert not any(ord(c) < 0x20 for c in text.replace("\n", ""))
    document = json.loads(text)
    assert [item["id"] for item in document] == [first.id, second.id]
    assert document[0] == {
        "id": first.id,
        "received": "2026-11-27T06:00:00.000000Z",
        "sender": "ceo@reject.example",
        "recipients": ["bob@rcpt.example", "carol@rcpt.example"],
        "client_address": "203.0.113.9",
        "helo": "bad.example",
        "queue_id": "4AbCdE",
        "action": "quarantine",
        "reverse_path_verified": False,
        "reasons": ["DMARC fail, policy reject", "reverse-path not verified: quarantine"],
        "authentication_results": AR,
        "size": len(DATA),
        "sha256": first.sha256,
    }
    assert datetime.fromisoformat(document[1]["received"].replace("Z", "+00:00")) == clock.now
    assert (document[1]["sender"], document[1]["queue_id"]) == ("", None)
    assert document[1]["reasons"] == [NASTY]


def test_list_json_of_empty_store_is_empty_array(store: Store) -> None:
    """An empty store lists as ``[]``."""
    out = io.StringIO()
    assert admin.list_entries(store, as_json=True, out=out) == 0
    assert json.loads(out.getvalue()) == []


def test_list_table_is_aligned_and_escaped(store: Store, clock: Clock) -> None:
    """The human table lines its columns up and escapes control characters from the envelope."""
    store.put(meta(recipients=(NASTY, "x@rcpt.example"), reasons=(NASTY,)), DATA)
    clock.now = T0 + timedelta(hours=1)
    store.put(meta(sender="", recipients=("b@r.example",), queue_id="Q2"), DATA)
    out = io.StringIO()
    assert admin.list_entries(store, as_json=False, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert not any(c.isprintable() is False for line in lines for c in line)
    assert "  \\x1b[2J\\x07evil\\u202etxt.exe\\x0d\\x0af... (+1)  " in lines[1]
    assert lines[1].endswith("  \\x1b[2J\\x07evil\\u202etxt.exe\\x0d\\x0aforged: line")
    for column in ("RECEIVED", "SENDER", "RECIPIENTS", "REASONS"):
        start = lines[0].index(column)
        assert all(line[start - 2 : start] == "  " for line in lines)
        assert all(line[start] != " " for line in lines)
    assert lines[2].split()[3] == "<>"
    assert lines[1].split()[1:3] == ["2026-11-27", "06:00:00Z"]


def test_list_table_of_empty_store(store: Store) -> None:
    """An empty store says so in one line."""
    out = io.StringIO()
    assert admin.list_entries(store, as_json=False, out=out) == 0
    assert out.getvalue() == "The quarantine is empty.\n"


def test_show_prints_metadata_and_headers_not_body(store: Store) -> None:
    """``show`` prints the metadata and the header section, escaped, and never the body."""
    data = (
        b"Subject: \x1b]0;owned\x07 hi\r\n"
        b"X-Long: first\r\n\tsecond \xff\r\n"
        b"\r\nsecret body text\r\n"
    )
    entry = store.put(meta(helo=NASTY), data)
    out = io.StringIO()
    assert admin.show(store, entry.id, out) == 0
    text = out.getvalue()
    assert "secret body" not in text
    assert not any(c.isprintable() is False for c in text.replace("\n", ""))
    lines = text.splitlines()
    assert f"id:          {entry.id}" in lines
    assert "received:    2026-11-27T06:00:00.000000Z" in lines
    assert "sender:      ceo@reject.example" in lines
    assert "recipients:  bob@rcpt.example, carol@rcpt.example" in lines
    assert "helo:        \\x1b[2J\\x07evil\\u202etxt.exe\\x0d\\x0aforged: line" in lines
    assert "  - DMARC fail, policy reject" in lines
    assert f"Authentication-Results: {AR}" in lines
    assert lines[-3:] == [
        "Subject: \\x1b]0;owned\\x07 hi",
        "X-Long: first",
        "        second \\xff",
    ]


@pytest.mark.parametrize(
    ("stored_ar", "expected_top"),
    [
        pytest.param(
            AR,
            b"Authentication-Results: mx.rcpt.example;\n\tspf=fail smtp.mailfrom=reject.example;"
            b"\n\tdkim=none;\n\tdmarc=fail policy.dmarc=reject header.from=reject.example\n",
            id="stored-ar-prepended",
        ),
        pytest.param("", b"", id="no-ar-stored"),
    ],
)
def test_release_reinjects_with_original_envelope(
    store: Store, tmp_path: Path, stored_ar: str, expected_top: bytes
) -> None:
    """``release`` re-injects with the original sender and recipients, then removes the entry."""
    forged = b"Authentication-Results: MX.rcpt.example; dmarc=pass header.from=reject.example\n"
    theirs = b"Authentication-Results: mx.sender.example; spf=pass\n"
    data = forged + theirs + DATA
    entry = store.put(meta(authentication_results=stored_ar), data)
    sendmail = FakeSendmail(tmp_path / "sendmail")
    out, err = io.StringIO(), io.StringIO()
    assert admin.release(store, entry.id, CommandReinjector(sendmail.command()), out, err) == 0
    [call] = sendmail.calls
    assert call.argv == [
        "-G",
        "-i",
        "-f",
        "ceo@reject.example",
        "--",
        "bob@rcpt.example",
        "carol@rcpt.example",
    ]
    # Our forged A-R goes only when we prepend ours; the sender's own A-R always stays.
    assert call.data == (expected_top + theirs + DATA if stored_ar else data)
    assert out.getvalue() == f"released {entry.id} from ceo@reject.example to 2 recipient(s)\n"
    assert err.getvalue() == ""
    assert store.entries() == []


def test_release_keeps_crlf_line_endings(store: Store, tmp_path: Path) -> None:
    """A CRLF message gets a CRLF-folded A-R header; every original byte follows unchanged."""
    data = DATA.replace(b"\n", b"\r\n")
    entry = store.put(meta(sender=""), data)
    sendmail = FakeSendmail(tmp_path / "sendmail")
    assert admin.release(store, entry.id, CommandReinjector(sendmail.command()), io.StringIO()) == 0
    [call] = sendmail.calls
    assert call.argv[2:4] == ["-f", "<>"]
    top, _, rest = call.data.partition(b"\r\nReceived: ")
    assert top.startswith(b"Authentication-Results: mx.rcpt.example;\r\n\tspf=fail")
    assert b"Received: " + rest == data


def test_release_after_a_failed_attempt(store: Store, tmp_path: Path) -> None:
    """A failed re-injection keeps the entry (exit 1); the retry releases it; then it is gone."""
    entry = store.put(meta(), DATA)
    sendmail = FakeSendmail(tmp_path / "sendmail")
    reinjector = CommandReinjector(sendmail.command())
    sendmail.fail_with(75)
    out, err = io.StringIO(), io.StringIO()
    assert admin.release(store, entry.id, reinjector, out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith(f"release {entry.id}: not released, entry kept: ")
    assert "exited with status 75" in err.getvalue()
    assert err.getvalue().count("\n") == 1
    assert store.get(entry.id) == (entry, DATA)
    assert sendmail.calls == []

    sendmail.fail_with(None)
    assert admin.release(store, entry.id, reinjector, io.StringIO()) == 0
    assert len(sendmail.calls) == 1
    assert store.entries() == []

    err = io.StringIO()
    assert admin.release(store, entry.id, reinjector, io.StringIO(), err) == 1
    assert err.getvalue() == f"quarantine: no entry {entry.id}\n"
    assert len(sendmail.calls) == 1


def test_concurrent_releases_deliver_once(store: Store, tmp_path: Path) -> None:
    """Two releases (or a release and a delete) of one entry at the same moment: the second is
    refused while the first runs, and finds the entry gone afterwards; one copy is delivered."""
    entry = store.put(meta(), DATA)
    started, proceed = threading.Event(), threading.Event()
    delivered: list[bytes] = []

    def slow(sender: str, recipients: object, data: Payload) -> None:
        started.set()
        assert proceed.wait(10)
        delivered.append(bytes(data))

    results: list[int] = []
    first = threading.Thread(
        target=lambda: results.append(admin.release(store, entry.id, slow, io.StringIO()))
    )
    first.start()
    assert started.wait(10)
    for command in (
        lambda err: admin.release(store, entry.id, slow, io.StringIO(), err),
        lambda err: admin.delete(store, entry.id, io.StringIO(), err),
    ):
        err = io.StringIO()
        assert command(err) == 1
        assert "is being released or deleted by another process" in err.getvalue()
    proceed.set()
    first.join(10)
    assert results == [0]
    assert len(delivered) == 1
    err = io.StringIO()
    assert admin.release(store, entry.id, slow, io.StringIO(), err) == 1
    assert err.getvalue() == f"quarantine: no entry {entry.id}\n"
    assert len(delivered) == 1


def test_release_that_cannot_remove_tells_how_to_finish(store: Store) -> None:
    """A release whose entry cannot be removed after the re-injection exits 1 and says to
    delete the entry, never to release it again (that would deliver a second copy)."""
    entry = store.put(meta(), DATA)

    class Sticky(Store):
        def delete(self, entry_id: str) -> None:
            raise QuarantineError("quarantine: cannot remove it\x1b: read-only file system")

    sticky = Sticky(store.directory)
    delivered: list[bytes] = []
    out, err = io.StringIO(), io.StringIO()
    assert (
        admin.release(sticky, entry.id, lambda s, r, d: delivered.append(bytes(d)), out, err) == 1
    )
    assert out.getvalue() == ""
    assert err.getvalue() == (
        f"release {entry.id}: re-injected, but the entry could not be removed (quarantine:"
        " cannot remove it\\x1b: read-only file system); remove it with 'scatterguard"
        f" quarantine delete {entry.id}', do not release it again\n"
    )
    assert len(delivered) == 1


def test_delete_command(store: Store) -> None:
    """``delete`` removes an entry (exit 0) and reports an unknown one (exit 1)."""
    entry = store.put(meta(), DATA)
    out, err = io.StringIO(), io.StringIO()
    assert admin.delete(store, entry.id, out, err) == 0
    assert out.getvalue() == f"deleted {entry.id}\n"
    assert admin.delete(store, entry.id, out, err) == 1
    assert err.getvalue() == f"quarantine: no entry {entry.id}\n"


@pytest.mark.parametrize(
    ("days", "code", "output", "left"),
    [
        pytest.param(30, 0, "purged 1 entry older than 30 days\n", 2, id="thirty"),
        pytest.param(0.5, 0, "purged 2 entries older than 0.5 days\n", 1, id="half-a-day"),
        pytest.param(0, 0, "purged 3 entries older than 0 days\n", 0, id="zero-purges-all"),
        pytest.param(-1, 1, "", 3, id="negative"),
        pytest.param(float("nan"), 1, "", 3, id="nan"),
        pytest.param(1e12, 1, "", 3, id="overflow"),
    ],
)
def test_purge_command(
    store: Store, clock: Clock, days: float, code: int, output: str, left: int
) -> None:
    """``purge --older-than DAYS`` removes older entries, says how many, and refuses nonsense."""
    for age in (timedelta(days=31), timedelta(days=1), timedelta(hours=1)):
        clock.now = T0 - age
        store.put(meta(queue_id=f"A{age.total_seconds():.0f}"), DATA)
    out, err = io.StringIO(), io.StringIO()
    assert admin.purge(store, days, out, now=T0, err=err) == code
    assert out.getvalue() == output
    assert (err.getvalue() == "") is (code == 0)
    assert len(store.entries()) == left


def test_purge_defaults_to_the_store_clock(store: Store, clock: Clock) -> None:
    """Without ``now`` the purge measures ages against the store's clock."""
    store.put(meta(), DATA)
    clock.now = T0 + timedelta(days=2)
    assert admin.purge(store, 1, io.StringIO()) == 0
    assert store.entries() == []


# ---- end to end through the real command line -----------------------------------------------


class Cli:
    """The real ``scatterguard quarantine`` with a config naming a store and the fake sendmail."""

    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "quarantine", Clock())
        self.state = tmp / "state"
        self.sendmail = FakeSendmail(tmp / "sendmail")
        self.config = tmp / "scatterguard.toml"
        command = ", ".join(json.dumps(arg) for arg in self.sendmail.command())
        self.config.write_text(
            f'authserv_id = "mx.rcpt.example"\n[reinject]\ncommand = [{command}]\n'
            f"[quarantine]\ndirectory = {json.dumps(str(self.store.directory))}\n"
            f"[state]\ndirectory = {json.dumps(str(self.state))}\n"
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "scatterguard",
                "--config",
                str(self.config),
                "quarantine",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def test_cli_list_release_delete_purge(tmp_path: Path) -> None:
    """The quarantine commands end to end: list, a failed then a good release, delete, purge."""
    cli = Cli(tmp_path)
    kept = cli.store.put(meta(queue_id="Q1"), DATA)
    other = cli.store.put(meta(queue_id="Q2"), DATA)

    listed = cli.run("list", "--json")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert {item["id"] for item in json.loads(listed.stdout)} == {kept.id, other.id}

    cli.sendmail.fail_with(75)
    failed = cli.run("release", kept.id)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "not released, entry kept" in failed.stderr
    assert cli.store.get(kept.id)[1] == DATA

    cli.sendmail.fail_with(None)
    released = cli.run("release", kept.id)
    assert (released.returncode, released.stderr) == (0, "")
    [call] = cli.sendmail.calls
    assert call.argv[-3:] == ["--", "bob@rcpt.example", "carol@rcpt.example"]
    assert call.data.endswith(DATA)

    refused = cli.run("show", "../../etc/passwd")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1

    assert cli.run("delete", other.id).returncode == 0
    purged = cli.run("purge", "--older-than", "1")
    assert (purged.returncode, purged.stdout) == (0, "purged 0 entries older than 1 days\n")
    assert cli.store.entries() == []


def _record(directory: Path, old_hour: str, new_hour: str) -> None:
    """A delivery record with a marker in an old and in this hour, and an old and a new lock."""
    for hour in (old_hour, new_hour):
        (directory / hour).mkdir(parents=True)
        (directory / hour / ("0" * 40)).touch()
    (directory / "pending").mkdir()
    for name, stamp in (("stale", OLD), ("fresh", None)):
        (directory / "pending" / name).touch()
        if stamp is not None:
            os.utime(directory / "pending" / name, (stamp, stamp))


def test_purge_prunes_the_delivery_record_in_both_places(tmp_path: Path) -> None:
    """``purge`` prunes the delivery record in the state directory and the one version 0.1.0
    kept in the quarantine directory: markers and lock files past KEEP_HOURS go, the rest stays
    (issue 13, item 6)."""
    cli = Cli(tmp_path)
    old_hour, new_hour = "2020010100", datetime.now(UTC).strftime("%Y%m%d%H")
    places = (cli.state / "delivered", cli.store.directory / "delivered")
    for place in places:
        _record(place, old_hour, new_hour)
    cli.store.directory.chmod(0o700)
    cli.state.chmod(0o700)
    done = cli.run("purge", "--older-than", "1")
    assert (done.returncode, done.stderr) == (0, ""), done
    for place in places:
        assert sorted(p.name for p in place.iterdir()) == sorted([new_hour, "pending"])
        assert [p.name for p in (place / "pending").iterdir()] == ["fresh"]


def test_purge_refuses_a_linked_part_of_the_state_record(tmp_path: Path) -> None:
    """A link planted in the state directory's record is refused by ``purge`` (exit 1, named),
    and nothing behind it is removed; the quarantine is purged all the same."""
    cli = Cli(tmp_path)
    old = cli.store.put(meta(queue_id="OLD"), DATA)
    (cli.state / "delivered").mkdir(parents=True)
    victim = _victim(tmp_path / "victim")
    (cli.state / "delivered" / "pending").symlink_to(victim)
    done = cli.run("purge", "--older-than", "0")
    assert done.returncode == 1, done
    assert "pending" in done.stderr
    assert "symbolic link" in done.stderr
    assert all((victim / name).exists() for name in VICTIM_FILES)
    assert not (cli.store.directory / old.id).exists()


# ---- a store part that is a symbolic link or another user's (issue 12, item 8) ----------------

OLD = (T0 - timedelta(days=100)).timestamp()
# Every path under the victim that a purge following a planted link would remove.
VICTIM_FILES = (
    "old.txt",
    "tmp/old.txt",
    "pending/old.txt",
    "2020010100/old.txt",
    "delivered/pending/old.txt",
    "delivered/2020010100/old.txt",
)
THIRD_USER = 65534  # nobody: neither root nor the store's owner


def _victim(root: Path) -> Path:
    """A directory of old files that no purge of the store may touch."""
    for name in VICTIM_FILES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"precious")
        os.utime(path, (OLD, OLD))
    return root


def _plant(cli: Cli, part: str, kind: str, tmp_path: Path) -> Path:
    """Make ``part`` of the store a link to a victim directory, or a third user's directory."""
    store = cli.store.directory
    (store / "delivered" / "pending").mkdir(parents=True, exist_ok=True)
    (store / "delivered" / "2020010100").mkdir(exist_ok=True)
    old_entry = cli.store.put(meta(queue_id="OLD"), DATA)
    target = store / (old_entry.id if part == "entry" else part)
    if kind == "symlink":
        victim = _victim(tmp_path / "victim")
        if target.is_dir():
            os.rename(target, tmp_path / "displaced")
        else:
            target.unlink()
        target.symlink_to(victim)
        return victim
    # A third user's directory (or entry) in the place of the part: its files are theirs.
    if part == "entry":
        os.chown(target, THIRD_USER, THIRD_USER)
        os.utime(target, (OLD, OLD))
        return target
    _victim(target)
    for path in [target, *target.rglob("*")]:
        os.chown(path, THIRD_USER, THIRD_USER, follow_symlinks=False)
    return target


PARTS = ["tmp", "delivered", "delivered/pending", "delivered/2020010100", "entry", "."]


@pytest.mark.parametrize(
    "kind",
    [
        "symlink",
        pytest.param(
            "foreign",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown"),
        ),
    ],
)
@pytest.mark.parametrize("part", PARTS)
def test_purge_refuses_a_linked_or_foreign_part_of_the_store(
    tmp_path: Path, part: str, kind: str
) -> None:
    """``purge`` (as root, too) never deletes through a planted link or in another user's part.

    It removes what it safely can, names each part it refused and why, and exits 1.
    """
    cli = Cli(tmp_path)
    cli.store.directory.mkdir()
    if part == "." and kind == "foreign":
        # The store directory's owner is the store's owner: root purges that user's store.
        old = cli.store.put(meta(queue_id="OLD"), DATA)
        for path in [cli.store.directory, *cli.store.directory.rglob("*")]:
            os.chown(path, THIRD_USER, THIRD_USER)
        done = cli.run("purge", "--older-than", "0")
        assert (done.returncode, done.stderr) == (0, "")
        assert not (cli.store.directory / old.id).exists()
        return
    kept = _plant(cli, part, kind, tmp_path)
    before = sorted(str(p) for p in kept.rglob("*")) if kept.is_dir() else [str(kept)]
    done = cli.run("purge", "--older-than", "0")
    assert done.returncode == 1, done
    shown = "quarantine" if part == "." else part.split("/")[-1] if part != "entry" else ""
    assert shown in done.stderr
    reason = "symbolic link" if kind == "symlink" else f"owned by uid {THIRD_USER}"
    assert reason in done.stderr
    assert "Traceback" not in done.stderr
    after = sorted(str(p) for p in kept.rglob("*")) if kept.is_dir() else [str(kept)]
    assert after == before
    if kind == "symlink":
        assert all((kept / name).exists() for name in VICTIM_FILES)


@pytest.mark.parametrize("command", ["show", "release", "delete"])
def test_commands_refuse_a_linked_store(tmp_path: Path, command: str) -> None:
    """show, release and delete never act on a store directory that is a symbolic link."""
    cli = Cli(tmp_path)
    real = Store(tmp_path / "elsewhere", Clock())
    entry = real.put(meta(), DATA)
    cli.store.directory.symlink_to(real.directory)
    done = cli.run(command, entry.id)
    assert done.returncode == 1
    assert "symbolic link" in done.stderr
    assert done.stderr.count("\n") == 1
    assert cli.sendmail.calls == []
    assert real.get(entry.id)[1] == DATA


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown")
@pytest.mark.parametrize("command", ["show", "release", "delete"])
def test_commands_refuse_a_third_users_entry(tmp_path: Path, command: str) -> None:
    """An entry file owned by neither the store's owner nor root is refused, even by root."""
    cli = Cli(tmp_path)
    entry = cli.store.put(meta(), DATA)
    os.chown(cli.store.directory / entry.id, THIRD_USER, THIRD_USER)
    done = cli.run(command, entry.id)
    assert done.returncode == 1
    assert f"owned by uid {THIRD_USER}" in done.stderr
    assert cli.sendmail.calls == []
    assert (cli.store.directory / entry.id).exists()


# ---- a release never lets the message extend our A-R field (issue 12, item 10) -----------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b" dmarc=pass header.from=reject.example\nFrom: ceo@reject.example\n\nHi\n",
            id="continuation-first",
        ),
        pytest.param(
            b"\tdkim=pass\r\nFrom: ceo@reject.example\r\n\r\nHi\r\n", id="tab-continuation-crlf"
        ),
        pytest.param(b"From ceo@reject.example\nSubject: x\n\nHi\n", id="no-colon"),
        pytest.param(b"\n dmarc=pass\n", id="empty-header-section"),
    ],
)
def test_release_of_a_malformed_message_keeps_our_field_whole(tmp_path: Path, data: bytes) -> None:
    """The bytes a release re-injects start with our A-R field, ending where we say."""
    import email.parser
    import email.policy

    cli = Cli(tmp_path)
    entry = cli.store.put(
        meta(reasons=("malformed: the message starts with a continuation",)), data
    )
    done = cli.run("release", entry.id)
    assert (done.returncode, done.stderr) == (0, "")
    [call] = cli.sendmail.calls
    assert call.data.endswith(data)
    parsed = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(call.data)
    name, value = parsed.items()[0]
    assert name == "Authentication-Results"
    assert " ".join(value.split()) == AR
    assert "dmarc=pass" not in value
    assert "dkim=pass" not in value
    first = Message(call.data).headers[0]
    assert call.data[: first.end].rstrip(b"\r\n").endswith(b"header.from=reject.example")
