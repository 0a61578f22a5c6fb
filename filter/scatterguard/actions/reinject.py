"""Re-injection: hand a message back to the MTA with the configured command, without a shell.

``{sender}`` in the command becomes the reverse-path (``<>`` for the null one) and
``{recipients}`` one argument per recipient. A non-zero exit, a signal, a timeout or a program that
cannot be started all mean the message was not re-injected: :class:`ReinjectError`.

The message is a :class:`~scatterguard.core.message.Payload`: our new header field, then spans of
the original bytes. It is written to the command's stdin piece by piece, never joined; the spans of
a spooled message go from the spool file to the pipe with ``sendfile(2)``, so a large message
never passes through this process's memory. Writing and reading the command's output are
interleaved (a command that talks before it reads cannot deadlock us), as ``subprocess.run``
does with ``input=``.
"""

from __future__ import annotations

import errno
import os
import selectors
import subprocess
import time
from collections.abc import Sequence

from scatterguard.core.message import Payload
from scatterguard.errors import ReinjectError

MAX_DIAGNOSTIC = 300
# The most written to the pipe per system call (the pipe takes what fits, 64 KiB by default).
_SLICE = 1024 * 1024


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


class _Timeout(Exception):
    """The command ran past the re-injection timeout."""


class CommandReinjector:
    """Run the configured command with the message on its standard input.

    The :class:`~scatterguard.actions.ports.Reinjector` port over ``reinject.command``.
    """

    def __init__(self, command: Sequence[str], timeout: float = 120.0) -> None:
        self.command = tuple(command)
        self.timeout = timeout

    def __call__(self, sender: str, recipients: Sequence[str], data: Payload) -> None:
        argv = expand(self.command, sender, recipients)
        deadline = time.monotonic() + self.timeout
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise ReinjectError(f"cannot run {argv[0]}: {exc.strerror}") from None
        # As subprocess.run: on a timeout the command is killed and reaped; on anything else
        # (the filter's own deadline) it is killed, and leaving the with block reaps it.
        with process:
            try:
                output = _exchange(process, data, deadline)
                process.wait(timeout=max(deadline - time.monotonic(), 0))
            except (_Timeout, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
                raise ReinjectError(f"{argv[0]} did not finish within {self.timeout:g}s") from None
            except BaseException:
                process.kill()
                raise
        if process.returncode != 0:
            text = output.decode("utf-8", "replace").strip()[:MAX_DIAGNOSTIC]
            raise ReinjectError(f"{argv[0]} exited with status {process.returncode}: {text!r}")


def _exchange(process: subprocess.Popen[bytes], payload: Payload, deadline: float) -> bytes:
    """Write ``payload`` to the command's stdin while collecting its output, until both end."""
    stdin, stdout = process.stdin, process.stdout
    if stdin is None or stdout is None:  # both are pipes (see Popen above); for mypy
        raise ReinjectError("the re-injection command has no pipes")
    writer = _Writer(stdin.fileno(), payload)
    output: list[bytes] = []
    with selectors.PollSelector() as selector:
        if writer.done:
            stdin.close()
        else:
            os.set_blocking(stdin.fileno(), False)
            selector.register(stdin, selectors.EVENT_WRITE)
        selector.register(stdout, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            for key, _events in selector.select(remaining):
                if key.fileobj is stdin:
                    try:
                        writer.write()
                    except BrokenPipeError:
                        # The command stopped reading; its exit status says whether it took the
                        # message (as subprocess.run, which ignores EPIPE too).
                        writer.done = True
                    if writer.done:
                        selector.unregister(stdin)
                        stdin.close()
                else:
                    chunk = os.read(stdout.fileno(), 32768)
                    if chunk:
                        output.append(chunk)
                    else:
                        selector.unregister(stdout)
                        stdout.close()
    return b"".join(output)


class _Writer:
    """Writes a payload to a non-blocking pipe, as much as fits at each call."""

    def __init__(self, fd: int, payload: Payload) -> None:
        self.fd = fd
        self.source = payload.source
        self.prefix = memoryview(payload.prefix)
        self.spans = list(payload.keep)
        self.use_sendfile = True
        self.done = not self.prefix and not self.spans

    def write(self) -> None:
        """Write until the pipe is full or the payload is done (then ``done`` is set)."""
        try:
            while self.prefix:
                self.prefix = self.prefix[os.write(self.fd, self.prefix) :]
            while self.spans:
                start, end = self.spans[0]
                sent = self._span(start, min(end - start, _SLICE))
                if start + sent >= end:
                    self.spans.pop(0)
                else:
                    self.spans[0] = (start + sent, end)
        except BlockingIOError:
            return
        self.done = True

    def _span(self, offset: int, count: int) -> int:
        """Write up to ``count`` bytes of the source from ``offset``; return how many went."""
        if isinstance(self.source, bytes):
            return os.write(self.fd, memoryview(self.source)[offset : offset + count])
        if self.use_sendfile:
            try:
                return os.sendfile(self.fd, self.source.fileno(), offset, count)
            except OSError as exc:
                # A file system that cannot splice into a pipe: read and write instead.
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self.use_sendfile = False
        piece = os.pread(self.source.fileno(), min(count, 65536), offset)
        if not piece:
            raise ReinjectError("the spool file is shorter than the message")
        # What the pipe does not take now is read again at the next call.
        return os.write(self.fd, piece)
