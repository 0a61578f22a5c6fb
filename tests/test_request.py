"""One filter request from argv and SCATTERGUARD_* variables, read alike by CLI and server."""

from __future__ import annotations

import ast
import dataclasses
import io
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scatterguard import journal, pipeline
from scatterguard.config import Config
from scatterguard.errors import TEMPFAIL_STATUS, ScatterguardError, UsageError
from scatterguard.frontends import cli, handover, pipe, request, server
from scatterguard.frontends.request import FilterRequest, parse_filter
from scatterguard.services import Services

PACKAGE = Path(__file__).resolve().parents[1] / "filter" / "scatterguard"


def test_options_win_over_environment() -> None:
    """Options win over SCATTERGUARD_* variables; the environment fills what is missing."""
    env = {
        "SCATTERGUARD_CLIENT_ADDRESS": "192.0.2.9",
        "SCATTERGUARD_HELO": "env.example",
        "SCATTERGUARD_QUEUE_ID": "1abc-00",
        "SCATTERGUARD_SASL_USER": "",
    }
    options = {"client_address": "198.51.100.1", "helo": None}
    built = FilterRequest.from_options("a@x.example", ["b@y.example"], options, env)
    envelope = built.envelope()
    assert envelope.client_address == ipaddress.ip_address("198.51.100.1")
    assert envelope.helo == "env.example"
    assert envelope.queue_id == "1abc-00"
    assert envelope.sasl_user is None


def test_empty_option_is_empty_not_environment() -> None:
    """Postfix passes --helo= for a client without HELO; that empty value wins."""
    env = {"SCATTERGUARD_HELO": "env.example"}
    built = FilterRequest.from_options("", ["b@y.example"], {"helo": ""}, env)
    assert built.helo is None
    envelope = built.envelope()
    assert envelope.helo is None
    assert envelope.sender is None


@pytest.mark.parametrize(
    ("argv", "sender"),
    [
        pytest.param(["--sender=", "--", "b@y.example"], "", id="sender-equals-empty"),
        pytest.param(["-f", "", "b@y.example"], "", id="f-empty"),
        pytest.param(["-f", "<>", "b@y.example"], "<>", id="f-brackets"),
        pytest.param(["--sender=a@x.example", "b@y.example"], "a@x.example", id="sender-equals"),
    ],
)
def test_null_and_plain_senders_from_argv(argv: list[str], sender: str) -> None:
    """Every way an MTA passes the reverse-path reads as it did: "" and <> are null."""
    built = parse_filter(["filter", *argv], {})
    assert built.sender == sender
    assert built.recipients == ("b@y.example",)
    assert (built.envelope().sender is None) is (sender in ("", "<>"))


def test_sender_and_recipients_are_required_in_filter_mode_only() -> None:
    """filter needs -f and a recipient; check may go without recipients."""
    with pytest.raises(UsageError, match="no sender"):
        parse_filter(["filter", "b@y.example"], {}).envelope()
    with pytest.raises(UsageError, match="no recipients"):
        parse_filter(["filter", "-f", "a@x.example"], {}).envelope()
    assert (
        parse_filter(["filter", "-f", ""], {}).envelope(require_recipients=False).recipients == ()
    )


def test_bsmtp_envelope_replaces_the_sender_and_comes_first() -> None:
    """With --bsmtp the stream's reverse-path wins; its recipients precede any in argv."""
    env = {"SCATTERGUARD_CLIENT_ADDRESS": "192.0.2.10", "SCATTERGUARD_QUEUE_ID": "1xW-0-2L"}
    built = parse_filter(["filter", "--bsmtp", "-f", "ignored@x.example", "extra@y.example"], env)
    assert built.bsmtp
    envelope = built.from_bsmtp("news@sender.example", ["a@y.example", "b@y.example"]).envelope()
    assert envelope.sender_text == "news@sender.example"
    assert envelope.recipients == ("a@y.example", "b@y.example", "extra@y.example")
    assert envelope.client_address == ipaddress.ip_address("192.0.2.10")
    assert envelope.queue_id == "1xW-0-2L"


def test_bad_values_are_refused_when_the_envelope_is_built() -> None:
    """A hostile value is kept as text until the envelope is built, then refused by name."""
    built = parse_filter(["filter", "-f", "", "--queue-id=../x", "b@y.example"], {})
    assert built.queue_id == "../x"
    with pytest.raises(UsageError, match="queue id"):
        built.envelope()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["filter", "--help"], id="help"),
        pytest.param(["--version", "filter"], id="version"),
        pytest.param(["filter", "--no-such-option"], id="bad-option"),
        pytest.param(["filter", "-f"], id="missing-value"),
        pytest.param(["check", "-f", "", "b@y.example"], id="not-filter"),
        pytest.param([], id="no-command"),
    ],
)
def test_what_is_no_filter_request_is_a_usage_error_and_prints_nothing(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--help, --version, a bad option or another subcommand: UsageError, never SystemExit or
    output (filter mode's stdout is the MTA's, and a server worker must survive)."""
    with pytest.raises(UsageError):
        parse_filter(argv, {})
    assert capsys.readouterr() == ("", "")


def test_config_argument_is_part_of_the_request() -> None:
    """--config, in either form, travels with the request."""
    assert parse_filter(["--config", "/x.toml", "filter"], {}).config == "/x.toml"
    assert parse_filter(["--config=/y.toml", "filter"], {}).config == "/y.toml"
    assert parse_filter(["filter"], {"SCATTERGUARD_CONFIG": "/z.toml"}).config is None


def test_cli_and_request_parsers_agree_on_filter() -> None:
    """The CLI's full parser reads a filter argv into the same request as request.parse_filter."""
    argv = ["--config", "/x.toml", "filter", "-f", "a@x.example", "--helo=", "--", "-b@y.example"]
    env = {"SCATTERGUARD_HELO": "env.example", "SCATTERGUARD_SASL_USER": "dave"}
    assert request.from_namespace(cli.build_parser().parse_args(argv), env) == parse_filter(
        argv, env
    )


# The same argv and environment, read by the in-process filter and by a server worker.
CASES = [
    pytest.param(
        [
            "filter",
            "--sender=",
            "--client-address=192.0.2.7",
            "--helo=",
            "--queue-id",
            "4Zx",
            "--",
            "b@y.example",
            "-c@y.example",
        ],
        FilterRequest(
            sender="",
            recipients=("b@y.example", "-c@y.example"),
            client_address="192.0.2.7",
            helo=None,
            queue_id="4Zx",
            sasl_user="dave;admin",
        ),
        id="postfix",
    ),
    pytest.param(
        ["filter", "--bsmtp"],
        FilterRequest(
            sender=None,
            client_address="2001:db8::25",
            helo="env.example",
            queue_id="ENVQ",
            sasl_user="dave;admin",
            bsmtp=True,
        ),
        id="exim-bsmtp",
    ),
]
ENVIRONMENT = {
    "SCATTERGUARD_CLIENT_ADDRESS": "2001:db8::25",
    "SCATTERGUARD_HELO": "env.example",
    "SCATTERGUARD_QUEUE_ID": "ENVQ",
    "SCATTERGUARD_SASL_USER": "dave;admin",
    "UNRELATED": "x",
}


class _Quiet:
    """A logger that keeps the last line."""

    def info(self, event: str, **values: object) -> None:
        self.last = (event, values)

    error = info


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[FilterRequest]:
    """pipe.filter_stream replaced by a recorder that defers, and no logging."""
    seen: list[FilterRequest] = []

    def record(filter_request: FilterRequest, *_args: Any, **_kwargs: Any) -> pipeline.Done:
        seen.append(filter_request)
        return pipeline.Done.deferred(TEMPFAIL_STATUS)

    monkeypatch.setattr(pipe, "filter_stream", record)
    monkeypatch.setattr(journal, "setup", lambda *_args, **_kwargs: _Quiet())
    return seen


def _through_cli(argv: list[str], config: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """cli.main in filter mode, with ENVIRONMENT as its environment and no server to find."""
    for name in list(os.environ):
        if name.startswith("SCATTERGUARD_"):
            monkeypatch.delenv(name)
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SCATTERGUARD_CONFIG", "/nonexistent/ignored-for-config-option.toml")
    # main() marks optional modules absent and traps SIGTERM: not in the test process.
    monkeypatch.setattr(cli, "skip_unused_optional_imports", lambda: None)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return cli.main(["--config", str(config), *argv])
    finally:
        signal.signal(signal.SIGTERM, previous)


def _through_server(argv: list[str], config: Path) -> handover.Reply:
    """The same argv and environment handed over on the real wire to server.handle."""
    environ = {**ENVIRONMENT, "SCATTERGUARD_CONFIG": "/nonexistent/never-sent.toml"}
    ours, theirs = socket.socketpair()
    reader, writer = os.pipe()
    os.close(writer)
    replies: list[handover.Reply] = []
    now = time.monotonic()
    client = threading.Thread(
        target=lambda: replies.append(
            handover.hand_over(
                theirs, ["--config", str(config), *argv], environ, reader, now + 10, now + 20
            )
        )
    )
    client.start()
    try:
        with ours:
            services = Services.from_config(Config(), logger=_Quiet())
            server.handle(ours, Config(), frozenset({os.geteuid()}), services)
        client.join(20)
    finally:
        theirs.close()
        os.close(reader)
    assert replies, "the client got no answer"
    return replies[0]


@pytest.mark.parametrize(("argv", "expected"), CASES)
def test_cli_and_server_read_the_same_request(
    argv: list[str],
    expected: FilterRequest,
    recorded: list[FilterRequest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One argv and environment give the same request in process and after the hand-over."""
    config = tmp_path / "scatterguard.toml"
    config.write_text(f'[server]\nsocket = "{tmp_path}/absent.sock"\n')
    assert _through_cli(argv, config, monkeypatch) == 75
    reply = _through_server(argv, config)
    assert (reply.code, reply.status) == (75, TEMPFAIL_STATUS)
    in_process, handed_over = recorded
    assert in_process == handed_over == dataclasses.replace(expected, config=str(config))


def test_check_builds_its_envelope_through_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check reads its envelope as filter does (options over SCATTERGUARD_*), with the
    message's Return-Path when there is no -f, and needs no recipient."""
    seen = []

    class Enough(ScatterguardError):
        """Stops check once the envelope is known."""

    def evaluate(_message: object, envelope: object, *_args: object) -> None:
        seen.append(envelope)
        raise Enough("seen")

    config = tmp_path / "scatterguard.toml"
    config.write_text("")
    monkeypatch.setattr(pipeline, "evaluate", evaluate)
    monkeypatch.setattr(journal, "setup", lambda *_args, **_kwargs: _Quiet())
    monkeypatch.setattr(cli, "skip_unused_optional_imports", lambda: None)
    monkeypatch.setenv("SCATTERGUARD_CLIENT_ADDRESS", "192.0.2.9")
    monkeypatch.setenv("SCATTERGUARD_HELO", "env.example")
    message = b"Return-Path: <rp@x.example>\r\nFrom: a@x.example\r\n\r\nbody\r\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(message)))
    assert cli.main(["--config", str(config), "check", "--helo="]) == 1
    (envelope,) = seen
    assert envelope.sender_text == "rp@x.example"
    assert envelope.client_address == ipaddress.ip_address("192.0.2.9")
    assert envelope.helo is None
    assert envelope.recipients == ()


def _imports(path: Path) -> set[str]:
    """Every module a file imports, deferred imports included, as dotted names.

    ``from a.b import c`` counts as both ``a.b`` and ``a.b.c`` (``c`` may be a module).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_server_does_not_import_the_cli() -> None:
    """The server reads handed-over argv with frontends/request.py: no cli ↔ server cycle."""
    imported = _imports(PACKAGE / "frontends" / "server.py")
    assert "scatterguard.frontends.cli" not in imported
    assert "scatterguard.frontends.request" in imported


BELOW_THE_FRONT_ENDS = sorted(
    path
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] in ("core", "checks", "actions", "pipeline.py")
)


@pytest.mark.parametrize("path", BELOW_THE_FRONT_ENDS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_argparse_stays_in_the_front_ends(path: Path) -> None:
    """Nothing below the front ends imports argparse or reads a Namespace with vars()."""
    tree = ast.parse(path.read_text(), str(path))
    assert "argparse" not in _imports(path)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "vars"
    ]
    assert calls == []
