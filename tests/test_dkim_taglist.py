"""One reading of a DKIM-Signature tag list (issue 12 item 1): what dkimpy verified, we report.

An attacker signs a field with his own key for ``d=attacker.example`` and adds a tag whose name
is ``d`` followed by a character dkimpy does not strip (a non-ASCII space, a C0 or C1 control)
and whose value is ``victim.example``. dkimpy reads an unknown tag and verifies the signature; a
lenient second parser that strips more read ``d=victim.example``, and DMARC passed for the
victim. Here every such field is ``permerror`` (RFC 6376 §3.2: ``tag-name = ALPHA *ALNUMPUNC``),
and a property test shows that the ``d=``, ``s=`` and ``a=`` reported always come from the dict
dkimpy verified with, for arbitrary tag lists signed with a real key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dkimforge import forge
from dnsserver import DnsServer
from scatterguard.config import DkimConfig
from scatterguard.dkimcheck import check_dkim
from scatterguard.message import Message
from scatterguard.resolver import Resolver
from scatterguard.results import DkimResult, Result
from signing import Signer, sample_message
from test_filter import Filter

ATTACKER = "attacker.example"
VICTIM = "victim.example"
CLIENT = "192.0.2.66"  # the attacker's own host: no SPF anywhere authorises it
# victim.example publishes p=reject and no SPF record (SPF none for its MAIL FROM), so before
# the fix a DKIM pass under d=victim.example also counted as a verified reverse-path.
ZONE = f"""
_dmarc.{VICTIM}. 300 IN TXT "v=DMARC1; p=reject"
{ATTACKER}. 300 IN TXT "v=spf1 -all"
"""

# Characters before "=" that dkimpy's bytes.strip() keeps and str.strip() (the old lenient
# parser) removed: non-ASCII spaces in UTF-8, C1 controls, the C0 separators \x1c-\x1f.
ODD = {
    "nbsp": b"\xc2\xa0",
    "nel": b"\xc2\x85",
    "c1-raw": b"\x85",
    "fs": b"\x1c",
    "us": b"\x1f",
    "en-quad": b"\xe2\x80\x80",
    "ideographic-space": b"\xe3\x80\x80",
    "line-separator": b"\xe2\x80\xa8",
    "nbsp-then-space": b"\xc2\xa0 ",
    "space-then-nbsp": b" \xc2\xa0",
}


def _attacker() -> Signer:
    return Signer(ATTACKER, "s1")


def _spoof(odd: bytes, *, linesep: bytes = b"\r\n", after: bool = False) -> bytes:
    """A message From the victim, signed for real by the attacker, with a ``d<odd>=victim`` tag."""
    message = sample_message(from_addr=f"ceo@{VICTIM}", to_addr="bob@rcpt.example", linesep=linesep)
    fake = b"d" + odd + b"=" + VICTIM.encode() + b"; "
    real = b"d=" + ATTACKER.encode() + b"; "
    tags = b" v=1; a=rsa-sha256; c=relaxed/relaxed; " + (real + fake if after else fake + real)
    tags += b"s=s1;\r\n\th=from:to:subject; bh=BH;\r\n\tb="
    return forge(message, tags, _attacker().key.private, linesep=linesep) + message


def _check(resolver: Resolver, data: bytes) -> tuple[DkimResult, ...]:
    return check_dkim(resolver, Message(data), DkimConfig(), timeout=resolver.timeout)


# --- the finding -------------------------------------------------------------------------------


@pytest.mark.parametrize("odd", [pytest.param(v, id=k) for k, v in ODD.items()])
@pytest.mark.parametrize("after", [False, True], ids=["fake-first", "fake-after"])
def test_odd_tag_name_is_not_read_as_d(
    dns_server: DnsServer, resolver: Resolver, odd: bytes, after: bool
) -> None:
    """``d<odd>=victim`` beside a real ``d=attacker``: permerror, no victim domain reported."""
    _attacker().publish(dns_server)

    (result,) = _check(resolver, _spoof(odd, after=after))

    assert result.domain != VICTIM
    assert result.result is Result.PERMERROR, result
    assert (result.domain, result.selector, result.algorithm, result.b_prefix) == (None,) * 4


def _run(mta: Filter, command: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SCATTERGUARD_")}
    argv = [sys.executable, "-m", "scatterguard", "--config", str(mta.config), *command]
    return subprocess.run(
        argv, input=data, capture_output=True, timeout=60, env=environ, check=False
    )


ENVELOPE = [f"--sender=ceo@{VICTIM}", f"--client-address={CLIENT}", "--helo=mx.attacker.example"]


@pytest.mark.parametrize("odd", [pytest.param(ODD[k], id=k) for k in ("nbsp", "nel", "us")])
def test_spoof_of_reject_domain_through_check_and_filter(
    tmp_path: Path, dns_server: DnsServer, odd: bytes
) -> None:
    """End to end: no dkim or dmarc pass for the victim, no verified reverse-path, no bounce."""
    dns_server.records.add_text(ZONE)
    _attacker().publish(dns_server)
    mta = Filter(tmp_path, dns_server)
    data = _spoof(odd, linesep=b"\n")

    done = _run(mta, ["check", "--json", *ENVELOPE, "--", "bob@rcpt.example"], data)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    (sig,) = document["dkim"]
    assert sig["result"] == "permerror"
    assert sig["domain"] is None
    assert document["dmarc"]["result"] == "fail"
    assert document["reverse_path_verified"] is False
    assert document["action"] == "quarantine"
    assert "dkim=pass" not in document["authentication_results"]
    dkim_clause = document["authentication_results"].split("dkim=")[1].split("dmarc=")[0]
    assert dkim_clause == "permerror; "

    done = mta.run([*ENVELOPE, "--queue-id=4AbCdE", "--", "bob@rcpt.example"], data)
    # Quarantined (exit 0, nothing re-injected), never bounced (69) to the forged sender.
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert mta.sendmail.calls == []
    assert len(mta.entries()) == 1
