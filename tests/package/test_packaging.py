"""The packaging files agree with the code: default config, man pages, units, users, install list.

packaging/ holds files a program never reads in the test suite (the conffile, the man pages, the
systemd units, sysusers/tmpfiles); these tests stop them drifting from config.py and cli.py.
debian/copyright is held to what lintian checks of its DEP-5 form, and to the licence files of
the third-party test data. They read only the source tree, so they also run during the Debian
package build.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from scatterguard import config, services
from scatterguard.frontends.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
DEFAULT_CONFIG = PACKAGING / "scatterguard.toml"
MAN8 = PACKAGING / "scatterguard.8"
MAN5 = PACKAGING / "scatterguard.toml.5"
HOOKS_PREFIX = "/usr/share/scatterguard/hooks/"

# authserv_id defaults to the host's FQDN, which a file cannot show; "source" is bookkeeping.
NOT_A_CONSTANT = {"authserv_id"}
NOT_A_KEY = {"source"}

# A commented setting is "#key = value" (no space after "#"); prose comments are "# text".
_SETTING = re.compile(r"^#(?=[a-z_]+ = )", re.MULTILINE)


def _config_keys() -> list[str]:
    """Every key the configuration accepts, as "key" or "section.key", from the dataclasses."""
    keys = []
    for top in dataclasses.fields(config.Config):
        if top.name in NOT_A_KEY:
            continue
        default = getattr(config.Config, top.name, None)
        if dataclasses.is_dataclass(default):
            keys.extend(f"{top.name}.{sub.name}" for sub in dataclasses.fields(default))
        else:
            keys.append(top.name)
    return keys


KEYS = _config_keys()


def _uncommented() -> str:
    return _SETTING.sub("", DEFAULT_CONFIG.read_text())


def _settings_by_section(text: str) -> set[str]:
    """The keys a TOML text sets, as "key" or "section.key"."""
    found = set()
    for name, value in tomllib.loads(text).items():
        if isinstance(value, dict):
            found.update(f"{name}.{key}" for key in value)
        else:
            found.add(name)
    return found


def _roff_text(path: Path) -> str:
    """The man page source with roff's escaped hyphens made plain."""
    return path.read_text().replace("\\-", "-")


def _man5_keys() -> set[str]:
    """The keys scatterguard.toml(5) documents: ".BR key " (type)"" entries under their section."""
    keys = set()
    section = ""
    for line in _roff_text(MAN5).splitlines():
        heading = re.match(r"\.SH \[(\w+)\]$", line)
        if heading:
            section = heading.group(1) + "."
        elif line.startswith(".SH "):
            section = ""
        entry = re.match(r'\.BR (\w+) " \(', line)
        if entry:
            keys.add(section + entry.group(1))
    return keys


def test_shipped_default_config_is_all_comments() -> None:
    """The conffile as shipped sets nothing: every setting in it is commented out."""
    assert _settings_by_section(DEFAULT_CONFIG.read_text()) == set()


def test_default_config_shows_the_builtin_defaults() -> None:
    """Uncommenting every setting of the shipped file gives exactly the built-in defaults."""
    parsed = config.parse(tomllib.loads(_uncommented()))
    builtin = config.Config()
    for key in KEYS:
        if key in NOT_A_CONSTANT:
            continue
        section, _, name = key.rpartition(".")
        mine = getattr(getattr(parsed, section), name) if section else getattr(parsed, name)
        theirs = getattr(getattr(builtin, section), name) if section else getattr(builtin, name)
        assert mine == theirs, key


def test_default_config_lists_every_key() -> None:
    """The shipped file has a commented line for every key the configuration accepts."""
    assert _settings_by_section(_uncommented()) == set(KEYS)


def test_man_page_documents_every_key() -> None:
    """scatterguard.toml(5) has an entry for every key, under its section, and no stale ones."""
    assert _man5_keys() == set(KEYS)


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command of the parser with its own parser, depth first."""
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_commands(sub, (*prefix, name)))
    return found


COMMANDS = _commands(build_parser())


@pytest.mark.parametrize(
    ("words", "parser"), [pytest.param(w, p, id=" ".join(w) or "top") for w, p in COMMANDS]
)
def test_man_page_names_every_command_and_option(
    words: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    """scatterguard(8) shows every subcommand and every long option of the real parser."""
    text = re.sub(r"\\f[BIRP]|\\~|^\.\w+ ?", "", _roff_text(MAN8), flags=re.MULTILINE)
    text = re.sub(r"\s+", " ", text.replace('"', ""))
    if words:
        assert " ".join(words) in text
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option in text, option


def test_man_page_has_exit_codes_and_decision_table() -> None:
    """scatterguard(8) gives the three filter exit codes and the decision table."""
    text = _roff_text(MAN8)
    assert ".SH EXIT STATUS" in text
    for code in ("0", "69", "75"):
        assert f"\n.TP\n.B {code}\n" in text
    table = text[text.index(".SH DECISION") : text.index(".SH EXIT STATUS")]
    assert ".TS" in table
    for action in ("deliver", "quarantine", "defer", "bounce"):
        assert action in table, action


def test_man_page_hook_paths_exist() -> None:
    """Every hooks path scatterguard(8) names is a file or directory in hooks/."""
    text = _roff_text(MAN8)
    named = re.findall(re.escape(HOOKS_PREFIX) + r"[\w./-]*", text)
    assert any(path.endswith("postfix/") for path in named)
    assert any("exim4" in path for path in named)
    for path in named:
        assert (ROOT / "hooks" / path[len(HOOKS_PREFIX) :]).exists(), path
    for relative in re.findall(r"^\.I ((?:main|router|transport)/\w+)$", text, re.MULTILINE):
        assert (ROOT / "hooks/exim4/conf.d" / relative).is_file(), relative


def _unit(name: str) -> dict[str, str]:
    values = {}
    for line in (PACKAGING / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_purge_unit_runs_a_command_the_parser_accepts() -> None:
    """The purge service's ExecStart is a valid "quarantine purge" command line."""
    unit = _unit("scatterguard-purge.service")
    argv = shlex.split(unit["ExecStart"])
    assert argv[0] == "/usr/bin/scatterguard"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.q_command) == ("quarantine", "purge")
    assert unit["User"] == unit["Group"] == "scatterguard"


def test_server_unit_runs_serve_where_filter_looks() -> None:
    """scatterguard.service runs "serve" as the filter's user, in the directory of server.socket."""
    unit = _unit("scatterguard.service")
    argv = shlex.split(unit["ExecStart"])
    assert argv[0] == "/usr/bin/scatterguard"
    assert build_parser().parse_args(argv[1:]).command == "serve"
    assert unit["User"] == unit["Group"] == "scatterguard"
    socket_dir = Path(config.ServerConfig().socket).parent
    assert Path("/run") / unit["RuntimeDirectory"] == socket_dir
    # KillMode=mixed lets the master stop its workers; they may need the whole filter deadline.
    assert unit["KillMode"] == "mixed"
    assert int(unit["TimeoutStopSec"]) > config.Config.timeout
    # Re-injection runs setgid/setuid MTA programs, which NoNewPrivileges would break.
    assert "NoNewPrivileges" not in unit


def test_timer_runs_daily() -> None:
    """The timer fires daily and catches up on a missed run."""
    unit = _unit("scatterguard-purge.timer")
    assert (unit["OnCalendar"], unit["Persistent"], unit["WantedBy"]) == (
        "daily",
        "true",
        "timers.target",
    )


def test_user_and_directories_agree_everywhere() -> None:
    """sysusers, tmpfiles, postinst and the config default name the same user, home and modes."""
    sysusers = [
        shlex.split(line)
        for line in (PACKAGING / "sysusers.d/scatterguard.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert sysusers == [
        ["u", "scatterguard", "-", "scatterguard mail filter", "/var/lib/scatterguard"]
    ]
    tmpfiles = {
        fields[1]: (fields[2], fields[3], fields[4])
        for fields in (
            line.split()
            for line in (PACKAGING / "tmpfiles.d/scatterguard.conf").read_text().splitlines()
            if line and not line.startswith("#")
        )
    }
    quarantine = str(config.QuarantineConfig().directory)
    state = config.StateConfig().directory
    assert str(state) == "/var/lib/scatterguard"
    assert tmpfiles == {
        str(state): ("0750", "scatterguard", "scatterguard"),
        quarantine: ("0700", "scatterguard", "scatterguard"),
        str(state / services.SPOOL): ("0700", "scatterguard", "scatterguard"),
        str(state / services.DELIVERED): ("0700", "scatterguard", "scatterguard"),
    }
    postinst = (ROOT / "debian/postinst").read_text()
    created = dict(re.findall(r"^\tcreate_directory (\S+) (\d+)$", postinst, re.MULTILINE))
    assert created == {path: mode for path, (mode, _, _) in tmpfiles.items()}
    assert "--home /var/lib/scatterguard" in postinst


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(line, id=line.split()[0])
        for line in (ROOT / "debian/install").read_text().splitlines()
        if line and not line.startswith("#")
    ],
)
def test_debian_install_sources_exist(line: str) -> None:
    """Every source that debian/install names exists in the tree."""
    assert (ROOT / line.split()[0]).exists()


def _man8_examples() -> list[str]:
    """The text of every .EX/.EE example in scatterguard(8), roff escapes removed."""
    return re.findall(r"^\.EX\n(.*?)^\.EE$", _roff_text(MAN8), re.MULTILINE | re.DOTALL)


def test_man_page_postfix_service_is_the_shipped_one() -> None:
    """scatterguard(8) shows the pipe service of hooks/postfix/master.cf, word for word."""
    shipped = (ROOT / "hooks/postfix/master.cf").read_text()
    entry = re.search(r"^scatterguard unix.*?(?=^\S|\Z)", shipped, re.MULTILINE | re.DOTALL)
    assert entry is not None
    shown = [text for text in _man8_examples() if text.startswith("scatterguard unix")]
    assert len(shown) == 1
    assert shown[0].split() == entry.group(0).split()


def test_man_page_exim_reinject_command_is_the_documented_one() -> None:
    """The Exim re-injection command in scatterguard(8) is the one hooks/README.md gives."""
    readme = (ROOT / "hooks/README.md").read_text()
    documented = re.search(r"^\s*command = (\[.*\])$", readme, re.MULTILINE)
    assert documented is not None
    shown = [text for text in _man8_examples() if "command = " in text]
    assert len(shown) == 1
    shown_command = tomllib.loads(shown[0])["reinject"]["command"]
    assert shown_command == tomllib.loads(f"c = {documented.group(1)}")["c"]


def _deb822(path: Path) -> list[dict[str, str]]:
    """The paragraphs of a deb822 file: field name → value, continuation lines joined by "\n"."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    name = ""
    for line in [*path.read_text().splitlines(), ""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current = {}
        elif line[0] in " \t":
            current[name] += "\n" + line[1:]
        else:
            name, _, value = line.partition(":")
            current[name] = value.strip()
    return paragraphs


COPYRIGHT = _deb822(ROOT / "debian/copyright")
FILES = [paragraph for paragraph in COPYRIGHT if "Files" in paragraph]
LICENSES = [p["License"] for p in COPYRIGHT if "License" in p and "Files" not in p]


def test_copyright_licences_are_each_defined_once_and_used() -> None:
    """Every short name a Files paragraph uses has one standalone License paragraph, all used.

    lintian: missing-license-paragraph-in-dep5-copyright, dep5-copyright-license-name-not-unique,
    unused-license-paragraph-in-dep5-copyright.
    """
    assert COPYRIGHT[0]["Format"].startswith("https://www.debian.org/doc/packaging-manuals/")
    defined = [text.split("\n", 1)[0] for text in LICENSES]
    assert all("\n" in text for text in LICENSES), "a standalone License paragraph has no text"
    used = {paragraph["License"] for paragraph in FILES}
    assert all("\n" not in name for name in used), "licence text belongs in its own paragraph"
    assert sorted(defined) == sorted(set(defined)) == sorted(used)


def test_copyright_files_patterns_are_in_order_and_match() -> None:
    """The "Files: *" paragraph comes first, and every other pattern matches a file of the tree.

    lintian: global-files-wildcard-not-first-paragraph-in-dep5-copyright,
    wildcard-matches-nothing-in-dep5-copyright.
    """
    patterns = [pattern for paragraph in FILES for pattern in paragraph["Files"].split()]
    assert FILES[0]["Files"] == "*"
    for pattern in patterns[1:]:
        assert any(ROOT.glob(pattern)), f"Files: {pattern} matches nothing"


@pytest.mark.parametrize(
    "licence_file",
    [
        pytest.param(path, id=path.relative_to(ROOT).as_posix())
        for path in sorted((ROOT / "tests" / "data").rglob("*.LICENSE"))
    ],
)
def test_third_party_test_data_is_in_copyright(licence_file: Path) -> None:
    """Test data that came with a licence has its own Files paragraph with that licence's text.

    The paragraph that applies to a file is the last one whose pattern matches it (DEP-5). The
    text is compared word for word, since DEP-5 folds it into indented lines.
    """
    path = licence_file.relative_to(ROOT).as_posix()
    matching = [p for p in FILES if any(fnmatch.fnmatch(path, f) for f in p["Files"].split())]
    paragraph = matching[-1]
    assert paragraph["Files"] != "*", f"{path} falls under Files: *"
    # The notice, then the terms; the one licence so far is BSD, whose terms start so.
    notice, found, terms = licence_file.read_text().partition("Redistribution")
    assert found, f"{path}: where do the licence terms start?"
    holders = re.findall(r"\d{4} ([^<\n]+<[^>]+>)", notice)
    assert holders, f"{path}: no copyright holders found"
    for holder in holders:
        assert holder in paragraph["Copyright"], f"{holder} missing from Copyright"
    (text,) = [t for t in LICENSES if t.split("\n", 1)[0] == paragraph["License"]]
    # " ." stands for an empty line.
    recorded = [line for line in text.split("\n")[1:] if line != "."]
    assert " ".join(recorded).split() == ("Redistribution" + terms).split()
