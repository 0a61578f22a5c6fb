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
import re
import subprocess
import sys
from pathlib import Path

import dkim
import dkim.util
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dkimforge import forge
from dnsserver import DnsServer
from scatterguard.checks.dkim import TagListError, check_dkim, parse_tag_list
from scatterguard.checks.resolver import Resolver
from scatterguard.config import DkimConfig
from scatterguard.core.message import Message
from scatterguard.core.results import DkimResult, Result
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


# --- the property: what we report is what dkimpy verified --------------------------------------

# Bytes that may sit around or inside a tag name: what dkimpy's bytes.strip() removes and what it
# keeps, UTF-8 spaces, C0/C1 controls, punctuation the grammar refuses, and plain ALNUMPUNC.
AROUND = [
    *ODD.values(),
    *(bytes([c]) for c in (*range(0x00, 0x09), 0x0B, 0x0C, 0x0E, 0x1B, 0x1E, 0x7F, 0xA0, 0xFF)),
    b"\r",
    b"\n ",
    b"-",
    b".",
    b"_",
    b"1",
    b":",
    b"'",
    b'"',
    b"=",
    b"\xef\xbb\xbf",  # a byte order mark
    b"\xe2\x80\x8b",  # a zero-width space
]
SPACES = [b"", b"", b" ", b"\t", b"  ", b"\r\n ", b"\r\n\t", b" \r\n ", b"\n ", b"\r\n \r\n "]
VALUES: dict[bytes, list[bytes]] = {
    b"v": [b"1", b"2", b""],
    b"a": [b"rsa-sha256", b"RSA-SHA256", b"ed25519-sha256", b"rsa-sha1"],
    b"c": [b"relaxed/relaxed", b"relaxed", b"Relaxed/relaxed"],
    b"d": [
        ATTACKER.encode(),
        b"Attacker.EXAMPLE",
        VICTIM.encode(),
        b"attacker.example victim.example",
        b"victim.example\r\n attacker.example",
        b"attacker.example.",
        b"",
    ],
    b"s": [b"s1", b"S1", b"s2", b"s1 s1", b""],
    b"h": [b"from:to:subject", b"from", b"From : To", b"to:subject", b"from:\r\n to"],
    b"bh": [b"BH", b"BH;", b"AAAA"],
    b"i": [
        b"@attacker.example",
        b"x@sub.attacker.example",
        b"@victim.example",
        b"attacker.example",
    ],
    b"l": [b"0", b"1000", b""],
    b"q": [b"dns/txt"],
    b"t": [b"1700000000"],
    b"x": [b"4000000000", b"1000000000"],
    b"z": [b"From:x b=AAAA", b"foo\r\n b=x", b"a=b"],
}
REQUIRED = (b"v", b"a", b"c", b"d", b"s", b"h", b"bh")


@st.composite
def tag_specs(draw: st.DrawFn) -> list[bytes]:
    """Tag specs (no ";"): a usable signature's, in any order and folding, then up to four edits.

    An edit puts an odd byte before, after or inside a tag name (the class of the finding),
    gives a tag another listed or arbitrary value, adds a tag (a duplicate, an odd name, a
    second ``d``), or drops one.
    """
    tags = [[name, VALUES[name][0]] for name in draw(st.permutations(REQUIRED))]
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(tags) - 1))
        name, value = tags[index]
        edit = draw(st.integers(0, 5))
        if edit == 0:
            odd = draw(st.sampled_from(AROUND))
            cut = draw(st.integers(0, len(name)))
            tags[index][0] = draw(st.sampled_from([name + odd, odd + name, name[:cut] + odd]))
        elif edit == 1:
            tags[index][1] = draw(st.sampled_from(VALUES.get(name, [value])))
        elif edit == 2:
            tags[index][1] = draw(st.binary(max_size=6)) + draw(st.sampled_from([b"", *AROUND]))
        elif edit == 3:
            extra = draw(st.sampled_from([*VALUES, b"D", b"dd", b"x1", b"_d"]))
            if draw(st.booleans()):
                extra += draw(st.sampled_from(AROUND))
            choices = VALUES.get(extra, [VICTIM.encode(), ATTACKER.encode(), b"x"])
            tags.insert(draw(st.integers(0, len(tags))), [extra, draw(st.sampled_from(choices))])
        elif edit == 4 and len(tags) > 1:
            del tags[index]
        else:
            tags.insert(index, [b"d" + draw(st.sampled_from(AROUND)), VICTIM.encode()])
    specs = []
    for name, value in tags:
        spaces = [draw(st.sampled_from(SPACES)) for _ in range(4)]
        specs.append(spaces[0] + name + spaces[1] + b"=" + spaces[2] + value + spaces[3])
    return specs


def _field_template(specs: list[bytes], b_name: bytes) -> bytes:
    """The value after the colon: the specs, then ``b_name=`` where the signature goes."""
    template = b" " + b";".join([*specs, b" " + b_name + b"="])
    # A line break must stay inside the field (folding), or the message would have another shape.
    return re.sub(rb"\r?\n(?![ \t])", b"\r\n ", template.replace(b"\r\n", b"\n")).replace(
        b"\r\r", b"\r"
    )


def _dkimpy_view(signed: bytes) -> bytes:
    """The DKIM-Signature value as dkimpy itself reads the message (``rfc822_parse``)."""
    headers, _body = dkim.rfc822_parse(signed)
    (value,) = [v for n, v in headers if n.lower() == b"dkim-signature"]
    return bytes(value)


def test_reported_tags_are_the_ones_dkimpy_verified(
    dns_server: DnsServer, resolver: Resolver
) -> None:
    """For arbitrary tag lists signed with the attacker's real key: the d=, s=, a= and header.b we
    report are always dkimpy's parse of the field, and a pass is a pass for dkimpy too."""
    attacker = _attacker()
    victim = Signer(VICTIM, "s1", key_index=1)  # the victim's own key: the attacker lacks it
    attacker.publish(dns_server)
    victim.publish(dns_server)
    keys = {attacker.name + ".": attacker.record(), victim.name + ".": victim.record()}
    seen: dict[str, int] = {}

    def dnsfunc(name: bytes, timeout: float = 5.0) -> bytes | None:
        record = keys.get(name.decode("ascii", "replace").lower())
        return record.encode() if record is not None else None

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        specs=tag_specs(),
        b_name=st.sampled_from([b"b"] * 6 + [b"b\xc2\xa0", b"B", b"b ", b"\x1fb"]),
        linesep=st.sampled_from([b"\r\n", b"\n"]),
    )
    def check(specs: list[bytes], b_name: bytes, linesep: bytes) -> None:
        message = sample_message(
            from_addr=f"ceo@{VICTIM}", to_addr="bob@rcpt.example", linesep=linesep
        )
        template = _field_template(specs, b_name)
        signed = forge(message, template, attacker.key.private, linesep=linesep) + message
        (result,) = _check(resolver, signed)
        seen[result.result.value] = seen.get(result.result.value, 0) + 1
        try:
            truth: dict[bytes, bytes] | None = dkim.util.parse_tag_value(_dkimpy_view(signed))
        except dkim.util.InvalidTagValueList:
            truth = None
        reported = (result.domain, result.selector, result.algorithm, result.b_prefix)
        if truth is None:
            assert reported == (None,) * 4, result
            assert result.result is Result.PERMERROR, result
            return
        if result.domain is not None:
            assert result.domain == truth[b"d"].decode("ascii").lower(), (result, truth)
        if result.selector is not None:
            assert result.selector == truth[b"s"].decode("ascii"), (result, truth)
        if result.algorithm is not None:
            assert result.algorithm == truth[b"a"].decode("ascii"), (result, truth)
        if result.b_prefix is not None:
            assert re.sub(rb"\s+", b"", truth[b"b"]).decode().startswith(result.b_prefix)
        if result.result is Result.PASS:
            assert result.domain == ATTACKER, (result, truth)
            verifier = dkim.DKIM(signed, minkey=1024)
            assert verifier.verify(dnsfunc=dnsfunc), (result, truth)
            assert (verifier.domain, verifier.selector) == (truth[b"d"], truth[b"s"])
            # DNS names are case-insensitive (RFC 4343): s=S1 is the attacker's s1 key.
            assert ((result.selector or "").lower(), result.algorithm) == ("s1", "rsa-sha256")

    check()
    # The generator reaches every side of the property: signatures that verify and ones that
    # do not, fields outside the grammar among them.
    assert seen.get("pass", 0) >= 10, seen
    assert seen.get("permerror", 0) >= 10, seen


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        tag_specs().map(lambda specs: b";".join(specs)),
        st.binary(max_size=40),
        st.lists(st.sampled_from([b"d", b"=", b";", b" ", b"\r\n ", b"x", *AROUND])).map(b"".join),
    )
)
def test_our_parse_is_dkimpys_whenever_it_accepts(value: bytes) -> None:
    """parse_tag_list accepts a tag list only when dkimpy's parse gives the very same dict."""
    try:
        ours = parse_tag_list(value)
    except TagListError:
        return
    assert dkim.util.parse_tag_value(value) == ours
