"""One filter request: the envelope values an MTA hands over, read from argv and the environment.

``filter`` and ``check`` take the envelope as options (DESIGN.md §Command line), and each of
``--client-address --helo --queue-id --sasl-user`` may instead come from a ``SCATTERGUARD_*``
variable: Exim ≥ 4.96 refuses tainted values in pipe arguments, so its transport passes them
there. The option wins, even when it is empty (Postfix passes ``--helo=`` when the client gave
none). With ``--bsmtp`` (Exim's ``use_bsmtp``) the sender and the recipients come from the batch
SMTP stream instead, once the front end has read it (:meth:`FilterRequest.from_bsmtp`).

The in-process filter and the resident server both build their :class:`FilterRequest` here, from
the same argv and environment (the server from the hand-over frame, whose wire format is
:mod:`scatterguard.frontends.handover`'s), so both read a request the same way. Nothing below the
front ends sees argparse: the pipeline gets this request, and the core an
:class:`~scatterguard.core.envelope.Envelope`.

This module is not on the hand-over fast path: it imports argparse and dataclasses, and the
filter client reads the little it needs of its argv before the hand-over
(:func:`scatterguard.frontends.cli.main`), without it. It is used once the hand-over did not
happen, and in the server.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from scatterguard import __version__
from scatterguard.core.envelope import Envelope, parse_envelope
from scatterguard.defaults import ENV_PREFIX
from scatterguard.errors import UsageError

# The envelope options that fall back to SCATTERGUARD_<NAME> (SCATTERGUARD_CLIENT_ADDRESS, ...).
ENV_FIELDS = ("client_address", "helo", "queue_id", "sasl_user")


@dataclasses.dataclass(frozen=True)
class FilterRequest:
    """What the MTA asked of one ``filter`` (or ``check``) run, before the message is read.

    The envelope values are text as the MTA passed them, the options already merged with the
    environment (an empty value is None). They are validated only by :meth:`envelope`, which the
    pipeline calls once the message is read: a bad value defers that message, logged there.
    ``sender`` is None when no ``-f`` was given. ``config`` is the ``--config`` argument.
    """

    sender: str | None
    recipients: tuple[str, ...] = ()
    client_address: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    sasl_user: str | None = None
    bsmtp: bool = False
    config: str | None = None

    @classmethod
    def from_options(
        cls,
        sender: str | None,
        recipients: Sequence[str],
        options: Mapping[str, str | None],
        environ: Mapping[str, str],
        *,
        bsmtp: bool = False,
        config: str | None = None,
    ) -> FilterRequest:
        """A request from option values, falling back to ``SCATTERGUARD_*`` variables.

        An option given (not None) wins over the environment, even when it is empty.
        """
        merged: dict[str, str | None] = {}
        for name in ENV_FIELDS:
            value = options.get(name)
            if value is None:
                value = environ.get(ENV_PREFIX + name.upper())
            merged[name] = value or None
        return cls(
            sender=sender,
            recipients=tuple(recipients),
            client_address=merged["client_address"],
            helo=merged["helo"],
            queue_id=merged["queue_id"],
            sasl_user=merged["sasl_user"],
            bsmtp=bsmtp,
            config=config,
        )

    def from_bsmtp(self, sender: str, recipients: Sequence[str]) -> FilterRequest:
        """This request with the envelope a batch SMTP stream carried (``filter --bsmtp``).

        The stream's reverse-path replaces any ``-f``; its recipients come first, then any given
        on the command line.
        """
        return dataclasses.replace(self, sender=sender, recipients=(*recipients, *self.recipients))

    def with_sender(self, sender: str) -> FilterRequest:
        """This request with ``sender`` as its reverse-path."""
        return dataclasses.replace(self, sender=sender)

    def envelope(self, *, require_recipients: bool = True) -> Envelope:
        """The validated envelope; raises UsageError, naming the value, when one is unusable."""
        if self.sender is None:
            raise UsageError("no sender given (use -f '' for the null reverse-path)")
        if require_recipients and not self.recipients:
            raise UsageError("no recipients given")
        return parse_envelope(
            self.sender,
            self.recipients,
            client_address=self.client_address,
            helo=self.helo,
            queue_id=self.queue_id,
            sasl_user=self.sasl_user,
        )


def from_namespace(args: argparse.Namespace, environ: Mapping[str, str]) -> FilterRequest:
    """The request of a parsed ``filter`` or ``check`` command line."""
    return FilterRequest.from_options(
        args.sender,
        args.recipients,
        {name: getattr(args, name) for name in ENV_FIELDS},
        environ,
        bsmtp=getattr(args, "bsmtp", False),
        config=args.config,
    )


def parse_filter(argv: Sequence[str], environ: Mapping[str, str]) -> FilterRequest:
    """Read a ``filter`` command line (without the program name); raises UsageError.

    Filter mode's stdout holds the status line and nothing else, and its exit codes are 0, 69
    and 75: argparse's help or version text and its SystemExit would break both, so they are a
    usage error here (and in the server, which must not exit, nor print on its own stdout).
    Any other subcommand is a usage error too.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args = command_line()[0].parse_args(list(argv))
    except SystemExit:
        raise UsageError(
            "filter mode does not take --help or --version; see scatterguard(8)"
        ) from None
    return from_namespace(args, environ)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing and exiting, and takes no
    abbreviations.

    argparse would read ``--conf`` as ``--config`` and ``--queue`` as ``--queue-id``; the
    readers before the hand-over (:func:`scatterguard.frontends.cli._filter_mode`, its
    ``--config`` reader) see only the names written out. Two readings of one argv disagreed:
    ``--conf FILE filter`` was not taken for filter mode and ended in a traceback and exit 1,
    which the MTA bounces. Only the full names are options.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Raise the usage error: the caller decides what becomes of it (exit 2, or 75)."""
        raise UsageError(message)


def command_line() -> tuple[Parser, argparse._SubParsersAction[Parser]]:
    """The top of the command line and its ``filter`` subcommand; the CLI adds the others."""
    parser = Parser(prog="scatterguard", description="After-queue SPF/DKIM/DMARC mail filter.")
    parser.add_argument("--version", action="version", version=f"scatterguard {__version__}")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    filt = commands.add_parser("filter", help="filter one message from the MTA (pipe mode)")
    filt.add_argument(
        "--bsmtp", action="store_true", help="read envelope and message as batch SMTP (Exim)"
    )
    add_envelope_options(filt)
    return parser, commands


def add_envelope_options(parser: argparse.ArgumentParser) -> None:
    """The ENVELOPE options of DESIGN.md §Command line, and the recipients."""
    parser.add_argument("-f", "--sender", metavar="ADDR", help='reverse-path; "" or "<>" is null')
    parser.add_argument("--client-address", metavar="IP", help="IP of the SMTP client")
    parser.add_argument("--helo", metavar="NAME", help="HELO/EHLO name the client gave")
    parser.add_argument("--queue-id", metavar="ID", help="the MTA's queue id")
    parser.add_argument("--sasl-user", metavar="NAME", help="set when the client authenticated")
    parser.add_argument("recipients", nargs="*", metavar="RECIPIENT")
