"""The composition root: the collaborators a process filters with, built once from the config.

:meth:`Services.from_config` builds the resolver (whose cache then serves every message the
process filters), the re-injector, the quarantine store, the delivery record, the spool
directory, the logger and the clock. The in-process filter builds them once for its one message;
each of the resident server's workers builds them once for its whole life. Building them opens
no store: the quarantine, the delivery record and the spool each open (and create) their
directories only when a message needs them.

This module also knows where things live: the spool is the quarantine's ``tmp/`` and the
delivery record its ``delivered/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scatterguard import journal
from scatterguard.actions.delivery import DeliveryRecord
from scatterguard.actions.quarantine.directory import Store
from scatterguard.actions.reinject import CommandReinjector
from scatterguard.checks.resolver import Resolver
from scatterguard.config import Config
from scatterguard.journal import Logger

DELIVERED = "delivered"


@dataclass(frozen=True)
class Services:
    """Everything :func:`scatterguard.pipeline.filter_stream` needs besides the configuration."""

    resolver: Resolver
    reinjector: CommandReinjector
    quarantine: Store
    delivered: DeliveryRecord
    spool: Callable[[], Path]
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
        store = quarantine_store(config)
        return cls(
            resolver=Resolver(config.dns.nameservers, config.dns.timeout),
            reinjector=reinjector(config),
            quarantine=store,
            delivered=delivery_record(config, clock),
            # Large messages are spooled in the quarantine's tmp/ (scatterguard.actions.spool).
            spool=store.spool_directory,
            logger=journal.setup(config.log) if logger is None else logger,
            clock=clock,
        )


def reinjector(config: Config) -> CommandReinjector:
    """The configured re-injection command."""
    return CommandReinjector(config.reinject.command, config.reinject.timeout)


def quarantine_store(config: Config) -> Store:
    """The quarantine store (it opens its directory only when a message needs it)."""
    return Store(config.quarantine.directory)


def delivery_record(config: Config, clock: Callable[[], float] = time.time) -> DeliveryRecord:
    """The record of re-injected messages, in the quarantine directory."""
    return DeliveryRecord(config.quarantine.directory / DELIVERED, clock)
