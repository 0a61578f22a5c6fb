"""The fuzz corpus as regression tests: every stored input passes its target, on every interpreter.

``tests/fuzz/run`` searches for new findings for a bounded time; this file makes sure that what
was once found (and the seeds) keeps passing, and gives each target a short Hypothesis run, so a
plain ``pytest`` without atheris still exercises the fuzz targets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

# tests/ is on the path (pytest's pythonpath); tests/fuzz is a namespace package in it.
from fuzz import fuzz, targets

CORPUS = Path(__file__).resolve().parent / "corpus"


def _inputs(name: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / name).iterdir())]


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_corpus_passes(name: str) -> None:
    """Every stored input of the target meets its invariants."""
    inputs = _inputs(name)
    assert inputs, f"no corpus for {name}"
    for data in inputs:
        targets.TARGETS[name](data)


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_random_inputs_pass(name: str) -> None:
    """A short Hypothesis run over the target: random bytes, tokens, edited corpus inputs."""
    strategy = fuzz.inputs(_inputs(name), targets.tokens(), 2048)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(data: bytes) -> None:
        targets.TARGETS[name](data)

    check()
