"""One version: ``scatterguard.__version__``, and everything that states one agrees with it.

pyproject.toml reads the version from the package (setuptools' ``attr:``); debian/changelog's top
entry, CHANGELOG.md's newest released section and ``scatterguard --version`` must say the same,
so a release cannot bump one and forget another. Standard library only: no dpkg-parsechangelog.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import scatterguard

ROOT = Path(__file__).resolve().parents[1]

# debian-policy §5.6.12: [epoch:]upstream_version[-debian_revision]; the top line of the entry
# is "package (version) distribution; urgency=...".
DEBIAN_ENTRY = re.compile(r"^(?P<package>[a-z0-9][a-z0-9+.-]+) \((?P<version>[^)\s]+)\) ")
# Keep a Changelog: "## [1.2.3] - 2026-11-27"; this file writes "## 1.2.3 — 2026-11-27".
RELEASE_HEADING = re.compile(r"^## \[?(?P<version>\d+\.\d+\.\d+[^\]\s]*)\]?(?:\s|$)")


def debian_upstream_version(changelog: str) -> str:
    """The upstream part of the newest entry's version: no epoch, no Debian revision."""
    entry = DEBIAN_ENTRY.match(changelog)
    assert entry is not None, f"debian/changelog starts with {changelog.splitlines()[0]!r}"
    assert entry["package"] == "scatterguard"
    version = entry["version"].split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def newest_release(changelog: str) -> str:
    """The version of the first "## x.y.z" section, past "## Unreleased"."""
    for line in changelog.splitlines():
        heading = RELEASE_HEADING.match(line)
        if heading:
            return heading["version"]
    raise AssertionError("CHANGELOG.md has no released section (## x.y.z)")


def test_version_is_a_release_number() -> None:
    """The package's version is a plain x.y.z (PEP 440 release segment)."""
    assert re.fullmatch(r"\d+\.\d+\.\d+", scatterguard.__version__)


def test_pyproject_reads_the_version_from_the_package() -> None:
    """pyproject.toml states no version of its own: setuptools takes ``__version__``."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "scatterguard.__version__"}


def test_debian_changelog_is_for_this_version() -> None:
    """The newest debian/changelog entry packages ``__version__`` (before the last "-")."""
    changelog = (ROOT / "debian" / "changelog").read_text()
    assert debian_upstream_version(changelog) == scatterguard.__version__


def test_changelog_newest_release_is_this_version() -> None:
    """CHANGELOG.md's newest released section is ``__version__``."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert newest_release(changelog) == scatterguard.__version__


def test_command_prints_this_version() -> None:
    """``scatterguard --version`` prints "scatterguard" and ``__version__``, and exits 0."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    done = subprocess.run(
        [sys.executable, "-m", "scatterguard", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"scatterguard {scatterguard.__version__}\n"


def test_readers_take_the_versions_apart_as_specified() -> None:
    """The two readers above on the forms their formats allow: epochs, revisions, brackets."""
    backport = "scatterguard (1:2.0.1-0.1~bpo12+1) bookworm-backports; urgency=low\n"
    assert debian_upstream_version(backport) == "2.0.1"
    # A hyphen in the upstream version: the Debian revision is after the last one.
    assert (
        debian_upstream_version("scatterguard (2.0.1-rc1-3) unstable; urgency=low\n") == "2.0.1-rc1"
    )
    assert debian_upstream_version("scatterguard (2.0.1) unstable; urgency=low\n") == "2.0.1"
    assert newest_release("## Unreleased\n\n## [1.4.0] - 2026-12-01\n## [1.3.9]\n") == "1.4.0"
    assert newest_release("# Changelog\n## 0.2.0 — 2026-12-01\n## 0.1.0\n") == "0.2.0"
