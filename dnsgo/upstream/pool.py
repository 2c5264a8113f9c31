"""
The forwarding client: sends a question to the upstream servers the L3
infrastructure cache ranks best, and returns the first usable reply.

One call of :meth:`UpstreamPool.query` makes up to ``retries + 1``
*attempts*.  Each attempt lasts at most ``timeout`` seconds and goes to the
next server of ``infra.order()`` (taken once, when the query starts, and
wrapping round), or with ``strategy='parallel'`` to the next
``parallel_count`` servers at once (the first attempt to
``infra.best(parallel_count)``), where the first usable reply wins and the
other exchanges are closed.  **The worst case is therefore
``timeout * (retries + 1)`` seconds** before the caller sees
:class:`UpstreamTimeout`.  An attempt ends early when every server in it has
answered or failed: ICMP port unreachable (``connectionRefused`` on the
connected UDP socket, or the socket closing under it, which is how the
epoll reactor reports it) fails a server at once, and an unusable reply
(SERVFAIL, REFUSED, NOTIMP, FORMERR) moves on to the next attempt
immediately.  When no usable reply arrives, the last unusable one is
returned, so the caller still sees REFUSED; only when nothing arrived at all
does the query fail.

Spoofing defences (RFC 5452):

* a fresh random 16-bit ID (``secrets.randbits``) for every exchange;
* a fresh UDP socket for every exchange, bound to port 0: Linux picks a
  random ephemeral port (from ``net.ipv4.ip_local_port_range``) for each
  bind, so the source port adds about 15 bits of entropy.  The socket is
  ``connect``-ed to the server, so the kernel drops datagrams from anywhere
  else and reports ICMP errors; it is closed as soon as the exchange ends;
* a datagram is accepted only if it comes from the queried address and
  port, has the query's ID, QR=1, and the same question (name compared
  case-insensitively, type and class).  Replies with no question are
  accepted only as unusable ones (FORMERR from a server that dislikes EDNS),
  never as answers.  Anything else, and any reply that is malformed
  (``wire.scan_response`` rejects it: records cut short, bytes after the
  last record, bad compression; or ``dns.Message.fromStr`` fails), is
  counted in :attr:`UpstreamPool.stats` and ignored; the exchange keeps
  waiting.

A reply with TC=1 is asked again over TCP (RFC 7766 framing) from the same
server, with a new ID, inside the same attempt's deadline.

Every exchange is reported to the infrastructure cache: ``started``, then
``succeeded(rtt)`` for a usable reply, ``failed`` for a timeout, refusal,
lost TCP connection or unusable reply, or ``abandoned`` when the exchange
is cut short without a verdict (it lost a parallel race, or the caller
cancelled).  The RTT sample of a TC=1 exchange is the UDP round trip.

Identical questions in flight at the same time (same lowercased name, type,
class, DO and CD) share one upstream query; each caller gets its own
Deferred, all firing with the same :class:`UpstreamReply`.

An exchange that cannot get a socket because the process (EMFILE) or the
system (ENFILE) is out of descriptors, or the kernel out of buffers, is not
the server's fault: it is counted in ``stats.no_socket``, logged at most
once a minute without a traceback, and asks again for a socket after 10 ms,
doubling up to 100 ms, until the attempt's deadline; then the attempt ends
as if it had timed out (without a failure on the server's record) and the
next one begins.  Descriptors come back as other exchanges end, so a short
shortage delays answers instead of failing them; a lasting one ends in
:class:`UpstreamTimeout` like dead upstreams.

The sockets of an exchange do not log: the UDP port is a quiet ``udp.Port``
when the reactor is a posix one, and the factory of the TCP leg is not
``noisy`` (no "Starting factory" / "Stopping factory" per exchange).
"""
from __future__ import annotations

import errno
import ipaddress
import secrets
import struct

import attrs
from twisted.internet import base, defer, udp
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.python import log

from dnsgo.dns import wire
from dnsgo.upstream.infra import InfraCache, Server

#: Reply codes after which the next server is tried.
UNUSABLE_RCODES = frozenset({dns.EFORMAT, dns.ESERVER, dns.ENOTIMP, dns.EREFUSED})

STRATEGIES = ("best", "parallel")

_ID = struct.Struct("!H")
_QR = 0x80
_TC = 0x02

# Outcomes of one exchange with one server.
_USABLE = "usable"
_UNUSABLE = "unusable"
_FAILED = "failed"
_ABANDONED = "abandoned"

#: Opening a socket failed for want of a descriptor or buffer, not because
#: of the server.
_NO_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: The first wait before asking again for a socket, and the longest.
SOCKET_RETRY_FIRST = 0.01
SOCKET_RETRY_MAX = 0.1

#: At most one log line per this many seconds about missing descriptors.
NO_SOCKET_LOG_INTERVAL = 60.0

_log = Logger(namespace="dnsgo.upstream.pool")


def out_of_descriptors(exc: BaseException) -> bool:
    """
    Whether ``exc``, raised (or errbacked) when opening a socket, says the
    process or system has no descriptor or buffer to spare (EMFILE, ENFILE,
    ENOBUFS, ENOMEM), whether bare or wrapped by Twisted.
    """
    if isinstance(exc, CannotListenError):
        exc = exc.socketError
    elif isinstance(exc, ConnectError):
        return exc.osError in _NO_DESCRIPTOR_ERRNOS
    return isinstance(exc, OSError) and exc.errno in _NO_DESCRIPTOR_ERRNOS


class UpstreamTimeout(defer.TimeoutError):
    """No upstream server gave any reply in ``timeout * (retries + 1)`` seconds."""


@attrs.frozen
class UpstreamReply:
    """
    A reply accepted from an upstream server.

    ``message`` is the decoded reply with the OPT pseudo-record removed from
    ``additional`` (it is hop-by-hop; read it from ``wire`` if needed).  It
    is shared by every coalesced caller: treat it as read-only.  ``wire`` is
    the reply exactly as received; ``rtt`` the seconds from sending the
    query to accepting this reply (for TC=1, including the TCP leg).
    """

    message: dns.Message
    wire: bytes
    server: Server
    rtt: float
    via_tcp: bool


@attrs.define
class UpstreamStats:
    """Counters of what the pool did, for metrics and tests."""

    queries: int = 0  # calls to query()
    coalesced: int = 0  # calls that joined a query already in flight
    sent: int = 0  # exchanges started (one per server per attempt)
    tcp: int = 0  # exchanges retried over TCP after TC=1
    answered: int = 0  # usable replies accepted
    unusable: int = 0  # SERVFAIL/REFUSED/NOTIMP/FORMERR replies accepted
    timeouts: int = 0  # exchanges that reached their deadline
    refused: int = 0  # ICMP port unreachable, failed TCP connections, socket errors
    no_socket: int = 0  # sockets not opened for want of a descriptor (EMFILE/ENFILE): asked again later
    spoofed: int = 0  # messages ignored: wrong source, ID, QR or question
    malformed: int = 0  # messages ignored: matching header but undecodable
    failed: int = 0  # queries that ended in UpstreamTimeout

    @property
    def ignored(self) -> int:
        """All messages that were dropped, spoofed or malformed."""
        return self.spoofed + self.malformed


@attrs.frozen
class _Question:
    """What is being asked, and the flags to ask it with."""

    qname: bytes
    qtype: int
    qclass: int
    do: bool
    cd: bool

    @property
    def match_key(self) -> tuple[bytes, int, int]:
        """What ``wire.parse_question`` must return for a reply to match."""
        return (self.qname.lower(), self.qtype, self.qclass)


class UpstreamPool:
    """
    Sends questions to the upstream servers of an :class:`InfraCache`, with
    retries, failover, TCP fallback, spoofing checks and coalescing.
    """

    def __init__(
        self,
        infra: InfraCache,
        *,
        timeout: float = 1.0,
        retries: int = 1,
        strategy: str = "best",
        parallel_count: int = 2,
        udp_size: int = wire.DEFAULT_UDP_SIZE,
        reactor,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if parallel_count < 1:
            raise ValueError("parallel_count must be at least 1")
        self._reactor = reactor
        self._infra = infra
        self._timeout = timeout
        self._retries = retries
        self._strategy = strategy
        self._parallel_count = parallel_count
        self._udp_size = udp_size
        self._endpoints = {server: _ServerAddress.of(server) for server in infra.servers}
        self._pending: dict[tuple, _Resolution] = {}
        self.stats = UpstreamStats()
        self._no_socket_logged = float("-inf")
        if isinstance(reactor, PosixReactorBase):
            self._listen_udp = self._quiet_port
        else:
            self._listen_udp = lambda proto, interface, size: reactor.listenUDP(
                0, proto, interface=interface, maxPacketSize=size
            )

    def _quiet_port(self, proto, interface: str, size: int) -> "_QuietPort":
        port = _QuietPort(0, proto, interface, size, self._reactor)
        port.startListening()
        return port

    def query(
        self, qname: bytes, qtype: int, qclass: int = 1, *, do: bool = False, cd: bool = False
    ) -> defer.Deferred:
        """
        Ask the upstreams ``qname`` (wire format) ``qtype`` ``qclass`` with
        RD set and the given DO and CD bits.  Fires with an
        :class:`UpstreamReply` (usable, or else the last unusable one), or
        fails with :class:`UpstreamTimeout`; a malformed ``qname`` fails
        with ValueError.
        """
        self.stats.queries += 1
        question = _Question(qname, qtype, qclass, bool(do), bool(cd))
        key = (qname.lower(), qtype, qclass, question.do, question.cd)
        resolution = self._pending.get(key)
        if resolution is not None:
            self.stats.coalesced += 1
            return resolution.add_waiter()
        try:
            wire.build_query(0, qname, qtype, qclass, cd=cd, do=do, udp_size=self._udp_size)
        except ValueError:
            return defer.fail()
        resolution = _Resolution(self, question, self._infra.order(), lambda: self._forget(key, resolution))
        self._pending[key] = resolution
        waiter = resolution.add_waiter()
        resolution.start()
        return waiter

    def _forget(self, key: tuple, resolution: _Resolution) -> None:
        if self._pending.get(key) is resolution:
            del self._pending[key]

    def _no_socket(self, reason: BaseException) -> None:
        """Count a socket that could not be opened for want of a descriptor; log it now and then."""
        self.stats.no_socket += 1
        now = self._reactor.seconds()
        if now - self._no_socket_logged >= NO_SOCKET_LOG_INTERVAL:
            self._no_socket_logged = now
            _log.warn(
                "out of file descriptors for upstream sockets ({reason}); sends wait for one "
                "({count} so far). Raise the open-file limit or lower server.tcp_max_connections",
                reason=errno.errorcode.get(_errno_of(reason), "?"),
                count=self.stats.no_socket,
            )


def _errno_of(exc: BaseException) -> int | None:
    if isinstance(exc, CannotListenError):
        exc = exc.socketError
    if isinstance(exc, ConnectError):
        return exc.osError
    return getattr(exc, "errno", None)


@attrs.frozen
class _ServerAddress:
    """An upstream's address as the sockets need it."""

    host: str  # canonical text form, as the kernel reports source addresses
    port: int
    ipv6: bool

    @classmethod
    def of(cls, server: Server) -> _ServerAddress:
        """Validate ``(host, port)``: the host must be an IP address literal."""
        host, port = server
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"upstream {host!r} is not an IP address") from None
        return cls(address.compressed, int(port), address.version == 6)


class _Resolution:
    """
    One upstream query on behalf of every coalesced caller: runs the
    attempts in turn and fires the callers' Deferreds.
    """

    def __init__(self, pool: UpstreamPool, question: _Question, order: list[Server], on_done):
        self.pool = pool
        self.question = question
        self._order = order
        self._on_done = on_done
        self._waiters: list[defer.Deferred] = []
        self._attempts_made = 0
        self._attempt: _Attempt | None = None
        self._last_unusable: UpstreamReply | None = None
        self._done = False

    def add_waiter(self) -> defer.Deferred:
        """A new Deferred for one more caller of this question."""
        waiter = defer.Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        return waiter

    def start(self) -> None:
        """Make the first attempt."""
        self._next_attempt()

    def attempt_done(self, usable: UpstreamReply | None, unusable: UpstreamReply | None) -> None:
        """An attempt ended with a usable reply, or with none."""
        self._attempt = None
        if unusable is not None:
            self._last_unusable = unusable
        if usable is not None:
            self._finish(usable)
        else:
            self._next_attempt()

    def _next_attempt(self) -> None:
        if self._done:
            return
        if self._attempts_made > self.pool._retries or not self._order:
            if self._last_unusable is not None:
                self._finish(self._last_unusable)
            else:
                self.pool.stats.failed += 1
                self._finish(None)
            return
        servers = self._servers_for(self._attempts_made)
        self._attempts_made += 1
        self._attempt = _Attempt(self, servers)
        self._attempt.start()

    def _servers_for(self, index: int) -> list[Server]:
        order = self._order
        if self.pool._strategy == "parallel":
            n = min(self.pool._parallel_count, len(order))
            return [order[(index * n + i) % len(order)] for i in range(n)]
        return [order[index % len(order)]]

    def _finish(self, reply: UpstreamReply | None) -> None:
        if self._done:
            return
        self._done = True
        self._on_done()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if reply is not None:
                waiter.callback(reply)
            else:
                waiter.errback(UpstreamTimeout("no reply from any upstream server"))

    def _cancel_waiter(self, waiter: defer.Deferred) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if not self._waiters and not self._done:
            self._done = True
            self._on_done()
            if self._attempt is not None:
                self._attempt.abandon()
                self._attempt = None


class _Attempt:
    """One round: exchanges with one or more servers under one deadline."""

    def __init__(self, resolution: _Resolution, servers: list[Server]):
        self.resolution = resolution
        self.pool = resolution.pool
        self.deadline = self.pool._reactor.seconds() + self.pool._timeout
        self._exchanges = [_Exchange(self, server) for server in servers]
        self._timer = None
        self._unusable: UpstreamReply | None = None
        self._done = False

    def start(self) -> None:
        """Arm the deadline and send to every server of the attempt."""
        self._timer = self.pool._reactor.callLater(self.pool._timeout, self._expire)
        for exchange in self._exchanges:
            if self._done:
                break
            exchange.start()

    def exchange_done(self, exchange: _Exchange, outcome: str, reply: UpstreamReply | None) -> None:
        """One server's exchange ended; end the attempt when it decides it."""
        if self._done:
            return
        if outcome == _USABLE:
            self._end(reply)
            return
        if outcome == _UNUSABLE:
            self._unusable = reply
        if all(e.finished for e in self._exchanges):
            self._end(None)

    def abandon(self) -> None:
        """Stop everything without a verdict (the callers went away)."""
        self._done = True
        self._cancel_timer()
        for exchange in self._exchanges:
            exchange.stop(_ABANDONED)

    def _expire(self) -> None:
        self._timer = None
        for exchange in self._exchanges:
            if not exchange.finished and exchange.started and not exchange.waiting_for_socket:
                self.pool.stats.timeouts += 1
            exchange.stop(_FAILED)
        self._end(None)

    def _end(self, usable: UpstreamReply | None) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        for exchange in self._exchanges:
            exchange.stop(_ABANDONED)
        self.resolution.attempt_done(usable, self._unusable)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class _Exchange:
    """
    The query to one server within an attempt: a UDP datagram on its own
    connected socket, then TCP if the reply is truncated.
    """

    def __init__(self, attempt: _Attempt, server: Server):
        self.attempt = attempt
        self.pool = attempt.pool
        self.server = server
        self.address = self.pool._endpoints[server]
        self.started = False
        self.finished = False
        self._port = None
        self._connecting: defer.Deferred | None = None
        self._tcp: _TCPClient | None = None
        self._query_id = 0
        self._sent_at = 0.0
        self._sample_rtt: float | None = None
        self._socket_wait = None  # the delayed call asking again for a socket
        self._socket_waits = 0

    @property
    def waiting_for_socket(self) -> bool:
        """Whether the exchange waits for a free descriptor to open its socket."""
        return self._socket_wait is not None

    def start(self) -> None:
        """Open a fresh socket and send the query (or, out of descriptors, wait to try again)."""
        pool = self.pool
        self._socket_wait = None
        try:
            port = pool._listen_udp(
                _UDPClient(self),
                "::" if self.address.ipv6 else "0.0.0.0",
                max(8192, pool._udp_size),
            )
        except Exception as e:
            if out_of_descriptors(e):
                self._wait_for_socket(e, self.start)
                return
            self._begin()
            log.err(None, f"dnsgo: cannot open a socket for upstream {self.server}")
            self.refused()
            return
        self._begin()
        self._port = port
        try:
            port.connect(self.address.host, self.address.port)
            port.write(self._new_query())
        except Exception:
            log.err(None, f"dnsgo: cannot send to upstream {self.server}")
            self.refused()

    def _begin(self) -> None:
        """The query goes out: start the clock and tell the infra cache."""
        pool = self.pool
        self.started = True
        self._sent_at = pool._reactor.seconds()
        pool._infra.started(self.server)
        pool.stats.sent += 1

    def _wait_for_socket(self, reason: BaseException, retry) -> None:
        """No descriptor for a socket: count it, and call ``retry`` a little later (the deadline may come first)."""
        pool = self.pool
        pool._no_socket(reason)
        delay = min(SOCKET_RETRY_MAX, SOCKET_RETRY_FIRST * 2 ** self._socket_waits)
        self._socket_waits += 1
        self._socket_wait = pool._reactor.callLater(delay, retry)

    def _cancel_socket_wait(self) -> bool:
        """Stop waiting for a socket; whether the exchange was waiting."""
        call, self._socket_wait = self._socket_wait, None
        if call is None:
            return False
        if call.active():
            call.cancel()
        return True

    def stop(self, outcome: str) -> None:
        """End the exchange without a reply (timeout or abandonment)."""
        if self.started:
            self._finish(outcome, None)
        else:
            self._cancel_socket_wait()
            self.finished = True

    def refused(self) -> None:
        """The server cannot be reached: fail now rather than at the deadline."""
        if not self.finished:
            self.pool.stats.refused += 1
            self._finish(_FAILED, None)

    def udp_closed(self) -> None:
        """The UDP port closed: a failure unless the exchange closed it."""
        if self._port is not None:
            self._port = None
            self.refused()

    def udp_datagram(self, data: bytes, addr) -> None:
        """A datagram arrived on this exchange's socket."""
        if self.finished or self._tcp is not None or self._connecting is not None:
            return
        if (addr[0], addr[1]) != (self.address.host, self.address.port):
            self.pool.stats.spoofed += 1
            return
        if not self._matches(data):
            return
        if data[2] & _TC:
            self._sample_rtt = self.pool._reactor.seconds() - self._sent_at
            self._start_tcp()
            return
        self._accept(data, via_tcp=False)

    def tcp_message(self, data: bytes) -> None:
        """A length-framed message arrived on this exchange's TCP connection."""
        if self.finished or not self._matches(data):
            return
        self._accept(data, via_tcp=True)

    def tcp_lost(self) -> None:
        """The TCP connection closed before an answer was accepted."""
        self.refused()

    def _new_query(self) -> bytes:
        q = self.attempt.resolution.question
        self._query_id = secrets.randbits(16)
        return wire.build_query(
            self._query_id, q.qname, q.qtype, q.qclass, rd=True, cd=q.cd, do=q.do, udp_size=self.pool._udp_size
        )

    def _matches(self, data: bytes) -> bool:
        """Whether ``data`` answers this exchange's query; counts what it rejects."""
        stats = self.pool.stats
        if len(data) < 12 or _ID.unpack_from(data)[0] != self._query_id or not data[2] & _QR:
            stats.spoofed += 1
            return False
        if data[4:6] == b"\x00\x00":
            # No question: acceptable only as a refusal or error, never as an answer.
            if data[3] & 0xF in UNUSABLE_RCODES:
                return True
            stats.spoofed += 1
            return False
        try:
            qname, qtype, qclass, _ = wire.parse_question(data)
        except ValueError:
            stats.malformed += 1
            return False
        if (qname, qtype, qclass) != self.attempt.resolution.question.match_key:
            stats.spoofed += 1
            return False
        return True

    def _accept(self, data: bytes, via_tcp: bool) -> None:
        message = dns.Message()
        try:
            # fromStr silently keeps what it could read of a truncated
            # message; scan_response rejects it, and bad compression.
            wire.scan_response(data)
            message.fromStr(data)
        except Exception:
            self.pool.stats.malformed += 1
            return
        message.additional = [rr for rr in message.additional if rr.type != dns.OPT]
        now = self.pool._reactor.seconds()
        reply = UpstreamReply(message, data, self.server, now - self._sent_at, via_tcp)
        usable = message.rCode not in UNUSABLE_RCODES
        self._finish(_USABLE if usable else _UNUSABLE, reply)

    def _start_tcp(self) -> None:
        self.pool.stats.tcp += 1
        self._close_udp()
        self._connect_tcp()

    def _connect_tcp(self) -> None:
        pool = self.pool
        self._socket_wait = None
        remaining = max(0.0, self.attempt.deadline - pool._reactor.seconds())
        endpoint_class = TCP6ClientEndpoint if self.address.ipv6 else TCP4ClientEndpoint
        endpoint = endpoint_class(pool._reactor, self.address.host, self.address.port, timeout=remaining + 1)
        self._tcp = _TCPClient(self, self._new_query())
        self._connecting = endpoint.connect(_OneShotFactory(self._tcp))
        self._connecting.addCallbacks(self._tcp_connected, self._tcp_connect_failed)

    def _tcp_connected(self, _protocol) -> None:
        self._connecting = None

    def _tcp_connect_failed(self, reason) -> None:
        self._connecting = None
        if self.finished or reason.check(defer.CancelledError):
            return
        if out_of_descriptors(reason.value):
            self._tcp = None
            self._wait_for_socket(reason.value, self._connect_tcp)
            return
        self.refused()

    def _finish(self, outcome: str, reply: UpstreamReply | None) -> None:
        if self.finished:
            return
        self.finished = True
        if self._cancel_socket_wait() and outcome == _FAILED:
            # Out of descriptors at the deadline: not the server's fault.
            outcome = _ABANDONED
        self._close_udp()
        self._close_tcp()
        infra = self.pool._infra
        stats = self.pool.stats
        if outcome == _USABLE:
            stats.answered += 1
            infra.succeeded(self.server, self._sample_rtt if self._sample_rtt is not None else reply.rtt)
        elif outcome == _UNUSABLE:
            stats.unusable += 1
            infra.failed(self.server)
        elif outcome == _FAILED:
            infra.failed(self.server)
        else:
            infra.abandoned(self.server)
        self.attempt.exchange_done(self, outcome, reply)

    def _close_udp(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()

    def _close_tcp(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        tcp = self._tcp
        if tcp is not None and tcp.transport is not None:
            tcp.transport.abortConnection()


class _QuietPort(udp.Port):
    """
    A udp.Port that does not log its opening and closing: the pool opens
    one per upstream exchange, and those two log lines per query cost more
    than the exchange itself.
    """

    def _bindSocket(self) -> None:
        skt = self.createInternetSocket()
        try:
            skt.bind((self.interface, self.port))
        except OSError as le:
            skt.close()
            raise CannotListenError(self.interface, self.port, le)
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = self.socket.fileno

    def connectionLost(self, reason=None) -> None:
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


class _UDPClient(DatagramProtocol):
    """Hands what arrives on an exchange's UDP socket to the exchange."""

    noisy = False

    def __init__(self, exchange: _Exchange):
        self._exchange = exchange

    def datagramReceived(self, datagram: bytes, addr) -> None:
        """Pass a datagram on."""
        self._exchange.udp_datagram(datagram, addr)

    def connectionRefused(self) -> None:
        """ICMP port unreachable for the connected server."""
        self._exchange.refused()

    def stopProtocol(self) -> None:
        """
        The port closed.  When the exchange did not close it, the reactor
        did because of a socket error: the epoll reactor turns the pending
        ECONNREFUSED of an ICMP port unreachable into a closed port rather
        than calling ``connectionRefused``.
        """
        self._exchange.udp_closed()


class _OneShotFactory(Factory):
    """
    The factory of one exchange's TCP connection: hands over its protocol,
    and does not log "Starting factory" / "Stopping factory" every time.
    """

    noisy = False

    def __init__(self, protocol: _TCPClient):
        self._protocol = protocol

    def buildProtocol(self, addr) -> _TCPClient:
        """The exchange's protocol."""
        return self._protocol


class _TCPClient(Int16StringReceiver):
    """Sends one framed query and hands the framed replies to the exchange."""

    def __init__(self, exchange: _Exchange, query: bytes):
        self._exchange = exchange
        self._query = query

    def connectionMade(self) -> None:
        """Send the query."""
        self.sendString(self._query)

    def stringReceived(self, string: bytes) -> None:
        """Pass a reply on."""
        self._exchange.tcp_message(string)

    def connectionLost(self, reason) -> None:
        """Tell the exchange, which fails unless it already has its answer."""
        self._exchange.tcp_lost()
