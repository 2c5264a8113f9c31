"""
A pub/sub subscription that stays subscribed.

txredisapi's SubscriberFactory reconnects a lost connection but does not
SUBSCRIBE again, so a killed subscriber connection (``CLIENT KILL TYPE
pubsub``, a Redis restart, a failover) silently ends the subscription.
:class:`ResubscribingSubscriber` owns its one connection instead: on every
(re)connection it AUTHs if needed and SUBSCRIBEs again, reconnecting with a
short back-off (0.1 s doubling to 2 s), and tells its owner each time the
subscription comes back after a loss, because messages may have been missed
meanwhile.  A PING every few seconds finds connections that died silently.

The address comes from a callable (returning ``(host, port)`` or a Deferred
of it) that is asked again before every connection attempt, so a Sentinel
backend can point it at the current master; :meth:`reconnect` drops the
connection so that happens at once.
"""
from typing import Callable

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger

from dnsgo.redis.pool import HostPort, describe_failure, open_connection


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    """txredisapi's subscriber protocol (binary-safe) reporting to its owner."""

    def __init__(self, owner: "ResubscribingSubscriber") -> None:
        super().__init__(charset=None, convertNumbers=False)
        self._owner = owner

    def messageReceived(self, pattern, channel, message):
        self._owner._message(message)

    def connectionLost(self, why):
        super().connectionLost(why)
        self._owner._lost(self)


class ResubscribingSubscriber:
    """
    A subscription to one channel that survives reconnects.

    ``address`` is ``(host, port)`` or a callable returning that (or a
    Deferred of it), asked before each connection attempt.  ``on_message``
    gets each message's bytes; ``on_reconnect`` is called each time the
    subscription is re-established after the first time (not on the first).
    Call :meth:`start` to begin and :meth:`stop` to end.  Never logs the
    password.  ``quiet`` (a callable, optional) says when the owner already
    speaks for the server (its connection pool is down and logs that): a
    failure to subscribe then logs nothing, so one cause gives one line.
    """

    log = Logger()

    def __init__(
        self,
        address: "HostPort | Callable[[], HostPort | defer.Deferred]",
        channel: bytes,
        on_message: Callable[[bytes], None],
        on_reconnect: Callable[[], None] | None = None,
        *,
        password: str = "",
        initial_delay: float = 0.1,
        max_delay: float = 2.0,
        connect_timeout: float = 2.0,
        ping_interval: float = 5.0,
        quiet: Callable[[], bool] | None = None,
        reactor,
    ) -> None:
        self._reactor = reactor
        self._address = address if callable(address) else (lambda: address)
        self.channel = channel
        self._on_message = on_message
        self._on_reconnect = on_reconnect
        self._password = password
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._quiet = quiet

        self._running = False
        self._attempt = 0
        self._pending: defer.Deferred | None = None  # address lookup + connect + handshake
        self._conn: _SubscriberProtocol | None = None  # connected (handshaking or subscribed)
        self._subscribed = False
        self._ever_subscribed = False
        self._failing = False  # a failure was logged; stay quiet until subscribed again
        self._retry_call = None
        self._ping_call = None
        self._ping_outstanding = False
        self._waiters: list[defer.Deferred] = []
        self.server: str | None = None  # "host:port" of the current / last attempt
        self.last_error: str | None = None
        self.resubscriptions = 0

    @property
    def subscribed(self) -> bool:
        """Is the subscription live right now?"""
        return self._subscribed

    def start(self) -> None:
        """Begin connecting and subscribing (does nothing when already started)."""
        if self._running:
            return
        self._running = True
        self._attempt = 0
        self._connect()

    def when_subscribed(self) -> defer.Deferred:
        """A Deferred that fires (with None) once the subscription is live."""
        if self._subscribed:
            return defer.succeed(None)
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def reconnect(self) -> None:
        """Drop the connection now; the subscriber reconnects to the address the callable gives next."""
        if self._conn is not None and self._conn.connected:
            self._conn.transport.abortConnection()

    def stop(self) -> defer.Deferred:
        """Unsubscribe for good: close the connection and stop retrying."""
        self._running = False
        for call in (self._retry_call, self._ping_call):
            if call is not None and call.active():
                call.cancel()
        self._retry_call = self._ping_call = None
        conn = self._conn
        done = conn.whenDisconnected() if conn is not None and conn.connected else None
        if self._pending is not None:
            self._pending.cancel()
        if done is None:
            return defer.succeed(None)
        conn.transport.abortConnection()
        return done.addCallback(lambda _: None)

    # -- connecting --------------------------------------------------------

    def _connect(self) -> None:
        self._retry_call = None
        if not self._running:
            return
        d = self._pending = defer.maybeDeferred(self._address)
        d.addCallback(self._open)
        d.addCallbacks(self._established, self._failed)

    @defer.inlineCallbacks
    def _open(self, address: HostPort):
        self.server = f"{address[0]}:{address[1]}"
        conn = _SubscriberProtocol(self)
        self._conn = conn
        yield open_connection(address, password=self._password, timeout=self._connect_timeout,
                              protocol=conn, reactor=self._reactor)
        watchdog = self._reactor.callLater(self._connect_timeout, conn.transport.abortConnection)
        try:
            yield conn.subscribe([self.channel])
        finally:
            if watchdog.active():
                watchdog.cancel()
        return conn

    def _established(self, conn: _SubscriberProtocol) -> None:
        self._pending = None
        if not self._running:
            if conn.connected:
                conn.transport.abortConnection()
            return
        if not conn.connected:  # lost right after subscribing
            self._conn = None
            self._retry_later()
            return
        again = self._ever_subscribed
        self._subscribed = self._ever_subscribed = True
        self._attempt = 0
        self.last_error = None
        self._schedule_ping()
        if self._failing or again:
            self.log.info("shared cache: subscribed to {channel} at {server} again",
                          channel=self.channel.decode("ascii", "replace"), server=self.server)
        self._failing = False
        if again:
            self.resubscriptions += 1
            if self._on_reconnect is not None:
                try:
                    self._on_reconnect()
                except Exception:
                    self.log.failure("shared cache: on_reconnect callback failed")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _failed(self, failure) -> None:
        self._pending = None
        conn, self._conn = self._conn, None
        if conn is not None and conn.connected:
            conn.transport.abortConnection()
        if not self._running or failure.check(defer.CancelledError):
            return
        self.last_error = describe_failure(failure)
        if not self._failing and not (self._quiet is not None and self._quiet()):
            self._failing = True
            self.log.warn("shared cache: cannot subscribe to {channel} at {server}: {why}; retrying",
                          channel=self.channel.decode("ascii", "replace"), server=self.server,
                          why=self.last_error)
        self._retry_later()

    def _retry_later(self) -> None:
        delay = min(self._initial_delay * 2**self._attempt, self._max_delay)
        self._attempt += 1
        self._retry_call = self._reactor.callLater(delay, self._connect)

    def _lost(self, conn: _SubscriberProtocol) -> None:
        if conn is not self._conn or not self._subscribed:
            return  # a handshake that failed: _failed handles it
        self._conn = None
        self._subscribed = False
        if self._ping_call is not None and self._ping_call.active():
            self._ping_call.cancel()
        self._ping_call = None
        if not self._running:
            return
        self.log.info("shared cache: subscription to {channel} at {server} lost; resubscribing",
                      channel=self.channel.decode("ascii", "replace"), server=self.server)
        self._attempt = 0
        self._retry_later()

    # -- while subscribed --------------------------------------------------

    def _message(self, message: bytes) -> None:
        try:
            self._on_message(message)
        except Exception:
            self.log.failure("shared cache: message handler failed")

    def _schedule_ping(self) -> None:
        self._ping_outstanding = False
        if self._ping_interval:
            self._ping_call = self._reactor.callLater(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_call = None
        conn = self._conn
        if conn is None or not self._subscribed:
            return
        if self._ping_outstanding:
            self.last_error = f"no reply to PING within {self._ping_interval:g} s"
            conn.transport.abortConnection()
            return
        self._ping_outstanding = True
        conn.ping().addCallbacks(self._pong, lambda _: None)
        self._ping_call = self._reactor.callLater(self._ping_interval, self._ping)

    def _pong(self, _reply) -> None:
        self._ping_outstanding = False
