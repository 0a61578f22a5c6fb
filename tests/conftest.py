"""Fixtures shared by the whole suite: the loopback DNS server and a resolver pointed at it."""

from __future__ import annotations

# First: measuring core's coverage must start before anything imports the package.
import corefloor  # isort: skip

from collections.abc import Iterator

import pytest

from dnsserver import DnsServer
from scatterguard.checks.resolver import Resolver


@pytest.fixture(scope="session")
def dns_session() -> Iterator[DnsServer]:
    """One real DNS server on loopback for the whole session."""
    with DnsServer() as server:
        yield server


@pytest.fixture
def dns_server(dns_session: DnsServer) -> Iterator[DnsServer]:
    """The loopback DNS server, emptied of records and faults before each test."""
    dns_session.reset()
    yield dns_session
    dns_session.reset()


@pytest.fixture
def resolver(dns_server: DnsServer) -> Resolver:
    """A fresh resolver (empty cache) pointed at the loopback DNS server, with short timeouts."""
    return Resolver([(dns_server.host, dns_server.port)], timeout=0.5)


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``core_branch_coverage`` floor setting (see corefloor)."""
    corefloor.addini(parser)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Check core's branch coverage against its floor on a full run."""
    corefloor.finish(session)
