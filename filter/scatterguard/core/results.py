"""Result values of the checks, in the words of RFC 8601 (Authentication-Results).

Every check produces one of these values; none of them raises for a DNS problem. A DNS timeout or
SERVFAIL is ``temperror``, never ``fail``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Result(enum.Enum):
    """An RFC 8601 result word (§2.7)."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"
    POLICY = "policy"

    def __str__(self) -> str:
        return self.value


class Policy(enum.Enum):
    """A DMARC domain owner policy (RFC 9989 ``p``, ``sp``, ``np``)."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    def __str__(self) -> str:
        return self.value

    @property
    def strictness(self) -> int:
        """Order policies from the most lenient (0) to the strictest (2)."""
        return _STRICTNESS[self]


_STRICTNESS = {Policy.NONE: 0, Policy.QUARANTINE: 1, Policy.REJECT: 2}


# Causes: why a check gave its result, where the RFC 8601 word alone does not say. Their values
# are stable (lower case, underscores): they go into check --json, logs and metric labels.
# None means the word says it all: a pass, or a fail the domain's own record gave.


class SpfCause(enum.Enum):
    """Why SPF gave its result (RFC 7208), when it was not simply the domain's record."""

    NO_DOMAIN = "no_domain"  # none: no domain to check (RFC 7208 §2.4, §4.3)
    NOT_A_DOMAIN = "not_a_domain"  # none: the sender domain or HELO is no domain name (§4.3)
    NO_CLIENT_ADDRESS = "no_client_address"  # none: no client IP to check
    NO_RECORD = "no_record"  # none: the domain publishes no SPF record (§4.5)
    DNS_ERROR = "dns_error"  # temperror: a lookup failed temporarily
    TIME_BUDGET = "time_budget"  # temperror: the evaluation ran out of time (§4.6.4)
    OTHER_DOMAIN = "other_domain"  # temperror: another domain than the reported one was checked
    INTERNAL_ERROR = "internal_error"  # temperror: a bug in pyspf or in us

    def __str__(self) -> str:
        return self.value


class DkimCause(enum.Enum):
    """Why a DKIM signature did not pass; mostly RFC 6376 §6.1's PERMFAIL and TEMPFAIL names."""

    MESSAGE_TOO_LARGE = "message_too_large"  # neutral: not verified (dkim.max_message_size)
    SIGNATURE_LIMIT = "signature_limit"  # neutral: not verified (dkim.max_signatures)
    MALFORMED_SIGNATURE = "malformed_signature"  # permerror: the field is outside §3.2 / §3.5
    MISSING_TAG = "missing_tag"  # permerror: signature missing required tag
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"  # permerror: rsa-sha1 (RFC 8301), unknown c=
    FROM_NOT_SIGNED = "from_not_signed"  # permerror: h= does not include From (§5.4)
    DOMAIN_MISMATCH = "domain_mismatch"  # permerror: i= outside d= (or a subdomain under t=s)
    SIGNATURE_EXPIRED = "signature_expired"  # permerror: x= is past
    NO_KEY = "no_key"  # permerror: no key record (or several) at the selector
    KEY_SYNTAX = "key_syntax"  # permerror: the key record or key cannot be used
    KEY_REVOKED = "key_revoked"  # permerror: empty p=
    INAPPROPRIATE_KEY = "inappropriate_key"  # permerror: s=, h=, k= or size do not allow it
    BODY_HASH = "body_hash"  # fail: body hash did not verify
    BAD_SIGNATURE = "bad_signature"  # fail: signature did not verify
    KEY_UNAVAILABLE = "key_unavailable"  # temperror: the key lookup failed temporarily
    TIME_BUDGET = "time_budget"  # temperror: key lookups ran out of their time
    INTERNAL_ERROR = "internal_error"  # temperror: a bug in dkimpy or in us

    def __str__(self) -> str:
        return self.value


class DmarcCause(enum.Enum):
    """Why DMARC (RFC 9989) gave its result, for one Author Domain or the whole message."""

    NO_FROM_FIELD = "no_from_field"  # permerror: the message has no From field
    NO_FROM_ADDRESS = "no_from_address"  # permerror: its From fields name no address
    NO_FROM_DOMAIN = "no_from_domain"  # permerror: no From address has a usable domain
    TOO_MANY_DOMAINS = "too_many_domains"  # fail: more Author Domains than are evaluated (§11.5)
    NO_RECORD = "no_record"  # none: no DMARC record for the domain
    RECORD_NOT_APPLIED = "record_not_applied"  # none: a record found, but not applicable
    DNS_ERROR = "dns_error"  # temperror: policy discovery failed temporarily
    OUTCOME_OPEN = "outcome_open"  # temperror: an identifier or its alignment might still pass
    EXISTENCE_UNKNOWN = "existence_unknown"  # temperror: np or sp unknown (§3.2.13)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class SpfResult:
    """SPF for one identity (RFC 7208): ``mailfrom`` or ``helo``."""

    result: Result
    identity: str  # "mailfrom" or "helo"
    domain: str | None  # the domain checked; None when there was none to check
    reason: str = ""  # our own words, or pyspf's explanation; rendered escaped or dropped
    cause: SpfCause | None = None


@dataclass(frozen=True)
class DkimResult:
    """The verification of one DKIM-Signature header field (RFC 6376)."""

    result: Result
    domain: str | None
    selector: str | None
    algorithm: str | None
    reason: str = ""
    # False when l= leaves part of the body unsigned: such a signature proves nothing about the
    # body, so it does not count toward DMARC or reverse-path verification.
    covers_body: bool = True
    # The first bytes of b=, for RFC 6008 header.b in the A-R header.
    b_prefix: str | None = None
    cause: DkimCause | None = None

    @property
    def counts(self) -> bool:
        """True when this signature passed and covers the whole body."""
        return self.result is Result.PASS and self.covers_body


@dataclass(frozen=True)
class DmarcDomainResult:
    """DMARC (RFC 9989) evaluated for one RFC 5322.From domain."""

    result: Result
    domain: str
    # The policy that applies to this domain (p, or sp/np for a subdomain), as published; None
    # when no DMARC record was found.
    policy: Policy | None = None
    # Where the record was found (the From domain itself or an ancestor from the tree walk).
    record_domain: str | None = None
    organizational_domain: str | None = None
    testing: bool = False  # t=y
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    cause: DmarcCause | None = None


@dataclass(frozen=True)
class DmarcResult:
    """DMARC for the whole message: one entry per From domain, and the verdict over all of them.

    When the From header names several domains (or is repeated), each is evaluated and the message
    fails if any of them fails, under the strictest policy among the failing ones (RFC 9989 §11.5).
    """

    result: Result
    domain: str | None
    policy: Policy | None
    testing: bool = False
    per_domain: tuple[DmarcDomainResult, ...] = ()
    reason: str = ""
    cause: DmarcCause | None = None  # the cause of the domain the result is reported for


@dataclass(frozen=True)
class AuthReport:
    """Everything the checks found out about one message.

    ``dkim`` and ``dmarc`` are None when that check was not evaluated at all, which is not its
    ``none`` (no signature; no DMARC record): a front end that sees only the envelope (a Postfix
    policy service at RCPT time has no header) cannot evaluate them. The A-R field then omits
    the method, ``check --json`` shows null, and decide() draws no conclusion from an absent
    DMARC policy (rule 4).
    """

    spf: SpfResult
    dkim: tuple[DkimResult, ...] | None  # None: not evaluated; () no signature
    dmarc: DmarcResult | None  # None: not evaluated
    # SPF for the HELO identity, checked when the reverse-path is null (RFC 7208 §2.3).
    spf_helo: SpfResult | None = None
    # A reverse-path domain shares its organizational domain with the d= of a counting DKIM
    # signature (RFC 9989 relaxed alignment applied to the envelope).
    reverse_path_dkim_aligned: bool = False
    # Set when the message's structure is ambiguous (see Message.problem): what we checked
    # may not be what its reader sees.
    malformed: str | None = None
