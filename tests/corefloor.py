"""A branch-coverage floor for ``scatterguard.core``, enforced when the whole suite runs.

The floor is the ``core_branch_coverage`` setting in ``[tool.pytest.ini_options]``
(pyproject.toml). ``core/`` is pure, so its unit tests reach every branch that matters without a
mail server; this keeps a new rule or parser from landing untested.

Measuring starts when conftest imports this module (before any test imports the package) and
covers ``filter/scatterguard/core`` only, with branch coverage. The floor is checked at the end of
a run that collected the whole of ``tests/`` (no narrower paths, no ``-k``, no ``--ignore``); a
partial run only measures. Without the ``coverage`` package (Debian's package build does not
install it) nothing is measured; ``SCATTERGUARD_NO_COVERAGE=1`` turns measuring off too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CORE = Path(__file__).resolve().parents[1] / "filter" / "scatterguard" / "core"
TESTS = Path(__file__).resolve().parent

_coverage: Any = None
if not os.environ.get("SCATTERGUARD_NO_COVERAGE"):
    try:
        import coverage
    except ImportError:
        coverage = None
    if coverage is not None:
        _coverage = coverage.Coverage(
            branch=True, include=[f"{CORE}/*"], data_file=None, config_file=False
        )
        _coverage.start()


def addini(parser: pytest.Parser) -> None:
    """Register the floor setting (called from conftest's pytest_addoption)."""
    parser.addini(
        "core_branch_coverage",
        "minimum branch coverage of scatterguard.core, in percent, for a full run",
        default="0",
    )


def _full_run(config: pytest.Config) -> bool:
    option = config.option
    if option.keyword or getattr(option, "lf", False) or getattr(option, "deselect", None):
        return False
    if getattr(option, "ignore", None) or getattr(option, "ignore_glob", None):
        return False  # --ignore leaves tests out: a partial run
    args = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    return args == [TESTS]


def finish(session: pytest.Session) -> None:
    """Stop measuring; on a full run, fail the session when core is below the floor."""
    if _coverage is None:
        return
    _coverage.stop()
    floor = float(session.config.getini("core_branch_coverage"))
    if not _full_run(session.config):
        return
    try:
        percent = _coverage.report(file=open(os.devnull, "w"), show_missing=False)  # noqa: SIM115
    except coverage.CoverageException as exc:  # nothing measured at all
        percent, why = 0.0, str(exc)
    else:
        why = ""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = f"scatterguard.core branch coverage: {percent:.1f}% (floor {floor:g}%)"
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line(line + (f" — {why}" if why else ""))
    if percent < floor and session.exitstatus == pytest.ExitCode.OK:
        if reporter is not None:
            _coverage.report(file=reporter._tw, show_missing=True, skip_covered=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
