"""
Tests for L{dnsgo.cache.shared} (the shared L2 store in Redis) and
L{dnsgo.resolve.hybrid} (the hybrid resolver and its fill hook):
unit tests over the in-memory fake backend and a Clock, then workers
sharing a real redis-server.
"""
import math
import zlib

from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.names import dns, error
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dnsgo.cache import shared_format as fmt
from dnsgo.cache.rrset import Rank, RRsetCache
from dnsgo.cache.shared import SharedRRsetStore, SharedStats
from dnsgo.cache.shared_format import Kind
from dnsgo.resolve.hybrid import HybridRRsetResolver, fill_hybrid
from dnsgo.resolve.query import FlaggedQuery
from dnsgo.redis.backend import RedisUnavailable
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.guard import Guard
from dnsgo.resolve.chain import Chain, FinalAnswer
from dnsgo.cache.signing import Signer
from tests.support import redis_procs
from tests.support.fake_redis import FakeRedis, FakeRedisServer
from tests.support.records import FakeResolver, a, aaaa, addresses, cname, ns, reply_message, soa, ttls

#: A start time like a wall clock's, so stored-at times look real.
EPOCH = 1_700_000_000.0


def query(name, qtype=dns.A, **flags):
    """A query as the handler builds it."""
    return FlaggedQuery.from_name(name, qtype, **flags)


def result_of(d):
    """The result (or Failure) a Deferred has already fired with."""
    results = []
    d.addBoth(results.append)
    assert len(results) == 1, "the Deferred has not fired"
    return results[0]


class Worker:
    """One worker's hybrid L2: a local cache, a store over its own fake connection, the resolver, the fill hook."""

    def __init__(self, server, clock, *, guard=None, **store_kwargs):
        self.clock = clock
        self.redis = FakeRedis(server, guard=guard)
        self.local = RRsetCache(reactor=clock)
        self.store = SharedRRsetStore(self.redis, reactor=clock, **store_kwargs)
        self.resolver = HybridRRsetResolver(self.local, self.store, reactor=clock)
        self.fill = fill_hybrid(self.local, self.store)

    def reply(self, name, qtype=dns.A, **kwargs):
        """Fill from an upstream reply to name/qtype."""
        self.fill(query(name, qtype), reply_message(**kwargs))

    def ask(self, name, qtype=dns.A, **flags):
        """The resolver's result or failure, which must be there already."""
        return result_of(self.resolver.query(query(name, qtype, **flags)))


class StoreTestCase(SynchronousTestCase):
    """A fake Redis server and a clock at EPOCH, with a worker."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.server = FakeRedisServer(self.clock)
        self.worker = Worker(self.server, self.clock)
        self.store = self.worker.store

    def fresh(self, **kwargs):
        """Another worker on the same Redis, with an empty local cache."""
        return Worker(self.server, self.clock, **kwargs)

    def assertMiss(self, result):
        """The result is a DomainError miss."""
        self.assertIsInstance(result.value, error.DomainError)


class StoreTests(StoreTestCase):
    """SharedRRsetStore reads and writes."""

    def test_written_and_read(self):
        """A reply's answer is written under its key with EX = ceil(TTL x multiplier) and read back."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 301)])
        key = fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN)
        self.assertEqual(self.server.ttl(key), math.ceil(301 * 1.5))
        records = result_of(self.store.get(b"WWW.example.com.", dns.A))
        self.assertEqual(addresses(records), ["192.0.2.1"])
        self.assertEqual(ttls(records), [301])
        self.assertEqual(self.store.stats().writes, 1)

    def test_countdown(self):
        """The TTL counts down from the time stored, by whole seconds."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300)])
        self.clock.advance(30.7)
        self.assertEqual(ttls(result_of(self.store.get(b"www.example.com", dns.A))), [270])

    def test_expiry_and_stale(self):
        """After the DNS TTL it is a miss, but stays in Redis for serve-stale until TTL x multiplier."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 100)])
        self.clock.advance(100)
        self.assertIsNone(result_of(self.store.get(b"www.example.com", dns.A)))
        stale = result_of(self.store.get_stale(b"www.example.com", dns.A, max_stale=3600, answer_ttl=30))
        self.assertEqual((addresses(stale), ttls(stale)), (["192.0.2.1"], [30]))
        self.clock.advance(20)
        self.assertIsNone(result_of(self.store.get_stale(b"www.example.com", dns.A, max_stale=10)))
        self.assertIsNotNone(result_of(self.store.get_stale(b"www.example.com", dns.A, max_stale=3600)))
        self.clock.advance(30)
        self.assertIsNone(result_of(self.store.get_stale(b"www.example.com", dns.A, max_stale=3600)))
        self.assertEqual(self.server.live_keys(), [])

    def test_stale_of_live_entry(self):
        """get_stale of an entry still live gives its real, counted-down TTL."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 100)])
        self.clock.advance(10)
        self.assertEqual(ttls(result_of(self.store.get_stale(b"www.example.com", dns.A, max_stale=60))), [90])

    def test_one_round_trip(self):
        """A lookup is one MGET of the RRset, NODATA, NXDOMAIN and CNAME keys of the name, and the NXDOMAIN keys above it."""
        self.worker.redis.calls.clear()
        result_of(self.store.lookup(b"www.example.com", dns.AAAA))
        self.assertEqual(len(self.worker.redis.calls), 1)
        name, (keys,) = self.worker.redis.calls[0]
        self.assertEqual(name, "mget")
        self.assertEqual(keys, [
            b"dns:rr:{www.example.com}:28:1", b"dns:nd:{www.example.com}:28:1",
            b"dns:nx:{www.example.com}:1", b"dns:rr:{www.example.com}:5:1",
            b"dns:nx:{example.com}:1", b"dns:nx:{com}:1",
        ])

    def test_nxdomain_above_denies_below(self):
        """RFC 8020: a worker's NXDOMAIN for a name answers another worker's lookup of a name below it, unless newer data is there."""
        self.worker.reply(b"gone.example.com", rcode=dns.ENAME, authority=[soa()])
        self.clock.advance(1)
        found = result_of(self.store.get_negative(b"a.b.gone.example.com", dns.A))
        self.assertEqual(found[0], dns.ENAME)
        self.assertEqual(found[1].name.name, b"example.com")
        self.assertIsNone(result_of(self.store.get_negative(b"other.example.com", dns.A)))
        self.clock.advance(1)
        self.worker.reply(b"new.gone.example.com", answers=[a(b"new.gone.example.com", "192.0.2.7")])
        self.assertIsNotNone(result_of(self.store.get(b"new.gone.example.com", dns.A)))

    def test_key_prefix(self):
        """Keys carry the configured prefix."""
        store = SharedRRsetStore(FakeRedis(self.server), key_prefix="site-a:", reactor=self.clock)
        store.store_reply(dns.Query(b"x.example"), dns.OK, [a(b"x.example", "192.0.2.1")], [], [])
        self.assertEqual(self.server.live_keys(), [b"site-a:rr:{x.example}:1:1"])

    def test_ttl_bounds(self):
        """min_ttl and max_ttl bound what is written; TTL 0 is never written; negative_ttl caps negatives."""
        store = SharedRRsetStore(FakeRedis(self.server), min_ttl=60, max_ttl=600, negative_ttl=30, reactor=self.clock)
        store.store_reply(dns.Query(b"low.example"), dns.OK, [a(b"low.example", "192.0.2.1", 5)], [], [])
        store.store_reply(dns.Query(b"high.example"), dns.OK, [a(b"high.example", "192.0.2.1", 86400)], [], [])
        store.store_reply(dns.Query(b"zero.example"), dns.OK, [a(b"zero.example", "192.0.2.1", 0)], [], [])
        store.store_reply(dns.Query(b"gone.example.com"), dns.ENAME, [], [soa()], [])
        self.assertEqual(ttls(result_of(store.get(b"low.example", dns.A))), [60])
        self.assertEqual(ttls(result_of(store.get(b"high.example", dns.A))), [600])
        self.assertIsNone(result_of(store.get(b"zero.example", dns.A)))
        self.assertEqual(result_of(store.get_negative(b"gone.example.com", dns.A))[1].ttl, 30)

    def test_negative_entries(self):
        """NXDOMAIN is written per name for all types, NODATA per type, each with the SOA counting down."""
        self.worker.reply(b"gone.example.com", rcode=dns.ENAME, authority=[soa(ttl=3600, minimum=900)])
        self.worker.reply(b"www.example.com", dns.AAAA, authority=[soa(ttl=3600, minimum=900)])
        self.clock.advance(100)
        for qtype in (dns.A, dns.MX):
            rcode, record = result_of(self.store.get_negative(b"gone.example.com", qtype))
            self.assertEqual((rcode, record.type, record.ttl), (dns.ENAME, dns.SOA, 800))
        rcode, record = result_of(self.store.get_negative(b"www.example.com", dns.AAAA))
        self.assertEqual((rcode, record.ttl), (dns.OK, 800))
        self.assertIsNone(result_of(self.store.get_negative(b"www.example.com", dns.A)))
        self.assertEqual(
            sorted(self.server.live_keys()),
            [b"dns:nd:{www.example.com}:28:1", b"dns:nx:{gone.example.com}:1"],
        )

    def test_corrupt_value_is_counted_miss(self):
        """A damaged or foreign value is a miss, counted as corrupt; nothing raises."""
        self.server.set(fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN), b"garbage", 60)
        self.assertIsNone(result_of(self.store.get(b"www.example.com", dns.A)))
        stats = self.store.stats()
        self.assertEqual((stats.corrupt, stats.misses, stats.hits, stats.errors), (1, 1, 0, 0))

    def test_value_under_wrong_key(self):
        """A good value under a key it does not belong to (an AAAA set as the A key) is corrupt."""
        self.worker.reply(b"www.example.com", dns.AAAA, answers=[aaaa(b"www.example.com", "2001:db8::1")])
        value = self.server.get(fmt.rrset_key(b"dns:", b"www.example.com", dns.AAAA, dns.IN))
        self.server.set(fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN), value, 60)
        self.assertIsNone(result_of(self.store.get(b"www.example.com", dns.A)))
        self.assertEqual(self.store.stats().corrupt, 1)

    def test_failing_backend(self):
        """A failing backend makes reads misses and writes errors, counted; nothing raises."""
        self.worker.redis.fail = True
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertIsNone(result_of(self.store.get(b"www.example.com", dns.A)))
        self.assertIsNone(result_of(self.store.lookup(b"www.example.com", dns.A)))
        stats = self.store.stats()
        self.assertEqual((stats.errors, stats.misses, stats.writes, stats.queued, stats.in_flight), (3, 2, 0, 0, 0))

    def test_hanging_backend_times_out(self):
        """With a hanging Redis the guard's read_timeout ends a read as a miss, not before."""
        guard = Guard(CircuitBreaker(reactor=self.clock), read_timeout=0.5, write_timeout=0.5, reactor=self.clock)
        worker = self.fresh(guard=guard)
        worker.redis.hang = True
        d = worker.store.get(b"www.example.com", dns.A)
        self.clock.advance(0.4)
        self.assertFalse(d.called)
        self.clock.advance(0.1)
        self.assertIsNone(result_of(d))
        self.assertEqual(worker.store.stats().errors, 1)

    def test_open_breaker_skips_writes(self):
        """While the backend's breaker is open a reply is not even encoded: no write is queued, the drop is counted."""
        breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60, reactor=self.clock)
        guard = Guard(breaker, read_timeout=0.5, write_timeout=0.5, reactor=self.clock)
        worker = self.fresh(guard=guard)
        breaker.failed()
        self.assertEqual(breaker.state, "open")
        worker.store.store_reply(dns.Query(b"www.example.com"), dns.OK, [a(b"www.example.com", "192.0.2.1")], [], [])
        stats = worker.store.stats()
        self.assertEqual((stats.queued, stats.in_flight, stats.writes, stats.dropped_writes), (0, 0, 0, 1))
        self.assertEqual(self.server.live_keys(), [])

    def test_queue_full_drops(self):
        """Writes beyond max_in_flight wait in the queue; beyond its size they are dropped and counted."""
        store = SharedRRsetStore(self.worker.redis, write_queue_size=2, max_in_flight=2, reactor=self.clock)
        self.worker.redis.paused = True
        for i in range(5):
            name = b"h%d.example" % i
            store.store_reply(dns.Query(name), dns.OK, [a(name, "192.0.2.1")], [], [])
        stats = store.stats()
        self.assertEqual((stats.in_flight, stats.queued, stats.dropped_writes, stats.writes), (2, 2, 1, 0))
        idle = store.idle()
        self.assertFalse(idle.called)
        while self.worker.redis.release():
            pass
        self.assertTrue(idle.called)
        stats = store.stats()
        self.assertEqual((stats.in_flight, stats.queued, stats.writes), (0, 0, 4))
        self.assertEqual(len(self.server.live_keys()), 4)

    def test_many_synchronous_writes(self):
        """A backend that answers at once drains a long queue without recursion."""
        store = SharedRRsetStore(self.worker.redis, write_queue_size=5000, max_in_flight=1, reactor=self.clock)
        self.worker.redis.paused = True
        answers = [dns.Query(b"h%d.example" % i) for i in range(3000)]
        for q in answers:
            store.store_reply(q, dns.OK, [a(q.name.name, "192.0.2.1")], [], [])
        self.worker.redis.paused = False
        self.worker.redis.release()
        self.assertEqual(store.stats().writes, 3000)

    def test_stats_value(self):
        """stats() is a frozen value."""
        stats = self.store.stats()
        self.assertIsInstance(stats, SharedStats)
        self.assertRaises(AttributeError, setattr, stats, "hits", 5)

    def test_bad_arguments(self):
        """A multiplier below 1 or an empty queue is refused."""
        self.assertRaises(ValueError, SharedRRsetStore, self.worker.redis, ttl_multiplier=0.5, reactor=self.clock)
        self.assertRaises(ValueError, SharedRRsetStore, self.worker.redis, write_queue_size=0, reactor=self.clock)


class RankTests(StoreTestCase):
    """Only answer-rank data goes to Redis, so lower rank never replaces higher there."""

    def test_glue_and_authority_not_cached(self):
        """Authority and additional records fill neither Redis nor the local cache."""
        self.worker.reply(
            b"example.com", dns.MX,
            answers=[dns.RRHeader(b"example.com", dns.MX, dns.IN, 300, dns.Record_MX(10, b"mx.example.com"))],
            authority=[ns(b"example.com", b"ns1.example.com")],
            additional=[a(b"mx.example.com", "192.0.2.25")],
        )
        self.assertEqual(self.server.live_keys(), [b"dns:rr:{example.com}:15:1"])
        self.assertIsNone(self.worker.local.get(b"mx.example.com", dns.A, min_rank=Rank.ADDITIONAL))

    def test_glue_does_not_replace_answer(self):
        """A later reply's glue for a name does not overwrite its answer in Redis."""
        self.worker.reply(b"ns1.example.com", answers=[a(b"ns1.example.com", "192.0.2.1")])
        self.worker.reply(b"example.com", dns.NS, answers=[ns(b"example.com", b"ns1.example.com")], additional=[a(b"ns1.example.com", "192.0.2.99")])
        self.assertEqual(addresses(result_of(self.fresh().store.get(b"ns1.example.com", dns.A))), ["192.0.2.1"])

    def test_equal_rank_last_writer_wins(self):
        """Two answers for one RRset: the later write wins, as locally."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.fresh().reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.2")])
        self.assertEqual(addresses(result_of(self.store.get(b"www.example.com", dns.A))), ["192.0.2.2"])

    def test_lower_rank_values_ignored(self):
        """A value of rank below answer (a future writer's glue) is not served, and is not corrupt."""
        record = [a(b"www.example.com", "192.0.2.1")]
        value = fmt.encode_value(Kind.RRSET, EPOCH, 300, Rank.ADDITIONAL, record)
        self.server.set(fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN), value, 450)
        self.assertIsNone(result_of(self.store.get(b"www.example.com", dns.A)))
        self.assertEqual(self.store.stats().corrupt, 0)


class NewestWinsTests(StoreTestCase):
    """Between entries of one name, the newest stored wins."""

    def test_newer_nxdomain_hides_rrset(self):
        """An NXDOMAIN stored after an RRset of the name answers."""
        self.worker.reply(b"x.example.com", answers=[a(b"x.example.com", "192.0.2.1")])
        self.clock.advance(1)
        self.worker.reply(b"x.example.com", rcode=dns.ENAME, authority=[soa()])
        self.assertEqual(result_of(self.store.get_negative(b"x.example.com", dns.A))[0], dns.ENAME)
        self.assertIsNone(result_of(self.store.get(b"x.example.com", dns.A)))

    def test_older_nxdomain_is_hidden(self):
        """An RRset stored after an NXDOMAIN of the name answers (the name exists after all)."""
        self.worker.reply(b"x.example.com", rcode=dns.ENAME, authority=[soa()])
        self.clock.advance(1)
        self.worker.reply(b"x.example.com", answers=[a(b"x.example.com", "192.0.2.1")])
        self.assertEqual(addresses(result_of(self.store.get(b"x.example.com", dns.A))), ["192.0.2.1"])
        self.assertIsNone(result_of(self.store.get_negative(b"x.example.com", dns.A)))

    def test_older_nxdomain_hidden_by_cname(self):
        """A CNAME stored after an NXDOMAIN of the name is followed instead."""
        self.worker.reply(b"x.example.com", rcode=dns.ENAME, authority=[soa()])
        self.clock.advance(1)
        self.worker.reply(b"x.example.com", dns.CNAME, answers=[cname(b"x.example.com", b"y.example.com")])
        entry = result_of(self.store.lookup(b"x.example.com", dns.A))
        self.assertEqual(entry.records[0].type, dns.CNAME)

    def test_nodata_and_rrset(self):
        """NODATA and an RRset of the same type: the newer answers."""
        self.worker.reply(b"x.example.com", dns.AAAA, authority=[soa()])
        self.clock.advance(1)
        self.worker.reply(b"x.example.com", dns.AAAA, answers=[aaaa(b"x.example.com", "2001:db8::1")])
        self.assertEqual(len(result_of(self.store.get(b"x.example.com", dns.AAAA))), 1)
        self.clock.advance(1)
        self.worker.reply(b"x.example.com", dns.AAAA, authority=[soa()])
        self.assertIsNone(result_of(self.store.get(b"x.example.com", dns.AAAA)))
        self.assertEqual(result_of(self.store.get_negative(b"x.example.com", dns.AAAA))[0], dns.OK)


class FlushTests(StoreTestCase):
    """flush removes keys by name, type, subtree or all, and the queued writes it covers."""

    def setUp(self):
        super().setUp()
        for name in (b"example.com", b"www.example.com", b"a.b.example.com", b"notexample.com"):
            self.worker.reply(name, answers=[a(name, "192.0.2.1")])
            self.worker.reply(name, dns.AAAA, answers=[aaaa(name, "2001:db8::1")])
        self.worker.reply(b"gone.example.com", rcode=dns.ENAME, authority=[soa()])

    def flush(self, *args, **kwargs):
        """Flush; the count."""
        return result_of(self.store.flush(*args, **kwargs))

    def test_all(self):
        """flush() removes every cache key and counts them."""
        self.assertEqual(self.flush(), 9)
        self.assertEqual(self.server.live_keys(), [])

    def test_name_type_subtree(self):
        """flush by name, by name and type, by type, and by subtree remove what they say."""
        self.assertEqual(self.flush(b"WWW.example.com", dns.A), 1)
        self.assertEqual(self.flush(b"www.example.com"), 1)
        self.assertEqual(self.flush(type=dns.AAAA), 3 + 1)  # three AAAA sets and the NXDOMAIN
        self.assertEqual(self.flush(b"example.com", subtree=True), 2)
        self.assertEqual(self.server.live_keys(), [b"dns:rr:{notexample.com}:1:1"])

    def test_queued_writes_flushed(self):
        """Writes still queued for flushed names are dropped, the others still go out."""
        self.worker.redis.paused = True
        store = SharedRRsetStore(self.worker.redis, max_in_flight=1, reactor=self.clock)
        for name in (b"q0.example.org", b"q1.example.org", b"q2.example.net"):
            store.store_reply(dns.Query(name), dns.OK, [a(name, "192.0.2.1")], [], [])
        self.assertEqual(store.stats().queued, 2)
        d = store.flush(b"example.org", subtree=True)
        self.assertEqual(store.stats().queued, 1)
        self.worker.redis.paused = False
        while self.worker.redis.release():
            pass
        result_of(d)
        self.assertIn(b"dns:rr:{q2.example.net}:1:1", self.server.live_keys())
        self.assertNotIn(b"dns:rr:{q1.example.org}:1:1", self.server.live_keys())

    def test_flush_failure(self):
        """A flush while Redis is unavailable fails with RedisUnavailable."""
        self.worker.redis.fail = True
        failure = result_of(self.store.flush())
        self.assertIsInstance(failure.value, RedisUnavailable)


class HybridResolverTests(StoreTestCase):
    """HybridRRsetResolver: local cache in front, Redis behind, misses go on."""

    def test_local_hit_stays_local(self):
        """What the local cache holds is answered without asking Redis."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.worker.redis.calls.clear()
        answers, _, _ = self.worker.ask(b"www.example.com")
        self.assertEqual(addresses(answers), ["192.0.2.1"])
        self.assertEqual(self.worker.redis.calls, [])
        self.assertEqual((self.worker.resolver.local_hits, self.worker.resolver.shared_hits), (1, 0))

    def test_shared_hit_counted_down_and_copied(self):
        """A fresh worker answers from Redis with the TTL counted down, and keeps a local copy counting on."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300)])
        self.clock.advance(10.6)
        other = self.fresh()
        answers, _, _ = other.ask(b"www.example.com")
        self.assertEqual((addresses(answers), ttls(answers)), (["192.0.2.1"], [290]))
        self.assertEqual(other.resolver.shared_hits, 1)
        self.clock.advance(0.5)
        other.redis.calls.clear()
        answers, _, _ = other.ask(b"www.example.com")
        self.assertEqual(ttls(answers), [289])
        self.assertEqual(other.redis.calls, [])
        self.assertEqual(other.resolver.local_hits, 1)

    def test_chain_across_workers(self):
        """
        A CNAME chain is assembled from Redis hop by hop, one round trip per
        name, once each hop was learnt from its own question (the target's
        A that came with the CNAME is not shared).
        """
        self.worker.reply(
            b"www.example.com",
            answers=[cname(b"www.example.com", b"web.example.net", 600), a(b"web.example.net", "192.0.2.7", 60)],
        )
        self.assertIsNone(result_of(self.fresh().store.get(b"web.example.net", dns.A)))
        self.worker.reply(b"web.example.net", answers=[a(b"web.example.net", "192.0.2.7", 60)])
        other = self.fresh()
        answers, _, _ = other.ask(b"www.example.com")
        self.assertEqual([rr.type for rr in answers], [dns.CNAME, dns.A])
        self.assertEqual(ttls(answers), [600, 60])
        self.assertEqual([c[0] for c in other.redis.calls], ["mget", "mget"])

    def test_chain_local_then_shared(self):
        """A chain whose CNAME is local and whose target only Redis holds is answered."""
        other = self.fresh()
        other.reply(b"www.example.com", dns.CNAME, answers=[cname(b"www.example.com", b"web.example.net")])
        self.worker.reply(b"web.example.net", answers=[a(b"web.example.net", "192.0.2.7")])
        other.redis.calls.clear()
        answers, _, _ = other.ask(b"www.example.com")
        self.assertEqual([rr.type for rr in answers], [dns.CNAME, dns.A])
        self.assertEqual(len(other.redis.calls), 1)

    def test_negatives_from_redis(self):
        """NXDOMAIN and NODATA from Redis are answered and copied locally."""
        self.worker.reply(b"gone.example.com", rcode=dns.ENAME, authority=[soa()])
        self.worker.reply(b"www.example.com", dns.AAAA, authority=[soa()])
        other = self.fresh()
        failure = other.ask(b"gone.example.com", dns.TXT)
        self.assertIsInstance(failure.value, FinalAnswer)
        self.assertEqual(failure.value.rcode, dns.ENAME)
        answers, authority, _ = other.ask(b"www.example.com", dns.AAAA)
        self.assertEqual((answers, [rr.type for rr in authority]), ([], [dns.SOA]))
        self.assertEqual(other.local.get_negative(b"gone.example.com", dns.MX)[0], dns.ENAME)
        self.assertEqual(other.local.get_negative(b"www.example.com", dns.AAAA)[0], dns.OK)

    def test_miss(self):
        """What neither cache knows is a DomainError miss, counted."""
        self.assertMiss(self.worker.ask(b"nothing.example.com"))
        self.assertEqual(self.worker.resolver.misses, 1)
        self.assertEqual(self.store.stats().misses, 1)

    def test_dnssec_misses_without_redis(self):
        """DO queries and qtype ANY miss without a Redis round trip."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        other = self.fresh()
        self.assertMiss(other.ask(b"www.example.com", dnssec_ok=True))
        self.assertMiss(other.ask(b"www.example.com", dns.ANY))
        self.assertEqual(other.redis.calls, [])

    def test_failing_redis_goes_to_forwarder(self):
        """With Redis failing, a chain with the hybrid resolver first gets its answer from the forwarder."""
        other = self.fresh()
        other.redis.fail = True
        forwarder = FakeResolver()
        chain = Chain([other.resolver, forwarder])
        answers, _, _ = result_of(chain.query(query(b"www.example.com")))
        self.assertEqual(addresses(answers), ["198.51.100.1"])
        self.assertEqual(len(forwarder.queries), 1)
        self.assertEqual(other.store.stats().errors, 1)

    def test_hanging_redis_goes_to_forwarder_after_timeout(self):
        """With Redis hanging, the forwarder answers once the read timeout has passed."""
        guard = Guard(CircuitBreaker(reactor=self.clock), read_timeout=0.5, reactor=self.clock)
        other = self.fresh(guard=guard)
        other.redis.hang = True
        forwarder = FakeResolver()
        d = Chain([other.resolver, forwarder]).query(query(b"www.example.com"))
        self.assertFalse(d.called)
        self.clock.advance(0.5)
        self.assertEqual(addresses(result_of(d)[0]), ["198.51.100.1"])

    def test_corrupt_value_goes_to_forwarder(self):
        """A corrupt value is a miss for the chain, counted as corrupt."""
        self.server.set(fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN), b"DG\x01junk", 60)
        forwarder = FakeResolver()
        answers, _, _ = result_of(Chain([self.worker.resolver, forwarder]).query(query(b"www.example.com")))
        self.assertEqual(addresses(answers), ["198.51.100.1"])
        self.assertEqual(self.store.stats().corrupt, 1)

    def test_async_redis(self):
        """Replies that come later (a real network) are waited for."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        other = self.fresh()
        other.redis.paused = True
        d = other.resolver.query(query(b"www.example.com"))
        self.assertFalse(d.called)
        other.redis.release()
        self.assertEqual(addresses(result_of(d)[0]), ["192.0.2.1"])


class BrokenLocal(RRsetCache):
    """A local cache whose every operation raises."""

    def get(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")

    def store_learned(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")


class LocalInsertTests(SynchronousTestCase):
    """RRsetCache.insert_rrset / insert_negative, which copy entries from Redis into the local cache."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(EPOCH)
        self.cache = RRsetCache(min_ttl=60, max_ttl=600, negative_ttl=100, reactor=self.clock)

    def test_as_stored(self):
        """An RRset counts down from its own store time; min_ttl is not applied again, max_ttl is."""
        payloads = [dns.Record_A("192.0.2.1")]
        self.cache.insert_rrset(b"Short.example", dns.A, dns.IN, payloads, 30, stored_at=EPOCH - 10.5)
        self.cache.insert_rrset(b"long.example", dns.A, dns.IN, payloads, 86400)
        self.assertEqual(ttls(self.cache.get(b"short.example", dns.A)), [20])
        self.assertEqual(self.cache.get(b"short.example", dns.A)[0].name.name, b"Short.example")
        self.assertEqual(ttls(self.cache.get(b"long.example", dns.A)), [600])

    def test_expired_and_future(self):
        """An RRset already expired is not kept; one stored 'in the future' (clock skew) counts from now."""
        payloads = [dns.Record_A("192.0.2.1")]
        self.cache.insert_rrset(b"old.example", dns.A, dns.IN, payloads, 30, stored_at=EPOCH - 30)
        self.cache.insert_rrset(b"skew.example", dns.A, dns.IN, payloads, 30, stored_at=EPOCH + 5)
        self.assertIsNone(self.cache.get(b"old.example", dns.A))
        self.clock.advance(1)
        self.assertEqual(ttls(self.cache.get(b"skew.example", dns.A)), [29])

    def test_negatives(self):
        """NXDOMAIN and NODATA copies keep their SOA, bounded by negative_ttl; the rank rules still apply."""
        self.cache.insert_negative(b"gone.example.com", None, dns.IN, dns.ENAME, soa(), 900)
        rcode, record = self.cache.get_negative(b"gone.example.com", dns.A)
        self.assertEqual((rcode, record.ttl, record.name.name), (dns.ENAME, 100, b"example.com"))
        self.cache.insert_rrset(b"gone.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.1")], 60, rank=Rank.ADDITIONAL)
        self.assertEqual(self.cache.get_negative(b"gone.example.com", dns.A)[0], dns.ENAME)
        self.cache.insert_negative(b"gone.example.com", dns.AAAA, dns.IN, dns.OK, soa(), 50)
        self.assertIsNone(self.cache.get_negative(b"gone.example.com", dns.A))
        self.assertEqual(self.cache.get_negative(b"gone.example.com", dns.AAAA)[0], dns.OK)


class CopyFails(RRsetCache):
    """A local cache that cannot take copies from Redis."""

    def insert_rrset(self, *args, **kwargs):
        """Fail."""
        raise ZeroDivisionError("boom")


class FailingStore:
    """A shared store whose lookups fail asynchronously (a bug, not Redis being down)."""

    def __init__(self):
        self.pending = []

    def lookup(self, name, type, cls):
        """A Deferred the test fails later."""
        d = defer.Deferred()
        self.pending.append(d)
        return d


class ResolverErrorTests(StoreTestCase):
    """Unexpected errors on the asynchronous path are misses or still answers, never errors."""

    def test_copy_failure_still_answers(self):
        """If the local copy fails, the answer from Redis is still given; the error is counted and logged once."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        resolver = HybridRRsetResolver(CopyFails(reactor=self.clock), self.fresh().store, reactor=self.clock)
        answers, _, _ = result_of(resolver.query(query(b"www.example.com")))
        self.assertEqual(addresses(answers), ["192.0.2.1"])
        self.assertEqual(resolver.errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_async_failure_is_a_miss(self):
        """A lookup Deferred that fails is a DomainError miss, counted and logged."""
        store = FailingStore()
        resolver = HybridRRsetResolver(RRsetCache(reactor=self.clock), store, reactor=self.clock)
        d = resolver.query(query(b"www.example.com"))
        store.pending[0].errback(ZeroDivisionError("boom"))
        self.assertMiss(result_of(d))
        self.assertEqual((resolver.errors, resolver.misses), (1, 1))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_malformed_backend_reply(self):
        """An MGET reply that is not a list of the right length is a miss and an error, not an exception."""
        self.worker.redis.mget = lambda keys: defer.succeed([None])
        self.assertIsNone(result_of(self.store.lookup(b"www.example.com", dns.A)))
        self.assertEqual((self.store.stats().errors, self.store.stats().misses), (1, 1))


class FillHybridTests(StoreTestCase):
    """fill_hybrid, the forwarder's hook in mode hybrid."""

    def test_fills_both(self):
        """A reply fills the local cache and Redis."""
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertIsNotNone(self.worker.local.get(b"www.example.com", dns.A))
        self.assertEqual(self.server.live_keys(), [b"dns:rr:{www.example.com}:1:1"])

    def test_truncated_and_cd_not_stored(self):
        """Truncated replies and replies to CD queries are stored nowhere."""
        self.worker.fill(query(b"www.example.com"), reply_message([a(b"www.example.com", "192.0.2.1")], trunc=True))
        self.worker.fill(query(b"www.example.com", checking_disabled=True), reply_message([a(b"www.example.com", "192.0.2.1")]))
        self.assertEqual(self.server.live_keys(), [])
        self.assertEqual(self.worker.local.stats().entries, 0)

    def test_never_raises(self):
        """A broken local cache does not stop the Redis write, nor make the hook raise."""
        fill = fill_hybrid(BrokenLocal(reactor=self.clock), self.store)
        fill(query(b"www.example.com"), reply_message([a(b"www.example.com", "192.0.2.1")]))
        self.assertEqual(len(self.server.live_keys()), 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_broken_local_lookup_is_a_miss(self):
        """A local cache that raises on lookup makes a miss (logged once), never an error."""
        resolver = HybridRRsetResolver(BrokenLocal(reactor=self.clock), self.store, reactor=self.clock)
        for _ in range(2):
            self.assertMiss(result_of(resolver.query(query(b"www.example.com"))))
        self.assertEqual(resolver.errors, 2)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class RealRedisTests(TestCase):
    """Workers sharing a real redis-server through the real single-server backend."""

    skip = redis_procs.SKIP

    def setUp(self):
        self.redis = redis_procs.RedisServer().start()
        self.addCleanup(self.redis.stop)

    @defer.inlineCallbacks
    def worker(self):
        """A worker: its own backend connection, local cache, store and resolver."""
        from twisted.internet import reactor

        from dnsgo.config import Address, SharedCacheConfig
        from dnsgo.redis.factory import build_backend

        config = SharedCacheConfig(enabled=True, address=Address("127.0.0.1", self.redis.port), read_timeout=2.0, write_timeout=2.0)
        backend = build_backend(config, "", reactor)
        yield backend.start()
        self.addCleanup(backend.stop)
        local = RRsetCache(reactor=reactor)
        store = SharedRRsetStore(backend, key_prefix=config.key_prefix, ttl_multiplier=config.ttl_multiplier,
                                 reactor=reactor)
        return HybridRRsetResolver(local, store, reactor=reactor), fill_hybrid(local, store), store

    @defer.inlineCallbacks
    def test_shared_between_workers(self):
        """Worker B answers what worker A learnt, from Redis, with the TTL counted down across real time."""
        resolver_a, fill_a, store_a = yield self.worker()
        fill_a(query(b"www.example.com"), reply_message([a(b"www.example.com", "192.0.2.1", 300)]))
        yield store_a.idle()
        self.assertEqual(store_a.stats().writes, 1)
        key = "dns:rr:{www.example.com}:1:1"
        self.assertTrue(440 <= int(redis_procs.cli(self.redis.port, "TTL", key)) <= 450)

        resolver_b, _, store_b = yield self.worker()
        answers, _, _ = yield resolver_b.query(query(b"www.example.com"))
        self.assertEqual(addresses(answers), ["192.0.2.1"])
        first = answers[0].ttl
        self.assertIn(first, (299, 300))
        self.assertEqual(resolver_b.shared_hits, 1)

        from twisted.internet import reactor

        yield task.deferLater(reactor, 1.1, lambda: None)
        resolver_c, _, _ = yield self.worker()
        answers, _, _ = yield resolver_c.query(query(b"www.example.com"))
        self.assertEqual(answers[0].ttl, first - 1)
        answers, _, _ = yield resolver_b.query(query(b"www.example.com"))
        self.assertEqual(answers[0].ttl, first - 1)
        self.assertEqual(resolver_b.local_hits, 1)

    @defer.inlineCallbacks
    def test_corrupt_value_is_a_miss(self):
        """A value set with redis-cli under a cache key is a counted miss."""
        redis_procs.cli(self.redis.port, "SET", "dns:rr:{www.example.com}:1:1", "not a dnsgo value", "EX", "60")
        resolver, _, store = yield self.worker()
        yield self.assertFailure(resolver.query(query(b"www.example.com")), error.DomainError)
        self.assertEqual((store.stats().corrupt, store.stats().misses), (1, 1))

    @defer.inlineCallbacks
    def test_flush(self):
        """flush removes the keys from the real server."""
        _, fill, store = yield self.worker()
        for name in (b"a.example.com", b"b.example.com", b"c.example.org"):
            fill(query(name), reply_message([a(name, "192.0.2.1")]))
        yield store.idle()
        removed = yield store.flush(b"example.com", subtree=True)
        self.assertEqual(removed, 2)
        self.assertEqual(redis_procs.cli(self.redis.port, "KEYS", "*"), "dns:rr:{c.example.org}:1:1")


class FlushSharedTests(StoreTestCase):
    """invalidation.flush_shared: the API's sharedCleared."""

    def test_cleared_true_and_key_gone(self):
        """A name flush including rrset clears the shared keys and reports True."""
        from dnsgo.invalidation.flush import Flush, flush_shared

        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertTrue(self.server.live_keys())
        self.assertTrue(self.successResultOf(flush_shared(self.store, Flush("www.example.com"))))
        self.assertEqual(self.server.live_keys(), [])

    def test_false_without_store_or_rrset_or_redis(self):
        """No shared store, a message-only flush, or a failing Redis: False, and no exception."""
        from dnsgo.invalidation.flush import Flush, flush_shared

        self.assertFalse(self.successResultOf(flush_shared(None, Flush("www.example.com"))))
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])
        self.assertFalse(self.successResultOf(flush_shared(self.store, Flush("www.example.com", caches="message"))))
        self.assertTrue(self.server.live_keys())
        self.worker.redis.fail = True
        self.assertFalse(self.successResultOf(flush_shared(self.store, Flush("www.example.com"))))


class TrustTests(StoreTestCase):
    """What a reader believes of a value in Redis (docs/redis-format.md, "Trust")."""

    KEY = fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN)

    def plant(self, records, *, key=KEY, stored_at=EPOCH, ttl=300, kind=Kind.RRSET, **sign):
        """Write a value by hand, as anyone with access to Redis could."""
        self.server.set(key, fmt.encode_value(kind, stored_at, ttl, Rank.ANSWER, records, key=key, **sign), 3600)

    def test_other_owners_records_rejected(self):
        """
        A value under www's key holding evil's records is a miss, counted
        as rejected, and does not reach the local cache under either name.
        """
        self.plant([a(b"evil.example.com", "6.6.6.6")])
        other = self.fresh()
        self.assertMiss(other.ask(b"www.example.com"))
        self.assertEqual(other.store.stats().rejected, 1)
        self.assertIsNone(other.local.get(b"evil.example.com", dns.A))
        self.assertIsNone(other.local.get(b"www.example.com", dns.A))

    def test_foreign_soa_rejected(self):
        """An NXDOMAIN value whose SOA is not of the name's zone is rejected."""
        key = fmt.nxdomain_key(b"dns:", b"www.example.com", dns.IN)
        self.plant([soa(b"victim.test")], key=key, kind=Kind.NXDOMAIN)
        other = self.fresh()
        self.assertMiss(other.ask(b"www.example.com"))
        self.assertEqual(other.store.stats().rejected, 1)

    def test_future_stored_at_rejected(self):
        """A value stored 10 years ahead is rejected; one a second ahead (clock skew) is served."""
        self.plant([a(b"www.example.com", "192.0.2.1")], stored_at=EPOCH + 10 * 365 * 86400)
        self.assertIsNone(result_of(self.fresh().store.get(b"www.example.com", dns.A)))
        self.plant([a(b"www.example.com", "192.0.2.1")], stored_at=EPOCH + 1)
        self.assertEqual(addresses(result_of(self.fresh().store.get(b"www.example.com", dns.A))), ["192.0.2.1"])

    def test_ttl_clamped_on_read(self):
        """A TTL of 2**31 - 1 is read as max_ttl, and the local copy lives no longer."""
        self.plant([a(b"www.example.com", "192.0.2.1")], ttl=2**31 - 1)
        other = self.fresh(max_ttl=3600)
        answers, _, _ = other.ask(b"www.example.com")
        self.assertEqual(ttls(answers), [3600])
        self.clock.advance(3600)
        self.assertIsNone(other.local.get(b"www.example.com", dns.A))

    def test_record_count_bounded(self):
        """RRsets over MAX_RECORDS are neither written nor read."""
        many = [a(b"www.example.com", f"10.0.{i // 256}.{i % 256}") for i in range(fmt.MAX_RECORDS + 1)]
        self.assertRaises(fmt.TooLarge, fmt.encode_value, Kind.RRSET, EPOCH, 300, Rank.ANSWER, many)
        self.worker.reply(b"www.example.com", answers=many)
        self.assertEqual(self.server.get(self.KEY), None)
        self.assertEqual(self.store.stats().dropped_writes, 1)
        value = bytearray(fmt.encode_value(Kind.RRSET, EPOCH, 300, Rank.ANSWER, many[:2]))
        value[18:20] = (fmt.MAX_RECORDS + 1).to_bytes(2, "big")
        self.assertIsNone(fmt.decode_value(bytes(value[:-4]) + zlib.crc32(bytes(value[:-4])).to_bytes(4, "big")))
        self.assertIsNone(fmt.decode_value(b"DG\x02" + b"\x00" * fmt.MAX_VALUE_BYTES))


class SigningTests(StoreTestCase):
    """Values signed with cache.shared_cache.signing_key."""

    KEY = fmt.rrset_key(b"dns:", b"www.example.com", dns.A, dns.IN)

    def setUp(self):
        super().setUp()
        self.signer = Signer(b"0123456789abcdef-key")
        self.worker = Worker(self.server, self.clock, signer=self.signer)
        self.worker.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1")])

    def test_signed_value_read_with_the_key(self):
        """A worker with the same key reads the value; one without a key reads it too (Redis trusted)."""
        for kwargs in ({"signer": self.signer}, {}):
            self.assertEqual(addresses(result_of(self.fresh(**kwargs).store.get(b"www.example.com", dns.A))), ["192.0.2.1"])
        self.assertTrue(fmt.signed_by(self.server.get(self.KEY), self.KEY, self.signer))

    def test_other_key_is_a_counted_miss(self):
        """A reader with another key misses and counts a bad signature."""
        other = self.fresh(signer=Signer(b"another-key-0123456789"))
        self.assertIsNone(result_of(other.store.get(b"www.example.com", dns.A)))
        self.assertEqual(other.store.stats().bad_signatures, 1)

    def test_unsigned_forgery_is_a_counted_miss(self):
        """A well-formed unsigned value planted by hand is a miss for a reader with the key."""
        self.server.set(self.KEY, fmt.encode_value(Kind.RRSET, EPOCH, 300, Rank.ANSWER, [a(b"www.example.com", "6.6.6.6")]), 3600)
        other = self.fresh(signer=self.signer)
        self.assertMiss(other.ask(b"www.example.com"))
        self.assertEqual(other.store.stats().bad_signatures, 1)

    def test_value_moved_to_another_key(self):
        """A signed value copied to another name's key fails the check (the key is signed)."""
        self.worker.reply(b"evil.example.com", answers=[a(b"evil.example.com", "6.6.6.6")])
        evil = self.server.get(fmt.rrset_key(b"dns:", b"evil.example.com", dns.A, dns.IN))
        self.server.set(self.KEY, evil, 3600)
        other = self.fresh(signer=self.signer)
        self.assertIsNone(result_of(other.store.get(b"www.example.com", dns.A)))
        self.assertEqual(other.store.stats().bad_signatures, 1)

    def test_flipped_byte(self):
        """A signed value with one record byte changed (CRC fixed up) fails the MAC."""
        value = bytearray(self.server.get(self.KEY))
        value[-40] ^= 1
        value = bytes(value[:-4]) + zlib.crc32(bytes(value[:-4])).to_bytes(4, "big")
        self.server.set(self.KEY, value, 3600)
        other = self.fresh(signer=self.signer)
        self.assertIsNone(result_of(other.store.get(b"www.example.com", dns.A)))
        self.assertEqual(other.store.stats().bad_signatures, 1)


class SharedClockTests(StoreTestCase):
    """Remaining TTLs on Redis's clock, whatever the workers' clocks say."""

    def skewed(self, skew: float):
        """A worker whose own clock is ``skew`` seconds off the Redis server's."""
        clock = Clock()
        clock.advance(EPOCH + skew)
        return Worker(self.server, clock), clock

    def test_workers_30_s_apart_agree(self):
        """
        A worker 30 s ahead writes, one 30 s behind reads: after both sampled
        Redis's TIME, the reader sees the TTL counted down by the time that
        really passed (on the server's clock), not by 60 s more or less.
        """
        ahead, ahead_clock = self.skewed(30)
        behind, behind_clock = self.skewed(-30)
        for worker in (ahead, behind):
            self.assertTrue(result_of(worker.store.sync_clock()))
        self.assertEqual((ahead.store.clock_offset, behind.store.clock_offset), (-30.0, 30.0))
        ahead.reply(b"www.example.com", answers=[a(b"www.example.com", "192.0.2.1", 300)])
        for clock in (self.clock, ahead_clock, behind_clock):
            clock.advance(10)
        self.assertEqual(ttls(result_of(behind.store.get(b"www.example.com", dns.A))), [290])
        answers, _, _ = behind.ask(b"www.example.com")
        self.assertEqual(ttls(answers), [290])
        # The local copy B keeps counts on B's own clock from the converted time.
        behind_clock.advance(5)
        self.assertEqual(ttls(behind.local.get(b"www.example.com", dns.A)), [285])

    def test_unsampled_clock_is_the_workers(self):
        """Before a sample (or when Redis cannot be asked), the offset stays 0 and sync_clock says False."""
        worker, _ = self.skewed(30)
        self.assertEqual(worker.store.clock_offset, 0.0)
        worker.redis.fail = True
        self.assertFalse(result_of(worker.store.sync_clock()))
        self.assertEqual(worker.store.clock_offset, 0.0)
