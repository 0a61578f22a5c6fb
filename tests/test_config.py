"""Configuration: TOML into frozen objects; every fault names its key."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from scatterguard import config
from scatterguard.errors import ConfigError


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing default file means the built-in defaults."""
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    loaded = config.load(None, environ={})
    assert loaded.source == "built-in defaults"
    assert loaded.defer_max_age == 4 * 3600
    assert loaded.reinject.command[0] == "/usr/sbin/sendmail"
    assert loaded.dkim.max_message_size == 16 * 1024 * 1024
    assert loaded.state.directory == Path("/var/lib/scatterguard")
    assert loaded.authserv_id


def test_full_example(tmp_path: Path) -> None:
    """The example of DESIGN.md §Configuration loads as written."""
    path = tmp_path / "sg.toml"
    path.write_text(
        """
authserv_id = "mx.example.net"
trusted_networks = ["127.0.0.0/8", "::1/128"]
defer_max_age = "4h"
timeout = "90s"
[dns]
nameservers = ["127.0.0.1:8053", "[::1]:53", "192.0.2.1"]
timeout = 5.0
[dkim]
max_message_size = "1MiB"
max_signatures = 3
[reinject]
command = ["/usr/sbin/sendmail", "-G", "-i", "-f", "{sender}", "--", "{recipients}"]
[quarantine]
backend = "directory"
directory = "/var/lib/scatterguard/quarantine"
[state]
directory = "/var/lib/scatterguard"
[log]
target = "stderr"
"""
    )
    loaded = config.load(path)
    assert loaded.state.directory == Path("/var/lib/scatterguard")
    assert loaded.authserv_id == "mx.example.net"
    assert loaded.trusted_networks[1] == ipaddress.ip_network("::1/128")
    assert loaded.timeout == 90
    assert loaded.dns.nameservers == (("127.0.0.1", 8053), ("::1", 53), ("192.0.2.1", 53))
    assert loaded.dkim.max_message_size == 1024 * 1024
    assert loaded.log.target == "stderr"
    assert loaded.quarantine.backend == "directory"
    with pytest.raises(AttributeError):
        loaded.timeout = 1  # type: ignore[misc]


def test_environment_variable_names_the_file(tmp_path: Path) -> None:
    """$SCATTERGUARD_CONFIG is used when --config is not given."""
    path = tmp_path / "env.toml"
    path.write_text('authserv_id = "env.example"\n')
    assert (
        config.load(None, environ={"SCATTERGUARD_CONFIG": str(path)}).authserv_id == "env.example"
    )


SENDMAIL = "/usr/sbin/sendmail"
# Re-injection commands that would drop or change the reverse-path or the recipients.
BAD_COMMANDS = {
    "no-sender": [SENDMAIL, "-G", "-i", "--", "{recipients}"],
    "sender-glued-to-f": [SENDMAIL, "-i", "-f{sender}", "--", "{recipients}"],
    "sender-in-brackets": [SENDMAIL, "-i", "-f", "<{sender}>", "--", "{recipients}"],
    "sender-twice": [SENDMAIL, "-f", "{sender}", "-r", "{sender}", "--", "{recipients}"],
    "sender-after-double-dash": [SENDMAIL, "-i", "--", "{sender}", "{recipients}"],
    "sender-without-option": [SENDMAIL, "-i", "{sender}", "--", "{recipients}"],
    "sender-is-the-program-argument": [SENDMAIL, "{sender}", "--", "{recipients}"],
    "recipients-glued": [SENDMAIL, "-f", "{sender}", "--", "x{recipients}"],
    "recipients-twice": [SENDMAIL, "-f", "{sender}", "--", "{recipients}", "{recipients}"],
    "unknown-placeholder": [SENDMAIL, "-f", "{sender}", "-q", "{queue_id}", "--", "{recipients}"],
    # Adversarial review (issue 12 item 11): the last -f/-r wins, -t adds the recipients the
    # message's own To/Cc/Bcc name, and anything after "--" besides {recipients} is a recipient.
    "second-sender-option": [SENDMAIL, "-f", "{sender}", "-f", "x@x.org", "--", "{recipients}"],
    "second-sender-glued": [SENDMAIL, "-f", "{sender}", "-rx@example.org", "--", "{recipients}"],
    "sender-option-before": [SENDMAIL, "-fx@example.org", "-f", "{sender}", "--", "{recipients}"],
    "recipients-from-headers": [SENDMAIL, "-t", "-f", "{sender}", "--", "{recipients}"],
    "argument-after-recipients": [SENDMAIL, "-f", "{sender}", "--", "{recipients}", "-oi"],
    "recipient-before-recipients": [SENDMAIL, "-f", "{sender}", "--", "x@y.org", "{recipients}"],
}
GOOD_COMMANDS = {
    "default": list(config.DEFAULT_REINJECT),
    "exim": [
        "/usr/sbin/exim4",
        "-oMr",
        "scatterguard",
        "-i",
        "-f",
        "{sender}",
        "--",
        "{recipients}",
    ],
    "r-option": [SENDMAIL, "-i", "-r", "{sender}", "--", "{recipients}"],
}


@pytest.mark.parametrize("command", GOOD_COMMANDS.values(), ids=GOOD_COMMANDS.keys())
def test_good_reinjection_commands(command: list[str]) -> None:
    """The packaged default, the hooks' Exim command and other sound forms are accepted."""
    loaded = config.parse({"reinject": {"command": command}})
    assert loaded.reinject.command == tuple(command)


def test_stderr_log_target_is_refused_in_filter_mode_only() -> None:
    """``log.target = "stderr"`` loads (serve, check), but filter mode refuses it by name."""
    loaded = config.parse({"log": {"target": "stderr"}}, source="sg.toml")
    assert loaded.log.target == "stderr"
    assert loaded.quarantine.backend == "directory"
    with pytest.raises(ConfigError, match=r"sg\.toml: log\.target: "):
        config.for_filter(loaded)
    assert config.for_filter(config.Config()) == config.Config()
    assert config.filter_log(loaded.log).target == "syslog"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        pytest.param("bogus = 1", "bogus", id="unknown-top"),
        pytest.param("[dns]\nport = 53", "dns.port", id="unknown-nested"),
        pytest.param("[nope]\nx = 1", "nope", id="unknown-table"),
        pytest.param('defer_max_age = "soon"', "defer_max_age", id="bad-duration"),
        pytest.param("timeout = 0", "timeout", id="zero-timeout"),
        pytest.param('trusted_networks = ["10.0.0.0/33"]', "trusted_networks", id="bad-network"),
        pytest.param('trusted_networks = "10.0.0.0/8"', "trusted_networks", id="not-a-list"),
        pytest.param('[dns]\nnameservers = ["dns.example"]', "dns.nameservers", id="ns-not-ip"),
        pytest.param('[dns]\nnameservers = ["127.0.0.1:99999"]', "dns.nameservers", id="ns-port"),
        pytest.param('[dns]\ntimeout = "fast"', "dns.timeout", id="dns-timeout-type"),
        pytest.param(
            '[reinject]\ncommand = ["sendmail", "{recipients}"]',
            "reinject.command",
            id="relative-command",
        ),
        pytest.param(
            '[reinject]\ncommand = ["/usr/sbin/sendmail"]', "reinject.command", id="no-recipients"
        ),
        pytest.param(
            '[reinject]\ncommand = ["/usr/sbin/sendmail", "-i", "{recipients}"]',
            "reinject.command",
            id="recipients-without-double-dash",
        ),
        *(
            pytest.param(
                f"[reinject]\ncommand = {json.dumps(command)}", "reinject.command", id=name
            )
            for name, command in BAD_COMMANDS.items()
        ),
        pytest.param(
            '[quarantine]\ndirectory = "relative"', "quarantine.directory", id="relative-dir"
        ),
        pytest.param(
            '[quarantine]\nbackend = "postgresql"', "quarantine.backend", id="unknown-backend"
        ),
        pytest.param('[state]\ndirectory = "state"', "state.directory", id="relative-state"),
        pytest.param("[state]\ndirectory = 1", "state.directory", id="state-not-a-string"),
        pytest.param('[state]\nspool = "/tmp"', "state.spool", id="unknown-state-key"),
        pytest.param('[log]\ntarget = "file"', "log.target", id="log-target"),
        pytest.param('authserv_id = "a b"', "authserv_id", id="authserv-id-space"),
        pytest.param("[dkim]\nmax_signatures = 0", "dkim.max_signatures", id="max-signatures"),
        pytest.param("dns = 1", "dns", id="table-expected"),
        pytest.param('[server]\nsocket = "run/sg.sock"', "server.socket", id="relative-socket"),
        pytest.param("[server]\nworkers = -1", "server.workers", id="negative-workers"),
        pytest.param(
            '[server]\nallowed_users = "postfix"', "server.allowed_users", id="users-list"
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    """Unknown keys and bad values are errors that name the key."""
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert key in str(caught.value)
    assert str(path) in str(caught.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """A named file that is missing or not TOML is an error, not the defaults."""
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    path = tmp_path / "broken.toml"
    path.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(path)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(-1, id="negative"),
    ],
)
def test_defer_max_age_must_be_a_real_age(value: float) -> None:
    """``defer_max_age = nan`` compares false with every age, so the filter would defer a message
    with an open outcome forever, until the MTA bounces it to a sender nobody verified; an
    infinite or negative age is no age either. Each is an error naming the key."""
    with pytest.raises(ConfigError, match="defer_max_age"):
        config.parse({"defer_max_age": value})
