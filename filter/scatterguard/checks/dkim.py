"""DKIM (RFC 6376) verification of every DKIM-Signature field, with dkimpy, over our resolver.

This module owns :func:`check_dkim`: one :class:`~scatterguard.core.results.DkimResult` per
DKIM-Signature header field, top to bottom, each with its own RFC 8601 result word. It never
raises.

dkimpy's ``verify()`` answers ``True`` or ``False`` and folds everything else (a DNS timeout, a
revoked key, a garbled tag list) into ``False``. A DNS timeout must be ``temperror`` and a garbled
signature ``permerror``, never ``fail``, so the steps of RFC 6376 §6.1 are driven here and each
outcome is classified where it happens:

1. §6.1.1, the signature field. Its tag list is read once, strictly by §3.2's grammar
   (:func:`parse_tag_list`), before dkimpy sees it: a field outside the grammar → ``permerror``,
   and nothing it claims (``d=``, ``s=``, ``a=``, ``b=``) is reported. dkimpy's own
   ``parse_tag_value`` is lenient where it matters (a tag named ``d`` plus a non-ASCII space is
   an unknown tag to it, and was ``d`` to a second lenient reader); on what the grammar accepts
   it gives the same dict, and that dict, the one dkimpy verifies with, is the only source of
   what DMARC, reverse-path alignment and the A-R use. Then dkimpy's
   ``validate_signature_fields``, after our own checks of the few things dkimpy gets wrong or
   handles in quadratic time (and that the field dkimpy hashes is this one with only ``b=``
   emptied) → ``permerror``. ``rsa-sha1`` → ``permerror`` before any lookup
   (RFC 8301 §3.1). An expired signature (``x=``, §3.5) → ``permerror``: §6.1.1 lets a verifier
   return PERMFAIL (signature expired) without testing the signature, and nothing was tested.
2. §6.1.2, the key: looked up through :class:`~scatterguard.checks.resolver.Resolver` (the same seam
   dkimpy calls ``dnsfunc``). NXDOMAIN, no data, an empty ``p=`` (revoked), a key unsuitable for
   ``a=`` or unparsable → ``permerror``; SERVFAIL, a timeout or another DNS error →
   ``temperror``. RSA keys under 1024 bits → ``permerror`` (RFC 8301 §3.2). The key is parsed
   by dkimpy's ``evaluate_pk``; Ed25519 (RFC 8463) needs PyNaCl, a dependency.
3. §6.1.3, the body hash and the signature: the body hash is computed here (see below); a
   mismatch → ``fail``. The header hash and the signature are checked by dkimpy's
   ``verify_sig_process`` with our key; a signature that does not verify → ``fail``.

dkimpy never does DNS itself here: the key is fetched before ``verify_sig_process`` runs. That
method is still handed a ``dnsfunc`` that asks our resolver, so a future dkimpy that looks
something up there goes through it too, never through the system resolver.

Bounded work (a hostile message must not make any of this unbounded, issue 7):

- A message above ``max_message_size`` is not verified at all: every signature is ``neutral`` and
  dkimpy is not even imported. Only the first ``max_signatures`` signatures are verified; the rest
  are ``neutral``.
- The message is handed to dkimpy as our own header view
(:class:`~scatterguard.core.message.Message`),
  not re-parsed by its ``rfc822_parse``: no second copy of the message in small pieces, and dkimpy
  sees the same header fields as DMARC does (a line that is not a field ends the header section,
  where dkimpy would have refused the whole message).
- Body canonicalisation (RFC 6376 §3.4.3, §3.4.4) is our own, in linear time: dkimpy's relaxed
  body regular expression is quadratic in the length of a run of spaces (a 64 KB run takes
  seconds). It is done once per canonicalisation per message, not once per signature, and each
  body hash once per (canonicalisation, hash, ``l=``). The tests compare it with dkimpy's.
- dkimpy's ``b=`` checks and the ``b=`` removal before hashing are quadratic in runs of white
  space inside the field, and its ``h=`` split too; fields longer than :data:`MAX_FIELD`, with a
  white-space run over :data:`MAX_SPACE_RUN` or more than :data:`MAX_SIGNED_FIELDS` names in
  ``h=`` are refused (``permerror``) before dkimpy sees them.
- Key lookups stop after ``timeout`` seconds per verified signature, in total.

Choices where the RFC leaves room, made here once:

- Several TXT records at the key name (RFC 6376 §3.6.2.2: "the results are undefined"): records
  that are not DKIM key records (no tag list, another ``v=``, no ``p=``) are ignored; if exactly
  one remains it is used, if several remain the result is ``permerror``. DNS gives records in no
  particular order, so "the first" would make the result random.
- A signature whose ``l=`` is shorter than the canonicalised body keeps its result but
  ``covers_body=False``: it proves nothing about the rest of the body, so it counts neither toward
  DMARC nor toward reverse-path verification.
- A key with ``t=y`` (testing) keeps its result; the reason says so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scatterguard.checks.resolver import Resolver, Status
from scatterguard.config import DkimConfig
from scatterguard.core import domains
from scatterguard.core.message import Buffer, Header, Message
from scatterguard.core.results import DkimCause, DkimResult, Result

FIELD_NAME = "dkim-signature"
# RFC 8301 §3.2: verifiers MUST NOT consider signatures with RSA keys under 1024 bits valid.
MIN_RSA_BITS = 1024
# RFC 6008 §4: header.b carries at least the first 8 characters of b=; more when two signatures
# of the message would otherwise look alike.
B_PREFIX_MIN = 8
MAX_REASON = 200
# Bounds on one signature field, far above anything real signers produce (a 4096-bit RSA b= is
# 684 characters, h= lists rarely name 40 fields) and low enough that dkimpy's quadratic regular
# expressions stay cheap.
MAX_FIELD = 32 * 1024
MAX_SPACE_RUN = 256
MAX_SIGNED_FIELDS = 128
MAX_REPORTED = 255  # longest d=, s= or a= value reported; longer ones are reported as None

# RFC 6376 §3.5: the tags every signature must carry.
REQUIRED_TAGS = (b"v", b"a", b"b", b"bh", b"d", b"h", b"s")
# a= → the k= key type it needs (RFC 6376 §3.3, RFC 8463 §3).
KEY_TYPES = {b"rsa-sha256": b"rsa", b"ed25519-sha256": b"ed25519", b"rsa-sha1": b"rsa"}
HASHES: dict[bytes, Callable[[], Any]] = {
    b"rsa-sha256": hashlib.sha256,
    b"ed25519-sha256": hashlib.sha256,
    b"rsa-sha1": hashlib.sha1,
}
CANONICALISATIONS = (b"simple", b"relaxed")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 6376 §3.2, the tag list as the field arrives: line ends are CRLF (bare LFs were made CRLF
# as dkimpy makes them), and a line break is folding only when white space follows it (FWS, with
# RFC 5322 §4.2 obs-FWS: any run of WSP and folds). VALCHAR excludes ";" and white space, so the
# tag specs are exactly the pieces between semicolons. WSP and VALCHAR are disjoint, so a spec
# has one parse and a failed match backtracks in linear time. (No possessive quantifiers: Python
# 3.11.2, Debian 12's, gets some of them wrong.)
_FWS = rb"(?:[ \t]|\r\n[ \t])*"
_TAG_SPEC = re.compile(
    _FWS
    + rb"([A-Za-z][A-Za-z0-9_]*)"  # tag-name = ALPHA *ALNUMPUNC
    + _FWS
    + rb"="
    + _FWS
    # tag-value = [ tval *( 1*(WSP / FWS) tval ) ], tval = 1*VALCHAR, VALCHAR = %x21-3A / %x3C-7E
    + rb"((?:[\x21-\x3a\x3c-\x7e]+(?:(?:[ \t]|\r\n[ \t])+[\x21-\x3a\x3c-\x7e]+)*)?)"
    + _FWS
)
_FWS_ONLY = re.compile(_FWS)
# RFC 6376 §3.5: d= is a domain-name, s= a selector (dot-separated sub-domains); underscores are
# allowed, as in DNS names generally. Anything else is not a name DMARC could align or DNS hold.
_DNS_NAME = re.compile(domains.NAME.encode("ascii"))
# dkimpy's messages quote data as "(b'...')" or "b'...'".
_ECHO = re.compile(r"\s*\(b'[^']*'\)")
_BYTES_REPR = re.compile(r"b'([^']*)'")
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]*")
_TOKEN = re.compile(rb"[\x21-\x3a\x3c-\x7e]+")
_SPACE_RUN = re.compile(rb"[ \t\r\n]{%d}" % (MAX_SPACE_RUN + 1))
_WHITESPACE = re.compile(rb"[ \t\r\n]+")
# A b= or bh= value once white space is removed (RFC 6376 §3.5 base64string).
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}\Z")
_DIGITS = re.compile(rb"[0-9]{1,76}\Z")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+\Z")
_NEWLINE = re.compile(rb"\r?\n")
# Linear forms of RFC 6376 §3.4.4 (a) and (b): the look-behind makes a match start only at the
# beginning of a run of WSP, so a long run is scanned once, not once per character.
_TRAILING_WSP = re.compile(rb"(?<![\t ])[\t ]+(?=\r\n)")
_WSP_TO_COMPRESS = re.compile(rb"[\t ]{2,}|\t")


class _Outcome(Exception):
    """The verification of one signature ended before ``pass``, with this result and reason.

    Deliberately not a ``dkim.DKIMException``: if it is raised inside dkimpy (through the
    ``dnsfunc``), no ``except DKIMException`` there can swallow it.
    """

    def __init__(
        self, result: Result, cause: DkimCause, reason: str, covers_body: bool = True
    ) -> None:
        super().__init__(reason)
        self.result = result
        self.cause = cause
        self.reason = reason
        self.covers_body = covers_body
        # The tags dkimpy's parse gave, once it has run and agreed with ours: what is reported.
        self.tags: dict[bytes, bytes] | None = None


class TagListError(ValueError):
    """A tag list outside RFC 6376 §3.2's grammar; the text says where, without quoting data."""


@dataclass(frozen=True)
class _Described:
    """What a signature field says, for the report: from the one parse of its tag list."""

    domain: str | None
    selector: str | None
    algorithm: str | None
    b: str


@dataclass(frozen=True)
class _Verdict:
    """The outcome of one signature and the tags it was reached with (None: none to trust)."""

    result: Result
    cause: DkimCause | None  # None for a pass
    reason: str
    covers_body: bool
    tags: dict[bytes, bytes] | None


@dataclass(frozen=True)
class _Unreadable:
    """A signature field with no tags we can use: permerror (malformed signature), and why."""

    reason: str


def check_dkim(
    resolver: Resolver, message: Message, config: DkimConfig, *, timeout: float = 5.0
) -> tuple[DkimResult, ...]:
    """Verify every DKIM-Signature field of ``message``; one result per field, top to bottom.

    ``timeout`` bounds the time spent on key lookups: after ``timeout`` seconds per signature to
    verify, no further lookup starts and the remaining signatures are ``temperror``. The
    resolver's own per-lookup timeout applies within that.
    """
    fields = [h for h in message.headers if h.name.lower() == FIELD_NAME]
    if not fields:
        return ()
    # RFC 6376 §3.2, once per field and before dkimpy sees it: a field outside the grammar is
    # permerror, and nothing it claims is reported.
    read = [_read_tags(_dkimpy_header(message.data, field)[1]) for field in fields]
    if message.size > config.max_message_size:
        # Checked before dkimpy is imported: memory and time stay bounded for huge messages.
        reason = f"message larger than {config.max_message_size} bytes; DKIM not verified"
        cause = DkimCause.MESSAGE_TOO_LARGE
        verdicts = [_unverified(tags, Result.NEUTRAL, cause, reason) for tags in read]
    else:
        verdicts = _verify_all(resolver, message, config, timeout, fields, read)
    described = [_describe(verdict.tags) for verdict in verdicts]
    prefixes = _b_prefixes([d.b for d in described])
    return tuple(
        DkimResult(
            result=verdict.result,
            domain=about.domain,
            selector=about.selector,
            algorithm=about.algorithm,
            reason=_clean(verdict.reason),
            covers_body=verdict.covers_body,
            b_prefix=prefix,
            cause=verdict.cause,
        )
        for verdict, about, prefix in zip(verdicts, described, prefixes, strict=True)
    )


def _verify_all(
    resolver: Resolver,
    message: Message,
    config: DkimConfig,
    timeout: float,
    fields: Sequence[Header],
    read: Sequence[dict[bytes, bytes] | _Unreadable],
) -> list[_Verdict]:
    """Verify the first ``max_signatures`` fields; the rest are ``neutral``."""
    limit = max(config.max_signatures, 0)
    verified = min(limit, len(fields))
    verdicts: list[_Verdict] = []
    verifier: _Verifier | None = None
    for index, (field, tags) in enumerate(zip(fields, read, strict=True)):
        if index >= limit:
            reason = f"only the first {limit} DKIM signatures are verified"
            verdicts.append(_unverified(tags, Result.NEUTRAL, DkimCause.SIGNATURE_LIMIT, reason))
            continue
        if isinstance(tags, _Unreadable):
            cause = DkimCause.MALFORMED_SIGNATURE
            verdicts.append(_unverified(tags, Result.PERMERROR, cause, tags.reason))
            continue
        try:
            if verifier is None:
                verifier = _Verifier(resolver, message, budget=timeout * verified)
            covers_body, reason, used = verifier.verify(field, tags)
            verdicts.append(_Verdict(Result.PASS, None, reason, covers_body, used))
        except _Outcome as outcome:
            verdicts.append(
                _Verdict(
                    outcome.result, outcome.cause, outcome.reason, outcome.covers_body, outcome.tags
                )
            )
        # Anything else is a bug, ours or dkimpy's, or a library that is missing. It must make
        # the MTA retry later (temperror leads to a defer), not fail or bounce good mail; and
        # one signature's trouble must not stop the others from being verified.
        except Exception as exc:  # noqa: BLE001
            reason = f"unexpected error while verifying: {type(exc).__name__}: {exc}"
            verdicts.append(_unverified(tags, Result.TEMPERROR, DkimCause.INTERNAL_ERROR, reason))
    return verdicts


def _unverified(
    tags: dict[bytes, bytes] | _Unreadable, result: Result, cause: DkimCause, reason: str
) -> _Verdict:
    """A signature dkimpy did not get to: reported from our parse, which is dkimpy's when it
    accepts (the property test in ``test_dkim_taglist`` shows it), or with nothing to report."""
    return _Verdict(result, cause, reason, True, tags if isinstance(tags, dict) else None)


def _read_tags(value: bytes) -> dict[bytes, bytes] | _Unreadable:
    """The tags of one signature field, or why it has none we can use (a permerror)."""
    if len(value) > MAX_FIELD:
        return _Unreadable(f"signature field longer than {MAX_FIELD} octets")
    if _SPACE_RUN.search(value):
        return _Unreadable(f"signature field has a run of more than {MAX_SPACE_RUN} spaces")
    try:
        return parse_tag_list(value)
    except TagListError as exc:
        # RFC 6376 §3.2: a tag list outside the grammar is invalid as a whole.
        text = str(exc)
        if text.startswith("duplicated"):
            return _Unreadable(text)
        return _Unreadable(f"malformed tag list in signature: {text}")


def parse_tag_list(value: bytes) -> dict[bytes, bytes]:
    """The tags of an RFC 6376 §3.2 tag list, read strictly by its grammar.

    ``value`` is a field value as dkimpy holds it: what follows the colon, with CRLF line ends,
    the field's own final CRLF included or not. :class:`TagListError` when it is not a
    ``tag-list``: a tag name that is not ``ALPHA *ALNUMPUNC`` (a non-ASCII space, a control, a
    character other than white space between name and ``=``), a value with a character outside
    VALCHAR or FWS, a line break that is not folding, an empty tag spec, a tag given twice.

    Whenever this accepts, dkimpy's ``parse_tag_value`` returns the same dict: both split at
    ``;`` (which no tag-value holds), and dkimpy's ``strip()`` removes exactly the FWS around
    names and values that this grammar allows there. Where dkimpy would accept more (an unknown
    tag named ``d\xa0``, ``d\x0b`` read as ``d``), this refuses, so no two readings meet.
    """
    text = value[:-2] if value.endswith(b"\r\n") else value
    specs = text.split(b";")
    if len(specs) > 1 and _FWS_ONLY.fullmatch(specs[-1]):
        # tag-list = tag-spec *( ";" tag-spec ) [ ";" ]; white space after the final ";" is
        # the field's trailing white space (dkimpy strips it too).
        specs.pop()
    tags: dict[bytes, bytes] = {}
    for position, spec in enumerate(specs, 1):
        match = _TAG_SPEC.fullmatch(spec)
        if match is None:
            raise TagListError(f"tag spec {position} is not tag-name=tag-value (RFC 6376 §3.2)")
        name, tag_value = match.groups()
        if name in tags:
            raise TagListError(f"duplicated tag {name.decode('ascii')}= in signature")
        tags[name] = tag_value
    return tags


class _Verifier:
    """One dkimpy ``DKIM`` object for the message, the canonical bodies and the key lookups."""

    def __init__(self, resolver: Resolver, message: Message, budget: float) -> None:
        # Imported here, not at module level: unsigned mail (most of it) never pays for dkimpy,
        # dnspython's resolver and PyNaCl; start-up time is throughput with one process per
        # message (issue 6).
        import dkim
        import dkim.util

        self.dkim: Any = dkim
        self.parse_tag_value: Callable[[bytes], dict[bytes, bytes]] = dkim.util.parse_tag_value
        self.invalid_tags: type[Exception] = dkim.util.InvalidTagValueList
        self.resolver = resolver
        self.message = message
        self.deadline = time.monotonic() + budget
        self.budget = budget
        self.views = [_dkimpy_header(message.data, h) for h in message.headers]
        self.positions = {id(h): i for i, h in enumerate(message.headers)}
        self.dkimpy = dkim.DKIM(None, logger=_quiet_logger(), minkey=MIN_RSA_BITS)
        # Our header view, in dkimpy's shape: [name, value with CRLF line ends].
        self.dkimpy.headers = self.views
        # The body hash is ours (below); dkimpy's body is never used.
        self.dkimpy.body = b""
        self._normalised: bytes | None = None
        self._canonical: dict[bytes, bytes] = {}
        self._digests: dict[tuple[bytes, bytes, int | None], bytes] = {}

    # --- RFC 6376 §6.1.1: the signature field -------------------------------------------------

    def verify(
        self, field: Header, ours: dict[bytes, bytes]
    ) -> tuple[bool, str, dict[bytes, bytes]]:
        """Verify one signature whose tags we read as ``ours``.

        ``(covers_body, reason, tags)`` on pass, :class:`_Outcome` otherwise; ``tags`` (and
        ``_Outcome.tags``) is dkimpy's parse of the field, the very dict it verified with.
        """
        name, value = self.views[self.positions[id(field)]]
        sig = self._dkimpy_tags(value, ours)
        try:
            covers_body, reason = self._verify(name, value, sig)
        except _Outcome as outcome:
            outcome.tags = sig
            raise
        return covers_body, reason, sig

    def _verify(self, name: bytes, value: bytes, sig: dict[bytes, bytes]) -> tuple[bool, str]:
        self._check_tags(value, sig)
        algorithm = sig[b"a"]
        if algorithm == b"rsa-sha1":
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.UNSUPPORTED_ALGORITHM,
                "rsa-sha1 signatures are not accepted (RFC 8301 §3.1)",
            )
        # The header fields are canonicalised by dkimpy; the body here.
        _, body_canon = _canonicalisation(sig.get(b"c"))
        try:
            signature = base64.b64decode(_WHITESPACE.sub(b"", sig[b"b"]), validate=True)
            body_hash = base64.b64decode(_WHITESPACE.sub(b"", sig[b"bh"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Outcome(
                Result.PERMERROR, DkimCause.MALFORMED_SIGNATURE, "b= or bh= is not valid base64"
            ) from exc

        key, keysize, key_type, notes = self._key(sig)

        # §6.1.3: the body hash, over the first l= octets of the canonical body when l= is set.
        length = int(sig[b"l"]) if b"l" in sig else None
        body = self._canonical_body(body_canon)
        covers_body = length is None or length >= len(body)
        if self._body_digest(body_canon, algorithm, length) != body_hash:
            raise _Outcome(
                Result.FAIL, DkimCause.BODY_HASH, "body hash did not verify", covers_body
            )

        if key_type == b"ed25519" and len(signature) != 64:
            # RFC 8463 §3: an Ed25519 signature is 64 octets; PyNaCl would raise on any other.
            raise _Outcome(
                Result.FAIL, DkimCause.BAD_SIGNATURE, "signature did not verify", covers_body
            )

        # The header hash and the signature, by dkimpy with the key found above. Without bh= in
        # the tags it skips its own (per-signature, quadratic-prone) body hash: ours is done.
        include = [n.strip().lower() for n in sig[b"h"].split(b":")]
        tags = {tag: text for tag, text in sig.items() if tag != b"bh"}
        self.dkimpy.pk, self.dkimpy.keysize, self.dkimpy.ktag = key, keysize, key_type
        self.dkimpy.seqtlsrpt = False
        try:
            verified = self.dkimpy.verify_sig_process(tags, include, (name, value), self.dnsfunc)
        except self.dkim.DKIMException as exc:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MALFORMED_SIGNATURE,
                f"signature unusable: {exc}",
                covers_body,
            ) from exc
        if not verified:
            raise _Outcome(
                Result.FAIL, DkimCause.BAD_SIGNATURE, "signature did not verify", covers_body
            )
        if not covers_body:
            notes.append(f"l={length} leaves part of the {len(body)}-octet body unsigned")
        return covers_body, "; ".join(["signature verified", *notes])

    def _dkimpy_tags(self, value: bytes, ours: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """dkimpy's parse of the field, which verification, DMARC and the report all use.

        Ours has accepted the field already (RFC 6376 §3.2); should dkimpy ever read it another
        way, no reading is trusted.
        """
        try:
            sig = self.parse_tag_value(value)
        except self.invalid_tags as exc:
            raise _Outcome(
                Result.PERMERROR, DkimCause.MALFORMED_SIGNATURE, "tag list unparsable by dkimpy"
            ) from exc
        if sig != ours:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MALFORMED_SIGNATURE,
                "tag list read two ways (ours and dkimpy's)",
            )
        return sig

    def _check_tags(self, value: bytes, sig: dict[bytes, bytes]) -> None:
        """RFC 6376 §6.1.1 on the tags; :class:`_Outcome` (permerror) for a signature not to use."""
        missing = [tag.decode() for tag in REQUIRED_TAGS if tag not in sig]
        if missing:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MISSING_TAG,
                f"required tag missing: {'= '.join(missing)}=",
            )
        # Checked here because dkimpy's own checks are quadratic on odd white space (b=, bh=),
        # crash on i= equal to d= without "@" (an IndexError), accept an empty l= and then crash
        # on it, and take any h= length.
        for tag in (b"b", b"bh"):
            compact = _WHITESPACE.sub(b"", sig[tag])
            if not compact or len(compact) % 4 or not _BASE64.match(compact):
                raise _Outcome(
                    Result.PERMERROR,
                    DkimCause.MALFORMED_SIGNATURE,
                    f"{tag.decode()}= is not valid base64",
                )
        if b"l" in sig and not _DIGITS.match(sig[b"l"]):
            raise _Outcome(
                Result.PERMERROR, DkimCause.MALFORMED_SIGNATURE, "l= is not a decimal number"
            )
        names = sig[b"h"].split(b":")
        if len(names) > MAX_SIGNED_FIELDS:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MALFORMED_SIGNATURE,
                f"h= names more than {MAX_SIGNED_FIELDS} header fields",
            )
        if not all(_FIELD_NAME.match(n.strip()) for n in names):
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MALFORMED_SIGNATURE,
                "h= is not a list of header field names",
            )
        if b"from" not in (n.strip().lower() for n in names):
            # RFC 6376 §5.4: the From field MUST be signed; §6.1.1: PERMFAIL (From not signed).
            raise _Outcome(Result.PERMERROR, DkimCause.FROM_NOT_SIGNED, "h= does not include From")
        domain = sig[b"d"].lower()
        if not _DNS_NAME.match(sig[b"d"]) or not _DNS_NAME.match(sig[b"s"]):
            # §3.5: d= is a domain-name and s= a selector. Folded white space inside them would
            # be one name to the key lookup and another to DMARC.
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MALFORMED_SIGNATURE,
                "d= or s= is not an ASCII domain name",
            )
        # dkimpy hashes the field with every match of its RE_BTAG emptied, not the b= tag's
        # value alone (RFC 6376 §3.7): a " b=" inside another tag's value is taken out of the
        # hash too, and a b= right after the colon is left in. The field it hashes must be this
        # tag list with exactly b= emptied.
        hashed = self.dkim.RE_BTAG.sub(rb"\1", value)
        try:
            emptied = parse_tag_list(hashed)
        except TagListError:
            emptied = {}
        if emptied != {**sig, b"b": b""}:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.MALFORMED_SIGNATURE,
                "b= is not where dkimpy empties it for hashing",
            )
        if b"i" in sig:
            # RFC 6376 §3.5 i=: its domain is d= or a subdomain of it.
            local, at, i_domain = sig[b"i"].rpartition(b"@")
            del local
            i_domain = i_domain.lower()
            if not at or not (i_domain == domain or i_domain.endswith(b"." + domain)):
                raise _Outcome(
                    Result.PERMERROR, DkimCause.DOMAIN_MISMATCH, "i= is not in the d= domain"
                )
        try:
            self.dkim.validate_signature_fields(sig)
        except self.dkim.DKIMException as exc:
            text = _text(exc)
            if text.startswith("x= value is past"):
                # RFC 6376 §3.5 x= and §6.1.1: PERMFAIL (signature expired).
                raise _Outcome(
                    Result.PERMERROR, DkimCause.SIGNATURE_EXPIRED, "signature expired (x= is past)"
                ) from exc
            raise _Outcome(
                Result.PERMERROR, DkimCause.MALFORMED_SIGNATURE, f"invalid signature: {text}"
            ) from exc

    # --- RFC 6376 §6.1.2: the key ---------------------------------------------------------------

    def _key(self, sig: dict[bytes, bytes]) -> tuple[Any, int, bytes, list[str]]:
        name = (sig[b"s"] + b"._domainkey." + sig[b"d"]).decode("ascii").lower()
        record = self._key_record(name)
        try:
            tags = self.parse_tag_value(record)
        except self.invalid_tags as exc:  # pragma: no cover - _key_record only keeps parsable ones
            raise _Outcome(
                Result.PERMERROR, DkimCause.KEY_SYNTAX, f"key record at {name} unparsable"
            ) from exc
        notes: list[str] = []
        if not _WHITESPACE.sub(b"", tags[b"p"]):
            raise _Outcome(
                Result.PERMERROR, DkimCause.KEY_REVOKED, f"key at {name} revoked (empty p=)"
            )
        # RFC 6376 §3.6.1 s=: a key restricted to other services does not apply to email.
        services = [s.strip() for s in tags.get(b"s", b"*").split(b":")]
        if b"*" not in services and b"email" not in services:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.INAPPROPRIATE_KEY,
                f"key at {name} is not for email (s=)",
            )
        # §3.6.1 h=: the hash algorithms the key may be used with.
        if b"h" in tags:
            hashes = [h.strip() for h in tags[b"h"].split(b":")]
            if sig[b"a"].rpartition(b"-")[2] not in hashes:
                raise _Outcome(
                    Result.PERMERROR,
                    DkimCause.INAPPROPRIATE_KEY,
                    f"key at {name} excludes this hash (h=)",
                )
        # §6.1.2 step 6-7: a key type that does not fit a= is PERMFAIL (inappropriate key).
        key_type = tags.get(b"k", b"rsa").strip()
        if key_type != KEY_TYPES.get(sig[b"a"]):
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.INAPPROPRIATE_KEY,
                f"key at {name} is not a key for {_text(sig[b'a'])}",
            )
        flags = [f.strip() for f in tags.get(b"t", b"").split(b":")]
        # §3.6.1 t=s: the i= domain must be d= exactly, not a subdomain.
        i_domain = sig.get(b"i", b"").rpartition(b"@")[2].lower()
        if b"s" in flags and b"i" in sig and i_domain != sig[b"d"].lower():
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.DOMAIN_MISMATCH,
                f"key at {name} forbids i= subdomains (t=s)",
            )
        if b"y" in flags:
            notes.append("key in testing mode (t=y)")
        try:
            key, keysize, ktag, _service = self.dkim.evaluate_pk(name.encode("ascii"), record)
        # A bad base64 p= gives binascii.Error (a ValueError); a missing PyNaCl for an Ed25519
        # key is, for this message, a key we cannot use, as for a verifier without RFC 8463.
        except (self.dkim.DKIMException, ValueError, TypeError) as exc:
            raise _Outcome(
                Result.PERMERROR, DkimCause.KEY_SYNTAX, f"key at {name} unusable: {_text(exc)}"
            ) from exc
        if key is None or ktag != key_type:
            raise _Outcome(Result.PERMERROR, DkimCause.KEY_SYNTAX, f"key at {name} unusable")
        if ktag == b"rsa" and keysize < MIN_RSA_BITS:
            raise _Outcome(
                Result.PERMERROR,
                DkimCause.INAPPROPRIATE_KEY,
                f"RSA key at {name} has {keysize} bits, under {MIN_RSA_BITS} (RFC 8301 §3.2)",
            )
        return key, int(keysize), ktag, notes

    def _key_record(self, name: str) -> bytes:
        """The one DKIM key record at ``name``; :class:`_Outcome` when there is none to use."""
        if time.monotonic() > self.deadline:
            raise _Outcome(
                Result.TEMPERROR,
                DkimCause.TIME_BUDGET,
                f"key lookups took longer than {self.budget:g} s; {name} skipped",
            )
        answer = self.resolver.txt(name)
        if answer.temporary:
            # RFC 6376 §6.1.2 step 2: TEMPFAIL (key unavailable).
            raise _Outcome(
                Result.TEMPERROR,
                DkimCause.KEY_UNAVAILABLE,
                f"key lookup for {name}: DNS {answer.status.value}",
            )
        if answer.status is not Status.OK:
            # §6.1.2 step 3: PERMFAIL (no key for signature).
            raise _Outcome(Result.PERMERROR, DkimCause.NO_KEY, f"no key for signature at {name}")
        keys = [text for text in answer.texts() if self._is_key_record(text)]
        if not keys:
            raise _Outcome(Result.PERMERROR, DkimCause.NO_KEY, f"no DKIM key record at {name}")
        if len(keys) > 1:
            # §3.6.2.2: several records make the result undefined; see the module docstring.
            raise _Outcome(
                Result.PERMERROR, DkimCause.NO_KEY, f"{len(keys)} DKIM key records at {name}"
            )
        return keys[0]

    def _is_key_record(self, text: bytes) -> bool:
        try:
            tags = self.parse_tag_value(text)
        except self.invalid_tags:
            return False
        # §3.6.1 v=: a record with another version MUST be discarded.
        return b"p" in tags and tags.get(b"v", b"DKIM1") == b"DKIM1"

    def dnsfunc(self, name: bytes, timeout: float = 5.0) -> bytes | None:
        """dkimpy's ``dnsfunc`` contract over our resolver: the key record's text, or None.

        A temporary DNS failure raises :class:`_Outcome` (``temperror``), which is not a
        ``DKIMException``, so dkimpy cannot mistake it for a missing key.
        """
        del timeout  # the resolver has its own per-lookup timeout
        try:
            return self._key_record(name.decode("ascii", "replace").rstrip("."))
        except _Outcome as outcome:
            if outcome.result is Result.TEMPERROR:
                raise
            return None

    # --- RFC 6376 §6.1.3: the body ---------------------------------------------------------------

    def _canonical_body(self, canon: bytes) -> bytes:
        body = self._canonical.get(canon)
        if body is None:
            if self._normalised is None:
                # Read in place (a spooled message through its map).
                with memoryview(self.message.data) as whole:
                    self._normalised = crlf(whole[self.message.body_offset :])
            body = canonical_body(self._normalised, canon)
            self._canonical[canon] = body
        return body

    def _body_digest(self, canon: bytes, algorithm: bytes, length: int | None) -> bytes:
        key = (canon, algorithm, length)
        digest = self._digests.get(key)
        if digest is None:
            body = self._canonical_body(canon)
            hasher = HASHES[algorithm]()
            hasher.update(memoryview(body)[:length] if length is not None else body)
            digest = hasher.digest()
            self._digests[key] = digest
        return digest


def crlf(body: memoryview | bytes) -> bytes:
    """``body`` with every line ending in CRLF, as dkimpy has it (a bare LF becomes CRLF).

    The same bytes as ``re.sub(rb"\\r?\\n", b"\\r\\n", body)``, without its list of one piece
    per line, which costs several times the body for a 10 MB message: one copy when every line
    ends in CRLF already, one more when some end in LF.
    """
    data = bytes(body)
    # Every CRLF holds one LF: equal counts mean no bare LF (two memchr-speed passes, where a
    # search for a LF not preceded by CR tries the pattern at every byte).
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    if b"\r\n" not in data:
        return data.replace(b"\n", b"\r\n")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def canonical_body(body: bytes, canon: bytes) -> bytes:
    """RFC 6376 §3.4.3 (simple) or §3.4.4 (relaxed) body canonicalisation, in linear time.

    ``body`` has CRLF line ends already (bare CRs may remain). The result is byte for byte what
    dkimpy's ``canonicalize_body`` gives.
    """
    if canon == b"relaxed":
        # Each substitution runs only when the body holds what it would change: a substring
        # test is a fast scan, while the patterns are tried at every byte (0.3 s for 10 MB).
        if b" \r\n" in body or b"\t\r\n" in body:
            body = _TRAILING_WSP.sub(b"", body)
        if b"\t" in body or b"  " in body:
            body = _WSP_TO_COMPRESS.sub(b" ", body)
        body = _strip_trailing_lines(body)
        # §3.4.4 with erratum 3312: an empty body canonicalises to nothing, not to one CRLF.
        return b"" if body == b"\r\n" else body
    return _strip_trailing_lines(body)


def _strip_trailing_lines(body: bytes) -> bytes:
    """Remove empty lines at the end and end the body with exactly one CRLF (§3.4.3)."""
    # The trailing run of CR and LF octets; inside it, every LF belongs to a CRLF, and a CR
    # followed by another CR is a bare CR. The trailing CRLFs are those after the last bare CR.
    start = _content_end(body)
    tail = body[start:]
    if not tail.endswith(b"\r\n"):
        return body + b"\r\n"
    bare = tail.rfind(b"\r\r")
    keep = start + (bare + 1 if bare >= 0 else 0) + 2
    return body if keep == len(body) else body[:keep]


def _content_end(body: bytes, piece: int = 4096) -> int:
    """``len(body.rstrip(b"\\r\\n"))`` without copying the body: read from the end, in pieces."""
    end = len(body)
    while end:
        start = max(0, end - piece)
        kept = body[start:end].rstrip(b"\r\n")
        if kept:
            return start + len(kept)
        end = start
        piece *= 2  # a long run of line ends costs linear time, not quadratic
    return 0


def _canonicalisation(value: bytes | None) -> tuple[bytes, bytes]:
    """The header and body algorithms of c= (RFC 6376 §3.5; the body defaults to simple)."""
    if value is None:
        return b"simple", b"simple"
    parts = value.split(b"/")
    if len(parts) == 1:
        parts.append(b"simple")
    if len(parts) != 2 or any(p not in CANONICALISATIONS for p in parts):
        raise _Outcome(
            Result.PERMERROR,
            DkimCause.UNSUPPORTED_ALGORITHM,
            f"unknown canonicalisation c={_text(value)}",
        )
    return parts[0], parts[1]


def _dkimpy_header(data: Buffer, header: Header) -> list[bytes]:
    """One header field as dkimpy holds it: the name, and the value with CRLF line ends."""
    raw = header.raw(data)
    value = _NEWLINE.sub(b"\r\n", raw[raw.index(b":") + 1 :])
    if not value.endswith(b"\r\n"):
        value += b"\r\n"
    # The name without the white space some senders put before the colon (RFC 5322 §4.5.3
    # obs-optional); relaxed canonicalisation removes it anyway (RFC 6376 §3.4.2).
    return [header.name.encode("latin-1"), value]


def _describe(tags: dict[bytes, bytes] | None) -> _Described:
    """d=, s=, a= and b= for the report, from the tags the signature was verified with.

    A value that is not one token (white space, over :data:`MAX_REPORTED` octets, empty) is not
    reported; ``None`` tags (a field outside the grammar) report nothing, header.b included.
    """
    if tags is None:
        return _Described(domain=None, selector=None, algorithm=None, b="")

    def reported(tag: bytes) -> str | None:
        value = tags.get(tag)
        if not value or len(value) > MAX_REPORTED or not _TOKEN.fullmatch(value):
            return None
        return value.decode("ascii")

    domain = reported(b"d")
    # b= as dkimpy decodes it: its folding white space removed.
    b_run = _BASE64_RUN.match(_WHITESPACE.sub(b"", tags.get(b"b", b"")))
    return _Described(
        # Lower case: the key is looked up, and DMARC aligns, case-insensitively (RFC 4343).
        domain=domain.lower() if domain else None,
        selector=reported(b"s"),
        algorithm=reported(b"a"),
        b=b_run.group().decode("ascii") if b_run else "",
    )


def _b_prefixes(values: Sequence[str]) -> list[str | None]:
    """RFC 6008 header.b values: 8 characters, more where two signatures would look alike.

    In sorted order, the longest prefix a value shares with any other is the one it shares with a
    neighbour, so this stays O(n log n) for a message with thousands of signature fields.
    """
    ordered = sorted({value for value in values if value})
    needed: dict[str, int] = {}
    for index, value in enumerate(ordered):
        shared = 0
        for other in ordered[max(index - 1, 0) : index + 2]:
            if other != value:
                shared = max(shared, _common_prefix(value, other))
        needed[value] = max(B_PREFIX_MIN, shared + 1)
    return [value[: needed[value]] if value else None for value in values]


def _common_prefix(a: str, b: str) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _quiet_logger() -> logging.Logger:
    """A logger for dkimpy that goes nowhere: its messages quote message data verbatim."""
    logger = logging.getLogger("scatterguard.dkimpy")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def _text(value: object) -> str:
    """Bytes or a dkimpy exception as plain words: its ``(b'...')`` echoes of data removed."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if (
        isinstance(value, BaseException)
        and len(value.args) == 1
        and isinstance(value.args[0], bytes)
    ):
        return _text(value.args[0])
    text = _ECHO.sub("", str(value))
    return _BYTES_REPR.sub(r"\1", text)


def _clean(reason: str) -> str:
    """Our reason as one line of bounded length: message and DNS data are quoted in it."""
    text = _CONTROL.sub(" ", reason)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
