"""
Hit rates of dnsgo's caches under each eviction policy, replayed offline.

Feeds a trace through the real L1 (``MessageCache``) and L2
(``RRsetCache``) classes, as the server's miss path would: a query is
looked up in L1, then L2; on a miss the "upstream" reply (the one NSD gives
for ``bench.test``: A or AAAA with a TTL of one day, NXDOMAIN with the SOA)
is stored in both, and an L2 hit is stored in L1.  The hit rate is the
share of queries answered without the upstream: what ``bench/run.py``'s
Zipf scenario measures from NSD's counters, without the network, so each
policy sees exactly the same trace.  The clock moves 1 ms per query, so
nothing expires; only eviction decides.

Traces (fixed seeds):

* ``zipf``: 200k queries over 50k names, A and AAAA, exponent 0.9, 5 % for
  names that do not exist (each asked once): issue #10's trace;
* ``scan``: the same, with one pass of 50k one-hit wonders (unique names,
  asked once each) inserted as a block in the middle.

Run it by hand:

    .venv/bin/python bench/eviction_sim.py                   # every policy, L1 1 MiB + L2 2 MiB
    .venv/bin/python bench/eviction_sim.py --l1-mb 4 --l2-mb 8 --trace zipf
"""
from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.names import dns  # noqa: E402

from dnsgo.cache.eviction import EVICTION_POLICIES  # noqa: E402
from dnsgo.cache.message import MessageCache  # noqa: E402
from dnsgo.cache.rrset import RRsetCache, learn_from_wire  # noqa: E402
from dnsgo.dns import records, wire  # noqa: E402
from dnsgo.serve.reply import encode_reply  # noqa: E402

ZONE = b"bench.test"
SOA = dns.RRHeader(ZONE, dns.SOA, dns.IN, 3600,
                   dns.Record_SOA(b"ns." + ZONE, b"hostmaster." + ZONE, 1, 7200, 3600, 1209600, 3600))


def zipf_trace(names: int, queries: int, exponent: float, nx_share: float, seed: int) -> list[tuple[str, int]]:
    """``queries`` (name, type) pairs drawn with P(rank k) ∝ 1/k**exponent; ``nx_share`` of them unique NX names."""
    rng = random.Random(seed)
    population = [(f"h{i:07d}.bench.test", qtype) for i in range(names) for qtype in (dns.A, dns.AAAA)]
    rng.shuffle(population)
    cumulative = list(itertools.accumulate(1.0 / rank ** exponent for rank in range(1, len(population) + 1)))
    trace = rng.choices(population, cum_weights=cumulative, k=queries)
    for n, index in enumerate(rng.sample(range(len(trace)), int(len(trace) * nx_share))):
        trace[index] = (f"nx{n:07d}.bench.test", dns.A)
    return trace


def with_scan(trace: list[tuple[str, int]], count: int) -> list[tuple[str, int]]:
    """``trace`` with ``count`` one-hit wonders inserted as one block in the middle."""
    middle = len(trace) // 2
    scan = [(f"scan{i:07d}.bench.test", dns.A) for i in range(count)]
    return trace[:middle] + scan + trace[middle:]


def _query(name: str, qtype: int, qid: int) -> bytes:
    m = dns.Message(id=qid & 0xFFFF, recDes=1)
    m.queries = [dns.Query(name.encode(), qtype, dns.IN)]
    return m.toStr()


def _upstream(q: wire.QueryInfo, name: bytes, qtype: int) -> bytes:
    """The reply NSD would give for ``bench.test``."""
    if name.startswith(b"nx"):
        return encode_reply(q, dns.ENAME, [], [SOA], [])
    if qtype == dns.A:
        payload = dns.Record_A("10.%d.%d.%d" % (len(name) % 200, name[-12] % 250, name[-11] % 250))
    else:
        payload = dns.Record_AAAA("2001:db8::%x" % (len(name) * 7 + name[-12]))
    return encode_reply(q, dns.OK, [dns.RRHeader(name, qtype, dns.IN, 86400, payload)], [], [])


def replay(trace, policy: str, l1_mb: float, l2_mb: float) -> dict:
    """Replay ``trace`` through L1 and L2 with ``policy``; the hit rates and what the caches hold at the end."""
    clock = task.Clock()
    clock.advance(1_764_500_000)
    l1 = MessageCache(reactor=clock, max_size_mb=l1_mb, eviction=policy)
    l2 = RRsetCache(reactor=clock, max_size_mb=l2_mb, eviction=policy)
    l1_hits = l2_hits = 0
    started = time.process_time()
    for n, (name, qtype) in enumerate(trace):
        clock.advance(0.001)
        data = _query(name, qtype, n)
        q = wire.parse_query(data)
        if l1.lookup(q) is not None:
            l1_hits += 1
            continue
        owner = name.encode()
        held = l2.get(owner, qtype)
        negative = None if held is not None else l2.get_negative(owner, qtype)
        if held is not None or negative is not None:
            l2_hits += 1
            if held is not None:
                body = encode_reply(q, dns.OK, held, [], [])
            else:
                body = encode_reply(q, negative[0], [], [negative[1]], [])
            l1.store(q, body)
            continue
        body = _upstream(q, owner, qtype)
        l1.store(q, body)
        l2.store_learned(learn_from_wire(dns.Query(owner, qtype, dns.IN), records.read_reply(body)))
    total = len(trace)
    return {
        "policy": policy,
        "hit_pct": 100.0 * (l1_hits + l2_hits) / total,
        "l1_pct": 100.0 * l1_hits / total,
        "l2_pct": 100.0 * l2_hits / total,
        "l1_entries": l1.stats().entries,
        "l2_entries": l2.stats().entries,
        "seconds": time.process_time() - started,
    }


def ideal(trace) -> float:
    """The hit rate of an unbounded cache: only first sightings miss."""
    return 100.0 * (1 - len(set(trace)) / len(trace))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--l1-mb", type=float, default=1.0)
    parser.add_argument("--l2-mb", type=float, default=2.0)
    parser.add_argument("--trace", choices=("zipf", "scan"), action="append")
    parser.add_argument("--policy", choices=EVICTION_POLICIES, action="append")
    args = parser.parse_args(argv)
    base = zipf_trace(50_000, 200_000, 0.9, 0.05, seed=20261201)
    traces = {"zipf": base, "scan": with_scan(base, 50_000)}
    print(f"L1 {args.l1_mb:g} MiB + L2 {args.l2_mb:g} MiB\n")
    print("| trace | policy | hit % | L1 hit % | L2 hit % | L1 entries | L2 entries | ideal % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in args.trace or list(traces):
        trace = traces[name]
        for policy in args.policy or EVICTION_POLICIES:
            r = replay(trace, policy, args.l1_mb, args.l2_mb)
            print(f"| {name} | {policy} | {r['hit_pct']:.2f} | {r['l1_pct']:.2f} | {r['l2_pct']:.2f} "
                  f"| {r['l1_entries']:,} | {r['l2_entries']:,} | {ideal(trace):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
