"""Bounded-time fuzzing of scatterguard's parsers (issue 7 item 5); ``tests/fuzz/run`` calls this.

Engines: atheris (coverage-guided libFuzzer; ``pip install atheris`` gives a ready wheel for
CPython 3.11 on x86_64 Linux, no compiler needed) when it can be imported, else Hypothesis over
the same targets, seeded with the stored corpus and random edits of it. The targets are in
``targets.py``; the corpus is in ``corpus/<target>/``, one input per file named by its SHA-1.

Usage::

    fuzz.py [--seconds N] [--jobs N] [--engine auto|atheris|hypothesis] [--merge] [TARGET ...]
    fuzz.py --write-seeds          # (re)write the hand-made seed inputs into the corpus

Each target runs for ``--seconds`` in its own process, ``--jobs`` at a time; new inputs go to a
scratch directory (the stored corpus is only read) unless ``--merge`` folds the ones that add
coverage into it. Any exception, timeout (10 s per input) or memory blow-up (2 GB) is a finding:
the input is kept under the scratch directory, printed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
TOKENS = HERE / "tokens.dict"
TARGET_NAMES = (
    "message",
    "bsmtp",
    "dmarc_record",
    "from_domains",
    "authresults",
    "reverse_path",
    "reinject_command",
    "dkim_tag_list",
    # the hand-over's frames (targets.handover_request, targets.handover_reply)
    "handover_request",
    "handover_reply",
)
MAX_LEN = {"authresults": 2048}
DEFAULT_MAX_LEN = 8192
PER_INPUT_TIMEOUT = 10
RSS_LIMIT_MB = 2048


def _import_targets() -> dict[str, Callable[[bytes], None]]:
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    import targets

    return targets.TARGETS


# ---------------------------------------------------------------------------------------------
# Workers: one target in one process.


def atheris_worker(name: str, libfuzzer_args: Sequence[str]) -> None:
    """Run libFuzzer through atheris over one target, with scatterguard instrumented."""
    import atheris

    sys.path[:0] = [str(HERE), str(HERE.parent)]
    with atheris.instrument_imports(include=["scatterguard", "targets"]):
        import targets
    target = targets.TARGETS[name]
    # libFuzzer runs argv[0] through the shell for its child processes (-merge=1): make it the
    # whole worker command line, not just this file.
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "atheris", name]
    atheris.Setup([shlex.join(me), *libfuzzer_args], target)
    atheris.Fuzz()


def hypothesis_worker(name: str, seconds: float, scratch: Path) -> None:
    """Replay the corpus, then feed the target Hypothesis inputs until the time is up."""
    from hypothesis import HealthCheck, given, settings

    target = _import_targets()[name]
    import targets

    seeds = [path.read_bytes() for path in sorted((CORPUS / name).glob("*"))]
    for data in seeds:
        _guarded(target, data, scratch)
    strategy = inputs(seeds, targets.tokens(), MAX_LEN.get(name, DEFAULT_MAX_LEN))
    runs = 0

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def check(data: bytes) -> None:
        nonlocal runs
        runs += 1
        _guarded(target, data, scratch)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
    print(f"Done {runs} runs (hypothesis)", flush=True)


def inputs(seeds: list[bytes], tokens: list[bytes], limit: int) -> Any:
    """Hypothesis inputs without coverage feedback: random bytes of any size up to ``limit``,
    strings of dictionary tokens, and corpus inputs with tokens and bytes spliced in."""
    from hypothesis import strategies as st

    piece = st.one_of(st.sampled_from(tokens), st.binary(max_size=12))
    sized = st.integers(0, limit).flatmap(lambda size: st.binary(min_size=size, max_size=size))
    made = [st.binary(max_size=64), sized, st.lists(piece, max_size=80).map(b"".join)]

    def mutate(seed: bytes) -> Any:
        edit = st.tuples(st.integers(0, len(seed)), st.integers(0, 16), piece)
        return st.lists(edit, min_size=1, max_size=6).map(lambda edits: _apply(seed, edits))

    if seeds:
        made.append(st.sampled_from(seeds).flatmap(mutate))
    return st.one_of(made)


def _apply(seed: bytes, edits: Sequence[tuple[int, int, bytes]]) -> bytes:
    data = seed
    for position, delete, insert in edits:
        position = min(position, len(data))
        data = data[:position] + insert + data[position + delete :]
    return data


def _guarded(target: Callable[[bytes], None], data: bytes, scratch: Path) -> None:
    """Call the target; keep the input that failed (the last one written is the shrunk one)."""
    try:
        target(data)
    except BaseException:
        (scratch / "artifacts").mkdir(parents=True, exist_ok=True)
        (scratch / "artifacts" / "crash-hypothesis").write_bytes(data)
        raise


# ---------------------------------------------------------------------------------------------
# The orchestrator.


def _engine(wanted: str) -> tuple[str, str]:
    """The engine to use and why."""
    if wanted == "hypothesis":
        return "hypothesis", "asked for"
    try:
        import atheris  # noqa: F401
    except ImportError as exc:
        if wanted == "atheris":
            raise SystemExit(f"fuzz.py: atheris cannot be imported: {exc}") from None
        return "hypothesis", f"atheris cannot be imported ({exc}); Hypothesis instead"
    return "atheris", "coverage-guided (libFuzzer)"


def _command(engine: str, name: str, seconds: float, scratch: Path) -> list[str]:
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, name]
    if engine == "hypothesis":
        return [*me, str(seconds), str(scratch)]
    (scratch / "new").mkdir(parents=True, exist_ok=True)
    (scratch / "artifacts").mkdir(exist_ok=True)
    return [
        *me,
        str(scratch / "new"),
        str(CORPUS / name),
        f"-max_total_time={int(seconds)}",
        f"-timeout={PER_INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}",
        f"-artifact_prefix={scratch / 'artifacts'}/",
        f"-dict={TOKENS}",
        "-print_final_stats=1",
    ]


def _runs(log: str) -> str:
    found = re.search(r"stat::number_of_executed_units:\s*(\d+)", log) or re.search(
        r"Done (\d+) runs", log
    )
    return found.group(1) if found else "?"


def orchestrate(args: argparse.Namespace) -> int:
    engine, why = _engine(args.engine)
    names = args.targets or list(TARGET_NAMES)
    unknown = sorted(set(names) - set(TARGET_NAMES))
    if unknown:
        raise SystemExit(f"fuzz.py: unknown target {unknown[0]!r}; one of {TARGET_NAMES}")
    root = Path(tempfile.mkdtemp(prefix="scatterguard-fuzz-"))
    print(f"fuzzing {len(names)} targets for {args.seconds:g} s each, {args.jobs} at a time")
    print(f"engine: {engine} ({why}); scratch: {root}", flush=True)
    started = time.monotonic()
    pending = list(names)
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    results: dict[str, int] = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            scratch = root / name
            scratch.mkdir()
            log = (scratch / "log").open("wb")
            proc = subprocess.Popen(
                _command(engine, name, args.seconds, scratch),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=scratch,
            )
            running[name] = (proc, scratch)
        time.sleep(0.2)
        for name, (proc, _) in list(running.items()):
            if proc.poll() is not None:
                results[name] = proc.returncode
                del running[name]

    failed = False
    for name in names:
        scratch = root / name
        log = (scratch / "log").read_text("utf-8", "replace")
        crashes = (
            sorted((scratch / "artifacts").glob("*")) if (scratch / "artifacts").exists() else []
        )
        new = len(list((scratch / "new").glob("*"))) if (scratch / "new").exists() else 0
        corpus = len(list((CORPUS / name).glob("*")))
        status = "ok" if results[name] == 0 and not crashes else "FINDING"
        print(
            f"{name:14} {status:8} runs={_runs(log):>9} corpus={corpus} new={new} "
            f"crashes={len(crashes)}"
        )
        if status != "ok":
            failed = True
            print(f"--- {name}: exit {results[name]}; last lines of {scratch / 'log'}:")
            print("\n".join(log.splitlines()[-40:]))
            for crash in crashes:
                data = crash.read_bytes()
                print(f"--- input {crash} ({len(data)} bytes): {data[:400]!r}")
        elif args.merge and engine == "atheris" and new:
            _merge(name, scratch)
    print(f"fuzzing took {time.monotonic() - started:.0f} s")
    if not failed and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


def _merge(name: str, scratch: Path) -> None:
    """Fold the new inputs that add coverage into the stored corpus (libFuzzer -merge=1)."""
    before = len(list((CORPUS / name).glob("*")))
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "atheris", name]
    subprocess.run(
        [*me, "-merge=1", str(CORPUS / name), str(scratch / "new")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=scratch,
        check=True,
    )
    after = len(list((CORPUS / name).glob("*")))
    print(f"{name:14} merged {after - before} inputs into {CORPUS / name}")


# ---------------------------------------------------------------------------------------------
# Seeds.


# Issue 12 item 1: tag lists where a tag name is followed by what dkimpy does not strip.
DKIM_TAG_LISTS = [
    b" v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.example; s=s1;\r\n\th=from:to;"
    b" bh=AAAA; b=AAAA",
    b" v=1; d\xc2\xa0=reject.example; d=sender.example; s=s1; a=rsa-sha256; b=AAAA; bh=AAAA",
    b" d=sender.example; d\xc2\x85=reject.example; s\x1f=x; a\xe3\x80\x80=rsa-sha1; b=AAAA",
    b" d\x0b=reject.example; d=sender.example; z=From:x b=AAAA; b=AAAA;",
    b"b=AAAA; d = sender.example ;\r\n s = s1 ; h = from : to ;",
    b" d=victim.example\r\n attacker.example; s=s1 s1; i=@victim.example; b=\r\n AA AA",
]


def seeds() -> dict[str, list[bytes]]:
    """Hand-made starting inputs per target: small hostile messages, batches and records."""
    sys.path[:0] = [str(HERE.parent)]
    import hostile

    small = [case.data for case in hostile.messages() if len(case.data) <= 4096]
    from_values = [
        b"alice@sender.example",
        b'"ceo@reject.example" <alice@sender.example>',
        b"friends: a@x.example, b@y.example;, undisclosed:;",
        b"ceo(a)@(b)reject.example(c), =?utf-8?q?x?= <x@[192.0.2.1]>",
        "élève@bücher.example, <@a.example,@b.example:c@d.example>".encode(),
        b'a@b@c.example, "q\\"x"@y.example, (((x) y@z.example',
        b"x@xn--bcher-kva.example., Y@EXAMPLE.ORG",
    ]
    records = [
        b"v=DMARC1; p=reject",
        b"v=DMARC1; p=quarantine; sp=none; np=reject; psd=n; t=y; adkim=s; aspf=s",
        b"v=DMARC1; p=bogus; rua=mailto:d@example.org,https://x.example/r!10m",
        b"v=DMARC1;p=none;;pct=50;rf=afrf;ri=86400; p=reject",
        b"v=DMARC1 ; P = Reject ; SP=Quarantine",
        b"v=dmarc1; p=reject",
        b"\x00\xff v=DMARC1; p=reject",
    ]
    batches = [
        hostile.bsmtp("alice@sender.example", ["bob@rcpt.example"], b"From: a\n\n.x\n..\nend\n"),
        hostile.bsmtp("", ["a@b.example", "c@d.example"], b"X: y\r\n\r\n.\r\n", b"\r\n"),
        b'HELO x\nMAIL FROM:<"a>b"@c.example> SIZE=10\nRCPT TO:<d@e.example> NOTIFY=NEVER\n'
        b"DATA\nbody\n.\nQUIT\n",
    ]
    found = {
        "message": small,
        "from_domains": from_values,
        "dmarc_record": records,
        "bsmtp": batches,
        "authresults": [bytes(range(256)), b"\x01" * 64, b"\x00" * 8, b"example.org" * 20],
        "dkim_tag_list": DKIM_TAG_LISTS,
    }
    found.update(_handover_seeds(hostile))
    return found


def _handover_seeds(hostile: Any) -> dict[str, list[bytes]]:
    """Issue 12: requests (first byte: the number of descriptors) and server replies."""
    frame = hostile.handover_frame
    request = {"v": 2, "argv": hostile.handover_argv(), "env": {}, "deadline": 1e12, "timeout": 9}
    requests = [
        b"\x01" + frame(request),
        b"\x00" + frame(request),
        b"\x02" + frame(request),
        b"\x01" + frame({**request, "v": 1}),
        b"\x01" + frame({**request, "deadline": float("nan")}),
        b"\x01" + frame({**request, "argv": [1]}),
        b"\x01\xff\xff\xff\xff",
        b"\x01\x00\x00",
        b"\x01\x00\x00\x00\x05hello",
    ]
    replies = [
        frame({"ready": "ab"}) + frame({"code": 0, "status": None}),
        frame({"ready": "ab"}) + frame({"code": 69, "status": "5.7.1 no"}),
        frame({"code": 0, "status": None}),
        frame({"code": 75, "status": "4.3.0 later"}),
        frame({"ready": 1}),
        frame({"ready": "ab", "code": 0}),
        frame([1, 2]),
        b"\x00\x00\x00\x09not json!",
    ]
    return {"handover_request": requests, "handover_reply": replies}


def write_seeds() -> int:
    for name, inputs in seeds().items():
        directory = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)  # noqa: S324 - a name
        print(f"{name}: {len(list(directory.glob('*')))} inputs")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        engine, name, *rest = argv[1:]
        if engine == "atheris":
            atheris_worker(name, rest)
        else:
            hypothesis_worker(name, float(rest[0]), Path(rest[1]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"of {TARGET_NAMES}")
    parser.add_argument("--seconds", type=float, default=30.0, help="per target (default 30)")
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4))
    parser.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    parser.add_argument("--merge", action="store_true", help="add new coverage to the corpus")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--write-seeds", action="store_true", help="write the seed inputs")
    args = parser.parse_args(argv)
    if args.write_seeds:
        return write_seeds()
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
