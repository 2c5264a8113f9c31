"""
L1 entries that keep the server's OPT record (``MessageCache(opt_udp_size=...)``,
as the assembled server builds it): the cache's own views of such an entry,
and the handler's replies, which must be byte for byte those of a handler
whose L1 leaves the OPT out, on every hit path (fits, truncated, TCP, no
EDNS, DO, the memo of parsed queries).
"""
import dns.edns
import dns.flags
import dns.message
import dns.rrset
from hypothesis import given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from dnsgo.cache.message import MessageCache, entry_cost
from dnsgo.cache.eviction import S3FifoSegment
from dnsgo.cache.sizing import COST_UNIT, cost_units
from dnsgo.dns import wire
from dnsgo.resolve.chain import Chain
from dnsgo.serve.acl import ClientFilter
from dnsgo.serve.handler import QueryHandler

SERVER_UDP = 1232


def reply_body(query: bytes, addresses: int) -> bytes:
    """An upstream-like reply to ``query`` with ``addresses`` A records, without OPT."""
    request = dns.message.from_wire(query)
    response = dns.message.make_response(request)
    response.use_edns(False)
    name = request.question[0].name
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", *[f"192.0.2.{i % 250}" for i in range(addresses)]))
    return response.to_wire()


def make_query(edns: bool, do: bool, payload: int, name: str = "www.example.test") -> bytes:
    if not edns:
        return dns.message.make_query(name, "A", use_edns=False).to_wire()
    return dns.message.make_query(name, "A", use_edns=0, payload=payload, want_dnssec=do).to_wire()


class CacheViewTests(unittest.TestCase):
    """What MessageCache returns for an entry stored with the OPT."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.cache = MessageCache(opt_udp_size=SERVER_UDP, max_stale=600, reactor=self.clock)
        self.plain = MessageCache(max_stale=600, reactor=self.clock)

    def store_both(self, query: bytes, addresses: int = 2) -> wire.QueryInfo:
        q = wire.parse_query(query)
        body = reply_body(query, addresses)
        self.assertTrue(self.cache.store(q, body))
        self.assertTrue(self.plain.store(q, body))
        return q

    def test_lookup_carries_one_opt_with_the_keys_do_bit(self):
        """An EDNS hit ends in one OPT of the server's size, DO as asked; TTLs still count down."""
        for do in (False, True):
            q = self.store_both(make_query(True, do, 4096))
            self.clock.advance(7)
            reply = dns.message.from_wire(self.cache.lookup(q))
            self.assertEqual(reply.edns, 0)
            self.assertEqual(reply.payload, SERVER_UDP)
            self.assertEqual(bool(reply.ednsflags & dns.flags.DO), do)
            self.assertEqual(reply.answer[0].ttl, 293)
            self.assertEqual(self.cache.lookup(q), self.plain.lookup(q)[:10] + self.cache.lookup(q)[10:12]
                             + self.plain.lookup(q)[12:] + self.cache.lookup(q)[-wire.APPENDED_OPT_LENGTH:])
            self.assertEqual(wire.drop_appended_opt(self.cache.lookup(q)), self.plain.lookup(q))

    def test_no_edns_no_opt(self):
        """A query without EDNS is stored and served without an OPT."""
        q = self.store_both(make_query(False, False, 512))
        self.assertEqual(self.cache.lookup(q), self.plain.lookup(q))

    def test_stale_and_peek_leave_it_out(self):
        """lookup_stale and peek return the reply without the OPT, as a cache without it does."""
        q = self.store_both(make_query(True, True, 4096))
        self.assertEqual(self.cache.peek(q.qname), self.plain.peek(q.qname))
        self.assertEqual(self.cache.lookup_stale(q), self.plain.lookup_stale(q))
        self.clock.advance(400)
        self.assertIsNone(self.cache.lookup(q))
        self.assertEqual(self.cache.lookup_stale(q, 30), self.plain.lookup_stale(q, 30))
        self.assertEqual(self.cache.peek(q.qname), self.plain.peek(q.qname))

    def test_cost_counts_the_opt(self):
        """The entry's accounted cost includes the OPT's bytes."""
        query = make_query(True, False, 4096)
        q = self.store_both(query)
        body = reply_body(query, 2)
        plain = entry_cost(len(q.key), len(body), wire.scan_response(body).ttl_offsets) + S3FifoSegment.SLOT_BYTES
        opt = plain + wire.APPENDED_OPT_LENGTH
        self.assertEqual(self.plain.stats().size_bytes, cost_units(plain) * COST_UNIT)
        self.assertEqual(self.cache.stats().size_bytes, cost_units(opt) * COST_UNIT)
        self.assertGreater(cost_units(opt), cost_units(plain))


def handler(cache: MessageCache) -> QueryHandler:
    return QueryHandler(Chain([]), ClientFilter(["127.0.0.0/8"]), edns_udp_size=SERVER_UDP, message_cache=cache,
                        reactor=task.Clock())


class HandlerEquivalenceTests(unittest.TestCase):
    """A handler over an L1 with the OPT answers every hit exactly as one over an L1 without it."""

    @settings(max_examples=150, deadline=None)
    @given(
        addresses=st.integers(1, 120),
        edns=st.booleans(),
        do=st.booleans(),
        payload=st.sampled_from([512, 600, 1000, 1232, 1300, 4096]),
        tcp=st.booleans(),
        repeats=st.integers(1, 3),
    )
    def test_same_bytes(self, addresses, edns, do, payload, tcp, repeats):
        clock = task.Clock()
        with_opt = MessageCache(opt_udp_size=SERVER_UDP, reactor=clock)
        without = MessageCache(reactor=clock)
        query = make_query(edns, do, payload)
        q = wire.parse_query(query)
        body = reply_body(query, addresses)
        with_opt.store(q, body)
        without.store(q, body)
        a, b = handler(with_opt), handler(without)
        first = None
        for i in range(repeats):  # the second and later go through the memo of parsed queries
            data = bytes([i, 7]) + query[2:]
            got, expected = a.handle(data, "127.0.0.1", tcp), b.handle(data, "127.0.0.1", tcp)
            self.assertIsInstance(got, bytes)
            self.assertEqual(got, expected)
            self.assertEqual(got[:2], data[:2])
            first = first or got
            self.assertEqual(got[2:], first[2:])  # a remembered query's hit is the parsed one's
            message = dns.message.from_wire(got)
            self.assertEqual(message.edns, 0 if edns else -1)
            if not tcp:
                self.assertLessEqual(len(got), min(payload, SERVER_UDP) if edns else 512)

    def test_mismatched_sizes_refused(self):
        """A handler refuses an L1 whose OPT carries another UDP size than its own."""
        cache = MessageCache(opt_udp_size=4096, reactor=task.Clock())
        self.assertRaises(ValueError, handler, cache)
