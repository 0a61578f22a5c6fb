"""Large messages: spooled to an anonymous file, read through a map, sent on without copies.

The spool threshold is lowered (a parameter, or ``spool.THRESHOLD`` monkeypatched) so that small
messages take the spooled path; the last tests run the real CLI on messages above the real
threshold, one of them 25 MB. Every delivered or quarantined message is compared byte for byte
with the original.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dates import RECEIVED_DATE
from dnsserver import DnsServer
from fakes import FakeSendmail
from scatterguard.actions import spool
from scatterguard.actions.delivery import DeliveryRecord
from scatterguard.actions.quarantine.directory import Store
from scatterguard.actions.quarantine.entry import Metadata, entry_id
from scatterguard.actions.reinject import CommandReinjector
from scatterguard.actions.spool import Spool, SpoolFile
from scatterguard.config import (
    Config,
    DkimConfig,
    DnsConfig,
    QuarantineConfig,
    ReinjectConfig,
    StateConfig,
)
from scatterguard.core.envelope import parse_envelope
from scatterguard.core.message import Message, Payload, Spooled
from scatterguard.errors import InputError, QuarantineError, ReinjectError, SpoolError
from scatterguard.frontends import intake, pipe, request
from scatterguard.services import Services
from signing import Signer, sample_message

AUTHSERV = "mx.rcpt.example"
ZONE = """
sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.sender.example. 300 IN TXT "v=DMARC1; p=reject"
reject.example. 300 IN TXT "v=spf1 -all"
_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject"
"""


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def mapped(directory: Path) -> list[str]:
    """Lines of /proc/self/maps for files in ``directory`` (a spool file still mapped)."""
    with open("/proc/self/maps") as maps:
        return [line for line in maps if str(directory) in line]


def spooled(data: bytes, directory: Path) -> Spooled:
    """``data`` in a spool file in ``directory``."""
    sink = Spool(lambda: directory, threshold=0)
    sink.write(data)
    result = sink.finish()
    assert isinstance(result, SpoolFile)
    return result


def message(sender: str = "alice@sender.example", body: bytes = b"Hi Bob,\n") -> bytes:
    return (
        b"Received: from mx.sender.example by mx.rcpt.example; " + RECEIVED_DATE + b"\n"
        b"From: " + sender.encode() + b"\nTo: bob@rcpt.example\nSubject: big\n"
        b"Message-ID: <big@sender.example>\n\n" + body
    )


# Messages whose bytes are easy to get wrong on the way through: dots at line starts (BSMTP
# stuffing), CRLF and LF, a line that is only a dot, no final line ending, 8-bit and NUL.
TRICKY = {
    "lf-dots": message(body=b".leading\n..two\n.\nend .\n" * 40),
    "crlf-dots": message(body=b".leading\r\n..two\r\n.\r\nend\r\n" * 40).replace(b"\n", b"\r\n"),
    "only-dot-lines": message(body=b".\n" * 300),
    "no-final-newline": message(body=b"line\n" * 200 + b"last line, no end"),
    "8bit-nul-bare-cr": message(body=b"\xe9t\xe9 \x00 bare\rcr\n" * 200),
}


def stuff(data: bytes, eol: bytes = b"\n") -> bytes:
    """Exim's use_bsmtp: envelope, DATA, the message dot-stuffed, the lone dot, QUIT."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", data)
    body = b"".join(b"." + line if line.startswith(b".") else line for line in lines)
    if body and not body.endswith(b"\n"):
        body += eol
    envelope = [b"MAIL FROM:<alice@sender.example>", b"RCPT TO:<bob@rcpt.example>", b"DATA"]
    return eol.join([*envelope, b""]) + body + b"." + eol + b"QUIT" + eol


# ---------------------------------------------------------------------------------------------
# intake


def test_small_message_stays_in_memory(tmp_path: Path) -> None:
    """Up to the threshold the message is bytes and the spool directory is never asked for."""

    def no_spool() -> Path:
        raise AssertionError("a small message must not be spooled")

    data = message()
    got = intake.read_message(io.BytesIO(data), no_spool, threshold=len(data))
    assert got == data
    assert isinstance(got, bytes)


@pytest.mark.parametrize("name", list(TRICKY))
def test_large_message_is_spooled_anonymously(tmp_path: Path, name: str) -> None:
    """Above the threshold the bytes are in a file without a name, mapped read-only."""
    data = TRICKY[name]
    got = intake.read_message(io.BytesIO(data), lambda: tmp_path, threshold=100)
    assert isinstance(got, SpoolFile)
    with got:
        assert got.view[:] == data
        assert got.size == len(data)
        assert os.fstat(got.fileno()).st_nlink == 0
        assert os.listdir(tmp_path) == []
        with pytest.raises(TypeError):
            got.view[0] = 0  # read-only


def test_size_limit_applies_to_spooled_input(tmp_path: Path) -> None:
    """The input cap still holds above the threshold, and nothing is left open."""
    before = open_fds()
    with pytest.raises(InputError, match="larger than 1000"):
        intake.read_message(io.BytesIO(b"x" * 1001), lambda: tmp_path, limit=1000, threshold=10)
    with pytest.raises(InputError, match="larger than 1000"):
        intake.read_bsmtp(
            io.BytesIO(stuff(b"x" * 2000)), lambda: tmp_path, limit=1000, threshold=10
        )
    assert open_fds() == before
    assert mapped(tmp_path) == []


@pytest.mark.parametrize("name", list(TRICKY))
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("threshold", [0, 50, 10**9], ids=["spooled", "spilled", "memory"])
def test_bsmtp_unstuffed_into_spool(tmp_path: Path, name: str, eol: bytes, threshold: int) -> None:
    """BSMTP DATA is unstuffed into memory or the spool with the same bytes as parse_bsmtp."""
    data = TRICKY[name]
    stream = stuff(data, eol)
    batch = intake.read_bsmtp(io.BytesIO(stream), lambda: tmp_path, threshold=threshold)
    expected = data if data.endswith(b"\n") else data + eol
    assert intake.parse_bsmtp(stream).data == expected
    assert (batch.sender, batch.recipients) == ("alice@sender.example", ("bob@rcpt.example",))
    if threshold == 10**9:
        assert batch.data == expected
    else:
        assert isinstance(batch.data, SpoolFile)
        with batch.data:
            assert batch.data.view[:] == expected


def _reference_bsmtp(stream: bytes) -> tuple[str, tuple[str, ...], bytes]:
    """The parser before streaming (whole bytes in, joined bytes out): the oracle."""
    sender: str | None = None
    recipients: list[str] = []
    position = 0
    while True:
        if position >= len(stream):
            raise InputError("BSMTP batch ended before DATA")
        end = stream.find(b"\n", position)
        end = len(stream) if end < 0 else end + 1
        text = stream[position:end].rstrip(b"\r\n")
        position = end
        if not text.strip():
            continue
        match = intake._VERB.match(text)
        if match is None:
            raise InputError(f"not a BSMTP command: {intake._show(text)}")
        verb, keyword = match.group(1).upper(), (match.group(2) or b"").upper()
        if verb in (b"HELO", b"EHLO", b"RSET", b"NOOP") and sender is None:
            continue
        if verb == b"MAIL" and keyword == b"FROM" and sender is None:
            sender = intake._path(match.group(3), "MAIL FROM")
        elif verb == b"RCPT" and keyword == b"TO" and sender is not None:
            recipients.append(intake._path(match.group(3), "RCPT TO"))
        elif verb == b"DATA" and not keyword and sender is not None and recipients:
            break
        else:
            raise InputError(f"unexpected BSMTP command {intake._show(text)}")
    parts = []
    while True:
        if position >= len(stream):
            raise InputError("BSMTP batch ended inside DATA (no lone '.')")
        end = stream.find(b"\n", position)
        end = len(stream) if end < 0 else end + 1
        line = stream[position:end]
        position = end
        if line in (b".\n", b".\r\n", b"."):
            break
        parts.append(line[1:] if line.startswith(b".") else line)
    rest = stream[position:].strip()
    if rest and rest.upper() != b"QUIT":
        raise InputError("BSMTP batch holds more than one message")
    return sender, tuple(recipients), b"".join(parts)


def _outcome(parse: Callable[[], tuple[str, tuple[str, ...], bytes]]) -> object:
    try:
        return parse()
    except InputError as exc:
        return f"InputError: {exc}"


TOKENS = [b".", b"..", b"\n", b"\r\n", b"\r", b"x", b" ", b"QUIT", b"quit", b"\n.\n", b"\t"]
ENVELOPE = b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\nDATA\n"


@settings(max_examples=300, deadline=None)
@given(
    tail=st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join),
    block=st.integers(1, 9),
    threshold=st.integers(0, 30),
)
def test_streaming_bsmtp_matches_the_whole_bytes_parser(
    tail: bytes, block: int, threshold: int
) -> None:
    """Whatever the block boundaries and the threshold, the streamed parse equals the oracle."""
    stream = ENVELOPE + tail
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as name:
        patch.setattr(intake, "BLOCK", block)
        directory = Path(name)

        def streamed() -> tuple[str, tuple[str, ...], bytes]:
            batch = intake.read_bsmtp(io.BytesIO(stream), lambda: directory, None, threshold)
            data = batch.data
            if isinstance(data, SpoolFile):
                with data:
                    return batch.sender, batch.recipients, data.view[:]
            return batch.sender, batch.recipients, data

        assert _outcome(streamed) == _outcome(lambda: _reference_bsmtp(stream))


def test_overlong_bsmtp_command_is_refused() -> None:
    """A command line longer than any MTA writes is not buffered without bound."""
    line = b"MAIL FROM:<" + b"a" * intake.MAX_COMMAND + b">\n"
    with pytest.raises(InputError, match="command line longer"):
        intake.parse_bsmtp(line + b"RCPT TO:<b@y>\nDATA\n.\n")


# ---------------------------------------------------------------------------------------------
# the message view, payloads, re-injection


@pytest.mark.parametrize("name", list(TRICKY))
def test_message_over_a_spool_reads_like_bytes(tmp_path: Path, name: str) -> None:
    """Fields, body offset, line ending and the prepended payload are those of the bytes."""
    data = TRICKY[name].replace(b"Subject: big", b"Subject: big\n folded\nX-Ours: 1")
    plain = Message(data)
    with spooled(data, tmp_path) as source:
        view = Message(source)
        assert view.headers == plain.headers
        assert (view.body_offset, view.problem, view.linesep) == (
            plain.body_offset,
            plain.problem,
            plain.linesep,
        )
        assert view.values("subject") == plain.values("subject") == ["big folded"]
        field = b"Authentication-Results: " + AUTHSERV.encode() + b"; none"
        cut = list(view.fields("X-Ours"))
        payload = view.prepend(field, cut)
        assert payload.source is source
        assert bytes(payload) == plain.with_header(field, cut)
        assert payload.size == len(bytes(payload))


def test_payload_spans_skip_removed_fields() -> None:
    """A payload is the prefix and the original minus the removed fields' exact spans."""
    data = b"A: 1\nX: cut\nB: 2\nX: cut too\n\nbody"
    msg = Message(data)
    payload = msg.prepend(b"New: v", msg.fields("x"))
    assert payload.keep == ((0, 5), (12, 17), (28, 33))  # "A: 1\n", "B: 2\n", "\nbody"
    assert bytes(payload) == b"New: v\nA: 1\nB: 2\n\nbody"
    assert bytes(Payload.of(b"")) == b""


@pytest.mark.parametrize("kind", ["bytes", "spooled"])
def test_reinjected_bytes_are_exact(tmp_path: Path, kind: str) -> None:
    """The command gets prefix + original spans, byte for byte, from memory or the spool."""
    sendmail = FakeSendmail(tmp_path / "sendmail")
    data = TRICKY["crlf-dots"] * 200  # well above the 64 KiB of a pipe
    source: bytes | Spooled = data if kind == "bytes" else spooled(data, tmp_path)
    payload = Message(source).prepend(b"X-New: 1", Message(data).fields("Subject"))
    CommandReinjector(sendmail.command())("a@x.example", ["b@y.example"], payload)
    spool.close(source)
    [call] = sendmail.calls
    assert call.data == Message(data).with_header(b"X-New: 1", Message(data).fields("Subject"))
    assert call.argv[-3:] == ["a@x.example", "--", "b@y.example"]


def test_reinjection_falls_back_when_sendfile_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where sendfile cannot write to a pipe, the spool file is read and written instead."""

    def refuse(*_args: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refuse)
    sendmail = FakeSendmail(tmp_path / "sendmail")
    data = TRICKY["lf-dots"] * 300
    with spooled(data, tmp_path) as source:
        CommandReinjector(sendmail.command())("", ["b@y.example"], Payload.of(source, b"P: 1\n"))
    assert [call.data for call in sendmail.calls] == [b"P: 1\n" + data]


SH = "/bin/sh"


@pytest.mark.parametrize("kind", ["bytes", "spooled"])
@pytest.mark.parametrize(
    ("script", "error"),
    [
        pytest.param(
            'echo "no such user" >&2; exit 67',
            r"exited with status 67: 'no such user'",
            id="status",
        ),
        pytest.param(
            "exec 0<&-; echo early; exit 1", r"exited with status 1: 'early'", id="closes-stdin"
        ),
        pytest.param("kill -9 $$", r"exited with status -9", id="signal"),
        pytest.param("exec sleep 30", r"did not finish within 0.5s", id="timeout"),
        pytest.param(
            "exec 0<&-; exec sleep 30", r"did not finish within 0.5s", id="timeout-no-read"
        ),
        pytest.param("exec 0<&- 1>&- 2>&-; exit 0", None, id="takes-nothing-exit-0"),
        pytest.param("head -c 300000 /dev/zero; cat >/dev/null", None, id="talks-first"),
    ],
)
def test_reinjection_outcomes(tmp_path: Path, kind: str, script: str, error: str | None) -> None:
    """Exit status, output, timeouts and early EOF behave alike for bytes and spooled messages."""
    data = TRICKY["lf-dots"] * 400  # larger than a pipe holds
    source: bytes | Spooled = data if kind == "bytes" else spooled(data, tmp_path)
    reinject = CommandReinjector([SH, "-c", script, "{sender}", "{recipients}"], timeout=0.5)
    try:
        if error is None:
            reinject("a@x.example", ["b@y.example"], Payload.of(source, b"X: 1\n"))
        else:
            with pytest.raises(ReinjectError, match=f"^{SH} {error}"):
                reinject("a@x.example", ["b@y.example"], Payload.of(source, b"X: 1\n"))
    finally:
        spool.close(source)


def test_reinjection_command_that_cannot_run(tmp_path: Path) -> None:
    """A missing program is a ReinjectError naming it, as before."""
    missing = str(tmp_path / "no-sendmail")
    with pytest.raises(ReinjectError, match=f"cannot run {missing}: No such file"):
        CommandReinjector([missing, "{recipients}"])("", ["b@y.example"], Payload.of(b"x"))


# ---------------------------------------------------------------------------------------------
# quarantine and delivery record


def test_quarantine_copies_a_spooled_message(tmp_path: Path) -> None:
    """An entry written from the spool holds exactly the original bytes, under the same id."""
    store = Store(tmp_path / "q")
    data = TRICKY["8bit-nul-bare-cr"]
    meta = Metadata("ceo@reject.example", ("bob@rcpt.example",), queue_id="Q1")
    with spooled(data, tmp_path) as source:
        entry = store.put(meta, source)
        assert entry.id == entry_id(meta, data) == entry_id(meta, source)
    assert store.get(entry.id)[1] == data
    assert (tmp_path / "q" / entry.id).read_bytes().split(b"\n", 1)[1] == data


def test_quarantine_retry_finds_the_entry(tmp_path: Path) -> None:
    """A retried spooled message finds its checked entry; a damaged one is written again."""
    store = Store(tmp_path / "q")
    data = TRICKY["lf-dots"]
    meta = Metadata("", ("bob@rcpt.example",), queue_id="Q3")
    with spooled(data, tmp_path) as source:
        first = store.put(meta, source)
        assert store.put(meta, source) == first
        path = tmp_path / "q" / first.id
        path.write_bytes(path.read_bytes()[:-1] + b"!")
        with pytest.raises(QuarantineError, match="damaged"):
            store.verified(first.id)
        store.put(meta, source)
    assert store.get(first.id)[1] == data


def test_quarantine_copy_falls_back_to_sendfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where copy_file_range cannot copy between the files, sendfile does."""

    def refuse(*_args: object, **_kwargs: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    store = Store(tmp_path / "q")
    data = TRICKY["lf-dots"] * 100
    with spooled(data, tmp_path) as source:
        entry = store.put(Metadata("", ("bob@rcpt.example",)), source)
    assert store.get(entry.id)[1] == data


def test_delivery_key_of_a_spooled_message(tmp_path: Path) -> None:
    """The delivery record names a spooled message as it names the same bytes in memory."""
    envelope = parse_envelope("a@x.example", ["b@y.example"], queue_id="Q1")
    data = TRICKY["lf-dots"]
    with spooled(data, tmp_path) as source:
        assert DeliveryRecord.key(envelope, source) == DeliveryRecord.key(envelope, data)


# ---------------------------------------------------------------------------------------------
# the whole filter, in-process, with the threshold lowered


class Log:
    """A logger that keeps the one line per message."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def info(self, event: str, **values: object) -> None:
        self.lines.append(values)

    error = info


class Setup:
    """A filter configuration with a recording sendmail, a quarantine and a state directory
    (where the spool is) under ``tmp``, or the state directory at ``state``."""

    def __init__(self, tmp: Path, dns: DnsServer, state: Path | None = None, **dkim: int) -> None:
        self.sendmail = FakeSendmail(tmp / "sendmail")
        self.quarantine = tmp / "quarantine"
        self.state = tmp / "state" if state is None else state
        self.spool = self.state / "spool"
        self.config = Config(
            authserv_id=AUTHSERV,
            trusted_networks=(ipaddress.ip_network("10.0.0.0/8"),),
            dns=DnsConfig(((dns.host, dns.port),), 0.5),
            dkim=DkimConfig(**dkim),
            reinject=ReinjectConfig(tuple(self.sendmail.command())),
            quarantine=QuarantineConfig(self.quarantine),
            state=StateConfig(self.state),
        )
        self.log = Log()
        # Built once, as each process does, and used for every message of the test.
        self.services = Services.from_config(self.config, logger=self.log)

    def run(self, argv: list[str], stdin: bytes) -> pipe.Outcome:
        filter_request = request.parse_filter(["filter", *argv], {})
        done = pipe.filter_stream(
            filter_request, io.BytesIO(stdin), self.config, services=self.services
        )
        return pipe.answer(done)

    def entries(self) -> list[Path]:
        return [p for p in self.quarantine.iterdir() if p.is_file()]


@pytest.fixture
def small_spool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message above 256 bytes is spooled."""
    monkeypatch.setattr(spool, "THRESHOLD", 256)


@pytest.fixture
def setup(tmp_path: Path, dns_server: DnsServer, small_spool: None) -> Setup:
    dns_server.records.add_text(ZONE)
    return Setup(tmp_path, dns_server)


ARGV = ["-f", "alice@sender.example", "--client-address=192.0.2.5", "--queue-id=Q1", "--"]


def delivered_original(setup: Setup, original: bytes) -> bytes:
    """The one re-injected message, checked to be one A-R field + the original bytes."""
    [call] = setup.sendmail.calls
    assert call.data.endswith(original)
    header = call.data[: len(call.data) - len(original)]
    assert header.startswith(b"Authentication-Results: " + AUTHSERV.encode() + b";")
    assert Message(header).headers[0].end == len(header)  # exactly one field
    return header


@pytest.mark.parametrize("name", list(TRICKY))
@pytest.mark.parametrize("bsmtp", [False, True], ids=["argv", "bsmtp"])
def test_spooled_message_delivered_byte_identical(setup: Setup, name: str, bsmtp: bool) -> None:
    """A spooled message goes out as our header + the original bytes, from argv or BSMTP."""
    data = TRICKY[name]
    before = open_fds()
    if bsmtp:
        eol = b"\r\n" if name.startswith("crlf") else b"\n"
        outcome = setup.run(["--bsmtp", "--client-address=192.0.2.5"], stuff(data, eol))
        if not data.endswith(b"\n"):
            data += eol  # BSMTP cannot carry a message without a final line ending
    else:
        outcome = setup.run([*ARGV, "bob@rcpt.example"], data)
    assert (outcome.code, outcome.status) == (0, None)
    header = delivered_original(setup, data)
    assert b"spf=pass" in header
    assert setup.log.lines[-1]["size"] == len(data)
    assert open_fds() == before
    assert mapped(setup.state) == []
    assert os.listdir(setup.spool) == []
    # A delivery leaves nothing beside the quarantine, which may be shared by other hosts.
    assert not setup.quarantine.exists()


@pytest.mark.parametrize("bsmtp", [False, True], ids=["argv", "bsmtp"])
def test_spooled_message_quarantined_byte_identical(setup: Setup, bsmtp: bool) -> None:
    """A forged spooled message is quarantined with exactly its original bytes."""
    data = message("ceo@reject.example", b".dot\n" * 500)
    argv = ["-f", "ceo@reject.example", "--client-address=203.0.113.9", "--queue-id=Q2"]
    if bsmtp:
        stream = stuff(data).replace(b"alice@sender.example", b"ceo@reject.example")
        outcome = setup.run(["--bsmtp", *argv[2:]], stream)
    else:
        outcome = setup.run([*argv, "--", "bob@rcpt.example"], data)
    assert outcome.code == 0
    assert setup.sendmail.calls == []
    [entry] = setup.entries()
    assert entry.read_bytes().split(b"\n", 1)[1] == data
    assert Store(setup.quarantine).get(entry.name)[1] == data


def _other_file_system(than: Path) -> Path | None:
    """A fresh directory on a file system other than ``than``'s (a tmpfs), or None."""
    for base in ("/dev/shm", "/run", "/tmp"):
        usable = os.path.isdir(base) and os.access(base, os.W_OK)
        if usable and os.stat(base).st_dev != os.stat(than).st_dev:
            return Path(tempfile.mkdtemp(prefix="sg-state-", dir=base))
    return None


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A state directory on another file system than the quarantine's (tmp_path)."""
    directory = _other_file_system(tmp_path)
    if directory is None:
        pytest.skip("no second file system to put the state directory on")
    try:
        yield directory / "state"
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("bsmtp", [False, True], ids=["argv", "bsmtp"])
def test_spooled_message_quarantined_across_file_systems(
    tmp_path: Path, dns_server: DnsServer, small_spool: None, elsewhere: Path, bsmtp: bool
) -> None:
    """With the spool (state directory) on one file system and the quarantine on another, a
    spooled message is copied into its entry byte for byte; the spool is left empty."""
    dns_server.records.add_text(ZONE)
    setup = Setup(tmp_path, dns_server, state=elsewhere)
    data = message("ceo@reject.example", b".dot \xe9t\xe9 \x00 bare\rcr\n" * 400)
    argv = ["-f", "ceo@reject.example", "--client-address=203.0.113.9", "--queue-id=Q9"]
    if bsmtp:
        stream = stuff(data).replace(b"alice@sender.example", b"ceo@reject.example")
        outcome = setup.run(["--bsmtp", *argv[2:]], stream)
    else:
        outcome = setup.run([*argv, "--", "bob@rcpt.example"], data)
    assert (outcome.code, outcome.status) == (0, None)
    assert os.stat(setup.spool).st_dev != os.stat(setup.quarantine).st_dev
    assert os.listdir(setup.spool) == []
    [entry] = setup.entries()
    assert Store(setup.quarantine).get(entry.name)[1] == data
    assert setup.sendmail.calls == []


def test_unwritable_spool_directory_defers(setup: Setup) -> None:
    """When the spool directory cannot be made, the message is deferred, and says why."""
    setup.state.write_text("a file where the state directory should be")
    outcome = setup.run([*ARGV, "bob@rcpt.example"], TRICKY["lf-dots"])
    assert outcome.code == 75
    assert "cannot create directory" in str(setup.log.lines[-1]["error"])
    assert setup.sendmail.calls == []
    # A small message needs no spool: it is delivered as before. (Without a queue id: with one,
    # the delivery record, also in the state directory, would defer it.)
    no_queue_id = [arg for arg in ARGV if not arg.startswith("--queue-id")]
    outcome = setup.run([*no_queue_id, "bob@rcpt.example"], message())
    assert outcome.code == 0
    delivered_original(setup, message())


def test_spool_write_failure_defers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write error in the middle of spooling (the disk is full) is a SpoolError, no file left."""
    sink = Spool(lambda: tmp_path, threshold=10)
    sink.write(b"x" * 5)
    real_write = os.write

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    before = open_fds()
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SpoolError, match="no space left on the device"):
        sink.write(b"y" * 10)
    monkeypatch.setattr(os, "write", real_write)
    assert open_fds() <= before
    assert os.listdir(tmp_path) == []


def test_dkim_verified_on_a_spooled_message(setup: Setup, dns_server: DnsServer) -> None:
    """Below the DKIM size cap a spooled message's signatures are verified as in memory."""
    signer = Signer("sender.example", "s1")
    signer.publish(dns_server)
    body = b"".join(b".line %d of a signed message   with  spaces \r\n" % i for i in range(300))
    signed = signer.sign(sample_message(body=body, linesep=b"\n"))
    assert len(signed) > spool.THRESHOLD
    outcome = setup.run([*ARGV, "bob@rcpt.example"], signed)
    assert outcome.code == 0
    header = delivered_original(setup, signed)
    assert b"dkim=pass header.d=sender.example" in header
    assert setup.log.lines[-1]["dkim"] == ["sender.example:pass"]


def test_dkim_not_verified_above_the_cap(
    tmp_path: Path, dns_server: DnsServer, small_spool: None
) -> None:
    """Above the DKIM size cap the signature is neutral and the message still goes through."""
    dns_server.records.add_text(ZONE)
    signer = Signer("sender.example", "s1")
    signer.publish(dns_server)
    signed = signer.sign(sample_message(body=b"x\r\n" * 500, linesep=b"\n"))
    capped = Setup(tmp_path, dns_server, max_message_size=1000)
    outcome = capped.run([*ARGV, "bob@rcpt.example"], signed)
    assert outcome.code == 0
    assert capped.log.lines[-1]["dkim"] == ["sender.example:neutral"]
    delivered_original(capped, signed)


# ---------------------------------------------------------------------------------------------
# the real CLI on messages above the real threshold


def cli_config(tmp: Path, quarantine: Path) -> tuple[Path, Path]:
    out = tmp / "reinjected.eml"
    config = tmp / "scatterguard.toml"
    config.write_text(
        f'authserv_id = "{AUTHSERV}"\n'
        'trusted_networks = ["10.0.0.0/8"]\n'
        '[dns]\nnameservers = ["127.0.0.1:9"]\ntimeout = 0.2\n'
        '[reinject]\ncommand = ["/bin/sh", "-c", "cat > \\"$0\\"", '
        f'"{out}", "-f", "{{sender}}", "--", "{{recipients}}"]\n'
        f'[quarantine]\ndirectory = "{quarantine}"\n'
        f'[state]\ndirectory = "{tmp / "state"}"\n'
        # Filter mode never logs to stderr (it is the MTA's): a test reads this socket.
        f'[log]\nsocket = "{tmp / "log.sock"}"\n'
        '[server]\nsocket = ""\n'
    )
    return config, out


def big_message(size: int) -> bytes:
    line = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?\n"
    return message(body=line * (size // len(line)) + b".\nlast line")


# Run one command and print the peak RSS (KiB) of its process tree: a fresh, small parent, so
# its own pages are not counted as the child's (the kernel carries them over a fork).
MEASURE = """
import resource, subprocess, sys
with open(sys.argv[1], "rb") as stdin:
    done = subprocess.run(sys.argv[2:], stdin=stdin, capture_output=True)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stdout.write("%d %d\\n" % (done.returncode, peak))
sys.stdout.write(done.stdout.decode() + "\\n" + done.stderr.decode())
"""


def run_measured(config: Path, path: Path, *argv: str) -> tuple[int, int, str]:
    command = [sys.executable, "-m", "scatterguard", "--config", str(config), "filter", *argv]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), *command],
        capture_output=True,
        timeout=120,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")},
    )
    head, _, rest = done.stdout.decode().partition("\n")
    code, rss = head.split()
    return int(code), int(rss), rest


COMMAND = ["-m", "scatterguard"]
CLI_ARGV = ["-f", "alice@sender.example", "--client-address=10.1.2.3", "--", "bob@rcpt.example"]


@pytest.mark.slow
def test_25_mb_message_through_the_cli(tmp_path: Path) -> None:
    """25 MB (above the DKIM cap) goes out byte-identical, with memory far below its size."""
    config, out = cli_config(tmp_path, tmp_path / "quarantine")
    small, big = tmp_path / "small.eml", tmp_path / "big.eml"
    small.write_bytes(message())
    data = big_message(25 * 1024 * 1024)
    big.write_bytes(data)
    code, baseline, log = run_measured(config, small, *CLI_ARGV)
    assert code == 0, log
    code, peak, log = run_measured(config, big, *CLI_ARGV)
    assert code == 0, log
    delivered = out.read_bytes()
    assert delivered.endswith(data)
    assert delivered[: len(delivered) - len(data)].startswith(b"Authentication-Results: ")
    assert os.listdir(tmp_path / "state" / "spool") == []
    # Not a timing: the old code held the message twice (read, then header + message joined).
    # Generous: a quarter of the message's size above the same filter on a small message.
    assert (peak - baseline) * 1024 < len(data) / 4, (peak, baseline)


def test_spool_file_size_limit_defers(tmp_path: Path) -> None:
    """A write error while spooling (here the file size limit, as a full disk) exits 75."""
    config, out = cli_config(tmp_path, tmp_path / "quarantine")
    path = tmp_path / "big.eml"
    path.write_bytes(big_message(3 * 1024 * 1024))

    # Set in a small exec'd wrapper: preexec_fn is unsafe in this threaded test process.
    size = 2 * 1024 * 1024
    limited = (
        "import os, resource, sys;"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size}, {size}));"
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    with (
        open(path, "rb") as stdin,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog,
    ):
        syslog.bind(str(tmp_path / "log.sock"))
        done = subprocess.run(
            [sys.executable, "-c", limited, *COMMAND, "--config", str(config), "filter", *CLI_ARGV],
            stdin=stdin,
            capture_output=True,
            timeout=60,
            check=False,
        )
        syslog.settimeout(5)
        logged = syslog.recv(65536)
    assert done.returncode == 75
    assert done.stdout == b"4.3.0 Temporary mail filter failure, try again later\n"
    assert done.stderr == b""
    assert b"SpoolError: spool: cannot write a file in" in logged
    assert not out.exists()
