"""DMARC policy records (RFC 9989 §4.7, §4.8): from the bytes of one TXT record to a value.

This module owns the record grammar and nothing else: no DNS, no evaluation. :func:`parse_record`
never raises; it returns ``None`` for a TXT record that is not a DMARC record at all, which the DNS
tree walk (RFC 9989 §4.10 steps 2 and 6) simply discards.

Choices where RFC 9989 leaves room, made here once:

- A missing ``p`` tag in an otherwise valid record means ``p=none`` (§4.7, the ``p`` tag). A ``p``,
  ``sp`` or ``np`` tag that is present but not valid triggers §4.10.1: with at least one
  syntactically valid ``rua`` URI the record acts as ``p=none`` (invalid ``sp``/``np`` dropped);
  without one, the record is kept for the tree walk but not applied (``applicable`` is False), so
  the message gets no DMARC processing from it.
- Other tags with invalid values fall back to their defaults (§4.8: "Syntax errors in the
  remainder of the record MUST be discarded in favor of default values").
- A tag given twice keeps its first value. Unknown tags, and tags RFC 9989 removed (``pct``,
  ``rf``, ``ri``), are ignored (§4.7: "unknown tags MUST be ignored"; Appendix A.6 for ``pct``).
- Tag names and the values of ``p sp np psd t adkim aspf`` compare case-insensitively (RFC 5234
  quoted strings); the version value is case-sensitive: exactly ``DMARC1`` (§4.7, ``v``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scatterguard.core.results import Policy

# RFC 9989 §4.8: dmarc-sep = *WSP ";" *WSP; equals = *WSP "=" *WSP; tag names are 1*ALPHA.
_WSP = " \t"
_TAG_NAME = re.compile(r"[A-Za-z]+\Z")
# RFC 3986 §3.1: a URI starts with a scheme and a colon; the rest must be URI characters. This is
# all §4.10.1 needs ("at least one syntactically valid reporting URI").
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+;=%]+\Z")
# RFC 9989 §4.8 obs-dmarc-report-size: "!" 1*DIGIT [ "k" / "m" / "g" / "t" ], to be ignored.
_OBS_SIZE = re.compile(r"![0-9]+[kmgtKMGT]?\Z")
_POLICIES = {policy.value: policy for policy in Policy}
MAX_RECORD = 4096  # bytes looked at; a DMARC record is a few hundred bytes in practice


@dataclass(frozen=True)
class DmarcRecord:
    """One parsed DMARC policy record, with RFC 9989 defaults filled in."""

    p: Policy = Policy.NONE
    sp: Policy | None = None  # None: absent, p applies to existing subdomains
    np: Policy | None = None  # None: absent, sp (or p) applies to non-existent subdomains
    psd: str = "u"  # "y", "n" or "u" (RFC 9989 §4.7)
    testing: bool = False  # t=y
    strict_dkim: bool = False  # adkim=s
    strict_spf: bool = False  # aspf=s
    # False when §4.10.1 says to apply no DMARC processing (invalid p/sp/np and no valid rua).
    applicable: bool = True
    problems: tuple[str, ...] = ()  # what was wrong with the record, in our words

    def subdomain_policy(self, exists: bool) -> Policy:
        """The policy for a subdomain of the record's domain (RFC 9989 §4.10.1, ``sp``/``np``).

        A non-existent subdomain gets ``np``, else ``sp``, else ``p``; an existing one ``sp``,
        else ``p``.
        """
        if not exists and self.np is not None:
            return self.np
        return self.sp if self.sp is not None else self.p

    @property
    def np_differs(self) -> bool:
        """True when it matters whether a subdomain exists (``np`` differs from ``sp``/``p``)."""
        return self.np is not None and self.np is not self.subdomain_policy(exists=True)


def parse_record(text: bytes) -> DmarcRecord | None:
    """Parse one TXT record (its character-strings already joined); ``None`` if not DMARC.

    A record is a DMARC record when its first tag is ``v=DMARC1`` (RFC 9989 §4.7, ``v``: "If the
    tag is not the first in the list, or the tag is absent, or the value is not "DMARC1", then the
    entire record MUST be ignored"). Never raises.
    """
    # §4.8 allows only printable ASCII in values; anything else can only be a broken value, and
    # decoding it as "replace" keeps such a value invalid instead of raising.
    record = text[:MAX_RECORD].decode("ascii", "replace")
    parts = record.split(";")
    version = _tag(parts[0].lstrip(_WSP))
    if version is None or version[0] != "v" or version[1] != "DMARC1":
        return None
    tags: dict[str, str] = {}
    problems: list[str] = []
    for part in parts[1:]:
        if not part.strip(_WSP):
            continue  # a trailing or doubled separator
        tag = _tag(part)
        if tag is None:
            problems.append(f"ignored malformed tag {_short(part)!r}")
            continue
        name, value = tag
        if name in tags:
            problems.append(f"ignored repeated tag {name}")
            continue
        tags[name] = value
    return _build(tags, problems)


def _tag(part: str) -> tuple[str, str] | None:
    """Split ``name = value`` (surrounding WSP allowed); None unless the name is 1*ALPHA."""
    name, equals, value = part.partition("=")
    name = name.strip(_WSP)
    value = value.strip(_WSP)
    if not equals or not _TAG_NAME.match(name) or not value:
        return None
    if name.lower() == "v":
        return "v", value  # the version value is case-sensitive
    return name.lower(), value


def _build(tags: dict[str, str], problems: list[str]) -> DmarcRecord:
    invalid: list[str] = []
    p = _policy(tags, "p", invalid, problems)
    sp = _policy(tags, "sp", invalid, problems)
    np = _policy(tags, "np", invalid, problems)
    applicable = True
    if invalid:
        # RFC 9989 §4.10.1: an invalid p, sp or np makes the record p=none when it has a usable
        # rua, and no DMARC processing at all when it has not.
        if _has_valid_uri(tags.get("rua", "")):
            problems.append(f"invalid {'/'.join(invalid)}: treated as p=none (valid rua)")
        else:
            problems.append(f"invalid {'/'.join(invalid)} and no valid rua: not applied")
            applicable = False
        p, sp, np = Policy.NONE, None, None
    return DmarcRecord(
        # §4.7: "If this tag is not present in an otherwise syntactically valid DMARC Policy
        # Record, then the record is treated as if it included p=none".
        p=p if p is not None else Policy.NONE,
        sp=sp,
        np=np,
        psd=_choice(tags, "psd", "ynu", "u", problems),
        testing=_choice(tags, "t", "yn", "n", problems) == "y",
        strict_dkim=_choice(tags, "adkim", "rs", "r", problems) == "s",
        strict_spf=_choice(tags, "aspf", "rs", "r", problems) == "s",
        applicable=applicable,
        problems=tuple(problems),
    )


def _policy(
    tags: dict[str, str], name: str, invalid: list[str], problems: list[str]
) -> Policy | None:
    """The policy a tag names; None when absent or not valid (then ``name`` joins ``invalid``)."""
    value = tags.get(name)
    if value is None:
        return None
    policy = _POLICIES.get(value.lower())
    if policy is None:
        invalid.append(name)
        problems.append(f"{name}={_short(value)!r} is not none, quarantine or reject")
    return policy


def _choice(
    tags: dict[str, str], name: str, allowed: str, default: str, problems: list[str]
) -> str:
    value = tags.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if len(lowered) != 1 or lowered not in allowed:
        problems.append(f"{name}={_short(value)!r} is not valid: default {name}={default}")
        return default
    return lowered


def _has_valid_uri(value: str) -> bool:
    """True when a ``rua`` list holds at least one syntactically valid URI (RFC 9989 §4.8)."""
    for item in value.split(","):
        uri = item.strip(_WSP)
        bang = uri.rfind("!")
        if bang > 0 and _OBS_SIZE.match(uri[bang:]):
            uri = uri[:bang]
        if _URI.match(uri):
            return True
    return False


def _short(text: str) -> str:
    return text.strip(_WSP)[:40]
