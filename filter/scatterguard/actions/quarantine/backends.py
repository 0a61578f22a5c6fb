"""The quarantine store a configuration names: ``quarantine.backend``.

Each backend is one module of this package implementing
:class:`~scatterguard.actions.ports.QuarantineStore`, and one opener here that imports it only
when it is the configured one, so no process pays for a backend it does not use (a database
driver, say). A new backend is a module, an opener in :data:`OPENERS`, its name in
:data:`scatterguard.config.QUARANTINE_BACKENDS` (so a wrong name is a configuration error that
names the key) and a factory in the conformance test, ``tests/test_quarantine_store.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from scatterguard.errors import ConfigError

if TYPE_CHECKING:
    from scatterguard.actions.ports import QuarantineStore
    from scatterguard.config import Config


def _directory(config: Config) -> QuarantineStore:
    from scatterguard.actions.quarantine.directory import Store

    return Store(config.quarantine.directory)


OPENERS: dict[str, Callable[[Config], QuarantineStore]] = {
    "directory": _directory,
}


def open_store(config: Config) -> QuarantineStore:
    """The configured store; nothing touches the disk or the network until it is used."""
    name = config.quarantine.backend
    try:
        opener = OPENERS[name]
    except KeyError:
        # config.load refuses the name already; a Config built by hand may still carry it.
        raise ConfigError(f"quarantine.backend: unknown backend {name!r}") from None
    return opener(config)
