"""
The upstream layer against loss and outages, end to end: real sockets on
127.0.0.1, the dnspython authority of tests.support (lossy, or silent for a
while) upstream, and dnspython clients.

The dnsgo here has ``upstream.timeout: 0.5s`` and ``retries: 1``: a
budget of 1 s per upstream query.  The budgets leave room for a machine
busy with other tests (these run beside whole clusters under ``trial
-j2``): what they check is that no query fails and that the loss was
ridden out by retransmission, which a budget of a few RTOs still shows.
"""
import time

import dns.rcode
from twisted.internet import defer, reactor
from twisted.names import dns as tdns
from twisted.trial import unittest

from dnsgo.upstream.infra import DOWN, InfraCache
from dnsgo.upstream.pool import SocketPoolSettings, UpstreamPool
from tests.support.authority import AuthorityServer
from tests.support.harness import ask, port, start_dnsgo
from tests.support.lossy_upstream import LossyAuthority

#: The harness's upstream budget (timeout x (retries + 1)), and the slack a
#: busy test machine needs on top of it (thread hand-offs, scheduling).
BUDGET = 1.0
SLACK = 1.0


def wire_name(text: str) -> bytes:
    """``text`` (dotted, no trailing dot) in wire format."""
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\x00"


@defer.inlineCallbacks
def timed(d):
    """Fire with (result, seconds it took) for the Deferred ``d``."""
    started = time.monotonic()
    result = yield d
    return result, time.monotonic() - started


@defer.inlineCallbacks
def in_batches(calls, width: int):
    """Run the callables ``calls`` (each returns a Deferred), ``width`` at a time; fire with all their results."""
    results = []
    for i in range(0, len(calls), width):
        batch = yield defer.gatherResults([call() for call in calls[i : i + width]])
        results.extend(batch)
    return results


class LossyForwardingTests(unittest.TestCase):
    """dnsgo forwarding to an upstream that drops the first UDP query of each question and truncates every fourth."""

    timeout = 120

    def setUp(self):
        self.authority = LossyAuthority(first_try=True)
        server = AuthorityServer(self.authority).start()
        self.addCleanup(server.stop)
        self.root = start_dnsgo(self, [server.address], upstream_timeout="0.5s")
        self.port = port(self.root)

    @defer.inlineCallbacks
    def test_every_query_answered_within_budget(self):
        """
        Once the upstream has answered one query (so its RTO is known), 120
        different questions, 6 at a time, all but two NXDOMAIN-bound, are
        each answered NOERROR or NXDOMAIN, none SERVFAIL, each within the
        upstream budget, although the upstream lost the first UDP query of
        each question and truncated a quarter of the rest.
        """
        warm = yield ask(self.port, "warm.example.test", "A", timeout=BUDGET + SLACK + 2)
        self.assertEqual(warm.rcode(), dns.rcode.NXDOMAIN)
        names = ["www.example.test", "mx.example.test"] + [f"nx{i}.example.test" for i in range(118)]
        calls = [lambda n=n: timed(ask(self.port, n, "A", timeout=BUDGET + SLACK + 2)) for n in names]
        results = yield in_batches(calls, 6)
        rcodes = [reply.rcode() for reply, _ in results]
        self.assertEqual(rcodes.count(dns.rcode.SERVFAIL), 0)
        self.assertEqual(set(rcodes) - {dns.rcode.NOERROR, dns.rcode.NXDOMAIN}, set())
        self.assertEqual(rcodes.count(dns.rcode.NOERROR), 2)
        slowest = max(elapsed for _, elapsed in results)
        self.assertLess(slowest, BUDGET + SLACK)
        # The loss really happened, and was ridden out by retransmission and TCP.
        stats = self.root.pool.stats
        self.assertGreater(self.authority.dropped, 40)
        self.assertGreater(self.authority.truncated, 20)
        self.assertGreater(stats.retransmits, 40)
        self.assertGreater(stats.tcp, 20)
        self.assertEqual(stats.failed, 0)
        # A timeout is not an RTT sample: the srtt stays that of a local server.
        [status] = self.root.infra.snapshot()
        self.assertLess(status.srtt_ms, 50)


class LossyPoolTests(unittest.TestCase):
    """
    The upstream pool alone, cold, against the lossy authority, with
    retransmission as the only remedy for loss (no TCP fallback), and a
    budget of 1 s (timeout 0.5 s, 1 retry).
    """

    timeout = 60

    @defer.inlineCallbacks
    def check_pool(self, **pool_options):
        """64 questions, 8 at a time: all answered within the budget."""
        authority = LossyAuthority(first_try=True)
        server = AuthorityServer(authority).start()
        self.addCleanup(server.stop)
        infra = InfraCache([server.address], reactor)
        pool = UpstreamPool(infra, timeout=0.5, retries=1, tcp_fallback_after=None, reactor=reactor, **pool_options)
        self.addCleanup(pool.close)
        calls = [lambda i=i: timed(pool.query(wire_name(f"q{i}.example.test"), tdns.A)) for i in range(64)]
        results = yield in_batches(calls, 8)
        self.assertEqual({reply.message.rCode for reply, _ in results}, {tdns.ENAME})
        self.assertLess(max(elapsed for _, elapsed in results), pool.budget + SLACK)
        self.assertGreater(authority.dropped, 20)
        self.assertGreater(authority.truncated, 10)
        self.assertEqual((pool.stats.failed, pool.stats.tcp_fallback), (0, 0))
        self.assertGreaterEqual(pool.stats.retransmits, authority.dropped)
        return pool

    def test_fresh_sockets(self):
        """With a fresh socket per question and server, every lost datagram is retransmitted in time."""
        return self.check_pool()

    @defer.inlineCallbacks
    def test_socket_pool(self):
        """With a pool of two sockets per upstream, the same, from no more than two source ports at a time."""
        pool = yield self.check_pool(socket_pool=SocketPoolSettings(sockets=2, max_uses=50))
        self.assertEqual(pool.stats.spoofed, 0)


class RecoveryTests(unittest.TestCase):
    """A lone upstream that goes silent for a while, then answers again."""

    timeout = 60

    @defer.inlineCallbacks
    def test_answers_at_once_after_outage(self):
        """
        While the only upstream is silent, queries fail after the budget and
        it goes down with its RTO backed off, but its srtt stays its real
        one; the moment it answers again, the next query is answered at
        once (a down lone upstream is still asked; no probe is waited for),
        and the upstream is healthy again.
        """
        server = AuthorityServer().start()
        self.addCleanup(server.stop)
        root = start_dnsgo(self, [server.address], upstream_timeout="0.5s")
        p = port(root)
        reply = yield ask(p, "www.example.test", "A")
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
        [before] = root.infra.snapshot()

        server.authority.silent = True
        for i in range(3):
            reply, elapsed = yield timed(ask(p, f"dark{i}.example.test", "A"))
            self.assertEqual(reply.rcode(), dns.rcode.SERVFAIL)
            self.assertGreater(elapsed, BUDGET - 0.05)
        [dark] = root.infra.snapshot()
        self.assertEqual(dark.health, DOWN)
        self.assertGreater(dark.rto_ms, before.rto_ms)
        self.assertEqual(dark.srtt_ms, before.srtt_ms)
        self.assertLess(dark.srtt_ms, 50)

        server.authority.silent = False
        reply, elapsed = yield timed(ask(p, "back.example.test", "A"))
        self.assertEqual(reply.rcode(), dns.rcode.NXDOMAIN)
        self.assertLess(elapsed, 0.25)
        [after] = root.infra.snapshot()
        self.assertNotEqual(after.health, DOWN)
        self.assertEqual(after.consecutive_failures, 0)
        self.assertLess(after.rto_ms, dark.rto_ms)
        reply, elapsed = yield timed(ask(p, "mx.example.test", "MX"))
        self.assertEqual(reply.rcode(), dns.rcode.NOERROR)
        self.assertLess(elapsed, 0.25)
