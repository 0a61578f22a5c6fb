"""Start-up cost of the one-process-per-message filter: optional imports we never use.

Two of our libraries probe at import time for optional packages that nothing on our path uses:
dnspython's ``dns.query`` (imported by pyspf and dkimpy through ``dns.resolver``) tries httpx and
requests for DNS-over-HTTPS, and structlog's ``dev`` module tries rich, colorama and
better_exceptions for coloured console output. Debian's python3-dnspython recommends httpx and
requests, which bring rich: measured on Debian 12, those probes alone cost ~140 ms of every
message's start-up. Marking them absent for this process (a ``None`` entry in ``sys.modules``
makes ``import x`` raise ImportError) before any library is imported sends each library down its
own, supported "not installed" branch. Nothing in scatterguard needs them.
"""

from __future__ import annotations

import sys

UNUSED_OPTIONAL_MODULES = ("httpx", "requests", "rich", "colorama", "better_exceptions")


def skip_unused_optional_imports() -> None:
    """Make the optional modules above unimportable in this process, unless already imported."""
    for name in UNUSED_OPTIONAL_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
