"""The one resolver: outcomes kept apart, cache with TTLs, TCP on truncation."""

from __future__ import annotations

import pytest

from dnsserver import DnsServer
from scatterguard.checks.resolver import Resolver, Status


@pytest.mark.parametrize(
    ("name", "rdtype", "fault", "status"),
    [
        pytest.param("host.res.test", "A", None, Status.OK, id="answer"),
        pytest.param("alias.res.test", "A", None, Status.OK, id="cname-followed"),
        pytest.param("host.res.test", "MX", None, Status.NODATA, id="nodata"),
        pytest.param("res.test", "A", None, Status.NODATA, id="empty-non-terminal"),
        pytest.param("missing.res.test", "A", None, Status.NXDOMAIN, id="nxdomain"),
        pytest.param("host.res.test", "A", "timeout", Status.TIMEOUT, id="timeout"),
        pytest.param("host.res.test", "A", "servfail", Status.SERVFAIL, id="servfail"),
        pytest.param("host.res.test", "A", "refused", Status.ERROR, id="refused"),
        pytest.param("host.res.test", "A", "malformed", Status.ERROR, id="malformed"),
        pytest.param("host.res.test", "A", "truncate", Status.ERROR, id="truncated-tcp-refused"),
        pytest.param("loop1.res.test", "A", None, Status.SERVFAIL, id="cname-loop"),
        pytest.param("a" * 64 + ".res.test", "A", None, Status.NXDOMAIN, id="label-too-long"),
    ],
)
def test_outcomes(
    dns_server: DnsServer,
    resolver: Resolver,
    name: str,
    rdtype: str,
    fault: str | None,
    status: Status,
) -> None:
    """NXDOMAIN, no data, SERVFAIL, timeout and other errors stay distinct."""
    dns_server.records.add_text(
        """
host.res.test. 300 IN A 192.0.2.10
alias.res.test. 300 IN CNAME host.res.test.
loop1.res.test. 300 IN CNAME loop2.res.test.
loop2.res.test. 300 IN CNAME loop1.res.test.
"""
    )
    if fault:
        dns_server.fault(name, fault)
    answer = resolver.query(name, rdtype)
    assert answer.status is status, answer.detail
    assert answer.temporary is (status in (Status.SERVFAIL, Status.TIMEOUT, Status.ERROR))
    if status is Status.OK:
        assert [r.address for r in answer.records] == ["192.0.2.10"]


def test_large_txt_goes_over_tcp(dns_server: DnsServer, resolver: Resolver) -> None:
    """A 64 KB TXT answer is truncated over UDP and fetched over TCP."""
    dns_server.records.add_txt("big.res.test", b"v" * 60_000)
    answer = resolver.txt("big.res.test")
    assert answer.status is Status.OK
    assert answer.texts() == (b"v" * 60_000,)
    assert [t for n, _, t in dns_server.queries if n == "big.res.test."] == ["udp", "tcp"]


def test_cache_honours_ttl(dns_server: DnsServer) -> None:
    """Answers are served from the cache until their TTL runs out."""
    now = [1000.0]
    resolver = Resolver([(dns_server.host, dns_server.port)], timeout=0.5, clock=lambda: now[0])
    dns_server.records.add_text('ttl.res.test. 30 IN TXT "x"')
    resolver.txt("ttl.res.test")
    resolver.txt("TTL.res.test.")
    assert len(dns_server.queries) == 1
    now[0] += 31
    resolver.txt("ttl.res.test")
    assert len(dns_server.queries) == 2


def test_failures_are_cached_briefly(dns_server: DnsServer, resolver: Resolver) -> None:
    """One message does not wait twice for the same timeout."""
    dns_server.fault("slow.res.test", "timeout")
    assert resolver.txt("slow.res.test").status is Status.TIMEOUT
    asked = len(dns_server.queries)
    assert resolver.txt("slow.res.test").status is Status.TIMEOUT
    assert len(dns_server.queries) == asked


def test_second_nameserver_answers(dns_server: DnsServer) -> None:
    """When the first server times out, the next one is asked within the same lookup."""
    with DnsServer() as other:
        other.records.add_text("host.res.test. 300 IN A 192.0.2.11")
        dns_server.silent = True
        resolver = Resolver(
            [(dns_server.host, dns_server.port), (other.host, other.port)], timeout=1.0
        )
        assert resolver.query("host.res.test", "A").status is Status.OK
