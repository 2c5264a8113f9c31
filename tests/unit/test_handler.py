"""
Unit tests of the query handler and the TCP protocol: failures inside the
chain, client limits, idle timeouts and the connection cap.
"""
import struct

import dns.message
import dns.rcode
import dns.rrset
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.names import dns as tdns, error
from twisted.trial import unittest

from dnsgo.serve.acl import ClientFilter
from dnsgo.serve.handler import QueryHandler
from dnsgo.resolve.chain import Chain, FinalAnswer
from dnsgo.serve.listeners import DNSStreamFactory


class _Resolver:
    """A resolver whose answer the test decides."""

    def __init__(self, outcome):
        self.outcome = outcome
        self.asked = []

    def query(self, query, timeout=None):
        self.asked.append(query)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        if callable(self.outcome):
            return self.outcome(query)
        return defer.succeed(self.outcome)


def handler_for(resolver, allow=("127.0.0.0/8",)):
    return QueryHandler(Chain([resolver]), ClientFilter(allow), reactor=task.Clock())


def query_bytes(name="www.example.test", qtype="A", **kw) -> bytes:
    return dns.message.make_query(name, qtype, **kw).to_wire()


def rcode_of(reply: bytes) -> int:
    return dns.message.from_wire(reply).rcode()


class HandlerTests(unittest.TestCase):
    """QueryHandler.handle on bytes."""

    def result(self, d):
        return self.successResultOf(d) if isinstance(d, defer.Deferred) else d

    def test_exception_gives_servfail_and_log(self):
        """A resolver raising an unexpected exception gives that query SERVFAIL and logs it."""
        h = handler_for(_Resolver(RuntimeError("boom")))
        reply = self.result(h.handle(query_bytes(), "127.0.0.1"))
        self.assertEqual(rcode_of(reply), dns.rcode.SERVFAIL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_timeout_gives_servfail(self):
        """A chain that times out gives SERVFAIL."""
        h = handler_for(_Resolver(lambda q: defer.fail(defer.TimeoutError())))
        self.assertEqual(rcode_of(self.result(h.handle(query_bytes(), "127.0.0.1"))), dns.rcode.SERVFAIL)

    def test_final_answer_rcode_kept(self):
        """A FinalAnswer's rcode and SOA reach the client, the SOA TTL lowered to its MINIMUM (RFC 2308)."""
        soa = tdns.RRHeader(b"example.test", tdns.SOA, ttl=60, payload=tdns.Record_SOA(b"ns1.example.test", minimum=30))
        h = handler_for(_Resolver(lambda q: defer.fail(FinalAnswer(tdns.ENAME, authority=[soa]))))
        r = dns.message.from_wire(self.result(h.handle(query_bytes(), "127.0.0.1")))
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].ttl, 30)

    def test_domain_error_from_last_resolver_is_servfail(self):
        """A chain whose every resolver misses gives SERVFAIL, not a crash."""
        h = handler_for(_Resolver(lambda q: defer.fail(error.DomainError())))
        self.assertEqual(rcode_of(self.result(h.handle(query_bytes(), "127.0.0.1"))), dns.rcode.SERVFAIL)
        self.flushLoggedErrors(error.DomainError)

    def test_flags_reach_resolver(self):
        """The resolver sees the client's DO and CD bits on the query object."""
        r = _Resolver(([], [], []))
        h = handler_for(r)
        q = dns.message.make_query("www.example.test", "A", want_dnssec=True)
        q.flags |= dns.flags.CD
        self.result(h.handle(q.to_wire(), "127.0.0.1"))
        self.assertTrue(r.asked[0].dnssec_ok)
        self.assertTrue(r.asked[0].checking_disabled)

    def test_refused_not_resolved(self):
        """A client outside the allow-list is refused without asking the chain."""
        r = _Resolver(([], [], []))
        h = handler_for(r, allow=("10.0.0.0/8",))
        self.assertEqual(rcode_of(h.handle(query_bytes(), "127.0.0.1")), dns.rcode.REFUSED)
        self.assertEqual(r.asked, [])

    def test_ipv4_mapped_client(self):
        """An IPv4-mapped IPv6 client address is judged as IPv4."""
        self.assertTrue(ClientFilter(["127.0.0.0/8"]).allowed("::ffff:127.0.0.1"))
        self.assertFalse(ClientFilter(["127.0.0.0/8"]).allowed("::ffff:10.0.0.1"))

    def test_udp_limit_uses_smaller_of_client_and_server(self):
        """A 4096-byte EDNS client still gets replies truncated at the server's 1232."""
        big = tdns.RRHeader(b"www.example.test", tdns.TXT, payload=tdns.Record_TXT(b"x" * 250, b"y" * 250))
        h = handler_for(_Resolver(([big] * 4, [], [])))
        reply = self.result(h.handle(query_bytes(use_edns=0, payload=4096), "127.0.0.1"))
        m = dns.message.from_wire(reply)
        self.assertTrue(m.flags & dns.flags.TC)
        self.assertLessEqual(len(reply), 1232)
        tcp = self.result(h.handle(query_bytes(use_edns=0, payload=4096), "127.0.0.1", tcp=True))
        self.assertFalse(dns.message.from_wire(tcp).flags & dns.flags.TC)


class StreamTests(unittest.TestCase):
    """The TCP protocol with a fake transport and a Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.pending = defer.Deferred()
        self.factory = DNSStreamFactory(
            handler_for(_Resolver(lambda q: self.pending)), idle_timeout=10, max_connections=2, reactor=self.clock
        )

    def connect(self):
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def test_idle_timeout(self):
        """A connection with nothing received is closed after the idle timeout."""
        proto, transport = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_activity_resets_timeout(self):
        """A query received resets the idle timer."""
        proto, transport = self.connect()
        self.clock.advance(8)
        q = query_bytes()
        proto.dataReceived(struct.pack("!H", len(q)) + q)
        self.clock.advance(8)
        self.assertFalse(transport.disconnecting)

    def test_out_of_order_replies(self):
        """A fast reply is written before an earlier slow one (RFC 7766 §6.2.1.1)."""
        slow = defer.Deferred()
        answers = {b"slow": slow}

        def outcome(q):
            return answers.get(q.name.name.split(b".")[0], defer.succeed(([], [], [])))

        self.factory.handler = handler_for(_Resolver(outcome))
        proto, transport = self.connect()
        q1 = dns.message.make_query("slow.example.test", "A")
        q1.id = 1
        q2 = dns.message.make_query("fast.example.test", "A")
        q2.id = 2
        data = b"".join(struct.pack("!H", len(w)) + w for w in (q1.to_wire(), q2.to_wire()))
        proto.dataReceived(data)
        first = transport.value()
        self.assertEqual(struct.unpack("!H", first[2:4])[0], 2)
        slow.callback(([], [], []))
        rest = transport.value()[len(first) :]
        self.assertEqual(struct.unpack("!H", rest[2:4])[0], 1)

    def test_connection_cap(self):
        """Connections past max_connections are aborted at once."""
        self.connect()
        self.connect()
        proto, transport = self.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.factory.connections), 2)

    def test_unparseable_closes(self):
        """A message too short to answer closes the connection."""
        proto, transport = self.connect()
        proto.dataReceived(struct.pack("!H", 3) + b"abc")
        self.assertTrue(transport.disconnecting)


class ParsedQueryMemoTests(unittest.TestCase):
    """Repeated query bytes skip parsing but keep their own ID."""

    def test_repeated_bytes_get_their_own_ids(self):
        """The same question sent with IDs 1, 2, 3: every reply carries its query's ID, and two are L1 hits."""
        from dnsgo.cache.message import MessageCache

        clock = task.Clock()
        rr = tdns.RRHeader(b"www.example.test", tdns.A, ttl=60, payload=tdns.Record_A("192.0.2.1", 60))
        cache = MessageCache(max_size_mb=1, num_shards=1, reactor=clock)
        h = QueryHandler(Chain([_Resolver(([rr], [], []))]), ClientFilter(["127.0.0.0/8"]),
                         message_cache=cache, reactor=clock)
        wire_q = bytearray(query_bytes())
        for qid in (1, 2, 3):
            wire_q[0:2] = qid.to_bytes(2, "big")
            reply = h.handle(bytes(wire_q), "127.0.0.1")
            if isinstance(reply, defer.Deferred):
                reply = self.successResultOf(reply)
            self.assertEqual(dns.message.from_wire(reply).id, qid)
        self.assertEqual((cache.stats().hits, cache.stats().misses), (2, 1))

    def test_memo_is_bounded_and_starts_over_when_full(self):
        """With room for four, six names hit in turn: the memo never holds more than four, and every reply is right."""
        from dnsgo.cache.message import MessageCache
        from dnsgo.serve import handler as handler_module

        self.patch(handler_module, "_PARSED_LIMIT", 4)
        clock = task.Clock()
        cache = MessageCache(max_size_mb=1, num_shards=1, reactor=clock)

        def answer(query):
            name = query.name.name
            address = "192.0.2.%d" % (1 + int(name[1:2]))
            return defer.succeed(([tdns.RRHeader(name, tdns.A, ttl=60, payload=tdns.Record_A(address, 60))], [], []))

        h = QueryHandler(Chain([_Resolver(answer)]), ClientFilter(["127.0.0.0/8"]), message_cache=cache, reactor=clock)
        for rounds in range(4):
            for i in range(6):
                reply = h.handle(query_bytes(f"n{i}.example.test"), "127.0.0.1")
                if isinstance(reply, defer.Deferred):
                    reply = self.successResultOf(reply)
                self.assertEqual(dns.message.from_wire(reply).answer[0][0].address, "192.0.2.%d" % (1 + i))
                self.assertLessEqual(len(h._parsed), 4)
        self.assertEqual(cache.stats().hits, 18)

    def test_memo_off_with_query_log(self):
        """With the query log on, hits are not remembered, so every one is parsed and logged."""
        from dnsgo.cache.message import MessageCache

        clock = task.Clock()
        rr = tdns.RRHeader(b"www.example.test", tdns.A, ttl=60, payload=tdns.Record_A("192.0.2.1", 60))
        cache = MessageCache(max_size_mb=1, num_shards=1, reactor=clock)
        h = QueryHandler(Chain([_Resolver(([rr], [], []))]), ClientFilter(["127.0.0.0/8"]),
                         message_cache=cache, query_log=True, reactor=clock)
        logged = []
        h.log = Logger(observer=logged.append)
        for _ in range(3):
            reply = h.handle(query_bytes(), "127.0.0.1")
            if isinstance(reply, defer.Deferred):
                self.successResultOf(reply)
        self.assertEqual((len(h._parsed), len(logged), cache.stats().hits), (0, 3, 2))

    def test_declined_memo_hit_counts_once_and_stays(self):
        """
        A remembered query whose L1 entry now holds another case (so
        lookup_usual declines it) is answered by the full path: one access
        for the eviction policy per query, and the memo is not written
        again (with room for two, the other remembered query stays).
        """
        from dnsgo.cache.message import MessageCache
        from dnsgo.dns import wire
        from dnsgo.serve import handler as handler_module

        self.patch(handler_module, "_PARSED_LIMIT", 2)
        clock = task.Clock()
        cache = MessageCache(max_size_mb=1, num_shards=1, reactor=clock)
        h = QueryHandler(Chain([_Resolver(([], [], []))]), ClientFilter(["127.0.0.0/8"]),
                         message_cache=cache, reactor=clock)

        def body(name):
            q = wire.parse_query(query_bytes(name))
            response = dns.message.make_response(dns.message.from_wire(query_bytes(name)))
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", "192.0.2.1"))
            return q, response.to_wire()

        for name in ("www.example.test", "other.example.test"):
            cache.store(*body(name))
            self.assertIsInstance(h.handle(query_bytes(name), "127.0.0.1"), bytes)
        self.assertEqual(len(h._parsed), 2)
        cache.store(*body("WWW.example.test"))  # the entry now carries the question in capitals
        entry = cache._shards[0].peek(wire.parse_query(query_bytes()).key)
        base = entry.freq  # the replaced entry's count, kept by the store
        for n in range(1, 3):
            reply = h.handle(query_bytes(), "127.0.0.1")
            self.assertEqual(dns.message.from_wire(reply).question[0].name.to_text(), "www.example.test.")
            self.assertEqual(entry.freq, base + n)
        self.assertEqual(len(h._parsed), 2)
        self.assertEqual(cache.stats().hits, 4)

    def test_memo_respects_allow_list(self):
        """A remembered query from a client outside server.allow is still refused."""
        h = QueryHandler(Chain([_Resolver(([], [], []))]), ClientFilter(["127.0.0.0/8"]),
                         message_cache=__import__("dnsgo.cache.message", fromlist=["x"]).MessageCache(
                             max_size_mb=1, num_shards=1, reactor=task.Clock()),
                         reactor=task.Clock())
        data = query_bytes()
        first = h.handle(data, "127.0.0.1")
        if isinstance(first, defer.Deferred):
            self.successResultOf(first)
        self.assertEqual(rcode_of(h.handle(data, "10.1.2.3")), dns.rcode.REFUSED)


class RespondTests(unittest.TestCase):
    """handle(..., respond=..., reply_to=...): the UDP listener's miss path, without a Deferred."""

    CLIENT = ("127.0.0.1", 5300)

    def respond(self, replies: list):
        """A ``respond`` that keeps each reply, checking that it comes with the ``reply_to`` given."""

        def respond(reply: bytes, reply_to) -> None:
            self.assertEqual(reply_to, self.CLIENT)
            replies.append(reply)

        return respond

    def test_miss_answers_through_respond(self):
        """A miss returns None and hands the reply and reply_to to respond() when the resolver answers."""
        pending = defer.Deferred()
        h = handler_for(_Resolver(lambda q: pending))
        replies = []
        self.assertIsNone(h.handle(query_bytes(), "127.0.0.1", respond=self.respond(replies), reply_to=self.CLIENT))
        self.assertEqual(replies, [])
        pending.callback(([tdns.RRHeader(b"www.example.test", payload=tdns.Record_A("192.0.2.7"))], [], []))
        [reply] = replies
        message = dns.message.from_wire(reply)
        self.assertEqual(message.answer[0][0].address, "192.0.2.7")

    def test_miss_with_serve_stale_answers_through_respond(self):
        """With serve-stale on, a miss's reply (here from the resolver, in time) reaches respond() with reply_to too."""
        from dnsgo.config.schema import ServeStaleConfig

        pending = defer.Deferred()
        h = QueryHandler(Chain([_Resolver(lambda q: pending)]), ClientFilter(("127.0.0.0/8",)),
                         serve_stale=ServeStaleConfig(enabled=True), reactor=task.Clock())
        replies = []
        self.assertIsNone(h.handle(query_bytes(), "127.0.0.1", respond=self.respond(replies), reply_to=self.CLIENT))
        pending.callback(([tdns.RRHeader(b"www.example.test", payload=tdns.Record_A("192.0.2.8"))], [], []))
        [reply] = replies
        self.assertEqual(dns.message.from_wire(reply).answer[0][0].address, "192.0.2.8")

    def test_error_while_finishing_answers_servfail(self):
        """An unexpected error after the resolver answered still answers SERVFAIL through respond(), and is logged."""
        h = handler_for(_Resolver(([], [], [])))
        h._finish = lambda *args, **kwargs: 1 / 0
        replies = []
        self.assertIsNone(h.handle(query_bytes(), "127.0.0.1", respond=self.respond(replies), reply_to=self.CLIENT))
        [reply] = replies
        self.assertEqual(rcode_of(reply), dns.rcode.SERVFAIL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_hits_and_refusals_still_returned(self):
        """Replies ready at once (here a REFUSED) are returned, and respond() is not called."""
        h = handler_for(_Resolver(([], [], [])), allow=("10.0.0.0/8",))
        replies = []
        reply = h.handle(query_bytes(), "127.0.0.1", respond=self.respond(replies), reply_to=self.CLIENT)
        self.assertEqual(rcode_of(reply), dns.rcode.REFUSED)
        self.assertEqual(replies, [])
