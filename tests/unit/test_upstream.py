"""
Tests for L{dnsgo.upstream.pool}: the forwarding client.

The first group drives the pool with a fake reactor (a Clock and in-memory
UDP ports) to check timing and bookkeeping exactly; the second runs real
UDP and TCP sockets on 127.0.0.1 against small fake upstream servers.
"""
import errno
import struct
import time

from twisted.internet import defer, task
from twisted.internet import reactor
from twisted.internet.error import CannotListenError, ConnectBindError
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dnsgo.upstream.infra import DEGRADED, HEALTHY, InfraCache
from dnsgo.upstream.pool import UpstreamPool, UpstreamReply, UpstreamTimeout, out_of_descriptors
from tests.support.upstream_fakes import (
    ANSWER_ADDRESS,
    FakeUDPReactor,
    TCPUpstream,
    UDPUpstream,
    answering,
    decode,
    reply_to,
    silent,
)

QNAME = b"\x03www\x07example\x03com\x00"
A = ("192.0.2.1", 53)
B = ("192.0.2.2", 53)
C = ("192.0.2.3", 53)


def address_of(reply: UpstreamReply) -> str:
    """The address in the first A record of a reply."""
    return reply.message.answers[0].payload.dottedQuad()


def name(label: str) -> bytes:
    """``label.example.`` in wire format."""
    raw = label.encode()
    return bytes([len(raw)]) + raw + b"\x07example\x00"


def fake_pool(servers=(A, B), **kwargs):
    """A pool over ``servers`` on a FakeUDPReactor; returns (reactor, infra, pool)."""
    fake = FakeUDPReactor()
    infra = InfraCache(list(servers), fake)
    return fake, infra, UpstreamPool(infra, reactor=fake, **kwargs)


def results(d):
    """Collect what ``d`` fires with into a list (a Failure for an error)."""
    out = []
    d.addBoth(out.append)
    return out


class FakeReactorTests(SynchronousTestCase):
    """Timing and bookkeeping, driven by a Clock and fake UDP ports."""

    def test_query_bytes(self):
        """The query has RD, CD and DO as asked, EDNS with udp_size, and goes to a connected fresh port."""
        fake, _, pool = fake_pool(udp_size=1400)
        pool.query(QNAME, dns.AAAA, do=True, cd=True)
        [port] = fake.udp_ports
        self.assertEqual(port.connected_to, A)
        self.assertEqual(port.interface, "0.0.0.0")
        query = decode(port.written[0])
        self.assertEqual((query.recDes, query.checkingDisabled, query.answer), (1, 1, 0))
        self.assertEqual(query.queries, [dns.Query(b"www.example.com", dns.AAAA, dns.IN)])
        [opt] = query.additional
        self.assertEqual((opt.type, opt.cls, opt.ttl & 0x8000), (dns.OPT, 1400, 0x8000))

    def test_answer_and_rtt(self):
        """A matching reply fires the Deferred with its message, server and RTT, and feeds the infra cache."""
        fake, infra, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        fake.advance(0.25)
        data = reply_to(decode(port.written[0]))
        port.deliver(data)
        [reply] = out
        self.assertEqual((reply.server, reply.rtt, reply.via_tcp, reply.wire), (A, 0.25, False, data))
        self.assertEqual(address_of(reply), ANSWER_ADDRESS)
        self.assertEqual([rr.type for rr in reply.message.additional], [])
        self.assertTrue(port.closed)
        status = infra.snapshot()[0]
        self.assertAlmostEqual(status.srtt_ms, (0.376 * 7 / 8 + 0.25 / 8) * 1000)
        self.assertEqual((status.in_flight, status.last_response), (0, 0.25))

    def test_timeouts_and_failover(self):
        """Each attempt waits timeout seconds, then the next server is tried; after retries+1 attempts UpstreamTimeout."""
        fake, infra, pool = fake_pool(timeout=1.0, retries=2)
        out = results(pool.query(QNAME, dns.A))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A])
        fake.advance(1.0)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        self.assertTrue(fake.udp_ports[0].closed)
        fake.advance(1.0)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B, A])
        fake.advance(0.999)
        self.assertEqual(out, [])
        fake.advance(0.001)
        [failure] = out
        failure.trap(UpstreamTimeout)
        self.assertIsInstance(failure.value, defer.TimeoutError)
        self.assertTrue(all(p.closed for p in fake.udp_ports))
        self.assertEqual([s.failures for s in infra.snapshot()], [2, 1])
        self.assertEqual((pool.stats.timeouts, pool.stats.failed), (3, 1))
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_fresh_id_per_attempt(self):
        """A retry uses a new socket and a new random ID."""
        fake, _, pool = fake_pool(timeout=1.0, retries=30, servers=(A,))
        pool.query(QNAME, dns.A)
        for _ in range(30):
            fake.advance(1.0)
        ids = {struct.unpack("!H", p.written[0][:2])[0] for p in fake.udp_ports}
        self.assertEqual(len(fake.udp_ports), 31)
        self.assertGreater(len(ids), 25)

    def test_wrong_source_ignored(self):
        """A correct-looking reply from another address or port is ignored and counted."""
        fake, _, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        data = reply_to(decode(port.written[0]))
        port.deliver(data, ("192.0.2.9", 53))
        port.deliver(data, (A[0], 5353))
        self.assertEqual((out, pool.stats.spoofed), ([], 2))
        port.deliver(data)
        self.assertEqual(len(out), 1)

    def test_not_a_response_ignored(self):
        """A message with QR=0 (our own query reflected) is ignored."""
        fake, _, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        port.deliver(port.written[0])
        self.assertEqual((out, pool.stats.spoofed), ([], 1))

    def test_wrong_type_or_class_ignored(self):
        """A reply for another type or class is ignored; the name matches case-insensitively."""
        fake, _, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        query = decode(port.written[0])
        other = dns.Message(id=query.id, answer=1)
        other.queries = [dns.Query(b"www.example.com", dns.AAAA)]
        port.deliver(other.toStr())
        other.queries = [dns.Query(b"www.example.com", dns.A, dns.CH)]
        port.deliver(other.toStr())
        self.assertEqual((out, pool.stats.spoofed), ([], 2))
        port.deliver(reply_to(query, name=b"WWW.Example.COM"))
        self.assertEqual(address_of(out[0]), ANSWER_ADDRESS)

    def test_truncated_message_ignored(self):
        """A reply cut short (which fromStr would half-accept) is malformed and ignored."""
        fake, _, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        data = reply_to(decode(port.written[0]))
        port.deliver(data[:-5])
        port.deliver(data[:14])
        self.assertEqual(out, [])
        self.assertEqual(pool.stats.malformed, 2)
        self.assertEqual(pool.stats.ignored, 2)
        port.deliver(data)
        self.assertEqual(len(out), 1)

    def test_unusable_moves_on_at_once(self):
        """SERVFAIL ends the attempt without waiting: the next server is asked immediately."""
        fake, infra, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        first.deliver(reply_to(decode(first.written[0]), rcode=dns.ESERVER))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        second = fake.udp_ports[1]
        second.deliver(reply_to(decode(second.written[0])))
        self.assertEqual((out[0].server, out[0].message.rCode), (B, dns.OK))
        self.assertEqual([s.failures for s in infra.snapshot()], [1, 0])

    def test_last_unusable_returned(self):
        """With only unusable replies, the last one is the result."""
        fake, _, pool = fake_pool(retries=1)
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        first.deliver(reply_to(decode(first.written[0]), rcode=dns.ESERVER))
        second = fake.udp_ports[1]
        second.deliver(reply_to(decode(second.written[0]), rcode=dns.EREFUSED))
        self.assertEqual((out[0].server, out[0].message.rCode), (B, dns.EREFUSED))

    def test_unusable_then_timeout(self):
        """An unusable reply followed by a timeout still returns the unusable reply."""
        fake, _, pool = fake_pool(retries=1, timeout=1.0)
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        first.deliver(reply_to(decode(first.written[0]), rcode=dns.EREFUSED))
        fake.advance(1.0)
        self.assertEqual((out[0].server, out[0].message.rCode), (A, dns.EREFUSED))

    def test_questionless_error_accepted(self):
        """A FORMERR without a question counts as an unusable reply; a NOERROR without one is ignored."""
        fake, _, pool = fake_pool(retries=0)
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        query_id = decode(port.written[0]).id
        port.deliver(dns.Message(id=query_id, answer=1, rCode=dns.OK).toStr())
        self.assertEqual((out, pool.stats.spoofed), ([], 1))
        port.deliver(dns.Message(id=query_id, answer=1, rCode=dns.EFORMAT).toStr())
        self.assertEqual(out[0].message.rCode, dns.EFORMAT)

    def test_connection_refused_fails_fast(self):
        """ICMP port unreachable fails the server at once and moves to the next."""
        fake, infra, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        fake.udp_ports[0].protocol.connectionRefused()
        self.assertEqual(len(fake.udp_ports), 2)
        self.assertEqual(pool.stats.refused, 1)
        self.assertEqual(infra.snapshot()[0].consecutive_failures, 1)
        second = fake.udp_ports[1]
        second.deliver(reply_to(decode(second.written[0])))
        self.assertEqual(out[0].server, B)

    def test_port_closed_under_exchange(self):
        """A socket the reactor closes (how epoll reports ICMP errors) fails the server at once."""
        fake, _, pool = fake_pool()
        results(pool.query(QNAME, dns.A))
        fake.udp_ports[0].protocol.doStop()
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        self.assertEqual(pool.stats.refused, 1)

    def test_tcp_inside_deadline(self):
        """After TC=1 the TCP leg shares the attempt's deadline; when it expires the next server is tried."""
        fake, infra, pool = fake_pool(timeout=1.0, retries=1)
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        fake.advance(0.4)
        first.deliver(reply_to(decode(first.written[0]), trunc=True, address=None))
        [(host, port, _, timeout, _)] = fake.tcpClients
        self.assertEqual((host, port), A)
        self.assertTrue(first.closed)
        fake.advance(0.6)
        self.assertEqual(out, [])
        self.assertTrue(fake.connectors[0].stoppedConnecting)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        self.assertEqual(infra.snapshot()[0].failures, 1)

    def test_tcp_answer(self):
        """The TCP leg sends a framed query with a fresh ID and accepts the framed answer."""
        fake, infra, pool = fake_pool()
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        udp_query = decode(first.written[0])
        fake.advance(0.1)
        first.deliver(reply_to(udp_query, trunc=True, address=None))
        factory = fake.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        sent = transport.value()
        self.assertEqual(struct.unpack("!H", sent[:2])[0], len(sent) - 2)
        tcp_query = decode(sent[2:])
        self.assertEqual(tcp_query.queries, udp_query.queries)
        wrong = reply_to(tcp_query, query_id=(tcp_query.id + 1) % 65536)
        protocol.dataReceived(struct.pack("!H", len(wrong)) + wrong)
        self.assertEqual(out, [])
        fake.advance(0.2)
        data = reply_to(tcp_query)
        protocol.dataReceived(struct.pack("!H", len(data)) + data)
        [reply] = out
        self.assertEqual((reply.via_tcp, reply.rtt, reply.wire), (True, 0.30000000000000004, data))
        self.assertTrue(transport.disconnected)
        self.assertEqual(pool.stats.tcp, 1)
        # The RTT sample is the UDP round trip, not the TCP one.
        self.assertAlmostEqual(infra.snapshot()[0].srtt_ms, (0.376 * 7 / 8 + 0.1 / 8) * 1000)

    def test_parallel_servers(self):
        """The parallel strategy asks best(n) at once, then the next n servers (wrapping)."""
        fake, infra, pool = fake_pool((A, B, C), strategy="parallel", parallel_count=2, retries=1, timeout=1.0)
        out = results(pool.query(QNAME, dns.A))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        fake.advance(1.0)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B, C, A])
        fourth = fake.udp_ports[3]
        fourth.deliver(reply_to(decode(fourth.written[0])))
        self.assertEqual(out[0].server, A)
        self.assertTrue(fake.udp_ports[2].closed)
        snapshot = {s.address: s for s in infra.snapshot()}
        # C lost the race: abandoned, neither failed nor succeeded.
        self.assertEqual(
            (snapshot["192.0.2.3:53"].failures, snapshot["192.0.2.3:53"].in_flight), (0, 0)
        )
        self.assertEqual(snapshot["192.0.2.3:53"].last_response, None)

    def test_parallel_all_unusable_ends_early(self):
        """When every server of a parallel attempt gave an unusable reply the next attempt starts at once."""
        fake, _, pool = fake_pool((A, B, C), strategy="parallel", parallel_count=2, retries=1)
        results(pool.query(QNAME, dns.A))
        for port in fake.udp_ports[:2]:
            port.deliver(reply_to(decode(port.written[0]), rcode=dns.ESERVER))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B, C, A])

    def test_coalescing(self):
        """Identical questions in flight (name case aside) share one exchange; each caller gets its own Deferred."""
        fake, _, pool = fake_pool()
        first = pool.query(QNAME, dns.A)
        second = pool.query(QNAME.upper(), dns.A)
        pool.query(QNAME, dns.A, do=True)
        pool.query(QNAME, dns.A, cd=True)
        pool.query(QNAME, dns.AAAA)
        self.assertIsNot(first, second)
        self.assertEqual(len(fake.udp_ports), 4)
        self.assertEqual(pool.stats.coalesced, 1)
        out = results(first), results(second)
        port = fake.udp_ports[0]
        port.deliver(reply_to(decode(port.written[0])))
        self.assertIs(out[0][0], out[1][0])
        pool.query(QNAME, dns.A)
        self.assertEqual(len(fake.udp_ports), 5)

    def test_cancel_one_of_two(self):
        """Cancelling one coalesced caller leaves the query running for the other."""
        fake, _, pool = fake_pool()
        first = pool.query(QNAME, dns.A)
        second = pool.query(QNAME, dns.A)
        first.cancel()
        self.failureResultOf(first, defer.CancelledError)
        port = fake.udp_ports[0]
        self.assertFalse(port.closed)
        port.deliver(reply_to(decode(port.written[0])))
        self.assertEqual(address_of(self.successResultOf(second)), ANSWER_ADDRESS)

    def test_cancel_last_caller(self):
        """Cancelling the only caller closes the socket, cancels the timer and tells the infra cache 'abandoned'."""
        fake, infra, pool = fake_pool()
        d = pool.query(QNAME, dns.A)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(fake.udp_ports[0].closed)
        self.assertEqual(fake.getDelayedCalls(), [])
        status = infra.snapshot()[0]
        self.assertEqual((status.in_flight, status.failures, status.queries), (0, 0, 1))
        pool.query(QNAME, dns.A)
        self.assertEqual(len(fake.udp_ports), 2)

    def test_down_server_skipped(self):
        """A server the infra cache marks down is not asked until its probe is due."""
        fake, infra, pool = fake_pool()
        for _ in range(3):
            infra.started(A)
            infra.failed(A)
        pool.query(QNAME, dns.A)
        self.assertEqual(fake.udp_ports[0].connected_to, B)

    def test_bad_qname(self):
        """A malformed question name fails the Deferred with ValueError."""
        _, _, pool = fake_pool()
        self.failureResultOf(pool.query(b"\x05abc", dns.A), ValueError)

    def test_bad_configuration(self):
        """Host names, unknown strategies and bad numbers are rejected."""
        fake = FakeUDPReactor()
        self.assertRaises(ValueError, UpstreamPool, InfraCache([("dns.example", 53)], fake), reactor=fake)
        infra = InfraCache([A], fake)
        self.assertRaises(ValueError, UpstreamPool, infra, strategy="random", reactor=fake)
        self.assertRaises(ValueError, UpstreamPool, infra, timeout=0, reactor=fake)
        self.assertRaises(ValueError, UpstreamPool, infra, retries=-1, reactor=fake)

    def test_ipv6_socket(self):
        """An IPv6 upstream gets a socket bound to '::' and its canonical address."""
        fake, _, pool = fake_pool((("2001:DB8:0::1", 53),))
        pool.query(QNAME, dns.A)
        [port] = fake.udp_ports
        self.assertEqual((port.interface, port.connected_to), ("::", ("2001:db8::1", 53)))


def emfile() -> OSError:
    return OSError(errno.EMFILE, "Too many open files")


class NoDescriptorReactor(FakeUDPReactor):
    """A FakeUDPReactor whose listenUDP raises ``error`` the first ``failures`` times (None: every time)."""

    def __init__(self, failures=None, error=None):
        super().__init__()
        self.failures = failures
        self.error = error if error is not None else emfile()
        self.refusals = 0

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if self.failures is None or self.refusals < self.failures:
            self.refusals += 1
            raise self.error
        return super().listenUDP(port, protocol, interface, maxPacketSize)


class NoDescriptorTests(SynchronousTestCase):
    """
    Upstream sockets that cannot be opened for want of descriptors: counted
    in stats.no_socket, no traceback (trial fails a test that logs one), no
    failure on the server's record, and asked again within the deadline.
    """

    def pool(self, fake, servers=(A, B), **kwargs):
        infra = InfraCache(list(servers), fake)
        return infra, UpstreamPool(infra, reactor=fake, **kwargs)

    def capture_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_classification(self):
        """EMFILE, ENFILE, ENOBUFS and ENOMEM count as no descriptor, bare or wrapped by Twisted; others do not."""
        self.assertTrue(out_of_descriptors(emfile()))
        self.assertTrue(out_of_descriptors(OSError(errno.ENFILE, "x")))
        self.assertTrue(out_of_descriptors(CannotListenError("0.0.0.0", 0, emfile())))
        self.assertTrue(out_of_descriptors(ConnectBindError(errno.EMFILE, "Too many open files")))
        self.assertFalse(out_of_descriptors(OSError(errno.EACCES, "x")))
        self.assertFalse(out_of_descriptors(CannotListenError("0.0.0.0", 0, OSError(errno.EADDRINUSE, "x"))))
        self.assertFalse(out_of_descriptors(ValueError()))

    def test_waits_for_a_socket_then_sends(self):
        """
        After three EMFILEs the socket is asked for again after 10, 20 and
        40 ms, the query goes out and is answered; each refusal is counted,
        nothing is logged as an error, and the server's record is clean.
        """
        fake = NoDescriptorReactor(failures=3)
        infra, pool = self.pool(fake)
        out = results(pool.query(QNAME, dns.A))
        self.assertEqual((fake.udp_ports, pool.stats.no_socket), ([], 1))
        fake.advance(0.01)
        fake.advance(0.02)
        self.assertEqual((fake.udp_ports, pool.stats.no_socket), ([], 3))
        fake.advance(0.04)
        [port] = fake.udp_ports
        self.assertEqual(port.connected_to, A)
        fake.advance(0.05)
        port.deliver(reply_to(decode(port.written[0])))
        [reply] = out
        self.assertEqual((reply.server, reply.rtt), (A, 0.05))
        self.assertEqual((pool.stats.no_socket, pool.stats.sent, pool.stats.refused), (3, 1, 0))
        status = infra.snapshot()[0]
        self.assertEqual((status.failures, status.in_flight, status.queries), (0, 0, 1))
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_no_socket_until_deadline_fails_like_timeout(self):
        """
        With no descriptor at all, every attempt waits its whole timeout and
        the query fails with UpstreamTimeout after timeout x (retries + 1),
        without marking any server failed; no call is left behind.
        """
        fake = NoDescriptorReactor(error=CannotListenError("0.0.0.0", 0, emfile()))
        infra, pool = self.pool(fake, timeout=1.0, retries=1)
        out = results(pool.query(QNAME, dns.A))
        fake.pump([0.01] * 199)
        self.assertEqual(out, [])
        fake.advance(0.02)
        [failure] = out
        failure.trap(UpstreamTimeout)
        self.assertEqual((pool.stats.failed, pool.stats.timeouts, pool.stats.refused), (1, 0, 0))
        self.assertGreater(pool.stats.no_socket, 20)
        self.assertEqual([(s.failures, s.in_flight) for s in infra.snapshot()], [(0, 0), (0, 0)])
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_no_socket_logged_once_without_traceback(self):
        """Many refused sockets make one warning line (no traceback) per minute, not one per socket."""
        events = self.capture_log()
        fake = NoDescriptorReactor()
        _, pool = self.pool(fake, timeout=1.0, retries=0)
        for i in range(5):
            results(pool.query(name(f"n{i}"), dns.A))
        fake.pump([0.1] * 11)
        self.assertGreater(pool.stats.no_socket, 50)
        [event] = [e for e in events if e.get("log_namespace") == "dnsgo.upstream.pool"]
        self.assertNotIn("log_failure", event)
        self.assertIn("EMFILE", formatEvent(event))
        self.assertEqual([e for e in events if e.get("isError") or "log_failure" in e], [])

    def test_cancel_while_waiting(self):
        """A caller that goes away while its exchange waits for a socket leaves no call behind."""
        fake = NoDescriptorReactor()
        _, pool = self.pool(fake)
        d = pool.query(QNAME, dns.A)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_tcp_leg_waits_for_a_socket(self):
        """
        After TC=1, a TCP connection refused with EMFILE is counted and
        tried again shortly; the answer then comes over TCP and the server's
        record is clean.
        """
        fake = FakeUDPReactor()
        infra, pool = self.pool(fake)
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        first.deliver(reply_to(decode(first.written[0]), trunc=True, address=None))
        factory = fake.tcpClients[0][2]
        factory.clientConnectionFailed(fake.connectors[0], Failure(ConnectBindError(errno.EMFILE, "Too many open files")))
        self.assertEqual((pool.stats.no_socket, pool.stats.refused), (1, 0))
        self.assertEqual(len(fake.tcpClients), 1)
        fake.advance(0.01)
        self.assertEqual(len(fake.tcpClients), 2)
        protocol = fake.tcpClients[1][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        query = decode(transport.value()[2:])
        data = reply_to(query)
        protocol.dataReceived(struct.pack("!H", len(data)) + data)
        [reply] = out
        self.assertEqual((reply.server, reply.via_tcp), (A, True))
        self.assertEqual(infra.snapshot()[0].failures, 0)


class RealSocketTests(TestCase):
    """End-to-end over UDP and TCP on 127.0.0.1 against fake upstreams."""

    def udp_upstream(self, handler, port=0) -> UDPUpstream:
        """Start a UDP fake upstream on 127.0.0.1."""
        server = UDPUpstream(handler)
        server.port = reactor.listenUDP(port, server, interface="127.0.0.1")
        self.addCleanup(server.port.stopListening)
        return server

    def tcp_upstream(self, handler, port) -> TCPUpstream:
        """Start a TCP fake upstream on 127.0.0.1:port."""
        factory = TCPUpstream(handler)
        listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        return factory

    def later(self, delay, f, *args):
        """reactor.callLater, cancelled at the end of the test if still pending."""
        call = reactor.callLater(delay, f, *args)
        self.addCleanup(lambda: call.cancel() if call.active() else None)
        return call

    def make_pool(self, servers, **kwargs):
        """A pool and infra cache over the given fake upstreams, in that order."""
        infra = InfraCache([s.address for s in servers], reactor)
        return UpstreamPool(infra, reactor=reactor, **kwargs), infra

    @defer.inlineCallbacks
    def test_plain_answer(self):
        """A plain UDP answer comes back decoded, with the OPT removed from the message but kept in the wire."""
        server = self.udp_upstream(answering())
        pool, infra = self.make_pool([server])
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(address_of(reply), ANSWER_ADDRESS)
        self.assertEqual((reply.server, reply.via_tcp), (server.address, False))
        self.assertEqual(reply.message.additional, [])
        self.assertEqual(reply.wire[10:12], b"\x00\x01")
        self.assertEqual(len(server.queries), 1)
        self.assertEqual(infra.snapshot()[0].health, HEALTHY)

    @defer.inlineCallbacks
    def test_truncated_then_tcp(self):
        """TC=1 over UDP makes the pool ask the same server over TCP and return the full answer."""
        for _ in range(20):
            # UDP picks a free port; TCP may find the same number taken.
            udp = self.udp_upstream(answering(trunc=True, address=None))
            try:
                tcp = self.tcp_upstream(answering(address="192.0.2.77"), udp.address[1])
                break
            except CannotListenError:
                continue
        pool, _ = self.make_pool([udp])
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual((reply.via_tcp, address_of(reply)), (True, "192.0.2.77"))
        self.assertEqual((len(udp.queries), len(tcp.queries)), (1, 1))
        self.assertEqual(tcp.queries[0].queries, udp.queries[0].queries)

    @defer.inlineCallbacks
    def test_tcp_exchange_logs_no_factory_lines(self):
        """An upstream exchange over TCP (after TC=1) logs no "Starting factory" or "Stopping factory" line."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(20):
            udp = self.udp_upstream(answering(trunc=True, address=None))
            try:
                self.tcp_upstream(answering(address="192.0.2.77"), udp.address[1])
                break
            except CannotListenError:
                continue
        pool, _ = self.make_pool([udp])
        reply = yield pool.query(QNAME, dns.A)
        self.assertTrue(reply.via_tcp)
        # The connection closes (and its factory stops) after the answer.
        yield task.deferLater(reactor, 0.1, lambda: None)
        texts = [formatEvent(e) for e in events]
        self.assertEqual([t for t in texts if "Starting factory" in t or "Stopping factory" in t], [])

    @defer.inlineCallbacks
    def test_hundred_identical_queries(self):
        """100 identical concurrent queries make exactly one upstream query and give 100 results."""
        server = self.udp_upstream(answering())
        pool, _ = self.make_pool([server])
        ds = [pool.query(QNAME if i % 2 else QNAME.upper(), dns.A) for i in range(100)]
        replies = yield defer.gatherResults(ds)
        self.assertEqual(len(replies), 100)
        self.assertEqual(len(server.queries), 1)
        self.assertEqual({address_of(r) for r in replies}, {ANSWER_ADDRESS})
        self.assertEqual(pool.stats.coalesced, 99)

    @defer.inlineCallbacks
    def test_spoofed_id_and_question(self):
        """Replies with a wrong ID or a wrong question are ignored and the genuine reply wins."""

        def handler(query, data, addr):
            return [
                reply_to(query, query_id=(query.id + 1) % 65536, address="6.6.6.6"),
                reply_to(query, name=b"www.evil.example", address="6.6.6.7"),
                reply_to(query),
            ]

        server = self.udp_upstream(handler)
        pool, _ = self.make_pool([server])
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(address_of(reply), ANSWER_ADDRESS)
        self.assertEqual(pool.stats.spoofed, 2)

    @defer.inlineCallbacks
    def test_spoofed_source_port(self):
        """A correct-looking reply sent from another port arrives first but the genuine reply wins."""
        spoofer = self.udp_upstream(silent)
        spoofs = []

        def handler(query, data, addr):
            spoofer.transport.write(reply_to(query, address="6.6.6.6"), addr)
            spoofs.append(addr)
            self.later(0.1, server.transport.write, reply_to(query), addr)
            return []

        server = self.udp_upstream(handler)
        pool, _ = self.make_pool([server])
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(len(spoofs), 1)
        self.assertEqual(address_of(reply), ANSWER_ADDRESS)

    @defer.inlineCallbacks
    def test_dead_upstream(self):
        """With one upstream silent the answer comes from the other, and the infra cache marks the silent one."""
        dead = self.udp_upstream(silent)
        good = self.udp_upstream(answering())
        pool, infra = self.make_pool([dead, good], timeout=0.2, retries=1)
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(reply.server, good.address)
        self.assertEqual(len(dead.queries), 1)
        dead_status, good_status = infra.snapshot()
        self.assertEqual((dead_status.health, dead_status.failures), (DEGRADED, 1))
        self.assertEqual((good_status.health, good_status.failures), (HEALTHY, 0))
        self.assertIsNotNone(good_status.last_response)
        self.assertEqual(pool.stats.timeouts, 1)

    @defer.inlineCallbacks
    def test_all_dead(self):
        """With every upstream silent the query fails with UpstreamTimeout after timeout * (retries + 1)."""
        first = self.udp_upstream(silent)
        second = self.udp_upstream(silent)
        pool, infra = self.make_pool([first, second], timeout=0.2, retries=2)
        started = time.monotonic()
        yield self.assertFailure(pool.query(QNAME, dns.A), UpstreamTimeout)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.55)
        self.assertLess(elapsed, 0.6 + 1.0)
        self.assertEqual((len(first.queries), len(second.queries)), (2, 1))
        self.assertEqual([s.failures for s in infra.snapshot()], [2, 1])

    @defer.inlineCallbacks
    def test_refused_everywhere(self):
        """When every upstream answers REFUSED the REFUSED reply is returned."""
        first = self.udp_upstream(answering(rcode=dns.EREFUSED))
        second = self.udp_upstream(answering(rcode=dns.EREFUSED))
        pool, infra = self.make_pool([first, second], timeout=0.5, retries=1)
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(reply.message.rCode, dns.EREFUSED)
        self.assertEqual((len(first.queries), len(second.queries)), (1, 1))
        self.assertEqual([s.failures for s in infra.snapshot()], [1, 1])

    @defer.inlineCallbacks
    def test_servfail_then_good(self):
        """SERVFAIL from one upstream and an answer from the other gives the answer."""
        bad = self.udp_upstream(answering(rcode=dns.ESERVER))
        good = self.udp_upstream(answering())
        pool, _ = self.make_pool([bad, good], timeout=0.5, retries=1)
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual((reply.server, reply.message.rCode), (good.address, dns.OK))
        self.assertEqual(len(bad.queries), 1)

    @defer.inlineCallbacks
    def test_parallel_first_wins(self):
        """The parallel strategy sends to N servers at once and takes the first answer."""

        def slow(query, data, addr):
            self.later(0.3, slow_server.transport.write, reply_to(query, address="192.0.2.66"), addr)
            return []

        slow_server = self.udp_upstream(slow)
        fast = self.udp_upstream(answering())
        unused = self.udp_upstream(answering())
        pool, _ = self.make_pool([slow_server, fast, unused], strategy="parallel", parallel_count=2)
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual((reply.server, address_of(reply)), (fast.address, ANSWER_ADDRESS))
        self.assertEqual([len(s.queries) for s in (slow_server, fast, unused)], [1, 1, 0])

    @defer.inlineCallbacks
    def test_port_unreachable(self):
        """A closed port (ICMP port unreachable) fails fast and the next server answers."""
        closed = self.udp_upstream(silent)
        address = closed.address
        yield closed.port.stopListening()
        good = self.udp_upstream(answering())
        infra = InfraCache([address, good.address], reactor)
        pool = UpstreamPool(infra, timeout=30.0, retries=1, reactor=reactor)
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(reply.server, good.address)
        self.assertEqual((pool.stats.refused, pool.stats.timeouts), (1, 0))

    @defer.inlineCallbacks
    def test_random_ids(self):
        """Fifty queries carry more than forty distinct IDs."""
        server = self.udp_upstream(answering())
        pool, _ = self.make_pool([server])
        yield defer.gatherResults([pool.query(name(f"q{i}"), dns.A) for i in range(50)])
        self.assertEqual(len(server.queries), 50)
        self.assertGreater(len({q.id for q in server.queries}), 40)

    @defer.inlineCallbacks
    def test_source_ports_differ(self):
        """Queries made one after another come from different source ports."""
        server = self.udp_upstream(answering())
        pool, _ = self.make_pool([server])
        for i in range(20):
            yield pool.query(name(f"p{i}"), dns.A)
        ports = {port for _, port in server.sources}
        self.assertGreater(len(ports), 15)
