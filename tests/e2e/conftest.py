"""Fixtures for the end-to-end tests: each MTA configured from hooks/, and a clean world per test.

Every test that uses ``world`` runs once through Postfix (marked ``postfix``) and once through
Exim (marked ``exim``), so a package build deselects them all with
``-m "not postfix and not exim"``. Where they cannot run (not root, MTAs not installed by
tests/e2e/install-mtas) they skip and say why.

Each of those runs twice more: ``in-process``, where nothing listens on the configured server
socket and the filter the MTA starts does all the work itself, and ``server``, where a resident
``scatterguard serve`` is started for the test and the filter hands each message over to it. A
test may pin the mode with ``@pytest.mark.parametrize("mode", ["server"])``. After each test
the log shows which way every decision went: in ``server`` mode each one must come from a
worker of that server.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dnsserver import DnsServer
from e2e.harness import (
    BANK_DOMAIN,
    LOCAL_IP,
    MTAS,
    RUN,
    SENDER_DOMAIN,
    SENDER_IP,
    SERVER_SOCKET,
    DkimKey,
    FilterSetup,
    LogSink,
    Mta,
    ResidentServer,
    all_mail,
    clear_mailboxes,
    exclusive_mtas,
    install_filter,
    is_dsn,
    mailbox,
    make_message,
    reset_quarantine,
    unavailable,
    wait_for,
)

MTA_PARAMS = [
    pytest.param(name, marks=[getattr(pytest.mark, name), pytest.mark.root, pytest.mark.slow])
    for name in MTAS
]
MODES = ["in-process", "server"]


@pytest.fixture(scope="session")
def dkim_key() -> DkimKey:
    """One RSA signing key for sender.example, selector s1."""
    return DkimKey.generate(SENDER_DOMAIN, "s1")


@pytest.fixture(scope="session")
def mtas_to_ourselves() -> Iterator[None]:
    """No other e2e session (or other holder of the same lock) drives the MTAs meanwhile."""
    with exclusive_mtas():
        yield


@pytest.fixture(scope="session")
def filter_installed(mtas_to_ourselves: None) -> None:
    """The checkout, installed into the venv the MTAs run the filter from (once a session).

    SCATTERGUARD_E2E_KEEP_FILTER=1 keeps whatever the venv holds, to try a build by hand.
    """
    RUN.mkdir(parents=True, exist_ok=True)
    RUN.chmod(0o755)
    if not os.environ.get("SCATTERGUARD_E2E_KEEP_FILTER"):
        install_filter()


@pytest.fixture(scope="session")
def log_sink(filter_installed: None) -> Iterator[LogSink]:
    """The socket the filter logs to, collected for assertions and failure reports."""
    sink = LogSink(RUN / "log.sock")
    yield sink
    sink.close()


@pytest.fixture(scope="session", params=MTA_PARAMS)
def mta(request: pytest.FixtureRequest, dns_session: DnsServer) -> Iterator[Mta]:
    """A running MTA configured from hooks/, with the filter pointed at the loopback DNS."""
    reason = unavailable(request.param)
    if reason:
        pytest.skip(reason)
    # Only now: installing the filter needs what unavailable() checked for.
    request.getfixturevalue("log_sink")
    server = MTAS[request.param]()
    setup = FilterSetup(dns_session.address, server.reinject_command())
    try:
        setup.install()
        reset_quarantine()
        server.configure()
        server.start()
        yield server
    finally:
        try:
            server.clear_queue()
            server.stop()
            clear_mailboxes()
        finally:
            server.restore()
            setup.restore()


@dataclass
class World:
    """One scenario's view: the MTA, the DNS server, the signing key and the filter's log."""

    mta: Mta
    dns: DnsServer
    key: DkimKey
    sink: LogSink
    # Patterns of MTA warnings a scenario provokes on purpose; any other fails the test.
    expected_problems: list[str] = field(default_factory=list)
    # "in-process" or "server": whether the filter hands messages to a resident server.
    mode: str = "in-process"
    server: ResidentServer | None = None
    # Whether the filter may log an internal error (error=...) in this scenario.
    filter_may_fail: bool = False
    # Whether the teardown checks that every decision was made the way ``mode`` says; a test
    # that changes the way on purpose (it kills the server) checks for itself.
    check_path: bool = True

    def send(self, sender: str, recipients: list[str], data: bytes, client: str, helo: str) -> None:
        self.mta.send(sender, recipients, data, client, helo)

    def signed_message(self, to: list[str], subject: str, **extra: Any) -> tuple[bytes, str]:
        data, message_id = make_message(
            from_=f"News <news@{SENDER_DOMAIN}>", to=to, subject=subject, **extra
        )
        return self.key.sign(data), message_id

    def wait(self, what: str, predicate: Callable[[], Any], timeout: float = 60) -> Any:
        """Poll ``predicate`` until it is true; on timeout fail with what both logs say.

        A filter that logs an internal error fails the wait at once: a broken build should not
        cost a minute per scenario.
        """

        def check() -> Any:
            if not self.filter_may_fail and any(" error=" in line for line in self.sink.lines):
                raise AssertionError(f"the filter failed while waiting for {what}\n{self.report()}")
            return predicate()

        return wait_for(what, check, timeout, report=self.report)

    def retry_until_delivered(self, user: str, message_id: str, timeout: float = 60) -> None:
        """Flush the queue, as the MTA's own retry would, until ``message_id`` reaches ``user``.

        In-process, the first retry after an outage must deliver. A resident worker remembers a
        DNS failure for a few seconds (resolver.FAILURE_TTL), so a retry that soon may be
        deferred once more; the MTA would retry minutes later, the test a second later.
        """
        deadline = time.monotonic() + timeout
        while True:
            deferrals = self.mta.filter_deferrals()

            def settled(before: int = deferrals) -> bool:
                return bool(self.copies(user, message_id)) or self.mta.filter_deferrals() > before

            self.mta.flush()
            self.wait(
                f"{message_id} in {user}'s mailbox, or another deferral",
                settled,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            if self.copies(user, message_id):
                return
            assert self.server is not None, f"deferred again after the outage\n{self.report()}"
            assert time.monotonic() < deadline, (
                f"still deferred after {timeout:g}s\n{self.report()}"
            )
            time.sleep(1.0)

    def decisions(self) -> list[tuple[int, str]]:
        """The filter's one line per message so far, each with the pid that logged it."""
        return self.sink.events("message")

    def path_problems(self) -> list[str]:
        """Decisions that were not made the way :attr:`mode` says."""
        if self.server is None:
            # No server ran, so every decision was made in-process.
            return [line for _, line in self.sink.events("serve")]
        workers = self.server.seen_workers | set(self.server.workers())
        return [
            f"not by a server worker: {line}"
            for pid, line in self.decisions()
            if pid not in workers
        ]

    def wait_idle(self, what: str, timeout: float = 60) -> None:
        """Wait until the MTA's queue is empty: the filter has acted and the MTA has finished."""
        self.wait(f"{what} (an empty {self.mta.name} queue)", lambda: not self.mta.queue(), timeout)

    def copies(self, user: str, message_id: str) -> list[bytes]:
        """The messages in ``user``'s mailbox that carry ``message_id``."""
        return [m for m in mailbox(user) if message_id.encode() in m]

    def filter_runs(self, message_id: str) -> int:
        """How many times the filter logged a decision about ``message_id``."""
        return sum(message_id in line for line in self.sink.lines)

    def assert_no_bounce(self) -> None:
        """No DSN was written: none in the MTA's log, none in any mailbox."""
        assert self.mta.bounces() == [], self.report()
        dsns = {user: len([m for m in msgs if is_dsn(m)]) for user, msgs in all_mail().items()}
        assert not any(dsns.values()), f"DSNs in mailboxes {dsns}\n{self.report()}"

    def report(self) -> str:
        """What the MTA and the filter logged during this test, for assertion messages."""
        sink = "\n".join(self.sink.lines[-20:])
        server = f"\n{self.server.output()}" if self.server is not None else ""
        return (
            f"--- {self.mta.name} log ---\n{textwrap.indent(self.mta.log()[-6000:], '  ')}"
            f"\n--- scatterguard log ({self.mode}) ---\n{textwrap.indent(sink, '  ')}{server}"
        )


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """Whether the filter works in-process or hands messages to a resident server."""
    return str(request.param)


@pytest.fixture
def world(
    mta: Mta, mode: str, dns_server: DnsServer, dkim_key: DkimKey, log_sink: LogSink
) -> Iterator[World]:
    """An empty queue, empty mailboxes and quarantine, and the DNS data every scenario uses.

    In ``server`` mode a fresh ``scatterguard serve`` runs for the test, so no scenario sees
    another one's DNS cache; in ``in-process`` mode nothing listens on the configured socket.
    """
    mta.clear_queue()
    clear_mailboxes()
    reset_quarantine()
    records = dns_server.records
    records.add_txt(f"{SENDER_DOMAIN}.", f"v=spf1 ip4:{SENDER_IP} -all")
    records.add_txt(f"_dmarc.{SENDER_DOMAIN}.", "v=DMARC1; p=reject")
    records.add_txt(dkim_key.record_name, dkim_key.record)
    records.add_txt(f"{BANK_DOMAIN}.", "v=spf1 ip4:198.51.100.0/24 -all")
    records.add_txt(f"_dmarc.{BANK_DOMAIN}.", "v=DMARC1; p=reject")
    records.add_txt("example.net.", f"v=spf1 ip4:{LOCAL_IP} -all")
    mta.mark_log()
    log_sink.lines.clear()
    # A socket left by a server that died is refused at connect time, but none should be there.
    SERVER_SOCKET.unlink(missing_ok=True)
    server = None
    if mode == "server":
        server = ResidentServer(log_sink)
        server.start()
    current = World(mta, dns_server, dkim_key, log_sink, mode=mode, server=server)
    try:
        yield current
    finally:
        dns_server.silent = False
        problems = [
            line
            for line in mta.problems().splitlines()
            if not any(re.search(pattern, line) for pattern in current.expected_problems)
        ]
        wrong_way = current.path_problems() if current.check_path else []
        report = current.report()
        stopped = server.stop() if server is not None else None
        mta.clear_queue()
        reset_quarantine()
    assert not problems, f"{mta.name} logged problems:\n" + "\n".join(problems)
    assert not wrong_way, f"decisions not made {mode}:\n" + "\n".join(wrong_way) + f"\n{report}"
    # A server still running at the end must stop cleanly on SIGTERM and remove its socket.
    assert stopped in (None, 0), f"scatterguard serve exited {stopped}\n{report}"
    assert not SERVER_SOCKET.exists() or stopped is None, f"socket left behind\n{report}"
