"""Fuzz targets (issue 7 item 5): one function per parser, from raw bytes to checked invariants.

Each target takes the fuzzer's bytes, feeds them to one parser of scatterguard, and asserts what
must hold for every input; any exception is a finding. The same functions are driven by atheris
(``fuzz.py``, coverage-guided), by the Hypothesis fallback in ``fuzz.py``, and by
``test_corpus.py``, which replays the stored corpus under pytest on every interpreter.

Targets:

- ``message``: :class:`scatterguard.core.message.Message` (header spans, values, prepending, our A-R
  fields found by :func:`scatterguard.core.authresults.ours`).
- ``bsmtp``: :func:`scatterguard.frontends.intake.parse_bsmtp` (only ``InputError``; what it reads,
written
  back as Exim would, reads the same again).
- ``dmarc_record``: :func:`scatterguard.core.dmarcrecord.parse_record` (never raises; a record
written
  back from what it read parses to the same policy).
- ``from_domains``: :func:`scatterguard.core.authors.from_domains` (A-label domains only, capped,
and a
  From field added on top adds exactly its domain in front).
- ``reverse_path``: :func:`scatterguard.core.envelope.parse_sender` (only ``UsageError``, for
control
  characters; the domain reported is the one SPF evaluates; the path comes back as given).
- ``authresults``: :func:`scatterguard.core.authresults.render` of an AuthReport built from the
bytes
  (printable ASCII, folded, parsed back by authres to the same methods and words, no value that
  was not a valid domain, selector or algorithm).
- ``reinject_command``: ``reinject.command`` validation (issue 12, item 11): an accepted command
  passes the reverse-path and every recipient intact.

- ``dkim_tag_list`` (issue 12 item 1): :func:`scatterguard.checks.dkim.parse_tag_list` against
  dkimpy's ``parse_tag_value`` (ours accepts only what dkimpy reads as the same dict), and
  :func:`~scatterguard.checks.dkim.check_dkim` on the bytes as a DKIM-Signature field: every
  ``d=``, ``s=``, ``a=`` and header.b it reports is dkimpy's parse of the field it was handed.
- ``handover_request``: :func:`scatterguard.frontends.handover.receive`, the server's reading of a
request
  (with 0, 1 or 2 passed descriptors): no descriptor is ever left open.
- ``handover_reply``: :func:`scatterguard.frontends.handover.hand_over`, the client's reading of
what a
  server sends: it reports 0 or 69 only after it sent "go".
"""

from __future__ import annotations

import array
import contextlib
import math
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

from scatterguard.checks import dkim as dkimcheck
from scatterguard.checks import spf as spfcheck
from scatterguard.checks.resolver import Answer, Resolver, Status
from scatterguard.config import DkimConfig
from scatterguard.core import authors, authresults, dmarcrecord, envelope
from scatterguard.core.message import MAX_HEADER_FIELDS, Message
from scatterguard.core.results import (
    AuthReport,
    DkimResult,
    DmarcCause,
    DmarcResult,
    Policy,
    Result,
    SpfResult,
)
from scatterguard.errors import InputError, UsageError
from scatterguard.frontends import handover, intake

AUTHSERV = "mx.rcpt.example"
_DOMAIN = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\Z"
)


# ---------------------------------------------------------------------------------------------
# message


def message(data: bytes) -> None:
    """Header spans tile the header section; prepending adds exactly one field."""
    msg = Message(data)
    assert 0 <= msg.body_offset <= len(data)
    assert len(msg.headers) <= MAX_HEADER_FIELDS
    position = 0
    for header in msg.headers:
        # Fields are contiguous from the first byte: nothing between them is lost or skipped.
        assert header.start == position < header.end <= msg.body_offset
        raw = header.raw(data)
        assert raw.startswith(header.name.encode("latin-1"))
        assert b":" in raw
        assert isinstance(msg.value(header), str)
        position = header.end
    assert msg.linesep in (b"\n", b"\r\n")
    ours = list(authresults.ours(msg, AUTHSERV))
    assert all(h.name.lower() == "authentication-results" for h in ours)

    field = b"Authentication-Results: " + AUTHSERV.encode() + b"; spf=pass"
    # A message without a header section gets an empty line after our field (issue 12, item 10).
    separator = msg.linesep if msg.body_offset == 0 and data else b""
    assert msg.with_header(field) == field + msg.linesep + separator + data
    out = msg.with_header(field, ours)
    removed = sum(h.end - h.start for h in ours)
    assert len(out) == len(field) + len(msg.linesep) + len(separator) + len(data) - removed
    # issue 12, item 10: whatever the message, our field ends where we say, also once the
    # fields with our authserv-id are cut out.
    for prepended in (msg.with_header(field), out):
        assert Message(prepended).headers[0].raw(prepended) == field + msg.linesep

    # Read back, the prepended field is exactly ours and every other field is where it was. A
    # first line that starts with white space would fold into our field: such a message must be
    # flagged (Message.problem), and the filter quarantines it instead of delivering it.
    if data[:1] in (b" ", b"\t"):
        assert msg.problem is not None
    if msg.problem is None and len(msg.headers) < MAX_HEADER_FIELDS:
        plain = msg.with_header(field)
        again = Message(plain)
        assert again.headers[0].raw(plain) == field + msg.linesep
        shift = len(field) + len(msg.linesep)
        assert [(h.start - shift, h.end - shift) for h in again.headers[1:]] == [
            (h.start, h.end) for h in msg.headers
        ]


# ---------------------------------------------------------------------------------------------
# bsmtp


def restuff(sender: str, recipients: tuple[str, ...], data: bytes) -> bytes:
    """Write a batch back as Exim's use_bsmtp does: dot-stuffed, ended by a lone dot."""
    # Paths keep octets that are not UTF-8 as surrogate escapes (as argv does): write them back.
    lines = [_octets(f"MAIL FROM:<{sender}>"), *(_octets(f"RCPT TO:<{r}>") for r in recipients)]
    # Lines end at LF only, as in intake; bytes.splitlines() would also split at a bare CR.
    lines += [b"DATA"]
    body = b"".join(b"." + line if line.startswith(b".") else line for line in _lf_lines(data))
    return b"\n".join([*lines, b""]) + body + b".\n"


def _octets(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _lf_lines(data: bytes) -> list[bytes]:
    return re.findall(rb"[^\n]*\n|[^\n]+\Z", data)


def bsmtp(data: bytes) -> None:
    """Only InputError escapes; a batch that was read, written back, reads the same."""
    try:
        batch = intake.parse_bsmtp(data)
    except InputError:
        return
    assert batch.recipients
    assert all(isinstance(r, str) for r in (batch.sender, *batch.recipients))
    if b"\n" in _octets(batch.sender + "".join(batch.recipients)):
        return  # a path with LF cannot be written back on one line; the envelope refuses it
    if batch.data and not batch.data.endswith(b"\n"):
        return  # the writer would add a line ending (as Exim does)
    again = intake.parse_bsmtp(restuff(batch.sender, batch.recipients, batch.data))
    assert again == batch, (again, batch)


# ---------------------------------------------------------------------------------------------
# dmarc_record


def dmarc_record(data: bytes) -> None:
    """Never raises; an applicable record written back parses to the same policy."""
    record = dmarcrecord.parse_record(data)
    if record is None:
        return
    assert isinstance(record.p, Policy)
    assert record.psd in ("y", "n", "u")
    assert all(isinstance(problem, str) for problem in record.problems)
    if not record.applicable:
        return
    tags = [f"p={record.p.value}"]
    if record.sp is not None:
        tags.append(f"sp={record.sp.value}")
    if record.np is not None:
        tags.append(f"np={record.np.value}")
    tags += [f"psd={record.psd}", f"t={'y' if record.testing else 'n'}"]
    tags += [f"adkim={'s' if record.strict_dkim else 'r'}"]
    tags += [f"aspf={'s' if record.strict_spf else 'r'}"]
    again = dmarcrecord.parse_record(("v=DMARC1; " + "; ".join(tags)).encode())
    assert again is not None
    fields = ("p", "sp", "np", "psd", "testing", "strict_dkim", "strict_spf", "applicable")
    assert [getattr(again, f) for f in fields] == [getattr(record, f) for f in fields]


# ---------------------------------------------------------------------------------------------
# from_domains


def from_domains(data: bytes) -> None:
    """Domains are lower-case A-labels, capped; a From field on top adds its domain in front."""
    first = authors.from_domains(Message(b"From: " + data + b"\n\nbody\n"))
    if isinstance(first, list):
        assert 0 < len(first) <= authors.MAX_AUTHOR_DOMAINS + 1
        assert len(set(first)) == len(first)
        for domain in first:
            assert len(domain) <= 253, domain
            assert _DOMAIN.match(domain), domain
        before = first
    else:
        assert isinstance(first, authors.NoAuthorDomain)
        assert first.cause in (
            DmarcCause.NO_FROM_ADDRESS,
            DmarcCause.NO_FROM_DOMAIN,
        ), first
        before = []
    second = authors.from_domains(Message(b"From: a@zz.example\nFrom: " + data + b"\n\nbody\n"))
    expected = ["zz.example", *(d for d in before if d != "zz.example")]
    assert second == expected[: authors.MAX_AUTHOR_DOMAINS + 1], (second, expected)


# ---------------------------------------------------------------------------------------------
# authresults


class Bytes:
    """Consumes fuzzer bytes as small integers and strings (a tiny FuzzedDataProvider)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def number(self, limit: int) -> int:
        """An integer in ``range(limit)``; 0 once the bytes run out."""
        if self.position >= len(self.data):
            return 0
        value = self.data[self.position]
        self.position += 1
        return value % limit

    def text(self) -> str | None:
        """None, or a string of up to 63 bytes decoded as UTF-8 (replacement characters kept)."""
        size = self.number(65) - 1
        if size < 0:
            return None
        chunk = self.data[self.position : self.position + size]
        self.position += size
        return chunk.decode("utf-8", "replace")

    def pick(self, choices: tuple[object, ...]) -> object:
        return choices[self.number(len(choices))]


RESULTS = tuple(Result)
POLICIES = (None, *Policy)


def report_from(data: bytes) -> tuple[AuthReport, str | None]:
    """An AuthReport (and a sender domain) whose every value comes from the bytes."""
    given = Bytes(data)
    spf = SpfResult(
        given.pick(RESULTS),  # type: ignore[arg-type]
        "helo" if given.number(2) else "mailfrom",
        given.text(),
    )
    signatures = tuple(
        DkimResult(
            result=given.pick(RESULTS),  # type: ignore[arg-type]
            domain=given.text(),
            selector=given.text(),
            algorithm=given.text(),
            covers_body=bool(given.number(2)),
            b_prefix=given.text(),
        )
        for _ in range(given.number(5))
    )
    result = DmarcResult(
        given.pick(RESULTS),  # type: ignore[arg-type]
        given.text(),
        given.pick(POLICIES),  # type: ignore[arg-type]
    )
    return AuthReport(spf=spf, dkim=signatures, dmarc=result), given.text()


def authresults_render(data: bytes) -> None:
    """Rendered A-R is printable, folded ASCII that parses back to the same words and values."""
    import authres  # what an MUA or a downstream filter would parse our field with

    report, sender_domain = report_from(data)
    rendered = authresults.render(AUTHSERV, report, sender_domain)
    for eol in (b"\n", b"\r\n"):
        field = rendered.field(eol)
        lines = field.split(eol)
        assert all(re.fullmatch(rb"[\t\x20-\x7e]+", line) for line in lines), field
        assert all(line.startswith(b"\t") for line in lines[1:])
    parsed = authres.AuthenticationResultsHeader.parse(f"Authentication-Results: {rendered.value}")
    assert parsed.authserv_id == AUTHSERV
    got = [(r.method, r.result) for r in parsed.results]
    dkim = [("dkim", sig.result.value) for sig in report.dkim] or [("dkim", "none")]
    assert got == [("spf", report.spf.result.value), *dkim, ("dmarc", report.dmarc.result.value)]
    # A property value is either absent or exactly a valid value from the report: nothing from
    # the message or DNS can add a result or a property of its own.
    allowed = {v for v in (report.spf.domain, sender_domain, report.dmarc.domain) if v is not None}
    for sig in report.dkim:
        allowed.update(v for v in (sig.domain, sig.selector, sig.algorithm, sig.b_prefix) if v)
    if report.dmarc.policy is not None:
        allowed.add(report.dmarc.policy.value)
    for item in parsed.results:
        for prop in item.properties:
            assert prop.value in allowed, (prop.type, prop.name, prop.value)


# ---------------------------------------------------------------------------------------------
# reverse_path (issue 12 items 5 and 7)


def reverse_path(data: bytes) -> None:
    """Any reverse-path parses or raises UsageError (control characters only); the domain it
    reports is the one SPF would evaluate, and the path comes back as given."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        sender = envelope.parse_sender(text)
    except UsageError:
        assert re.search(r"[\x00-\x1f\x7f]", text)
        return
    if sender is None:
        assert text in ("", "<>")
        return
    assert sender.text in (text, text[1:-1])
    if sender.domain is None:
        assert sender.problem
        return
    assert _DOMAIN.match(sender.domain), sender.domain
    # What SPF evaluates: spfcheck takes the domain and local part from this Address (never
    # pyspf's own split of the text), so the domain reported is the one evaluated.
    domain = spfcheck.spf_domain(sender.domain)
    assert domain is None or domain == sender.domain
    if sender.strict:
        # A strict path has exactly this domain after its last "@": the text agrees.
        assert sender.text.rstrip(".").lower().endswith(sender.domain) or not sender.text.isascii()


# dkim_tag_list (issue 12 item 1)


class _NoKeys(Resolver):
    """Every lookup is NXDOMAIN, with no network: no signature can pass, all are described."""

    def __init__(self) -> None:
        super().__init__([("127.0.0.1", 9)], timeout=0.1)

    def query(self, name: str, rdtype: str) -> Answer:
        del name, rdtype
        return Answer(Status.NXDOMAIN)


def dkim_tag_list(data: bytes) -> None:
    """Ours accepts only what dkimpy reads the same; what check_dkim reports is dkimpy's parse."""
    import dkim.util  # the parser dkimpy verifies with

    try:
        ours: dict[bytes, bytes] | None = dkimcheck.parse_tag_list(data)
    except dkimcheck.TagListError:
        ours = None
    if ours is not None:
        assert dkim.util.parse_tag_value(data) == ours, (data, ours)
    message = Message(b"DKIM-Signature:" + data + b"\r\nFrom: a@sender.example\r\n\r\nbody\r\n")
    results = dkimcheck.check_dkim(_NoKeys(), message, DkimConfig(), timeout=0.1)
    fields = [h for h in message.headers if h.name.lower() == dkimcheck.FIELD_NAME]
    assert len(results) == len(fields)
    for field, result in zip(fields, results, strict=True):
        assert result.result is not Result.PASS
        # The value exactly as it is handed to dkimpy for verification.
        handed = dkimcheck._dkimpy_header(message.data, field)[1]
        try:
            truth: dict[bytes, bytes] | None = dkim.util.parse_tag_value(handed)
        except dkim.util.InvalidTagValueList:
            truth = None
        reported = (result.domain, result.selector, result.algorithm, result.b_prefix)
        if truth is None:
            assert reported == (None, None, None, None), (handed, result)
            continue
        for value, tag in zip(reported[:3], (b"d", b"s", b"a"), strict=True):
            if value is not None:
                expected = truth[tag].decode("ascii")
                assert value == (expected.lower() if tag == b"d" else expected), (handed, result)
        if result.b_prefix is not None:
            assert re.sub(rb"\s+", b"", truth[b"b"]).decode().startswith(result.b_prefix)


# Issue 12 items 2/3: the hand-over's frames, from either side.


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def handover_request(data: bytes) -> None:
    """The server's reading of a request: a Request with one descriptor, or HandoverError /
    OSError; never a descriptor left open, never a deadline that is not a finite number."""
    before = _open_fds()
    server, client = socket.socketpair()
    reader, writer = os.pipe()
    try:
        count, payload = (data[0] % 3, data[1:65537]) if data else (0, b"")
        ancillary = []
        if count:
            fds = array.array("i", [reader] * count)
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())]
        with contextlib.suppress(OSError):
            client.sendmsg([payload], ancillary)
        client.shutdown(socket.SHUT_WR)
        try:
            request = handover.receive(server, timeout=0.05)
        except (handover.HandoverError, OSError):
            pass
        else:
            os.close(request.stdin_fd)
            assert math.isfinite(request.deadline)
            assert all(isinstance(item, str) for item in request.argv)
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in request.env.items())
    finally:
        for item in (server, client):
            item.close()
        os.close(reader)
        os.close(writer)
    assert _open_fds() == before, "a passed descriptor was left open"


def handover_reply(data: bytes) -> None:
    """The client's reading of whatever a server sends: exit 0 or 69 only after it said "go"
    (the server may act only on that), and anything else is 75 or HandoverError."""
    server, client = socket.socketpair()
    reader, writer = os.pipe()
    try:
        with contextlib.suppress(OSError):
            server.sendall(data[:65536])
        server.shutdown(socket.SHUT_WR)
        now = time.monotonic()
        try:
            reply = handover.hand_over(client, ["filter"], {}, reader, now + 0.05, now + 0.1)
        except handover.HandoverError:
            return
        client.shutdown(socket.SHUT_WR)
        sent = b""
        server.settimeout(1.0)
        while chunk := server.recv(65536):
            sent += chunk
        assert reply.code in (0, 69, 75)
        assert reply.code == 75 or b'{"go":' in sent, (reply.code, sent[-200:])
        assert reply.code == 0 or reply.status  # 69 and 75 carry their one status line
    finally:
        for item in (server, client):
            item.close()
        os.close(reader)
        os.close(writer)


TOKENS = Path(__file__).resolve().parent / "tokens.dict"


def tokens() -> list[bytes]:
    """The libFuzzer dictionary's tokens (``"..."`` lines, ``\\xNN`` escapes), for Hypothesis."""
    found = []
    for line in TOKENS.read_text("ascii").splitlines():
        line = line.strip()
        if line.startswith('"') and line.endswith('"'):
            found.append(line[1:-1].encode("latin-1").decode("unicode_escape").encode("latin-1"))
    return found


# ---------------------------------------------------------------------------------------------
# Issue 12, item 11 (the admin block): reinject.command


def reinject_command(data: bytes) -> None:
    """A command the configuration accepts hands the MTA the reverse-path and every recipient.

    The bytes are split on NUL into arguments (the program first). Accepted or refused with a
    ConfigError naming ``reinject.command``, nothing else; once accepted, the expanded argv has
    the sender exactly once, right after its option and before ``--``, and the recipients, all
    of them, together, after ``--``.
    """
    from scatterguard import config
    from scatterguard.actions.reinject import expand
    from scatterguard.errors import ConfigError

    command = [arg.decode("utf-8", "replace") for arg in data.split(b"\x00")]
    try:
        parsed = config.parse({"reinject": {"command": command}}, source="fuzz")
    except ConfigError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        assert "reinject.command" in refused
        return
    # A lone surrogate: no argument decoded from the bytes can hold one.
    sender, recipients = "\ud800s@x.example", ["\ud800r1@y.example", "\ud800r2@y.example"]
    argv = expand(parsed.reinject.command, sender, recipients)
    assert argv.count(sender) == 1
    at = argv.index(sender)
    assert argv[at - 1] in ("-f", "-r") or argv[at - 1].startswith("--")
    dash = argv.index("--")
    assert at < dash
    start = argv.index(recipients[0])
    assert start > dash
    assert argv[start : start + 2] == recipients
    assert sum(arg.startswith("\ud800") for arg in argv) == 3


TARGETS: dict[str, Callable[[bytes], None]] = {
    "message": message,
    "bsmtp": bsmtp,
    "dmarc_record": dmarc_record,
    "from_domains": from_domains,
    "authresults": authresults_render,
    "reverse_path": reverse_path,
    "reinject_command": reinject_command,
    "dkim_tag_list": dkim_tag_list,
    "handover_request": handover_request,
    "handover_reply": handover_reply,
}
