"""DKIM signatures over a tag list written by hand, as an attacker with a real key makes them.

:class:`signing.Signer` signs through ``dkim.sign``, which only ever writes well-formed tag lists.
An attacker writes the field himself: any bytes, tags dkimpy does not know, several tags that
different parsers may read as ``d=``, and then signs that field with his own key so that dkimpy
verifies it. This module does the same with dkimpy's own hashing (``rfc822_parse``,
``CanonicalizationPolicy``, ``hash_headers``), so the signature is exactly one dkimpy verifies
with the key, whatever the tag list says. Works with Debian's dkimpy 1.1.4 and the PyPI release.

Typical use::

    from dkimforge import forge

    template = b" v=1; a=rsa-sha256; c=relaxed/relaxed; d=attacker.example; s=s1;"
    template += b" h=from:to:subject; bh=BH; b="
    signed = forge(message, template, key("rsa2048").private) + message
"""

from __future__ import annotations

import base64
import hashlib
import re

import dkim
import dkim.crypto

NAME = b"DKIM-Signature"
# The bh= placeholder a template carries; replaced by the body hash of the message.
BODY_HASH = b"BH"
_SIGNED = re.compile(rb"(?:^|[;\s])h[ \t]*=([^;]*)")


def body_hash(message: bytes, canonicalize: bytes = b"relaxed/relaxed") -> bytes:
    """The base64 bh= of ``message`` under ``canonicalize``, as dkimpy computes it."""
    _headers, body = dkim.rfc822_parse(message)
    policy = dkim.CanonicalizationPolicy.from_c_value(canonicalize)
    return base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())


def forge(
    message: bytes,
    template: bytes,
    private_pem: bytes,
    *,
    canonicalize: bytes = b"relaxed/relaxed",
    include: tuple[bytes, ...] | None = None,
    linesep: bytes = b"\r\n",
) -> bytes:
    """The DKIM-Signature field for ``template`` (its value after the colon), RSA-SHA256 signed.

    ``template`` ends with ``b=`` (the signature is appended there) and may hold ``BH`` where the
    body hash goes. ``include`` are the field names hashed; by default those of the first ``h=``
    in the template (From alone when it has none). Line breaks in ``template`` are CRLF; the
    field is written with ``linesep`` and hashed with CRLF, as the verifier sees it.
    """
    value = template.replace(BODY_HASH, body_hash(message, canonicalize))
    if include is None:
        found = _SIGNED.search(value)
        names = found.group(1).split(b":") if found else [b"from"]
        include = tuple(n.strip().lower() for n in names)
    headers, _body = dkim.rfc822_parse(message)
    policy = dkim.CanonicalizationPolicy.from_c_value(canonicalize)
    hasher = hashlib.sha256()
    # As DKIM.verify_sig_process does: From is looked up once more (dkimpy bug#644046 guard).
    names = [*include, b"from"] if b"from" in include else list(include)
    crlf_value = re.sub(rb"\r?\n", b"\r\n", value) + b"\r\n"
    dkim.hash_headers(
        hasher, policy, policy.canonicalize_headers(headers), names, (NAME, crlf_value), {}
    )
    key = dkim.crypto.parse_pem_private_key(private_pem)
    signature = base64.b64encode(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hasher, key))
    return NAME + b":" + value.replace(b"\r\n", linesep) + signature + linesep
