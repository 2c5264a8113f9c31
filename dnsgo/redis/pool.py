"""
Connections to one Redis server that keep themselves up, quietly.

txredisapi's own pools (``lazyConnectionPool``) reconnect through Twisted's
ClientService, which logs a line for every failed attempt of every pooled
connection, stop for good after a failed AUTH, and make a command wait for a
connection as long as Redis is down.  :class:`RedisPool` keeps txredisapi's
protocol (the command API and the hiredis reply parser) but does the
connecting itself:

- each connection is opened by :func:`open_connection`: TCP, AUTH, SELECT
  and a PING (which catches a server that wants a password we do not have),
  all within ``connect_timeout``;
- while no connection is up only one attempt is made at a time, backing off
  from ``initial_delay`` doubling to ``max_delay``; a wrong password is
  retried the same way, so fixing it on either side recovers;
- one log line when Redis becomes unusable, none while it stays so, one when
  it is usable again; never the password;
- :meth:`RedisPool.connection` hands out a live connection or raises
  ``txredisapi.ConnectionError`` at once, so nothing queues behind an outage.
"""
import itertools
from typing import Callable

import txredisapi
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

HostPort = tuple[str, int]


class NotConnected(txredisapi.ConnectionError):
    """No connection is up right now: retrying within a request's deadline is pointless."""


def new_protocol() -> txredisapi.BaseRedisProtocol:
    """A txredisapi protocol that keeps values as bytes (``b"12"`` stays bytes)."""
    return txredisapi.RedisProtocol(charset=None, convertNumbers=False)


class _OneConnection(Factory):
    """Hands out one protocol, without a log line per connection attempt."""

    noisy = False

    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


@defer.inlineCallbacks
def open_connection(
    address: HostPort,
    *,
    password: str = "",
    database: int = 0,
    timeout: float = 2.0,
    protocol: txredisapi.BaseRedisProtocol | None = None,
    reactor,
):
    """
    Connect to ``address``, AUTH (when ``password``), SELECT (when
    ``database``) and PING, all within ``timeout`` seconds; fires with the
    ready txredisapi protocol (``protocol``, or a binary-safe new one).
    Fails with the reason (a wrong password is a ``txredisapi.ResponseError``
    saying WRONGPASS) and leaves no connection behind.  Cancelling it aborts
    the attempt.
    """
    host, port = address
    conn = protocol if protocol is not None else new_protocol()
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    yield endpoint.connect(_OneConnection(conn))
    conn.transport.setTcpNoDelay(True)
    expired = []

    def expire():
        expired.append(True)
        conn.transport.abortConnection()

    watchdog = reactor.callLater(timeout, expire)
    try:
        if password:
            yield conn.auth(password)
        if database:
            yield conn.select(database)
        yield conn.ping()
    except BaseException:
        conn.transport.abortConnection()
        if expired:
            raise txredisapi.TimeoutError(f"no reply within {timeout:g} s")
        raise
    finally:
        if watchdog.active():
            watchdog.cancel()
    return conn


def describe_failure(failure) -> str:
    """A short reason for a log line or a status; never holds a password."""
    value = failure.value if hasattr(failure, "value") else failure
    text = str(value)
    if "WRONGPASS" in text or "invalid password" in text:
        return "invalid password"
    if "NOAUTH" in text:
        return "a password is required"
    if "without any password configured" in text or "no password is set" in text:
        return "a password is configured but Redis has none"
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, (error.TimeoutError, error.TCPTimedOutError)):
        return "connection timed out"
    if isinstance(value, error.DNSLookupError):
        return "cannot resolve the host name"
    if isinstance(value, (error.ConnectionLost, error.ConnectionDone)):
        return "connection lost"
    if isinstance(value, txredisapi.RedisError) and text:
        return text[:200]
    return f"{type(value).__name__}: {text}"[:200]


class RedisPool:
    """
    Up to ``size`` connections to the server ``address`` names.

    ``address`` is ``(host, port)`` or a callable returning that (or a
    Deferred of it), asked before every connection attempt so a Sentinel
    backend can point the pool at the current master; :meth:`reconnect`
    drops every connection so that happens at once.
    """

    log = Logger()

    def __init__(
        self,
        address: "HostPort | Callable[[], HostPort | defer.Deferred]",
        *,
        password: str = "",
        database: int = 0,
        size: int = 10,
        connect_timeout: float = 2.0,
        initial_delay: float = 0.1,
        max_delay: float = 2.0,
        on_usable: "Callable[[], None] | None" = None,
        reactor,
    ) -> None:
        self._reactor = reactor
        self._on_usable = on_usable
        self._address = address if callable(address) else (lambda: address)
        self._password = password
        self._database = database
        self._size = size
        self._connect_timeout = connect_timeout
        self._initial_delay = initial_delay
        self._max_delay = max_delay

        self._running = False
        self._live: list = []
        self._opening: set[defer.Deferred] = set()
        self._attempt = 0
        self._retry_call = None
        self._failing = False  # a failure is logged; quiet until usable again
        self._settle_waiters: list[defer.Deferred] = []
        self._settled = False
        self._turn = itertools.count()
        self.server: str | None = None  # "host:port" of the latest attempt
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Is at least one connection up?"""
        return bool(self._live)

    @property
    def failing(self) -> bool:
        """Has the latest attempt failed with no connection up (the state that was logged)?"""
        return self._failing

    def start(self) -> defer.Deferred:
        """
        Begin connecting.  Fires (with None) once the first connection is up
        or the first attempt has failed and been logged; never fails.
        """
        d = defer.Deferred()
        if self._settled:
            d.callback(None)
        else:
            self._settle_waiters.append(d)
        if not self._running:
            self._running = True
            self._fill()
        return d

    def connection(self):
        """A live connection (round-robin); raises ``txredisapi.ConnectionError`` when none is up."""
        live = self._live
        if not live:
            raise NotConnected(f"not connected: {self.last_error or 'connecting'}")
        return live[next(self._turn) % len(live)]

    def reconnect(self) -> None:
        """Drop every connection; they are reopened to the address the callable gives next."""
        for conn in list(self._live):
            conn.transport.abortConnection()

    def stop(self) -> defer.Deferred:
        """Close every connection and stop reconnecting; fires when all are closed."""
        self._running = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        for d in list(self._opening):
            d.cancel()
        closing = [conn.whenDisconnected() for conn in self._live if conn.connected]
        for conn in list(self._live):
            conn.transport.loseConnection()
        self._settle(None)
        return defer.gatherResults(closing).addCallback(lambda _: None)

    # -- keeping the pool full ---------------------------------------------

    def _fill(self) -> None:
        self._retry_call = None
        if not self._running:
            return
        if not self._live:
            # down or starting: one attempt at a time
            if not self._opening:
                self._open_one()
            return
        while len(self._live) + len(self._opening) < self._size:
            self._open_one()

    def _open_one(self) -> None:
        d = defer.maybeDeferred(self._address)
        d.addCallback(self._open)
        self._opening.add(d)

        def forget(result):
            self._opening.discard(d)
            return result

        d.addBoth(forget)
        d.addCallbacks(self._opened, self._open_failed)

    def _open(self, address: HostPort) -> defer.Deferred:
        self.server = f"{address[0]}:{address[1]}"
        return open_connection(address, password=self._password, database=self._database,
                               timeout=self._connect_timeout, reactor=self._reactor)

    def _opened(self, conn) -> None:
        if not self._running:
            if conn.connected:
                conn.transport.loseConnection()
            return
        if not conn.connected:  # lost right after the handshake
            self._retry_later(self._initial_delay)
            return
        self._live.append(conn)
        conn.whenDisconnected().addCallback(self._lost)
        self._attempt = 0
        self.last_error = None
        if self._failing:
            self._failing = False
            self.log.info("shared cache: Redis at {server} is usable again", server=self.server)
            if self._on_usable is not None:
                self._on_usable()
        self._fill()
        self._settle(None)  # last: it runs the caller's code, which may stop the pool

    def _open_failed(self, failure) -> None:
        if not self._running or failure.check(defer.CancelledError):
            return
        self.last_error = describe_failure(failure)
        self._retry_later(min(self._initial_delay * 2**self._attempt, self._max_delay))
        self._attempt += 1
        if not self._live and not self._failing:
            self._failing = True
            self.log.warn("shared cache: cannot use Redis at {server}: {why}",
                          server=self.server, why=self.last_error)
            self._settle(None)  # last: it runs the caller's code, which may stop the pool

    def _lost(self, conn) -> None:
        if conn in self._live:
            self._live.remove(conn)
        if self._running:
            # right away while others are up (one connection was killed);
            # after the short delay when all are gone (Redis went away)
            self._retry_later(0 if self._live else self._initial_delay)

    def _retry_later(self, delay: float) -> None:
        if self._retry_call is None or not self._retry_call.active():
            self._retry_call = self._reactor.callLater(delay, self._fill)

    def _settle(self, _) -> None:
        self._settled = True
        waiters, self._settle_waiters = self._settle_waiters, []
        for d in waiters:
            d.callback(None)
