"""A real DNS server on loopback for the tests, the demo and the benchmarks.

It answers like the recursive resolver a mail server talks to, from records given as master-file
lines: NXDOMAIN for names that do not exist, NOERROR with no data for names that exist without the
asked type (empty non-terminals included), CNAMEs followed inside the data. It speaks UDP and TCP.

Faults can be switched on per name (and its subdomains) or for everything, to stand in for the
trouble real resolvers have: silence (a timeout), SERVFAIL, REFUSED, truncation with TCP refused,
malformed replies, and a CNAME loop answered with NOERROR (as some forwarders hand it back). Run as
a program it serves a zone file until killed; SIGUSR1 makes it silent and SIGUSR2 makes it answer
again.
"""

from __future__ import annotations

import argparse
import signal
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

FAULTS = (
    "timeout",
    "servfail",
    "refused",
    "truncate",
    "malformed",
    "cname-loop",
    "cname-loop-noerror",
)


class Records:
    """Records by owner name, loaded from master-file lines (``name ttl IN type rdata``)."""

    def __init__(self) -> None:
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        self.names: set[dns.name.Name] = set()

    def add_text(self, text: str) -> None:
        """Add master-file lines; ``;`` starts a comment; names are absolute."""
        for raw in text.splitlines():
            line = raw.split(";", 1)[0].strip() if '"' not in raw else raw.strip()
            if not line or line.startswith(";"):
                continue
            self.add_line(line)

    def add_line(self, line: str) -> None:
        name_text, ttl_text, klass, rdtype, rdata = line.split(None, 4)
        if klass.upper() != "IN":
            raise ValueError(f"only class IN: {line}")
        self.add(name_text, rdtype, rdata, int(ttl_text))

    def add(self, name: str, rdtype: str, rdata: str, ttl: int = 300) -> None:
        owner = dns.name.from_text(name)
        rrset = dns.rrset.from_text(owner, ttl, "IN", rdtype, rdata)
        key = (owner, rrset.rdtype)
        if key in self.rrsets:
            self.rrsets[key].union_update(rrset)
        else:
            self.rrsets[key] = rrset
        while owner != dns.name.root:
            self.names.add(owner)
            owner = owner.parent()

    def add_txt(self, name: str, *strings: bytes | str, ttl: int = 300) -> None:
        """Add one TXT record whose character-strings are given raw (no quoting worries)."""
        parts = []
        for item in strings:
            data = item.encode() if isinstance(item, str) else item
            # A long text is split into 255-byte character-strings, as a zone compiler would.
            parts.extend(data[i : i + 255] for i in range(0, len(data), 255) or [0])
        quoted = " ".join('"' + _escape(p) + '"' for p in parts) or '""'
        self.add(name, "TXT", quoted, ttl)

    def clear(self) -> None:
        self.rrsets.clear()
        self.names.clear()


def _escape(data: bytes) -> str:
    out = []
    for byte in data:
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return "".join(out)


class DnsServer:
    """UDP and TCP listeners on one loopback port, answering from :class:`Records`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.records = Records()
        self.faults: dict[dns.name.Name, str] = {}
        self.silent = False
        self.queries: list[tuple[str, str, str]] = []  # (name, type, transport)
        self._lock = threading.Lock()
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.respond(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                conn.settimeout(5)
                try:
                    header = _recv_exact(conn, 2)
                    data = _recv_exact(conn, struct.unpack("!H", header)[0])
                except OSError:
                    return
                reply = server.respond(data, "tcp")
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)

        class UdpServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
            daemon_threads = True
            allow_reuse_address = True

        class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.udp = UdpServer((host, port), Udp)
        self.port = self.udp.server_address[1]
        self.tcp = TcpServer((host, self.port), Tcp)
        self.host = host
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        """``host:port``, as the ``dns.nameservers`` configuration key wants it."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsServer:
        for srv in (self.udp, self.tcp):
            thread = threading.Thread(target=srv.serve_forever, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for srv in (self.udp, self.tcp):
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fault(self, name: str, kind: str | None) -> None:
        """Make ``name`` and everything below it misbehave (``kind`` in FAULTS), or heal it."""
        if kind is not None and kind not in FAULTS:
            raise ValueError(kind)
        owner = dns.name.from_text(name)
        if kind is None:
            self.faults.pop(owner, None)
        else:
            self.faults[owner] = kind

    def reset(self) -> None:
        self.records.clear()
        self.faults.clear()
        self.silent = False
        self.queries.clear()

    def _fault_for(self, qname: dns.name.Name) -> str | None:
        for owner, kind in self.faults.items():
            if qname.is_subdomain(owner):
                return kind
        return None

    def respond(self, data: bytes, transport: str) -> bytes | None:
        if self.silent:
            return None
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - a test server ignores garbage, as real ones do
            return None
        if not query.question:
            return None
        question = query.question[0]
        with self._lock:
            self.queries.append(
                (question.name.to_text(), dns.rdatatype.to_text(question.rdtype), transport)
            )
        fault = self._fault_for(question.name)
        if fault == "timeout":
            return None
        if fault == "malformed":
            return data[:2] + b"\x81\x80\x00\x01\x00\x05garbage"
        if fault == "truncate" and transport == "tcp":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if fault == "servfail" or fault == "cname-loop":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif fault == "refused":
            response.set_rcode(dns.rcode.REFUSED)
        elif fault == "truncate":
            response.flags |= dns.flags.TC
        elif fault == "cname-loop-noerror":
            # The name and loop.<name> point at each other: the client must stop following.
            loop = dns.name.Name(("loop", *question.name.labels))
            response.answer.append(
                dns.rrset.from_text(question.name, 300, "IN", "CNAME", str(loop))
            )
            response.answer.append(
                dns.rrset.from_text(loop, 300, "IN", "CNAME", str(question.name))
            )
        else:
            self._answer(response, question.name, question.rdtype)
        wire = response.to_wire(max_size=65535)
        limit = query.payload if query.edns >= 0 else 512
        if transport == "udp" and len(wire) > limit:
            response.answer.clear()
            response.authority.clear()
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        return wire

    def _answer(self, response: dns.message.Message, qname: dns.name.Name, qtype: int) -> None:
        current = qname
        seen: set[dns.name.Name] = set()
        while True:
            rrset = self.records.rrsets.get((current, qtype))
            if rrset is not None:
                response.answer.append(rrset)
                return
            cname = self.records.rrsets.get((current, dns.rdatatype.CNAME))
            if cname is not None and qtype != dns.rdatatype.CNAME:
                if current in seen:
                    # A recursive resolver gives up on a CNAME loop with SERVFAIL.
                    response.answer.clear()
                    response.set_rcode(dns.rcode.SERVFAIL)
                    return
                seen.add(current)
                response.answer.append(cname)
                current = cname[0].target
                continue
            if current not in self.records.names:
                response.set_rcode(dns.rcode.NXDOMAIN)
            return


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("short read")
        data += chunk
    return data


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zone", action="append", default=[], help="master-file lines to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8053)
    parser.add_argument("--pidfile")
    args = parser.parse_args(list(argv) if argv is not None else None)
    server = DnsServer(args.host, args.port)
    for zone in args.zone:
        server.records.add_text(Path(zone).read_text())

    def toggle(signum: int, _frame: object) -> None:
        server.silent = signum == signal.SIGUSR1

    signal.signal(signal.SIGUSR1, toggle)
    signal.signal(signal.SIGUSR2, toggle)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.start()
    if args.pidfile:
        Path(args.pidfile).write_text(f"{__import__('os').getpid()}\n")
    print(f"serving DNS on {server.address}", flush=True)
    try:
        signal.pause() if False else threading.Event().wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
