"""Hostile input for the filter (issue 7 items 1 and 2): messages and envelopes the internet sends.

This module owns the generator and nothing else: it builds bytes and argument lists, touches no
network and no disk, and knows the outcome each case must have under one fixed DNS zone
(:data:`ZONE`) and one standard envelope (:data:`SENDER` from :data:`CLIENT`, SPF ``pass``, so
its reverse-path is verified). The tests that run the cases are ``test_hostile.py``.

Every :class:`HostileMessage` names the fields carrying our authserv-id that the filter must
remove (``forged``), so a test can rebuild the exact bytes that must be delivered without asking
the parser under test: our A-R field, then the original bytes minus those fields.

Typical use::

    from hostile import messages, envelopes, ZONE

    for case in messages(signer):            # signer: a signing.Signer, or None to skip DKIM
        ...                                  # case.name, case.data, case.expect, case.forged
    for case in envelopes():
        ...                                  # case.args, case.env, case.stdin, case.expect
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dates import RECEIVED_DATE

AUTHSERV = "mx.rcpt.example"
SENDER = "alice@sender.example"
CLIENT = "192.0.2.5"
HELO = "mx.sender.example"
RECIPIENT = "bob@rcpt.example"
# The number of DKIM signatures the hostile tests configure (dkim.max_signatures).
MAX_SIGNATURES = 3

# sender.example passes SPF from 192.0.2.0/24 and 2001:db8:5::/48 and publishes p=reject;
# reject.example and bücher.example (as A-labels, RFC 5890) publish p=reject and authorise nobody.
ZONE = """
sender.example. 300 IN TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:5::/48 -all"
_dmarc.sender.example. 300 IN TXT "v=DMARC1; p=reject"
reject.example. 300 IN TXT "v=spf1 -all"
_dmarc.reject.example. 300 IN TXT "v=DMARC1; p=reject"
_dmarc.xn--bcher-kva.example. 300 IN TXT "v=DMARC1; p=reject"
"""

DELIVER, QUARANTINE, BOUNCE, DEFER = "deliver", "quarantine", "bounce", "defer"
# What the filter's exit code says about the action (quarantine and deliver are both 0).
EXIT_CODES = {DELIVER: 0, QUARANTINE: 0, BOUNCE: 69, DEFER: 75}

MEGABYTE = 1024 * 1024


class SigningKey(Protocol):
    """What the generator needs from ``signing.Key``: the PEM private key (RSA)."""

    private: bytes


class Signing(Protocol):
    """What the generator needs from ``signing.Signer``."""

    domain: str
    selector: str
    key: SigningKey

    def signature(self, message: bytes, **options: object) -> bytes: ...


@dataclass(frozen=True)
class HostileMessage:
    """One hostile message and what must become of it under the standard envelope."""

    name: str
    data: bytes
    expect: str  # deliver, quarantine, bounce or defer
    about: str  # one line for the "What happens when ..." table
    # The exact bytes of every header field with our authserv-id in the data: removed on delivery.
    forged: tuple[bytes, ...] = ()
    # The RFC 8601 words our A-R field must carry under the standard envelope (SPF is pass).
    dmarc: str = "pass"
    dkim: tuple[str, ...] = ()  # one word per DKIM-Signature field; () renders "dkim=none"
    # Selectors (s=) of DKIM keys the case needs published at sender.example.
    selectors: tuple[str, ...] = ()

    def delivered_tail(self) -> bytes:
        """The bytes that must follow our A-R field on delivery: the original minus ``forged``."""
        data = self.data
        for item in self.forged:
            assert data.count(item) == 1, item[:60]
            data = data.replace(item, b"", 1)
        return data


@dataclass(frozen=True)
class HostileEnvelope:
    """One hostile envelope: the ``filter`` arguments, environment and stdin, and the outcome."""

    name: str
    args: tuple[str, ...]
    expect: str
    about: str
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes | None = None  # None: the standard message, given after the arguments


# ---------------------------------------------------------------------------------------------
# Building blocks.


def message(
    *headers: bytes,
    body: bytes = b"Hello Bob,\n\nthis is a test.\n",
    sender: bytes = b"alice@sender.example",
    eol: bytes = b"\n",
) -> bytes:
    """A plain message from ``sender`` with ``headers`` after From, joined with ``eol``."""
    top = [
        b"Received: from mx.sender.example by mx.rcpt.example; " + RECEIVED_DATE,
        b"From: " + sender,
        b"To: bob@rcpt.example",
        b"Subject: test",
        b"Message-ID: <hostile@sender.example>",
        *headers,
    ]
    return eol.join(top) + eol + eol + body.replace(b"\n", eol)


def standard_message() -> bytes:
    """The plain message the hostile envelopes carry."""
    return message()


def from_list(count: int, domains: Callable[[int], str]) -> bytes:
    """One From field listing ``count`` addresses, folded one address per line."""
    return b"From: " + b",\n ".join(f"u{i}@{domains(i)}".encode() for i in range(count))


def mime_nest(depth: int) -> bytes:
    """A body of ``depth`` nested multipart/mixed parts (RFC 2046 §5.1)."""
    opening = b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (level, level + 1)
        for level in range(depth)
    )
    closing = b"".join(b"--b%d--\n" % level for level in reversed(range(depth + 1)))
    return opening + b"--b%d\nContent-Type: text/plain\n\ninnermost\n" % depth + closing


def bsmtp(sender: str, recipients: Sequence[str], data: bytes, eol: bytes = b"\n") -> bytes:
    """A batch SMTP stream as Exim's ``use_bsmtp`` writes it: dot-stuffed (RFC 5321 §4.5.2)."""
    lines = [f"MAIL FROM:<{sender}>".encode()]
    lines += [f"RCPT TO:<{rcpt}>".encode() for rcpt in recipients]
    # Lines end at LF only (RFC 5321 §4.5.2 as Exim applies it); a bare CR starts no line.
    stuffed = b"".join(b"." + line if line.startswith(b".") else line for line in _lf_lines(data))
    if stuffed and not stuffed.endswith(b"\n"):
        stuffed += eol
    return eol.join([*lines, b"DATA", b""]) + stuffed + b"." + eol


def _lf_lines(data: bytes) -> list[bytes]:
    return re.findall(rb"[^\n]*\n|[^\n]+\Z", data)


def bsmtp_raw(
    sender: bytes, recipient: bytes, data: bytes = b"From: a@sender.example\n\nhi\n"
) -> bytes:
    """A batch SMTP stream whose paths are given as raw bytes (for NUL, CR and 8-bit paths)."""
    return b"MAIL FROM:<" + sender + b">\nRCPT TO:<" + recipient + b">\nDATA\n" + data + b".\n"


# A syntactically valid DKIM tag list whose b= and bh= prove nothing.
_TAGS = b"a=rsa-sha256; c=relaxed/relaxed; d=sender.example; s=s1; h=from:subject; " + (
    b"bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGVzdA=="
)


# ---------------------------------------------------------------------------------------------
# Item 1: hostile messages.


def messages(signer_for: Callable[[str], Signing] | None = None) -> list[HostileMessage]:
    """Every hostile message; the DKIM-signed ones only when ``signer_for(selector)`` is given.

    ``signer_for`` returns a signer for ``d=sender.example`` with the given selector, whose key
    the test publishes (see ``HostileMessage.selectors``).
    """
    cases = list(_structure()) + list(_encodings()) + list(_from_fields()) + list(_forged())
    cases += list(_dkim_unsigned())
    cases += list(_issue12_admin_messages())
    if signer_for is not None:
        cases += list(_dkim_signed(signer_for))
        cases += list(_dkim_tag_lists(signer_for))
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


PERMERROR_NO_FROM = "permerror"  # DMARC when no From address is seen: no policy applies


def _structure() -> Iterator[HostileMessage]:
    yield HostileMessage(
        "no-separator",
        b"From: alice@sender.example\nSubject: x\nThis line is no header field: the body starts\n",
        DELIVER,
        "no empty line between header and body: the first non-field line starts the body",
    )
    yield HostileMessage(
        "headers-only",
        b"From: alice@sender.example\nSubject: no body\n",
        DELIVER,
        "a header section and no body at all",
    )
    yield HostileMessage(
        "headers-only-no-final-newline",
        b"From: alice@sender.example\nSubject: cut",
        DELIVER,
        "headers only, the last line without a line ending",
    )
    yield HostileMessage(
        "empty",
        b"",
        DELIVER,
        "zero bytes: no From, so no DMARC policy; SPF pass decides",
        dmarc=PERMERROR_NO_FROM,
    )
    yield HostileMessage(
        "body-only",
        b"\nno header at all\n",
        DELIVER,
        "an empty header section, then a body",
        dmarc=PERMERROR_NO_FROM,
    )
    yield HostileMessage(
        "continuation-first",
        b" ; dmarc=pass header.from=reject.example\nFrom: ceo@reject.example\n\nbody\n",
        QUARANTINE,
        "the first line is a continuation: our A-R field would swallow it and expose the From "
        "after it unchecked, so the message is quarantined",
        dmarc=PERMERROR_NO_FROM,
    )
    yield HostileMessage(
        "header-1mb-line",
        message(b"Subject: " + b"a" * MEGABYTE),
        DELIVER,
        "a 1 MB header line",
    )
    yield HostileMessage(
        "from-1mb-line-spoof-at-end",
        message(sender=b"alice@sender.example" + b" " * MEGABYTE + b", ceo@reject.example"),
        BOUNCE,
        "a 1 MB From line hiding a second (p=reject) address at its end",
        dmarc="fail",
    )
    yield HostileMessage(
        "headers-10000",
        message(*(b"X-Filler-%d: %d" % (i, i) for i in range(10_000))),
        DELIVER,
        "10,000 header fields",
    )
    yield HostileMessage(
        "headers-10000-then-spoofed-from",
        b"".join(b"X-Filler-%d: %d\n" % (i, i) for i in range(10_000))
        + b"From: ceo@reject.example\n\nbody\n",
        BOUNCE,
        "10,000 header fields before a From naming a p=reject domain",
        dmarc="fail",
    )
    yield HostileMessage(
        "headers-25000-then-spoofed-from",
        b"X:\n" * 25_000 + b"From: ceo@reject.example\n\nbody\n",
        QUARANTINE,
        "25,000 tiny header fields (75 KB) before a From: past the 20,000-field cap, unchecked, "
        "so the message is quarantined",
        dmarc=PERMERROR_NO_FROM,
    )
    yield HostileMessage(
        "folded-10000-lines",
        message(b"X-Long: start" + b"\n\tcontinued" * 10_000),
        DELIVER,
        "one header field folded over 10,001 lines",
    )
    yield HostileMessage(
        "mime-nested-1000",
        message(
            b"MIME-Version: 1.0",
            b"Content-Type: multipart/mixed; boundary=b0",
            body=mime_nest(1000),
        ),
        DELIVER,
        "MIME parts nested 1,000 deep",
    )
    yield HostileMessage(
        "long-body-line-8mb",
        message(body=b"x" * (8 * MEGABYTE) + b"\n"),
        DELIVER,
        "an 8 MB body line",
    )


def _encodings() -> Iterator[HostileMessage]:
    yield HostileMessage(
        "bare-cr",
        b"From: alice@sender.example\rSubject: one line for us\r\n\r\nbody\rmore\r\n",
        DELIVER,
        "bare CR inside header and body lines",
    )
    yield HostileMessage(
        "bare-cr-hides-second-from",
        b"From: alice@sender.example\rFrom: ceo@reject.example\n\nbody\n",
        BOUNCE,
        "a bare CR that some readers take for a line break hides a second From",
        dmarc="fail",
    )
    yield HostileMessage(
        "bare-cr-then-dot",
        message(body=b"line\r.not a line start\r\n.\r\n..\nend\r.\r\n"),
        DELIVER,
        "a bare CR followed by a dot, and lines of dots (BSMTP stuffs at LF only)",
    )
    yield HostileMessage(
        "mixed-line-endings",
        b"Received: from x by mx.rcpt.example; " + RECEIVED_DATE + b"\r\n"
        b"From: alice@sender.example\nSubject: mixed\r\r\nX-CR: a\r\n\nbody\r\nline\nline\r",
        DELIVER,
        "CRLF, LF and CR line endings mixed",
    )
    yield HostileMessage(
        "crlf",
        message(eol=b"\r\n"),
        DELIVER,
        "CRLF throughout (our field must use CRLF too)",
    )
    yield HostileMessage(
        "nul-bytes",
        message(b"Subject: a\x00b", b"X-Nul: \x00\x00", body=b"\x00body\x00\n\x00\n"),
        DELIVER,
        "NUL bytes in header values and the body",
    )
    yield HostileMessage(
        "nul-in-from",
        message(sender=b"alice@sender.example\x00ceo@reject.example"),
        BOUNCE,
        "a NUL byte between two From addresses",
        dmarc="fail",
    )
    yield HostileMessage(
        "invalid-utf8-headers",
        message(b"Subject: \xff\xfe\xc3\x28\xa0\xa1", b"X-8bit: \xe9t\xe9", body=b"\xff\xfe\n"),
        DELIVER,
        "invalid UTF-8 and raw 8-bit bytes in header fields",
    )
    yield HostileMessage(
        "latin1-display-name",
        message(sender=b"\xc9l\xe8ve <alice@sender.example>"),
        DELIVER,
        "a Latin-1 display name in From",
    )
    yield HostileMessage(
        "8bit-field-name",
        b"X-\xe9t\xe9: value\nFrom: alice@sender.example\n\nbody\n",
        DELIVER,
        "an 8-bit byte in a field name: not a field, so the body starts there",
        dmarc=PERMERROR_NO_FROM,
    )
    yield HostileMessage(
        "space-before-colon",
        b"From : ceo@reject.example\n\nbody\n",
        BOUNCE,
        "white space before the colon still names the From field",
        dmarc="fail",
    )


def _from_fields() -> Iterator[HostileMessage]:
    def one(name: str, value: bytes, expect: str, about: str, dmarc: str = "") -> HostileMessage:
        word = dmarc or ("fail" if expect == BOUNCE else "pass")
        return HostileMessage(name, message(sender=value), expect, about, dmarc=word)

    yield one(
        "rfc2047-display-name",
        b"=?utf-8?q?ceo=40reject.example?= <alice@sender.example>",
        DELIVER,
        "an RFC 2047 encoded word in the display name that decodes to another address",
    )
    yield one(
        "rfc2047-as-local-part",
        b"=?utf-8?b?Y2Vv?=@reject.example",
        BOUNCE,
        "an RFC 2047 encoded word used as the local part of a p=reject address",
    )
    yield one(
        "comments",
        b"ceo(a)@(b)reject.example(c)",
        BOUNCE,
        "comments around and inside the address",
    )
    yield one(
        "address-in-comment",
        b"alice@sender.example (ceo@reject.example)",
        DELIVER,
        "an address inside a comment is no address",
    )
    yield one(
        "nested-unclosed-comment",
        b"alice@sender.example ((( unclosed",
        DELIVER,
        "nested comments that never close",
    )
    yield one(
        "group",
        b"friends: alice@sender.example, ceo@reject.example;",
        BOUNCE,
        "a group naming a p=reject address",
    )
    yield one(
        "empty-group",
        b"undisclosed-recipients:;",
        DELIVER,
        "an empty group: no From address, so no DMARC policy",
        dmarc=PERMERROR_NO_FROM,
    )
    yield one(
        "quoted-display-name",
        b'"ceo@reject.example" <alice@sender.example>',
        DELIVER,
        "a quoted display name that looks like an address",
    )
    yield one(
        "quoted-local-part",
        b'"alice@sender.example"@reject.example',
        BOUNCE,
        "a quoted local part holding another address",
    )
    yield one(
        "idn-domain",
        "ceo@bücher.example".encode(),
        BOUNCE,
        "an IDN (U-label) From domain publishing p=reject as A-labels",
    )
    yield one(
        "idn-upper-case",
        "ceo@BÜCHER.example".encode(),
        BOUNCE,
        "the same IDN in upper case",
    )
    yield one(
        "utf8-local-part",
        "élève@sender.example".encode(),
        DELIVER,
        "a UTF-8 local part (RFC 6532)",
    )
    yield one(
        "address-literal",
        b"ceo@[192.0.2.1]",
        DELIVER,
        "an address literal: no domain to evaluate",
        dmarc=PERMERROR_NO_FROM,
    )
    yield one(
        "route-addr",
        b"<@reject.example,@other.example:alice@sender.example>",
        DELIVER,
        "an obsolete source route in front of the address",
    )
    yield one(
        "double-at",
        b"alice@sender.example@reject.example",
        BOUNCE,
        "two @ in one address: both domains count",
    )
    yield one(
        "from-1000-same-domain",
        from_list(1000, lambda _: "sender.example")[6:],
        DELIVER,
        "1,000 From addresses, all of one aligned domain",
    )
    yield one(
        "from-1000-domains",
        from_list(1000, lambda i: f"d{i}.example")[6:],
        QUARANTINE,
        "1,000 From addresses in 1,000 domains: over the cap, a DMARC fail (quarantine)",
        dmarc="fail",
    )
    yield HostileMessage(
        "repeated-from",
        message(b"From: ceo@reject.example"),
        BOUNCE,
        "a second From field with a p=reject domain",
        dmarc="fail",
    )
    yield HostileMessage(
        "from-lower-case-name",
        b"from: ceo@reject.example\n\nbody\n",
        BOUNCE,
        "the field name in lower case",
        dmarc="fail",
    )


def _forged() -> Iterator[HostileMessage]:
    ours = [
        b"Authentication-Results: mx.rcpt.example; dmarc=pass header.from=reject.example\n",
        b"authentication-results: MX.RCPT.EXAMPLE; dkim=pass\n",
        b"Authentication-Results: (forged) mx.rcpt.example; spf=pass\n",
        b"Authentication-Results:\n\tmx.rcpt.example;\n\tdkim=pass header.d=reject.example\n",
        b'Authentication-Results: "mx.rcpt.example"; spf=pass\n',
        b"Authentication-Results : mx.rcpt.example; spf=pass\n",
    ]
    theirs = [
        b"Authentication-Results: mx.rcpt.example.evil; spf=pass\n",
        b"Authentication-Results: mx.sender.example; dkim=pass\n",
        b"Authentication-Results: mx.rcpt.examplex; spf=pass\n",
    ]
    body = b"Authentication-Results: mx.rcpt.example; spf=pass\n(in the body: kept)\n"
    data = (
        b"Received: from x by mx.rcpt.example; "
        + RECEIVED_DATE
        + b"\n"
        + b"".join(ours[:3])
        + b"From: alice@sender.example\n"
        + b"".join(theirs)
        + b"".join(ours[3:])
        + b"Subject: forged results\n\n"
        + body
    )
    yield HostileMessage(
        "forged-auth-results",
        data,
        DELIVER,
        "A-R fields with our authserv-id (any case, comments, folding, quoted) are removed",
        forged=tuple(ours),
    )
    crlf = [item.replace(b"\n", b"\r\n") for item in ours[:2]]
    yield HostileMessage(
        "forged-auth-results-crlf",
        b"".join(crlf) + message(eol=b"\r\n"),
        DELIVER,
        "forged A-R fields in a CRLF message",
        forged=tuple(crlf),
    )


def _dkim_unsigned() -> Iterator[HostileMessage]:
    yield HostileMessage(
        "dkim-garbage",
        message(b"DKIM-Signature: \x00\xff garbage ;;; = ;=; b=@@@"),
        DELIVER,
        "a DKIM-Signature field of garbage: permerror",
        dkim=("permerror",),
    )
    yield HostileMessage(
        "dkim-duplicated-tags",
        message(b"DKIM-Signature: v=1; d=reject.example; " + _TAGS),
        DELIVER,
        "a DKIM-Signature with d= given twice: permerror (RFC 6376 §3.2)",
        dkim=("permerror",),
    )
    yield HostileMessage(
        "dkim-huge-field",
        message(b"DKIM-Signature: v=1; " + _TAGS + b"; z=" + b"A" * MEGABYTE),
        DELIVER,
        "a 1 MB DKIM-Signature field: permerror",
        dkim=("permerror",),
    )
    garbage = _TAGS.replace(b"s=s1; ", b"")
    yield HostileMessage(
        "dkim-100-garbage",
        message(*(b"DKIM-Signature: v=1; s=g%d; " % i + garbage for i in range(100))),
        DELIVER,
        f"100 unverifiable DKIM signatures: {MAX_SIGNATURES} tried (permerror), the rest neutral",
        dkim=("permerror",) * MAX_SIGNATURES + ("neutral",) * (100 - MAX_SIGNATURES),
    )


def _dkim_signed(signer_for: Callable[[str], Signing]) -> Iterator[HostileMessage]:
    base = message()
    selectors = tuple(f"h{i}" for i in range(100))
    signatures = b"".join(signer_for(sel).signature(base) for sel in selectors)
    yield HostileMessage(
        "dkim-100-valid",
        signatures + base,
        DELIVER,
        f"100 valid DKIM signatures: {MAX_SIGNATURES} verified (pass), the rest neutral",
        dkim=("pass",) * MAX_SIGNATURES + ("neutral",) * (100 - MAX_SIGNATURES),
        selectors=selectors,
    )
    spoof = message(sender=b"ceo@reject.example")
    yield HostileMessage(
        "dkim-unaligned-valid",
        signer_for("h0").signature(spoof) + spoof,
        BOUNCE,
        "a valid signature by sender.example on mail From a p=reject domain: not aligned",
        dmarc="fail",
        dkim=("pass",),
        selectors=("h0",),
    )
    spaces = message(body=b"a" + b" " * 65536 + b"b\n")
    yield HostileMessage(
        "dkim-64k-space-run",
        signer_for("h0").signature(spaces) + spaces,
        DELIVER,
        "a signed body with a 64 KB run of spaces (quadratic in naive canonicalisation)",
        dkim=("pass",),
        selectors=("h0",),
    )
    big = message(body=(b"y" * 1023 + b"\n") * (17 * 1024))
    yield HostileMessage(
        "dkim-over-size-cap",
        signer_for("h0").signature(big) + big,
        DELIVER,
        "a signed 17 MB message: above dkim.max_message_size, the signature is neutral",
        dkim=("neutral",),
        selectors=("h0",),
    )


# ---------------------------------------------------------------------------------------------
# Issue 12 item 1: DKIM tag lists that two parsers could read two ways.

# Bytes between a tag name and "=" that dkimpy keeps (the tag is unknown to it) and a lenient
# reader strips (the tag becomes d=): non-ASCII spaces in UTF-8, C1 and C0 controls.
ODD_TAG_BYTES = {
    "nbsp": b"\xc2\xa0",
    "nel": b"\xc2\x85",
    "c0-us": b"\x1f",
    "ideographic-space": b"\xe3\x80\x80",
}


def _dkim_tag_lists(signer_for: Callable[[str], Signing]) -> Iterator[HostileMessage]:
    from dkimforge import forge  # signs a hand-written tag list as dkimpy verifies it

    signer = signer_for("h0")
    spoof = message(sender=b"ceo@reject.example")
    for label, odd in ODD_TAG_BYTES.items():
        for order in ("before", "after"):
            fake = b"d" + odd + b"=reject.example; "
            real = b"d=" + signer.domain.encode() + b"; s=" + signer.selector.encode() + b"; "
            tags = b" v=1; a=rsa-sha256; c=relaxed/relaxed; "
            tags += fake + real if order == "before" else real + fake
            tags += b"h=from:to:subject; bh=BH; b="
            yield HostileMessage(
                f"dkim-odd-tag-name-{label}-{order}",
                forge(spoof, tags, signer.key.private, linesep=b"\n") + spoof,
                BOUNCE,
                f"a signature by sender.example, valid for dkimpy, with a tag d<{label}>="
                f"reject.example {order} its d=, From the p=reject domain: outside RFC 6376 §3.2's"
                " grammar, permerror; no dkim or dmarc pass for reject.example",
                dmarc="fail",
                dkim=("permerror",),
                selectors=("h0",),
            )


# ---------------------------------------------------------------------------------------------
# Item 2: hostile envelopes.


def envelope_args(
    sender: str = SENDER,
    client: str | None = CLIENT,
    helo: str | None = HELO,
    queue_id: str | None = "4AbCdE",
    recipients: Sequence[str] = (RECIPIENT,),
) -> tuple[str, ...]:
    """``filter`` arguments as Postfix's pipe passes them (options given only when not None)."""
    args = [f"--sender={sender}"]
    if client is not None:
        args.append(f"--client-address={client}")
    if helo is not None:
        args.append(f"--helo={helo}")
    if queue_id is not None:
        args.append(f"--queue-id={queue_id}")
    return (*args, "--", *recipients)


def envelopes() -> list[HostileEnvelope]:
    """Every hostile envelope, each with the outcome DESIGN.md asks for."""
    bad = "a configuration fault: defer (75), never a bounce"
    long_helo = "h" * 290 + ".example"
    cases = [
        HostileEnvelope(
            "sender-crlf",
            envelope_args(sender="alice@sender.example\r\nRCPT TO:<x@evil.example>"),
            DEFER,
            f"CR LF inside the sender: {bad}",
        ),
        HostileEnvelope(
            "recipient-lf",
            envelope_args(recipients=("bob@rcpt.example\nX-Injected: 1",)),
            DEFER,
            f"LF inside a recipient: {bad}",
        ),
        HostileEnvelope(
            "recipient-option",
            envelope_args(recipients=("-oQ/tmp/x@rcpt.example",)),
            DELIVER,
            "a recipient that looks like a sendmail option: delivered, after '--' in the command",
        ),
        HostileEnvelope(
            "sender-nul-bsmtp",
            ("--bsmtp",),
            DEFER,
            f"NUL inside the BSMTP sender (argv cannot carry NUL): {bad}",
            stdin=bsmtp_raw(b"alice\x00@sender.example", b"bob@rcpt.example"),
        ),
        HostileEnvelope(
            "recipient-nul-bsmtp",
            ("--bsmtp",),
            DEFER,
            f"NUL inside a BSMTP recipient: {bad}",
            stdin=bsmtp_raw(b"alice@sender.example", b"bob\x00@rcpt.example"),
        ),
        HostileEnvelope(
            "sender-cr-bsmtp",
            ("--bsmtp",),
            DEFER,
            f"a bare CR inside the BSMTP sender: {bad}",
            stdin=bsmtp_raw(b"alice\r@sender.example", b"bob@rcpt.example"),
        ),
        HostileEnvelope(
            "sender-8bit-bsmtp",
            ("--bsmtp",),
            QUARANTINE,
            # Issue 12 item 7 (adversarial review): Exim passes 8-bit octets as they came; a
            # path the MTA accepted is filtered (kept as surrogate escapes, as argv keeps them),
            # never deferred until the MTA bounces it to a sender nobody verified.
            "a BSMTP sender that is not UTF-8: filtered like any other (no client address, SPF"
            " none, DMARC p=reject fails, unverified: quarantined), never deferred",
            stdin=bsmtp_raw(b"\xff@sender.example", b"bob@rcpt.example"),
        ),
        HostileEnvelope(
            "helo-crlf",
            envelope_args(helo="mx.sender.example\r\nX: y"),
            DEFER,
            f"CR LF inside the HELO name: {bad}",
        ),
        HostileEnvelope(
            "queue-id-dotdot",
            envelope_args(queue_id="../../etc/passwd"),
            DEFER,
            f"a queue id containing ../: {bad}",
        ),
        HostileEnvelope(
            "queue-id-dotdot-env",
            envelope_args(queue_id=None),
            DEFER,
            f"a queue id containing ../ in SCATTERGUARD_QUEUE_ID: {bad}",
            env={"SCATTERGUARD_QUEUE_ID": "../x"},
        ),
        HostileEnvelope(
            "client-ipv6",
            envelope_args(client="2001:db8:5::1"),
            DELIVER,
            "an IPv6 client address (SPF ip6: pass)",
        ),
        HostileEnvelope(
            "client-ipv6-exim-form",
            envelope_args(client="IPv6:2001:db8:5::1"),
            DELIVER,
            "an IPv6 client address in the IPv6: form",
        ),
        HostileEnvelope(
            "client-ipv4-mapped",
            envelope_args(client="::ffff:192.0.2.5"),
            DELIVER,
            "an IPv4-mapped IPv6 client address is checked as IPv4",
        ),
        HostileEnvelope(
            "client-ipv6-outside",
            envelope_args(client="2001:db8:bad::1"),
            QUARANTINE,
            "an IPv6 client outside the SPF record: SPF fail, DMARC p=reject, unverified",
        ),
        HostileEnvelope(
            "client-malformed",
            envelope_args(client="999.1.2.3"),
            DEFER,
            f"a malformed client address: {bad}",
        ),
        HostileEnvelope(
            "client-injection",
            envelope_args(client="192.0.2.5; rm -rf /"),
            DEFER,
            f"a client address with shell text: {bad}",
        ),
        HostileEnvelope(
            "client-unknown",
            envelope_args(client="unknown"),
            QUARANTINE,
            "Postfix's 'unknown' client: SPF none, DMARC p=reject fails, unverified",
        ),
        HostileEnvelope(
            "helo-empty",
            envelope_args(helo=""),
            DELIVER,
            "an empty HELO name",
        ),
        HostileEnvelope(
            "helo-300",
            envelope_args(helo=long_helo),
            DELIVER,
            "a 300-character HELO name (ignored)",
        ),
        HostileEnvelope(
            "helo-300-null-sender",
            envelope_args(sender="", helo=long_helo),
            QUARANTINE,
            "a 300-character HELO with the null sender: nothing verifies, never bounced",
        ),
        HostileEnvelope(
            "recipients-500",
            envelope_args(recipients=tuple(f"r{i}@rcpt.example" for i in range(500))),
            DELIVER,
            "500 recipients, all passed to the re-injector",
        ),
        HostileEnvelope(
            "sender-300",
            envelope_args(sender="a" * 300 + "@sender.example"),
            DELIVER,
            "a 300-character local part in the sender",
        ),
    ]
    cases += _issue12_reverse_paths()
    cases += _issue12_admin_envelopes()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


# ---------------------------------------------------------------------------------------------
# Issue 12 item 7 (and 5): reverse-paths as Postfix (pipe flag q quotes the local part) and
# Exim (BSMTP MAIL FROM carries it unquoted) hand them over. Every one is filtered, none deferred.


def _issue12_reverse_paths() -> list[HostileEnvelope]:
    spoof = "SPF none for it, DMARC p=reject of sender.example fails, unverified: quarantined"
    passes = "SPF pass for sender.example, DMARC pass: delivered"
    argv = [
        ("rp-ipv6-literal", "user@[IPv6:2001:db8::1]", QUARANTINE, f"an IPv6 literal: {spoof}"),
        ("rp-ipv4-literal", "user@[192.0.2.1]", QUARANTINE, f"an IPv4 literal: {spoof}"),
        ("rp-underscore", "bounce@mail_out.sender.example", QUARANTINE, f"underscores: {spoof}"),
        ("rp-exim-dots", "a..b@sender.example", DELIVER, f"Exim's unquoted a..b: {passes}"),
        ("rp-quoted-at", '"a@b"@sender.example', DELIVER, f"a quoted @: {passes}"),
        (
            "rp-quoted-at-other-domain",
            '"alice@sender.example"@reject.example',
            QUARANTINE,
            "a quoted @ naming another domain: SPF fail for reject.example (the domain evaluated "
            "and reported), DMARC fails, unverified: quarantined",
        ),
        (
            "rp-exim-at",
            "a@b@sender.example",
            DELIVER,
            f"Exim's unquoted a@b (not strict): {passes}",
        ),
        ("rp-trailing-dot", "alice@sender.example.", DELIVER, f"a trailing dot: {passes}"),
        ("rp-utf8", "élise@sender.example", DELIVER, f"an SMTPUTF8 local part: {passes}"),
        ("rp-source-route", "@relay.example:alice@sender.example", DELIVER, f"a route: {passes}"),
        ("rp-no-domain", "postmaster", QUARANTINE, f"no domain at all: {spoof}"),
    ]
    cases = [
        HostileEnvelope(name, envelope_args(sender=path), expect, about)
        for name, path, expect, about in argv
    ]
    # The same paths through BSMTP: tests/test_filter.py (test_bsmtp_reverse_paths_are_filtered).
    return cases


# Issue 12, items 10 and 12 (the admin block): no header section, and filter-mode usage.


def _issue12_admin_messages() -> Iterator[HostileMessage]:
    """Messages without a header section: our field, an empty line, then the message as body.

    Readers would otherwise take the From after an mbox line, a NUL or a bare CR for a header
    field the checks never saw, or fold a leading continuation into our field.
    """
    reject_from = b"From: ceo@reject.example\nSubject: pay now\n\nbody\n"
    for name, first, about in (
        ("mbox-from-line-first", b"From ceo@reject.example Mon Dec  7 10:00:00 2026\n", "an mbox"),
        ("nul-first", b"\x00X: y\n", "a NUL-led"),
        ("bare-cr-first", b"\r", "a bare CR as"),
        ("colon-first", b": no name\n", "a nameless"),
    ):
        yield HostileMessage(
            name,
            first + reject_from,
            DELIVER,
            f"{about} first line: no header section, so the From after it is body to us and,"
            " after the empty line we add below our A-R field, to every reader",
            dmarc=PERMERROR_NO_FROM,
        )


def _issue12_admin_envelopes() -> list[HostileEnvelope]:
    """Filter-mode arguments argparse would answer with text and SystemExit: one line, 75."""
    return [
        HostileEnvelope(
            f"filter{option}",
            (option, *envelope_args()),
            DEFER,
            f"'filter {option}': a usage error in filter mode, 75 with one status line",
        )
        for option in ("--help", "-h", "--version")
    ]


# Issue 12 item 2/3: hostile hand-overs to ``scatterguard serve`` — slow, silent, vanished and
# foreign clients, and frames that break the wire format. Each is a script of steps a test runs
# against the real server, holding a pipe with the standard message as the passed stdin. Only
# the genuine exchange may be acted on; every other one must end with nothing re-injected,
# nothing quarantined, the worker alive and the next genuine client served at once.

NOTHING = "nothing"  # the server must not act on the hand-over


@dataclass(frozen=True)
class HandoverStep:
    """One step of a hostile client.

    ``kind`` is one of: ``request`` (a request frame built at run time with the standard
    envelope, the deadline ``seconds`` from now, ``fields`` merged over the standard ones, with
    ``fds`` descriptors of the message pipe attached), ``raw`` (``data`` as is, with ``fds``),
    ``read`` (one frame from the server; a "ready" nonce is remembered), ``go`` (the remembered
    nonce, or ``data`` as the nonce when given), ``sleep`` (``seconds``), ``close``.
    """

    kind: str
    seconds: float = 0.0
    data: bytes = b""
    fds: int = 0
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class HostileHandover:
    """A hostile client of the server and what must become of its message."""

    name: str
    steps: tuple[HandoverStep, ...]
    expect: str  # DELIVER (the genuine exchange only) or NOTHING
    about: str
    foreign: bool = False  # run as a user who may not hand over (nobody)


def handover_frame(document: object) -> bytes:
    """A hand-over frame: 4-byte big-endian length, then compact JSON."""
    import json

    data = json.dumps(document, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


def handover_argv() -> list[str]:
    """The filter argv of a hand-over with the standard envelope."""
    return ["filter", *envelope_args(queue_id="4Hostile")]


def handovers() -> list[HostileHandover]:
    """Every hostile hand-over, each to end in nothing acted on (but the genuine one)."""
    request = HandoverStep("request", seconds=20.0, fds=1)
    read = HandoverStep("read")
    go = HandoverStep("go")

    step = HandoverStep

    never = "never acted on; the worker lives on"
    cases = [
        HostileHandover(
            "genuine",
            (request, read, go, read),
            DELIVER,
            "a well-behaved client (the control: the runner can make the server act)",
        ),
        HostileHandover(
            "silent",
            (step("sleep", seconds=3.0),),
            NOTHING,
            f"a client that connects and says nothing: dropped after 2 s, {never}",
        ),
        HostileHandover(
            "slow-header",
            (step("raw", data=b"\x00\x00"), step("sleep", seconds=3.0)),
            NOTHING,
            f"a client that sends half a frame header and stalls: {never}",
        ),
        HostileHandover(
            "slow-dribble",
            (
                step("raw", data=b"\x00", fds=1),
                step("sleep", seconds=1.0),
                step("raw", data=b"\x00"),
                step("sleep", seconds=1.0),
                step("raw", data=b"\x00"),
                step("sleep", seconds=1.5),
            ),
            NOTHING,
            f"a request dribbled a byte a second, past the 2 s frame deadline: {never}",
        ),
        HostileHandover("vanished-at-once", (step("close"),), NOTHING, f"connect, close: {never}"),
        HostileHandover(
            "vanished-after-request",
            (request, step("close")),
            NOTHING,
            f"a client gone right after sending its request: {never}",
        ),
        HostileHandover(
            "vanished-after-ready",
            (request, read, step("close")),
            NOTHING,
            f"a client gone when the server asks to act: {never}",
        ),
        HostileHandover(
            "late-go",
            (
                HandoverStep("request", seconds=1.5, fds=1),
                read,
                step("sleep", seconds=2.0),
                go,
                read,
            ),
            NOTHING,
            f'a client whose "go" comes after its own deadline: {never}',
        ),
        HostileHandover(
            "wrong-nonce",
            (request, read, step("go", data=b"0000000000000000"), read),
            NOTHING,
            f'a "go" that does not echo the server\'s nonce: {never}',
        ),
        HostileHandover(
            "go-before-ready",
            (request, step("raw", data=handover_frame({"go": "guess"})), read, read),
            NOTHING,
            f'a "go" sent before the server asked (a client that may be gone by then): {never}',
        ),
        HostileHandover(
            "stale-deadline",
            (HandoverStep("request", seconds=-1.0, fds=1), read),
            NOTHING,
            f"a request already past its deadline when read (it sat in the queue): {never}",
        ),
        HostileHandover(
            "old-version",
            (HandoverStep("request", fds=1, seconds=20.0, fields=(("v", 1),)), read),
            NOTHING,
            f"a request of wire version 1: refused with 75, {never}",
        ),
        HostileHandover(
            "no-descriptor",
            (HandoverStep("request", seconds=20.0), read),
            NOTHING,
            f"a request without its stdin descriptor: {never}",
        ),
        HostileHandover(
            "two-descriptors",
            (HandoverStep("request", seconds=20.0, fds=2), read),
            NOTHING,
            f"a request with two descriptors: both closed, {never}",
        ),
        HostileHandover(
            "not-json",
            (step("raw", data=b"\x00\x00\x00\x05hello", fds=1), read),
            NOTHING,
            f"a frame that is not JSON: {never}",
        ),
        HostileHandover(
            "huge-length",
            (step("raw", data=b"\xff\xff\xff\xff", fds=1), read),
            NOTHING,
            f"a frame header announcing 4 GB: {never}",
        ),
        HostileHandover(
            "deadline-nan",
            (
                HandoverStep("request", seconds=20.0, fds=1, fields=(("deadline", float("nan")),)),
                read,
            ),
            NOTHING,
            f"a deadline that is not a number: {never}",
        ),
        HostileHandover(
            "argv-not-strings",
            (HandoverStep("request", seconds=20.0, fds=1, fields=(("argv", [1, 2]),)), read),
            NOTHING,
            f"argv that is not a list of strings: {never}",
        ),
        HostileHandover(
            "help",
            (
                HandoverStep("request", seconds=20.0, fds=1, fields=(("argv", ["filter", "-h"]),)),
                read,
                go,
                read,
            ),
            NOTHING,
            f"filter --help handed over: one 75 answer, {never}",
        ),
        HostileHandover(
            "not-filter",
            (
                HandoverStep(
                    "request", seconds=20.0, fds=1, fields=(("argv", ["quarantine", "list"]),)
                ),
                read,
                go,
                read,
            ),
            NOTHING,
            f"another subcommand handed over: one 75 answer, {never}",
        ),
        HostileHandover(
            "foreign",
            (request, read, go, read),
            NOTHING,
            f"a user who may not hand over: turned away before anything is read, {never}",
            foreign=True,
        ),
        HostileHandover(
            "foreign-silent",
            (step("sleep", seconds=3.0),),
            NOTHING,
            f"a silent connection of a user who may not hand over: closed at once, {never}",
            foreign=True,
        ),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases
