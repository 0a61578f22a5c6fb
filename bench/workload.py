"""What the benchmark sends: the DNS records, the signing keys and the messages.

One made-up sender, ``sender.example``, publishes what a well-run domain publishes: an SPF record
with an include, a DMARC ``p=reject`` record and DKIM keys; a newsletter service, ``esp.example``,
adds a signature of its own. Every message passes SPF, DKIM and DMARC, so every filter ends in
"deliver" and re-injects: the common case, and the one that costs the most.
"""

from __future__ import annotations

import base64
import email.utils
import random
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from signing import Signer

SENDER = "bounces@sender.example"
FROM = "News <news@sender.example>"
CLIENT_IP = "192.0.2.10"
HELO = "mail.sender.example"
AUTHSERV_ID = "mx.example.net"
SIGNED_HEADERS = ["from", "to", "subject", "date", "message-id", "mime-version", "content-type"]

WORDS = tuple(
    " ".join(
        [
            "mail filter postfix exim sender domain policy message header body signature report",
            "delivery queue relay bounce verified forwarded list newsletter account invoice",
            "meeting weekly update the a of to and in for on with is are was be this that from by",
        ]
    ).split()
)


def signers() -> list[Signer]:
    """Three signatures as they are seen on real mail: the author's RSA and Ed25519, an ESP's."""
    return [
        Signer("sender.example", "s1", "rsa2048"),
        Signer("esp.example", "esp1", "rsa2048", key_index=1),
        Signer("sender.example", "ed1", "ed25519"),
    ]


def records() -> dict[str, dict[str, str]]:
    """The TXT records the DNS server publishes."""
    txt = {
        "sender.example": "v=spf1 include:_spf.sender.example -all",
        "_spf.sender.example": "v=spf1 ip4:192.0.2.0/25 ip4:198.51.100.0/24 ip6:2001:db8::/48 ~all",
        "_dmarc.sender.example": "v=DMARC1; p=reject; rua=mailto:dmarc@sender.example",
        "esp.example": "v=spf1 ip4:203.0.113.0/24 -all",
    }
    for signer in signers():
        txt[signer.name] = signer.record()
    return {"txt": txt}


def _prose(rng: random.Random, size: int) -> str:
    """About ``size`` bytes of lines of words; past 256 KB the first 256 KB repeat (it is faster,
    and the filter's work does not depend on what the words are)."""
    chunk = min(size, 256 * 1024)
    lines: list[str] = []
    length = 0
    while length < chunk:
        line = " ".join(rng.choice(WORDS) for _ in range(12))
        lines.append(line)
        length += len(line) + 1
    text = "\n".join(lines) + "\n"
    return (text * (size // len(text) + 1))[:size].rpartition("\n")[0] + "\n"


def _headers(subject: str, to: str, content_type: str) -> list[str]:
    return [
        # What Postfix prepends when it receives the message; the filter reads its date.
        f"Received: from {HELO} (mail.sender.example [{CLIENT_IP}])\n"
        f"\tby {AUTHSERV_ID} (Postfix) with ESMTPS id 4XyZ1234\n"
        f"\tfor <{to}>; {email.utils.formatdate()}",
        f"From: {FROM}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate()}",
        f"Message-ID: {email.utils.make_msgid(domain='sender.example')}",
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
        "List-Unsubscribe: <mailto:unsubscribe@sender.example>",
    ]


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def typical(to: str = "alice@example.net", size: int = 20 * 1024) -> bytes:
    """A ~20 KB newsletter: multipart/alternative, a text part and an HTML part, unsigned."""
    rng = random.Random(20)
    text = _prose(rng, size * 2 // 5)
    html = "<html><body>\n" + "".join(
        f'<p style="font-family: sans-serif">{line}</p>\n'
        for line in _prose(rng, size * 2 // 5).splitlines()
    )
    html += "</body></html>\n"
    boundary = "=_bench_alt_0001"
    parts = [
        *_headers("Weekly news", to, f'multipart/alternative; boundary="{boundary}"'),
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        text,
        f"--{boundary}",
        "Content-Type: text/html; charset=utf-8",
        "Content-Transfer-Encoding: 7bit",
        "",
        html,
        f"--{boundary}--",
        "",
    ]
    return _crlf("\n".join(parts))


def large(size: int, kind: str, to: str = "alice@example.net") -> bytes:
    """A message of about ``size`` bytes: ``text`` (plain prose) or ``base64`` (an attachment)."""
    rng = random.Random(size)
    if kind == "text":
        head = _headers(f"{size // 2**20} MB of text", to, "text/plain; charset=utf-8")
        return _crlf("\n".join([*head, "", _prose(rng, size)]))
    boundary = "=_bench_mixed_0001"
    payload = rng.randbytes(size * 3 // 4)
    blob = base64.b64encode(payload).decode()
    encoded = "\n".join(blob[i : i + 76] for i in range(0, len(blob), 76))
    parts = [
        *_headers(f"{size // 2**20} MB attachment", to, f'multipart/mixed; boundary="{boundary}"'),
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "The report is attached.",
        f"--{boundary}",
        'Content-Type: application/octet-stream; name="report.bin"',
        "Content-Transfer-Encoding: base64",
        'Content-Disposition: attachment; filename="report.bin"',
        "",
        encoded,
        f"--{boundary}--",
        "",
    ]
    return _crlf("\n".join(parts))


def sign(message: bytes, count: int) -> bytes:
    """``message`` with ``count`` DKIM signatures (relaxed/relaxed), outermost first."""
    # The Received field stays unsigned, as it is on real mail (it is added after signing).
    end = message.index(b"\r\nFrom: ") + 2
    received, rest = message[:end], message[end:]
    for signer in signers()[:count]:
        rest = (
            signer.signature(
                rest, canonicalize=("relaxed", "relaxed"), include_headers=SIGNED_HEADERS
            )
            + rest
        )
    return received + rest


@dataclass(frozen=True)
class Envelope:
    """The envelope the MTA gives every filter, as pipe(8) argv options (the hooks' form)."""

    recipients: tuple[str, ...] = ("alice@example.net",)
    sender: str = SENDER

    def argv(self) -> list[str]:
        return [
            f"--sender={self.sender}",
            f"--client-address={CLIENT_IP}",
            f"--helo={HELO}",
            # A new queue id per run, as the MTA gives: the filter records re-injected queue
            # ids and would skip a repeat as a retry of a delivery it already made.
            f"--queue-id=4{secrets.token_hex(5).upper()}",
            "--sasl-user=",
            "--",
            *self.recipients,
        ]
