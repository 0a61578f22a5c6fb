"""Test doubles that are real programs: a recording ``sendmail`` the filter runs as its re-injector.

The fake writes one JSON file per call (argv, stdin as base64) into a directory, and exits with
the status found in ``<dir>/exit-status`` (0 when absent), so tests can make re-injection fail.
With ``<dir>/delay``, it announces itself (``running-<pid>``) and sleeps that long between reading
the message and recording it, so tests can interrupt a re-injection halfway.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPT = """#!{python}
import base64, json, os, sys, time
directory = {directory!r}
data = sys.stdin.buffer.read()
delay_file = os.path.join(directory, "delay")
if os.path.exists(delay_file):
    open(os.path.join(directory, "running-%d" % os.getpid()), "w").close()
    time.sleep(float(open(delay_file).read()))
record = {{"argv": sys.argv[1:], "stdin": base64.b64encode(data).decode()}}
status_file = os.path.join(directory, "exit-status")
status = int(open(status_file).read()) if os.path.exists(status_file) else 0
if status == 0:
    name = os.path.join(directory, "call-%d-%d.json" % (time.time_ns(), os.getpid()))
    with open(name, "w") as handle:
        json.dump(record, handle)
else:
    print("fake sendmail: refusing on purpose")
sys.exit(status)
"""


@dataclass(frozen=True)
class Call:
    """One run of the fake sendmail."""

    argv: list[str]
    data: bytes


class FakeSendmail:
    """A recording sendmail program in ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / "sendmail"
        self.path.write_text(SCRIPT.format(python=sys.executable, directory=str(directory)))
        self.path.chmod(0o755)

    def command(self) -> list[str]:
        """The ``reinject.command`` that runs this fake like Postfix's sendmail."""
        return [str(self.path), "-G", "-i", "-f", "{sender}", "--", "{recipients}"]

    def fail_with(self, status: int | None) -> None:
        """Make the next calls exit with ``status`` (None: succeed again)."""
        target = self.directory / "exit-status"
        if status is None:
            target.unlink(missing_ok=True)
        else:
            target.write_text(str(status))

    def delay(self, seconds: float | None) -> None:
        """Make the next calls sleep ``seconds`` before recording (None: no delay)."""
        target = self.directory / "delay"
        if seconds is None:
            target.unlink(missing_ok=True)
        else:
            target.write_text(str(seconds))

    def running(self) -> list[Path]:
        """The announcements of delayed calls that have started."""
        return sorted(self.directory.glob("running-*"))

    @property
    def calls(self) -> list[Call]:
        """The successful calls so far, oldest first."""
        result = []
        for path in sorted(self.directory.glob("call-*.json")):
            record = json.loads(path.read_text())
            result.append(Call(record["argv"], base64.b64decode(record["stdin"])))
        return result
