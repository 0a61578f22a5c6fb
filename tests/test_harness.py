"""The e2e harness's Postfix configuration merges are idempotent, without a Postfix.

``tests/e2e/harness.py`` appends ``hooks/postfix/main.cf`` to ``/etc/postfix/main.cf`` and puts
the entries of ``hooks/postfix/master.cf`` in place of Debian's. A main.cf that already carries
the hook's lines (a run killed before it restored the file, a postmaster who followed
hooks/README.md) must come out with each parameter defined once, or ``postconf`` warns
"overriding earlier entry" and the harness fails; the rest of the file stays byte for byte.
These are pure functions over text, tested here on the shipped hook files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e2e import harness
from e2e.harness import HOOKS, merge_main_cf, merge_master_cf

HOOK_MAIN = (HOOKS / "postfix" / "main.cf").read_text()
HOOK_MASTER = (HOOKS / "postfix" / "master.cf").read_text()

# The start of Debian 12's main.cf (/usr/share/postfix/main.cf.debian) with a few of an
# admin's own lines: a parameter continued over two lines, a commented-out hook parameter.
DEBIAN_MAIN = """\
# See /usr/share/postfix/main.cf.dist for a commented, more complete version


# Debian specific:  Specifying a file name will cause the first
# line of that file to be used as the name.  The Debian default
# is /etc/mailname.
#myorigin = /etc/mailname

smtpd_banner = $myhostname ESMTP $mail_name (Debian/GNU)
biff = no

# appending .domain is the MUA's job.
append_dot_mydomain = no
smtpd_recipient_restrictions = permit_mynetworks,
    reject_unauth_destination
#scatterguard_time_limit = 1000s
compatibility_level = 3.6
"""

# Debian 12's master.cf, abridged: the smtp entry the hook replaces, commented entries, and
# services with continuation lines.
DEBIAN_MASTER = """\
#
# Postfix master process configuration file.
#
# ==========================================================================
# service type  private unpriv  chroot  wakeup  maxproc command + args
#               (yes)   (yes)   (no)    (never) (100)
# ==========================================================================
smtp      inet  n       -       y       -       -       smtpd
#smtp      inet  n       -       y       -       1       postscreen
#smtpd     pass  -       -       y       -       -       smtpd
#submission inet n       -       y       -       -       smtpd
#  -o syslog_name=postfix/submission
pickup    unix  n       -       y       60      1       pickup
cleanup   unix  n       -       y       -       0       cleanup
maildrop  unix  -       n       n       -       -       pipe
  flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}
uucp      unix  -       n       n       -       -       pipe
  flags=Fqhu user=uucp argv=uux -r -n -z -a$sender - $nexthop!rmail ($recipient)
"""


def definitions(text: str) -> list[str]:
    """The parameter names main.cf ``text`` defines, in order, once per definition."""
    return re.findall(r"^([A-Za-z0-9_]+)[ \t]*=", text, re.MULTILINE)


def hook_names() -> list[str]:
    return definitions(HOOK_MAIN)


def test_hook_main_cf_defines_parameters() -> None:
    """The shipped main.cf lines define the two scatterguard_* parameters (else nothing to test)."""
    assert hook_names() == ["scatterguard_time_limit", "scatterguard_destination_recipient_limit"]


def test_main_cf_is_appended_to_a_clean_file_as_before() -> None:
    """A main.cf without the hook gets it appended after one blank line, nothing else changed."""
    assert merge_main_cf(DEBIAN_MAIN, HOOK_MAIN) == DEBIAN_MAIN + "\n" + HOOK_MAIN


@pytest.mark.parametrize(
    "earlier",
    [
        pytest.param(DEBIAN_MAIN + "\n" + HOOK_MAIN, id="appended-before"),
        pytest.param(DEBIAN_MAIN + "\n" + HOOK_MAIN + "\n" + HOOK_MAIN, id="appended-twice"),
        pytest.param(HOOK_MAIN + "\n" + DEBIAN_MAIN, id="hook-block-first"),
        pytest.param(
            DEBIAN_MAIN.replace(
                "biff = no\n", "biff = no\n" + HOOK_MAIN.replace("400s", "600s") + "\n"
            ),
            id="edited-copy-in-the-middle",
        ),
    ],
)
def test_main_cf_with_earlier_hook_lines_gets_them_once(earlier: str) -> None:
    """An earlier copy of the hook, exact or edited, anywhere in main.cf: one definition each."""
    merged = merge_main_cf(earlier, HOOK_MAIN)
    assert merged.endswith("\n\n" + HOOK_MAIN)
    assert sorted(definitions(merged)) == sorted(definitions(DEBIAN_MAIN) + hook_names())
    assert merge_main_cf(merged, HOOK_MAIN) == merged


def test_main_cf_admin_definitions_of_hook_parameters_go_with_their_continuations() -> None:
    """The admin's own definition of a hook parameter, continuation line and all, is replaced."""
    base = DEBIAN_MAIN + "scatterguard_time_limit =\n    600s\nmynetworks = 127.0.0.0/8\n"
    merged = merge_main_cf(base, HOOK_MAIN)
    assert merged == DEBIAN_MAIN + "mynetworks = 127.0.0.0/8\n\n" + HOOK_MAIN
    assert "600s" not in merged


def test_main_cf_other_lines_are_kept_byte_for_byte() -> None:
    """Lines the hook does not define stay as they were: spacing, comments, CRLF, other names."""
    admin = (
        "smtpd_banner   =   $myhostname ESMTP\r\n"
        "# scatterguard_time_limit = 10s (a comment, not a definition)\n"
        "scatterguard_initial_destination_concurrency = 2\n"
        "  \n"
        "scatterguard_time_limit_extra = 1\n"
    )
    merged = merge_main_cf(admin + "scatterguard_time_limit = 10s\n", HOOK_MAIN)
    assert merged == admin.rstrip("\n") + "\n\n" + HOOK_MAIN


# Lines a main.cf may hold: the admin's, comments, blanks, continuations, the hook's own lines.
MAIN_CF_LINES = st.sampled_from(
    [
        "biff = no",
        "smtpd_banner = $myhostname ESMTP",
        "    reject_unauth_destination",
        "",
        "# a comment",
        "#scatterguard_time_limit = 1s",
        "scatterguard_time_limit = 600s",
        "scatterguard_time_limit=1",
        "scatterguard_destination_recipient_limit = 1",
        "scatterguard_initial_destination_concurrency = 2",
        *HOOK_MAIN.splitlines(),
        HOOK_MAIN.rstrip("\n"),
    ]
)


@given(st.lists(MAIN_CF_LINES, max_size=30))
def test_main_cf_merge_is_idempotent_and_defines_each_hook_parameter_once(
    lines: list[str],
) -> None:
    """Whatever main.cf holds, one hook copy ends the merge, and a second merge changes nothing."""
    base = "\n".join(lines) + "\n"
    merged = merge_main_cf(base, HOOK_MAIN)
    assert merge_main_cf(merged, HOOK_MAIN) == merged
    assert merged.endswith(HOOK_MAIN)
    found = definitions(merged)
    assert all(found.count(name) == 1 for name in hook_names())
    # Every definition of another parameter survives, in order.
    others = [name for name in definitions(base) if name not in hook_names()]
    assert [name for name in found if name not in hook_names()] == others


def test_master_cf_merge_replaces_smtp_and_adds_the_pipe_service() -> None:
    """The hook's smtp entry replaces Debian's in place; its pipe service goes at the end."""
    merged = merge_master_cf(DEBIAN_MASTER, HOOK_MASTER)
    assert merged.count("\nsmtp      inet") == 1
    assert "  -o content_filter=scatterguard:dummy\n" in merged
    assert merged.count("\nscatterguard unix") == 1
    assert merged.index("\nsmtp      inet") < merged.index("\npickup")
    # The commented submission example in the hook adds nothing.
    assert merged.count("#submission inet") == 1


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(DEBIAN_MASTER, id="debian"),
        pytest.param(merge_master_cf(DEBIAN_MASTER, HOOK_MASTER), id="merged-before"),
        pytest.param(
            DEBIAN_MASTER
            + "scatterguard unix -       n       n       -       1       pipe\n"
            + "  flags=R user=scatterguard argv=/usr/local/bin/scatterguard filter\n"
            + "  -- ${recipient}\n",
            id="older-pipe-service",
        ),
    ],
)
def test_master_cf_merge_is_idempotent(base: str) -> None:
    """Merging master.cf twice gives what merging it once gives, with one entry per service."""
    once = merge_master_cf(base, HOOK_MASTER)
    assert merge_master_cf(once, HOOK_MASTER) == once
    assert once.count("\nscatterguard unix") == 1
    assert "/usr/local/bin/scatterguard" not in once
    assert once.count("content_filter=scatterguard:dummy") == 1


def test_postfix_start_purges_mail_left_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mail left in the maildrop before the tests (CI once found a message submitted hours
    earlier, which the error transport bounced mid-test) is removed before Postfix starts,
    and the queue is emptied with postsuper: ``postsuper -d ALL`` does not touch maildrop."""
    calls: list[list[str]] = []
    monkeypatch.setattr(harness, "run", lambda argv, **_: calls.append(list(argv)))
    maildrop = tmp_path / "maildrop"
    maildrop.mkdir()
    for name in ("DE05E1608A7", "0E08B1608D3"):
        (maildrop / name).write_bytes(b"T1765000000 0\n")
    postfix = harness.Postfix()
    monkeypatch.setattr(postfix, "spool", tmp_path)
    postfix.purge_foreign_mail()
    assert list(maildrop.iterdir()) == []
    assert calls == [["postsuper", "-d", "ALL"]]
    postfix.purge_foreign_mail()  # nothing left: no error
