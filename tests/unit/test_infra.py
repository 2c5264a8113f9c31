"""
Tests for L{dnsgo.upstream.infra}: the L3 infrastructure cache.
"""
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.upstream.infra import (
    DEGRADED,
    DOWN,
    HEALTHY,
    INITIAL_RTO,
    INITIAL_SRTT,
    RTO_MAX,
    RTO_MIN,
    InfraCache,
    UpstreamStatus,
    format_address,
)

A = ("192.0.2.1", 53)
B = ("192.0.2.2", 53)
C = ("192.0.2.3", 5353)


def make(servers=(A, B), **kwargs):
    """An InfraCache over C{servers} driven by a fresh Clock."""
    clock = Clock()
    return InfraCache(list(servers), clock, **kwargs), clock


def fail(infra, server, times=1):
    """Report C{times} failed attempts to C{server}."""
    for _ in range(times):
        infra.started(server)
        infra.failed(server)


def succeed(infra, server, rtt=0.01):
    """Report one successful attempt to C{server}."""
    infra.started(server)
    infra.succeeded(server, rtt)


class SmoothedRTTTests(SynchronousTestCase):
    """srtt and rttvar follow RFC 6298 from the first sample; only answers are samples."""

    def test_initial(self):
        """An unmeasured server shows the documented initial srtt and RTO (Unbound's 376 ms)."""
        infra, _ = make()
        status = infra.snapshot()[0]
        self.assertEqual((status.srtt_ms, status.rto_ms), (376.0, 376.0))
        self.assertEqual((INITIAL_SRTT, INITIAL_RTO), (0.376, 0.376))
        self.assertEqual((infra.rto(A), infra.base_rto(A), infra.srtt(A)), (0.376, 0.376, 0.376))

    def test_first_sample_replaces_the_guess(self):
        """The first sample R sets srtt = R and rttvar = R/2, so RTO = 3R."""
        infra, _ = make()
        succeed(infra, A, 0.1)
        self.assertAlmostEqual(infra.srtt(A), 0.1)
        self.assertAlmostEqual(infra.rto(A), 0.3)

    def test_later_samples(self):
        """rttvar moves a quarter of the way to |srtt - R|, then srtt an eighth of the way to R."""
        infra, _ = make()
        succeed(infra, A, 0.1)
        succeed(infra, A, 0.02)
        rttvar = 0.05 * 3 / 4 + abs(0.1 - 0.02) / 4
        srtt = 0.1 * 7 / 8 + 0.02 / 8
        self.assertAlmostEqual(infra.srtt(A), srtt)
        self.assertAlmostEqual(infra.rto(A), srtt + 4 * rttvar)
        self.assertAlmostEqual(infra.snapshot()[0].srtt_ms, srtt * 1000)

    def test_timeouts_do_not_pin_srtt(self):
        """A thousand timeouts leave srtt where the answers put it; they are not 1 s samples."""
        infra, _ = make()
        succeed(infra, A, 0.002)
        fail(infra, A, 1000)
        self.assertAlmostEqual(infra.srtt(A), 0.002)
        self.assertEqual(infra.snapshot()[0].srtt_ms, 2.0)

    def test_answer_without_sample(self):
        """An answer reported without an RTT (over TCP) ends the back-off but moves neither srtt nor rttvar."""
        infra, _ = make()
        succeed(infra, A, 0.01)
        fail(infra, A, 3)
        infra.started(A)
        infra.succeeded(A, None)
        self.assertAlmostEqual(infra.srtt(A), 0.01)
        self.assertEqual(infra.rto(A), 0.05)
        fail(infra, B, 2)
        infra.started(B)
        infra.succeeded(B, None)
        self.assertEqual((infra.srtt(B), infra.rto(B)), (0.376, 0.376))


class RTOTests(SynchronousTestCase):
    """The retransmission timeout: computation, back-off on loss, reset on success."""

    def test_clamped_to_minimum(self):
        """A fast server's RTO (srtt + 4 rttvar) is raised to rto_min (50 ms by default)."""
        infra, _ = make()
        succeed(infra, A, 0.001)
        self.assertEqual(infra.rto(A), RTO_MIN)
        self.assertEqual(RTO_MIN, 0.05)
        infra, _ = make(rto_min=0.01)
        succeed(infra, A, 0.001)
        self.assertEqual(infra.rto(A), 0.01)

    def test_clamped_to_maximum(self):
        """A slow server's RTO is capped at rto_max."""
        infra, _ = make(rto_max=2.0)
        succeed(infra, A, 1.5)
        self.assertEqual(infra.rto(A), 2.0)

    def test_each_loss_doubles(self):
        """Each timeout doubles the RTO the lost transmission waited for, up to rto_max."""
        infra, _ = make(rto_max=1.0)
        succeed(infra, A, 0.001)
        seen = []
        for _ in range(6):
            rto = infra.rto(A)
            infra.started(A)
            infra.failed(A, rto)
            seen.append(infra.rto(A))
        self.assertEqual(seen, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual(infra.snapshot()[0].rto_ms, 1000.0)

    def test_unmeasured_server_backs_off_from_376(self):
        """A server that never answered backs off from the initial 376 ms."""
        infra, _ = make()
        fail(infra, A, 2)
        self.assertEqual(infra.rto(A), 0.376 * 4)

    def test_simultaneous_losses_double_once(self):
        """Many transmissions lost together, all sent with the same RTO, double it once (Unbound's rtt_lost)."""
        infra, _ = make()
        succeed(infra, A, 0.001)
        for _ in range(10):
            infra.started(A)
        for _ in range(10):
            infra.failed(A, 0.05)
        self.assertEqual(infra.rto(A), 0.1)

    def test_loss_older_than_a_success_does_not_back_off(self):
        """A loss of a transmission timed by a larger RTO than a success has since set is ignored by the RTO."""
        infra, _ = make()
        succeed(infra, A, 0.001)
        fail(infra, A, 3)
        self.assertEqual(infra.rto(A), 0.4)
        infra.started(A)
        succeed(infra, A, 0.001)
        self.assertEqual(infra.rto(A), 0.05)
        infra.failed(A, 0.4)
        self.assertEqual(infra.rto(A), 0.05)
        self.assertEqual(infra.snapshot()[0].consecutive_failures, 1)

    def test_success_resets_at_once(self):
        """However far a server backed off, one answer brings its RTO back to srtt + 4 rttvar."""
        infra, _ = make()
        succeed(infra, A, 0.02)
        base = infra.rto(A)
        fail(infra, A, 20)
        self.assertEqual(infra.rto(A), RTO_MAX)
        self.assertEqual(infra.base_rto(A), base)
        succeed(infra, A, 0.02)
        self.assertLess(infra.rto(A), base)
        self.assertEqual(infra.rto(A), infra.base_rto(A))

    def test_other_failures_back_off_too(self):
        """An unusable reply or a refusal (failed without an RTO) doubles the current RTO."""
        infra, _ = make()
        succeed(infra, A, 0.001)
        infra.started(A)
        infra.failed(A)
        self.assertEqual(infra.rto(A), 0.1)

    def test_bad_bounds(self):
        """rto_min must be positive and the bounds must hold the initial RTO."""
        self.assertRaises(ValueError, InfraCache, [A], Clock(), rto_min=0)
        self.assertRaises(ValueError, InfraCache, [A], Clock(), rto_min=0.5)
        self.assertRaises(ValueError, InfraCache, [A], Clock(), rto_max=0.2)


class OrderTests(SynchronousTestCase):
    """order() and best() rank servers."""

    def test_configured_order_when_equal(self):
        """Servers with equal srtt keep their configured order."""
        infra, _ = make((A, B, C))
        self.assertEqual(infra.order(), [A, B, C])

    def test_by_unclamped_rto(self):
        """Servers rank by srtt + 4 rttvar before clamping (so two fast ones still differ), unknown ones at 376 ms."""
        infra, _ = make((A, B, C))
        succeed(infra, C, 0.001)
        succeed(infra, B, 0.002)
        self.assertEqual(infra.rto(B), infra.rto(C))
        self.assertEqual(infra.order(), [C, B, A])
        self.assertEqual(infra.best(2), [C, B])
        succeed(infra, A, 0.2)
        self.assertEqual(infra.order(), [C, B, A])

    def test_unknown_before_unsteady(self):
        """A server measured once at 200 ms (RTO 600 ms) ranks behind one never measured (376 ms), as in Unbound."""
        infra, _ = make((A, B))
        succeed(infra, A, 0.2)
        self.assertEqual(infra.order(), [B, A])
        for _ in range(20):
            succeed(infra, A, 0.2)
        self.assertEqual(infra.order(), [A, B])

    def test_failing_server_sinks_and_comes_back(self):
        """A failure backs a server off behind one that answers; one answer puts it back in front."""
        infra, _ = make((A, B))
        succeed(infra, A, 0.001)
        succeed(infra, B, 0.01)
        self.assertEqual(infra.order(), [A, B])
        fail(infra, A)
        self.assertEqual(infra.order(), [B, A])
        succeed(infra, A, 0.001)
        self.assertEqual(infra.order(), [A, B])

    def test_duplicates_removed(self):
        """A server listed twice is one server."""
        infra, _ = make((A, B, A))
        self.assertEqual(infra.servers, [A, B])
        self.assertEqual(infra.order(), [A, B])

    def test_empty_rejected(self):
        """An InfraCache without servers is a configuration error."""
        self.assertRaises(ValueError, InfraCache, [], Clock())


class FastOrderTests(SynchronousTestCase):
    """order()'s path for when no server is down gives what the general path gives."""

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from(["ok", "fail", "lost"]),
                              st.floats(0.0001, 2.0), st.floats(0, 5)), max_size=40))
    def test_same_as_general_order(self, events):
        infra, clock = make((A, B, C))
        for server, what, rtt, wait in events:
            infra.started(server)
            if what == "ok":
                infra.succeeded(server, rtt)
            elif what == "fail":
                infra.failed(server)
            else:
                infra.failed(server, rto=rtt)
            clock.advance(wait)
            if not any(infra._servers[s].down for s in (A, B, C)):
                self.assertEqual(infra.order(), infra._order_with_down(False))
                self.assertEqual(infra.order(all_servers=True), infra._order_with_down(True))


class HealthTests(SynchronousTestCase):
    """healthy -> degraded -> down transitions."""

    def test_healthy_initially(self):
        """A new server is healthy."""
        infra, _ = make()
        self.assertEqual(infra.health(A), HEALTHY)

    def test_degraded_after_one_failure(self):
        """One consecutive failure degrades a server; a success heals it."""
        infra, _ = make()
        fail(infra, A)
        self.assertEqual(infra.health(A), DEGRADED)
        succeed(infra, A)
        self.assertEqual(infra.health(A), HEALTHY)

    def test_degraded_by_success_rate(self):
        """Alternating failures and successes drive the success rate under the threshold."""
        infra, _ = make(degraded_below=0.7, down_after=100)
        for _ in range(20):
            fail(infra, A)
            succeed(infra, A)
        status = infra.snapshot()[0]
        self.assertEqual(status.consecutive_failures, 0)
        self.assertLess(status.success_rate, 0.7)
        self.assertEqual(status.health, DEGRADED)

    def test_success_rate_ewma(self):
        """The success rate is an EWMA of outcomes with weight 1/8."""
        infra, _ = make()
        fail(infra, A)
        self.assertAlmostEqual(infra.snapshot()[0].success_rate, 7 / 8)
        succeed(infra, A)
        self.assertAlmostEqual(infra.snapshot()[0].success_rate, 7 / 8 * 7 / 8 + 1 / 8)

    def test_down_after_consecutive_failures(self):
        """down_after consecutive failures mark a server down and drop it from order()."""
        infra, _ = make(down_after=3)
        fail(infra, A, 2)
        self.assertEqual(infra.health(A), DEGRADED)
        self.assertIn(A, infra.order())
        fail(infra, A)
        self.assertEqual(infra.health(A), DOWN)
        self.assertEqual(infra.order(), [B])

    def test_success_resets_consecutive(self):
        """A success in between resets the consecutive failure count."""
        infra, _ = make(down_after=3)
        fail(infra, A, 2)
        succeed(infra, A)
        fail(infra, A, 2)
        self.assertNotEqual(infra.health(A), DOWN)


class ProbeTests(SynchronousTestCase):
    """A down server is probed with a doubling back-off."""

    def test_probe_due_goes_first(self):
        """When its probe is due, a down server is put first so it gets a query."""
        infra, clock = make(down_after=1, probe_backoff_min=1.0)
        fail(infra, A)
        self.assertEqual(infra.order(), [B])
        clock.advance(0.99)
        self.assertEqual(infra.order(), [B])
        clock.advance(0.01)
        self.assertEqual(infra.order(), [A, B])

    def test_one_probe_at_a_time(self):
        """Once the probe has started the server leaves the order until its outcome."""
        infra, clock = make(down_after=1)
        fail(infra, A)
        clock.advance(1)
        infra.started(A)
        self.assertEqual(infra.order(), [B])
        self.assertEqual(infra.snapshot()[0].in_flight, 1)

    def test_abandoned_probe_stays_due(self):
        """An abandoned probe leaves the probe due."""
        infra, clock = make(down_after=1)
        fail(infra, A)
        clock.advance(1)
        infra.started(A)
        infra.abandoned(A)
        self.assertEqual(infra.order(), [A, B])
        self.assertEqual(infra.snapshot()[0].in_flight, 0)

    def test_backoff_doubles_and_caps(self):
        """Each failed probe doubles the back-off up to probe_backoff_max."""
        infra, clock = make(down_after=1, probe_backoff_min=1.0, probe_backoff_max=5.0)
        fail(infra, A)
        self.assertEqual(infra.snapshot()[0].next_probe, 1.0)
        delays = []
        for _ in range(4):
            clock.advance(infra.snapshot()[0].next_probe - clock.seconds())
            self.assertEqual(infra.order()[0], A)
            fail(infra, A)
            delays.append(infra.snapshot()[0].next_probe - clock.seconds())
        self.assertEqual(delays, [2.0, 4.0, 5.0, 5.0])

    def test_non_probe_failure_keeps_schedule(self):
        """A failure of a query that was not the probe does not push the probe back."""
        infra, clock = make(down_after=1)
        infra.started(A)
        infra.started(A)
        infra.failed(A)
        self.assertEqual(infra.snapshot()[0].next_probe, 1.0)
        clock.advance(0.5)
        infra.failed(A)
        self.assertEqual(infra.snapshot()[0].next_probe, 1.0)

    def test_success_resets(self):
        """A successful probe makes the server healthy and resets the back-off."""
        infra, clock = make(down_after=1, probe_backoff_min=1.0)
        fail(infra, A)
        clock.advance(1)
        fail(infra, A)
        clock.advance(2)
        succeed(infra, A, 0.001)
        status = infra.snapshot()[0]
        self.assertEqual((status.health, status.next_probe, status.consecutive_failures), (HEALTHY, None, 0))
        fail(infra, A)
        self.assertEqual(infra.snapshot()[0].next_probe, clock.seconds() + 1.0)


class AllDownTests(SynchronousTestCase):
    """When every server is down, all are still offered."""

    def test_all_down_soonest_probe_first(self):
        """All servers are returned, ordered by their next probe."""
        infra, clock = make((A, B, C), down_after=1)
        fail(infra, B)
        clock.advance(0.5)
        fail(infra, C)
        clock.advance(0.2)
        fail(infra, A)
        self.assertEqual(infra.order(), [B, C, A])
        self.assertEqual(infra.best(1), [B])

    def test_all_servers_appends_the_down_ones(self):
        """order(all_servers=True) follows the usual order with the down servers left out, soonest probe first."""
        infra, clock = make((A, B, C), down_after=1)
        fail(infra, C)
        clock.advance(0.5)
        fail(infra, A)
        self.assertEqual(infra.order(), [B])
        self.assertEqual(infra.order(all_servers=True), [B, C, A])

    def test_all_down_includes_probing(self):
        """Even a server whose probe is in flight is offered when all are down."""
        infra, clock = make((A,), down_after=1)
        fail(infra, A)
        clock.advance(1)
        infra.started(A)
        self.assertEqual(infra.order(), [A])


class SnapshotTests(SynchronousTestCase):
    """snapshot() reports every field for the management API."""

    def test_values(self):
        """The snapshot carries the counters, times and health."""
        infra, clock = make((A, ("2001:db8::1", 53)), down_after=2)
        clock.advance(10)
        succeed(infra, A, 0.1)
        infra.started(A)
        fail(infra, ("2001:db8::1", 53), 2)
        first, second = infra.snapshot()
        self.assertEqual(
            first,
            UpstreamStatus(
                address="192.0.2.1:53",
                srtt_ms=first.srtt_ms,
                in_flight=1,
                consecutive_failures=0,
                success_rate=1.0,
                last_response=10.0,
                health=HEALTHY,
                next_probe=None,
                queries=2,
                failures=0,
                rto_ms=first.rto_ms,
            ),
        )
        self.assertAlmostEqual(first.srtt_ms, 100.0)
        self.assertAlmostEqual(first.rto_ms, 300.0)
        self.assertEqual(second.address, "[2001:db8::1]:53")
        self.assertEqual(
            (second.health, second.next_probe, second.queries, second.failures, second.last_response),
            (DOWN, 11.0, 2, 2, None),
        )

    def test_format_address(self):
        """IPv6 addresses are bracketed."""
        self.assertEqual(format_address(("::1", 53)), "[::1]:53")
        self.assertEqual(format_address(("127.0.0.1", 5300)), "127.0.0.1:5300")
