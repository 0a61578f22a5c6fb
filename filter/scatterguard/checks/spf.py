"""SPF (RFC 7208) for the MAIL FROM and HELO identities, evaluated by pyspf over our resolver.

This module owns two things:

- :func:`check_spf`, which picks the identities to check from the envelope (RFC 7208 §2.3, §2.4),
  runs the evaluation and turns every outcome, including a library bug, into an
  :class:`~scatterguard.core.results.SpfResult`; it never raises.
- :class:`ResolverQuery`, a subclass of ``spf.query`` whose ``dns()`` method asks our
  :class:`~scatterguard.checks.resolver.Resolver` instead of pyspf's module-global ``DNSLookup``.
  Nothing global in pyspf is patched, and nothing in the evaluation touches the system resolver or a
  socket of its own: the receiver name (the ``r`` macro) is passed in, never looked up.

Choices where the RFC leaves room, made here once:

- For the null reverse-path, RFC 7208 §2.4 defines the MAIL FROM identity as
  ``postmaster@<HELO>``, and §2.3 checks the HELO identity with exactly the same ``check_host()``
  arguments. The evaluation is therefore run once and reported twice: as the MAIL FROM result
  (identity ``mailfrom``, domain = the HELO name) and as the HELO result (identity ``helo``).
  For a non-null reverse-path the HELO identity is not checked and the second value is ``None``.
- DNS errors while validating PTR names (the ``ptr`` mechanism, the ``p`` macro) skip that name
  or give no validated name, as RFC 7208 §5.5 says, instead of pyspf's ``temperror``. Those
  lookups are answered by the client's reverse zone: they have their own share of the time
  budget (:data:`PTR_SHARE`), count no void lookups, and past their limits the names are
  ignored, so they can never make the evaluation ``temperror`` or ``permerror``.
- A HELO name or sender domain that is not a multi-label domain name (an address literal, a bare
  host name, an empty or over-long label) gives ``none`` without a lookup (RFC 7208 §4.3).
- pyspf's explanation can come from the domain's ``exp=`` record, i.e. from whoever controls that
  DNS: it is kept as data only, control characters replaced and cut to :data:`MAX_REASON`.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import re
import time
from typing import Any

import dns.name
import spf

from scatterguard.checks.resolver import Answer, Resolver, Status
from scatterguard.core import domains
from scatterguard.core.envelope import Envelope
from scatterguard.core.results import Result, SpfCause, SpfResult

MAX_REASON = 200
# RFC 7208 §4.6.4 recommends at least 20 seconds for the whole evaluation.
DEFAULT_QUERY_TIME = 20.0
# The part of that budget all PTR validation lookups of one evaluation may use together (the
# client's reverse zone answers them, RFC 7208 §4.6.4): 5 of the 20 seconds.
PTR_SHARE = 0.25

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 7208 §7.1 toplabel: not all digits, so "192.0.2.1" is never taken for a domain.
_TOPLABEL = re.compile(
    r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\Z"
)
_RESULTS = {result.value: result for result in Result}
# pyspf's none is "no SPF record" (the domain was checked as a domain name first), and its
# temperror a lookup that failed temporarily (our dns() raises it for nothing else).
_CAUSES = {Result.NONE: SpfCause.NO_RECORD, Result.TEMPERROR: SpfCause.DNS_ERROR}


class OutOfTime(spf.TempError):  # type: ignore[misc]  # pyspf ships no type information
    """The evaluation's time budget is spent: temperror, never skipped like one failed lookup."""


class ResolverQuery(spf.query):  # type: ignore[misc]  # pyspf ships no type information
    """An ``spf.query`` whose DNS lookups go through our :class:`Resolver`.

    ``dns()`` is the one seam pyspf calls for every lookup (TXT for records and ``exp=``, A/AAAA,
    MX, PTR). ``validated_ptrs()`` is replaced too, so DNS errors during PTR validation follow
    RFC 7208 §5.5. The rest of pyspf (record selection, mechanisms, macros, the lookup limits) is
    used as it is.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        i: str,
        s: str,
        h: str,
        receiver: str | None = None,
        query_time: float = DEFAULT_QUERY_TIME,
        local_part: str | None = None,
        domain: str | None = None,
    ) -> None:
        # querytime=0: pyspf's own budget only shortens the timeout of its DNSLookup, which we do
        # not use; the overall budget is kept below, in dns(). A falsy receiver makes pyspf use
        # "unknown" rather than anything it would have to look up.
        super().__init__(i=i, s=s, h=h, receiver=receiver or None, strict=True, querytime=0)
        if domain is not None:
            # pyspf splits <sender> at its first "@" (split_email), so '"a@b"@victim.example'
            # would be evaluated for 'b"@victim.example'. The envelope parser is the one reading
            # of the path: its local part and domain become the l, o and d macros and the domain
            # check_host() starts from (RFC 7208 §4.1, §7.3; "postmaster" for an empty local
            # part, §4.3).
            self.l = local_part or "postmaster"
            self.o = self.d = domain
        self.resolver = resolver
        self.query_time = query_time
        self.deadline = time.monotonic() + query_time
        # PTR validation (ptr, %{p}): its own share of the budget, names and results kept.
        self.ptr_budget = query_time * PTR_SHARE
        self.ptr_spent = 0.0
        self._ptrs: list[str] | None = None
        self._validated: dict[str, bool] = {}
        self._p_by_domain: dict[str, str] = {}
        self._ptr_targets: list[collections.deque[str]] = []
        # Set when the evaluation's time budget ran out: its temperror is then TIME_BUDGET.
        self.out_of_time = False

    def dns(
        self,
        name: Any,
        qtype: str,
        cnames: Any = None,
        ignore_void: bool = False,
    ) -> list[Any]:
        """Look up ``qtype`` records of ``name`` in the shapes pyspf expects.

        A and AAAA give address strings, MX ``(preference, exchange)``, PTR host names, TXT and SPF
        one list of byte strings per record. No data and NXDOMAIN give ``[]`` and count as a void
        lookup unless ``ignore_void`` (RFC 7208 §4.6.4); a SERVFAIL, timeout or other failure raises
        ``spf.TempError``, which pyspf reports as ``temperror``.
        """
        # The resolver follows CNAME chains itself (and gives up on loops), so pyspf's own chain
        # bookkeeping has nothing to do.
        del cnames
        host = str(name).rstrip(".").lower()
        if not _carriable(host):
            # A name DNS cannot carry (an empty or over-long label) has no data; like pyspf, this is
            # not counted as a void lookup because no query was sent.
            return []
        if time.monotonic() > self.deadline:
            self.out_of_time = True
            raise OutOfTime(f"SPF evaluation exceeded {self.query_time:g} s")
        answer = self.resolver.query(host, qtype)
        if answer.temporary:
            raise spf.TempError(f"DNS {answer.status.value} for {host}/{qtype}")
        found = (
            [_shape(qtype, record) for record in answer.records]
            if answer.status is Status.OK
            else []
        )
        if not found and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return found

    def validated_ptrs(self) -> list[str]:
        """The client's PTR names that resolve back to it (RFC 7208 §5.5), for ``ptr``.

        The PTR data belongs to whoever controls the client's reverse zone, i.e. possibly the
        attacker (RFC 7208 §4.6.4 says as much). So, unlike pyspf: a DNS error on the PTR lookup
        means no validated name (the mechanism does not match, §5.5); an error on one name's
        address lookup skips that name; at most 10 names are looked up (§4.6.4, the rest are
        ignored); none of these lookups counts as a void lookup; the names and their validation
        are looked up once per evaluation; and all of them together get at most
        :data:`PTR_SHARE` of the evaluation's time budget. Once that share is spent, the names
        left are skipped as a DNS error would be: a reverse zone whose answers time out can make
        ``ptr`` not match, never turn the whole evaluation into ``temperror``.
        """
        names = self._ptr_names()
        targets = self._ptr_targets[-1] if self._ptr_targets else None
        if targets:
            # §5.5: only a validated name equal to the target domain or under it can match, so
            # names elsewhere (in a zone the client's owner may make time out) are not even
            # looked up. The answer is the one pyspf's domainmatch() would give on all of them.
            target = targets.popleft().rstrip(".").lower()
            names = [n for n in names if domains.within(n.rstrip(".").lower(), target)]
        return [name for name in names if self._validates(name)]

    def check1(self, record: Any, domain: str, recursion: int) -> Any:
        """pyspf's evaluation of one record, with a fresh list of its ``ptr`` targets.

        pyspf validates every mechanism of a record (:meth:`validate_mechanism`) before it
        evaluates them in order, and an ``include`` or ``redirect`` evaluates its own record in a
        nested call: a stack of queues gives :meth:`validated_ptrs` the target of exactly the
        ``ptr`` mechanism being evaluated.
        """
        self._ptr_targets.append(collections.deque())
        try:
            return super().check1(record, domain, recursion)
        finally:
            self._ptr_targets.pop()

    def validate_mechanism(self, mech: str) -> Any:
        """pyspf's parse of one mechanism; a ``ptr`` target (macros expanded) is remembered."""
        parsed = super().validate_mechanism(mech)
        if parsed[1] == "ptr" and self._ptr_targets:
            self._ptr_targets[-1].append(str(parsed[2]))
        return parsed

    def getp(self) -> str:
        """The ``p`` macro (RFC 7208 §7.3) for the current domain, with §5.5's PTR rules.

        The current domain itself if it validates, else a validated subdomain of it, else any
        validated name, else "unknown" (also on DNS errors). Names are validated in that order
        and only until one is found, so names outside the domain cost nothing when a better one
        validates. Unlike pyspf, the answer is kept per domain, since ``d`` changes in includes.
        """
        domain = str(self.d).lower()
        if domain not in self._p_by_domain:
            names = self._ptr_names()
            ordered = [n for n in names if n.lower() == domain]
            ordered += [n for n in names if n.lower().endswith("." + domain)]
            ordered += [n for n in names if n not in ordered]
            self._p_by_domain[domain] = next(
                (name for name in ordered if self._validates(name)), "unknown"
            )
        self.p = self._p_by_domain[domain]
        return str(self.p)

    def _ptr_names(self) -> list[str]:
        if self._ptrs is None:
            found = self._ptr_lookup(f"{spf.reverse_dots(self.i)}.{self.v}.arpa", "PTR")
            self._ptrs = [str(name) for name in (found or [])[: spf.MAX_PTR]]
        return self._ptrs

    def _validates(self, name: str) -> bool:
        if name not in self._validated:
            addresses = self._ptr_lookup(name, self.A)
            self._validated[name] = bool(addresses) and bool(
                self.cidrmatch(addresses, self.cidrmax)
            )
        return self._validated[name]

    def _ptr_lookup(self, name: str, qtype: str) -> list[Any] | None:
        """One lookup for PTR validation; None on a DNS error or once the PTR share is spent."""
        host = name.rstrip(".").lower()
        if not _carriable(host):
            return []
        now = time.monotonic()
        if now > self.deadline:
            # Spent before this lookup, by the evaluation as a whole: that is its temperror.
            self.out_of_time = True
            raise OutOfTime(f"SPF evaluation exceeded {self.query_time:g} s")
        left = min(self.ptr_budget - self.ptr_spent, self.deadline - now)
        if left <= 0:
            return None
        try:
            answer = _query_within(self.resolver, host, qtype, left)
        finally:
            self.ptr_spent += time.monotonic() - now
        if answer.temporary:
            return None
        if answer.status is not Status.OK:
            return []
        return [_shape(qtype, record) for record in answer.records]


def _query_within(resolver: Resolver, host: str, qtype: str, seconds: float) -> Answer:
    """``resolver.query`` with its per-lookup timeout cut to ``seconds`` (same cache).

    A failure of the shortened lookup is ours (the PTR share was nearly spent), not the name's:
    it is not left in the shared cache. Otherwise a reverse zone that answers just inside the
    share would make one of the target domain's own names time out for every later lookup of
    it (an ``a:`` or ``mx`` of the same record, the next message in a resident worker), and the
    victim's ``fail`` would become ``temperror`` (issue 12 item 4).
    """
    if resolver.timeout <= seconds:
        return resolver.query(host, qtype)
    # A shallow copy shares the cache; only the timeout differs.
    bounded = copy.copy(resolver)
    bounded.timeout = seconds
    before = bounded.lookups
    try:
        answer = bounded.query(host, qtype)
    finally:
        resolver.lookups += bounded.lookups - before
    if answer.temporary:
        key = (host.lower().rstrip("."), qtype.upper())
        cached = resolver.cache.get(key)
        if cached is not None and cached[1] is answer:
            del resolver.cache[key]
    return answer


def _shape(qtype: str, record: Any) -> Any:
    """One dnspython rdata in the form pyspf's mechanisms consume."""
    kind = qtype.upper()
    if kind in ("A", "AAAA"):
        return str(record.address)
    if kind == "MX":
        # A null MX (RFC 7505, exchange ".") names no host: "" makes pyspf skip it.
        exchange = record.exchange
        host = "" if exchange == dns.name.root else exchange.to_text(omit_final_dot=True)
        return (int(record.preference), host)
    if kind == "PTR":
        return str(record.target.to_text(omit_final_dot=True))
    if kind in ("TXT", "SPF"):
        # A record without character-strings is empty text; pyspf indexes the first string.
        return list(record.strings) or [b""]
    return record.to_text()


def _carriable(host: str) -> bool:
    """True when every label is 1..63 octets and the name fits in 253 (RFC 1035 §2.3.4)."""
    if not host or len(host) > 253:
        return False
    return all(0 < len(label) < 64 for label in host.split("."))


def spf_domain(text: str | None) -> str | None:
    """The name as an SPF ``<domain>`` (ASCII, lower case, no final dot), or None if it is not one.

    RFC 7208 §4.3: a malformed domain or one that is not multi-label gives ``none`` at once. Address
    literals (``[192.0.2.1]``) and bare IP addresses are not domains.
    """
    if not text:
        return None
    name = text.strip().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(labels) < 2 or not domains.is_name(name) or not _TOPLABEL.match(labels[-1]):
        return None
    return name.lower()


def check_spf(
    resolver: Resolver,
    envelope: Envelope,
    *,
    query_time: float = DEFAULT_QUERY_TIME,
    receiver: str | None = None,
) -> tuple[SpfResult, SpfResult | None]:
    """SPF for the envelope: ``(MAIL FROM result, HELO result or None)``; never raises.

    ``receiver`` is the name of the host doing the check (the ``r`` macro of ``exp=`` texts, e.g.
    the authserv-id); without it pyspf says ``unknown``. ``query_time`` bounds the whole evaluation
    (RFC 7208 §4.6.4); each lookup is also bounded by the resolver's own timeout.
    """
    client = str(envelope.client_address) if envelope.client_address is not None else None
    if envelope.sender is None:
        helo_result = _check_helo(resolver, client, envelope.helo, query_time, receiver)
        # RFC 7208 §2.4: with the null reverse-path the MAIL FROM identity is postmaster@<HELO>,
        # evaluated with the same arguments as the HELO identity (§2.3): one evaluation, two names.
        return dataclasses.replace(helo_result, identity="mailfrom"), helo_result
    sender = envelope.sender
    if sender.domain is None:
        reason = f"the reverse-path names no domain ({sender.problem}) (RFC 7208 §4.3)"
        return SpfResult(Result.NONE, "mailfrom", None, _clean(reason), SpfCause.NO_DOMAIN), None
    domain = spf_domain(sender.domain)
    if domain is None:
        reason = f"sender domain {sender.domain!r} is not a domain name (RFC 7208 §4.3)"
        return SpfResult(Result.NONE, "mailfrom", None, _clean(reason), SpfCause.NOT_A_DOMAIN), None
    if client is None:
        reason = "no client address to check"
        return SpfResult(Result.NONE, "mailfrom", domain, reason, SpfCause.NO_CLIENT_ADDRESS), None
    helo = envelope.helo or "unknown"
    result = evaluate(
        resolver,
        client,
        sender.text,
        helo,
        query_time=query_time,
        receiver=receiver,
        local_part=sender.local_part,
        domain=domain,
    )
    return _as(result, "mailfrom", domain), None


def _check_helo(
    resolver: Resolver,
    client: str | None,
    helo: str | None,
    query_time: float,
    receiver: str | None,
) -> SpfResult:
    if not helo:
        reason = "null reverse-path and no HELO name: nothing to check (RFC 7208 §2.4)"
        return SpfResult(Result.NONE, "helo", None, reason, SpfCause.NO_DOMAIN)
    domain = spf_domain(helo)
    if domain is None:
        reason = f"HELO name {helo!r} is not a domain name (RFC 7208 §2.3, §4.3)"
        return SpfResult(Result.NONE, "helo", None, _clean(reason), SpfCause.NOT_A_DOMAIN)
    if client is None:
        reason = "no client address to check"
        return SpfResult(Result.NONE, "helo", domain, reason, SpfCause.NO_CLIENT_ADDRESS)
    mailbox = f"postmaster@{domain}"
    result = evaluate(
        resolver,
        client,
        mailbox,
        domain,
        query_time=query_time,
        receiver=receiver,
        local_part="postmaster",
        domain=domain,
    )
    return _as(result, "helo", domain)


def evaluate(
    resolver: Resolver,
    client: str,
    sender: str,
    helo: str,
    *,
    query_time: float = DEFAULT_QUERY_TIME,
    receiver: str | None = None,
    local_part: str | None = None,
    domain: str | None = None,
) -> tuple[Result, str, SpfCause | None]:
    """RFC 7208 ``check_host()`` for ``client`` and ``sender`` (the ``s`` macro).

    Returns the result word, a short, cleaned reason and the cause (None when the domain's
    record gave the result). With ``domain`` given, that is the
    domain evaluated (and ``local_part`` the ``l`` macro), whatever ``sender`` holds; without it
    pyspf splits ``sender`` itself, and an empty ``sender`` means the HELO identity
    (``postmaster@helo``). Never raises.
    """
    try:
        query = ResolverQuery(
            resolver,
            i=client,
            s=sender,
            h=helo,
            receiver=receiver,
            query_time=query_time,
            local_part=local_part,
            domain=domain,
        )
        word, _code, explanation = query.check()
        if domain is not None and (query.d, query.o) != (domain, domain):
            # The result is only worth anything for the domain we report (issue 12 item 5).
            reason = _clean(f"SPF was evaluated for {query.d!r}, not {domain!r}")
            return Result.TEMPERROR, reason, SpfCause.OTHER_DOMAIN
        result = _RESULTS.get(str(word))
        if result is None or result is Result.POLICY:
            return (
                Result.TEMPERROR,
                _clean(f"unexpected SPF result {word!r}"),
                SpfCause.INTERNAL_ERROR,
            )
        text = str(explanation or "")
        if result is Result.NONE and not text:
            text = f"no SPF record for {query.d}"
        cause = _CAUSES.get(result)
        if result is Result.TEMPERROR and query.out_of_time:
            cause = SpfCause.TIME_BUDGET
        return result, _clean(text), cause
    # pyspf reports DNS and record problems as results; anything else that escapes is a bug in
    # the library or in us. A bug must make the MTA retry (temperror leads to defer), never fail
    # or bounce mail.
    except Exception as exc:  # noqa: BLE001
        reason = _clean(f"SPF evaluation failed: {type(exc).__name__}: {exc}")
        return Result.TEMPERROR, reason, SpfCause.INTERNAL_ERROR


def _as(outcome: tuple[Result, str, SpfCause | None], identity: str, domain: str) -> SpfResult:
    return SpfResult(outcome[0], identity, domain, outcome[1], outcome[2])


def _clean(text: str) -> str:
    """Keep a reason one short line of data: control characters replaced, length capped."""
    text = _CONTROL.sub("?", text)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
