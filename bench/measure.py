"""How the benchmark measures: a child with os.wait4, a process tree in a cgroup, medians.

A child's numbers come from ``os.wait4``: wall time from just before the spawn to the reaping,
user+sys CPU from the rusage the kernel returns, which covers the child and the descendants it
waited for (the sendmail it re-injects with, for instance); peak RSS is ``ru_maxrss`` of the
same, as GNU time reports it (see :func:`run_child`).

A process tree that lives on its own (Postfix and every program it starts, amavisd-new, the
resident server, the DNS server) is measured by putting it into a cgroup v2 of its own and reading
``cpu.stat``: every process started inside stays inside, whether it is still running or long
reaped, so the difference of two readings is exactly the CPU the tree used in between.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One run of one child."""

    wall: float  # seconds
    cpu: float  # seconds, user + sys
    rss_kib: int  # peak resident set size
    code: int  # exit status (or -signal)
    stdout: bytes
    stderr: bytes


TIME = "/usr/bin/time"


def run_child(
    argv: Sequence[str], stdin_path: Path | None, env: dict[str, str] | None = None
) -> Sample:
    """Run ``argv`` with a file on stdin and measure it (see the module docstring).

    The child is started through GNU time, which only forks, execs and waits: a child that this
    (large) Python process spawned directly would start with its parent's memory mapped, and the
    kernel would report the parent's RSS as the child's peak. GNU time's own RSS (about 2 MB) is
    the floor of the column instead, and its fork and exec (well under a millisecond) are in the
    wall and CPU times of every filter alike.
    """
    with (
        open(stdin_path or os.devnull, "rb") as stdin,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        actions = [
            (os.POSIX_SPAWN_DUP2, stdin.fileno(), 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        command = [TIME, "--quiet", "--format=%M", f"--output={rss.name}", *argv]
        started = time.perf_counter()
        pid = os.posix_spawn(TIME, command, env or os.environ, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Sample(
            wall,
            usage.ru_utime + usage.ru_stime,
            int(rss.read().strip() or 0),
            os.waitstatus_to_exitcode(status),
            out.read(),
            err.read(),
        )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def cgroup2_root() -> Path | None:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or .../unified on a hybrid host), if anywhere."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


class CpuGroup:
    """A cgroup v2 holding a process tree; ``usage()`` is its CPU time so far, in seconds.

    Without a usable cgroup v2 it falls back to nothing (``usage()`` is None) and the report
    says the CPU column could not be measured.
    """

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        root = cgroup2_root()
        if root is None:
            return
        path = root / name
        try:
            path.mkdir(exist_ok=True)
            (path / "cpu.stat").read_text()
        except OSError:
            return
        self.path = path

    @property
    def available(self) -> bool:
        return self.path is not None

    def preexec(self) -> None:
        """Move the calling (child) process into this cgroup; for subprocess' preexec_fn."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a command inside the cgroup (its daemons stay in it)."""
        return subprocess.run(
            list(argv),
            preexec_fn=self.preexec,
            capture_output=True,
            text=True,
            check=True,
            **kwargs,  # type: ignore[arg-type]
        )

    def usage(self) -> float | None:
        if self.path is None:
            return None
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        return None

    def remove(self) -> None:
        """Remove the cgroup once it is empty (its processes ended)."""
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            self.path.rmdir()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
