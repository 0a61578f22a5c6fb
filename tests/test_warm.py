"""The resident server's warm imports cover what filtering a message imports.

``serve`` imports :data:`scatterguard.frontends.server.WARM_MODULES` before it forks its workers,
so each worker starts warm and shares those pages with its siblings. A module first imported
while a worker filters is paid for again in every worker, on some message's clock. This runs, in
a fresh interpreter that imports nothing but scatterguard, the warm imports and then a
delivered, two DKIM-signed (RSA, Ed25519), a quarantined (spooled, above 1 MiB) and a
null-sender message through the pipe front end against the loopback DNS server (run by the test
process), and lists what filtering imported on top.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dnsserver import DnsServer
from signing import Signer, sample_message

PROBE = r"""
import io, json, sys
from pathlib import Path
from scatterguard.frontends import server
server.warm_imports()
from scatterguard.config import Config, DnsConfig, QuarantineConfig, ReinjectConfig, StateConfig
from scatterguard.frontends import pipe, request
from scatterguard.services import Services

host, port, work = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
messages = json.loads((work / "messages.json").read_text())


class Quiet:
    def info(self, *args, **values):
        pass

    error = info


config = Config(
    authserv_id="mx.rcpt.example",
    dns=DnsConfig(((host, port),), 0.5),
    reinject=ReinjectConfig(("/bin/sh", "-c", "cat >/dev/null", "-f", "{sender}", "--",
                             "{recipients}")),
    quarantine=QuarantineConfig(work / "quarantine"),
    state=StateConfig(work / "state"),
)
services = Services.from_config(config, logger=Quiet())
before = set(sys.modules)
done = []
for number, (sender, client, name) in enumerate(messages):
    filter_request = request.parse_filter(
        ["filter", "-f", sender, f"--client-address={client}", f"--queue-id=4W{number}", "--",
         "bob@rcpt.example"], {})
    with open(work / name, "rb") as data:
        done.append(pipe.filter_stream(filter_request, data, config, services=services))
print(json.dumps({"done": [d.action.value for d in done],
                  "new": sorted(set(sys.modules) - before)}))
"""

ZONE = """
sender.example. 60 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.sender.example. 60 IN TXT "v=DMARC1; p=reject"
reject.example. 60 IN TXT "v=spf1 -all"
_dmarc.reject.example. 60 IN TXT "v=DMARC1; p=reject"
"""


def test_filtering_imports_nothing_the_warm_list_left_out(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    """Deliver, verify DKIM (RSA and Ed25519), quarantine a spooled message and a null sender:
    no module is imported for the first time on a message's clock."""
    dns_server.records.add_text(ZONE)
    rsa, ed = Signer("sender.example", "s1"), Signer("sender.example", "e1", "ed25519")
    rsa.publish(dns_server)
    ed.publish(dns_server)
    plain = sample_message(from_addr="alice@sender.example")
    files = {
        "rsa": rsa.sign(plain),
        "ed25519": ed.sign(plain),
        "spooled": b"From: ceo@reject.example\r\nSubject: x\r\n\r\n" + b"x" * 2_000_000 + b"\r\n",
        "null": b"From: MAILER-DAEMON@reject.example\r\n\r\nbounce\r\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    messages = [
        ("alice@sender.example", "192.0.2.5", "rsa"),
        ("alice@sender.example", "192.0.2.5", "ed25519"),
        ("ceo@reject.example", "203.0.113.9", "spooled"),
        ("", "203.0.113.9", "null"),
    ]
    (tmp_path / "messages.json").write_text(json.dumps(messages))
    ran = subprocess.run(
        [sys.executable, "-c", PROBE, dns_server.host, str(dns_server.port), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    assert result["done"] == ["deliver", "deliver", "quarantine", "quarantine"]
    assert result["new"] == []
