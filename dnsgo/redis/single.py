"""
The shared cache on a single Redis server (``type: redis``).

Every command goes through the :class:`~dnsgo.redis.guard.Guard` (reads
within ``read_timeout``, writes within ``write_timeout``, the circuit
breaker) over a :class:`~dnsgo.redis.pool.RedisPool`, which fails at once
while Redis is down instead of queueing, and logs one line when Redis
becomes unusable and one when it is back.
"""
import math
from typing import Callable

from twisted.internet import defer

from dnsgo.redis.backend import BackendStatus
from dnsgo.redis.guard import Guard
from dnsgo.redis.pool import HostPort, RedisPool
from dnsgo.redis.pubsub import ResubscribingSubscriber

#: keys asked for per SCAN step, and so deleted per DEL, by delete_matching
SCAN_COUNT = 500

#: the INFO fields ``info()`` reports (as ints) when Redis has them
INFO_FIELDS = ("used_memory", "keyspace_hits", "keyspace_misses", "evicted_keys", "expired_keys")


class SingleRedis:
    """
    One Redis server at ``address`` ((host, port) or a config ``Address``),
    over ``pool_size`` connections that are kept open.
    """

    def __init__(
        self,
        address: HostPort,
        *,
        password: str = "",
        database: int = 0,
        pool_size: int = 10,
        guard: Guard,
        connect_timeout: float = 2.0,
        reactor,
    ) -> None:
        self._reactor = reactor
        host, port = (address.host, address.port) if hasattr(address, "host") else address
        self._address = (host, port)
        self._password = password
        self._guard = guard
        self._started = False
        # A pool that reconnected after an outage closes the breaker at once,
        # rather than leaving the shared cache unused until the breaker's
        # (backed-off) probe.
        self._pool = RedisPool(self._address, password=password, database=database, size=pool_size,
                               connect_timeout=connect_timeout, on_usable=guard.breaker.succeeded,
                               reactor=reactor)
        self._subscriptions: list[ResubscribingSubscriber] = []

    def __repr__(self) -> str:
        return f"<SingleRedis {self._address[0]}:{self._address[1]}>"

    @property
    def guard(self) -> Guard:
        """The guard every command goes through (its breaker and counters)."""
        return self._guard

    def start(self) -> defer.Deferred:
        """Connect; fires once connected, or after one log line saying why not.  Never fails."""
        self._started = True
        return self._pool.start()

    def stop(self) -> defer.Deferred:
        """Close the pool and every subscription."""
        subscriptions, self._subscriptions = self._subscriptions, []
        stops = [s.stop() for s in subscriptions] + [self._pool.stop()]
        return defer.gatherResults(stops, consumeErrors=True).addCallback(lambda _: None)

    # -- commands ----------------------------------------------------------

    def get(self, key: bytes) -> defer.Deferred:
        """Fires with the value bytes, or None when absent."""
        return self._guard.read(lambda: self._pool.connection().get(key))

    def mget(self, keys: list[bytes]) -> defer.Deferred:
        """Fires with the values (None where absent), in the order of ``keys``."""
        if not keys:
            return defer.succeed([])
        keys = list(keys)
        return self._guard.read(lambda: self._pool.connection().mget(keys))

    def set(self, key: bytes, value: bytes, ttl: int) -> defer.Deferred:
        """SET key value EX ttl (rounded up to whole seconds, at least 1)."""
        seconds = max(1, math.ceil(ttl))
        d = self._guard.write(lambda: self._pool.connection().set(key, value, expire=seconds))
        return d.addCallback(lambda _: None)

    def delete(self, keys: list[bytes]) -> defer.Deferred:
        """DEL the keys; fires with how many existed."""
        if not keys:
            return defer.succeed(0)
        keys = list(keys)
        return self._guard.write(lambda: self._pool.connection().delete(keys))

    @defer.inlineCallbacks
    def delete_matching(self, pattern: bytes):
        """SCAN MATCH pattern COUNT 500 and DEL each batch; fires with how many were deleted."""
        cursor, deleted = 0, 0
        while True:
            reply = yield self._guard.read(
                lambda c=cursor: self._pool.connection().scan(c, pattern, SCAN_COUNT))
            cursor, keys = int(reply[0]), reply[1]
            if keys:
                deleted += yield self._guard.write(lambda k=keys: self._pool.connection().delete(k))
            if cursor == 0:
                return deleted

    def publish(self, channel: bytes, message: bytes) -> defer.Deferred:
        """PUBLISH; fires with the number of receivers."""
        return self._guard.write(lambda: self._pool.connection().publish(channel, message))

    def subscribe(
        self, channel: bytes, on_message: Callable[[bytes], None], on_reconnect: Callable[[], None]
    ) -> ResubscribingSubscriber:
        """
        Subscribe to ``channel``, staying subscribed across reconnects (see
        ResubscribingSubscriber).  While the pool has no connection, the
        pool's log line speaks for the server and the subscriber adds none.
        """
        subscription = ResubscribingSubscriber(self._address, channel, on_message, on_reconnect,
                                               password=self._password, reactor=self._reactor,
                                               quiet=lambda: self._started and not self._pool.connected)
        self._subscriptions.append(subscription)
        subscription.start()
        return subscription

    @defer.inlineCallbacks
    def info(self):
        """Fires with {"keys": DBSIZE, "used_memory": ..., "keyspace_hits": ..., ...} (ints)."""
        text = yield self._guard.read(lambda: self._pool.connection().execute_command("INFO"))
        keys = yield self._guard.read(lambda: self._pool.connection().dbsize())
        result = parse_info(text, INFO_FIELDS)
        result["keys"] = int(keys)
        return result

    def status(self) -> BackendStatus:
        """Where the backend stands now (never holds the password)."""
        breaker = self._guard.breaker.snapshot()
        if self._pool.connected and breaker.state != "open":
            word = "connected"
        elif not self._started or not (self._pool.failing or breaker.state != "closed"):
            word = "connecting"
        else:
            word = "unavailable"
        return BackendStatus(
            type="redis",
            address=f"{self._address[0]}:{self._address[1]}",
            status=word,
            breaker=breaker,
            master=None,
            last_error=self._pool.last_error or self._guard.last_error,
        )


def parse_info(text: bytes | str, fields=INFO_FIELDS) -> dict:
    """The integer ``fields`` of an INFO reply, as a dict (fields Redis did not report are left out)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    wanted = set(fields)
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name in wanted:
            try:
                out[name] = int(value.strip())
            except ValueError:
                pass
    return out
