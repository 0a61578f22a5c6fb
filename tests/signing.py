"""DKIM keys and signatures made at test time, for every test that needs signed mail.

Keys are generated once per test session (``functools.cache``) with ``cryptography``; no private
key is ever committed. Messages are signed with dkimpy, as a real signer would, and the public key
is published as a TXT record in the loopback :class:`~dnsserver.DnsServer`. Works with Debian's
dkimpy 1.1.4 and the current PyPI release alike.

Typical use::

    from signing import Signer, sample_message

    signer = Signer("sender.example", "s1")            # RSA 2048 by default
    signer.publish(dns_server)                          # s1._domainkey.sender.example TXT
    signed = signer.sign(sample_message(from_addr="alice@sender.example"))

Key kinds: ``rsa2048``, ``rsa1024``, ``rsa512`` (too short: RFC 8301 §3.2 refuses it) and
``ed25519`` (RFC 8463). ``Signer(..., key_index=1)`` gives a second, different key of the same
kind, for "signed with a key other than the published one".
"""

from __future__ import annotations

import base64
import functools
import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from dnsserver import DnsServer

KINDS = ("rsa2048", "rsa1024", "rsa512", "ed25519")
PUBLIC_EXPONENT = 65537


@dataclass(frozen=True)
class Key:
    """A DKIM key pair in the forms dkimpy signs with and DNS publishes."""

    kind: str
    key_type: str  # k= value: "rsa" or "ed25519"
    algorithm: bytes  # the a= this key signs with by default
    bits: int
    private: bytes  # PKCS#1 PEM for RSA; base64 of the 32-octet seed for Ed25519 (dkimpy's forms)
    public: str  # the base64 p= value

    def record(self, **tags: str) -> str:
        """The TXT record text: ``v=DKIM1; k=...; p=...``, with extra or replaced tags."""
        fields = {"v": "DKIM1", "k": self.key_type, **tags}
        fields.setdefault("p", self.public)
        return "; ".join(f"{tag}={value}" for tag, value in fields.items())


@functools.cache
def key(kind: str = "rsa2048", index: int = 0) -> Key:
    """The session's key number ``index`` of ``kind``, generated on first use."""
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
        seed = private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return Key(
            kind,
            "ed25519",
            b"ed25519-sha256",
            256,
            base64.b64encode(seed),
            base64.b64encode(public).decode(),
        )
    if kind not in KINDS:
        raise ValueError(f"unknown key kind {kind!r}; one of {KINDS}")
    bits = int(kind.removeprefix("rsa"))
    rsa_key = _rsa_key(bits)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(kind, "rsa", b"rsa-sha256", bits, pem, base64.b64encode(der).decode())


def _rsa_key(bits: int) -> rsa.RSAPrivateKey:
    if bits >= 1024:
        return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=bits)
    # Current cryptography refuses to generate keys under 1024 bits, but still loads them: the
    # primes are made here, which is fine for a key whose whole purpose is to be refused.
    while True:
        p, q = _prime(bits // 2), _prime(bits - bits // 2)
        n = p * q
        phi = (p - 1) * (q - 1)
        if p != q and n.bit_length() == bits and math.gcd(PUBLIC_EXPONENT, phi) == 1:
            break
    d = pow(PUBLIC_EXPONENT, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(PUBLIC_EXPONENT, n),
    )
    return numbers.private_key()


def _prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _probably_prime(candidate):
            return candidate


def _probably_prime(n: int, rounds: int = 32) -> bool:
    """Miller-Rabin."""
    if n < 4:
        return n in (2, 3)
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


class Signer:
    """Signs as ``d=domain s=selector`` with a session key, and publishes that key in DNS."""

    def __init__(
        self, domain: str, selector: str = "s1", kind: str = "rsa2048", *, key_index: int = 0
    ) -> None:
        self.domain = domain
        self.selector = selector
        self.key = key(kind, key_index)

    @property
    def name(self) -> str:
        """The key's DNS name: ``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def record(self, **tags: str) -> str:
        """The key record text; ``p=""`` gives a revoked key, ``t="y"`` testing mode, etc."""
        return self.key.record(**tags)

    def publish(self, server: DnsServer, record: str | None = None, **tags: str) -> str:
        """Add the key record (or ``record`` as given) to ``server``; returns the DNS name."""
        server.records.add_txt(self.name, record if record is not None else self.record(**tags))
        return self.name

    def signature(
        self,
        message: bytes,
        *,
        algorithm: str | bytes | None = None,
        canonicalize: str | Sequence[str | bytes] = ("relaxed", "simple"),
        include_headers: Iterable[str | bytes] | None = None,
        length: bool = False,
        identity: str | bytes | None = None,
        linesep: bytes | None = None,
    ) -> bytes:
        """Just the DKIM-Signature field (ending in the message's line ending).

        ``canonicalize`` is ``"relaxed/simple"`` or a pair; ``include_headers`` defaults to
        dkimpy's RFC 6376 list of the fields present (From signed twice); ``length=True`` adds
        ``l=``; ``algorithm`` overrides the key's ``a=`` (``"rsa-sha1"`` with an RSA key).
        """
        if isinstance(canonicalize, str):
            canonicalize = canonicalize.split("/")
        return bytes(
            dkim.sign(
                message,
                _bytes(self.selector),
                _bytes(self.domain),
                self.key.private,
                identity=_bytes(identity) if identity is not None else None,
                canonicalize=tuple(_bytes(c) for c in canonicalize),
                signature_algorithm=_bytes(algorithm) if algorithm else self.key.algorithm,
                include_headers=(
                    [_bytes(h) for h in include_headers] if include_headers is not None else None
                ),
                length=length,
                linesep=linesep or _linesep(message),
            )
        )

    def sign(self, message: bytes, **options: object) -> bytes:
        """The message with its new DKIM-Signature field prepended (options as for signature())."""
        return self.signature(message, **options) + message  # type: ignore[arg-type]


def sample_message(
    from_addr: str = "alice@sender.example",
    to_addr: str = "bob@receiver.example",
    *,
    subject: str = "Hello",
    body: bytes = b"Hello Bob,\r\n\r\nthis is a test.\r\n",
    linesep: bytes = b"\r\n",
    extra_headers: Sequence[str] = (),
    message_id: str = "<1@sender.example>",
) -> bytes:
    """A small, plain message; ``body`` is given with CRLF and converted to ``linesep``."""
    headers = [
        f"From: {from_addr}",
        f"To: {to_addr}",
        f"Subject: {subject}",
        "Date: Tue, 02 Jan 2024 10:00:00 +0000",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *extra_headers,
    ]
    head = linesep.join(h.encode() for h in headers) + linesep + linesep
    return head + body.replace(b"\r\n", linesep)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _linesep(message: bytes) -> bytes:
    newline = message.find(b"\n")
    return b"\r\n" if newline > 0 and message[newline - 1 : newline] == b"\r" else b"\n"
