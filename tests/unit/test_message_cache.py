"""
Tests for dnsgo.cache.message, the L1 cache of whole replies.

Queries are built with dnspython and parsed with dnsgo.dns.wire.parse_query;
stored replies are built by dnsgo.serve.reply.encode_reply from twisted.names
records; hits are decoded with dnspython, so the checks do not share the
cache's idea of the wire format.  Time is a twisted Clock.
"""
import gc
import struct
import sys
import tracemalloc

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.dns import wire
from dnsgo.cache import message as message_module
from dnsgo.cache.stats import CacheStats
from dnsgo.cache.message import MessageCache
from dnsgo.cache.eviction import LruSegment, S3FifoSegment
from dnsgo.cache.sizing import COST_UNIT, SharedInts, cost_units, shared_ints_capacity
from dnsgo.serve.reply import encode_reply

WWW = "www.example.com"


def query(name=WWW, qtype="A", qid=1234, rd=True, cd=False, edns=False, do=False):
    """Return the QueryInfo of a dnspython-built query."""
    flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    msg = dns.message.make_query(name, qtype, use_edns=0 if (edns or do) else False, want_dnssec=do)
    msg.flags = flags
    msg.id = qid
    return wire.parse_query(msg.to_wire())


def a_record(name=WWW, ttl=300, address="192.0.2.1"):
    """A twisted.names A record."""
    return tdns.RRHeader(name.encode(), tdns.A, tdns.IN, ttl, tdns.Record_A(address))


def cname_record(name=WWW, target="web.example.com", ttl=300):
    """A twisted.names CNAME record."""
    return tdns.RRHeader(name.encode(), tdns.CNAME, tdns.IN, ttl, tdns.Record_CNAME(target.encode()))


def soa_record(zone="example.com", ttl=900, minimum=900):
    """A twisted.names SOA record."""
    payload = tdns.Record_SOA(b"ns1." + zone.encode(), b"hostmaster." + zone.encode(), 1, 3600, 600, 86400, minimum)
    return tdns.RRHeader(zone.encode(), tdns.SOA, tdns.IN, ttl, payload)


def ns_record(zone="example.com", ttl=900):
    """A twisted.names NS record."""
    return tdns.RRHeader(zone.encode(), tdns.NS, tdns.IN, ttl, tdns.Record_NS(b"ns1." + zone.encode()))


def reply(q, answers=(), authority=(), additional=(), rcode=tdns.OK):
    """The reply bytes the miss path would store for ``q``."""
    return encode_reply(q, rcode, list(answers), list(authority), list(additional))


def positive(q, ttl=300):
    """A one-A-record reply to ``q``."""
    return reply(q, [a_record(_dotted(q), ttl)])


def _dotted(q):
    """The dotted text of ``q``'s name (case as sent)."""
    return wire.name_to_text(q.qname).rstrip(".")


def decode(data):
    """Decode reply bytes with dnspython."""
    return dns.message.from_wire(data)


def ttls_of(data):
    """The TTLs of every record of a reply, in wire order (dnspython rrsets)."""
    msg = decode(data)
    return [rrset.ttl for section in (msg.answer, msg.authority, msg.additional) for rrset in section]


def wire_ttls(data):
    """Every record's TTL, read straight from the bytes at scan_response's offsets."""
    layout = wire.scan_response(data)
    return [struct.unpack_from("!I", data, offset)[0] for offset in layout.ttl_offsets]


class _Base(SynchronousTestCase):
    """Builds a cache on a Clock."""

    def cache(self, **kwargs):
        """Return a MessageCache driven by self.clock."""
        self.clock = task.Clock()
        return MessageCache(reactor=self.clock, **kwargs)


class TTLTests(_Base):
    """TTLs count down while cached and entries expire."""

    def test_ttl_countdown(self):
        """Every TTL of a hit loses the whole seconds since the store."""
        c = self.cache()
        q = query()
        self.assertTrue(c.store(q, reply(q, [cname_record(ttl=300), a_record("web.example.com", 60)])))
        self.clock.advance(0.9)
        self.assertEqual(wire_ttls(c.lookup(q)), [300, 60])
        self.clock.advance(29.2)
        self.assertEqual(wire_ttls(c.lookup(q)), [270, 30])
        self.clock.advance(29)
        self.assertEqual(wire_ttls(c.lookup(q)), [241, 1])

    def test_expiry(self):
        """At the smallest TTL the entry is a miss, and stays one."""
        c = self.cache()
        q = query()
        c.store(q, reply(q, [cname_record(ttl=300), a_record("web.example.com", 60)]))
        self.clock.advance(59.99)
        self.assertIsNotNone(c.lookup(q))
        self.clock.advance(0.01)
        self.assertIsNone(c.lookup(q))
        self.assertIsNone(c.lookup(q))
        self.assertEqual((c.stats().hits, c.stats().misses, c.stats().entries), (1, 2, 0))

    def test_render_once_per_second(self):
        """Hits within one elapsed second reuse the rendered bytes; the next second renders again."""
        c = self.cache()
        q = query()
        c.store(q, positive(q))
        calls = []
        real = wire.render_ttl_map

        def counting(*args):
            calls.append(args[2])
            return real(*args)

        self.patch(wire, "render_ttl_map", counting)
        self.clock.advance(5.1)
        first = [c.lookup(q) for _ in range(5)]
        self.clock.advance(1)
        second = [c.lookup(q) for _ in range(5)]
        self.assertEqual(calls, [5, 6])
        self.assertEqual({wire_ttls(r)[0] for r in first}, {295})
        self.assertEqual({wire_ttls(r)[0] for r in second}, {294})

    def test_clock_going_back(self):
        """A clock set back before the store time serves the stored TTLs, never larger ones."""
        c = self.cache()
        self.clock.advance(100)
        q = query()
        c.store(q, positive(q, 300))
        self.clock.rightNow = 50.0
        self.assertEqual(wire_ttls(c.lookup(q)), [300])

    def test_min_ttl_raises_served_ttls(self):
        """min_ttl raises every TTL served, and the entry lives that long."""
        c = self.cache(min_ttl=60)
        q = query()
        c.store(q, reply(q, [cname_record(ttl=10), a_record("web.example.com", 600)]))
        self.assertEqual(wire_ttls(c.lookup(q)), [60, 600])
        self.clock.advance(59)
        self.assertEqual(wire_ttls(c.lookup(q)), [1, 541])
        self.clock.advance(1)
        self.assertIsNone(c.lookup(q))

    def test_max_ttl_caps_served_ttls(self):
        """max_ttl caps every TTL served, and the entry expires then."""
        c = self.cache(max_ttl=100)
        q = query()
        c.store(q, reply(q, [cname_record(ttl=10000), a_record("web.example.com", 5000)]))
        self.assertEqual(wire_ttls(c.lookup(q)), [100, 100])
        self.clock.advance(100)
        self.assertIsNone(c.lookup(q))

    def test_ttl_zero_not_cached(self):
        """A reply with a zero TTL (or one with the top bit set) is not cached."""
        c = self.cache()
        for ttl in (0, 0x80000000):
            q = query()
            self.assertFalse(c.store(q, reply(q, [cname_record(ttl=300), a_record("web.example.com", ttl)])))
            self.assertIsNone(c.lookup(q))
        self.assertEqual(c.stats().entries, 0)

    def test_ttl_zero_raised_by_min_ttl(self):
        """With min_ttl set, a zero TTL is raised to it and cached."""
        c = self.cache(min_ttl=30)
        q = query()
        self.assertTrue(c.store(q, positive(q, 0)))
        self.assertEqual(wire_ttls(c.lookup(q)), [30])


class CacheabilityTests(_Base):
    """What store accepts and refuses."""

    def test_tc_not_cached(self):
        """A truncated reply is never cached."""
        c = self.cache()
        q = query()
        body = bytearray(positive(q))
        body[2] |= 0x02
        self.assertFalse(c.store(q, bytes(body)))
        self.assertIsNone(c.lookup(q))

    def test_nxdomain_with_soa(self):
        """NXDOMAIN with an SOA is cached, its SOA TTL counting down, and expires with it."""
        c = self.cache()
        q = query("nope.example.com")
        self.assertTrue(c.store(q, reply(q, authority=[soa_record(ttl=900)], rcode=tdns.ENAME)))
        self.clock.advance(100.5)
        hit = decode(c.lookup(q))
        self.assertEqual(hit.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(hit.authority[0].rdtype, dns.rdatatype.SOA)
        self.assertEqual(hit.authority[0].ttl, 800)
        self.clock.advance(799.5)
        self.assertIsNone(c.lookup(q))

    def test_negative_ttl_caps(self):
        """negative_ttl caps a negative entry's lifetime and its served TTLs."""
        c = self.cache(negative_ttl=60)
        q = query("nope.example.com")
        c.store(q, reply(q, authority=[soa_record(ttl=7200)], rcode=tdns.ENAME))
        self.assertEqual(ttls_of(c.lookup(q)), [60])
        self.clock.advance(60)
        self.assertIsNone(c.lookup(q))

    def test_min_ttl_does_not_raise_negative(self):
        """min_ttl does not lengthen a negative entry."""
        c = self.cache(min_ttl=600)
        q = query("nope.example.com")
        c.store(q, reply(q, authority=[soa_record(ttl=30)], rcode=tdns.ENAME))
        self.assertEqual(ttls_of(c.lookup(q)), [30])
        self.clock.advance(30)
        self.assertIsNone(c.lookup(q))

    def test_nodata_with_soa(self):
        """NOERROR without answers but with an SOA (NODATA) is cached."""
        c = self.cache()
        q = query(qtype="AAAA")
        self.assertTrue(c.store(q, reply(q, authority=[soa_record(ttl=300)])))
        hit = decode(c.lookup(q))
        self.assertEqual((hit.rcode(), len(hit.answer), hit.authority[0].ttl), (0, 0, 300))

    def test_negative_without_soa(self):
        """NXDOMAIN or NODATA without an SOA in the authority section is not cached."""
        c = self.cache()
        q = query("nope.example.com")
        self.assertFalse(c.store(q, reply(q, rcode=tdns.ENAME)))
        self.assertFalse(c.store(q, reply(q, authority=[ns_record()], rcode=tdns.ENAME)))
        self.assertFalse(c.store(q, reply(q, authority=[ns_record()])))
        self.assertFalse(c.store(q, reply(q, additional=[soa_record()])))
        self.assertIsNone(c.lookup(q))

    def test_other_rcodes(self):
        """SERVFAIL, REFUSED and other rcodes are not cached, even with records."""
        c = self.cache()
        q = query()
        for rcode in (tdns.ESERVER, tdns.EREFUSED, tdns.EFORMAT, tdns.ENOTIMP):
            self.assertFalse(c.store(q, reply(q, [a_record()], [soa_record()], rcode=rcode)))
        self.assertEqual(c.stats().entries, 0)

    def test_garbage_and_wrong_question(self):
        """Unparseable bytes and replies to another question are refused."""
        c = self.cache()
        q = query()
        other = query("www.example.org")
        self.assertFalse(c.store(q, b"\x00\x01\x02"))
        self.assertFalse(c.store(q, positive(q)[:-3]))
        self.assertFalse(c.store(q, positive(other)))
        self.assertFalse(c.store(q, positive(query(qtype="AAAA"))))
        self.assertEqual(c.stats().entries, 0)

    def test_opt_stripped(self):
        """A stored reply's OPT record is dropped (OPT is per hop)."""
        c = self.cache()
        q = query()
        body = wire.add_opt(positive(q), 4096, True)
        self.assertTrue(c.store(q, body))
        hit = c.lookup(q)
        self.assertEqual(struct.unpack_from("!H", hit, 10)[0], 0)
        self.assertEqual(decode(hit).edns, -1)


class HitTests(_Base):
    """A hit is the stored reply turned into the reply to the new query."""

    def test_query_case_and_id(self):
        """A hit carries the query's ID and its question bytes, case included."""
        c = self.cache()
        c.store(query(qid=1), positive(query(qid=1)))
        asked = query("wWw.ExAmPlE.cOm", qid=0xBEEF)
        hit = c.lookup(asked)
        self.assertEqual(struct.unpack_from("!H", hit)[0], 0xBEEF)
        self.assertEqual(hit[12 : 12 + len(asked.question)], asked.question)
        msg = decode(hit)
        self.assertEqual(msg.question[0].name.to_text(), "wWw.ExAmPlE.cOm.")
        self.assertEqual(msg.answer[0].name, dns.name.from_text(WWW))

    def test_key_flags(self):
        """Another type, RD, CD, DO or EDNS is another entry."""
        c = self.cache()
        q = query()
        c.store(q, positive(q))
        for other in (query(qtype="AAAA"), query(rd=False), query(cd=True), query(do=True), query(edns=True)):
            self.assertIsNone(c.lookup(other))
        self.assertIsNotNone(c.lookup(q))

    def test_rd_as_stored(self):
        """RD in a hit is the query's, which is the stored one (RD is in the key)."""
        c = self.cache()
        for rd in (True, False):
            q = query(rd=rd)
            c.store(q, positive(q))
            self.assertEqual(bool(decode(c.lookup(query(rd=rd, qid=9))).flags & dns.flags.RD), rd)

    def test_corrupt_entry_is_a_miss(self):
        """An entry whose bytes broke is a miss, is dropped, and lookup does not raise."""
        c = self.cache(num_shards=1)
        q = query()
        c.store(q, positive(q))
        entry = c._shards[0].peek(q.key)
        entry.ttl_map = wire.ttl_map((65000,), (300,))  # a TTL past the end of the reply
        self.clock.advance(1)
        self.assertIsNone(c.lookup(q))
        self.assertEqual((c.stats().misses, c.stats().entries, c.stats().size_bytes), (1, 0, 0))

    def test_lookup_never_raises(self):
        """lookup of something that is not a QueryInfo is a miss, not an exception."""
        c = self.cache()
        self.assertIsNone(c.lookup(None))
        self.assertEqual(c.stats().misses, 1)


def _names(n):
    """``n`` distinct queries."""
    return [query("host%d.example.com" % i) for i in range(n)]


def query_wire(name=WWW, qtype="A", qid=1234, edns=False):
    """The bytes of a dnspython-built query with RD set."""
    msg = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    msg.id = qid
    return msg.to_wire()


class UsualLookupTests(_Base):
    """lookup_usual: the memo's hit path, from the L1 key and the query bytes alone."""

    def test_same_reply_as_lookup(self):
        """For a fresh entry stored with the query's case, it gives lookup's reply, TTLs counted down, and counts a hit."""
        for edns in (False, True):
            c = self.cache(opt_udp_size=1232)
            data = query_wire(edns=edns, qid=7)
            q = wire.parse_query(data)
            c.store(q, reply(q, [cname_record(ttl=300), a_record("web.example.com", 60)]))
            self.clock.advance(12.5)
            usual = c.lookup_usual(q.key, data)
            self.assertEqual(usual, c.lookup(q, data[:2]))
            self.assertEqual(wire_ttls(usual)[:2], [288, 48])
            self.assertEqual(decode(usual).id, 7)
            self.assertEqual((c.stats().hits, c.stats().misses), (2, 0))

    def test_unusual_cases_give_none_and_count_nothing(self):
        """No entry, an expired one, another case, a due prefetch or a broken key: None, and lookup then decides."""
        asked = []
        c = self.cache(prefetch_hits=1, prefetch_ttl_pct=50, on_prefetch=asked.append)
        data = query_wire()
        q = wire.parse_query(data)
        self.assertIsNone(c.lookup_usual(q.key, data))
        c.store(q, positive(q, ttl=100))
        mixed = query_wire("wWw.ExAmple.com")
        self.assertIsNone(c.lookup_usual(wire.parse_query(mixed).key, mixed))
        self.assertIsNone(c.lookup_usual(b"\xff", data))
        self.assertIsNotNone(c.lookup_usual(q.key, data))
        self.assertIsNotNone(c.lookup_usual(q.key, data))
        self.clock.advance(60)  # past half the TTL, with hits past the threshold: a prefetch is due
        self.assertIsNone(c.lookup_usual(q.key, data))
        self.assertEqual((c.stats().hits, c.stats().misses, asked), (2, 0, []))
        self.assertIsNotNone(c.lookup(q, data[:2]))
        self.assertEqual(len(asked), 1)
        self.assertIsNotNone(c.lookup_usual(q.key, data))  # prefetched once: usual again
        self.clock.advance(40)
        self.assertIsNone(c.lookup_usual(q.key, data))
        self.assertEqual((c.stats().hits, c.stats().misses), (4, 0))


class LRUTests(_Base):
    """Shards are segments bounded in bytes, LRU or S3-FIFO (tests/unit/test_eviction.py tests the policies)."""

    def test_eviction_order(self):
        """With eviction lru, when a shard is full the least recently used entry goes; a hit refreshes recency."""
        a, b, c_, d = _names(4)
        cost = cost_units(message_module.entry_cost(len(a.key), len(positive(a)), wire.scan_response(positive(a)).ttl_offsets)
                          + LruSegment.SLOT_BYTES)
        budget = (3 * cost + cost // 2) * COST_UNIT + SharedInts(shared_ints_capacity(4096)).cost
        cache = self.cache(num_shards=1, max_size_mb=budget / 2**20, eviction="lru")
        for q in (a, b, c_):
            self.assertTrue(cache.store(q, positive(q)))
        self.assertIsNotNone(cache.lookup(a))
        cache.store(d, positive(d))
        self.assertIsNone(cache.lookup(b))
        for q in (a, c_, d):
            self.assertIsNotNone(cache.lookup(q))
        self.assertEqual(cache.stats().evicts, 1)
        self.assertEqual(cache.stats().entries, 3)

    def test_byte_bound_per_shard(self):
        """With either policy, no shard's size goes over its share of max_size_mb; the total stays under it."""
        for policy in ("s3fifo", "lru"):
            queries = _names(400)
            cache = self.cache(num_shards=4, max_size_mb=0.05, eviction=policy)
            budget = int(0.05 * 2**20) // 4
            for n, q in enumerate(queries):
                records = [a_record(_dotted(q), 300, "192.0.2.%d" % i) for i in range(1, 2 + n % 5)]
                self.assertTrue(cache.store(q, reply(q, records)))
                if n % 3 == 0:
                    cache.lookup(queries[n // 2])
                for shard in cache._shards:
                    self.assertLessEqual(shard.size, budget)
            stats = cache.stats()
            self.assertGreater(stats.evicts, 0)
            self.assertEqual(stats.evicts + stats.entries, 400)
            self.assertLessEqual(stats.size_bytes, stats.max_size_bytes)
            self.assertGreater(stats.size_bytes, stats.max_size_bytes * 0.7)
            for index, shard in enumerate(cache._shards):
                for key in shard.keys():
                    self.assertEqual(hash(key) & 3, index)

    def test_too_big_for_a_shard(self):
        """A reply larger than a shard's budget is refused and evicts nothing."""
        cache = self.cache(num_shards=1, max_size_mb=2000 / 2**20)
        small, big = _names(2)
        cache.store(small, positive(small))
        records = [a_record(_dotted(big), 300, "192.0.2.%d" % i) for i in range(1, 100)]
        self.assertFalse(cache.store(big, reply(big, records)))
        self.assertIsNotNone(cache.lookup(small))

    def test_replace_same_key(self):
        """Storing a key again replaces its entry and its size."""
        cache = self.cache()
        q = query()
        cache.store(q, positive(q, 300))
        size = cache.stats().size_bytes
        cache.store(q, positive(q, 100))
        self.assertEqual((cache.stats().entries, cache.stats().size_bytes), (1, size))
        self.assertEqual(wire_ttls(cache.lookup(q)), [100])

    def test_size_tracks_memory(self):
        """size_bytes is within 20% of the memory tracemalloc sees the entries take, with either policy."""
        for policy in ("s3fifo", "lru"):
            self.size_tracks_memory(policy)

    def size_tracks_memory(self, policy):
        """The check of test_size_tracks_memory for one eviction policy."""
        queries = _names(3000)
        bodies = []
        for i, q in enumerate(queries):
            records = [a_record(_dotted(q), 300 + i, "192.0.2.%d" % (j + 1)) for j in range(1 + i % 12)]
            bodies.append(reply(q, records))
        body_memory = sum(sys.getsizeof(body) for body in bodies)
        cache = self.cache(num_shards=8, eviction=policy)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for q, body in zip(queries, bodies):
                cache.store(q, body)
            del body
            bodies = None
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        size = cache.stats().size_bytes
        # The bodies and keys were allocated before tracing started (the
        # cache keeps the very objects the test built), so count them too.
        held = sum(sys.getsizeof(q.key) for q in queries) + body_memory
        ratio = size / (grown + held)
        self.assertTrue(0.8 < ratio < 1.2, "%s: size_bytes %d vs measured %d (%.2f)" % (policy, size, grown + held, ratio))


class StatsTests(_Base):
    """stats() reports the counters."""

    def test_stats(self):
        """Hits, misses, the hit rate in percent with 2 decimals, sizes and entries."""
        cache = self.cache(num_shards=4, max_size_mb=1)
        self.assertEqual(cache.stats().hit_rate, 0.0)
        q = query()
        cache.lookup(q)
        cache.store(q, positive(q))
        cache.lookup(q)
        cache.lookup(q)
        body = positive(q)
        self.assertEqual(
            cache.stats(),
            CacheStats(
                hits=2,
                misses=1,
                evicts=0,
                hit_rate=66.67,
                # The TTL is one the cache shares: the entry pays nothing for it.
                size_bytes=cost_units(message_module.entry_cost(len(q.key), len(body), wire.scan_response(body).ttl_offsets)
                                      + S3FifoSegment.SLOT_BYTES) * COST_UNIT,
                max_size_bytes=2**20,
                num_shards=4,
                entries=1,
            ),
        )

    def test_bad_shards(self):
        """num_shards must be a power of two."""
        for n in (0, 3, 12):
            self.assertRaises(ValueError, MessageCache, num_shards=n, reactor=task.Clock())


class FlushTests(_Base):
    """flush drops everything, a name, a name and type, or a subtree."""

    def setUp(self):
        self.c = self.cache()
        self.queries = {}
        for name in ("example.com", "www.example.com", "a.b.example.com", "notexample.com", "com", "www.example.org"):
            for qtype in ("A", "AAAA"):
                for rd in (True, False):
                    q = query(name, qtype, rd=rd)
                    rr = tdns.RRHeader(name.encode(), tdns.A, tdns.IN, 300, tdns.Record_A("192.0.2.1"))
                    if qtype == "AAAA":
                        rr = tdns.RRHeader(name.encode(), tdns.AAAA, tdns.IN, 300, tdns.Record_AAAA("2001:db8::1"))
                    self.assertTrue(self.c.store(q, reply(q, [rr])))
                    self.queries[(name, qtype, rd)] = q

    def remaining(self):
        """The (name, type, rd) keys still cached."""
        return {k for k, q in self.queries.items() if self.c.lookup(q) is not None}

    def test_flush_all(self):
        """flush() empties the cache and its size."""
        self.assertEqual(self.c.flush(), 24)
        self.assertEqual((self.remaining(), self.c.stats().size_bytes), (set(), 0))

    def test_flush_name(self):
        """A name goes with all its types and flags, and only it (case-insensitive)."""
        self.assertEqual(self.c.flush(wire.text_to_name("WWW.example.com")), 4)
        self.assertEqual({k for k in self.queries if k[0] == "www.example.com"} & self.remaining(), set())
        self.assertEqual(len(self.remaining()), 20)

    def test_flush_name_type(self):
        """A name and type go with both RD settings; the other type stays."""
        self.assertEqual(self.c.flush(wire.text_to_name("www.example.com"), 28), 2)
        left = {k for k in self.remaining() if k[0] == "www.example.com"}
        self.assertEqual(left, {("www.example.com", "A", True), ("www.example.com", "A", False)})

    def test_flush_subtree(self):
        """A subtree is the name and the names below it, at label boundaries."""
        self.assertEqual(self.c.flush(wire.text_to_name("example.com"), subtree=True), 12)
        self.assertEqual(
            {k[0] for k in self.remaining()}, {"notexample.com", "com", "www.example.org"}
        )

    def test_flush_subtree_type(self):
        """A subtree flush with a type drops only that type."""
        self.assertEqual(self.c.flush(wire.text_to_name("example.com"), 1, subtree=True), 6)
        self.assertEqual(len(self.remaining()), 18)

    def test_flush_type_everywhere(self):
        """A type without a name goes for every name."""
        self.assertEqual(self.c.flush(qtype=28), 12)
        self.assertEqual({k[1] for k in self.remaining()}, {"A"})

    def test_flush_root_subtree(self):
        """The root's subtree is everything."""
        self.assertEqual(self.c.flush(b"\x00", subtree=True), 24)
        self.assertEqual(self.c.stats().size_bytes, 0)


class PrefetchTests(_Base):
    """Popular entries ask to be refreshed before they expire."""

    def test_trigger_once_per_entry(self):
        """Past the hit threshold and under the TTL percentage, on_prefetch runs once per stored entry."""
        asked = []
        c = self.cache(prefetch_hits=3, prefetch_ttl_pct=10, on_prefetch=asked.append)
        q = query()
        c.store(q, positive(q, 100))
        for _ in range(5):
            c.lookup(q)
        self.assertEqual(asked, [])
        self.clock.advance(90.5)
        for _ in range(5):
            self.assertIsNotNone(c.lookup(q))
        self.assertEqual(asked, [q])
        c.store(q, positive(q, 100))
        self.clock.advance(89)
        c.lookup(q)
        self.assertEqual(len(asked), 1)
        self.clock.advance(1.5)
        c.lookup(q)
        self.assertEqual(len(asked), 2)
        self.assertEqual(c.prefetches, 2)

    def test_refresh_keeps_hits(self):
        """A store replacing an entry keeps its hit count, so a hot name prefetches again soon."""
        asked = []
        c = self.cache(prefetch_hits=3, on_prefetch=asked.append)
        q = query()
        c.store(q, positive(q, 100))
        for _ in range(4):
            c.lookup(q)
        c.store(q, positive(q, 100))
        self.clock.advance(95)
        c.lookup(q)
        self.assertEqual(asked, [q])

    def test_not_enough_hits(self):
        """An entry with hits at or under the threshold is not prefetched."""
        asked = []
        c = self.cache(prefetch_hits=3, on_prefetch=asked.append)
        q = query()
        c.store(q, positive(q, 100))
        self.clock.advance(95)
        for _ in range(3):
            c.lookup(q)
        self.assertEqual(asked, [])
        c.lookup(q)
        self.assertEqual(asked, [q])

    def test_disabled(self):
        """With prefetch_hits None nothing is prefetched."""
        asked = []
        c = self.cache(on_prefetch=asked.append)
        q = query()
        c.store(q, positive(q, 100))
        self.clock.advance(99)
        for _ in range(1000):
            c.lookup(q)
        self.assertEqual(asked, [])

    def test_failing_callback(self):
        """An on_prefetch that raises does not turn the hit into a miss."""

        def boom(q):
            raise RuntimeError("boom")

        c = self.cache(prefetch_hits=0, on_prefetch=boom)
        q = query()
        c.store(q, positive(q, 10))
        self.clock.advance(9.5)
        self.assertIsNotNone(c.lookup(q))

    def hot_name(self, refresh):
        """Hit one short-TTL name twice a second for three hours; return the misses."""
        q = query()
        c = None

        def on_prefetch(asked):
            if refresh:
                # The refresh answers 50 ms later, like an upstream would.
                self.clock.callLater(0.05, c.store, asked, positive(asked, 20))

        c = self.cache(prefetch_hits=5, prefetch_ttl_pct=10, on_prefetch=on_prefetch)
        c.store(q, positive(q, 20))
        misses = 0
        for _ in range(3 * 3600 * 2):
            self.clock.advance(0.5)
            if c.lookup(q) is None:
                misses += 1
                c.store(q, positive(q, 20))
        return misses, c.prefetches

    def test_hot_name_never_expires(self):
        """A hot name refreshed through on_prefetch never expires into a miss."""
        misses, prefetches = self.hot_name(refresh=True)
        self.assertEqual(misses, 0)
        self.assertGreater(prefetches, 3 * 3600 // 20)

    def test_hot_name_without_refresh(self):
        """Without refreshes the same traffic misses at every expiry (the control)."""
        misses, _ = self.hot_name(refresh=False)
        self.assertGreaterEqual(misses, 3 * 3600 // 21)


class ServeStaleTests(_Base):
    """Expired entries within max_stale serve RFC 8767 stale answers."""

    def test_window(self):
        """Inside the window lookup misses but lookup_stale answers with TTL 30; past it, nothing."""
        c = self.cache(max_stale=100)
        q = query()
        c.store(q, reply(q, [cname_record(ttl=60), a_record("web.example.com", 120)], [ns_record(ttl=600)]))
        self.clock.advance(60)
        self.assertIsNone(c.lookup(q))
        stale = c.lookup_stale(query(qid=77))
        self.assertEqual(wire_ttls(stale), [30, 30, 30])
        self.assertEqual(struct.unpack_from("!H", stale)[0], 77)
        self.assertEqual(wire_ttls(c.lookup_stale(q, answer_ttl=7)), [7, 7, 7])
        self.assertEqual(c.stale_served, 2)
        self.assertEqual((c.stats().hits, c.stats().misses), (0, 1))
        self.clock.advance(99)
        self.assertIsNotNone(c.lookup_stale(q))
        self.clock.advance(1)
        self.assertIsNone(c.lookup_stale(q))
        self.assertIsNone(c.lookup(q))
        self.assertEqual(c.stats().entries, 0)

    def test_disabled(self):
        """With max_stale 0 an expired entry is dropped and never served."""
        c = self.cache()
        q = query()
        c.store(q, positive(q, 60))
        self.clock.advance(60)
        self.assertIsNone(c.lookup_stale(q))
        self.assertIsNone(c.lookup(q))
        self.assertEqual(c.stats().entries, 0)
        self.assertEqual(c.stale_served, 0)

    def test_fresh_entry(self):
        """lookup_stale on a fresh entry gives the fresh reply, not counted as stale."""
        c = self.cache(max_stale=100)
        q = query()
        c.store(q, positive(q, 60))
        self.clock.advance(10)
        self.assertEqual(wire_ttls(c.lookup_stale(q)), [50])
        self.assertEqual(c.stale_served, 0)
        self.assertIsNone(c.lookup_stale(query("other.example.com")))


# --- the property ------------------------------------------------------------

_LABEL = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=10)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_TTL = st.integers(0, 3) | st.integers(1, 100000)
_IPV4 = st.integers(0, 2**32 - 1).map(lambda n: ".".join(str(b) for b in n.to_bytes(4, "big")))


@st.composite
def _records(draw, qname):
    """A twisted record owned by the query name or another name."""
    owner = draw(st.just(qname) | _NAME).encode()
    ttl = draw(_TTL)
    kind = draw(st.sampled_from(["A", "CNAME", "MX", "TXT"]))
    if kind == "A":
        return tdns.RRHeader(owner, tdns.A, tdns.IN, ttl, tdns.Record_A(draw(_IPV4)))
    if kind == "CNAME":
        return tdns.RRHeader(owner, tdns.CNAME, tdns.IN, ttl, tdns.Record_CNAME(draw(_NAME).encode()))
    if kind == "MX":
        return tdns.RRHeader(
            owner, tdns.MX, tdns.IN, ttl, tdns.Record_MX(draw(st.integers(0, 65535)), draw(_NAME).encode())
        )
    return tdns.RRHeader(owner, tdns.TXT, tdns.IN, ttl, tdns.Record_TXT(draw(st.binary(max_size=30))))


@st.composite
def _cases(draw):
    """(stored query, asking query, reply body, elapsed seconds)."""
    name = draw(_NAME)
    asked_name = "".join(ch.swapcase() if draw(st.booleans()) else ch for ch in name)
    rd, cd = draw(st.booleans()), draw(st.booleans())
    stored_q = query(name, "A", qid=draw(st.integers(0, 65535)), rd=rd, cd=cd)
    asked_q = query(asked_name, "A", qid=draw(st.integers(0, 65535)), rd=rd, cd=cd)
    if draw(st.booleans()):
        answers = draw(st.lists(_records(name), min_size=1, max_size=4))
        authority = draw(st.lists(_records(name), max_size=2))
        rcode = tdns.OK
    else:
        answers = []
        soa = soa_record(name, draw(_TTL))
        authority = [soa] + draw(st.lists(_records(name), max_size=1))
        rcode = draw(st.sampled_from([tdns.OK, tdns.ENAME]))
    additional = draw(st.lists(_records(name), max_size=2))
    body = reply(stored_q, answers, authority, additional, rcode)
    elapsed = draw(st.floats(0, 120000, allow_nan=False))
    return stored_q, asked_q, body, elapsed


class PropertyTests(_Base):
    """Hits decode as the stored reply, counted down, with the query's ID and case."""

    @settings(max_examples=300, deadline=None)
    @given(_cases())
    def test_hit_decodes_as_original(self, case):
        """
        For random replies and elapsed times, a stored reply is served while
        every TTL remains above 0, and the hit decodes (dnspython) as the
        original with TTLs max(0, ttl - elapsed), the query's ID and the
        query's question case, and the stored flags (RD and CD are in the
        key); after that it is a miss.
        """
        stored_q, asked_q, body, elapsed = case
        c = self.cache(negative_ttl=10**6, max_ttl=2**31 - 1)
        original = decode(body)
        ttls = wire.scan_response(body).orig_ttls
        stored = c.store(stored_q, body)
        self.assertEqual(stored, min(ttls) > 0)
        self.clock.advance(elapsed)
        hit = c.lookup(asked_q)
        if not stored or elapsed >= min(ttls):
            self.assertIsNone(hit)
            return
        got = decode(hit)
        self.assertEqual(got.id, asked_q.id)
        self.assertEqual(got.flags, original.flags)
        self.assertEqual(got.question[0].name.to_wire(), asked_q.qname)
        self.assertEqual(got.question, original.question)
        whole = int(elapsed)
        for section in ("answer", "authority", "additional"):
            ours, theirs = getattr(got, section), getattr(original, section)
            self.assertEqual(ours, theirs, section)
            self.assertEqual([r.ttl for r in ours], [max(0, r.ttl - whole) for r in theirs], section)
