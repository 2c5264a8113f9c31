"""
Tests for L{dnsgo.upstream.pool}: the forwarding client.

The first group drives the pool with a fake reactor (a Clock and in-memory
UDP ports) to check timing and bookkeeping exactly; the second runs real
UDP and TCP sockets on 127.0.0.1 against small fake upstream servers.
"""
import errno
import gc
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

from dnsgo.upstream.infra import DEGRADED, DOWN, HEALTHY, InfraCache
from dnsgo.upstream.pool import (
    SocketPoolSettings,
    UpstreamPool,
    UpstreamReply,
    UpstreamTimeout,
    _Exchange,
    _Resolution,
    out_of_descriptors,
)
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
        self.assertAlmostEqual(status.srtt_ms, 250.0)
        self.assertEqual((status.in_flight, status.last_response), (0, 0.25))
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_timeouts_and_failover(self):
        """
        Each transmission waits the server's RTO (376 ms unmeasured), then
        the best server by RTO is asked, each time with its RTO doubled:
        A at 0, B at 0.376, A at 0.752, B at 1.504, A at 2.256; the query
        fails at its budget, timeout x (retries + 1) = 3 s, and each server
        kept one socket for all its transmissions.
        """
        fake, infra, pool = fake_pool(timeout=1.0, retries=2, tcp_fallback_after=None)
        out = results(pool.query(QNAME, dns.A))

        def sent():
            return [(p.connected_to, len(p.written)) for p in fake.udp_ports]

        self.assertEqual(sent(), [(A, 1)])
        for step, expected in [
            (0.376, [(A, 1), (B, 1)]),
            (0.376, [(A, 2), (B, 1)]),
            (0.752, [(A, 2), (B, 2)]),
            (0.752, [(A, 3), (B, 2)]),
        ]:
            fake.advance(step - 0.0001)
            self.assertNotEqual(sent(), expected)
            fake.advance(0.0001)
            self.assertEqual(sent(), expected)
        fake.advance(0.7439)
        self.assertEqual(out, [])
        fake.advance(0.0001)
        [failure] = out
        failure.trap(UpstreamTimeout)
        self.assertIsInstance(failure.value, defer.TimeoutError)
        self.assertTrue(all(p.closed for p in fake.udp_ports))
        self.assertEqual([s.failures for s in infra.snapshot()], [3, 2])
        stats = pool.stats
        self.assertEqual((stats.sent, stats.retransmits, stats.timeouts, stats.failed), (5, 3, 5, 1))
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_fresh_id_per_transmission(self):
        """Retransmissions to one server go out on the question's socket for that server, each with a new random ID."""
        fake, _, pool = fake_pool(timeout=1.0, retries=30, servers=(A,), tcp_fallback_after=None)
        out = results(pool.query(QNAME, dns.A))
        for _ in range(31):
            fake.advance(1.0)
        [port] = fake.udp_ports
        ids = {struct.unpack("!H", data[:2])[0] for data in port.written}
        self.assertGreater(len(port.written), 30)
        self.assertGreater(len(ids), 25)
        self.assertEqual(len(out), 1)
        out[0].trap(UpstreamTimeout)

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
        """
        After an unusable reply that server is not asked again by this
        query; the other one is retransmitted to until the budget ends, and
        the unusable reply is the result.
        """
        fake, _, pool = fake_pool(retries=1, timeout=1.0)
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        first.deliver(reply_to(decode(first.written[0]), rcode=dns.EREFUSED))
        advance_to(fake, 1.9999)
        self.assertEqual(out, [])
        advance_to(fake, 2.0)
        self.assertEqual((out[0].server, out[0].message.rCode), (A, dns.EREFUSED))
        self.assertEqual([(p.connected_to, len(p.written)) for p in fake.udp_ports], [(A, 1), (B, 3)])

    def test_questionless_error_accepted(self):
        """A FORMERR without a question counts as an unusable reply; a NOERROR without one is ignored."""
        fake, _, pool = fake_pool(servers=(A,), retries=0)
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

    def test_tcp_leg_timeout(self):
        """After TC=1 the TCP leg may take the timeout (within the budget); when it expires the next server is tried."""
        fake, infra, pool = fake_pool(timeout=1.0, retries=1)
        out = results(pool.query(QNAME, dns.A))
        first = fake.udp_ports[0]
        fake.advance(0.2)
        first.deliver(reply_to(decode(first.written[0]), trunc=True, address=None))
        [(host, port, _, timeout, _)] = fake.tcpClients
        self.assertEqual((host, port), A)
        self.assertTrue(first.closed)
        fake.advance(0.999)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A])
        fake.advance(0.001)
        self.assertEqual(out, [])
        self.assertTrue(fake.connectors[0].stoppedConnecting)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        self.assertEqual((infra.snapshot()[0].failures, pool.stats.timeouts), (1, 1))

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
        self.assertAlmostEqual(infra.snapshot()[0].srtt_ms, 100.0)

    def test_parallel_servers(self):
        """
        The parallel strategy asks best(n) at once; when both time out, the
        best n by RTO then: the unmeasured C, and A again (on its socket).
        """
        fake, infra, pool = fake_pool((A, B, C), strategy="parallel", parallel_count=2, retries=1, timeout=1.0)
        out = results(pool.query(QNAME, dns.A))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        fake.advance(0.376)
        self.assertEqual([(p.connected_to, len(p.written)) for p in fake.udp_ports], [(A, 2), (B, 1), (C, 1)])
        first = fake.udp_ports[0]
        first.deliver(reply_to(decode(first.written[1])))
        self.assertEqual(out[0].server, A)
        self.assertTrue(all(p.closed for p in fake.udp_ports))
        snapshot = {s.address: s for s in infra.snapshot()}
        # C lost the race: abandoned, neither failed nor succeeded.
        self.assertEqual(
            (snapshot["192.0.2.3:53"].failures, snapshot["192.0.2.3:53"].in_flight), (0, 0)
        )
        self.assertEqual(snapshot["192.0.2.3:53"].last_response, None)

    def test_parallel_all_unusable_ends_early(self):
        """When every server of a parallel try gave an unusable reply the next try starts at once, without them."""
        fake, _, pool = fake_pool((A, B, C), strategy="parallel", parallel_count=2, retries=1)
        out = results(pool.query(QNAME, dns.A))
        for port in fake.udp_ports[:2]:
            port.deliver(reply_to(decode(port.written[0]), rcode=dns.ESERVER))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B, C])
        third = fake.udp_ports[2]
        third.deliver(reply_to(decode(third.written[0]), rcode=dns.EREFUSED))
        self.assertEqual((out[0].server, out[0].message.rCode), (C, dns.EREFUSED))

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
        self.assertRaises(ValueError, UpstreamPool, infra, tcp_fallback_after=0, reactor=fake)
        self.assertRaises(ValueError, SocketPoolSettings, sockets=0)
        self.assertRaises(ValueError, SocketPoolSettings, max_uses=0)
        self.assertRaises(ValueError, SocketPoolSettings, max_age=0)

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


def advance_to(fake, when: float) -> None:
    """Move the clock to ``when`` event by event (Clock.advance runs every due call at the end time)."""
    while True:
        due = [call.getTime() for call in fake.getDelayedCalls() if call.getTime() <= when]
        if not due:
            break
        fake.advance(max(0.0, min(due) - fake.seconds()))
    fake.advance(max(0.0, when - fake.seconds()))


def warm(infra, server=A, rtt=0.001):
    """Give ``server`` one RTT sample, so its RTO is the 50 ms floor."""
    infra.started(server)
    infra.succeeded(server, rtt)


def answer_last(port, **kwargs):
    """Deliver on ``port`` a reply to the last datagram written on it."""
    port.deliver(reply_to(decode(port.written[-1]), **kwargs))


class RetransmissionTests(SynchronousTestCase):
    """Transmissions timed by the server's RTO, backed off per loss, within the query's budget."""

    def assertSchedule(self, fake, port, times):
        """``port`` gets its datagrams at ``times`` (the first is already out), stepping the clock event by event."""
        seen = [fake.seconds()] * len(port.written)
        while len(seen) < len(times) and fake.getDelayedCalls():
            fake.advance(min(call.getTime() for call in fake.getDelayedCalls()) - fake.seconds())
            seen += [fake.seconds()] * (len(port.written) - len(seen))
        self.assertEqual([round(t, 6) for t in seen], times)

    def test_rto_schedule_of_a_silent_server(self):
        """
        A lone server with a 50 ms RTO that stops answering gets the query
        at 0, 0.05, 0.15, 0.35, 0.75 and 1.55 s (each wait twice the last),
        then the query fails at its 2 s budget; the RTO is backed off once
        per loss (the last datagram, cut short at 0.45 s of its 1 s wait,
        does not count), the srtt is the one its answers gave.
        """
        fake, infra, pool = fake_pool(servers=(A,), tcp_fallback_after=None)
        warm(infra)
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        self.assertSchedule(fake, port, [0, 0.05, 0.15, 0.35, 0.75, 1.55])
        fake.advance(1.9999 - fake.seconds())
        self.assertEqual((out, len(port.written)), ([], 6))
        fake.advance(0.0002)
        out[0].trap(UpstreamTimeout)
        status = infra.snapshot()[0]
        self.assertEqual(status.srtt_ms, 1.0)
        self.assertAlmostEqual(status.rto_ms, 1600.0)
        self.assertEqual((status.failures, status.in_flight), (5, 0))
        self.assertEqual((pool.stats.sent, pool.stats.retransmits, pool.stats.timeouts), (6, 5, 5))
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_wait_capped_by_timeout(self):
        """A wait never exceeds upstream.timeout, however far the RTO has backed off."""
        fake, infra, pool = fake_pool(servers=(A,), timeout=0.5, retries=3, tcp_fallback_after=None)
        for _ in range(10):
            infra.started(A)
            infra.failed(A)
        self.assertGreater(infra.rto(A), 100)
        results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        self.assertSchedule(fake, port, [0, 0.5, 1.0, 1.5])

    def test_answer_after_retransmission(self):
        """A lost datagram is sent again after the RTO and the answer to it is accepted, its RTT from the resend."""
        fake, infra, pool = fake_pool(servers=(A,))
        warm(infra)
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        fake.advance(0.05)
        self.assertEqual(len(port.written), 2)
        fake.advance(0.002)
        answer_last(port)
        [reply] = out
        self.assertAlmostEqual(reply.rtt, 0.002)
        self.assertTrue(port.closed)
        self.assertEqual((pool.stats.retransmits, pool.stats.timeouts, pool.stats.answered), (1, 1, 1))
        self.assertEqual(infra.rto(A), 0.05)

    def test_late_reply_ignored(self):
        """A reply to a transmission that timed out is counted as late and ignored: one (port, ID) open at a time."""
        fake, infra, pool = fake_pool(servers=(A,))
        warm(infra)
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        fake.advance(0.05)
        first, second = (decode(data) for data in port.written)
        self.assertNotEqual(first.id, second.id)
        port.deliver(reply_to(first))
        self.assertEqual((out, pool.stats.late, pool.stats.spoofed), ([], 1, 0))
        port.deliver(reply_to(second))
        self.assertEqual(len(out), 1)

    def test_successes_of_others_do_not_shorten_a_query_backoff(self):
        """
        While other queries' answers keep the server's RTO at 50 ms, a query
        that keeps losing still doubles its own waits: 0, 0.05, 0.15, 0.35.
        """
        fake, infra, pool = fake_pool(servers=(A,), tcp_fallback_after=None)
        warm(infra)
        results(pool.query(name("lossy"), dns.A))
        lossy = fake.udp_ports[0]
        for i, at in enumerate((0.04, 0.1, 0.2, 0.3)):
            advance_to(fake, at)
            other = results(pool.query(name(f"ok{i}"), dns.A))
            answer_last(fake.udp_ports[-1])
            self.assertEqual(len(other), 1)
            self.assertEqual(infra.rto(A), 0.05)
        advance_to(fake, 0.3499)
        self.assertEqual(len(lossy.written), 3)
        advance_to(fake, 0.3501)
        self.assertEqual(len(lossy.written), 4)

    def test_tcp_fallback_after_losses(self):
        """
        After three UDP losses in a row the query asks over TCP; the TCP
        answer ends the server's back-off without being an RTT sample.
        """
        fake, infra, pool = fake_pool(servers=(A,))
        warm(infra)
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        fake.pump([0.05, 0.1, 0.2 + 1e-6])
        self.assertEqual((len(port.written), len(fake.tcpClients)), (3, 1))
        self.assertEqual(fake.tcpClients[0][:2], A)
        protocol = fake.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        fake.advance(0.01)
        data = reply_to(decode(transport.value()[2:]))
        protocol.dataReceived(struct.pack("!H", len(data)) + data)
        [reply] = out
        self.assertEqual((reply.via_tcp, reply.server), (True, A))
        self.assertEqual((pool.stats.tcp_fallback, pool.stats.tcp), (1, 0))
        status = infra.snapshot()[0]
        self.assertEqual((status.srtt_ms, status.rto_ms, status.consecutive_failures), (1.0, 50.0, 0))

    def test_tcp_fallback_timeout_goes_back_to_udp(self):
        """A TCP fallback that gets no answer in time is a loss: the query goes on over UDP."""
        fake, infra, pool = fake_pool(servers=(A,), timeout=0.3, retries=9)
        warm(infra)
        results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        fake.pump([0.05, 0.1, 0.2 + 1e-6])
        self.assertEqual(len(fake.tcpClients), 1)
        fake.advance(0.3)
        self.assertTrue(fake.connectors[0].stoppedConnecting)
        self.assertEqual(len(port.written), 4)
        self.assertEqual(pool.stats.tcp_fallback, 1)

    def test_lone_down_server_asked_at_once(self):
        """A lone upstream marked down, its probe not due, still gets the query at once, and one answer revives it."""
        fake, infra, pool = fake_pool(servers=(A,))
        for _ in range(3):
            infra.started(A)
            infra.failed(A)
        status = infra.snapshot()[0]
        self.assertEqual((status.health, status.next_probe), (DOWN, 1.0))
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        fake.advance(0.001)
        answer_last(port)
        self.assertEqual(out[0].server, A)
        status = infra.snapshot()[0]
        self.assertEqual((status.health, status.consecutive_failures, status.next_probe), (HEALTHY, 0, None))

    def test_all_down_soonest_probe_asked_at_once(self):
        """When every upstream is down, the query goes at once to the one whose probe is soonest."""
        fake, infra, pool = fake_pool((A, B))
        for server in (B, A):
            for _ in range(3):
                infra.started(server)
                infra.failed(server)
            fake.advance(0.1)
        results(pool.query(QNAME, dns.A))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [B])

    def test_last_server_up_refuses_then_down_one_asked(self):
        """When the only server still up refuses the query, the down one is asked rather than failing untried."""
        fake, infra, pool = fake_pool((A, B))
        for _ in range(3):
            infra.started(A)
            infra.failed(A)
        out = results(pool.query(QNAME, dns.A))
        self.assertEqual([p.connected_to for p in fake.udp_ports], [B])
        fake.udp_ports[0].protocol.connectionRefused()
        self.assertEqual([p.connected_to for p in fake.udp_ports], [B, A])
        answer_last(fake.udp_ports[1])
        self.assertEqual(out[0].server, A)


def pooled(servers=(A, B), **settings):
    """A pool with a socket pool over ``servers`` on a FakeUDPReactor; returns (reactor, infra, pool)."""
    return fake_pool(servers, socket_pool=SocketPoolSettings(**settings))


def datagrams(fake):
    """Every (port, decoded query) written so far, in order of ports."""
    return [(port, decode(data)) for port in fake.udp_ports for data in port.written]


class SocketPoolTests(SynchronousTestCase):
    """The socket_pool option: a few connected sockets per upstream, shared, renewed."""

    def test_sockets_shared_and_kept(self):
        """Ten questions go out on at most two sockets, each connected to the server, left open after the answers."""
        fake, _, pool = pooled(sockets=2)
        outs = [results(pool.query(name(f"s{i}"), dns.A)) for i in range(10)]
        self.assertEqual(len(fake.udp_ports), 2)
        self.assertEqual({p.connected_to for p in fake.udp_ports}, {A})
        for port, query in datagrams(fake):
            self.assertEqual(len({decode(d).id for d in port.written}), len(port.written))
            port.deliver(reply_to(query))
        self.assertEqual([len(out) for out in outs], [1] * 10)
        self.assertFalse(any(p.closed for p in fake.udp_ports))
        self.assertEqual(pool.stats.spoofed, 0)
        pool.close()
        self.assertTrue(all(p.closed for p in fake.udp_ports))

    def test_renewed_after_max_uses(self):
        """A socket that sent max_uses datagrams takes no more; it closes once its questions are settled."""
        fake, _, pool = pooled(sockets=1, max_uses=3)
        for i in range(3):
            results(pool.query(name(f"u{i}"), dns.A))
        [old] = fake.udp_ports
        results(pool.query(name("u3"), dns.A))
        self.assertEqual(len(fake.udp_ports), 2)
        self.assertFalse(old.closed)
        for query in (decode(data) for data in old.written):
            old.deliver(reply_to(query))
        self.assertTrue(old.closed)
        self.assertFalse(fake.udp_ports[1].closed)

    def test_renewed_after_max_age(self):
        """A socket older than max_age takes no more questions, and closes when idle."""
        fake, _, pool = pooled(sockets=1, max_age=10.0)
        results(pool.query(name("a0"), dns.A))
        [old] = fake.udp_ports
        answer_last(old)
        fake.advance(10.0)
        results(pool.query(name("a1"), dns.A))
        self.assertEqual(len(fake.udp_ports), 2)
        self.assertTrue(old.closed)

    def test_ids_unique_per_socket(self):
        """Two hundred questions in flight on one socket each carry a different ID."""
        fake, _, pool = pooled(sockets=1, max_uses=1000)
        for i in range(200):
            pool.query(name(f"i{i}"), dns.A)
        [port] = fake.udp_ports
        self.assertEqual(len({decode(d).id for d in port.written}), 200)

    def test_stray_and_late(self):
        """A reply with an ID nobody sent is counted as spoofed; one to a timed-out transmission as late."""
        fake, infra, pool = pooled(servers=(A,), sockets=1)
        warm(infra)
        out = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        query = decode(port.written[0])
        port.deliver(reply_to(query, query_id=(query.id + 1) % 65536))
        self.assertEqual(pool.stats.spoofed, 1)
        fake.advance(0.05)
        port.deliver(reply_to(query))
        self.assertEqual((pool.stats.late, out), (1, []))
        answer_last(port)
        self.assertEqual(len(out), 1)

    def test_refused_fails_every_question_on_the_socket(self):
        """ICMP unreachable on a pooled socket fails over every question on it at once and retires the socket."""
        fake, _, pool = pooled(sockets=1)
        outs = [results(pool.query(name(f"r{i}"), dns.A)) for i in range(2)]
        [port] = fake.udp_ports
        port.protocol.connectionRefused()
        self.assertTrue(port.closed)
        self.assertEqual([p.connected_to for p in fake.udp_ports], [A, B])
        self.assertEqual(len(fake.udp_ports[1].written), 2)
        for _, query in datagrams(fake)[2:]:
            fake.udp_ports[1].deliver(reply_to(query))
        self.assertEqual([out[0].server for out in outs], [B, B])
        self.assertEqual(pool.stats.refused, 2)

    def test_no_socket_then_one(self):
        """A pooled socket that cannot be opened (EMFILE) is asked for again, as a fresh one would be."""
        fake = NoDescriptorReactor(failures=1)
        infra = InfraCache([A], fake)
        pool = UpstreamPool(infra, reactor=fake, socket_pool=SocketPoolSettings(sockets=2))
        out = results(pool.query(QNAME, dns.A))
        self.assertEqual((fake.udp_ports, pool.stats.no_socket), ([], 1))
        fake.advance(0.01)
        answer_last(fake.udp_ports[0])
        self.assertEqual(len(out), 1)


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

    @defer.inlineCallbacks
    def test_lost_datagram_retransmitted(self):
        """An upstream that drops the first datagram of each question answers the retransmission, from the same port."""
        seen = set()

        def first_dropped(query, data, addr):
            key = query.queries[0].name.name
            if key in seen:
                return [reply_to(query)]
            seen.add(key)
            return []

        server = self.udp_upstream(first_dropped)
        pool, infra = self.make_pool([server], tcp_fallback_after=None)
        started = time.monotonic()
        reply = yield pool.query(QNAME, dns.A)
        self.assertLess(time.monotonic() - started, 0.376 + 0.5)
        self.assertEqual(address_of(reply), ANSWER_ADDRESS)
        self.assertEqual(len(server.queries), 2)
        self.assertEqual(len(set(server.sources)), 1)
        self.assertNotEqual(server.queries[0].id, server.queries[1].id)
        self.assertEqual((pool.stats.retransmits, pool.stats.timeouts), (1, 1))
        self.assertLess(infra.snapshot()[0].srtt_ms, 100)

    @defer.inlineCallbacks
    def test_socket_pool(self):
        """With a socket pool of two, twenty questions are answered from at most two source ports."""
        server = self.udp_upstream(answering())
        pool, _ = self.make_pool([server], socket_pool=SocketPoolSettings(sockets=2))
        self.addCleanup(pool.close)
        replies = yield defer.gatherResults([pool.query(name(f"k{i}"), dns.A) for i in range(20)])
        self.assertEqual({address_of(r) for r in replies}, {ANSWER_ADDRESS})
        self.assertLessEqual(len({port for _, port in server.sources}), 2)
        self.assertEqual(len(server.queries), 20)

    @defer.inlineCallbacks
    def test_socket_pool_port_unreachable(self):
        """With a socket pool, a closed port still fails fast (pooled sockets are connected); the next server answers."""
        closed = self.udp_upstream(silent)
        address = closed.address
        yield closed.port.stopListening()
        good = self.udp_upstream(answering())
        infra = InfraCache([address, good.address], reactor)
        pool = UpstreamPool(infra, timeout=30.0, retries=1, reactor=reactor, socket_pool=SocketPoolSettings(sockets=2))
        self.addCleanup(pool.close)
        reply = yield pool.query(QNAME, dns.A)
        self.assertEqual(reply.server, good.address)
        self.assertEqual((pool.stats.refused, pool.stats.timeouts), (1, 0))


def ask_and_query_answered(fake, pool):
    """
    ask() and query() the same question on a fake_pool(), and answer the one
    datagram sent; returns (what ask's callback got, query's results(), the port).
    """
    asked = []
    pool.ask(QNAME, dns.A, dns.IN, False, False, asked.append)
    queried = results(pool.query(QNAME, dns.A))
    [port] = fake.udp_ports
    port.deliver(reply_to(decode(port.written[0])))
    return asked, queried, port


class AskTests(SynchronousTestCase):
    """UpstreamPool.ask: the miss path's plain-callback form of query()."""

    def test_ask_and_query_share_one_resolution(self):
        """An ask() and a query() for the same question share one upstream query and get the same reply."""
        fake, _, pool = fake_pool()
        asked, queried, port = ask_and_query_answered(fake, pool)
        self.assertEqual(len(port.written), 1)
        self.assertEqual(len(asked), 1)
        self.assertIs(asked[0], queried[0])
        self.assertEqual(address_of(asked[0]), ANSWER_ADDRESS)
        self.assertEqual((pool.stats.queries, pool.stats.coalesced), (2, 1))

    def test_ask_timeout_is_an_exception_value(self):
        """When the budget runs out, done() gets the UpstreamTimeout itself, once."""
        fake, _, pool = fake_pool(timeout=1.0, retries=0)
        asked = []
        pool.ask(QNAME, dns.A, dns.IN, False, False, asked.append)
        fake.advance(5)
        [outcome] = asked
        self.assertIsInstance(outcome, UpstreamTimeout)
        self.assertEqual(fake.getDelayedCalls(), [])

    def test_ask_malformed_name(self):
        """A malformed question name gives done() a ValueError at once; nothing is sent."""
        fake, _, pool = fake_pool()
        asked = []
        pool.ask(b"\x05ab", dns.A, dns.IN, False, False, asked.append)
        [outcome] = asked
        self.assertIsInstance(outcome, ValueError)
        self.assertEqual(fake.udp_ports, [])

    def test_failing_caller_does_not_stop_the_others(self):
        """A done() that raises is logged; the other callers of the same question still get the reply."""
        fake, _, pool = fake_pool()
        pool.ask(QNAME, dns.A, dns.IN, False, False, lambda reply: 1 / 0)
        queried = results(pool.query(QNAME, dns.A))
        [port] = fake.udp_ports
        port.deliver(reply_to(decode(port.written[0])))
        self.assertEqual(address_of(queried[0]), ANSWER_ADDRESS)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class NoCycleTests(SynchronousTestCase):
    """
    A finished resolution leaves no reference cycle behind: its memory
    returns at once by reference counting, not at the cyclic garbage
    collector's next run.
    """

    def setUp(self):
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)

    def pool_objects(self) -> list:
        """The resolutions and exchanges still alive anywhere."""
        return [o for o in gc.get_objects() if isinstance(o, (_Resolution, _Exchange))]

    def test_answered(self):
        """After an answered ask() and query(), no resolution or exchange is left alive."""
        fake, _, pool = fake_pool()
        asked, queried, port = ask_and_query_answered(fake, pool)
        self.assertEqual(address_of(queried[0]), ANSWER_ADDRESS)
        del port
        self.assertEqual(self.pool_objects(), [])

    def test_timed_out(self):
        """After a resolution runs out of budget (both servers tried), none is left alive."""
        fake, _, pool = fake_pool(timeout=0.5, retries=1)
        asked = []
        pool.ask(QNAME, dns.A, dns.IN, False, False, asked.append)
        fake.advance(5)
        self.assertIsInstance(asked[0], UpstreamTimeout)
        self.assertEqual(self.pool_objects(), [])

    def test_cancelled(self):
        """After the only caller cancels, none is left alive."""
        fake, _, pool = fake_pool()
        d = pool.query(QNAME, dns.A)
        d.addErrback(lambda f: None)
        d.cancel()
        del d
        self.assertEqual(self.pool_objects(), [])


class QueryIdTests(SynchronousTestCase):
    """dnsgo.upstream.ids: random IDs drawn from os.urandom in chunks."""

    def test_ids_cover_the_range_and_refill(self):
        """More IDs than one chunk holds come out, all 16-bit, spread over the whole range."""
        from dnsgo.upstream.ids import CHUNK, QueryIds

        ids = QueryIds()
        drawn = [ids() for _ in range(CHUNK)]  # two chunks' worth of IDs (2 bytes each)
        self.assertTrue(all(0 <= i < 65536 for i in drawn))
        self.assertGreater(len(set(drawn)), CHUNK * 0.9)
        self.assertLess(min(drawn), 4096)
        self.assertGreater(max(drawn), 65536 - 4096)

    def test_forked_child_draws_anew(self):
        """After a fork the child does not hand out the IDs its parent had already drawn."""
        import json
        import os

        from dnsgo.upstream.ids import QueryIds

        ids = QueryIds()
        ids()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next 8 IDs
            os.close(read)
            os.write(write, json.dumps([ids() for _ in range(8)]).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
        parent = [ids() for _ in range(8)]
        self.assertNotEqual(child, parent)


class DeadlinesTests(SynchronousTestCase):
    """dnsgo.upstream.deadlines: many deadlines on one reactor timer, each firing at its own time."""

    def setUp(self):
        from dnsgo.upstream.deadlines import Deadlines

        self.clock = task.Clock()
        self.deadlines = Deadlines(self.clock)
        self.fired = []

    def arm(self, delay, label):
        return self.deadlines.call_later(delay, lambda: self.fired.append((label, self.clock.seconds())))

    def test_each_fires_at_its_time_on_one_timer(self):
        """Deadlines armed in any order fire in time order, each at its own time, with one reactor timer."""
        self.arm(0.3, "c")
        self.arm(0.1, "a")
        self.arm(0.2, "b")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.1 - 1e-6)
        self.assertEqual(self.fired, [])
        self.clock.pump([1e-6, 0.1, 0.1])
        self.assertEqual([label for label, _ in self.fired], ["a", "b", "c"])
        for (label, at), expected in zip(self.fired, (0.1, 0.2, 0.3)):
            self.assertAlmostEqual(at, expected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_never_fire_and_idle_leaves_no_timer(self):
        """A cancelled deadline does not fire; with none live, no delayed call is left."""
        a = self.arm(0.1, "a")
        b = self.arm(0.2, "b")
        a.cancel()
        self.assertFalse(a.active())
        self.assertTrue(b.active())
        b.cancel()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(self.fired, [])

    def test_earlier_deadline_moves_the_timer(self):
        """A deadline earlier than every armed one fires on time."""
        self.arm(1.0, "late")
        self.arm(0.05, "early")
        self.clock.advance(0.05)
        self.assertEqual([label for label, _ in self.fired], ["early"])

    def test_callback_arming_later_deadline_keeps_earlier_ones(self):
        """A firing callback that arms a later deadline does not delay the earlier ones still waiting."""
        self.deadlines.call_later(0.1, lambda: self.arm(1.0, "from-callback"))
        self.arm(0.2, "waiting")
        self.clock.advance(0.1)
        self.clock.advance(0.1)
        self.assertEqual([label for label, _ in self.fired], ["waiting"])
        self.clock.advance(0.9)
        self.assertEqual([label for label, _ in self.fired], ["waiting", "from-callback"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class QuestionMatchTests(SynchronousTestCase):
    """A reply's question must be the query's: name without case, type and class exactly."""

    def reply_bytes(self, query: bytes, qtype: int | None = None, upper: bool = False) -> bytes:
        """The query turned into an empty NOERROR reply (QR set), its type or name case changed if asked."""
        data = bytearray(query)
        data[2] |= 0x80
        end = 12 + len(QNAME)
        if upper:
            data[12:end] = bytes(data[12:end]).upper()
        if qtype is not None:
            struct.pack_into("!H", data, end, qtype)
        return bytes(data)

    def test_type_differing_only_by_case_bits_is_refused(self):
        """Type 97 against a query of type 65 (0x61 and 0x41: one ASCII case apart) is a spoof, not a match."""
        fake, _, pool = fake_pool()
        out = results(pool.query(QNAME, 65))
        [port] = fake.udp_ports
        port.deliver(self.reply_bytes(port.written[0], qtype=97))
        self.assertEqual(out, [])
        self.assertEqual(pool.stats.spoofed, 1)
        port.deliver(self.reply_bytes(port.written[0], upper=True))
        [reply] = out
        self.assertEqual(reply.wire[12:12 + len(QNAME)], QNAME.upper())
