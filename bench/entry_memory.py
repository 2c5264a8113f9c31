"""
Bytes per cache entry, as tracemalloc sees them, for L1 and L2.

Stores ``--count`` replies of three shapes (one A record; a CNAME to an A
with two addresses; an NXDOMAIN with the zone's SOA) in a MessageCache and
what they teach in an RRsetCache, measures the memory they took with
tracemalloc, and prints it per entry next to what the caches account for
(``size_bytes``).  No network: the caches' own classes, in one process.

    .venv/bin/python bench/entry_memory.py
"""
from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.names import dns  # noqa: E402

from dnsgo.cache.message import MessageCache  # noqa: E402
from dnsgo.cache.rrset import RRsetCache, learn_from_wire  # noqa: E402
from dnsgo.dns import records, wire  # noqa: E402
from dnsgo.serve.reply import encode_reply  # noqa: E402

SOA = dns.RRHeader(b"bench.test", dns.SOA, dns.IN, 3600,
                   dns.Record_SOA(b"ns.bench.test", b"hostmaster.bench.test", 1, 7200, 3600, 1209600, 3600))


def replies(shape: str, count: int):
    """(QueryInfo, dns.Query, reply bytes) for ``count`` names of ``shape``."""
    out = []
    for n in range(count):
        name = b"h%07d.bench.test" % n
        m = dns.Message(id=n & 0xFFFF, recDes=1)
        m.queries = [dns.Query(name, dns.A, dns.IN)]
        q = wire.parse_query(m.toStr())
        if shape == "a":
            body = encode_reply(q, dns.OK, [dns.RRHeader(name, dns.A, dns.IN, 86400, dns.Record_A("10.0.%d.%d" % (n // 250 % 250, n % 250)))], [], [])
        elif shape == "cname":
            target = b"t%07d.bench.test" % n
            body = encode_reply(q, dns.OK, [
                dns.RRHeader(name, dns.CNAME, dns.IN, 86400, dns.Record_CNAME(target)),
                dns.RRHeader(target, dns.A, dns.IN, 3600, dns.Record_A("10.1.%d.%d" % (n // 250 % 250, n % 250))),
                dns.RRHeader(target, dns.A, dns.IN, 3600, dns.Record_A("10.2.%d.%d" % (n // 250 % 250, n % 250))),
            ], [], [])
        else:
            body = encode_reply(q, dns.ENAME, [], [SOA], [])
        out.append((q, dns.Query(name, dns.A, dns.IN), body))
    return out


def measure(shape: str, count: int) -> tuple[float, float, float, float]:
    """Bytes per entry (tracemalloc, accounted) for L1 and for L2."""
    clock = task.Clock()
    clock.advance(1_764_500_000)
    results = []
    for level in ("l1", "l2"):
        cache = (MessageCache(reactor=clock, max_size_mb=1024) if level == "l1"
                 else RRsetCache(reactor=clock, max_size_mb=1024))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        # Built inside the window and dropped before the end: only what the cache keeps is counted.
        items = replies(shape, count)
        for q, query, body in items:
            if level == "l1":
                cache.store(q, body)
            else:
                cache.store_learned(learn_from_wire(query, records.read_reply(body)))
        del items, q, query, body
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        used = sum(s.size_diff for s in after.compare_to(before, "filename"))
        entries = cache.stats().entries
        results += [used / entries, cache.stats().size_bytes / entries]
    return tuple(results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    args = parser.parse_args(argv)
    print("| reply | L1 bytes/entry (tracemalloc) | L1 accounted | L2 bytes/entry (tracemalloc) | L2 accounted |")
    print("|---|---:|---:|---:|---:|")
    for shape in ("a", "cname", "nxdomain"):
        l1, l1_acc, l2, l2_acc = measure(shape, args.count)
        print(f"| {shape} | {l1:,.0f} | {l1_acc:,.0f} | {l2:,.0f} | {l2_acc:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
