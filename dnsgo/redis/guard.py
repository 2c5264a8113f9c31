"""
Every Redis call goes through a :class:`Guard`: a deadline, a few retries
with back-off for connection errors inside that deadline, and the circuit
breaker.  txredisapi waits for a connection as long as it takes and
``replyTimeout`` kills every pending reply on the connection, so neither is
used; the guard races the call against a timer instead, and a late reply is
simply dropped (the inner Deferred is never cancelled, which would upset
txredisapi's reply queue).
"""
from typing import Callable

from twisted.internet import defer

from dnsgo.redis.backend import RedisUnavailable
from dnsgo.redis.breaker import CircuitBreaker


class Guard:
    """Runs Redis operations within deadlines, through a circuit breaker."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        read_timeout: float = 0.5,
        write_timeout: float = 0.5,
        max_retries: int = 3,
        min_backoff: float = 0.008,
        max_backoff: float = 0.512,
        reactor,
    ) -> None:
        self._reactor = reactor
        self.breaker = breaker
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._max_retries = max_retries
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self.last_error: str | None = None
        self.timeouts = 0
        self.errors = 0
        self.refused = 0

    def read(self, op: Callable[[], defer.Deferred]) -> defer.Deferred:
        """Run a read (``op`` makes the call) within ``read_timeout``."""
        return self._run(op, self._read_timeout)

    def write(self, op: Callable[[], defer.Deferred]) -> defer.Deferred:
        """Run a write within ``write_timeout``."""
        return self._run(op, self._write_timeout)

    def _run(self, op, timeout: float) -> defer.Deferred:
        if not self.breaker.allow():
            self.refused += 1
            return defer.fail(RedisUnavailable("circuit breaker open"))
        out = defer.Deferred()
        deadline = self._reactor.seconds() + timeout

        def expire():
            if not out.called:
                self.timeouts += 1
                self._fail(out, f"no reply within {timeout:g} s")

        timer = self._reactor.callLater(timeout, expire)

        def attempt(n: int):
            try:
                d = op()
            except Exception as e:
                d = defer.fail(e)
            d.addCallbacks(done, retry_or_fail, errbackArgs=(n,))

        def done(result):
            if out.called:
                return
            timer.cancel()
            self.breaker.succeeded()
            out.callback(result)

        def retry_or_fail(failure, n: int):
            if out.called:
                return
            delay = min(self._min_backoff * (2**n), self._max_backoff)
            if n < self._max_retries and _retryable(failure) and self._reactor.seconds() + delay < deadline:
                self._reactor.callLater(delay, attempt, n + 1)
                return
            timer.cancel()
            self.errors += 1
            self._fail(out, _describe(failure))

        attempt(0)
        return out

    def _fail(self, out: defer.Deferred, why: str) -> None:
        self.last_error = why
        self.breaker.failed()
        out.errback(RedisUnavailable(why))


def _retryable(failure) -> bool:
    import txredisapi

    from dnsgo.redis.pool import NotConnected

    if failure.check(NotConnected):
        # The pool has no connection at all; it reconnects on its own
        # schedule, so a retry 8 ms later would only add latency.
        return False
    return bool(failure.check(txredisapi.ConnectionError, ConnectionError, OSError))


def _describe(failure) -> str:
    value = failure.value
    return f"{type(value).__name__}: {value}"[:300]
