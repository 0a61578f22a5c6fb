"""DNS domain names as every part of scatterguard reads them: one label syntax, one IDNA.

The reverse-path's domain (:mod:`~scatterguard.core.envelope`), the Author Domains
(:mod:`~scatterguard.core.authors`), an SPF ``<domain>`` (:mod:`~scatterguard.checks.spf`) and a
DKIM ``d=`` or ``s=`` (:mod:`~scatterguard.checks.dkim`) are all made of :data:`LABEL` labels,
so that a domain one check accepts is one every other check and DMARC alignment accept too.
Each caller keeps what is its own on top (SPF's multi-label rule and ``toplabel``, the
envelope's reasons for a domain it refuses).
"""

from __future__ import annotations

import re

MAX_DOMAIN = 253  # RFC 1035 §2.3.4, in its text form without the final dot

# A DNS label as MTAs accept it: letters, digits, hyphen, underscore (RFC 2181 §11: any octets
# are legal in DNS; underscore labels are common in bounce domains and DKIM selectors), 1 to 63
# characters, no hyphen at either end. ASCII only: an IDN is compared as its A-labels.
LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
# A whole name of such labels, 1 to MAX_DOMAIN characters, without a final dot. As text, so
# that a bytes pattern can be built from it (``NAME.encode("ascii")``).
NAME = rf"(?=.{{1,{MAX_DOMAIN}}}\Z){LABEL}(?:\.{LABEL})*\Z"
_NAME = re.compile(NAME)


def is_name(text: str) -> bool:
    """True when ``text`` is a domain name of :data:`LABEL` labels (any case, no final dot)."""
    return _NAME.match(text) is not None


def within(name: str, ancestor: str) -> bool:
    """True when ``name`` is ``ancestor`` or a name under it (both normalised alike)."""
    return name == ancestor or name.endswith("." + ancestor)


def ascii_domain(raw: str) -> str | None:
    """A domain as lower-case A-labels (RFC 5890 §2.3.2.1), or None when it is no DNS name.

    One final dot is dropped; a name that is not ASCII goes through :func:`to_alabels`.
    """
    domain = raw[:-1] if raw.endswith(".") else raw
    if not domain or len(domain) > MAX_DOMAIN * 4:
        return None
    if not domain.isascii():
        try:
            domain = to_alabels(domain)
        except (UnicodeError, ValueError):
            return None
    domain = domain.lower()
    return domain if is_name(domain) else None


def to_alabels(domain: str) -> str:
    """IDNA 2008 with UTS #46 mapping when the ``idna`` package is there, else IDNA 2003.

    Raises UnicodeError (``idna.IDNAError`` is one) or ValueError for a name IDNA refuses.
    """
    try:
        import idna
    except ImportError:  # pragma: no cover - idna comes with email-validator, but not by promise
        return domain.encode("idna").decode("ascii")
    return str(idna.encode(domain, uts46=True).decode("ascii"))
