"""The composition root: the collaborators a process filters with, built once from the config.

:meth:`Services.from_config` builds the resolver (whose cache then serves every message the
process filters), the re-injector, the quarantine store, the delivery record, the spool
directory, the logger and the clock. The in-process filter builds them once for its one message;
each of the resident server's workers builds them once for its whole life. Building them opens
no store: the quarantine, the delivery record and the spool each open (and create) their
directories only when a message needs them, so a message that is only delivered writes
nothing in the quarantine's (it only looks there, read-only, for the record 0.1.0 kept).

This module also knows where things live. The quarantine is ``quarantine.directory``, which may
be shared by several hosts. What belongs to this host alone is in ``state.directory``
(DESIGN.md §State)::

    <state.directory>/spool/       anonymous spool files of large messages in flight (no names)
    <state.directory>/delivered/   the delivery record: hourly marker directories and pending/
                                   (scatterguard.actions.delivery)

Version 0.1.0 kept both inside the quarantine directory (``tmp/`` and ``delivered/``); its
delivery record is still read there, never written (:class:`~scatterguard.actions.delivery.
DeliveryRecord`'s ``legacy``), so a retry after an upgrade of a message re-injected before it is
not re-injected again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scatterguard import journal
from scatterguard.actions.delivery import DeliveryRecord
from scatterguard.actions.ports import QuarantineStore
from scatterguard.actions.quarantine.backends import open_store
from scatterguard.actions.reinject import CommandReinjector
from scatterguard.actions.spool import SpoolDirectory
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config
from scatterguard.journal import Logger

# The names inside the state directory (and, for the record, where 0.1.0 kept it).
SPOOL = "spool"
DELIVERED = "delivered"


@dataclass(frozen=True)
class Services:
    """Everything :func:`scatterguard.frontends.pipe.filter_stream` needs besides the
    configuration."""

    resolver: Resolver
    reinjector: CommandReinjector
    quarantine: QuarantineStore
    delivered: DeliveryRecord
    spool: SpoolDirectory
    logger: Logger
    clock: Callable[[], float] = time.time

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        logger: Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Services:
        """Build every collaborator once; ``logger`` when the caller has set one up already."""
        return cls(
            resolver=Resolver(config.dns.nameservers, config.dns.timeout),
            reinjector=reinjector(config),
            quarantine=quarantine_store(config),
            delivered=delivery_record(config, clock),
            spool=SpoolDirectory(spool_directory(config)),
            logger=journal.setup(config.log) if logger is None else logger,
            clock=clock,
        )


def reinjector(config: Config) -> CommandReinjector:
    """The configured re-injection command."""
    return CommandReinjector(config.reinject.command, config.reinject.timeout)


def quarantine_store(config: Config) -> QuarantineStore:
    """The configured quarantine store (it opens nothing until a message needs it)."""
    return open_store(config)


def spool_directory(config: Config) -> Path:
    """Where large messages are spooled: host-local, in the state directory."""
    return config.state.directory / SPOOL


def delivery_record(config: Config, clock: Callable[[], float] = time.time) -> DeliveryRecord:
    """This host's delivery record, which also reads the one 0.1.0 kept in the quarantine."""
    return DeliveryRecord(
        config.state.directory / DELIVERED,
        clock,
        legacy=config.quarantine.directory / DELIVERED,
    )
