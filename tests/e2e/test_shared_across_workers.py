"""
The shared cache across workers, end to end: serve-stale across the
cluster (RFC 8767, RFC 8914) -- a worker that never saw a name answers it
from Redis's expired-but-kept data when the upstream is dead -- and
remaining TTLs counted on Redis's clock, whatever the workers' clocks say.
Real redis-server, real dnsgo workers on 127.0.0.1, dnspython as the client.
"""
import time

import dns.edns
import dns.rcode
from twisted.internet import defer, reactor, task
from twisted.names import dns as tdns
from twisted.trial import unittest

from dnsgo.cache.rrset import LearnedRRset, Rank
from dnsgo.cache.shared import SharedRRsetStore
from dnsgo.config import Address, SharedCacheConfig
from dnsgo.redis.factory import build_backend

from tests.support import redis_procs
from tests.support.authority import AuthorityServer
from tests.support.harness import ask, port, start_dnsgo
from tests.support.redis_procs import RedisServer

#: The authority's record with a 2 s TTL.
SHORT = "short.example.test."


def sleep(seconds: float) -> defer.Deferred:
    """Fires after ``seconds`` of real time."""
    return task.deferLater(reactor, seconds, lambda: None)


class SharedServeStaleTests(unittest.TestCase):
    """Worker B answers stale from Redis what only worker A asked, once the upstream is dead."""

    skip = redis_procs.SKIP
    timeout = 60

    def setUp(self):
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.stop)
        self.upstream = AuthorityServer().start()
        self.addCleanup(self.upstream.stop)

    @defer.inlineCallbacks
    def worker(self, multiplier: float):
        """A hybrid dnsgo with serve-stale on, once its Redis connection is up."""
        config = (
            "cache:\n  mode: hybrid\n"
            f'  shared_cache:\n    enabled: true\n    type: redis\n    address: "127.0.0.1:{self.redis.port}"\n'
            f"    ttl_multiplier: {multiplier}\n"
            "  serve_stale:\n    enabled: true\n    answer_ttl: 30\n    client_timeout: 5s\n"
        )
        root = start_dnsgo(self, [self.upstream.address], config)
        self.addCleanup(lambda: root.shared_store.idle())
        deadline = time.monotonic() + 10
        while root.backend.status().status != "connected":
            self.assertLess(time.monotonic(), deadline, "Redis did not connect")
            yield sleep(0.02)
        return root

    @defer.inlineCallbacks
    def learn_then_kill(self, multiplier: float):
        """Worker A learns SHORT (TTL 2 s) and writes it to Redis; the upstream goes silent; 2.5 s pass."""
        a = yield self.worker(multiplier)
        first = yield ask(port(a), SHORT)
        self.assertEqual(first.answer[0][0].address, "192.0.2.2")
        yield a.shared_store.idle()
        self.upstream.authority.silent = True
        yield sleep(2.5)

    @defer.inlineCallbacks
    def test_fresh_worker_answers_stale_from_redis(self):
        """
        With ttl_multiplier 3, worker B (which never saw the name) answers it
        after its TTL, the upstream dead, from Redis: the address, TTL 30
        (answer_ttl) and Extended DNS Error 3 (Stale Answer).
        """
        yield self.learn_then_kill(3)
        b = yield self.worker(3)
        reply = yield ask(port(b), SHORT, use_edns=0, timeout=5)
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR, reply)
        self.assertEqual(reply.answer[0][0].address, "192.0.2.2")
        self.assertEqual(reply.answer[0].ttl, 30)
        ede = [o for o in reply.options if o.otype == dns.edns.OptionType.EDE]
        self.assertEqual([o.code for o in ede], [3], reply)
        self.assertEqual(b.handler.counters["stale"], 1)

    @defer.inlineCallbacks
    def test_nxdomain_in_redis_covers_names_below(self):
        """
        RFC 8020 across workers: worker A learns that gone.example.test does
        not exist; worker B, which never asked, answers NXDOMAIN for a name
        below it from Redis, without the upstream.
        """
        a = yield self.worker(3)
        first = yield ask(port(a), "gone.example.test")
        self.assertEqual(first.rcode(), dns.rcode.NXDOMAIN)
        yield a.shared_store.idle()
        b = yield self.worker(3)
        reply = yield ask(port(b), "x.y.gone.example.test", "AAAA")
        self.assertEqual(reply.rcode(), dns.rcode.NXDOMAIN, reply)
        self.assertEqual(reply.authority[0].name.to_text(), "example.test.")
        self.assertEqual(self.upstream.authority.queries[("x.y.gone.example.test.", "AAAA")], 0)

    @defer.inlineCallbacks
    def test_multiplier_one_keeps_nothing_to_serve(self):
        """With ttl_multiplier 1 Redis drops the value at its TTL: worker B has nothing stale and answers SERVFAIL."""
        yield self.learn_then_kill(1)
        b = yield self.worker(1)
        reply = yield ask(port(b), SHORT, use_edns=0, timeout=5)
        self.assertEqual(reply.rcode(), dns.rcode.SERVFAIL, reply)
        self.assertEqual(b.handler.counters["stale"], 0)


class SkewedReactor:
    """The real reactor, but for a clock ``skew`` seconds off (a worker at another site without NTP)."""

    def __init__(self, skew: float) -> None:
        self._skew = skew

    def seconds(self) -> float:
        """The skewed clock."""
        return reactor.seconds() + self._skew

    def __getattr__(self, name):
        return getattr(reactor, name)


class SharedClockE2ETests(unittest.TestCase):
    """Two stores on one real redis-server, their clocks 60 s apart, agree on remaining TTLs."""

    skip = redis_procs.SKIP
    timeout = 30

    @defer.inlineCallbacks
    def test_sixty_seconds_apart_within_one_second(self):
        """
        After sampling Redis's TIME, a store 30 s behind reads what a store 30
        s ahead wrote with the TTL the server's clock gives (within 1 s);
        without the sample the value would look 60 s in the future.
        """
        redis = RedisServer().start()
        self.addCleanup(redis.stop)
        shared = SharedCacheConfig(enabled=True, type="redis", address=Address("127.0.0.1", redis.port))
        stores = []
        for skew in (30.0, -30.0):
            backend = build_backend(shared, "", reactor)
            yield backend.start()
            self.addCleanup(backend.stop)
            stores.append(SharedRRsetStore(backend, reactor=SkewedReactor(skew)))
        ahead, behind = stores
        for store in stores:
            self.assertTrue((yield store.sync_clock()))
        self.assertLess(abs(ahead.clock_offset - behind.clock_offset + 60.0), 0.1)
        rdata = tdns.Record_A("192.0.2.1")
        ahead.store_learned([LearnedRRset(b"www.example.com", tdns.A, tdns.IN, b"www.example.com", (rdata,), 300, Rank.ANSWER)])
        yield ahead.idle()
        yield sleep(1.2)
        records = yield behind.get(b"www.example.com", tdns.A)
        self.assertIsNotNone(records)
        self.assertIn(records[0].ttl, (298, 299))
