"""
The circuit breaker and the guard around every Redis call, driven by a
Clock: thresholds, probes, back-off, deadlines, retries and refusals.
"""
import gc

import txredisapi
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.redis.backend import RedisUnavailable
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.guard import Guard


class CircuitBreakerTests(SynchronousTestCase):
    """CircuitBreaker: closed, open, half-open and back."""

    def setUp(self):
        self.clock = Clock()
        self.breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, max_reset_timeout=4.0,
                                      reactor=self.clock)

    def trip(self):
        for _ in range(3):
            self.breaker.failed()

    def test_stays_closed_below_threshold(self):
        """Fewer consecutive failures than the threshold leave the breaker closed and letting calls through."""
        self.breaker.failed()
        self.breaker.failed()
        self.assertEqual(self.breaker.state, "closed")
        self.assertTrue(self.breaker.allow())

    def test_success_resets_the_count(self):
        """A success in between starts the count of consecutive failures again."""
        self.breaker.failed()
        self.breaker.failed()
        self.breaker.succeeded()
        self.breaker.failed()
        self.breaker.failed()
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(self.breaker.snapshot().consecutive_failures, 2)

    def test_opens_at_threshold(self):
        """The threshold-th consecutive failure opens the breaker; calls are then refused."""
        self.clock.advance(10)
        self.trip()
        self.assertEqual(self.breaker.state, "open")
        self.assertFalse(self.breaker.allow())
        snap = self.breaker.snapshot()
        self.assertEqual((snap.state, snap.consecutive_failures, snap.opened_at, snap.next_probe, snap.trips),
                         ("open", 3, 10.0, 11.0, 1))

    def test_half_open_lets_one_probe_through(self):
        """After reset_timeout the breaker is half-open and admits exactly one probe."""
        self.trip()
        self.clock.advance(0.999)
        self.assertEqual(self.breaker.state, "open")
        self.assertFalse(self.breaker.allow())
        self.clock.advance(0.001)
        self.assertEqual(self.breaker.state, "half-open")
        self.assertTrue(self.breaker.allow())
        self.assertFalse(self.breaker.allow())
        self.assertFalse(self.breaker.allow())

    def test_probe_success_closes(self):
        """A successful probe closes the breaker and clears its counters."""
        self.trip()
        self.clock.advance(1)
        self.assertTrue(self.breaker.allow())
        self.breaker.succeeded()
        snap = self.breaker.snapshot()
        self.assertEqual((snap.state, snap.consecutive_failures, snap.opened_at, snap.next_probe),
                         ("closed", 0, None, None))
        self.assertTrue(self.breaker.allow())
        self.assertTrue(self.breaker.allow())

    def test_failed_probes_double_the_wait_up_to_the_cap(self):
        """Each failed probe reopens the breaker for twice as long, up to max_reset_timeout."""
        self.trip()
        waits = []
        for _ in range(4):
            opened = self.clock.seconds()
            next_probe = self.breaker.snapshot().next_probe
            waits.append(next_probe - opened)
            self.clock.advance(next_probe - opened)
            self.assertTrue(self.breaker.allow())
            self.breaker.failed()
            self.assertEqual(self.breaker.state, "open")
        self.assertEqual(waits, [1.0, 2.0, 4.0, 4.0])
        self.assertEqual(self.breaker.trips, 1)

    def test_backoff_resets_after_closing(self):
        """Once closed again, the next trip waits reset_timeout, not the backed-off time."""
        self.trip()
        self.clock.advance(1)
        self.breaker.allow()
        self.breaker.failed()  # wait now 2 s
        self.clock.advance(2)
        self.breaker.allow()
        self.breaker.succeeded()
        self.trip()
        snap = self.breaker.snapshot()
        self.assertEqual(snap.next_probe - snap.opened_at, 1.0)
        self.assertEqual(snap.trips, 2)


class GuardTests(SynchronousTestCase):
    """Guard: deadlines, retries of connection errors, the breaker."""

    def setUp(self):
        self.clock = Clock()
        self.breaker = CircuitBreaker(failure_threshold=3, reset_timeout=1.0, reactor=self.clock)
        self.guard = Guard(self.breaker, read_timeout=0.5, write_timeout=0.25, max_retries=3,
                           min_backoff=0.01, max_backoff=0.04, reactor=self.clock)
        self.calls = []

    def op(self, *results):
        """An operation whose n-th call returns results[n] (a value, an exception, or a Deferred)."""
        results = list(results)

        def call():
            self.calls.append(self.clock.seconds())
            r = results.pop(0) if len(results) > 1 else results[0]
            if isinstance(r, defer.Deferred):
                return r
            if isinstance(r, Exception):
                return defer.fail(r)
            return defer.succeed(r)

        return call

    def test_passes_the_result(self):
        """A call that succeeds fires with its result and counts as a success."""
        self.breaker.failed()
        d = self.guard.read(self.op(b"value"))
        self.assertEqual(self.successResultOf(d), b"value")
        self.assertEqual(self.breaker.snapshot().consecutive_failures, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_read_times_out_at_the_deadline(self):
        """A read with no reply fails with RedisUnavailable exactly at read_timeout, not before."""
        d = self.guard.read(self.op(defer.Deferred()))
        self.clock.advance(0.499)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.guard.timeouts, 1)
        self.assertEqual(self.breaker.snapshot().consecutive_failures, 1)
        self.assertIn("0.5", self.guard.last_error)

    def test_write_uses_write_timeout(self):
        """A write's deadline is write_timeout."""
        d = self.guard.write(self.op(defer.Deferred()))
        self.clock.advance(0.249)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.failureResultOf(d, RedisUnavailable)

    def test_late_reply_is_dropped(self):
        """A reply arriving after the deadline changes nothing and raises no error."""
        inner = defer.Deferred()
        d = self.guard.read(self.op(inner))
        self.clock.advance(0.5)
        self.failureResultOf(d, RedisUnavailable)
        inner.callback(b"late")
        self.assertEqual(self.breaker.snapshot().consecutive_failures, 1)
        self.assertEqual(self.breaker.state, "closed")

    def test_late_failure_is_dropped(self):
        """A failure arriving after the deadline is swallowed (no unhandled error is logged)."""
        inner = defer.Deferred()
        d = self.guard.read(self.op(inner))
        self.clock.advance(0.5)
        self.failureResultOf(d, RedisUnavailable)
        inner.errback(txredisapi.ConnectionError("Lost connection"))
        del inner
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.guard.errors, 0)

    def test_retries_connection_errors_with_backoff(self):
        """Connection errors are retried after min_backoff, doubling, and a later success wins."""
        err = txredisapi.ConnectionError("Not connected")
        d = self.guard.read(self.op(err, err, err, b"ok"))
        self.clock.pump([0.01, 0.02, 0.04])
        self.assertEqual(self.successResultOf(d), b"ok")
        self.assertEqual([round(t, 3) for t in self.calls], [0.0, 0.01, 0.03, 0.07])
        self.assertEqual(self.breaker.snapshot().consecutive_failures, 0)

    def test_synchronous_exception_is_retried(self):
        """An operation that raises (no connection at hand) is treated like a failed call."""
        attempts = []

        def op():
            attempts.append(1)
            if len(attempts) < 2:
                raise txredisapi.ConnectionError("not connected")
            return defer.succeed(1)

        d = self.guard.read(op)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), 1)

    def test_gives_up_after_max_retries(self):
        """After max_retries retries the call fails with RedisUnavailable naming the error."""
        d = self.guard.read(self.op(txredisapi.ConnectionError("Not connected")))
        self.clock.pump([0.01, 0.02, 0.04, 0.08])
        f = self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(len(self.calls), 4)
        self.assertIn("Not connected", str(f.value))
        self.assertEqual(self.guard.errors, 1)
        self.assertEqual(self.breaker.snapshot().consecutive_failures, 1)

    def test_retries_stay_within_the_deadline(self):
        """A retry that could not start before the deadline is not made; the call fails early instead."""
        guard = Guard(self.breaker, read_timeout=0.05, max_retries=10, min_backoff=0.01, max_backoff=1.0,
                      reactor=self.clock)
        d = guard.read(self.op(ConnectionRefusedError("refused")))
        self.clock.advance(0.01)  # retry 1 at 0.01
        self.clock.advance(0.02)  # retry 2 at 0.03; retry 3 would be at 0.07 > 0.05
        f = self.failureResultOf(d, RedisUnavailable)
        self.assertEqual([round(t, 3) for t in self.calls], [0.0, 0.01, 0.03])
        self.assertIn("refused", str(f.value))
        self.assertEqual(guard.timeouts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_connection_at_all_is_not_retried(self):
        """The pool's NotConnected (no connection is up) fails at once: its reconnects run on their own clock."""
        from dnsgo.redis.pool import NotConnected

        d = self.guard.read(self.op(NotConnected("not connected: connection refused")))
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.calls, [0.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_errors_are_not_retried(self):
        """A Redis error reply (not a connection problem) fails at once, without retries."""
        d = self.guard.write(self.op(txredisapi.ResponseError("WRONGTYPE")))
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.calls, [0.0])

    def test_open_breaker_refuses_without_calling(self):
        """Once failures open the breaker, calls fail at once without reaching Redis and are counted."""
        for _ in range(3):
            d = self.guard.read(self.op(defer.Deferred()))
            self.clock.advance(0.5)
            self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.breaker.state, "open")
        called = len(self.calls)
        d = self.guard.read(self.op(b"x"))
        self.failureResultOf(d, RedisUnavailable)
        self.guard.write(self.op(b"x")).addErrback(lambda f: None)
        self.assertEqual(len(self.calls), called)
        self.assertEqual(self.guard.refused, 2)

    def test_probe_success_closes_the_breaker(self):
        """After reset_timeout one call goes through as the probe; its success closes the breaker."""
        for _ in range(3):
            self.guard.read(self.op(txredisapi.ResponseError("x"))).addErrback(lambda f: None)
        self.clock.advance(1.0)
        probe = defer.Deferred()
        d1 = self.guard.read(self.op(probe))
        d2 = self.guard.read(self.op(b"second"))
        self.failureResultOf(d2, RedisUnavailable)  # only one probe at a time
        probe.callback(b"ok")
        self.assertEqual(self.successResultOf(d1), b"ok")
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(self.successResultOf(self.guard.read(self.op(b"y"))), b"y")
