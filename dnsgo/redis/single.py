"""
The shared cache on a single Redis server (``type: redis``).

Every command goes through the :class:`~dnsgo.redis.guard.Guard` (reads
within ``read_timeout``, writes within ``write_timeout``, the circuit
breaker) over a :class:`~dnsgo.redis.pool.RedisPool`, which fails at once
while Redis is down instead of queueing, and logs one line when Redis
becomes unusable and one when it is back.
"""
from typing import Callable

from twisted.internet import defer

from dnsgo.redis.backend import BackendStatus
from dnsgo.redis.commands import NodeCommands
from dnsgo.redis.guard import Guard
from dnsgo.redis.pool import HostPort, RedisPool
from dnsgo.redis.pubsub import ResubscribingSubscriber

class SingleRedis(NodeCommands):
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

    # -- commands (dnsgo.redis.commands.NodeCommands over these) ----------

    def _read(self, args) -> defer.Deferred:
        return self._guard.read(lambda: self._pool.connection().execute_command(*args))

    def _write(self, args) -> defer.Deferred:
        return self._guard.write(lambda: self._pool.connection().execute_command(*args))

    _admin = _read

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
