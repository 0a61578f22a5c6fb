"""The benchmark's DNS server: tests/dnsserver.py on loopback, run as its own process.

It serves the records of a JSON file (``{"txt": {name: value}}``) and adds two things a benchmark
needs:

- a resolver cache to be cold or warm: with ``--cold-delay MS`` the first question for a name and
  type waits that long before it is answered, as a recursive resolver with an empty cache waits for
  the authoritative servers; later questions are answered at once, as from its cache;
- control names, answered with a TXT record and never counted: ``count.bench.invalid`` gives the
  number of questions answered so far, ``flush.bench.invalid`` empties the cache (and resets the
  count).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dns.message
import dns.rrset

from dnsserver import DnsServer

CONTROL = "bench.invalid."


class BenchDnsServer(DnsServer):
    """A DnsServer with a simulated resolver cache and a query counter."""

    def __init__(self, host: str, port: int, cold_delay: float) -> None:
        super().__init__(host, port)
        self.cold_delay = cold_delay
        self.seen: set[tuple[str, int]] = set()
        self.count = 0
        self.lock = threading.Lock()

    def respond(self, data: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
            question = query.question[0]
        except Exception:  # noqa: BLE001 - garbage goes to the base class, which ignores it
            return super().respond(data, transport)
        name = question.name.to_text().lower()
        if name.endswith(CONTROL):
            return self._control(query, name)
        key = (name, question.rdtype)
        with self.lock:
            self.count += 1
            cold = key not in self.seen
            self.seen.add(key)
        if cold and self.cold_delay:
            time.sleep(self.cold_delay)
        return super().respond(data, transport)

    def _control(self, query: dns.message.Message, name: str) -> bytes:
        with self.lock:
            value = self.count
            if name.startswith("flush."):
                self.seen.clear()
                self.count = 0
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text(name, 0, "IN", "TXT", f'"{value}"'))
        return response.to_wire()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, help='JSON: {"txt": {name: value}}')
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cold-delay", type=float, default=0.0, help="milliseconds")
    args = parser.parse_args()
    server = BenchDnsServer(args.host, args.port, args.cold_delay / 1000)
    records = json.loads(Path(args.records).read_text())
    for name, value in records.get("txt", {}).items():
        server.records.add_txt(name, value.encode())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.start()
    print(server.port, flush=True)
    try:
        threading.Event().wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
