"""The commands the documentation gives work as root on a Debian 12 that has no ``sudo``.

A Debian 12 installed with a root password has no ``sudo``, and ``sudo tests/all`` answers
"sudo: command not found" there. Every command that needs root is documented to be run as root
instead: the fenced code blocks of the READMEs and of CONTRIBUTING.md, and the usage lines in
the scripts' header comments, name no ``sudo``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = ["README.md", "CONTRIBUTING.md", "bench/README.md", "hooks/README.md"]
# Scripts whose header comment shows how to run them.
SCRIPTS = [
    "tests/all",
    "tests/package/run",
    "tests/e2e/install-mtas",
    "bench/run",
    "bench/loadfault",
]
SUDO = re.compile(r"\bsudo\b")


def fenced_blocks(markdown: str) -> list[str]:
    """The contents of the ``` fenced code blocks of a Markdown text, indented ones included."""
    return re.findall(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[ \t]*$", markdown, re.M | re.S)


def test_fenced_blocks_are_found() -> None:
    """The block reader finds what the READMEs show (else the test below would prove nothing)."""
    blocks = fenced_blocks((ROOT / "README.md").read_text())
    assert "tests/all\n" in blocks
    assert fenced_blocks("text\n\n   ```toml\n   a = 1\n   ```\n") == ["   a = 1\n"]


@pytest.mark.parametrize("readme", READMES)
def test_readme_commands_use_no_sudo(readme: str) -> None:
    """No command in a README's code blocks starts with, or needs, sudo."""
    blocks = fenced_blocks((ROOT / readme).read_text())
    assert blocks, f"{readme} has no code blocks"
    found = [line for block in blocks for line in block.splitlines() if SUDO.search(line)]
    assert found == [], f"{readme} documents sudo: {found}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_headers_use_no_sudo(script: str) -> None:
    """The comment lines of a script that needs root say "as root", not "sudo"."""
    lines = (ROOT / script).read_text().splitlines()
    found = [line for line in lines if line.lstrip().startswith("#") and SUDO.search(line)]
    assert found == [], f"{script}: {found}"


def test_readme_runs_all_tests_as_root() -> None:
    """The README's "Run all tests" section gives ``tests/all`` and says to run it as root."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Run all tests\n", 1)[1].split("\n## ", 1)[0]
    assert fenced_blocks(section) == ["tests/all\n"]
    assert "as root" in section
