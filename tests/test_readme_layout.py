"""The README's Layout table is true to the tree: every module is named, nothing named is gone.

The table (README.md §Layout) has one row per package directory or group of root modules, and
one per top-level directory. A row's first cell is a path in backticks; in a row under
``filter/scatterguard/`` every backticked ``name.py`` in the second cell is a module of that
directory. Every module of the package must be named (empty subpackage ``__init__.py`` files
aside: they hold nothing), every named module must exist, and so must every directory and file
the other rows name. Standard library only, so it also runs in the Debian package build.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_PATH = "filter/scatterguard/"
PACKAGE = ROOT / PACKAGE_PATH
CODE = re.compile(r"`([^`]+)`")
MODULE = re.compile(r"^\w+\.py$")
# A backticked token in a non-package row that names a file or directory of the checkout.
PATHLIKE = re.compile(r"^[\w.-]+(/[\w.-]+)*/?$")


def layout_rows(readme: str) -> list[tuple[str, str]]:
    """The (path, holds) rows of the table in the README's ``## Layout`` section: the path is
    the first backticked text of the first cell."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 2, f"a Layout row has {len(cells)} cells, not 2: {line}"
        paths = CODE.findall(cells[0])
        if paths:  # the header row has none
            rows.append((paths[0], cells[1]))
    return rows


def named_modules(rows: list[tuple[str, str]]) -> set[str]:
    """The package modules the table names, as paths relative to the checkout."""
    return {
        path + name
        for path, holds in rows
        if path.startswith(PACKAGE_PATH)
        for name in CODE.findall(holds)
        if MODULE.match(name)
    }


def package_modules() -> set[str]:
    """Every module of the package, but the empty ``__init__.py`` of a subpackage."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*.py")
        if not (path.name == "__init__.py" and not path.read_text().strip())
    }


ROWS = layout_rows((ROOT / "README.md").read_text())


def test_table_is_read() -> None:
    """The parser finds the rows and their modules (else the tests below would prove nothing)."""
    sample = (
        "intro\n## Layout\n\ntext\n\n| path | holds |\n|---|---|\n"
        "| `filter/scatterguard/core/` | pure: `verdict.py` `decide()`; `results.py` words |\n"
        "| `hooks/` | snippets (`hooks/README.md`) |\n\n## Next\n| `x/` | not here |\n"
    )
    rows = layout_rows(sample)
    assert [path for path, _ in rows] == ["filter/scatterguard/core/", "hooks/"]
    assert named_modules(rows) == {
        "filter/scatterguard/core/verdict.py",
        "filter/scatterguard/core/results.py",
    }
    assert "filter/scatterguard/core/verdict.py" in named_modules(ROWS)


def test_every_module_is_named() -> None:
    """Each module of the package (a new one included) appears in the README's Layout table."""
    missing = sorted(package_modules() - named_modules(ROWS))
    assert missing == [], f"README.md §Layout does not name: {missing}"


def test_every_named_module_exists() -> None:
    """No module the Layout table names has been moved, renamed or removed."""
    gone = sorted(named_modules(ROWS) - package_modules())
    assert gone == [], f"README.md §Layout names modules that do not exist: {gone}"


def test_every_named_directory_and_file_exists() -> None:
    """Each row's path is a directory of the checkout, and each file or directory named in a
    row outside the package exists (relative to the checkout or to the row's path)."""
    absent = [path for path, _ in ROWS if not (ROOT / path).is_dir()]
    for path, holds in ROWS:
        if path.startswith(PACKAGE_PATH):
            continue
        for token in CODE.findall(holds):
            if not (PATHLIKE.match(token) and ("/" in token or token.endswith((".py", ".md")))):
                continue
            if not ((ROOT / token).exists() or (ROOT / path / token).exists()):
                absent.append(f"{path}: {token}")
    assert absent == [], f"README.md §Layout names what does not exist: {absent}"


def test_every_package_directory_has_a_row() -> None:
    """The table names each package directory, so a new subpackage gets its own row."""
    directories = {path.parent.relative_to(ROOT).as_posix() + "/" for path in PACKAGE.rglob("*.py")}
    rows = {path for path, _ in ROWS}
    assert sorted(directories - rows) == []
