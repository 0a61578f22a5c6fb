"""The scatterguard benchmark: every comparison in one run, interleaved, medians; a markdown table.

bench/run installs what this needs and starts it; see bench/README.md for what each column means
and how it is measured. Sections:

a. one typical message through ``scatterguard filter``, a null Python filter and a shell filter,
   under each interpreter (PyPI's libraries, Debian's, Debian's with their Recommends);
   ``python -X importtime`` of the filter path;
b. throughput through a real Postfix: the null filter, scatterguard, the resident server (when
   ``scatterguard serve`` exists) and amavisd-new with and without pipelining;
c. large messages: 1, 10 and 25 MB, text and base64, one and three signatures;
d. 500 recipients on one message, cold and warm DNS.

Nothing here asserts anything about time: it measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import measure
import throughput
import workload
from measure import CpuGroup, Sample, median
from measure import run_child as _run_child

from e2e import harness

HERE = Path(__file__).resolve().parent
PREFIX = Path("/opt/scatterguard-bench")
WORK = Path("/run/scatterguard-bench")
BIN = PREFIX / "bin"  # copies of the helper programs that the filter user can reach
NULL_SENDMAIL = BIN / "null-sendmail"
FILTER_USER = "scatterguard"
COLD_DELAY_MS = 25.0
# The server behind Postfix runs as the filter user, so its socket lives in a directory of its own.
POSTFIX_SOCKET = WORK / "server" / "postfix.sock"


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- interpreters ---------------------------------------------------------------------------------


@dataclass
class Interp:
    """One venv the filter is installed in (bench/run makes them)."""

    key: str
    label: str
    venv: Path
    version: str = ""
    libs: str = ""
    httpx: bool = False
    serve: bool = False
    server: Server | None = None

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def scatterguard(self) -> str:
        return str(self.venv / "bin" / "scatterguard")

    def probe(self) -> None:
        code = (
            "import sys, importlib.metadata as m, importlib.util as u\n"
            "out = [sys.version.split()[0], sys.executable]\n"
            "for d in ('dkimpy', 'pyspf', 'authres', 'email-validator', 'structlog',\n"
            "          'dnspython'):\n"
            "    for name in (d, d.removeprefix('py')):\n"
            "        try: out.append(d + ' ' + m.version(name)); break\n"
            "        except Exception: pass\n"
            "    else:\n"
            "        try: out.append(d + ' ' + __import__(d.removeprefix('py')).__version__)\n"
            "        except Exception: out.append(d + ' ?')\n"
            "out.append(str(bool(u.find_spec('httpx'))))\n"
            "print('\\n'.join(out))\n"
        )
        lines = subprocess.run(
            [self.python, "-c", code], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        self.version = f"Python {lines[0]}"
        self.libs = ", ".join(lines[2:-1])
        self.httpx = lines[-1] == "True"
        helped = subprocess.run(
            [self.scatterguard, "serve", "--help"], capture_output=True, text=True, check=False
        )
        self.serve = helped.returncode == 0


def interpreters() -> list[Interp]:
    return [
        Interp("pypi", "PyPI libraries", PREFIX / "pypi"),
        Interp("debian", "Debian 12 packages", PREFIX / "debian"),
        Interp("debian+rec", "Debian 12 packages + Recommends", PREFIX / "debian-rec"),
    ]


# --- the resident server (issue 8) ----------------------------------------------------------------


class Server:
    """``scatterguard serve`` for one interpreter, in a cgroup of its own.

    HOOK (issue 8): this is how the benchmark starts the resident server. It follows
    filter/scatterguard/frontends/cli.py: ``scatterguard --config FILE serve``, with the socket and
    the worker count in the ``[server]`` table of that file; ``filter`` with the same file hands its
    messages to the socket. If the lead changes how the server is started, change only this class.
    """

    def __init__(self, interp: Interp, config: Path, sock: Path, user: str | None) -> None:
        self.interp = interp
        self.config = config
        self.sock = sock
        self.user = user
        self.group = CpuGroup(f"scatterguard-bench-server-{interp.key.replace('+', '-')}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        argv = [self.interp.scatterguard, "--config", str(self.config), "serve"]
        if self.user:
            # setpriv drops to the filter user after the cgroup is joined (root may join it).
            argv = [
                "setpriv",
                f"--reuid={self.user}",
                f"--regid={self.user}",
                "--init-groups",
                *argv,
            ]
        out = open(WORK / f"server-{self.interp.key}.out", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, preexec_fn=self.group.preexec
        )
        harness.wait_for(
            f"scatterguard serve ({self.interp.key}) to listen on {self.sock}",
            self._listening,
            timeout=60,
            report=lambda: (WORK / f"server-{self.interp.key}.out").read_text(errors="replace"),
        )

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"scatterguard serve exited with {self.proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.connect(str(self.sock))
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


# --- configuration --------------------------------------------------------------------------------


def write_config(
    path: Path, dns_port: int, *, reinject: Sequence[str], server: Path | None, knows_server: bool
) -> Path:
    """A scatterguard.toml for the benchmark (in-process when ``server`` is None)."""
    lines = [
        "# Written by scatterguard's bench/ for one run.",
        f'authserv_id = "{workload.AUTHSERV_ID}"',
        'timeout = "300s"',
        "[dns]",
        f'nameservers = ["127.0.0.1:{dns_port}"]',
        "timeout = 2.0",
        "[reinject]",
        "command = " + json.dumps(list(reinject)),
        "[quarantine]",
        f'directory = "{WORK / "quarantine"}"',
        # The spool and the delivery record, where the quarantine was: the same tmpfs as before.
        "[state]",
        f'directory = "{WORK / "state"}"',
        "[log]",
        'target = "syslog"',
        f'socket = "{WORK / "log.sock"}"',
    ]
    if knows_server:
        # In-process runs must not find a server at the default socket path.
        lines += ["[server]", f'socket = "{server or ""}"']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


# --- DNS ------------------------------------------------------------------------------------------


class Dns:
    """bench/dnsd.py (tests/dnsserver.py) as a subprocess, in a cgroup of its own."""

    def __init__(self, python: str, cold_delay_ms: float) -> None:
        self.group = CpuGroup("scatterguard-bench-dns")
        records = WORK / "records.json"
        records.write_text(json.dumps(workload.records()))
        self.proc = subprocess.Popen(
            [
                python,
                str(HERE / "dnsd.py"),
                "--records",
                str(records),
                "--cold-delay",
                str(cold_delay_ms),
            ],
            stdout=subprocess.PIPE,
            preexec_fn=self.group.preexec,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def _control(self, name: str) -> int:
        query = dns.message.make_query(f"{name}.bench.invalid", "TXT")
        reply = dns.query.udp(query, "127.0.0.1", timeout=5, port=self.port)
        return int(reply.answer[0][0].strings[0])

    def count(self) -> int:
        """Questions answered since the last flush."""
        return self._control("count")

    def flush(self) -> None:
        """Empty the simulated resolver cache: the next question for each name is slow."""
        self._control("flush")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


# --- results --------------------------------------------------------------------------------------


@dataclass
class Results:
    """Samples by key, in the order the keys were first seen."""

    samples: dict[tuple[str, ...], list[Sample]] = field(default_factory=lambda: defaultdict(list))
    extra: dict[tuple[str, ...], list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, key: tuple[str, ...], sample: Sample) -> None:
        self.samples[key].append(sample)

    def wall(self, key: tuple[str, ...]) -> float:
        return median([s.wall for s in self.samples[key]])

    def cpu(self, key: tuple[str, ...]) -> float:
        return median([s.cpu for s in self.samples[key]])

    def rss(self, key: tuple[str, ...]) -> float:
        return median([s.rss_kib for s in self.samples[key]]) / 1024

    def has(self, key: tuple[str, ...]) -> bool:
        return bool(self.samples.get(key))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds == seconds else "n/a"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and a == a and b == b else "n/a"


def check_sample(what: str, sample: Sample, problems: list[str]) -> None:
    if sample.code != 0 or sample.stderr:
        text = (sample.stdout + sample.stderr).decode(errors="replace").strip()[:300]
        problems.append(f"{what}: exit {sample.code} {text}")


@contextlib.contextmanager
def server_group_usage(servers: Sequence[Server]) -> Iterator[dict[str, float]]:
    """CPU used by each running server during the block, by interpreter key."""
    before = {s.interp.key: s.group.usage() for s in servers}
    used: dict[str, float] = {}
    yield used
    for s in servers:
        start, end = before[s.interp.key], s.group.usage()
        if start is not None and end is not None:
            used[s.interp.key] = end - start


def run_child(argv: Sequence[str], stdin: Path) -> Sample:
    """Run one filter (or other) process, with a queue id of its own.

    Every run must be a new message to the filter, as every MTA delivery is: the filter records
    each re-injected queue id (with the envelope and bytes), and a repeat of one is a retry of a
    delivery already made, which it skips without checking anything.
    """
    return _run_child([_fresh(arg) for arg in argv], stdin)


def _fresh(arg: str) -> str:
    if arg.startswith("--queue-id="):
        return f"--queue-id=4{secrets.token_hex(5).upper()}"
    return arg


# --- a: per message -------------------------------------------------------------------------------


def per_message(
    interps: Sequence[Interp], configs: dict[str, Path], message: Path, rounds: int
) -> tuple[Results, dict[str, float], list[str]]:
    """Interleaved rounds of every (interpreter, filter) pair on the typical message."""
    envelope = workload.Envelope().argv()
    cases: list[tuple[tuple[str, ...], list[str]]] = []
    for interp in interps:
        cases.append(
            (
                (interp.key, "scatterguard"),
                [interp.scatterguard, "--config", str(configs[interp.key]), "filter", *envelope],
            )
        )
        if interp.server is not None:
            cases.append(
                (
                    (interp.key, "server"),
                    [
                        interp.scatterguard,
                        "--config",
                        str(configs[interp.key + "/server"]),
                        "filter",
                        *envelope,
                    ],
                )
            )
        cases.append(
            (
                (interp.key, "null"),
                [interp.python, str(BIN / "nullfilter.py"), str(NULL_SENDMAIL), *envelope],
            )
        )
    cases.append((("sh", "shell"), [str(BIN / "shellfilter"), str(NULL_SENDMAIL), *envelope]))
    results = Results()
    problems: list[str] = []
    servers = [i.server for i in interps if i.server is not None]
    rng = random.Random(6)
    for key, argv in cases:  # warm-up: page cache, .pyc files, the DNS server's cache
        check_sample("/".join(key), run_child(argv, message), problems)
    server_cpu: dict[str, float] = defaultdict(float)
    for _ in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        for key, argv in order:
            with server_group_usage(servers) as used:
                sample = run_child(argv, message)
            if key[1] == "server":
                server_cpu[key[0]] += used.get(key[0], float("nan"))
            check_sample("/".join(key), sample, problems)
            results.add(key, sample)
    return results, {k: v / rounds for k, v in server_cpu.items()}, problems


def importtime(
    interp: Interp, argv: Sequence[str], message: Path
) -> tuple[float, list[tuple[str, float]]]:
    """Total import time and the top packages by self time, from ``python -X importtime``."""
    sample = run_child([interp.python, "-X", "importtime", "-m", "scatterguard", *argv], message)
    per_package: dict[str, float] = defaultdict(float)
    total = 0.0
    for line in sample.stderr.decode(errors="replace").splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s+)(\S+)", line)
        if not match:
            continue
        self_us = int(match.group(1))
        total += self_us
        per_package[match.group(4).split(".")[0]] += self_us
    top = sorted(per_package.items(), key=lambda kv: -kv[1])[:10]
    return total / 1e6, [(name, us / 1e6) for name, us in top]


# --- c: large messages ----------------------------------------------------------------------------


def large_messages(
    interps: Sequence[Interp], configs: dict[str, Path], sizes: Sequence[int], rounds: int
) -> tuple[Results, dict[tuple[str, ...], str], list[str]]:
    cases: list[tuple[tuple[str, ...], list[str], Path]] = []
    dkim: dict[tuple[str, ...], str] = {}
    envelope = workload.Envelope().argv()
    for size in sizes:
        for kind in ("text", "base64"):
            base = workload.large(size * 2**20, kind)
            for count in (1, 3):
                path = WORK / f"large-{size}-{kind}-{count}.eml"
                log(f"signing {size} MB {kind} with {count} signature(s)")
                path.write_bytes(workload.sign(base, count))
                dkim[(str(size), kind, str(count))] = dkim_results(interps[0], configs, path)
                for interp in interps:
                    argv = [interp.scatterguard, "--config", str(configs[interp.key]), "filter"]
                    cases.append(
                        ((interp.key, str(size), kind, str(count)), [*argv, *envelope], path)
                    )
    results = Results()
    problems: list[str] = []
    rng = random.Random(25)
    for _ in range(rounds):
        order = list(cases)
        rng.shuffle(order)
        for key, argv, path in order:
            sample = run_child(argv, path)
            check_sample("/".join(key), sample, problems)
            results.add(key, sample)
    for _, _, path in cases:
        path.unlink(missing_ok=True)
    return results, dkim, problems


def dkim_results(interp: Interp, configs: dict[str, Path], path: Path) -> str:
    """What ``scatterguard check --json`` finds for each signature: proof the work was done."""
    argv = [interp.scatterguard, "--config", str(configs[interp.key]), "check", "--json"]
    argv += ["-f", workload.SENDER, "--client-address", workload.CLIENT_IP, "--helo", workload.HELO]
    sample = run_child([*argv, "--", "alice@example.net"], path)
    try:
        found = json.loads(sample.stdout)
    except ValueError:
        return f"check failed ({sample.code})"
    results = [sig["result"] for sig in found["dkim"]]
    return " ".join(results) or "none"


# --- d: many recipients, cold and warm DNS --------------------------------------------------------


def recipients(
    interp: Interp, configs: dict[str, Path], dns_server: Dns, message: Path, rounds: int
) -> tuple[Results, dict[tuple[str, ...], float], list[str]]:
    many = tuple(f"user{i}@example.net" for i in range(500))
    paths = [("in-process", configs[interp.key])]
    if interp.server is not None:
        paths.append(("server", configs[interp.key + "/server"]))
    results = Results()
    questions: dict[tuple[str, ...], list[int]] = defaultdict(list)
    problems: list[str] = []
    for _ in range(rounds):
        for path_name, config in paths:
            for rcpts in (workload.Envelope(), workload.Envelope(recipients=many)):
                argv = [interp.scatterguard, "--config", str(config), "filter", *rcpts.argv()]
                # Cold: the resolver's cache is empty, and so is the server's (restarted).
                dns_server.flush()
                if path_name == "server" and interp.server is not None:
                    interp.server.restart()
                    dns_server.flush()
                for state in ("cold", "warm"):
                    before = dns_server.count()
                    sample = run_child(argv, message)
                    key = (path_name, str(len(rcpts.recipients)), state)
                    questions[key].append(dns_server.count() - before)
                    check_sample("/".join(key), sample, problems)
                    results.add(key, sample)
    return results, {k: median(v) for k, v in questions.items()}, problems


# --- b: Postfix -----------------------------------------------------------------------------------


def postfix_throughput(
    interp: Interp,
    dns_server: Dns,
    configs: dict[str, Path],
    count: int,
    rounds: int,
    amavis: bool,
) -> tuple[dict[str, list[throughput.Batch]], list[str]]:
    group = CpuGroup("scatterguard-bench-mta")
    postfix = throughput.BenchPostfix(group)
    notes: list[str] = []
    batches: dict[str, list[throughput.Batch]] = defaultdict(list)
    base = workload.sign(workload.typical(), 1)
    # Postfix adds its own Received field; the benchmark's stand-in goes.
    base = base[base.index(b"\r\nDKIM-Signature:") + 2 :]
    messages = [f"X-Bench-Seq: {i}\r\n".encode() + base for i in range(count)]
    filter_args = ["--config", str(configs["postfix"]), "filter"]
    amavisd = throughput.Amavis(group, dns_server.port) if amavis else None
    server = None
    try:
        postfix.configure()
        postfix.add_services(
            scatterguard_argv=throughput.pipe_argv(interp.scatterguard, *filter_args),
            null_argv=throughput.pipe_argv(
                interp.python, str(BIN / "nullfilter.py"), "/usr/sbin/sendmail"
            ),
            server_argv=(
                throughput.pipe_argv(
                    interp.scatterguard, "--config", str(configs["postfix/server"]), "filter"
                )
                if interp.serve
                else None
            ),
            amavis=amavis,
        )
        postfix.start()
        if interp.serve:
            server = Server(interp, configs["postfix/server"], POSTFIX_SOCKET, FILTER_USER)
            server.group = group  # the server's work is the mail path's work
            server.start()
        if amavisd is not None:
            amavisd.start()
        names = list(postfix.filters)
        # Warm-up: a few messages through each, so no configuration pays for first starts.
        for name in names:
            throughput.run_batch(
                postfix,
                name,
                messages[:10],
                sender=workload.SENDER,
                client=workload.CLIENT_IP,
                helo=workload.HELO,
                dns_group=dns_server.group,
            )
        for index in range(rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                log(f"Postfix round {index + 1}/{rounds}: {count} messages through {name}")
                batch = throughput.run_batch(
                    postfix,
                    name,
                    messages,
                    sender=workload.SENDER,
                    client=workload.CLIENT_IP,
                    helo=workload.HELO,
                    dns_group=dns_server.group,
                )
                log(f"  {batch.rate:.1f} msg/s {batch.problems}")
                batches[name].append(batch)
                if batch.problems:
                    notes.append(f"{name}, round {index + 1}: {batch.problems}")
    finally:
        if amavisd is not None:
            amavisd.stop()
        if server is not None:
            server.stop()
        with contextlib.suppress(Exception):
            postfix.clear_queue()
        with contextlib.suppress(Exception):
            postfix.stop()
        postfix.restore()
        throughput.clear_maildir()
    return batches, notes


# --- the report -----------------------------------------------------------------------------------


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    debian = (
        Path("/etc/debian_version").read_text().strip()
        if Path("/etc/debian_version").exists()
        else "?"
    )
    postfix = subprocess.run(
        ["postconf", "-h", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    amavis = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "amavisd-new"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return [
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, {memory}",
        f"- kernel: {platform.release()}; Debian {debian}; Postfix {postfix or '?'}; "
        f"amavisd-new {amavis or 'not installed'}",
        f"- load average at start: {measure.loadavg()}",
    ]


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def target(self, source: str, what: str, measured: str, met: bool | None) -> None:
        verdict = "n/a" if met is None else ("yes" if met else "**no**")
        self.targets.append((source, what, measured, verdict))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds (~5 min)")
    parser.add_argument("--messages", type=int, help="messages per Postfix batch (500; quick 100)")
    parser.add_argument("--rounds", type=int, help="Postfix rounds (3; quick 1)")
    parser.add_argument("--runs", type=int, help="per-message rounds (15; quick 7)")
    parser.add_argument("--sections", default="abcd", help="which of a b c d to run (default all)")
    parser.add_argument("--no-amavis", action="store_true", help="leave amavisd-new out of (b)")
    parser.add_argument("--postfix-venv", default="debian", choices=["debian", "debian+rec"])
    parser.add_argument("--commit", default=os.environ.get("SG_BENCH_COMMIT", "?"))
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    # A stopped benchmark still puts Postfix back and stops what it started (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quick = args.quick
    count = args.messages or (100 if quick else 500)
    rounds_b = args.rounds or (1 if quick else 3)
    runs_a = args.runs or (7 if quick else 15)
    rounds_c = 1 if quick else 3
    rounds_d = 2 if quick else 5
    sizes = (1, 10, 25)
    started = time.monotonic()

    WORK.mkdir(parents=True, exist_ok=True)
    WORK.chmod(0o755)
    for owned in ("quarantine", "state"):
        (WORK / owned).mkdir(exist_ok=True)
        shutil.chown(WORK / owned, FILTER_USER, FILTER_USER)
    (WORK / "server").mkdir(exist_ok=True)
    shutil.chown(WORK / "server", FILTER_USER, FILTER_USER)
    interps = interpreters()
    for interp in interps:
        interp.probe()
    report = Report()
    report.add("# scatterguard benchmark", "")
    report.add(*machine())
    report.add(
        f"- scatterguard: commit {args.commit}; `scatterguard serve`: "
        + ("present" if interps[0].serve else "not on this commit (server columns left out)")
    )
    for interp in interps:
        report.add(
            f"- `{interp.key}`: {interp.label}: {interp.version} ({interp.venv}); {interp.libs}; "
            f"httpx importable: {'yes' if interp.httpx else 'no'}"
        )
    report.add(
        f"- run: {'--quick' if quick else 'full'}; per message {runs_a} interleaved rounds; "
        f"Postfix {rounds_b} round(s) of {count} messages; medians throughout",
        "",
    )

    sink = harness.LogSink(WORK / "log.sock")
    dns_server = Dns(interps[0].python, COLD_DELAY_MS)
    configs: dict[str, Path] = {}
    reinject = [str(NULL_SENDMAIL), "-G", "-i", "-f", "{sender}", "--", "{recipients}"]
    for interp in interps:
        configs[interp.key] = write_config(
            WORK / f"{interp.key}.toml",
            dns_server.port,
            reinject=reinject,
            server=None,
            knows_server=interp.serve,
        )
        if interp.serve:
            sock = WORK / f"sg-{interp.key.replace('+', '-')}.sock"
            configs[interp.key + "/server"] = write_config(
                WORK / f"{interp.key}-server.toml",
                dns_server.port,
                reinject=reinject,
                server=sock,
                knows_server=True,
            )
    postfix_interp = next(i for i in interps if i.key == args.postfix_venv)
    sendmail = ["/usr/sbin/sendmail", "-G", "-i", "-f", "{sender}", "--", "{recipients}"]
    configs["postfix"] = write_config(
        WORK / "postfix.toml",
        dns_server.port,
        reinject=sendmail,
        server=None,
        knows_server=postfix_interp.serve,
    )
    if postfix_interp.serve:
        configs["postfix/server"] = write_config(
            WORK / "postfix-server.toml",
            dns_server.port,
            reinject=sendmail,
            server=POSTFIX_SOCKET,
            knows_server=True,
        )
    message = WORK / "typical.eml"
    message.write_bytes(workload.sign(workload.typical(), 1))
    problems: list[str] = []
    try:
        for interp in interps:
            if interp.serve:
                interp.server = Server(
                    interp,
                    configs[interp.key + "/server"],
                    WORK / f"sg-{interp.key.replace('+', '-')}.sock",
                    None,
                )
                interp.server.start()
        if "a" in args.sections:
            section_a(report, interps, configs, message, runs_a, problems)
        if "d" in args.sections:
            section_d(report, postfix_interp, configs, dns_server, message, rounds_d, problems)
        if "c" in args.sections:
            section_c(report, interps[:2], configs, sizes, rounds_c, problems)
        for interp in interps:
            if interp.server is not None:
                interp.server.stop()
                interp.server = None
        if "b" in args.sections:
            section_b(
                report,
                postfix_interp,
                dns_server,
                configs,
                count,
                rounds_b,
                not args.no_amavis,
                problems,
            )
    finally:
        for interp in interps:
            if interp.server is not None:
                interp.server.stop()
        dns_server.stop()
        sink.close()
    actions = defaultdict(int)
    for line in sink.lines:
        # One line per message (readiness probes of the server log "handover" lines: not counted).
        if "event='message'" in line:
            match = re.search(r"action='?(\w+)", line)
            actions[match.group(1) if match else "?"] += 1
    (WORK / "filter-log.txt").write_text("\n".join(sink.lines) + "\n")
    report.add("## Targets (issues 6 and 8)", "")
    report.add("| issue | target | measured | met? |", "|---|---|---|---|")
    for source, what, measured, verdict in report.targets:
        report.add(f"| {source} | {what} | {measured} | {verdict} |")
    report.add("")
    report.add("## Checks on the run", "")
    report.add(
        "- scatterguard's decisions, from its log lines: "
        + ", ".join(f"{n} {a}" for a, n in sorted(actions.items()))
        + " (every benchmark message should be delivered)"
    )
    if problems:
        report.add("- problems seen (these numbers are suspect):")
        report.add(*(f"  - {p}" for p in problems[:20]))
    else:
        report.add("- every filter run exited 0 with empty stdout and stderr")
    report.add(
        f"- the whole run took {(time.monotonic() - started) / 60:.1f} min; "
        f"load average at the end: {measure.loadavg()}"
    )
    text = "\n".join(report.lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


def section_a(
    report: Report,
    interps: Sequence[Interp],
    configs: dict[str, Path],
    message: Path,
    runs: int,
    problems: list[str],
) -> None:
    log(f"(a) per message: {runs} rounds")
    results, server_cpu, found = per_message(interps, configs, message, runs)
    problems.extend(found)
    size = message.stat().st_size
    report.add(
        f"## a. One message ({size / 1024:.0f} KB, one DKIM signature; SPF, DKIM and DMARC pass; "
        "re-injected into a null sendmail)",
        "",
        "| interpreter | filter | wall ms | CPU ms | peak RSS MB | wall ÷ null | CPU ÷ null "
        "| wall ÷ shell |",
        "|---|---|---|---|---|---|---|---|",
    )
    shell = ("sh", "shell")
    for interp in interps:
        null = (interp.key, "null")
        rows = [(interp.key, "scatterguard"), (interp.key, "server"), null]
        for key in rows:
            if not results.has(key):
                continue
            name = {
                "scatterguard": "scatterguard filter (in-process)",
                "server": "scatterguard filter → serve",
                "null": "null Python filter",
            }[key[1]]
            cpu = ms(results.cpu(key))
            if key[1] == "server":
                cpu += f" (+{ms(server_cpu.get(interp.key, float('nan')))} in the server)"
            report.add(
                f"| {interp.key} | {name} | {ms(results.wall(key))} | {cpu} "
                f"| {results.rss(key):.1f} | {ratio(results.wall(key), results.wall(null))} "
                f"| {ratio(results.cpu(key), results.cpu(null))} "
                f"| {ratio(results.wall(key), results.wall(shell))} |"
            )
    report.add(
        f"| - | shell filter (`exec sendmail`) | {ms(results.wall(shell))} "
        f"| {ms(results.cpu(shell))} "
        f"| {results.rss(shell):.1f} | | | 1.00x |",
        "",
    )
    for interp in interps:
        key, null = (interp.key, "scatterguard"), (interp.key, "null")
        wall_ratio = results.wall(key) / results.wall(null)
        report.target(
            "6",
            f"per message, {interp.key}: scatterguard wall ≤ 3x null Python filter",
            f"{wall_ratio:.2f}x ({ms(results.wall(key))} vs {ms(results.wall(null))} ms)",
            wall_ratio <= 3,
        )
    for interp in interps:
        key, null = (interp.key, "server"), (interp.key, "null")
        if results.has(key):
            wall_ratio = results.wall(key) / results.wall(null)
            report.target(
                "8",
                f"fast path, {interp.key}: client wall ≤ 1.5x null Python filter",
                f"{wall_ratio:.2f}x",
                wall_ratio <= 1.5,
            )
        else:
            report.target(
                "8",
                f"fast path, {interp.key}: client wall ≤ 1.5x null Python filter",
                "no `scatterguard serve` on this commit",
                None,
            )
    rec = ("debian+rec", "scatterguard")
    if results.has(rec):
        cpu = results.cpu(rec)
        report.target(
            "8",
            "in-process, Debian + Recommends: CPU per message < 100 ms",
            f"{ms(cpu)} ms",
            cpu < 0.1,
        )

    log("(a) python -X importtime")
    envelope = workload.Envelope().argv()
    columns = []
    for interp in interps:
        total, top = importtime(
            interp, ["--config", str(configs[interp.key]), "filter", *envelope], message
        )
        columns.append((interp.key, total, top))
        if interp.serve:
            total, top = importtime(
                interp,
                ["--config", str(configs[interp.key + "/server"]), "filter", *envelope],
                message,
            )
            columns.append((interp.key + " → serve", total, top))
    report.add(
        "### a. `python -X importtime -m scatterguard filter`: self time by top-level package, ms",
        "",
        "| # | "
        + " | ".join(f"{name} (total {total * 1000:.0f})" for name, total, _ in columns)
        + " |",
        "|---|" + "---|" * len(columns),
    )
    for rank in range(10):
        cells = []
        for _, _, top in columns:
            cells.append(f"{top[rank][0]} {top[rank][1] * 1000:.1f}" if rank < len(top) else "")
        report.add(f"| {rank + 1} | " + " | ".join(cells) + " |")
    report.add("")


def section_d(
    report: Report,
    interp: Interp,
    configs: dict[str, Path],
    dns_server: Dns,
    message: Path,
    rounds: int,
    problems: list[str],
) -> None:
    log(f"(d) recipients and DNS: {rounds} rounds")
    results, questions, found = recipients(interp, configs, dns_server, message, rounds)
    problems.extend(found)
    report.add(
        f"## d. Recipients and DNS ({interp.key}; "
        f"cold = {COLD_DELAY_MS:.0f} ms per first question)",
        "",
        "| path | recipients | DNS | wall ms | CPU ms (client) | peak RSS MB | DNS questions |",
        "|---|---|---|---|---|---|---|",
    )
    for key in results.samples:
        report.add(
            f"| {key[0]} | {key[1]} | {key[2]} | {ms(results.wall(key))} | {ms(results.cpu(key))} "
            f"| {results.rss(key):.1f} | {questions[key]:.0f} |"
        )
    report.add("")


def section_c(
    report: Report,
    interps: Sequence[Interp],
    configs: dict[str, Path],
    sizes: Sequence[int],
    rounds: int,
    problems: list[str],
) -> None:
    log(f"(c) large messages: {rounds} rounds")
    results, dkim, found = large_messages(interps, configs, sizes, rounds)
    problems.extend(found)
    report.add(
        "## c. Large messages (in-process, re-injected into a null sendmail)",
        "",
        "| size | body | signatures | DKIM results | "
        + " | ".join(f"{i.key} wall s | {i.key} peak RSS MB" for i in interps)
        + " |",
        "|---|---|---|---|" + "---|---|" * len(interps),
    )
    for size in sizes:
        for kind in ("text", "base64"):
            for count in ("1", "3"):
                cells = []
                for interp in interps:
                    key = (interp.key, str(size), kind, count)
                    cells.append(f"{results.wall(key):.2f} | {results.rss(key):.0f}")
                found = dkim.get((str(size), kind, count), "?")
                report.add(
                    f"| {size} MB | {kind} | {count} | {found} | " + " | ".join(cells) + " |"
                )
    report.add("")
    for interp in interps:
        for size, limit_rss in ((10, 150), (25, 100)):
            for kind in ("text", "base64"):
                key = (interp.key, str(size), kind, "1")
                wall, rss = results.wall(key), results.rss(key)
                report.target(
                    "6",
                    f"{size} MB {kind}, one signature, {interp.key}: < 1 s and < {limit_rss} MB",
                    f"{wall:.2f} s, {rss:.0f} MB",
                    wall < 1 and rss < limit_rss,
                )


def section_b(
    report: Report,
    interp: Interp,
    dns_server: Dns,
    configs: dict[str, Path],
    count: int,
    rounds: int,
    amavis: bool,
    problems: list[str],
) -> None:
    if amavis and not Path("/usr/sbin/amavisd").exists():
        problems.append(
            "amavisd-new is not installed: its rows are left out (bench/run installs it)"
        )
        amavis = False
    warning = throughput.wait_until_postfix_is_free(log)
    if warning:
        problems.append(warning)
    # Sections a, c and d run the filter as root, which leaves root-owned subdirectories (the
    # delivery record, the spool) in the state directory: the filter user that Postfix runs
    # would rightly defer every message it cannot record. Start (b) from fresh directories it
    # owns.
    for owned in ("quarantine", "state"):
        shutil.rmtree(WORK / owned, ignore_errors=True)
        (WORK / owned).mkdir()
        shutil.chown(WORK / owned, FILTER_USER, FILTER_USER)
    log(f"(b) Postfix: {rounds} rounds of {count} messages")
    batches, notes = postfix_throughput(interp, dns_server, configs, count, rounds, amavis)
    problems.extend(notes)
    labels = {
        "null": "null Python filter (pipe)",
        "scatterguard": "scatterguard filter, in-process (pipe)",
        "server": "scatterguard filter → serve (pipe)",
        "amavis": "amavisd-new, Postfix pipelining on (default)",
        "amavis-nopipe": "amavisd-new, Postfix pipelining off",
    }
    rate = {name: median([b.rate for b in runs]) for name, runs in batches.items()}
    report.add(
        f"## b. Through Postfix: {count} messages, 2 filter processes ({interp.key})",
        "",
        "| configuration | msg/s | CPU ms per message | DNS server CPU ms/msg "
        "| dkim=pass recorded | ÷ null | ÷ amavisd-new |",
        "|---|---|---|---|---|---|---|",
    )
    for name, runs in batches.items():
        cpus = [b.cpu / b.messages for b in runs if b.cpu is not None]
        dns_cpus = [b.dns_cpu / b.messages for b in runs if b.dns_cpu is not None]
        verified = min(b.verified for b in runs)
        report.add(
            f"| {labels[name]} | {rate[name]:.1f} | {ms(median(cpus)) if cpus else 'n/a'} "
            f"| {ms(median(dns_cpus)) if dns_cpus else 'n/a'} | {verified}/{count} "
            f"| {ratio(rate[name], rate.get('null', float('nan')))} "
            f"| {ratio(rate[name], rate.get('amavis', float('nan')))} |"
        )
    report.add("")
    if "null" in rate and "scatterguard" in rate:
        r = rate["scatterguard"] / rate["null"]
        report.target(
            "6", "Postfix: scatterguard ≥ 0.5x null filter's throughput", f"{r:.2f}x", r >= 0.5
        )
    if "amavis" in rate and "scatterguard" in rate:
        r = rate["scatterguard"] / rate["amavis"]
        report.target(
            "6",
            "Postfix: scatterguard (in-process) ahead of amavisd-new (default)",
            f"{r:.2f}x",
            r > 1,
        )
    if "server" in rate:
        r = rate["server"] / rate["null"]
        report.target("8", "Postfix, server: ≥ 0.8x null filter", f"{r:.2f}x", r >= 0.8)
        if "amavis" in rate:
            r = rate["server"] / rate["amavis"]
            report.target("8", "Postfix, server: ≥ 2x amavisd-new (default)", f"{r:.2f}x", r >= 2)
            r = rate["server"] / rate["amavis-nopipe"]
            report.target(
                "8", "Postfix, server: ≥ amavisd-new, pipelining off", f"{r:.2f}x", r >= 1
            )
    else:
        for what in (
            "Postfix, server: ≥ 0.8x null filter",
            "Postfix, server: ≥ 2x amavisd-new (default)",
            "Postfix, server: ≥ amavisd-new, pipelining off",
        ):
            report.target("8", what, "no `scatterguard serve` on this commit", None)


if __name__ == "__main__":
    sys.exit(main())
