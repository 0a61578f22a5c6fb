"""Run every check over one resolver and gather the results into an :class:`AuthReport`.

The order matters only for DMARC, which needs the SPF and DKIM results. The reverse-path's own
DKIM match (RFC 9989 relaxed alignment applied to the envelope domain) is computed here, because
it is what makes a reverse-path verified without SPF.
"""

from __future__ import annotations

from scatterguard.checks import dkim as dkimcheck
from scatterguard.checks import dmarc, orgdomain
from scatterguard.checks import spf as spfcheck
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config
from scatterguard.core.envelope import Envelope
from scatterguard.core.message import Message
from scatterguard.core.results import AuthReport, DkimResult


def run(resolver: Resolver, message: Message, envelope: Envelope, config: Config) -> AuthReport:
    """SPF, DKIM, DMARC, and whether a counting DKIM signature matches the reverse-path."""
    spf, spf_helo = spfcheck.check_spf(resolver, envelope, receiver=config.authserv_id)
    signatures = dkimcheck.check_dkim(resolver, message, config.dkim, timeout=config.dns.timeout)
    dmarc_result = dmarc.check_dmarc(resolver, message, spf, signatures, envelope.sender)
    return AuthReport(
        spf=spf,
        dkim=signatures,
        dmarc=dmarc_result,
        spf_helo=spf_helo,
        reverse_path_dkim_aligned=reverse_path_aligned(resolver, envelope, signatures),
        malformed=message.problem,
    )


def reverse_path_aligned(
    resolver: Resolver, envelope: Envelope, signatures: tuple[DkimResult, ...]
) -> bool:
    """True when a counting DKIM signature's d= shares the reverse-path's organizational domain."""
    # No domain (the null reverse-path, an address literal, a path without a usable domain):
    # nothing to align with.
    if envelope.sender is None or envelope.sender.domain is None:
        return False
    domain = envelope.sender.domain
    for sig in signatures:
        if (
            sig.counts
            and sig.domain
            and orgdomain.aligned(resolver, domain, sig.domain, strict=False)
        ):
            return True
    return False
