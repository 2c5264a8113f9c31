"""
What a worker counts about the queries it answers, and the stats snapshot
it reports (to the control plane's heartbeats and the management API).

The counters are plain dicts and lists: the hit path pays two dict
operations and a bucket search, nothing more.
"""
import os
import time
from bisect import bisect_left

import attrs
from twisted.names import dns

import dnsgo

#: Upper bounds (seconds) of the answer-latency histogram buckets.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class Histogram:
    """A fixed-bucket histogram with non-cumulative counts (+Inf last)."""

    def __init__(self, buckets=LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def as_dict(self) -> dict:
        """The snapshot form: buckets, counts, sum, count."""
        return {"buckets": list(self.buckets), "counts": list(self.counts), "sum": self.sum, "count": self.count}


class QueryStats:
    """Queries by (rcode, qtype, protocol), and the answer latency."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[int, int, bool], int] = {}
        self.latency = Histogram()

    def record(self, rcode: int, qtype: int, tcp: bool, elapsed: float) -> None:
        """Count one answered query."""
        key = (rcode, qtype, tcp)
        self.by_key[key] = self.by_key.get(key, 0) + 1
        self.latency.observe(elapsed)

    def rows(self) -> list[list]:
        """[[rcode name, qtype name, protocol, count], ...] for the snapshot."""
        return [
            [_RCODE_NAMES.get(rcode, str(rcode)), dns.QUERY_TYPES.get(qtype, dns.EXT_QUERIES.get(qtype, str(qtype))),
             "tcp" if tcp else "udp", n]
            for (rcode, qtype, tcp), n in sorted(self.by_key.items())
        ]


@attrs.frozen
class Identity:
    """Who this worker is, for the snapshot."""

    worker_id: str
    cluster_name: str
    address: str
    started_at: float


def default_worker_id() -> str:
    """A worker id when none is configured: host name and pid."""
    return f"{os.uname().nodename}-{os.getpid()}"


def cache_stats_dict(stats) -> dict:
    """A CacheStats value as the seed's JSON fields (plus entries)."""
    return attrs.asdict(stats)


def worker_snapshot(root, reactor=None) -> dict:
    """The stats snapshot of a running ServerRoot (see docs/control-protocol.md)."""
    if reactor is None:
        from twisted.internet import reactor
    handler = root.handler
    caches = root.caches
    ident = root.identity
    shared = getattr(root, "shared_snapshot", None)
    invalidation = getattr(root, "invalidation_snapshot", None)
    return {
        "workerId": ident.worker_id,
        "clusterName": ident.cluster_name,
        "address": ident.address,
        "version": dnsgo.__version__,
        "pid": os.getpid(),
        "startedAt": ident.started_at,
        "now": reactor.seconds(),
        "serving": bool(root.running),  # Service.running is 0/1
        "mode": root.config.cache.mode,
        "messageCache": cache_stats_dict(caches.messages.stats()),
        "rrsetCache": cache_stats_dict(caches.rrsets.stats()),
        "queries": handler.stats.rows(),
        "latency": handler.stats.latency.as_dict(),
        "prefetches": handler.counters["prefetch"],
        "staleAnswers": handler.counters["stale"],
        "servfails": handler.counters["servfail"],
        "upstreams": [attrs.asdict(u) for u in root.infra.snapshot()],
        "sharedCache": shared() if shared else None,
        "invalidation": invalidation() if invalidation else {"strategy": root.config.cache.invalidation.strategy},
    }


def now_wall() -> float:
    """Wall-clock seconds (for identities)."""
    return time.time()
