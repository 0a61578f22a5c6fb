"""The exception tree of scatterguard (our own breakage, never a check's outcome), the exit
codes and the one table of status lines the MTA is given.

Outcomes of checks (a DNS timeout, a failed signature) are values in
:mod:`scatterguard.core.results`.
Exceptions are for things that stop us from doing our job; the CLI maps each to one exit code::

    ScatterguardError                 filter: 75 (the MTA retries), other commands: 2 or 1
    ├── ConfigError                   the configuration file or a key in it is wrong
    ├── UsageError                    bad command-line arguments or envelope (no recipients, ...)
    ├── InputError                    the message or the BSMTP batch cannot be read
    ├── SpoolError                    a large message cannot be written to its spool file
    ├── DeadlineExceeded              the filter ran out of its own time budget
    ├── ReinjectError                 the re-injection command failed
    └── QuarantineError               the quarantine store cannot be written or read
"""

from __future__ import annotations

# The filter's exit codes (sysexits.h), the only three it may return.
EX_OK = 0
EX_UNAVAILABLE = 69  # bounce: the MTA returns the message to its (verified) sender
EX_TEMPFAIL = 75  # defer: the MTA keeps the message and retries

# The status lines for the MTA, one text per code (RFC 3463 enhanced codes, RFC 7372 where one
# fits): they end up in DSNs and logs. ``{domain}`` is filled in by decide() with domain-like
# characters only.
TEMPFAIL_STATUS = "4.3.0 Temporary mail filter failure, try again later"  # our own breakage
DNS_TEMPFAIL_STATUS = "4.4.3 Temporary DNS failure checking the sender, try again later"
DMARC_REJECT_STATUS = "5.7.26 DMARC policy of {domain} rejects unauthenticated mail"
SPF_REJECT_STATUS = "5.7.23 SPF validation failed for {domain}"


class ScatterguardError(Exception):
    """The root of every error scatterguard raises on purpose."""


class ConfigError(ScatterguardError):
    """The configuration is unusable; the message names the key."""


class UsageError(ScatterguardError):
    """The command line or the envelope it describes is unusable."""


class InputError(ScatterguardError):
    """The message or the batch SMTP stream could not be read."""


class SpoolError(ScatterguardError):
    """A message too large to keep in memory could not be written to its spool file."""


class DeadlineExceeded(ScatterguardError):
    """The filter's own deadline passed before it could finish."""


class ReinjectError(ScatterguardError):
    """The re-injection command did not accept the message."""


class QuarantineError(ScatterguardError):
    """The quarantine store could not be used."""
