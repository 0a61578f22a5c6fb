"""The command line: filter, check, serve, quarantine; ``main()`` returns the exit code.

Only light parts of the standard library are imported at the top: in filter mode every failure,
even a failing import of a dependency, must become exit 75 with one status line, never a
traceback and exit 1 (Postfix bounces on any status but 0 and 75, and on a crash); and when a
server runs, the filter hands the message over before it imports anything else.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from scatterguard.errors import (
    EX_OK,
    EX_TEMPFAIL,
    TEMPFAIL_STATUS,
    ScatterguardError,
    UsageError,
)
from scatterguard.startup import skip_unused_optional_imports

# typing itself costs ~3 ms to import; mypy treats this name as True all the same.
TYPE_CHECKING = False

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, TextIO

EX_FAIL = 1
EX_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, as DESIGN.md §Contract describes it.

    Its top and ``filter`` come from :func:`scatterguard.frontends.request.command_line`, which
    the resident server parses a handed-over argv with.
    """
    from scatterguard.frontends import request

    parser, commands = request.command_line()
    check = commands.add_parser("check", help="decide and explain; acts on nothing")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    request.add_envelope_options(check)

    serve = commands.add_parser("serve", help="run the resident server that filter hands over to")
    serve.add_argument("--socket", metavar="PATH", help="default: server.socket")
    serve.add_argument("--workers", type=int, metavar="N", help="default: server.workers")

    quarantine = commands.add_parser("quarantine", help="list and manage quarantined messages")
    q_commands = quarantine.add_subparsers(
        dest="q_command", metavar="ACTION", parser_class=request.Parser
    )
    q_commands.required = True
    q_list = q_commands.add_parser("list", help="list the entries")
    q_list.add_argument("--json", action="store_true", help="print a JSON array")
    for name, text in (
        ("show", "print an entry's metadata and headers"),
        ("release", "re-inject an entry to its recipients and remove it"),
        ("delete", "remove an entry"),
    ):
        q_commands.add_parser(name, help=text).add_argument("id", metavar="ID")
    purge = q_commands.add_parser("purge", help="remove entries older than DAYS")
    purge.add_argument(
        "--older-than", type=float, metavar="DAYS", help="default: quarantine.purge_after_days"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    skip_unused_optional_imports()
    args_list = list(sys.argv[1:] if argv is None else argv)
    if _filter_mode(args_list):
        return _filter_main(args_list)
    try:
        args = build_parser().parse_args(args_list)
    except UsageError as exc:
        if _names_filter(args_list):
            # Perhaps the MTA's command line, mistyped: a usage error there is a deferral
            # (75, logged), never exit 2, which the MTA would bounce.
            return _filter_main(args_list)
        print(f"scatterguard: {exc}", file=sys.stderr)
        return EX_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EX_OK
    if args.command == "filter":  # an argv _filter_mode did not recognise: never a traceback
        return _filter_main(args_list)
    try:
        if args.command == "check":
            return _check_main(args, sys.stdin.buffer, sys.stdout)
        if args.command == "serve":
            return _serve_main(args)
        return _quarantine_main(args, sys.stdout)
    except ScatterguardError as exc:
        print(f"scatterguard: {exc}", file=sys.stderr)
        return EX_USAGE if isinstance(exc, UsageError) else EX_FAIL
    except KeyboardInterrupt:
        return 130


def _filter_mode(argv: Sequence[str]) -> bool:
    """True when the subcommand is ``filter`` (options before it take at most one value).

    This and :func:`_config_argument` are the only argv reading before the hand-over: they stay
    here, beside the fast path, so that a handed-over message costs no more imports than the
    few that path needs (:mod:`scatterguard.frontends.request` brings argparse and dataclasses).
    """
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--config":
            index += 2
            continue
        if arg.startswith("-"):
            index += 1
            continue
        return arg == "filter"
    return False


def _names_filter(argv: Sequence[str]) -> bool:
    """True when ``filter`` is one of the words before ``--``: an argv meant for filter mode."""
    words = argv[: argv.index("--")] if "--" in argv else argv
    return "filter" in words


def _filter_main(argv: Sequence[str]) -> int:
    """Filter mode: exit 0, 69 or 75, and nothing but one status line on 69/75."""

    def terminate(_signum: int, _frame: Any) -> None:
        raise SystemExit(EX_TEMPFAIL)

    _fill_standard_fds()
    signal.signal(signal.SIGTERM, terminate)
    # A library's warning would be printed on stderr, which Postfix copies into DSNs and logs:
    # on exit 0 nothing may appear there.
    import warnings

    warnings.simplefilter("ignore")
    state: dict[str, Any] = {"argv": argv}
    try:
        code, status = _filter(argv, state)
    except BaseException as exc:  # noqa: BLE001 - nothing may escape: 75 means "retry later"
        code, status = EX_TEMPFAIL, TEMPFAIL_STATUS
        _log_failure(state, exc)
    if code not in (0, 69, 75):
        code, status = EX_TEMPFAIL, TEMPFAIL_STATUS
    if code != 0:
        _status_line(status or TEMPFAIL_STATUS)
    return code


def _filter(argv: Sequence[str], state: dict[str, Any]) -> tuple[int, str | None]:
    reply = _hand_over(argv)
    if reply is not None:
        return reply
    import contextlib

    from scatterguard import config as config_mod
    from scatterguard.frontends import request

    config = None
    try:
        filter_request = request.parse_filter(argv, os.environ)
        config = config_mod.for_filter(config_mod.load(filter_request.config))
    except BaseException:
        # Log even a bad command line or configuration: to the configured syslog when the
        # configuration can still be read (or at least its [log] table), else with the defaults.
        path = _config_argument(argv)
        with contextlib.suppress(Exception):
            config = config_mod.load(path)
        state["config"] = config or config_mod.Config(log=config_mod.load_log(path))
        raise
    state["config"] = config
    from scatterguard import journal
    from scatterguard.frontends import pipe
    from scatterguard.frontends.deadline import deadline
    from scatterguard.services import Services

    logger = state["logger"] = journal.setup(config.log)
    with deadline(config.timeout):
        services = Services.from_config(config, logger=logger)
        done = pipe.filter_stream(filter_request, sys.stdin.buffer, config, services=services)
    outcome = pipe.answer(done)
    return outcome.code, outcome.status


def _fill_standard_fds() -> None:
    """Open /dev/null on fd 1 or 2 when the MTA (or a shell's ``>&-``) left it closed.

    Otherwise the next file opened (the syslog socket, a quarantine entry) would get that
    number, and the status line or a library's message would be written into it. fd 0 is left
    as it is: a closed stdin is a failure to read the message, never an empty message.
    """
    for fd in (1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_WRONLY)
            except OSError:
                continue
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _hand_over(argv: Sequence[str]) -> tuple[int, str | None] | None:
    """Give the message to a running ``scatterguard serve``; None when there is none.

    This runs first, with only the configuration file's ``timeout`` and ``server`` keys read:
    the server validates and uses its own configuration, and when there is no server (or the
    file cannot be read here, or ``server.socket`` lies where others could replace it) the full
    path below reports what is wrong. The stdin descriptor goes only to a server running as
    root, as our own user or as ``server.user``. The server acts only on our "go", which we
    send only before our own deadline (see :mod:`scatterguard.frontends.handover`); we wait for its
    answer a little longer, so a message the server is acting on is not retried in parallel.
    Whenever we give up without an outcome, stdin is drained to EOF before we exit 75, so the
    MTA's writer is never left blocked behind a descriptor the server may never read.
    """
    import tomllib

    from scatterguard import defaults, duration, trust
    from scatterguard.frontends import handover

    path = _config_argument(argv) or os.environ.get("SCATTERGUARD_CONFIG") or None
    try:
        with open(path or defaults.DEFAULT_CONFIG, "rb") as handle:
            data = tomllib.load(handle)
        server = data.get("server", {})
        socket_path = server.get("socket", defaults.DEFAULT_SOCKET)
        user = server.get("user", defaults.DEFAULT_USER)
        timeout = duration.parse(data.get("timeout", defaults.DEFAULT_TIMEOUT))
    except FileNotFoundError:
        if path is not None:
            return None
        socket_path, timeout = defaults.DEFAULT_SOCKET, defaults.DEFAULT_TIMEOUT
        user = defaults.DEFAULT_USER
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(socket_path, str) or not isinstance(user, str):
        return None
    if not 0 < timeout <= defaults.MAX_TIMEOUT:  # NaN too: the full path names the key
        return None
    go_by = time.monotonic() + timeout
    answer_by = go_by + min(10.0, 1.0 + timeout / 10)
    trusted = trust.trusted_uids(user)
    if not socket_path or trust.unsafe_directory(socket_path, trusted) is not None:
        return None
    sock = handover.connect(socket_path, timeout)
    if sock is None:
        return None
    stdin_fd = sys.stdin.fileno()
    failure: handover.HandoverError | None = None
    reply = handover.Reply(EX_TEMPFAIL, TEMPFAIL_STATUS)
    with sock:
        try:
            handover.check_server(sock, trusted)
            reply = handover.hand_over(sock, argv, os.environ, stdin_fd, go_by, answer_by)
        except handover.HandoverError as exc:
            failure = exc
    # The connection is closed: a server still holding our stdin can no longer act on it.
    if failure is not None or reply.code == EX_TEMPFAIL:
        handover.drain(stdin_fd, answer_by)
    if failure is not None:
        raise failure
    return reply.code, reply.status


def _config_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in an argv that argparse refused."""
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def _log_failure(state: dict[str, Any], exc: BaseException) -> None:
    """Log why the filter defers; importing the logging stack only now, on the failure path."""
    try:
        from scatterguard import journal, pipeline

        logger = state.get("logger")
        if logger is None:
            config = state.get("config")
            if config is None:
                from scatterguard import config as config_mod

                config = config_mod.load(_config_argument(state.get("argv", ())))
            # Never stderr here, whatever log.target says: it belongs to the MTA.
            from scatterguard.config import filter_log

            logger = journal.setup(filter_log(config.log))
        if logger is not None:
            logger.info(
                "message", action="defer", status=TEMPFAIL_STATUS, error=pipeline.describe(exc)
            )
    except Exception:  # noqa: BLE001, S110 - logging must never turn a deferral into a crash
        pass


def _status_line(status: str) -> None:
    """Write the one line the MTA reads; a closed stdout must not change the exit code.

    It goes to fd 1 directly: ``sys.stdout`` is None when fd 1 was closed at start, and a
    buffered line that a broken pipe refused would be flushed again, and fail again, at exit.
    """
    line = (status.replace("\n", " ").replace("\r", " ") + "\n").encode("utf-8", "replace")
    try:
        while line:
            line = line[os.write(1, line) :]
    except OSError:
        pass


def _check_main(args: argparse.Namespace, stdin: Any, out: TextIO) -> int:
    from scatterguard import config as config_mod
    from scatterguard import journal, pipeline
    from scatterguard.checks.resolver import Resolver
    from scatterguard.core import explain
    from scatterguard.core.message import Message
    from scatterguard.frontends import intake, request

    started = time.monotonic()
    config = config_mod.load(args.config)
    # check logs its one line to stderr (the explanation goes to stdout), never to syslog.
    logger = journal.setup(config.log, stderr=True)
    message = Message(intake.read_all(stdin))
    check_request = request.from_namespace(args, os.environ)
    if check_request.sender is None:
        # A saved message carries its reverse-path in Return-Path (RFC 5321 §4.4).
        paths = message.values("Return-Path")
        check_request = check_request.with_sender(paths[0].strip() if paths else "")
    envelope = check_request.envelope(require_recipients=False)
    resolver = Resolver(config.dns.nameservers, config.dns.timeout)
    evaluation = pipeline.evaluate(message, envelope, config, resolver, time.time())
    pipeline.log_line(logger, message, envelope, evaluation, None, started)
    document = explain.document(evaluation.report, evaluation.decision, evaluation.rendered)
    if args.json:
        import json

        json.dump(document, out, indent=2)
        out.write("\n")
    else:
        out.write(explain.text(document))
    return EX_OK


def _serve_main(args: argparse.Namespace) -> int:
    import dataclasses

    from scatterguard import config as config_mod
    from scatterguard.frontends import server

    config = config_mod.load(args.config)
    overrides: dict[str, Any] = {}
    if args.socket is not None:
        overrides["socket"] = args.socket
    if args.workers is not None:
        overrides["workers"] = args.workers
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    return server.serve(config)


def _quarantine_main(args: argparse.Namespace, out: TextIO) -> int:
    from scatterguard.frontends import admin

    return admin.main(
        args.config,
        args.q_command,
        entry_id=getattr(args, "id", None),
        as_json=getattr(args, "json", False),
        older_than=getattr(args, "older_than", None),
        out=out,
        err=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
