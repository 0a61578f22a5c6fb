"""The package's layers import only downwards, and ``core/`` is pure (DESIGN.md §Layers).

Standard library only (``ast``), so it runs anywhere the tests run, the Debian package build
included. Every import counts, deferred ones and ``if TYPE_CHECKING:`` ones too: a type-only
import from a layer above is still a dependency on it.

The layers, bottom up:

- the shared root modules (``errors``, ``defaults``, ``trust``, ``duration``, ``startup``,
  ``config``, ``journal``): importable by every layer but ``core``, and importing only each other
  (``config`` and ``journal`` may read ``core`` values: they are below nothing that ``core`` needs);
- ``core/``: pure; it imports only ``core`` and ``errors``, and none of ``os``, ``socket``,
  ``subprocess``, ``time`` (or anything else that touches the world: see ``IMPURE``);
- ``checks/`` (DNS) and ``actions/`` (side effects): ``core`` and the shared modules, never each
  other;
- ``pipeline``: the order of one message;
- ``services``: the composition root;
- ``frontends/``: everything below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "filter" / "scatterguard"
SHARED = {"defaults", "errors", "trust", "duration", "startup", "config", "journal", "metrics"}
ALLOWED: dict[str, set[str]] = {
    "core": {"core", "errors"},
    "checks": {"core", "checks"} | SHARED,
    "actions": {"core", "actions"} | SHARED,
    "pipeline": {"core", "checks", "actions"} | SHARED,
    "services": {"core", "checks", "actions", "pipeline"} | SHARED,
    "frontends": {"core", "checks", "actions", "pipeline", "services", "frontends"} | SHARED,
    "__main__": {"frontends"},
    "__init__": set(),
}
# The shared modules may use each other and read core's values (config builds core's settings);
# nothing above.
SHARED_ALLOWED = SHARED | {"core"}
# Modules the pure core must not import: the world (network, clock, disk, processes, environment).
IMPURE = {
    "os",
    "socket",
    "subprocess",
    "time",
    "select",
    "signal",
    "shutil",
    "tempfile",
    "pathlib",
    "fcntl",
    "io",
    "datetime",
    "random",
    "dns",
    "spf",
    "dkim",
}


def imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """The scatterguard modules (first name after ``scatterguard.``) and the other top-level
    modules that ``tree`` imports, wherever the import statement stands."""
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports are not used; treat one as a breach to look at
                ours.add("<relative>")
            elif node.module == "scatterguard":
                ours |= {alias.name for alias in node.names if alias.name != "__version__"}
            elif node.module and node.module.startswith("scatterguard."):
                ours.add(node.module.split(".")[1])
            elif node.module:
                others.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("scatterguard."):
                    ours.add(alias.name.split(".")[1])
                elif alias.name != "scatterguard":
                    others.add(alias.name.split(".")[0])
    return ours, others


def layer_of(path: Path) -> str:
    """The layer a module file belongs to: its subpackage, or its own name at the root."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def breaches(path: Path, source: str) -> list[str]:
    """What the module at ``path`` (with text ``source``) imports that its layer may not."""
    layer = layer_of(path)
    allowed = ALLOWED.get(layer, SHARED_ALLOWED) | {layer}
    ours, others = imports(ast.parse(source))
    found = [f"scatterguard.{name}" for name in sorted(ours - allowed)]
    if layer == "core":
        found += sorted(others & IMPURE)
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))
SG = "scatterguard"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_import_downwards(path: Path) -> None:
    """A module imports nothing from a layer above its own; core imports nothing impure."""
    assert breaches(path, path.read_text()) == []


def test_every_module_is_in_a_known_layer() -> None:
    """A new root module must be placed in a layer here, not default into one by accident."""
    roots = {layer_of(p) for p in MODULES}
    assert roots <= set(ALLOWED) | SHARED | {"py"}, roots - set(ALLOWED) - SHARED


def test_subpackage_inits_are_empty() -> None:
    """Re-exports in an ``__init__`` would load on every filter start-up (the fast path)."""
    for init in PACKAGE.rglob("__init__.py"):
        if init.parent != PACKAGE:
            assert init.read_text().strip() == "", init


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("core/verdict.py", "import os\n", ["os"]),
        ("core/verdict.py", "from time import monotonic\n", ["time"]),
        ("core/message.py", f"from {SG}.actions.spool import SpoolFile\n", [f"{SG}.actions"]),
        ("core/verdict.py", f"from {SG} import config\n", [f"{SG}.config"]),
        ("checks/dmarc.py", f"from {SG}.actions import reinject\n", [f"{SG}.actions"]),
        ("actions/delivery.py", f"def f():\n    from {SG} import pipeline\n", [f"{SG}.pipeline"]),
        ("pipeline.py", f"from {SG}.frontends import cli\n", [f"{SG}.frontends"]),
        ("config.py", f"from {SG}.frontends import handover\n", [f"{SG}.frontends"]),
        (
            "core/verdict.py",
            f"if TYPE_CHECKING:\n    from {SG}.checks.resolver import Resolver\n",
            [f"{SG}.checks"],
        ),
        ("frontends/server.py", f"from {SG}.frontends import cli\n", []),
        ("core/verdict.py", f"import ipaddress\nfrom {SG}.core import results\n", []),
    ],
)
def test_a_wrong_import_is_caught(where: str, source: str, expected: list[str]) -> None:
    """The checker itself: a deliberately wrong import in each layer is reported (and a right one
    is not), so a pass above means something."""
    assert breaches(PACKAGE / where, source) == expected
