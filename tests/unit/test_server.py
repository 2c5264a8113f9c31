"""
End-to-end tests of the forwarding server over real UDP and TCP sockets on
127.0.0.1, against the dnspython authority of tests.support.authority, with
dnspython and dig as independent clients.
"""
import struct
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from dnsgo.serve.listeners import TCP_MAX_IN_FLIGHT, TCP_OUTPUT_LIMIT, DNSStreamFactory, queued_output
from tests.support.authority import Authority, AuthorityServer, big_txt_lines, make_zone
from tests.support.harness import DIG, ask, dig, port, raw_tcp, raw_udp, start_dnsgo
from tests.support.hostile_clients import framed, open_non_reading_clients, with_id


class ForwardingTests(unittest.TestCase):
    """Answers forwarded from one live upstream."""

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        self.root = start_dnsgo(self, [self.auth.address])
        self.port = port(self.root)

    @defer.inlineCallbacks
    def test_udp_answer(self):
        """A UDP query gets the upstream's answer, its ID, RD copied and RA set."""
        q = dns.message.make_query("www.example.test", "A", use_edns=False)
        r = yield ask(self.port, q)
        self.assertEqual(r.id, q.id)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertTrue(r.flags & dns.flags.RD)
        self.assertTrue(r.flags & dns.flags.RA)
        self.assertTrue(r.flags & dns.flags.QR)
        self.assertEqual([rr.to_text() for rr in r.answer[0]], ["192.0.2.1"])

    @defer.inlineCallbacks
    def test_rd_clear_copied(self):
        """A query without RD gets a reply without RD."""
        q = dns.message.make_query("www.example.test", "A")
        q.flags &= ~dns.flags.RD
        r = yield ask(self.port, q)
        self.assertFalse(r.flags & dns.flags.RD)

    @defer.inlineCallbacks
    def test_question_case_preserved(self):
        """The question comes back byte for byte, 0x20 mixed case included."""
        q = dns.message.make_query("WwW.ExAmPlE.tEsT", "A")
        wire = q.to_wire()
        reply = yield raw_udp(self.port, wire)
        self.assertEqual(reply[12 : 12 + len(b"\x03WwW\x07ExAmPlE\x04tEsT\x00") + 4], wire[12 : 12 + 22 + 4])

    @defer.inlineCallbacks
    def test_tcp_answer(self):
        """A TCP query is answered too."""
        r = yield ask(self.port, "www.example.test", "AAAA", tcp=True)
        self.assertEqual([rr.to_text() for rr in r.answer[0]], ["2001:db8::1"])

    @defer.inlineCallbacks
    def test_tcp_pipelining(self):
        """Several queries written at once on one TCP connection each get their reply."""
        names = ["www.example.test", "mail.example.test", "h10.example.test", "nope.example.test"]
        queries = [dns.message.make_query(n, "A") for n in names]
        for i, q in enumerate(queries):
            q.id = 1000 + i
        replies = yield raw_tcp(self.port, [q.to_wire() for q in queries])
        got = {dns.message.from_wire(r).id for r in replies}
        self.assertEqual(got, {1000, 1001, 1002, 1003})

    @defer.inlineCallbacks
    def test_nxdomain_with_soa(self):
        """NXDOMAIN is passed on with the upstream's SOA in the authority section."""
        r = yield ask(self.port, "nope.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)

    @defer.inlineCallbacks
    def test_nodata_with_soa(self):
        """NODATA is NOERROR with no answer and the SOA in authority."""
        r = yield ask(self.port, "www.example.test", "MX")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual(r.answer, [])
        self.assertEqual(r.authority[0].rdtype, dns.rdatatype.SOA)

    @defer.inlineCallbacks
    def test_cname_chain(self):
        """A CNAME chain comes through in order."""
        r = yield ask(self.port, "c10.example.test", "A")
        self.assertEqual([rr.rdtype for rr in r.answer], [dns.rdatatype.CNAME, dns.rdatatype.A])

    @defer.inlineCallbacks
    def test_upstream_refused_kept(self):
        """An upstream's REFUSED reaches the client as REFUSED, not SERVFAIL."""
        r = yield ask(self.port, "elsewhere.invalid", "A")
        self.assertEqual(r.rcode(), dns.rcode.REFUSED)

    @defer.inlineCallbacks
    def test_coalescing(self):
        """100 identical concurrent queries make one upstream query."""
        q = dns.message.make_query("mail.example.test", "A")
        wires = []
        for i in range(100):
            q.id = i
            wires.append(q.to_wire())
        replies = yield raw_tcp(self.port, wires)
        self.assertEqual(len(replies), 100)
        self.assertEqual({dns.message.from_wire(r).id for r in replies}, set(range(100)))
        self.assertEqual(self.auth.authority.queries[("mail.example.test.", "A")], 1)


class EDNSTests(unittest.TestCase):
    """RFC 6891 behaviour: OPT echo, payload, DO bit, BADVERS."""

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        self.port = port(start_dnsgo(self, [self.auth.address]))

    @defer.inlineCallbacks
    def test_opt_only_when_asked(self):
        """An OPT record is in the reply exactly when the query had one."""
        with_edns = yield ask(self.port, "www.example.test", "A", use_edns=0, payload=4096)
        without = yield ask(self.port, "www.example.test", "A", use_edns=False)
        self.assertEqual(with_edns.edns, 0)
        self.assertEqual(with_edns.payload, 1232)
        self.assertEqual(without.edns, -1)

    @defer.inlineCallbacks
    def test_do_bit_echoed(self):
        """The DO bit of the query is echoed in the reply's OPT."""
        r = yield ask(self.port, "www.example.test", "A", want_dnssec=True)
        self.assertTrue(r.ednsflags & dns.flags.DO)
        r = yield ask(self.port, "www.example.test", "A", use_edns=0)
        self.assertFalse(r.ednsflags & dns.flags.DO)

    @defer.inlineCallbacks
    def test_badvers(self):
        """EDNS version 1 is answered BADVERS (extended rcode 16)."""
        r = yield ask(self.port, "www.example.test", "A", use_edns=1)
        self.assertEqual(r.rcode(), dns.rcode.BADVERS)

    @defer.inlineCallbacks
    def test_truncation_without_edns(self):
        """A ~700-byte reply to a query without EDNS is truncated (TC=1) over UDP."""
        r = yield ask(self.port, "mid.example.test", "TXT", use_edns=False)
        self.assertTrue(r.flags & dns.flags.TC)
        self.assertEqual(r.answer, [])

    @defer.inlineCallbacks
    def test_no_truncation_with_edns(self):
        """The same reply fits a 1232-byte EDNS client and comes whole."""
        r = yield ask(self.port, "mid.example.test", "TXT", use_edns=0, payload=1232)
        self.assertFalse(r.flags & dns.flags.TC)
        self.assertEqual(len(r.answer[0]), 3)

    @defer.inlineCallbacks
    def test_large_reply_truncated_then_tcp(self):
        """A 2 KB reply is TC=1 over UDP even for EDNS, and whole over TCP."""
        r = yield ask(self.port, "big.example.test", "TXT", use_edns=0, payload=4096)
        self.assertTrue(r.flags & dns.flags.TC)
        self.assertEqual(r.edns, 0)
        r = yield ask(self.port, "big.example.test", "TXT", tcp=True, use_edns=0)
        self.assertFalse(r.flags & dns.flags.TC)
        self.assertEqual(len(r.answer[0]), 10)


class ErrorReplyTests(unittest.TestCase):
    """FORMERR, NOTIMP, REFUSED, and drops."""

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        self.port = port(start_dnsgo(self, [self.auth.address]))

    @defer.inlineCallbacks
    def test_formerr_two_questions(self):
        """qdcount 2 gets FORMERR with the query's ID."""
        q = dns.message.make_query("www.example.test", "A", use_edns=False).to_wire()
        bad = q[:4] + struct.pack("!H", 2) + q[6:]
        reply = yield raw_udp(self.port, bad)
        self.assertIsNotNone(reply)
        self.assertEqual(reply[:2], q[:2])
        self.assertEqual(reply[3] & 0xF, dns.rcode.FORMERR)

    @defer.inlineCallbacks
    def test_formerr_trailing_garbage(self):
        """Bytes after the last record get FORMERR."""
        q = dns.message.make_query("www.example.test", "A", use_edns=False).to_wire()
        reply = yield raw_udp(self.port, q + b"garbage")
        self.assertEqual(reply[3] & 0xF, dns.rcode.FORMERR)

    @defer.inlineCallbacks
    def test_formerr_compression_loop(self):
        """A question name that is a compression pointer (here to itself) gets FORMERR."""
        header = struct.pack("!HHHHHH", 77, 0x0100, 1, 0, 0, 0)
        reply = yield raw_udp(self.port, header + b"\xc0\x0c" + struct.pack("!HH", 1, 1))
        self.assertEqual(reply[3] & 0xF, dns.rcode.FORMERR)

    @defer.inlineCallbacks
    def test_short_packet_dropped(self):
        """A packet shorter than a header gets no reply, and the server keeps serving."""
        reply = yield raw_udp(self.port, b"\x01\x02\x03", timeout=0.5)
        self.assertIsNone(reply)
        r = yield ask(self.port, "www.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.NOERROR)

    @defer.inlineCallbacks
    def test_notimp(self):
        """An opcode other than QUERY (here STATUS) gets NOTIMP."""
        q = dns.message.make_query("www.example.test", "A")
        q.set_opcode(dns.opcode.STATUS)
        r = yield ask(self.port, q)
        self.assertEqual(r.rcode(), dns.rcode.NOTIMP)

    @defer.inlineCallbacks
    def test_axfr_refused(self):
        """Zone transfers are refused."""
        r = yield ask(self.port, "example.test", "AXFR", tcp=True)
        self.assertEqual(r.rcode(), dns.rcode.REFUSED)


class AccessTests(unittest.TestCase):
    """server.allow decides who may query."""

    @defer.inlineCallbacks
    def test_refused_outside_allow(self):
        """A client outside server.allow gets REFUSED, and upstream is not asked."""
        auth = AuthorityServer().start()
        self.addCleanup(auth.stop)
        p = port(start_dnsgo(self, [auth.address], server_extra="  allow: [\"10.0.0.0/8\"]\n"))
        r = yield ask(p, "www.example.test", "A")
        self.assertEqual(r.rcode(), dns.rcode.REFUSED)
        self.assertEqual(auth.authority.total, 0)


class FailoverTests(unittest.TestCase):
    """Dead upstreams."""

    @defer.inlineCallbacks
    def test_one_dead_upstream(self):
        """With one silent upstream and one live, every answer still comes."""
        dead = Authority()
        dead.silent = True
        dead_server = AuthorityServer(dead).start()
        live = AuthorityServer().start()
        self.addCleanup(dead_server.stop)
        self.addCleanup(live.stop)
        p = port(start_dnsgo(self, [dead_server.address, live.address]))
        for name in ["www", "mail", "h10", "ns1", "short"]:
            r = yield ask(p, f"{name}.example.test", "A", timeout=3)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR, name)

    @defer.inlineCallbacks
    def test_all_dead_servfail_in_bound(self):
        """With every upstream silent, the client gets SERVFAIL within timeout × (retries + 1) plus a margin."""
        servers = []
        for _ in range(2):
            a = Authority()
            a.silent = True
            s = AuthorityServer(a).start()
            self.addCleanup(s.stop)
            servers.append(s.address)
        p = port(start_dnsgo(self, servers))
        started = time.monotonic()
        r = yield ask(p, "www.example.test", "A", timeout=5)
        elapsed = time.monotonic() - started
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)
        self.assertLess(elapsed, 0.3 * 2 + 0.5)


class DigTests(unittest.TestCase):
    """dig, an independent client, against dnsgo."""

    skip = None if DIG else "dig (bind9-dnsutils) is not installed"

    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        self.port = port(start_dnsgo(self, [self.auth.address]))

    @defer.inlineCallbacks
    def test_dig_answer(self):
        """dig sees NOERROR, the answer, and an EDNS OPT with udp 1232."""
        out = yield dig(self.port, "www.example.test", "A")
        self.assertIn("status: NOERROR", out)
        self.assertIn("192.0.2.1", out)
        self.assertIn("udp: 1232", out)

    @defer.inlineCallbacks
    def test_dig_retries_over_tcp(self):
        """dig gets TC=1 for the 2 KB TXT over UDP, retries over TCP, and prints all 10 records."""
        out = yield dig(self.port, "big.example.test", "TXT")
        self.assertIn("(TCP)", out.split(";; SERVER:")[1].splitlines()[0])
        answers = [line for line in out.splitlines() if line.startswith("big.example.test.")]
        self.assertEqual(len(answers), 10)

    @defer.inlineCallbacks
    def test_dig_tcp_keepopen_pipelined(self):
        """dig +tcp +keepopen asks several questions over one connection."""
        out = yield dig(self.port, "+tcp", "+keepopen", "www.example.test", "A", "mail.example.test", "A")
        self.assertEqual(out.count("status: NOERROR"), 2)

    @defer.inlineCallbacks
    def test_dig_nxdomain(self):
        """dig sees NXDOMAIN with the SOA."""
        out = yield dig(self.port, "nope.example.test", "A")
        self.assertIn("status: NXDOMAIN", out)
        self.assertIn("SOA", out)


class BufferedTransport(StringTransport):
    """
    A StringTransport that acts like a socket transport whose peer does not
    read: written bytes stay queued (``dataBuffer``), it pauses its
    streaming producer past ``bufferSize``, and :meth:`drain` plays the
    client reading, resuming the producer once nothing is left.
    """

    bufferSize = 65536
    offset = 0
    _tempDataLen = 0

    @property
    def dataBuffer(self) -> bytes:
        return self.value()

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming and len(self.value()) > self.bufferSize:
            self.producer.pauseProducing()

    def drain(self, n: int | None = None) -> None:
        """The client reads ``n`` bytes (all by default)."""
        data = self.value()
        n = len(data) if n is None else n
        self.clear()
        self.io.write(data[n:])
        if not self.value() and self.producer is not None:
            self.producer.resumeProducing()


class _StubHandler:
    """A QueryHandler stand-in: ``reply(data)`` decides each answer; every call is recorded."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.calls: list[bytes] = []

    def handle(self, data: bytes, client: str, tcp: bool = False):
        self.calls.append(data)
        return self.reply(data)

    def servfail(self, data: bytes) -> bytes:
        return data[:2] + b"\x81\x82" + data[4:]


def _queries(count: int) -> bytes:
    """``count`` framed queries with IDs 0, 1, ..."""
    wire = dns.message.make_query("www.example.test", "A").to_wire()
    return b"".join(framed(with_id(wire, i)) for i in range(count))


class StreamBackpressureTests(unittest.SynchronousTestCase):
    """How the TCP protocol bounds what one client can make it hold (fake transport, Clock)."""

    def connect(self, reply, **kw):
        """A connection over a BufferedTransport to a factory whose handler answers with ``reply``."""
        self.clock = task.Clock()
        self.handler = _StubHandler(reply)
        self.factory = DNSStreamFactory(self.handler, idle_timeout=10, reactor=self.clock, **kw)
        proto = self.factory.buildProtocol(None)
        transport = BufferedTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        proto.makeConnection(transport)
        return proto, transport

    def test_registered_as_streaming_producer(self):
        """Each connection is its transport's streaming producer, with the output limit as its buffer size."""
        proto, transport = self.connect(lambda data: data)
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)
        self.assertEqual(transport.bufferSize, TCP_OUTPUT_LIMIT)

    def test_full_write_buffer_stops_reading(self):
        """
        Replies past the output limit pause the transport and leave the
        remaining pipelined queries unparsed; once the client reads them
        all, the rest are answered.
        """
        big = b"\x00" * 4000
        proto, transport = self.connect(lambda data: data[:2] + big)
        proto.dataReceived(_queries(100))
        answered = len(self.handler.calls)
        self.assertEqual(answered, TCP_OUTPUT_LIMIT // 4004 + 1)
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(len(transport.value()), TCP_OUTPUT_LIMIT + 4004 + 1)
        while len(self.handler.calls) < 100:
            transport.drain()
        self.assertEqual(len(self.handler.calls), 100)

    def test_in_flight_cap_stops_reading(self):
        """
        At most TCP_MAX_IN_FLIGHT queries of a connection are resolved at
        once: the next wait unread until one is answered.
        """
        pending = []

        def reply(data):
            d = defer.Deferred()
            pending.append((d, data))
            return d

        proto, transport = self.connect(reply)
        proto.dataReceived(_queries(40))
        self.assertEqual(len(self.handler.calls), TCP_MAX_IN_FLIGHT)
        self.assertEqual(transport.producerState, "paused")
        d, data = pending.pop(0)
        d.callback(data)
        self.assertEqual(len(self.handler.calls), TCP_MAX_IN_FLIGHT + 1)
        self.assertEqual(transport.producerState, "paused")
        while pending:
            d, data = pending.pop(0)
            d.callback(data)
        self.assertEqual(len(self.handler.calls), 40)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(transport.value()), 40 * len(framed(data)))

    def test_stalled_writes_aborted_at_idle_timeout(self):
        """
        A client that reads none of the queued replies for the idle timeout
        is aborted (loseConnection would wait for it forever).
        """
        proto, transport = self.connect(lambda data: data[:2] + b"\x00" * 4000)
        proto.dataReceived(_queries(100))
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.factory.stalled, 1)

    def test_slow_reader_gets_another_period(self):
        """A client that read some of the queued replies during the idle timeout is given another period."""
        proto, transport = self.connect(lambda data: data[:2] + b"\x00" * 4000)
        proto.dataReceived(_queries(100))
        self.clock.advance(5)
        transport.drain(1000)
        self.clock.advance(5.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnected)

    def test_drained_connection_closes_cleanly_when_idle(self):
        """
        A client that read every reply gets its paused queries answered, and
        is closed cleanly (not aborted) after the idle timeout.
        """
        proto, transport = self.connect(lambda data: data[:2] + b"\x00" * 4000)
        proto.dataReceived(_queries(30))
        self.assertLess(len(self.handler.calls), 30)
        while len(self.handler.calls) < 30:
            transport.drain()
        transport.drain()
        self.clock.advance(10.1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        self.assertIsNone(transport.producer)

    def test_unanswerable_query_unregisters_producer(self):
        """A query that ends the connection unregisters the producer, so that loseConnection can close it."""
        proto, transport = self.connect(lambda data: None)
        proto.dataReceived(_queries(5))
        self.assertEqual(len(self.handler.calls), 1)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)


class NonReadingTCPTests(unittest.TestCase):
    """In-process server, real sockets: TCP clients that never read."""

    @defer.inlineCallbacks
    def test_queued_replies_bounded(self):
        """
        10 TCP clients that pipeline 2,000 queries for a 3.7 KB answer and
        never read leave at most the output limit plus one reply and the
        in-flight replies queued per connection in the server (not the
        7 MB each of their answers), and UDP queries are answered meanwhile.
        """
        auth = AuthorityServer(Authority(make_zone(big_txt_lines("huge", 17)))).start()
        self.addCleanup(auth.stop)
        root = start_dnsgo(self, [auth.address])
        p = port(root)
        yield ask(p, "huge.example.test", "TXT", tcp=True)
        query = dns.message.make_query("huge.example.test", "TXT", use_edns=0, payload=1232).to_wire()
        clients = open_non_reading_clients(p, query, 10, 2000)
        self.addCleanup(lambda: [c.close() for c in clients])
        factory = root.dns_service.tcp_factory
        peak = 0
        for _ in range(10):
            yield task.deferLater(reactor, 0.1, lambda: None)
            for c in clients:
                c.pump()
            peak = max(peak, sum(queued_output(conn.transport) for conn in factory.connections))
            r = yield ask(p, "www.example.test", "A", timeout=2)
            self.assertEqual(r.rcode(), dns.rcode.NOERROR)
        self.assertEqual(len(factory.connections), 10)
        self.assertLessEqual(peak, 10 * (TCP_OUTPUT_LIMIT + (TCP_MAX_IN_FLIGHT + 1) * 3800))
