"""Re-injection: hand a message back to the MTA with the configured command, without a shell.

``{sender}`` in the command becomes the reverse-path (``<>`` for the null one) and
``{recipients}`` one argument per recipient. A non-zero exit, a signal, a timeout or a program that
cannot be started all mean the message was not re-injected: :class:`ReinjectError`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Protocol

from scatterguard.errors import ReinjectError

MAX_DIAGNOSTIC = 300


class Reinjector(Protocol):
    """Something that takes a message back into the mail system or raises ReinjectError."""

    def __call__(self, sender: str, recipients: Sequence[str], data: bytes) -> None: ...


def expand(command: Sequence[str], sender: str, recipients: Sequence[str]) -> list[str]:
    """Build the argv: ``{sender}`` and ``{recipients}`` are whole arguments, never substrings."""
    argv: list[str] = []
    for arg in command:
        if arg == "{recipients}":
            argv.extend(recipients)
        elif arg == "{sender}":
            argv.append(sender or "<>")
        else:
            argv.append(arg)
    return argv


class CommandReinjector:
    """Run the configured command with the message on its standard input."""

    def __init__(self, command: Sequence[str], timeout: float = 120.0) -> None:
        self.command = tuple(command)
        self.timeout = timeout

    def __call__(self, sender: str, recipients: Sequence[str], data: bytes) -> None:
        argv = expand(self.command, sender, recipients)
        try:
            done = subprocess.run(
                argv,
                input=data,
                stdin=None,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ReinjectError(f"{argv[0]} did not finish within {self.timeout:g}s") from None
        except OSError as exc:
            raise ReinjectError(f"cannot run {argv[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            output = done.stdout.decode("utf-8", "replace").strip()[:MAX_DIAGNOSTIC]
            raise ReinjectError(f"{argv[0]} exited with status {done.returncode}: {output!r}")
