"""
A circuit breaker for Redis: after repeated failures stop asking, then let
one probe through now and then to find out whether Redis is back.
"""
from dnsgo.redis.backend import BreakerState

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """
    ``closed``: calls go through; ``failure_threshold`` consecutive failures
    open it.  ``open``: calls are refused until the probe time, which backs
    off from ``reset_timeout`` doubling to ``max_reset_timeout``.
    ``half-open``: one probe call goes through; its success closes the
    breaker, its failure opens it again.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        reset_timeout: float = 1.0,
        max_reset_timeout: float = 30.0,
        reactor,
    ) -> None:
        self._reactor = reactor
        self._threshold = failure_threshold
        self._reset = reset_timeout
        self._max_reset = max_reset_timeout
        self._state = CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._next_probe: float | None = None
        self._backoff = reset_timeout
        self._probing = False
        self.trips = 0

    @property
    def state(self) -> str:
        """closed, open or half-open, as of now."""
        if self._state == OPEN and self._reactor.seconds() >= self._next_probe:
            return HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go through now?  In half-open, only one probe at a time."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        """A call succeeded: close the breaker."""
        self._state = CLOSED
        self._failures = 0
        self._probing = False
        self._opened_at = self._next_probe = None
        self._backoff = self._reset

    def failed(self) -> None:
        """A call failed: count it, and open (or re-open) past the threshold."""
        self._failures += 1
        if self._probing:
            self._probing = False
            self._backoff = min(self._backoff * 2, self._max_reset)
            self._open()
        elif self._state == CLOSED and self._failures >= self._threshold:
            self.trips += 1
            self._open()

    def _open(self) -> None:
        now = self._reactor.seconds()
        self._state = OPEN
        self._opened_at = now
        self._next_probe = now + self._backoff

    def snapshot(self) -> BreakerState:
        """The state as a value for metrics and the API."""
        return BreakerState(
            state=self.state,
            consecutive_failures=self._failures,
            opened_at=self._opened_at,
            next_probe=self._next_probe,
            trips=self.trips,
        )
