"""Configuration: TOML parsed once into frozen, validated objects.

The file is read from ``--config``, else ``$SCATTERGUARD_CONFIG``, else
``/etc/scatterguard/scatterguard.toml``; a missing default file means the built-in defaults. Every
unknown key and every bad value is a :class:`ConfigError` that names the key.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from scatterguard import defaults, duration, trust
from scatterguard.errors import ConfigError

DEFAULT_PATH = Path(defaults.DEFAULT_CONFIG)
ENV_VAR = "SCATTERGUARD_CONFIG"
DEFAULT_REINJECT = ("/usr/sbin/sendmail", "-G", "-i", "-f", "{sender}", "--", "{recipients}")
# The quarantine backends there are (scatterguard.actions.quarantine.backends opens them).
QUARANTINE_BACKENDS = ("directory",)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class DnsConfig:
    """Where and how long to ask; ``nameservers`` empty means the system resolver."""

    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class DkimConfig:
    """Bounds on DKIM work, so that a hostile message cannot make it unbounded."""

    max_message_size: int = 16 * 1024 * 1024
    max_signatures: int = 5


@dataclass(frozen=True)
class ReinjectConfig:
    """The command that hands a delivered message back to the MTA (run without a shell)."""

    command: tuple[str, ...] = DEFAULT_REINJECT
    timeout: float = 120.0


@dataclass(frozen=True)
class QuarantineConfig:
    """Where quarantined messages are kept."""

    directory: Path = Path("/var/lib/scatterguard/quarantine")
    purge_after_days: int = 30
    # Last, so that QuarantineConfig(directory) still means what it did.
    backend: str = "directory"


@dataclass(frozen=True)
class StateConfig:
    """Where this host keeps its own state: the spool and the delivery record.

    Host-local by design (DESIGN.md §State): a quarantine may be shared by several MX hosts, but
    a message being filtered and the record of what this host re-injected belong to this host
    alone. :mod:`scatterguard.services` sets out what lies inside it.
    """

    directory: Path = Path("/var/lib/scatterguard")


@dataclass(frozen=True)
class LogConfig:
    """Where the one line per message goes: syslog (mail facility) or stderr.

    ``stderr`` is for ``serve`` and for commands run by hand; filter mode refuses it
    (:func:`for_filter`): there standard error belongs to the MTA.
    """

    target: str = "syslog"
    facility: str = "mail"
    socket: str = "/dev/log"


@dataclass(frozen=True)
class ServerConfig:
    """The resident server (``scatterguard serve``) and where ``filter`` finds it.

    When ``socket`` names an existing socket, ``filter`` hands each message to the server; when it
    is absent (or ``socket`` is empty), ``filter`` does the work in-process.
    """

    socket: str = defaults.DEFAULT_SOCKET
    # The user the server runs as: ``filter`` hands its stdin only to a server running as this
    # user, as root, or as its own user; the socket's directories must belong to one of them.
    user: str = defaults.DEFAULT_USER
    workers: int = 0  # 0: one per CPU
    # Users whose processes may hand messages over (SO_PEERCRED), besides root and the server's
    # own user (the one Postfix's and Exim's hooks run the filter as).
    allowed_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole configuration, immutable once loaded."""

    authserv_id: str = field(default_factory=lambda: socket.getfqdn())
    trusted_networks: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    defer_max_age: float = 4 * 3600.0
    timeout: float = defaults.DEFAULT_TIMEOUT
    dns: DnsConfig = DnsConfig()
    dkim: DkimConfig = DkimConfig()
    reinject: ReinjectConfig = ReinjectConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    state: StateConfig = StateConfig()
    log: LogConfig = LogConfig()
    server: ServerConfig = ServerConfig()
    source: str = "built-in defaults"


_T = TypeVar("_T")
_D = TypeVar("_D")
_SIZE = re.compile(r"\s*(\d+)\s*(|k|kb|kib|m|mb|mib|g|gb|gib)\s*\Z", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
# RFC 8601 §2.5: authserv-id is a value (token or quoted-string); we accept hostname-like tokens.
_AUTHSERV_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,253})\Z")
_FACILITIES = ("mail", "daemon", "user", *(f"local{i}" for i in range(8)))


def load(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Find, read and validate the configuration file."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(ENV_VAR):
        path = environ[ENV_VAR]
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {os.fspath(path)}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{os.fspath(path)}: not valid TOML: {exc}") from None
    return parse(data, source=os.fspath(path))


def load_log(path: str | os.PathLike[str] | None = None) -> LogConfig:
    """Only the ``[log]`` table, best effort: where to say why a broken configuration defers.

    Anything that cannot be read or is wrong gives the defaults (syslog on /dev/log).
    """
    try:
        path = path or os.environ.get(ENV_VAR) or DEFAULT_PATH
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        return _log(_Table(data.get("log", {}), "log.", os.fspath(path)))
    except (OSError, ValueError, TypeError, AttributeError, ConfigError):
        return LogConfig()


def parse(data: Mapping[str, Any], source: str = "<config>") -> Config:
    """Turn a parsed TOML document into a :class:`Config`, naming the key of every fault."""
    table = _Table(data, "", source)
    config = Config(
        authserv_id=table.get("authserv_id", _authserv_id, None) or socket.getfqdn(),
        trusted_networks=table.get("trusted_networks", _networks, Config.trusted_networks),
        defer_max_age=table.get("defer_max_age", _age, Config.defer_max_age),
        timeout=table.get("timeout", _positive(_duration), Config.timeout),
        dns=table.section("dns", _dns),
        dkim=table.section("dkim", _dkim),
        reinject=table.section("reinject", _reinject),
        quarantine=table.section("quarantine", _quarantine),
        state=table.section("state", _state),
        log=table.section("log", _log),
        server=table.section("server", _server),
        source=source,
    )
    table.finish()
    return config


class _Table:
    """One TOML table being read: remembers which keys were used, so the rest are errors."""

    def __init__(self, data: Any, prefix: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a table")
        self.data = data
        self.prefix = prefix
        self.source = source
        self.used: set[str] = set()

    def get(self, key: str, convert: Callable[[Any], _T], default: _D) -> _T | _D:
        self.used.add(key)
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.source}: {self.prefix}{key}: {exc}") from None

    def section(self, key: str, build: Callable[[_Table], _T]) -> _T:
        self.used.add(key)
        sub = _Table(self.data.get(key, {}), f"{self.prefix}{key}.", self.source)
        result = build(sub)
        sub.finish()
        return result

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{self.source}: unknown key {self.prefix}{unknown[0]}")


def _dns(table: _Table) -> DnsConfig:
    return DnsConfig(
        nameservers=table.get("nameservers", _nameservers, DnsConfig.nameservers),
        timeout=table.get("timeout", _positive(_number), DnsConfig.timeout),
    )


def _dkim(table: _Table) -> DkimConfig:
    return DkimConfig(
        max_message_size=table.get("max_message_size", _size, DkimConfig.max_message_size),
        max_signatures=table.get("max_signatures", _count, DkimConfig.max_signatures),
    )


def _reinject(table: _Table) -> ReinjectConfig:
    return ReinjectConfig(
        command=table.get("command", _command, DEFAULT_REINJECT),
        timeout=table.get("timeout", _positive(_duration), ReinjectConfig.timeout),
    )


def _quarantine(table: _Table) -> QuarantineConfig:
    return QuarantineConfig(
        directory=table.get("directory", _absolute_path, QuarantineConfig.directory),
        purge_after_days=table.get("purge_after_days", _count, QuarantineConfig.purge_after_days),
        backend=table.get("backend", _choice(*QUARANTINE_BACKENDS), QuarantineConfig.backend),
    )


def _state(table: _Table) -> StateConfig:
    return StateConfig(directory=table.get("directory", _absolute_path, StateConfig.directory))


def _log(table: _Table) -> LogConfig:
    return LogConfig(
        target=table.get("target", _choice("syslog", "stderr"), LogConfig.target),
        facility=table.get("facility", _choice(*_FACILITIES), LogConfig.facility),
        socket=table.get("socket", _string, LogConfig.socket),
    )


def _server(table: _Table) -> ServerConfig:
    user = table.get("user", _string, ServerConfig.user)
    return ServerConfig(
        socket=table.get("socket", _socket_path(user), ServerConfig.socket),
        user=user,
        workers=table.get("workers", _non_negative, ServerConfig.workers),
        allowed_users=table.get("allowed_users", _names, ServerConfig.allowed_users),
    )


def _socket_path(user: str) -> Callable[[Any], str]:
    """A socket path nobody but root, us and ``user`` could put another socket at."""

    def check(value: Any) -> str:
        text = _string(value)
        if text and not text.startswith("/"):
            raise ValueError(f'{text!r} must be an absolute path, or "" to disable the server')
        if len(text.encode()) > 107:
            raise ValueError("a UNIX socket path must be shorter than 108 bytes")
        # Whoever may write the socket's directory may listen there in the server's stead and
        # read every message handed over (the client checks the server's uid as well).
        reason = trust.unsafe_directory(text, trust.trusted_uids(user)) if text else None
        if reason is not None:
            raise ValueError(f"{text!r} is unsafe: {reason}")
        return text

    return check


def _non_negative(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError("expected a list of user names")
    return tuple(_string(item) for item in value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


def _positive(convert: Callable[[Any], float]) -> Callable[[Any], float]:
    """A timeout: above zero, finite and at most a day.

    Timers cannot hold more (settimeout and setitimer raise past ~292 years, NaN compares
    false); a timeout no timer keeps would defer every message until the MTA bounces it.
    """

    def check(value: Any) -> float:
        number = convert(value)
        if not 0 < number <= defaults.MAX_TIMEOUT:  # NaN fails this too
            raise ValueError(
                f"must be greater than zero and at most {defaults.MAX_TIMEOUT:g}s, got {value!r}"
            )
        return number

    return check


def _duration(value: Any) -> float:
    """Seconds as a number, or a string such as ``"30s"``, ``"5m"``, ``"4h"``, ``"2d"``."""
    return duration.parse(value)


def _age(value: Any) -> float:
    """A finite, non-negative duration: NaN or infinity would make an age never pass it, and a
    message with an open outcome would be deferred until the MTA bounces it."""
    seconds = _duration(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite duration of zero or more")
    return seconds


def _size(value: Any) -> int:
    """Bytes as an integer, or a string such as ``"16MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"must be positive, got {value!r}")
        return value
    match = _SIZE.match(_string(value))
    if match is None:
        raise ValueError(f'expected a size such as "16MiB", got {value!r}')
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)[:1].lower()]


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if _string(value) not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return check


def _authserv_id(value: Any) -> str:
    text = _string(value)
    if not _AUTHSERV_ID.match(text):
        raise ValueError(f"{text!r} is not a host name usable as an authserv-id")
    return text


def _networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise TypeError('expected a list of networks such as "192.0.2.0/24"')
    return tuple(ipaddress.ip_network(_string(item), strict=False) for item in value)


def _nameservers(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise TypeError('expected a list such as ["127.0.0.1", "[::1]:5353"]')
    return tuple(_nameserver(_string(item)) for item in value)


def _nameserver(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``v6addr`` or ``[v6addr]:port``; the host must be an IP address."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not host or host:port")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def for_filter(config: Config) -> Config:
    """``config`` when filter mode can keep its contract with it; else a ConfigError.

    In filter mode standard error belongs to the MTA: Postfix copies it into its logs and into
    bounces, and on exit 0 nothing may appear there, so ``log.target = "stderr"`` is refused
    (``serve`` and the commands run by hand may use it).
    """
    if config.log.target == "stderr":
        raise ConfigError(
            f'{config.source}: log.target: "stderr" cannot be used in filter mode, where'
            ' standard error belongs to the MTA; use "syslog"'
        )
    return config


def filter_log(log: LogConfig) -> LogConfig:
    """Where filter mode logs why it defers: syslog, even when ``log.target`` is refused."""
    return LogConfig("syslog", log.facility, log.socket) if log.target != "syslog" else log


# The placeholders of reinject.command; each is a whole argument, never part of one.
_PLACEHOLDERS = ("{sender}", "{recipients}")
_PLACEHOLDER = re.compile(r"\{[A-Za-z_]*\}\Z")
# The options of sendmail(1) and exim(8) whose value is the reverse-path.
_SENDER_OPTIONS = ("-f", "-r")


def _command(value: Any) -> tuple[str, ...]:
    """The re-injection argv: the reverse-path and the recipients must reach the MTA intact.

    ``{sender}`` exactly once, as a whole argument right after its option (``-f``, ``-r`` or a
    long option such as ``--sender``) and before ``--``; ``{recipients}`` exactly once, as a
    whole argument after ``--``. A placeholder glued to other text (``-f{sender}``), a second
    copy, or an unknown ``{name}`` is refused: each would drop or change the reverse-path or the
    recipients without a word.
    """
    if not isinstance(value, list) or not value:
        raise TypeError("expected a non-empty list of arguments")
    command = tuple(_string(item) for item in value)
    if not command[0].startswith("/"):
        raise ValueError(f"the program {command[0]!r} must be an absolute path")
    for arg in command:
        if arg in _PLACEHOLDERS:
            continue
        if any(placeholder in arg for placeholder in _PLACEHOLDERS):
            raise ValueError(f"{arg!r}: a placeholder must be a whole argument of its own")
        if _PLACEHOLDER.match(arg):
            raise ValueError(f'unknown placeholder {arg!r}: use "{{sender}}" and "{{recipients}}"')
    for placeholder in _PLACEHOLDERS:
        if command.count(placeholder) != 1:
            raise ValueError(f'must contain the argument "{placeholder}" exactly once')
    recipients = command.index("{recipients}")
    if "--" not in command[:recipients]:
        # Otherwise a recipient such as "-oi@example.org" would be read as an option.
        raise ValueError('"{recipients}" must come after a "--" argument')
    if command.index("--") != recipients - 1 or recipients != len(command) - 1:
        # After "--" every argument is a recipient: one before or after {recipients} (a stray
        # "-oi", an address) would get every released and delivered message too.
        raise ValueError('"{recipients}" must be the last argument, right after "--"')
    sender = command.index("{sender}")
    if sender > command.index("--"):
        raise ValueError('"{sender}" must come before "--" (after it, it is a recipient)')
    option = command[sender - 1] if sender >= 2 else ""
    if option not in _SENDER_OPTIONS and not (option.startswith("--") and len(option) > 2):
        # A bare "{sender}" is a recipient to sendmail and Exim; "-f" makes it the reverse-path.
        raise ValueError('"{sender}" must follow the option that takes it: "-f", "-r" or "--name"')
    for index, arg in enumerate(command[1 : command.index("--")], 1):
        if index == sender - 1:
            continue
        if arg[:2] in _SENDER_OPTIONS or arg[:2] == "-t":
            # sendmail(1) and exim(8) take the last -f/-r (a second one, alone or glued to its
            # value, replaces the reverse-path), and -t adds the recipients the message's own
            # To/Cc/Bcc name: both would send mail where the envelope does not say.
            raise ValueError(
                f'{arg!r}: only the option before "{{sender}}" may set the reverse-path, and'
                " -t (recipients from the message) is refused"
            )
    return command


def _absolute_path(value: Any) -> Path:
    path = Path(_string(value))
    if not path.is_absolute():
        raise ValueError(f"{value!r} must be an absolute path")
    return path
