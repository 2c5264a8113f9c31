"""
Prefetch through the whole miss path, driven by a Clock over simulated
hours: a popular name must never expire into a miss.
"""
import dns.message
from twisted.internet import defer, task
from twisted.names import dns as tdns
from twisted.trial import unittest

from dnsgo.serve.acl import ClientFilter
from dnsgo.cache.message import MessageCache
from dnsgo.serve.handler import QueryHandler
from dnsgo.resolve.chain import Chain


class CountingUpstream:
    """Answers every question with one A record of a fixed TTL, and counts."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.asked = 0

    def query(self, query, timeout=None):
        self.asked += 1
        rr = tdns.RRHeader(query.name.name, tdns.A, ttl=self.ttl, payload=tdns.Record_A("192.0.2.1", self.ttl))
        return defer.succeed(([rr], [], []))


class PrefetchTests(unittest.TestCase):
    """prefetch.threshold_hits / threshold_ttl_pct on a 60 s TTL."""

    def build(self, prefetch_hits):
        self.clock = task.Clock()
        self.upstream = CountingUpstream(60)
        holder = {}
        self.cache = MessageCache(
            max_size_mb=1,
            num_shards=1,
            prefetch_hits=prefetch_hits,
            prefetch_ttl_pct=10,
            on_prefetch=lambda q: holder["h"].prefetch(q),
            reactor=self.clock,
        )
        self.handler = holder["h"] = QueryHandler(
            Chain([self.upstream]),
            ClientFilter(["127.0.0.0/8"]),
            message_cache=self.cache,
            refresher=self.upstream,
            reactor=self.clock,
        )

    def ask(self):
        reply = self.handler.handle(dns.message.make_query("hot.example.test", "A").to_wire(), "127.0.0.1")
        if isinstance(reply, defer.Deferred):
            reply = self.successResultOf(reply)
        return dns.message.from_wire(reply)

    def test_hot_name_never_expires_into_a_miss(self):
        """Asked every second for 3 simulated hours, a hot name misses only once, and is refreshed about once a TTL."""
        self.build(prefetch_hits=5)
        for _ in range(3 * 3600):
            r = self.ask()
            self.assertGreater(r.answer[0].ttl, 0)
            self.clock.advance(1)
        stats = self.cache.stats()
        self.assertEqual(stats.misses, 1)
        # One fetch, then a refresh once 90 % of each 60 s lifetime has passed.
        self.assertGreaterEqual(self.upstream.asked, 3 * 3600 // 60 - 5)
        self.assertLessEqual(self.upstream.asked, 3 * 3600 // 54 + 5)
        self.assertEqual(self.handler.counters["prefetch"], self.upstream.asked - 1)

    def test_without_prefetch_entries_expire(self):
        """With prefetch off, the same load misses once per TTL."""
        self.build(prefetch_hits=None)
        for _ in range(3600):
            self.ask()
            self.clock.advance(1)
        self.assertEqual(self.cache.stats().misses, 3600 // 60)
        self.assertEqual(self.handler.counters["prefetch"], 0)

    def test_cold_name_not_prefetched(self):
        """A name hit fewer times than threshold_hits is left to expire."""
        self.build(prefetch_hits=100)
        for _ in range(3):
            for _ in range(10):
                self.ask()
                self.clock.advance(6)
        self.assertEqual(self.handler.counters["prefetch"], 0)
        self.assertEqual(self.cache.stats().misses, 3)
