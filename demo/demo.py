"""The scatterguard demo: four messages, four decisions, no network beyond loopback.

It starts the test suite's DNS server on loopback with a small zone (SPF, DMARC and a DKIM key
generated now), signs a sample message, and runs ``scatterguard check`` on each sample exactly as
a postmaster would, printing what the filter would do and why.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dnsserver import DnsServer  # noqa: E402 - found through the path set just above
from signing import Signer  # noqa: E402

ZONE = """
news.example.        300 IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.news.example. 300 IN TXT "v=DMARC1; p=reject; adkim=s"
bank.example.        300 IN TXT "v=spf1 ip4:192.0.2.200 -all"
_dmarc.bank.example. 300 IN TXT "v=DMARC1; p=reject"
partner.example.     300 IN TXT "v=spf1 ip4:198.51.100.0/24 -all"
slow.example.        300 IN TXT "v=spf1 -all"
"""


def message(sender: str, subject: str) -> bytes:
    return (
        f"From: {sender}\nTo: you@rcpt.example\nSubject: {subject}\n"
        f"Date: Fri, 27 Nov 2026 06:00:00 +0000\nMessage-ID: <{subject.replace(' ', '-')}@demo>\n"
        "\nHello from the scatterguard demo.\n"
    ).encode()


def main() -> int:
    with DnsServer() as dns, tempfile.TemporaryDirectory() as tmp:
        dns.records.add_text(ZONE)
        dns.fault("slow.example", "timeout")
        signer = Signer("news.example", "s2026", "ed25519")
        signer.publish(dns)
        config = Path(tmp) / "scatterguard.toml"
        config.write_text(
            'authserv_id = "mx.rcpt.example"\n'
            f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = 1.0\n'
            f'[quarantine]\ndirectory = "{tmp}/quarantine"\n'
        )
        samples = [
            (
                "A DKIM-signed newsletter from its own servers",
                ["-f", "bounces@news.example", "--client-address", "192.0.2.10"],
                signer.sign(message("News <letter@news.example>", "weekly news")),
            ),
            (
                "A forgery of bank.example (p=reject) from a stranger's IP",
                ["-f", "security@bank.example", "--client-address", "203.0.113.66"],
                message("Bank <security@bank.example>", "verify your account"),
            ),
            (
                "bank.example in From, but a verified partner.example reverse-path",
                ["-f", "mailer@partner.example", "--client-address", "198.51.100.20"],
                message("Bank <notice@bank.example>", "statement"),
            ),
            (
                "A sender whose DNS does not answer",
                ["-f", "someone@slow.example", "--client-address", "203.0.113.5"],
                message("Someone <someone@slow.example>", "hello"),
            ),
        ]
        for title, envelope, data in samples:
            print(f"\n### {title}\n$ scatterguard check {' '.join(envelope)} < message")
            sys.stdout.flush()
            subprocess.run(
                [sys.executable, "-m", "scatterguard", "--config", str(config), "check", *envelope],
                input=data,
                check=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
