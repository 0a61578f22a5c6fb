"""The MTA hook files and the command line cannot drift apart.

The argv of the Postfix pipe service in ``hooks/postfix/master.cf`` (with its macros replaced as
pipe(8) would replace them) and the command and environment of the Exim transport in
``hooks/exim4/`` are fed to scatterguard's real request parser (the one the in-process filter and
the resident server both read a filter's argv and environment with) and envelope builder. The other
values the hooks must agree on (service and transport names, the re-injection marker, time
limits above the filter's own deadline, exit statuses) are checked here too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scatterguard.config import Config
from scatterguard.defaults import ENV_PREFIX
from scatterguard.frontends import request

HOOKS = Path(__file__).resolve().parent.parent / "hooks"
POSTFIX_MASTER = HOOKS / "postfix" / "master.cf"
POSTFIX_MAIN = HOOKS / "postfix" / "main.cf"
EXIM_CONF_D = HOOKS / "exim4" / "conf.d"
EXIM_MAIN = EXIM_CONF_D / "main" / "000_scatterguard"
EXIM_ROUTER = EXIM_CONF_D / "router" / "050_scatterguard"
EXIM_TRANSPORT = EXIM_CONF_D / "transport" / "30_scatterguard"

# pipe(8) macros that expand to one argument per recipient.
PER_RECIPIENT = ("${recipient}", "${original_recipient}", "${user}", "${extension}", "${mailbox}")


def master_cf_entries(text: str) -> dict[str, list[str]]:
    """master.cf entries by ``service/type``: the fields of the first line plus continuations."""
    entries: dict[str, list[str]] = {}
    key = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t":
            assert key is not None, f"continuation line without an entry: {line!r}"
            entries[key].extend(line.split())
        else:
            fields = line.split()
            key = f"{fields[0]}/{fields[1]}"
            entries[key] = fields
    return entries


def main_cf(text: str) -> dict[str, str]:
    """main.cf parameters (``name = value``), comments and blank lines skipped."""
    params = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            params[name.strip()] = value.strip()
    return params


def pipe_argv(entry: list[str]) -> list[str]:
    """The ``argv=`` of a pipe(8) entry: everything after it, split on white space."""
    attributes = entry[8:]
    start = next(i for i, item in enumerate(attributes) if item.startswith("argv="))
    return [attributes[start][len("argv=") :], *attributes[start + 1 :]]


def pipe_attributes(entry: list[str]) -> dict[str, str]:
    """The ``name=value`` command attributes before ``argv=``."""
    attributes = {}
    for item in entry[8:]:
        if item.startswith("argv="):
            break
        name, _, value = item.partition("=")
        attributes[name] = value
    return attributes


def expand_pipe(argv: list[str], macros: dict[str, str], recipients: list[str]) -> list[str]:
    """Expand macros the way pipe(8) does: no re-splitting, one argument per recipient."""
    expanded: list[str] = []
    for arg in argv:
        if any(name in arg for name in PER_RECIPIENT):
            expanded.extend(arg.replace("${recipient}", rcpt) for rcpt in recipients)
            continue
        for name, value in macros.items():
            arg = arg.replace("${" + name + "}", value)
        assert "${" not in arg, f"macro left unexpanded in {arg!r}"
        expanded.append(arg)
    return expanded


def exim_options(text: str, driver_name: str) -> dict[str, str]:
    """The options of one Exim driver block, with backslash-newline continuations joined."""
    joined = re.sub(r"\\\n\s*", "", text)
    options: dict[str, str] = {}
    inside = False
    for line in joined.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            inside = line.strip() == f"{driver_name}:"
            continue
        if inside:
            name, sep, value = line.strip().partition("=")
            options[name.strip()] = value.strip() if sep else "true"
    assert options, f"no driver {driver_name!r} found"
    return options


def exim_macros(text: str) -> dict[str, str]:
    """Macro definitions (``NAME = value``) of an Exim configuration file."""
    return {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^([A-Z][A-Z0-9_]*)\s*=(.*)$", text, re.MULTILINE)
    }


POSTFIX = master_cf_entries(POSTFIX_MASTER.read_text())
SERVICE = POSTFIX["scatterguard/unix"]
TRANSPORT = exim_options(EXIM_TRANSPORT.read_text(), "scatterguard")
ROUTER = exim_options(EXIM_ROUTER.read_text(), "scatterguard")


@pytest.mark.parametrize(
    ("macros", "recipients", "expected"),
    [
        pytest.param(
            {
                "sender": "news@sender.example",
                "client_address": "192.0.2.10",
                "client_helo": "mail.sender.example",
                "queue_id": "4ZxQ1K3bRkz9vB",
                "sasl_username": "",
            },
            ["alice@example.net"],
            ("news@sender.example", "192.0.2.10", "mail.sender.example", "4ZxQ1K3bRkz9vB", None),
            id="plain-smtp",
        ),
        pytest.param(
            {
                "sender": "",
                "client_address": "2001:db8::25",
                "client_helo": "[IPv6:2001:db8::25]",
                "queue_id": "3C1D7166908",
                "sasl_username": "",
            },
            ["postmaster@example.net"],
            ("", "2001:db8::25", "[IPv6:2001:db8::25]", "3C1D7166908", None),
            id="null-sender-ipv6",
        ),
        pytest.param(
            {
                "sender": "-f@sender.example",
                "client_address": "198.51.100.7",
                "client_helo": "",
                "queue_id": "ABCDEF123",
                "sasl_username": "carol",
            },
            ["bob@example.net", "carol@example.net"],
            ("-f@sender.example", "198.51.100.7", None, "ABCDEF123", "carol"),
            id="dash-sender-no-helo-sasl",
        ),
        pytest.param(
            {
                "sender": '"john doe"@sender.example',
                "client_address": "192.0.2.11",
                "client_helo": "mail.sender.example",
                "queue_id": "4Zx",
                "sasl_username": "",
            },
            ["alice@example.net"],
            ('"john doe"@sender.example', "192.0.2.11", "mail.sender.example", "4Zx", None),
            id="quoted-local-part",
            # flags=q quotes such a local part (RFC 5321 §4.1.2 Quoted-string); the envelope
            # parser must take it, or the message is deferred until Postfix gives up on it.
        ),
    ],
)
def test_postfix_argv_parses_into_the_envelope(
    macros: dict[str, str], recipients: list[str], expected: tuple[str | None, ...]
) -> None:
    """The master.cf argv, expanded as pipe(8) does, gives the CLI the envelope Postfix meant."""
    argv = expand_pipe(pipe_argv(SERVICE), macros, recipients)
    assert argv[0] == "/usr/bin/scatterguard"
    parsed = request.parse_filter(argv[1:], {})
    assert not parsed.bsmtp
    assert list(parsed.recipients) == recipients
    built = parsed.envelope()
    sender, client, helo, queue_id, sasl = expected
    assert parsed.sender == sender
    assert str(built.client_address) == client
    assert built.helo == helo
    assert built.queue_id == queue_id
    assert built.sasl_user == sasl
    assert list(built.recipients) == recipients


def test_postfix_argv_uses_every_envelope_option() -> None:
    """Every envelope option of the CLI is passed, each in --option=${macro} form."""
    argv = pipe_argv(SERVICE)
    options = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--") and "=" in arg}
    assert options == {"--sender", "--client-address", "--helo", "--queue-id", "--sasl-user"}
    assert argv[-2:] == ["--", "${recipient}"]


def test_postfix_pipe_attributes() -> None:
    """flags=Rq, an unprivileged user and an empty null_sender, as DESIGN.md §Integration says."""
    attributes = pipe_attributes(SERVICE)
    assert SERVICE[:8] == ["scatterguard", "unix", "-", "n", "n", "-", "2", "pipe"]
    assert attributes["flags"] == "Rq"
    assert attributes["user"] == "scatterguard"
    assert attributes["null_sender"] == ""


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        pytest.param("smtp/inet", True, id="smtp-filtered"),
        pytest.param("pickup/unix", False, id="pickup-not-filtered"),
        pytest.param("submission/inet", False, id="submission-left-commented"),
    ],
)
def test_postfix_content_filter_only_on_smtp(service: str, expected: bool) -> None:
    """Only smtp names the scatterguard transport, so re-injected mail is not filtered again."""
    entry = POSTFIX.get(service, [])
    assert ("content_filter=scatterguard:dummy" in entry) is expected


def test_postfix_time_limit_above_filter_deadline() -> None:
    """Postfix must not kill (and bounce) the filter before its own deadline defers cleanly."""
    params = main_cf(POSTFIX_MAIN.read_text())
    limit = params["scatterguard_time_limit"]
    assert limit.endswith("s")
    assert int(limit[:-1]) > Config().timeout
    assert int(params["scatterguard_destination_recipient_limit"]) > 1


def test_exim_command_parses_as_bsmtp_filter() -> None:
    """The Exim transport's command is a valid filter invocation, untainted (no expansions)."""
    command = TRANSPORT["command"]
    assert "$" not in command
    argv = command.split()
    assert argv[0] == "/usr/bin/scatterguard"
    parsed = request.parse_filter(argv[1:], {})
    assert parsed.bsmtp
    assert parsed.recipients == ()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        pytest.param(
            {
                "$sender_host_address": "192.0.2.10",
                "$sender_helo_name": "mail.sender.example",
                "$message_exim_id": "1xWpOb-000489-2L",
                "$authenticated_id": "",
            },
            ("192.0.2.10", "mail.sender.example", "1xWpOb-000489-2L", None),
            id="plain-smtp",
        ),
        pytest.param(
            {
                "$sender_host_address": "2001:db8::25",
                "$sender_helo_name": "[IPv6:2001:db8::25]",
                "$message_exim_id": "1xWpOb-000489-2L",
                "$authenticated_id": "dave;admin",
            },
            ("2001:db8::25", "[IPv6:2001:db8::25]", "1xWpOb-000489-2L", "dave;admin"),
            id="ipv6-and-semicolon",
        ),
    ],
)
def test_exim_environment_reaches_the_envelope(
    variables: dict[str, str], expected: tuple[str | None, ...]
) -> None:
    """The transport's environment list, expanded and split as Exim does, fills the envelope."""
    environ = exim_environment(TRANSPORT["environment"], variables)
    assert set(environ) == {ENV_PREFIX + name.upper() for name in request.ENV_FIELDS}
    parsed = request.parse_filter(TRANSPORT["command"].split()[1:], environ)
    built = parsed.from_bsmtp("news@sender.example", ["a@example.net"]).envelope()
    client, helo, queue_id, sasl = expected
    assert str(built.client_address) == client
    assert built.helo == helo
    assert built.queue_id == queue_id
    assert built.sasl_user == sasl


def exim_environment(setting: str, variables: dict[str, str]) -> dict[str, str]:
    """Expand the few expansion items the hook uses, then split the list as Exim does."""
    separator = ":"
    if setting.startswith("<"):
        separator, setting = setting[1], setting[2:]

    def sg(match: re.Match[str]) -> str:
        value = variables[match.group(1)]
        return value.replace(match.group(2), match.group(3))

    text = re.sub(r"\$\{sg\{(\$\w+)\}\{(.)\}\{(.+?)\}\}", sg, setting)
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace(name, variables[name])
    assert "$" not in text, f"unexpanded item in {text!r}"
    # Exim list syntax: a doubled separator stands for one literal separator character.
    items = re.split(
        rf"(?<!{re.escape(separator)}){re.escape(separator)}(?!{re.escape(separator)})", text
    )
    environ = {}
    for item in items:
        name, _, value = item.strip().replace(separator * 2, separator).partition("=")
        environ[name] = value
    return environ


def test_exim_transport_statuses() -> None:
    """75 defers, 69 bounces with the filter's output, timeouts defer, batches carry all rcpts."""
    temp = {int(code) for code in TRANSPORT["temp_errors"].split(":")}
    assert 75 in temp
    assert 69 not in temp
    assert TRANSPORT["use_bsmtp"] == "true"
    assert TRANSPORT["return_fail_output"] == "true"
    assert TRANSPORT["timeout_defer"] == "true"
    assert int(TRANSPORT["batch_max"]) > 1
    assert TRANSPORT["user"] == "scatterguard"
    timeout = TRANSPORT["timeout"]
    assert timeout.endswith("s")
    assert int(timeout[:-1]) > Config().timeout
    # $local_part or $domain in any option would stop Exim from batching recipients.
    assert not any("$local_part" in v or "$domain" in v for v in TRANSPORT.values())


def test_exim_router_skips_reinjected_mail() -> None:
    """The router sends SMTP mail to our transport, skips our marker, and stays out of verify."""
    macros = exim_macros(EXIM_MAIN.read_text())
    assert macros["SCATTERGUARD_PROTOCOL"] == "scatterguard"
    assert "scatterguard" in macros["MAIN_TRUSTED_GROUPS"].split(":")
    assert ROUTER["transport"] == "scatterguard"
    assert "SCATTERGUARD_PROTOCOL" in ROUTER["condition"]
    assert "$received_protocol" in ROUTER["condition"]
    assert "def:sender_host_address" in ROUTER["condition"]
    assert ROUTER["no_verify"] == "true"
    # Debian's routers start at 100_exim4-config_domain_literal: ours must sort first.
    assert EXIM_ROUTER.name < "100_exim4-config_domain_literal"
    assert EXIM_MAIN.name < "01_exim4-config_listmacrosdefs"


def test_readme_reinject_command_matches_the_marker() -> None:
    """The Exim re-injection command in hooks/README.md uses the marker the router skips."""
    readme = (HOOKS / "README.md").read_text()
    match = re.search(r'command = \["/usr/sbin/exim4", "-oMr", "(\w+)"', readme)
    assert match is not None
    assert match.group(1) == exim_macros(EXIM_MAIN.read_text())["SCATTERGUARD_PROTOCOL"]
