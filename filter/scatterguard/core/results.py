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


@dataclass(frozen=True)
class SpfResult:
    """SPF for one identity (RFC 7208): ``mailfrom`` or ``helo``."""

    result: Result
    identity: str  # "mailfrom" or "helo"
    domain: str | None  # the domain checked; None when there was none to check
    reason: str = ""  # our own words, or pyspf's explanation; rendered escaped or dropped


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


@dataclass(frozen=True)
class AuthReport:
    """Everything the checks found out about one message."""

    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    dmarc: DmarcResult
    # SPF for the HELO identity, checked when the reverse-path is null (RFC 7208 §2.3).
    spf_helo: SpfResult | None = None
    # A reverse-path domain shares its organizational domain with the d= of a counting DKIM
    # signature (RFC 9989 relaxed alignment applied to the envelope).
    reverse_path_dkim_aligned: bool = False
    # Set when the message's structure is ambiguous (see Message.problem): what we checked
    # may not be what its reader sees.
    malformed: str | None = None
