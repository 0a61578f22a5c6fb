"""Smoke test of the installed package: /usr/bin/scatterguard on Debian's python3 and libraries.

tests/package/run calls this, as root, with Debian's /usr/bin/python3 in isolated mode (-I), after
installing the .deb. It generates DKIM keys with Debian's dknewkey, serves them (and SPF and DMARC
records) from tests/dnsserver.py on loopback, signs sample messages with Debian's dkimpy, and
asserts what the installed command decides:

- ``check --json`` for a signed message, a forged one, a null sender and a verified sender whose
  From domain's DMARC policy rejects the message;
- ``filter`` run as the ``scatterguard`` user the package created, so the quarantine directory
  postinst made is proved usable (and its state directory, where the message with a queue id is
  claimed in ``delivered/``): delivery re-injects the original bytes behind our header,
  forged mail lands in the quarantine (and is listed there), a verified sender gets exit 69;
- ``serve`` as that user, with ``filter`` handing a message over to it.

Nothing here imports scatterguard: the installed command is run as the MTA would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import dkim

SCATTERGUARD = "/usr/bin/scatterguard"
AUTHSERV_ID = "mx.scatterguard.test"
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/"}

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@mx.scatterguard.test\r\n"
    b"Subject: package smoke test\r\n"
    b"Date: Fri, 27 Nov 2026 06:00:00 +0000\r\n"
    b"Message-ID: <smoke-1@example.org>\r\n"
    b"\r\n"
    b"Hello from the package smoke test.\r\n"
)
# Forged by an outsider: claims the CEO of example.org, unsigned, from elsewhere.
CEO_MESSAGE = MESSAGE.replace(b"Alice <alice@example.org>", b"CEO <ceo@example.org>").replace(
    b"smoke-1@", b"smoke-2@"
)


class Failure(Exception):
    """A smoke test assertion that did not hold."""


def expect(condition: bool, what: str, detail: object = "") -> None:
    if not condition:
        raise Failure(f"{what}: {detail}")
    print(f"  ok: {what}")


def run(
    argv: list[str], data: bytes, *, user: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(
        argv, input=data, capture_output=True, env=CLEAN_ENV, timeout=120, check=False
    )


def make_keys(work: Path) -> dict[str, tuple[bytes, str]]:
    """RSA and Ed25519 keys from Debian's dknewkey: selector -> (private key, DNS TXT text)."""
    keys = {}
    for selector, ktype in (("rsa1", "rsa"), ("ed1", "ed25519")):
        base = work / selector
        subprocess.run(
            ["/usr/bin/dknewkey", "--ktype", ktype, str(base)],
            check=True,
            capture_output=True,
            env=CLEAN_ENV,
            cwd=work,
        )
        keys[selector] = (
            base.with_suffix(".key").read_bytes(),
            base.with_suffix(".dns").read_text().strip(),
        )
    return keys


def sign(message: bytes, keys: dict[str, tuple[bytes, str]]) -> bytes:
    """Sign as example.org with both keys (RSA, then Ed25519 per RFC 8463), with Debian's dkimpy."""
    signed = message
    for selector, algorithm in (("rsa1", b"rsa-sha256"), ("ed1", b"ed25519-sha256")):
        header = dkim.sign(
            signed,
            selector.encode(),
            b"example.org",
            keys[selector][0],
            signature_algorithm=algorithm,
            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        )
        signed = header + signed
    return signed


def zone(keys: dict[str, tuple[bytes, str]]) -> str:
    lines = [
        'example.org. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"',
        '_dmarc.example.org. 300 IN TXT "v=DMARC1; p=reject"',
        'example.net. 300 IN TXT "v=spf1 ip4:198.51.100.7 -all"',
    ]
    for selector, (_private, text) in keys.items():
        # Long RSA keys become several character-strings, as in a real zone.
        chunks = " ".join(f'"{text[i : i + 200]}"' for i in range(0, len(text), 200))
        lines.append(f"{selector}._domainkey.example.org. 300 IN TXT {chunks}")
    return "\n".join(lines) + "\n"


def start_dns(repo: Path, zone_file: Path) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-I",
            str(repo / "tests/dnsserver.py"),
            "--zone",
            str(zone_file),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )
    assert server.stdout is not None
    line = server.stdout.readline().strip()
    if not line.startswith("serving DNS on "):
        server.kill()
        raise Failure(f"tests/dnsserver.py did not start: {line!r}")
    return server, line.removeprefix("serving DNS on ")


def write_config(
    work: Path, dns_address: str, socket: str = "", name: str = "scatterguard"
) -> Path:
    """A configuration for the smoke test; ``socket`` empty means filter works in-process."""
    reinjected = work / "out" / "reinjected.eml"
    # The validator wants "-f {sender}" before "--" and "{recipients}" after it; for sh -c
    # those are just positional parameters.
    command = [
        "/bin/sh",
        "-c",
        'cat > "$0"',
        str(reinjected),
        "-f",
        "{sender}",
        "--",
        "{recipients}",
    ]
    # Filter mode refuses to log to stderr (it belongs to the MTA there); the server may.
    log_target = "stderr" if socket else "syslog"
    text = f"""\
authserv_id = "{AUTHSERV_ID}"
trusted_networks = []

[dns]
nameservers = ["{dns_address}"]
timeout = 2.0

[reinject]
command = {json.dumps(command)}

[log]
target = "{log_target}"

[server]
socket = "{socket}"
workers = 1
"""
    path = work / f"{name}.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def check(cfg: Path, data: bytes, *envelope: str) -> dict[str, object]:
    done = run([SCATTERGUARD, "--config", str(cfg), "check", "--json", *envelope], data)
    if done.returncode != 0:
        raise Failure(f"check exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def smoke_check(cfg: Path, signed: bytes, forged: bytes) -> None:
    print("check --json:")
    good = check(
        cfg,
        signed,
        "-f",
        "alice@example.org",
        "--client-address",
        "192.0.2.1",
        "--helo",
        "mail.example.org",
    )
    expect(good["action"] == "deliver", "signed mail from its own server is delivered", good)
    expect(good["reverse_path_verified"] is True, "its reverse-path is verified", good)
    expect(good["spf"]["result"] == "pass", "SPF pass", good["spf"])  # type: ignore[index]
    algorithms = {sig["algorithm"]: sig["result"] for sig in good["dkim"]}  # type: ignore[attr-defined]
    expect(
        algorithms == {"rsa-sha256": "pass", "ed25519-sha256": "pass"},
        "both DKIM signatures verify (RSA and Ed25519, RFC 8463)",
        good["dkim"],
    )
    dmarc = good["dmarc"]
    expect(
        (dmarc["result"], dmarc["domain"], dmarc["policy"]) == ("pass", "example.org", "reject"),  # type: ignore[index]
        "DMARC pass for example.org, policy reject",
        dmarc,
    )
    expect(
        str(good["authentication_results"]).startswith(f"{AUTHSERV_ID};"),
        "the Authentication-Results value starts with our authserv-id",
        good["authentication_results"],
    )

    bad = check(cfg, forged, "-f", "alice@example.org", "--client-address", "203.0.113.9")
    expect(bad["action"] == "quarantine", "forged mail is quarantined, not bounced", bad)
    expect(bad["reverse_path_verified"] is False, "its reverse-path is not verified", bad)
    expect(bad["spf"]["result"] == "fail", "SPF fail", bad["spf"])  # type: ignore[index]
    expect(
        {sig["result"] for sig in bad["dkim"]} == {"fail"},  # type: ignore[attr-defined]
        "the altered body breaks both DKIM signatures",
        bad["dkim"],
    )
    expect(bad["dmarc"]["result"] == "fail", "DMARC fail", bad["dmarc"])  # type: ignore[index]

    null = check(cfg, forged, "-f", "<>", "--client-address", "203.0.113.9")
    expect(null["action"] == "quarantine", "forged mail with the null sender is quarantined", null)

    bounce = check(cfg, CEO_MESSAGE, "-f", "bob@example.net", "--client-address", "198.51.100.7")
    expect(
        bounce["action"] == "bounce", "a verified sender failing DMARC p=reject is bounced", bounce
    )
    expect(str(bounce.get("status", "")).startswith("5.7.26 "), "with status 5.7.26", bounce)


def smoke_filter(cfg: Path, work: Path, signed: bytes, forged: bytes) -> None:
    print("filter, as the scatterguard user:")
    out = work / "out"
    pw = pwd.getpwnam("scatterguard")
    out.mkdir()
    os.chown(out, pw.pw_uid, pw.pw_gid)
    prefix = [SCATTERGUARD, "--config", str(cfg), "filter"]

    done = run(
        [
            *prefix,
            "-f",
            "alice@example.org",
            "--client-address=192.0.2.1",
            "--",
            "bob@mx.scatterguard.test",
        ],
        signed,
        user="scatterguard",
    )
    expect(
        (done.returncode, done.stdout) == (0, b""), "delivery exits 0 with nothing on stdout", done
    )
    reinjected = (out / "reinjected.eml").read_bytes()
    expect(
        reinjected.startswith(b"Authentication-Results: " + AUTHSERV_ID.encode() + b";")
        and reinjected.endswith(signed),
        "the re-injected message is our header followed by the original bytes",
        reinjected[:300],
    )

    done = run(
        [
            *prefix,
            "-f",
            "alice@example.org",
            "--client-address=203.0.113.9",
            "--queue-id=4SMOKE1",
            "--",
            "bob@mx.scatterguard.test",
        ],
        forged,
        user="scatterguard",
    )
    expect(
        (done.returncode, done.stdout) == (0, b""), "forged mail: exit 0, nothing on stdout", done
    )
    listing = run([SCATTERGUARD, "--config", str(cfg), "quarantine", "list", "--json"], b"")
    entries = json.loads(listing.stdout) if listing.returncode == 0 else None
    expect(
        isinstance(entries, list)
        and len(entries) == 1
        and entries[0]["sender"] == "alice@example.org"
        and entries[0]["recipients"] == ["bob@mx.scatterguard.test"],
        "it is the one entry in the packaged quarantine directory",
        listing,
    )
    # What scatterguard-purge.service runs (as this user): the fresh entry is younger than
    # purge_after_days, so it stays.
    purge = run(
        [SCATTERGUARD, "--config", str(cfg), "quarantine", "purge"], b"", user="scatterguard"
    )
    listing = run([SCATTERGUARD, "--config", str(cfg), "quarantine", "list", "--json"], b"")
    expect(
        purge.returncode == 0 and len(json.loads(listing.stdout)) == 1,
        "the purge timer's command runs as scatterguard and keeps a fresh entry",
        purge,
    )

    done = run(
        [
            *prefix,
            "-f",
            "bob@example.net",
            "--client-address=198.51.100.7",
            "--",
            "bob@mx.scatterguard.test",
        ],
        CEO_MESSAGE,
        user="scatterguard",
    )
    lines = done.stdout.decode(errors="replace").splitlines()
    expect(
        done.returncode == 69 and len(lines) == 1 and lines[0].startswith("5.7.26 "),
        "a verified sender failing DMARC p=reject: exit 69 and one 5.7.26 line",
        done,
    )


def smoke_server(work: Path, dns_address: str, signed: bytes) -> None:
    """``serve`` as the scatterguard user; ``filter`` hands a message over and relays the answer."""
    print("serve, and filter handing over to it:")
    pw = pwd.getpwnam("scatterguard")
    run_dir = work / "run"
    run_dir.mkdir()
    os.chown(run_dir, pw.pw_uid, pw.pw_gid)
    sock = run_dir / "scatterguard.sock"
    cfg = write_config(work, dns_address, socket=str(sock), name="server")
    log = (work / "server.log").open("wb")
    # setpriv execs the server itself, so the SIGTERM below reaches the master process.
    server = subprocess.Popen(
        ["setpriv", "--reuid=scatterguard", "--regid=scatterguard", "--init-groups", "--",
         SCATTERGUARD, "--config", str(cfg), "serve"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=CLEAN_ENV,
    )  # fmt: skip
    try:
        for _ in range(300):
            if sock.is_socket() or server.poll() is not None:
                break
            time.sleep(0.1)
        expect(sock.is_socket(), "the server listens on its socket", server.poll())
        (work / "out" / "reinjected.eml").unlink(missing_ok=True)
        done = run(
            [SCATTERGUARD, "--config", str(cfg), "filter", "--sender=alice@example.org",
             "--client-address=192.0.2.1", "--queue-id=4SMOKE2", "--", "bob@mx.scatterguard.test"],
            signed,
            user="scatterguard",
        )  # fmt: skip
        expect(
            (done.returncode, done.stdout) == (0, b""), "delivery exits 0, nothing on stdout", done
        )
        reinjected = (work / "out" / "reinjected.eml").read_bytes()
        expect(
            reinjected.startswith(b"Authentication-Results: " + AUTHSERV_ID.encode() + b";")
            and reinjected.endswith(signed),
            "the server re-injected our header followed by the original bytes",
            reinjected[:300],
        )
        logged = (work / "server.log").read_bytes()
        expect(
            b"queue_id='4SMOKE2'" in logged and b"action='deliver'" in logged,
            "the server, not the filter process, logged the message",
            logged[-600:],
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    expect(not sock.exists(), "SIGTERM stops the server and removes its socket", server.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, required=True, help="checkout holding tests/dnsserver.py"
    )
    parser.add_argument("--work", type=Path, required=True, help="empty scratch directory")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    keys = make_keys(work)
    signed = sign(MESSAGE, keys)
    forged = signed.replace(b"Hello from", b"Send money from")
    zone_file = work / "zone"
    zone_file.write_text(zone(keys))
    server, address = start_dns(args.repo, zone_file)
    try:
        cfg = write_config(work, address)
        version = run([SCATTERGUARD, "--version"], b"")
        expect(
            version.returncode == 0 and version.stdout.decode().strip().startswith("scatterguard "),
            "--version",
            version,
        )
        smoke_check(cfg, signed, forged)
        smoke_filter(cfg, work, signed, forged)
        smoke_server(work, address, signed)
    except Failure as exc:
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
