"""
The forwarding client: sends a question to the upstream servers the L3
infrastructure cache ranks best, retransmits what is lost, and returns the
first usable reply.

**The budget.**  One call of :meth:`UpstreamPool.query` lasts at most
``timeout * (retries + 1)`` seconds (2 s with the defaults), after which the
caller sees :class:`UpstreamTimeout` (or the last unusable reply, below).
Within it the pool *transmits* the question again and again, as Unbound
does:

* Each transmission goes to the best server of ``infra.order()``, taken
  afresh each time, leaving out the servers that already gave this query an
  unusable reply or refused it (``strategy='parallel'``: to the first
  ``parallel_count`` of them at once).  When health leaves no server, the
  down ones are tried too: a query is never failed without a try.
* It waits ``min(rto, timeout, time left)``.  ``rto`` is the server's
  retransmission timeout from the infrastructure cache (``srtt + 4 rttvar``
  clamped to at least 50 ms, 376 ms for a server never measured, doubled
  by every loss until an answer), and for the k-th loss of this query to
  that server at least ``2**k`` times the server's RTO without back-off:
  the query's own exponential back-off, so that answers to other queries,
  which reset the server's RTO, cannot make a losing query retransmit in a
  tight loop.
* A reply that does not come in time is a loss: the infrastructure cache
  doubles the server's RTO (without touching its srtt) and the next
  transmission begins at once, to the server now ranked best, which may be
  the same one.  With one upstream at 0.3 ms (RTO 50 ms), a lost query is
  sent again after 50, 100, 200, 400 and 800 ms: six transmissions in the
  default 2 s.  A datagram still waiting when the budget runs out counts as
  lost only if it waited at least half its wait.
* After ``tcp_fallback_after`` (3) losses in a row to one server, the next
  transmission to it is a TCP exchange (RRL's "slip" answers are meant to
  send clients to TCP, which it does not limit; Unbound also falls back to
  TCP when UDP keeps failing).  A TCP exchange that gets no answer in
  ``min(timeout, time left)`` is a loss too, and the query goes on over UDP.
* ICMP port unreachable, a TCP connection refused or lost, or an unusable
  reply (SERVFAIL, REFUSED, NOTIMP, FORMERR) ends that server's part in
  this query at once and the next transmission begins.  When no usable
  reply arrives, the last unusable one is returned, so the caller still
  sees REFUSED; only when nothing arrived at all does the query fail.

**Spoofing defences** (RFC 5452):

* every transmission carries a fresh random 16-bit ID
  (``os.urandom``, drawn in chunks: :mod:`dnsgo.upstream.ids`).  The ID of a transmission that timed out is
  retired: its late reply is counted (``stats.late``) and ignored, so each
  server has at most one (source port, ID) pair open for a question at any
  time, and a retransmission does not give an attacker a second pair to
  hit.  Each reply is therefore an unambiguous RTT sample (Karn's problem
  does not arise);
* the datagrams of one question to one server leave from one socket bound
  to a random port and ``connect``-ed to the server: by default a fresh
  socket per (question, server), closed when the question is settled
  (retransmissions reuse it); with ``socket_pool`` a socket of a small pool
  per server, renewed after a number of uses or seconds (see
  :mod:`dnsgo.upstream.sockets` and ``docs/upstream.md`` for the entropy of
  each mode);
* a datagram is accepted only if it comes from the queried address and
  port, has the current transmission's ID, QR=1, and the same question (name
  compared case-insensitively, type and class).  Replies with no question
  are accepted only as unusable ones (FORMERR from a server that dislikes
  EDNS), never as answers.  Anything else, and any reply that is malformed
  (``records.read_response`` rejects it: records cut short, bytes after
  the last record, bad compression, an OPT out of place, rdata of the
  wrong size), is
  counted in :attr:`UpstreamPool.stats` and ignored; the transmission keeps
  waiting.

A reply with TC=1 is asked again over TCP (RFC 7766 framing) from the same
server, with a new ID; the TCP leg may take ``min(timeout, time left)``.

Every transmission is reported to the infrastructure cache: ``started``,
then ``succeeded(rtt)`` for a usable reply, ``failed`` for a loss (with the
RTO it waited for), refusal, lost TCP connection or unusable reply, or
``abandoned`` when it is cut short without a verdict (it lost a parallel
race, the caller cancelled, or the budget ran out early in its wait).  The
RTT sample of a TC=1 exchange is the UDP round trip; an answer to a TCP
fallback is no sample (it ends the back-off all the same).

Identical questions in flight at the same time (same lowercased name, type,
class, DO and CD) share one upstream query; each caller gets its own
Deferred, all firing with the same :class:`UpstreamReply`.

A transmission that cannot get a socket because the process (EMFILE) or the
system (ENFILE) is out of descriptors, or the kernel out of buffers, is not
the server's fault: it is counted in ``stats.no_socket``, logged at most
once a minute without a traceback, and asks again for a socket after 10 ms,
doubling up to 100 ms, until its wait is over; then the next transmission
begins (without a failure on the server's record).  Descriptors come back
as other exchanges end, so a short shortage delays answers instead of
failing them; a lasting one ends in :class:`UpstreamTimeout` like dead
upstreams.

The factory of the TCP leg is not ``noisy`` (no "Starting factory" /
"Stopping factory" per exchange), and the UDP sockets do not log either.
"""
from __future__ import annotations

import errno
import ipaddress
import struct
from typing import NamedTuple

import attrs
from twisted.internet import defer
from twisted.internet.error import CannotListenError, ConnectError, ConnectingCancelledError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.names import dns
from twisted.protocols.basic import Int16StringReceiver
from twisted.python import log

from dnsgo.dns import wire
from dnsgo.dns.records import ReadReply, read_response
from dnsgo.upstream.deadlines import Deadlines
from dnsgo.upstream.ids import QueryIds
from dnsgo.upstream.infra import InfraCache, Server
from dnsgo.upstream.sockets import FreshSockets, SocketPool, SocketPoolSettings

__all__ = [
    "SocketPoolSettings",
    "STRATEGIES",
    "UNUSABLE_RCODES",
    "UpstreamPool",
    "UpstreamReply",
    "UpstreamStats",
    "UpstreamTimeout",
    "out_of_descriptors",
]

#: Reply codes after which the next server is tried.
UNUSABLE_RCODES = frozenset({dns.EFORMAT, dns.ESERVER, dns.ENOTIMP, dns.EREFUSED})

STRATEGIES = ("best", "parallel")

_ID = struct.Struct("!H")
_QR = 0x80
_TC = 0x02

# Outcomes of one transmission (or TCP leg) to one server.
_USABLE = "usable"
_UNUSABLE = "unusable"
_FAILED = "failed"  # refused, unreachable, TCP leg failed: the server is done for this query
_LOST = "lost"  # no reply within the wait: the server may be asked again
_NO_SOCKET = "no socket"  # no descriptor within the wait: not the server's fault
_ABANDONED = "abandoned"

# States of an exchange (one question to one server).
_IDLE = "idle"  # nothing outstanding: new, or after a loss
_SOCKET_WAIT = "socket wait"  # a transmission waits for a descriptor
_UDP = "udp"  # a datagram is out
_TCP = "tcp"  # the TCP leg after TC=1
_CLOSED = "closed"  # done with this server for this query
_BUSY = frozenset({_SOCKET_WAIT, _UDP, _TCP})

#: Opening a socket failed for want of a descriptor or buffer, not because
#: of the server.
_NO_DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: The first wait before asking again for a socket, and the longest.
SOCKET_RETRY_FIRST = 0.01
SOCKET_RETRY_MAX = 0.1

#: At most one log line per this many seconds about missing descriptors.
NO_SOCKET_LOG_INTERVAL = 60.0

#: Retired IDs an exchange remembers, to tell a late reply from a stray one.
_RETIRED_IDS = 16

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


class UpstreamReply(NamedTuple):
    """
    A reply accepted from an upstream server.

    ``wire`` is the reply exactly as received, ``layout`` where its parts
    are (:func:`dnsgo.dns.wire.scan_response`), ``read`` its question and
    records read from those bytes (:func:`dnsgo.dns.records.read_reply`); the
    pool finds both in one pass (:func:`dnsgo.dns.records.read_response`),
    ``rtt`` the seconds from sending the transmission it answers to
    accepting this reply (for TC=1, including the TCP leg).  Shared by every
    coalesced caller, and immutable.  A ``NamedTuple``, like
    :class:`~dnsgo.dns.wire.QueryInfo`: one is made per miss.
    """

    wire: bytes
    layout: wire.ResponseLayout
    read: ReadReply
    server: Server
    rtt: float
    via_tcp: bool

    @property
    def message(self) -> dns.Message:
        """
        The reply decoded by twisted.names, its OPT record left out (decoded
        on each call: the miss path passes the bytes on and never asks).
        """
        message = dns.Message()
        message.fromStr(self.wire)
        message.additional = [rr for rr in message.additional if rr.type != dns.OPT]
        return message


@attrs.define
class UpstreamStats:
    """Counters of what the pool did, for metrics and tests."""

    queries: int = 0  # calls to query()
    coalesced: int = 0  # calls that joined a query already in flight
    sent: int = 0  # transmissions (UDP datagrams sent, one per server per try)
    retransmits: int = 0  # transmissions to a server this query had already asked
    tcp: int = 0  # exchanges retried over TCP after TC=1
    tcp_fallback: int = 0  # TCP legs after tcp_fallback_after UDP losses in a row to one server
    answered: int = 0  # usable replies accepted
    unusable: int = 0  # SERVFAIL/REFUSED/NOTIMP/FORMERR replies accepted
    timeouts: int = 0  # transmissions (or TCP legs) that got no reply in time
    refused: int = 0  # ICMP port unreachable, failed TCP connections, socket errors
    no_socket: int = 0  # sockets not opened for want of a descriptor (EMFILE/ENFILE): asked again later
    spoofed: int = 0  # messages ignored: wrong source, ID, QR or question
    late: int = 0  # replies to a transmission that had already timed out, ignored
    malformed: int = 0  # messages ignored: matching header but undecodable
    failed: int = 0  # queries that ended in UpstreamTimeout

    @property
    def ignored(self) -> int:
        """All messages that were dropped: spoofed, late or malformed."""
        return self.spoofed + self.late + self.malformed


class _Question(NamedTuple):
    """
    What is being asked, and the flags to ask it with; ``lowered`` is the
    name lowercased.  (A NamedTuple: one is made per miss.)
    """

    qname: bytes
    qtype: int
    qclass: int
    do: bool
    cd: bool
    lowered: bytes

    @property
    def match_key(self) -> tuple[bytes, int, int]:
        """What ``wire.parse_question`` must return for a reply to match."""
        return (self.lowered, self.qtype, self.qclass)


class UpstreamPool:
    """
    Sends questions to the upstream servers of an :class:`InfraCache`, with
    RTO-timed retransmissions, failover, TCP fallback, spoofing checks and
    coalescing.

    ``socket_pool`` (a :class:`SocketPoolSettings`) sends from a small pool
    of long-lived sockets per upstream instead of a fresh socket per
    question and server (the default, ``None``); call :meth:`close` when
    done with a pool that has one.
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
        socket_pool: SocketPoolSettings | None = None,
        tcp_fallback_after: int | None = 3,
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
        if tcp_fallback_after is not None and tcp_fallback_after < 1:
            raise ValueError("tcp_fallback_after must be at least 1 (or None: never)")
        self._reactor = reactor
        self._infra = infra
        self._timeout = timeout
        self._budget = timeout * (retries + 1)
        self._strategy = strategy
        self._parallel_count = parallel_count
        self._udp_size = udp_size
        self._tcp_fallback_after = tcp_fallback_after
        self._endpoints = {server: _ServerAddress.of(server) for server in infra.servers}
        self._pending: dict[tuple, _Resolution] = {}
        self.stats = UpstreamStats()
        self._no_socket_logged = float("-inf")
        size = max(8192, udp_size)
        self._ids = QueryIds()
        self._deadlines = Deadlines(reactor)
        if socket_pool is None:
            self._sockets = FreshSockets(reactor, size, self._ids)
        else:
            self._sockets = SocketPool(reactor, size, socket_pool, self._ids, on_stray=self._stray)

    @property
    def budget(self) -> float:
        """The longest a query can take, in seconds: ``timeout * (retries + 1)``."""
        return self._budget

    def query(
        self, qname: bytes, qtype: int, qclass: int = 1, *, do: bool = False, cd: bool = False
    ) -> defer.Deferred:
        """
        Ask the upstreams ``qname`` (wire format) ``qtype`` ``qclass`` with
        RD set and the given DO and CD bits.  Fires with an
        :class:`UpstreamReply` (usable, or else the last unusable one), or
        fails with :class:`UpstreamTimeout`; a malformed ``qname`` fails
        with ValueError.  Cancelling the Deferred withdraws this caller.
        """
        resolution = self._resolution(qname, qtype, qclass, bool(do), bool(cd))
        if resolution is None:
            return defer.fail(ValueError(f"malformed question name {qname!r}"))
        waiter = resolution.add_waiter()
        if not resolution.started:
            resolution.start()
        return waiter

    def ask(self, qname: bytes, qtype: int, qclass: int, do: bool, cd: bool, done) -> None:
        """
        :meth:`query` without a Deferred, for the miss path: ``done`` is
        called once, with the :class:`UpstreamReply`, or with the exception
        (:class:`UpstreamTimeout`, or ValueError for a malformed ``qname``)
        that :meth:`query` would fail with.  Never raises.
        """
        try:
            resolution = self._resolution(qname, qtype, qclass, do, cd)
        except Exception as e:
            done(e)
            return
        if resolution is None:
            done(ValueError(f"malformed question name {qname!r}"))
            return
        resolution.waiters.append(done)
        if not resolution.started:
            resolution.start()

    def _resolution(self, qname: bytes, qtype: int, qclass: int, do: bool, cd: bool):
        """The resolution in flight for this question (coalesced), or a new one not yet started; None for a malformed name."""
        self.stats.queries += 1
        key = (qname.lower(), qtype, qclass, do, cd)
        resolution = self._pending.get(key)
        if resolution is not None:
            self.stats.coalesced += 1
            return resolution
        try:
            template = wire.build_query(0, qname, qtype, qclass, rd=True, cd=cd, do=do, udp_size=self._udp_size)
        except ValueError:
            return None
        question = _Question(qname, qtype, qclass, do, cd, key[0])
        resolution = _Resolution(self, question, template, key)
        self._pending[key] = resolution
        return resolution

    def close(self) -> None:
        """Close the socket pool's sockets, if there is a pool (queries in flight on them fail over)."""
        self._sockets.close()

    def forget(self, key: tuple, resolution: _Resolution) -> None:
        """A resolution is over: the next identical question starts a new one."""
        if self._pending.get(key) is resolution:
            del self._pending[key]

    def _stray(self) -> None:
        """A datagram on a pooled socket whose ID no exchange sent."""
        self.stats.spoofed += 1

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
    One upstream query on behalf of every coalesced caller: transmits the
    question try after try until a usable reply or the end of the budget,
    and fires the callers' Deferreds.
    """

    __slots__ = (
        "pool", "question", "template", "qname_lower", "question_end", "deadline", "_key", "started", "waiters", "_exchanges", "_excluded",
        "_current", "_timer", "_last_unusable", "_starting", "_done",
    )

    def __init__(self, pool: UpstreamPool, question: _Question, template: bytes, key: tuple):
        self.pool = pool
        self.question = question
        self.template = template  # the query with ID 0: each transmission puts its own ID in
        # Where the query's question ends, and its name lowercased: what a matching reply carries.
        self.question_end = 12 + len(question.qname) + 4
        self.qname_lower = question.lowered
        self.deadline = pool._reactor.seconds() + pool._budget
        self._key = key
        self.started = False
        #: The callers: Deferreds (from ``query``) and plain callables (from ``ask``).
        self.waiters: list = []
        self._exchanges: dict[Server, _Exchange] = {}
        self._excluded: set[Server] = set()
        self._current: list[_Exchange] = []
        self._timer = None
        self._last_unusable: UpstreamReply | None = None
        self._starting = False
        self._done = False

    def add_waiter(self) -> defer.Deferred:
        """A new Deferred for one more caller of this question."""
        waiter = defer.Deferred(self._cancel_waiter)
        self.waiters.append(waiter)
        return waiter

    def start(self) -> None:
        """Arm the budget and make the first transmission."""
        self.started = True
        self._timer = self.pool._deadlines.call_later(self.pool._budget, self._expire)
        self._next_try()

    def remaining(self) -> float:
        """Seconds left of the budget."""
        return self.deadline - self.pool._reactor.seconds()

    def settled(self, exchange: _Exchange, outcome: str, reply: UpstreamReply | None) -> None:
        """An exchange's transmission (or TCP leg) ended; go on when the try is over."""
        if self._done:
            return
        if outcome == _USABLE:
            self._finish(reply, timed_out=False)
            return
        if outcome == _UNUSABLE:
            self._last_unusable = reply
        if outcome in (_UNUSABLE, _FAILED):
            self._excluded.add(exchange.server)
        if not self._starting and not any(e.state in _BUSY for e in self._current):
            self._next_try()

    def _next_try(self) -> None:
        """Transmit to the best server(s) not yet ruled out for this query, or give up."""
        if self._done:
            return
        remaining = self.remaining()
        if remaining <= 0:
            self._expire()
            return
        pool = self.pool
        candidates = [s for s in pool._infra.order() if s not in self._excluded]
        if not candidates:
            candidates = [s for s in pool._infra.order(all_servers=True) if s not in self._excluded]
        if not candidates:
            self._finish(None, timed_out=False)
            return
        count = pool._parallel_count if pool._strategy == "parallel" else 1
        self._current = []
        for server in candidates[:count]:
            exchange = self._exchanges.get(server)
            if exchange is None or exchange.state == _CLOSED:
                exchange = self._exchanges[server] = _Exchange(self, server)
            self._current.append(exchange)
        self._starting = True
        try:
            for exchange in self._current:
                if self._done:
                    return
                exchange.transmit(remaining)
        finally:
            self._starting = False
        if not self._done and not any(e.state in _BUSY for e in self._current):
            self._next_try()

    def _expire(self) -> None:
        """The budget is spent."""
        self._timer = None
        self._finish(None, timed_out=True)

    def _finish(self, reply: UpstreamReply | None, timed_out: bool) -> None:
        if self._done:
            return
        self._end(_FAILED if timed_out else _ABANDONED)
        if reply is None:
            reply = self._last_unusable
        outcome = reply
        if reply is None:
            self.pool.stats.failed += 1
            outcome = UpstreamTimeout("no reply from any upstream server")
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if waiter.__class__ is not defer.Deferred:
                try:
                    waiter(outcome)
                except Exception:
                    _log.failure("an upstream query's caller failed")
            elif reply is not None:
                waiter.callback(reply)
            else:
                waiter.errback(outcome)

    def _cancel_waiter(self, waiter: defer.Deferred) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if not self.waiters and not self._done:
            self._end(_ABANDONED)

    def _end(self, outcome: str) -> None:
        """
        This resolution is over: cancel its budget timer, stop every
        exchange with ``outcome``, and let the pool forget it.  The
        references to the exchanges are dropped: each exchange refers back
        to this resolution, and a cycle left for the cyclic garbage
        collector on every miss costs memory until a collection.
        """
        self._done = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        exchanges, self._exchanges, self._current = self._exchanges, {}, []
        for exchange in exchanges.values():
            exchange.stop(outcome)
        self.pool.forget(self._key, self)


class _Exchange:
    """
    The question to one server within a resolution: UDP transmissions on
    one socket (a new ID each), then TCP if a reply is truncated or after
    ``tcp_fallback_after`` losses in a row.
    """

    __slots__ = (
        "resolution", "pool", "server", "address", "state", "_channel", "_query_id", "_retired", "_sent_at", "_rto",
        "_lost", "_losses", "_transmissions", "_timer", "_connecting", "_tcp", "_sample_rtt", "_socket_wait",
        "_socket_waits",
    )

    def __init__(self, resolution: _Resolution, server: Server):
        self.resolution = resolution
        self.pool = resolution.pool
        self.server = server
        self.address = self.pool._endpoints[server]
        self.state = _IDLE
        self._channel = None
        self._query_id: int | None = None
        self._retired: list[int] = []
        self._sent_at = 0.0
        self._rto = 0.0  # the RTO the current transmission is timed by
        self._lost = 0  # UDP transmissions of this query to this server lost so far
        self._losses = 0  # the same, in a row since the last TCP leg
        self._transmissions = 0
        self._timer = None
        self._connecting: defer.Deferred | None = None
        self._tcp: _TCPClient | None = None
        self._sample_rtt: float | None = None  # the RTT sample a usable answer reports (None: none)
        self._socket_wait = None  # the delayed call asking again for a socket
        self._socket_waits = 0

    @property
    def waiting_for_socket(self) -> bool:
        """Whether a transmission waits for a free descriptor to open its socket."""
        return self.state == _SOCKET_WAIT

    def transmit(self, remaining: float) -> None:
        """
        Send the question (again) and wait ``min(RTO, timeout, remaining)``
        for the reply; after ``tcp_fallback_after`` losses in a row, ask
        over TCP instead.
        """
        pool = self.pool
        infra = pool._infra
        rto = infra.rto(self.server)
        if self._lost:
            rto = max(rto, min(infra.rto_max, infra.base_rto(self.server) * 2**self._lost))
        self._rto = rto
        if pool._tcp_fallback_after and self._losses >= pool._tcp_fallback_after:
            self._losses = 0
            pool.stats.tcp_fallback += 1
            self._begin(_TCP)
            self._sample_rtt = None  # a TCP exchange is no UDP round trip
            self._start_tcp_leg()
            return
        wait = rto if rto < pool._timeout else pool._timeout  # not min(): see InfraCache._clamp
        self._timer = pool._deadlines.call_later(wait if wait < remaining else remaining, self._expired)
        self._send()

    def _send(self) -> None:
        """Open the socket if need be, and send a datagram with a new ID (or wait for a descriptor)."""
        pool = self.pool
        self._socket_wait = None
        if self._channel is None:
            try:
                self._channel = pool._sockets.open(self, self.address)
            except Exception as e:
                if out_of_descriptors(e):
                    self.state = _SOCKET_WAIT
                    self._wait_for_socket(e, self._send)
                    return
                self._begin(_UDP)
                log.err(None, f"dnsgo: cannot open a socket for upstream {self.server}")
                self.refused()
                return
        self._begin(_UDP)
        try:
            query_id = self._channel.new_id()
            while query_id == self._query_id:  # a retransmission never repeats the ID it replaces
                query_id = self._channel.new_id()
            if self._query_id is not None:
                self._retire(self._query_id)
            self._query_id = query_id
            self._channel.send(self._query_id, self._new_query(self._query_id))
        except Exception:
            log.err(None, f"dnsgo: cannot send to upstream {self.server}")
            self.refused()

    def _begin(self, state: str) -> None:
        """A transmission goes out: start the clock and tell the infra cache."""
        pool = self.pool
        self.state = state
        self._sent_at = pool._reactor.seconds()
        pool._infra.started(self.server)
        if state == _UDP:
            pool.stats.sent += 1
        if self._transmissions:
            pool.stats.retransmits += 1
        self._transmissions += 1

    def _retire(self, query_id: int) -> None:
        self._retired.append(query_id)
        del self._retired[:-_RETIRED_IDS]

    def _wait_for_socket(self, reason: BaseException, retry) -> None:
        """No descriptor for a socket: count it, and call ``retry`` a little later (the wait may end first)."""
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

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _expired(self) -> None:
        """The wait is over: a loss (or no descriptor); the server may be asked again."""
        self._timer = None
        pool = self.pool
        if self.state == _UDP:
            pool.stats.timeouts += 1
            pool._infra.failed(self.server, self._rto)
            self._lost += 1
            self._losses += 1
            self._retire(self._query_id)
            self._query_id = None
            self.state = _IDLE
            self.resolution.settled(self, _LOST, None)
        elif self.state == _SOCKET_WAIT:
            self._cancel_socket_wait()
            self.state = _IDLE
            self.resolution.settled(self, _NO_SOCKET, None)
        elif self.state == _TCP:
            if self._cancel_socket_wait():
                self.pool._infra.abandoned(self.server)  # no descriptor for the leg: not the server's fault
                outcome = _NO_SOCKET
            else:
                pool.stats.timeouts += 1
                pool._infra.failed(self.server)
                outcome = _LOST
            self.state = _IDLE
            self._close_tcp()
            self.resolution.settled(self, outcome, None)

    def stop(self, outcome: str) -> None:
        """
        The resolution is over: end whatever is outstanding, as a timeout
        (the budget ran out) or an abandonment.  A datagram that waited
        less than half its wait (``min(RTO, timeout)``) when the budget ran
        out was not proven lost: it is abandoned, and the server's RTO and
        record stay as they are.
        """
        if self.state == _UDP and outcome == _FAILED:
            waited = self.pool._reactor.seconds() - self._sent_at
            if waited < min(self._rto, self.pool._timeout) / 2:
                outcome = _ABANDONED
        if self.state in (_UDP, _TCP):
            if outcome == _FAILED and self._socket_wait is None:
                self.pool.stats.timeouts += 1
            self._close(outcome, None, notify=False)
        else:
            self._close(_ABANDONED, None, notify=False)

    def refused(self) -> None:
        """The server cannot be reached (ICMP, a socket error, a failed TCP leg): done with it for this query."""
        if self.state == _CLOSED:
            return
        self.pool.stats.refused += 1
        self._close(_FAILED, None)

    def udp_datagram(self, data: bytes, addr) -> None:
        """A datagram arrived on this exchange's socket."""
        stats = self.pool.stats
        if (addr[0], addr[1]) != (self.address.host, self.address.port):
            stats.spoofed += 1
            return
        query_id = _ID.unpack_from(data)[0] if len(data) >= 12 else None
        if self.state != _UDP or query_id != self._query_id:
            if query_id is not None and query_id in self._retired and data[2] & _QR:
                stats.late += 1
            else:
                stats.spoofed += 1
            return
        if not self._matches(data):
            return
        if data[2] & _TC:
            self._sample_rtt = self.pool._reactor.seconds() - self._sent_at
            self.pool.stats.tcp += 1
            self._cancel_timer()
            self.state = _TCP
            self._close_udp()  # this server will not be asked over UDP again by this query
            self._start_tcp_leg()
            return
        self._accept(data, via_tcp=False)

    def tcp_message(self, client: _TCPClient, data: bytes) -> None:
        """A length-framed message arrived on this exchange's TCP connection."""
        if client is not self._tcp or self.state != _TCP or not self._matches(data):
            return
        self._accept(data, via_tcp=True)

    def tcp_lost(self, client: _TCPClient) -> None:
        """The TCP connection closed before an answer was accepted."""
        if client is self._tcp and self.state == _TCP:
            self.refused()

    def _new_query(self, query_id: int) -> bytes:
        return _ID.pack(query_id) + self.resolution.template[2:]

    def _matches(self, data: bytes) -> bool:
        """Whether ``data`` answers the current transmission; counts what it rejects."""
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
        resolution = self.resolution
        end = resolution.question_end
        if (data[4:6] == b"\x00\x01" and data[12 : end - 4].lower() == resolution.qname_lower
                and data[end - 4 : end] == resolution.template[end - 4 : end]):
            # The question section as sent, the name compared without case
            # (a 0x20-minded upstream echoes it), type and class exactly.
            return True
        try:
            qname, qtype, qclass, _ = wire.parse_question(data)
        except ValueError:
            stats.malformed += 1
            return False
        if (qname, qtype, qclass) != self.resolution.question.match_key:
            stats.spoofed += 1
            return False
        return True

    def _accept(self, data: bytes, via_tcp: bool) -> None:
        try:
            # The whole reply is checked at byte level once: its structure
            # (truncation, compression, stray bytes, the OPT's place) and
            # every name and fixed-size rdata, in one pass (read_response).
            layout, read = read_response(data)
        except ValueError:
            self.pool.stats.malformed += 1
            return
        now = self.pool._reactor.seconds()
        reply = UpstreamReply(data, layout, read, self.server, now - self._sent_at, via_tcp)
        if not via_tcp:
            self._sample_rtt = reply.rtt
        usable = read.rcode not in UNUSABLE_RCODES
        self._close(_USABLE if usable else _UNUSABLE, reply)

    def _start_tcp_leg(self) -> None:
        """Ask over TCP (state is already _TCP), waiting ``min(timeout, time left)``."""
        pool = self.pool
        wait = max(0.0, min(pool._timeout, self.resolution.remaining()))
        self._timer = pool._deadlines.call_later(wait, self._expired)
        self._connect_tcp()

    def _connect_tcp(self) -> None:
        pool = self.pool
        self._socket_wait = None
        remaining = max(0.0, self.resolution.remaining())
        endpoint_class = TCP6ClientEndpoint if self.address.ipv6 else TCP4ClientEndpoint
        endpoint = endpoint_class(pool._reactor, self.address.host, self.address.port, timeout=remaining + 1)
        if self._query_id is not None:
            self._retire(self._query_id)
        self._query_id = self.pool._ids()
        client = self._tcp = _TCPClient(self, self._new_query(self._query_id))
        connecting = self._connecting = endpoint.connect(_OneShotFactory(client))
        connecting.addCallbacks(self._tcp_connected, self._tcp_connect_failed, errbackArgs=(client,))

    def _tcp_connected(self, _protocol) -> None:
        self._connecting = None

    def _tcp_connect_failed(self, reason, client: _TCPClient) -> None:
        if client is not self._tcp or self.state != _TCP:
            return
        if reason.check(defer.CancelledError, ConnectingCancelledError):
            return
        self._connecting = None
        if out_of_descriptors(reason.value):
            self._tcp = None
            self._wait_for_socket(reason.value, self._connect_tcp)
            return
        self.refused()

    def _close(self, outcome: str, reply: UpstreamReply | None, notify: bool = True) -> None:
        """Done with this server for this query: report the outstanding transmission, close everything."""
        if self.state == _CLOSED:
            return
        outstanding = self.state in (_UDP, _TCP)
        lost_rto = self._rto if self.state == _UDP else None  # a loss doubles the RTO it waited for
        self.state = _CLOSED
        self._cancel_timer()
        if self._cancel_socket_wait() and outcome == _FAILED:
            outcome = _ABANDONED  # out of descriptors at the deadline: not the server's fault
        self._close_udp()
        self._close_tcp()
        if outstanding:
            infra = self.pool._infra
            stats = self.pool.stats
            if outcome == _USABLE:
                stats.answered += 1
                infra.succeeded(self.server, self._sample_rtt)
            elif outcome == _UNUSABLE:
                stats.unusable += 1
                infra.failed(self.server)
            elif outcome == _FAILED:
                infra.failed(self.server, lost_rto)
            else:
                infra.abandoned(self.server)
        if notify:
            self.resolution.settled(self, outcome, reply)

    def _close_udp(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def _close_tcp(self) -> None:
        # Forget the leg first: cancelling or aborting it calls back into this exchange.
        connecting, self._connecting = self._connecting, None
        tcp, self._tcp = self._tcp, None
        if connecting is not None:
            connecting.cancel()
        if tcp is not None and tcp.transport is not None:
            tcp.transport.abortConnection()


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
        self._exchange.tcp_message(self, string)

    def connectionLost(self, reason) -> None:
        """Tell the exchange, which fails unless it already has its answer."""
        self._exchange.tcp_lost(self)
