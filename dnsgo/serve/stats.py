"""
What a worker counts about the queries it answers (reported in its stats
snapshot, :mod:`dnsgo.api.snapshot`).

The counters are plain dicts and lists: the hit path pays two dict
operations and a bucket search, nothing more.
"""
from bisect import bisect_left

from twisted.names import dns

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
        #: Counts by ``rcode << 17 | qtype << 1 | tcp``: an int key costs the
        #: hit path no tuple to build and hash.
        self.by_key: dict[int, int] = {}
        self.latency = Histogram()

    def record(self, rcode: int, qtype: int, tcp: bool, elapsed: float) -> None:
        """Count one answered query."""
        key = rcode << 17 | qtype << 1 | tcp
        by_key = self.by_key
        by_key[key] = by_key.get(key, 0) + 1
        latency = self.latency  # Histogram.observe, inlined: this runs for every query
        buckets = latency.buckets
        if elapsed <= buckets[0]:
            latency.counts[0] += 1  # a cache hit's few microseconds: the first bucket, without a search
        else:
            latency.counts[bisect_left(buckets, elapsed)] += 1
        latency.sum += elapsed
        latency.count += 1

    def rows(self) -> list[list]:
        """[[rcode name, qtype name, protocol, count], ...] for the snapshot."""
        return [
            [_RCODE_NAMES.get(rcode, str(rcode)), dns.QUERY_TYPES.get(qtype, dns.EXT_QUERIES.get(qtype, str(qtype))),
             "tcp" if tcp else "udp", n]
            for rcode, qtype, tcp, n in sorted((key >> 17, key >> 1 & 0xFFFF, bool(key & 1), n)
                                               for key, n in self.by_key.items())
        ]
