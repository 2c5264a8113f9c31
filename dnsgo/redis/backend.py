"""
What the shared cache and the invalidator need from Redis, whatever its
topology (single server, Sentinel, Cluster).

Every operation returns a Deferred that fires within its timeout
(``read_timeout`` for reads, ``write_timeout`` for writes): with the result,
or with :class:`RedisUnavailable` (timeout, connection trouble, an open
circuit breaker, a Redis error).  Callers treat that failure as a miss or a
dropped write; it never becomes a DNS failure.  No operation waits for a
connection beyond its timeout: txredisapi itself would wait forever while
Redis is down.
"""
from typing import Callable, Protocol

import attrs
from twisted.internet import defer


class RedisUnavailable(Exception):
    """A Redis operation did not complete in time, or could not be tried."""


@attrs.frozen
class BreakerState:
    """The circuit breaker's state, for metrics and the management API."""

    state: str  # "closed" | "open" | "half-open"
    consecutive_failures: int
    opened_at: float | None
    next_probe: float | None
    trips: int


@attrs.frozen
class BackendStatus:
    """Where the backend stands; never holds a password."""

    type: str  # "redis" | "redis-sentinel" | "redis-cluster"
    address: str  # the configured address(es), comma-separated
    status: str  # "connected" | "connecting" | "unavailable"
    breaker: BreakerState
    master: str | None  # the current master (Sentinel) or None
    last_error: str | None


class Subscription(Protocol):
    """A live pub/sub subscription."""

    def stop(self) -> defer.Deferred: ...


class RedisBackend(Protocol):
    """The operations the shared cache and the invalidator use."""

    def start(self) -> defer.Deferred:
        """Connect (fires when first connected or after a clear log line on failure; never fails)."""

    def stop(self) -> defer.Deferred:
        """Disconnect everything."""

    def get(self, key: bytes) -> defer.Deferred:
        """Fires with the value bytes, or None when absent."""

    def mget(self, keys: list[bytes]) -> defer.Deferred:
        """Fires with a list of values (None where absent), in order."""

    def set(self, key: bytes, value: bytes, ttl: int) -> defer.Deferred:
        """SET key value EX ttl."""

    def delete(self, keys: list[bytes]) -> defer.Deferred:
        """DEL the keys; fires with how many existed."""

    def delete_matching(self, pattern: bytes) -> defer.Deferred:
        """SCAN MATCH pattern + DEL on every master; fires with the count."""

    def raise_term(self, key: bytes, term: int) -> defer.Deferred:
        """Store ``term`` at ``key`` unless a higher one is there, atomically; fires with the term stored after
        (high availability's fence on the control plane's writes, docs/ha.md)."""

    def publish(self, channel: bytes, message: bytes) -> defer.Deferred:
        """PUBLISH; fires with the receiver count."""

    def subscribe(
        self, channel: bytes, on_message: Callable[[bytes], None], on_reconnect: Callable[[], None]
    ) -> Subscription:
        """
        Subscribe to ``channel`` and keep subscribed across reconnects
        (txredisapi does not resubscribe); ``on_reconnect`` is called each
        time the subscription is re-established after a loss, because
        messages may have been missed meanwhile.
        """

    def info(self) -> defer.Deferred:
        """Fires with a dict: keys (int), used_memory (int), and any hits/misses Redis reports."""

    def time(self) -> defer.Deferred:
        """Fires with Redis's clock (TIME), in seconds since the epoch: the one clock of the shared cache."""

    def status(self) -> BackendStatus:
        """The current status, synchronously."""
