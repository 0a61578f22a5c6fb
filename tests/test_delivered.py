"""The record of re-injected messages: what a retry after a crash finds, and what it forgets."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from pathlib import Path

import pytest

from scatterguard.actions.delivery import KEEP_HOURS, DeliveryRecord
from scatterguard.actions.safedir import write_all
from scatterguard.core.envelope import Envelope, parse_envelope
from scatterguard.errors import QuarantineError, ReinjectError


def _envelope(queue_id: str | None, recipients: tuple[str, ...] = ("b@y.example",)) -> Envelope:
    return parse_envelope("a@x.example", recipients, queue_id=queue_id)


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


def test_claim_file_goes_after_a_normal_end_and_stays_after_an_error(tmp_path: Path) -> None:
    """The lock file is removed when the attempt ends normally, kept when it raised (a
    re-injection process may still hold it, and the retry must wait on that same file)."""
    record = DeliveryRecord(tmp_path / "delivered")
    pending = tmp_path / "delivered" / "pending"
    with record.claim("k1") as claim:
        assert not claim.done
        assert (pending / "k1").exists()
    assert not (pending / "k1").exists()
    with pytest.raises(RuntimeError), record.claim("k2"):
        raise RuntimeError("the checks broke")
    assert (pending / "k2").exists()
    with record.claim("k2"):
        pass
    assert not (pending / "k2").exists()


def test_claim_waits_for_the_holder(tmp_path: Path) -> None:
    """A second claim on the same key waits until the first holder is done."""
    record = DeliveryRecord(tmp_path / "delivered")
    order = tmp_path / "order"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the earlier attempt: holds the claim for a while
        try:
            with record.claim("k1"):
                os.write(writer, b"x")
                time.sleep(0.5)
                with open(order, "a") as out:
                    out.write("first\n")
        finally:
            os._exit(0)
    os.read(reader, 1)
    with record.claim("k1"), open(order, "a") as out:
        out.write("second\n")
    os.waitpid(pid, 0)
    assert order.read_text() == "first\nsecond\n"


def test_unwritable_directory_defers(tmp_path: Path) -> None:
    """Without a writable record the claim fails, so the message is deferred, never delivered
    unguarded (a kill could then deliver it twice)."""
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    with (
        pytest.raises(QuarantineError, match="cannot record deliveries"),
        DeliveryRecord(blocker / "delivered").claim("k1"),
    ):
        pass


def test_reinjection_process_records_success_and_reports_failure(tmp_path: Path) -> None:
    """The child records the delivery only when the command succeeded, relays the command's
    diagnostic when it failed, and is always reaped."""
    record = DeliveryRecord(tmp_path / "delivered")
    calls = tmp_path / "calls"

    def good(sender: str, recipients: list[str], data: bytes) -> None:
        with open(calls, "ab") as out:
            out.write(data)

    def bad(sender: str, recipients: list[str], data: bytes) -> None:
        raise ReinjectError("sendmail exited with status 75: 'queue file write error'")

    def crash(sender: str, recipients: list[str], data: bytes) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    with record.claim("k1") as claim:
        record.reinject(claim, good, "a@x.example", ["b@y.example"], b"message")
    assert calls.read_bytes() == b"message"
    assert record.seen("k1")
    with record.claim("k1") as claim:
        assert claim.done
    for key, reinjector, error in [
        ("k2", bad, "queue file write error"),
        ("k3", crash, "died before it reported"),
    ]:
        with pytest.raises(ReinjectError, match=error), record.claim(key) as claim:
            record.reinject(claim, reinjector, "a@x.example", ["b@y.example"], b"message")
        assert not record.seen(key)
        with record.claim(key) as claim:
            assert not claim.done
    assert _zombie_children() == []


def test_claim_file_is_the_record_when_no_marker_can_be_written(tmp_path: Path) -> None:
    """A delivery whose hourly marker cannot be written is still recorded in the claim's own
    file, which then stays: the next claim finds it done."""
    record = DeliveryRecord(tmp_path / "delivered", clock=lambda: 1_800_000_000.0)
    (tmp_path / "delivered").mkdir()
    # A file where this hour's directory should be: the marker cannot be created.
    (tmp_path / "delivered" / "2027011508").write_text("in the way")

    def good(sender: str, recipients: list[str], data: bytes) -> None:
        pass

    with record.claim("k1") as claim:
        record.reinject(claim, good, "a@x.example", ["b@y.example"], b"message")
    assert not record.seen("k1")
    assert (tmp_path / "delivered" / "pending" / "k1").read_bytes() == b"delivered\n"
    with record.claim("k1") as claim:
        assert claim.done


def _zombie_children() -> list[int]:
    """Children of this process that exited and were never waited for."""
    zombies = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(int(stat.parent.name))
    return zombies


def test_claim_file_is_written_whole_when_the_kernel_takes_it_piecemeal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write of the claim's first bytes is continued, not taken for a full disk
    (which deferred the message); a write that takes nothing at all is ENOSPC."""
    real_pwrite = os.pwrite

    def one_byte(fd: int, data: bytes, offset: int) -> int:
        return real_pwrite(fd, bytes(data[:1]), offset)

    monkeypatch.setattr(os, "pwrite", one_byte)
    record = DeliveryRecord(tmp_path / "delivered")
    with record.claim("k1") as claim:
        assert not claim.done
        assert (tmp_path / "delivered" / "pending" / "k1").read_bytes() == b"attempt  \n"
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left") as caught:
            write_all(fd, b"x", 0)
    finally:
        os.close(fd)
    assert caught.value.errno == errno.ENOSPC


# ---- the record 0.1.0 kept in the quarantine directory (issue 13, item 6) ---------------------


def _hour_name(moment: float) -> str:
    return time.strftime("%Y%m%d%H", time.gmtime(moment))


def _tree(root: Path) -> list[tuple[str, int, bytes]]:
    """Every path under ``root`` with its mtime and, for files, its bytes."""
    return sorted(
        (str(p), p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in root.rglob("*")
    )


@pytest.fixture
def upgraded(tmp_path: Path) -> tuple[DeliveryRecord, Path]:
    """A record in the state directory that also reads the one in the quarantine directory."""
    old = tmp_path / "quarantine" / "delivered"
    old.mkdir(parents=True)
    record = DeliveryRecord(tmp_path / "state" / "delivered", clock=lambda: NOW, legacy=old)
    return record, old


NOW = 1_800_000_000.0


def test_an_old_marker_is_found_and_left_alone(upgraded: tuple[DeliveryRecord, Path]) -> None:
    """A marker 0.1.0 wrote (an empty file named after the key in its hour's directory) is seen
    for KEEP_HOURS, and the claim is done; the old record is not written to."""
    record, old = upgraded
    (old / _hour_name(NOW - 3600)).mkdir()
    (old / _hour_name(NOW - 3600) / "k1").touch()
    before = _tree(old)
    assert record.seen("k1")
    assert not record.seen("k2")
    with record.claim("k1") as claim:
        assert claim.done
    with record.claim("k2") as claim:
        assert not claim.done
    assert _tree(old) == before
    assert not (record.directory / _hour_name(NOW)).exists()


def test_an_old_claim_file_is_a_record(upgraded: tuple[DeliveryRecord, Path]) -> None:
    """0.1.0's claim file holding ``delivered`` (its marker could not be written) makes the new
    claim done; one that says ``attempt`` does not."""
    record, old = upgraded
    (old / "pending").mkdir()
    (old / "pending" / "k1").write_bytes(b"delivered\n")
    (old / "pending" / "k2").write_bytes(b"attempt  \n")
    before = _tree(old)
    with record.claim("k1") as claim:
        assert claim.done
    with record.claim("k2") as claim:
        assert not claim.done
    assert _tree(old) == before


def test_a_reinjection_left_running_by_the_old_version_is_waited_for(
    upgraded: tuple[DeliveryRecord, Path],
) -> None:
    """A re-injection process 0.1.0 started before the upgrade holds its claim file's lock; the
    new claim waits for it and then finds the delivery it recorded."""
    record, old = upgraded
    (old / "pending").mkdir()
    lock = old / "pending" / "k1"
    lock.write_bytes(b"attempt  \n")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the old re-injection process: holds the lock, then records the delivery
        try:
            fd = os.open(lock, os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(writer, b"x")
            time.sleep(0.5)
            os.pwrite(fd, b"delivered\n", 0)
        finally:
            os._exit(0)
    os.read(reader, 1)
    started = time.monotonic()
    with record.claim("k1") as claim:
        assert claim.done
    assert time.monotonic() - started > 0.3
    os.waitpid(pid, 0)


def test_no_old_record_is_no_record(tmp_path: Path) -> None:
    """Without a quarantine directory, or with a file in its place, nothing is found and the
    claim works as before; the same directory given twice is not read twice."""
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    for legacy in (tmp_path / "none" / "delivered", blocker / "delivered"):
        record = DeliveryRecord(tmp_path / "state" / "delivered", legacy=legacy)
        assert not record.seen("k1")
        with record.claim("k1") as claim:
            assert not claim.done
    same = DeliveryRecord(tmp_path / "q" / "delivered", legacy=tmp_path / "q" / "delivered")
    assert same.legacy is None


def test_prune_drops_old_markers_of_this_record(tmp_path: Path) -> None:
    """prune() removes hour directories and lock files older than KEEP_HOURS from the record it
    keeps; a missing record is nothing to do."""
    directory = tmp_path / "state" / "delivered"
    record = DeliveryRecord(directory, clock=lambda: NOW)
    assert record.prune() == []
    old_hour, new_hour = _hour_name(NOW - (KEEP_HOURS + 2) * 3600), _hour_name(NOW)
    for hour in (old_hour, new_hour):
        (directory / hour).mkdir(parents=True)
        (directory / hour / "k").touch()
    (directory / "pending").mkdir()
    for name, age in (("stale", KEEP_HOURS + 1), ("fresh", 1)):
        (directory / "pending" / name).touch()
        os.utime(directory / "pending" / name, (NOW - age * 3600, NOW - age * 3600))
    assert record.prune() == []
    assert sorted(p.name for p in directory.iterdir()) == sorted([new_hour, "pending"])
    assert [p.name for p in (directory / "pending").iterdir()] == ["fresh"]


def _finishes(work: object, seconds: float = 5.0) -> bool:
    """Run ``work()`` in a child process; True when it exits 0 within ``seconds``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            work()  # type: ignore[operator]
            os._exit(0)
        except BaseException:  # noqa: BLE001 - any failure is the child's exit status
            os._exit(1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def test_one_directory_spelled_two_ways_is_not_its_own_earlier_record(tmp_path: Path) -> None:
    """A state directory reached through a linked parent (or a bind mount) that is the
    quarantine directory made the earlier record this claim's own file: the claim waited for
    its own lock until the deadline, and every message with a queue id was deferred forever."""
    (tmp_path / "q").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path)
    record = DeliveryRecord(
        tmp_path / "alias" / "q" / "delivered", legacy=tmp_path / "q" / "delivered"
    )
    assert record.legacy is not None  # the paths differ; only the files are the same

    def claim_twice() -> None:
        with record.claim("k1") as claim:
            assert not claim.done
            record.reinject(claim, lambda *_: None, "a@x.example", ["b@y.example"], b"m")
        with record.claim("k1") as claim:
            assert claim.done

    assert _finishes(claim_twice)


def test_purge_leaves_a_held_claim_and_a_claim_stays_fresh(tmp_path: Path) -> None:
    """A claim file reused for days (the MTA retrying while sendmail is down) is touched on each
    claim, and prune never removes one some process holds locked: a retry that found it gone
    would lock a new file and could deliver beside a re-injection still running."""
    directory = tmp_path / "delivered"
    record = DeliveryRecord(directory, clock=lambda: NOW)
    lock = directory / "pending" / "k1"
    old = NOW - (KEEP_HOURS + 5) * 3600
    with record.claim("k1"):
        os.utime(lock, (old, old))
        assert record.prune() == []
        assert lock.exists()

    def failed_attempt() -> None:
        with record.claim("k1") as claim:
            assert lock.stat().st_mtime == NOW
            record.reinject(claim, _fail, "a@x.example", ["b@y.example"], b"m")

    for _retry in range(2):  # the file is kept after each failure, and reused by the retry
        if lock.exists():
            os.utime(lock, (old, old))
        with pytest.raises(ReinjectError):
            failed_attempt()
    assert lock.exists()
    os.utime(lock, (old, old))
    assert record.prune() == []
    assert not lock.exists()  # nobody holds it: a killed filter's leftover goes


def _fail(*_args: object) -> None:
    raise ReinjectError("sendmail exited with status 75")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a store another user owns")
def test_what_root_makes_in_a_users_record_is_that_users(tmp_path: Path) -> None:
    """Root (a root server, an administrator trying ``filter``) claiming in a record the filter's
    user owns left ``pending/``, hour directories and claim files as root:root 0700: the filter,
    run as that user, could open none of them and deferred every message with a queue id (the
    package's smoke test found it). What root makes there is now the owner's."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    record = DeliveryRecord(state / "delivered")
    with record.claim("k1") as claim:
        record.reinject(claim, lambda *_: None, "a@x.example", ["b@y.example"], b"m")
    with record.claim("k2"):
        pass
    made = [state / "delivered", *sorted((state / "delivered").rglob("*"))]
    assert len(made) >= 4  # delivered/, pending/, an hour directory, a marker
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(65534, 65534)}
