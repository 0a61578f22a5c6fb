"""The composition root: ``Services.from_config`` builds each collaborator once, where the
configuration says, touching no disk; ``pipe.filter_stream`` uses the ones it is given for
every message."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

from dnsserver import DnsServer
from scatterguard import services
from scatterguard.config import Config, DnsConfig, QuarantineConfig, ReinjectConfig, StateConfig
from scatterguard.core.envelope import Envelope
from scatterguard.core.message import Payload, Spooled
from scatterguard.core.verdict import Decision
from scatterguard.frontends import pipe, request
from scatterguard.pipeline import Done
from scatterguard.services import Services
from test_filter import ZONE, message

AUTHSERV = "mx.rcpt.example"


class Log:
    """Keeps the one line per message."""

    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def info(self, event: str, **values: object) -> None:
        self.lines.append(values)

    error = info


def _config(tmp: Path, dns: DnsServer | None = None, state: Path | None = None) -> Config:
    return Config(
        authserv_id=AUTHSERV,
        dns=DnsConfig(((dns.host, dns.port),) if dns else (("127.0.0.1", 9),), 0.5),
        reinject=ReinjectConfig(("/bin/false", "-f", "{sender}", "--", "{recipients}")),
        quarantine=QuarantineConfig(tmp / "shared" / "quarantine"),
        state=StateConfig(tmp / "local" / "state" if state is None else state),
    )


def test_collaborators_are_where_the_configuration_says(tmp_path: Path) -> None:
    """The spool and the delivery record are in the state directory, the record 0.1.0 kept in
    the quarantine is read as the earlier one; building them creates nothing on disk."""
    config = _config(tmp_path)
    log = Log()
    built = Services.from_config(config, logger=log)
    state, quarantine = config.state.directory, config.quarantine.directory
    assert built.spool.path == state / "spool"
    assert built.delivered.directory == state / "delivered"
    assert built.delivered.legacy == quarantine / "delivered"
    assert built.quarantine.directory == quarantine
    assert built.reinjector.command == config.reinject.command
    assert built.resolver.nameservers == (("127.0.0.1", 9),)
    assert built.logger is log
    assert list(tmp_path.iterdir()) == []


def test_one_directory_for_both_is_read_once(tmp_path: Path) -> None:
    """A state directory that is the quarantine directory has no earlier record to read."""
    config = _config(tmp_path, state=tmp_path / "shared" / "quarantine")
    assert services.delivery_record(config).legacy is None


class _Recorder:
    """A re-injector that notes each sender in a file (it runs in the re-injection process)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, sender: str, recipients: Sequence[str], data: Payload) -> None:
        with open(self.path, "a") as out:
            out.write(sender + "\n")

    @property
    def senders(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


class _Kept:
    """A quarantine store that keeps the envelopes it was given and numbers its entries."""

    def __init__(self) -> None:
        self.added: list[Envelope] = []

    def add(
        self,
        data: bytes | Spooled,
        envelope: Envelope,
        decision: Decision,
        authentication_results: str,
    ) -> str:
        self.added.append(envelope)
        return f"entry-{len(self.added)}"


def test_filter_stream_uses_the_collaborators_it_is_given(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """Every message goes to the re-injector and quarantine built once for the process (the
    configured command, /bin/false, is never run), and the resolver's cache serves them all."""
    dns_server.records.add_text(ZONE)
    config = _config(tmp_path, dns_server)
    recorder, kept = _Recorder(tmp_path / "reinjected"), _Kept()
    built = dataclasses.replace(
        Services.from_config(config, logger=Log()), reinjector=recorder, quarantine=kept
    )
    argv = ["-f", "alice@sender.example", "--client-address=192.0.2.5"]
    forged = ["-f", "ceo@reject.example", "--client-address=203.0.113.9"]
    outcomes, lookups = [], []
    for number, (envelope, data) in enumerate(
        [(argv, message()), (argv, message()), (forged, message("ceo@reject.example"))]
    ):
        filter_request = request.parse_filter(
            ["filter", *envelope, f"--queue-id=4Q{number}", "--", "bob@rcpt.example"], {}
        )
        outcomes.append(
            pipe.filter_stream(filter_request, io.BytesIO(data), config, services=built)
        )
        lookups.append(built.resolver.lookups)
    assert outcomes == [Done.delivered(), Done.delivered(), Done.quarantined("entry-1")]
    assert recorder.senders == ["alice@sender.example"] * 2
    assert [envelope.sender_text for envelope in kept.added] == ["ceo@reject.example"]
    # The second message from the same sender needed no new lookup; the forged one did.
    assert 0 < lookups[0] == lookups[1] < lookups[2]
    # Each delivery was claimed in the one delivery record, in the state directory.
    assert (config.state.directory / "delivered" / "pending").is_dir()
    assert not config.quarantine.directory.exists()
