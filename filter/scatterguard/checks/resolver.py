"""The one DNS resolver every check goes through (SPF, DKIM, DMARC).

It is a small stub resolver over dnspython's message and query layers, so that each outcome stays
distinct: an answer, NXDOMAIN, no data, SERVFAIL, a timeout, or another error (REFUSED, a malformed
reply, truncation with TCP refused). The checks turn the last three into ``temperror``; none of them
escapes as an exception. Answers are cached for the life of the process, honouring TTLs, so a
resident worker can keep its cache across messages.
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

MAX_CACHE_ENTRIES = 10_000
MAX_CNAME_HOPS = 8
# RFC 2308 §5: negative answers are cached for the SOA minimum; without an SOA, for this long.
DEFAULT_NEGATIVE_TTL = 60
MAX_TTL = 86_400
# A failure is remembered briefly, so one message does not wait for the same timeout twice while
# a resident worker still retries soon.
FAILURE_TTL = 5.0
EDNS_PAYLOAD = 1232


class Status(enum.Enum):
    """How one lookup ended."""

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    SERVFAIL = "servfail"
    TIMEOUT = "timeout"
    ERROR = "error"


TEMPORARY = frozenset({Status.SERVFAIL, Status.TIMEOUT, Status.ERROR})


@dataclass(frozen=True)
class Answer:
    """The outcome of one lookup: a status and, for ``OK``, the records of the asked type."""

    status: Status
    records: tuple[Any, ...] = ()
    ttl: float = 0
    detail: str = ""

    @property
    def temporary(self) -> bool:
        """True when asking again later may give another outcome (SERVFAIL, timeout, error)."""
        return self.status in TEMPORARY

    def texts(self) -> tuple[bytes, ...]:
        """For a TXT answer: each record's character-strings joined (RFC 7208 §3.3, RFC 6376)."""
        return tuple(b"".join(record.strings) for record in self.records)


class Resolver:
    """Ask recursive nameservers, with per-lookup timeouts and a per-process cache."""

    def __init__(
        self,
        nameservers: Iterable[tuple[str, int]] = (),
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nameservers = tuple(nameservers) or system_nameservers()
        self.timeout = timeout
        self.clock = clock
        self.cache: dict[tuple[str, str], tuple[float, Answer]] = {}
        self.lookups = 0  # network lookups made, for logs and tests

    def query(self, name: str, rdtype: str) -> Answer:
        """Look up ``rdtype`` records of ``name``, from the cache when it is fresh."""
        key = (name.lower().rstrip("."), rdtype.upper())
        now = self.clock()
        cached = self.cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = self._lookup(key[0], key[1])
        ttl = FAILURE_TTL if answer.temporary else answer.ttl
        if ttl > 0:
            if len(self.cache) >= MAX_CACHE_ENTRIES:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = (now + ttl, answer)
        return answer

    def txt(self, name: str) -> Answer:
        """Shorthand for a TXT lookup."""
        return self.query(name, "TXT")

    def _lookup(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name)
            qtype = dns.rdatatype.from_text(rdtype)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return Answer(Status.NXDOMAIN, ttl=MAX_TTL, detail=f"{name!r} is not a valid DNS name")
        request = dns.message.make_query(qname, qtype, use_edns=0, payload=EDNS_PAYLOAD)
        deadline = self.clock() + self.timeout
        servers = len(self.nameservers)
        # A server that failed outright (SERVFAIL, REFUSED, garbage) is not asked again in this
        # lookup; one that stayed silent is, since a datagram may have been lost.
        failed: dict[int, Answer] = {}
        last = Answer(Status.TIMEOUT, detail=f"no answer for {name}/{rdtype}")
        attempt = 0
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return next(iter(failed.values()), last)
            index = attempt % servers
            attempt += 1
            if index in failed:
                continue
            host, port = self.nameservers[index]
            wait = min(remaining, max(self.timeout / 3, 0.2))
            self.lookups += 1
            response = self._exchange(request, host, port, wait, remaining)
            answer = (
                response if isinstance(response, Answer) else _interpret(response, qname, qtype)
            )
            if answer.status is Status.TIMEOUT:
                last = answer
                continue
            if answer.status in (Status.SERVFAIL, Status.ERROR):
                failed[index] = answer
                if len(failed) == servers:
                    return answer
                continue
            return answer

    @staticmethod
    def _exchange(
        request: dns.message.Message, host: str, port: int, wait: float, remaining: float
    ) -> dns.message.Message | Answer:
        wire = request.to_wire()
        try:
            data = _udp(wire, request.id, host, port, wait)
        except TimeoutError:
            return Answer(Status.TIMEOUT, detail=f"{host}:{port} did not answer")
        except OSError as exc:
            return Answer(Status.ERROR, detail=f"{host}:{port}: {_brief(exc)}")
        # RFC 7766: a truncated UDP answer is retried over TCP. The TC bit is read from the raw
        # header, since a truncated answer need not even parse.
        if data[2] & _TC_BIT:
            try:
                data = _tcp(wire, host, port, remaining)
            except TimeoutError:
                return Answer(Status.TIMEOUT, detail=f"{host}:{port} TCP did not answer")
            except OSError as exc:
                return Answer(Status.ERROR, detail=f"{host}:{port} TCP: {_brief(exc)}")
        try:
            response = dns.message.from_wire(data)
        # A reply dnspython cannot parse is a temporary error of this lookup, never an escaped
        # exception: its parser raises several unrelated types for malformed input.
        except Exception as exc:  # noqa: BLE001
            return Answer(Status.ERROR, detail=f"{host}:{port}: malformed reply: {_brief(exc)}")
        if not request.is_response(response):
            return Answer(Status.ERROR, detail=f"{host}:{port}: reply does not match the query")
        return response


# Our own transport over plain sockets: dnspython's dns.query imports httpx and requests when
# they are installed (Debian's python3-dnspython recommends both), which costs a pipe filter
# ~160 ms per message on Debian 12 for HTTPS transports we never use.
_TC_BIT = 0x02  # in the third header byte (RFC 1035 §4.1.1)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp(wire: bytes, query_id: int, host: str, port: int, timeout: float) -> bytes:
    """Send one datagram and return the first reply carrying our id (others are ignored)."""
    deadline = time.monotonic() + timeout
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        # A connected socket only receives datagrams from the server it asked.
        sock.connect((host, port))
        sock.send(wire)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            data = sock.recv(65535)
            if len(data) >= 12 and int.from_bytes(data[:2], "big") == query_id:
                return data


def _tcp(wire: bytes, host: str, port: int, timeout: float) -> bytes:
    """One query over TCP, two-byte length prefixed (RFC 1035 §4.2.2)."""
    deadline = time.monotonic() + timeout
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(_recv_exact(sock, 2, deadline), "big")
        data = _recv_exact(sock, size, deadline)
    if len(data) < 12:
        raise ConnectionError("short TCP reply")
    return data


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    chunks = []
    while size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _interpret(
    response: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
) -> Answer:
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(
            Status.NXDOMAIN, ttl=_negative_ttl(response), detail=f"{qname} does not exist"
        )
    if rcode == dns.rcode.SERVFAIL:
        return Answer(Status.SERVFAIL, detail=f"SERVFAIL for {qname}")
    if rcode != dns.rcode.NOERROR:
        return Answer(Status.ERROR, detail=f"{dns.rcode.to_text(rcode)} for {qname}")
    current = qname
    for _ in range(MAX_CNAME_HOPS + 1):
        rrset = _find(response, current, qtype)
        if rrset is not None:
            ttl = min(float(rrset.ttl), MAX_TTL)
            return Answer(Status.OK, tuple(rrset), ttl=ttl)
        cname = _find(response, current, dns.rdatatype.CNAME)
        if cname is None:
            return Answer(
                Status.NODATA, ttl=_negative_ttl(response), detail=f"no {qtype.name} for {qname}"
            )
        current = cname[0].target
    return Answer(Status.ERROR, detail=f"CNAME chain too long at {qname}")


def _find(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    return response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)


def _negative_ttl(response: dns.message.Message) -> float:
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum, MAX_TTL))
    return DEFAULT_NEGATIVE_TTL


def _brief(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


def system_nameservers(path: str = "/etc/resolv.conf") -> tuple[tuple[str, int], ...]:
    """The ``nameserver`` lines of resolv.conf; the loopback resolver when there are none."""
    servers: list[tuple[str, int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append((fields[1].split("%")[0], 53))
    except OSError:
        pass
    return tuple(servers) or (("127.0.0.1", 53),)
