"""
Where an upstream exchange's UDP datagrams go out and come back: its own
fresh socket (the default), or a socket of a small pool per upstream.

**Fresh** (:class:`FreshSockets`): each exchange (one question to one
server) opens a socket bound to port 0, so Linux picks a random port of
``net.ipv4.ip_local_port_range`` for it, ``connect``-s it to the server, and
closes it when the exchange ends.  Retransmissions of that question to that
server go out on the same socket under a new random ID.  The kernel drops
datagrams from any other source and reports ICMP errors, which fail the
exchange at once.

**Pooled** (:class:`SocketPool`, ``SocketPoolSettings``): per upstream
server, up to ``sockets`` sockets, each bound to its own random port and
``connect``-ed to that server (dnsdist's ``sockets`` per backend, with
``setRandomizedOutgoingSockets``); an exchange takes one at random and
every transmission registers a random ID that is free on that socket.  A
socket is renewed (a new one takes its place, the old one closes when its
last exchange ends) after ``max_uses`` transmissions or ``max_age``
seconds.  This saves the socket, bind, connect, epoll registration and
close of each exchange; it gives an attacker who finds the pool's ports
(they live for up to ``max_uses`` / ``max_age``) ``log2(sockets)`` bits of
port entropy instead of the whole ephemeral range.  ICMP port unreachable
still fails every exchange on the socket at once (the socket is connected).

The sockets do not log: the UDP port is a quiet ``udp.Port`` when the
reactor is a posix one.
"""
from __future__ import annotations

import _socket
import errno
import random
import socket

import attrs
from twisted.internet import base, udp
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol

#: Where the platform has it (Linux), a datagram socket is created non-blocking.
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

#: How many random IDs a pooled socket tries before it gives up for one transmission.
_ID_TRIES = 64


@attrs.frozen
class SocketPoolSettings:
    """
    The pooled mode: ``sockets`` per upstream server, each renewed after
    ``max_uses`` transmissions or ``max_age`` seconds.
    """

    sockets: int = attrs.field(default=16)
    max_uses: int = attrs.field(default=1000)
    max_age: float = attrs.field(default=60.0)

    def __attrs_post_init__(self) -> None:
        if self.sockets < 1:
            raise ValueError("a socket pool needs at least one socket per upstream")
        if self.max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        if self.max_age <= 0:
            raise ValueError("max_age must be positive")


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
        """Close the socket without the "(UDP Port ... Closed)" log line."""
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        # The protocol points back at this port: break the cycle now rather
        # than leave one per exchange to the cyclic garbage collector.
        self.protocol = None
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


def udp_opener(reactor):
    """
    ``open(protocol, address, size)``: a UDP port bound to a random port of
    ``address``'s family and connected to it (a quiet port on posix
    reactors).  Raises what binding raises (``CannotListenError`` wrapping
    EMFILE and the like).
    """
    if isinstance(reactor, PosixReactorBase):

        def listen(proto, interface, size):
            port = _QuietPort(0, proto, interface, size, reactor)
            port.startListening()
            return port

    else:

        def listen(proto, interface, size):
            return reactor.listenUDP(0, proto, interface=interface, maxPacketSize=size)

    def open_port(proto, address, size: int):
        port = listen(proto, "::" if address.ipv6 else "0.0.0.0", size)
        try:
            port.connect(address.host, address.port)
        except Exception:
            port.stopListening()
            raise
        return port

    return open_port


class _FreshChannel(DatagramProtocol):
    """One exchange's own connected socket; hands what arrives to the exchange."""

    noisy = False

    def __init__(self, exchange, ids):
        self._exchange = exchange
        self._port = None
        self.new_id = ids  # a random 16-bit ID (the socket is the exchange's own)

    def send(self, query_id: int, data: bytes) -> None:
        """Send a datagram to the server."""
        self._port.write(data)

    def close(self) -> None:
        """Close the socket (the exchange is over) and let go of the exchange."""
        port, self._port = self._port, None
        self._exchange = None  # the exchange points at this channel: no cycle left behind
        if port is not None:
            port.stopListening()

    def datagramReceived(self, datagram: bytes, addr) -> None:
        """Pass a datagram on (none once closed)."""
        if self._exchange is not None:
            self._exchange.udp_datagram(datagram, addr)

    def connectionRefused(self) -> None:
        """ICMP port unreachable for the connected server."""
        if self._exchange is not None:
            self._exchange.refused()

    def stopProtocol(self) -> None:
        """
        The port closed.  When the channel did not close it, the reactor
        did because of a socket error: the epoll reactor turns the pending
        ECONNREFUSED of an ICMP port unreachable into a closed port rather
        than calling ``connectionRefused``.
        """
        if self._port is not None:
            self._port = None
            self._exchange.refused()


#: Datagrams a bare channel reads in one wake-up at most (its exchange
#: expects one; the rest are strays or late replies).
_READS_PER_WAKEUP = 16


class _BareChannel:
    """
    One exchange's own connected socket, watched by the reactor directly:
    the fresh mode's channel on posix reactors.

    A ``udp.Port`` per exchange costs more Python than the exchange itself
    (its constructor, ``startListening``, address checks on every write, the
    ``connectionLost`` chain); this is the socket, ``connect`` (which binds
    it to a random port of ``ip_local_port_range``, as ``bind`` to port 0
    does), one ``addReader`` and one ``removeReader``.  The kernel hands it
    only datagrams from the connected server and reports ICMP errors on it.
    """

    __slots__ = ("_reactor", "_exchange", "_socket", "_size", "_source", "fileno", "new_id")

    def __init__(self, reactor, exchange, address, size: int, ids):
        family = socket.AF_INET6 if address.ipv6 else socket.AF_INET
        # The C socket type itself: ``socket.socket`` only adds Python-level
        # wrappers (makefile's reference counting) that a datagram socket
        # never uses.  Non-blocking from birth: no ioctl afterwards.
        skt = _socket.socket(family, socket.SOCK_DGRAM | _SOCK_NONBLOCK)
        try:
            if not _SOCK_NONBLOCK:
                skt.setblocking(False)
            skt.connect((address.host, address.port))
        except BaseException:
            skt.close()
            raise
        self._reactor = reactor
        self._exchange = exchange
        self._socket = skt
        self._size = size
        self._source = (address.host, address.port)
        self.fileno = skt.fileno
        self.new_id = ids  # a random 16-bit ID (the socket is the exchange's own)
        reactor.addReader(self)

    def send(self, query_id: int, data: bytes) -> None:
        """Send a datagram to the server (raises OSError as ``send`` does)."""
        self._socket.send(data)

    def close(self) -> None:
        """Stop watching and close the socket; let go of the exchange."""
        skt, self._socket = self._socket, None
        self._exchange = None
        if skt is not None:
            self._reactor.removeReader(self)
            skt.close()

    def logPrefix(self) -> str:
        """What the reactor's log context calls this descriptor."""
        return "dnsgo-upstream"

    def doRead(self) -> None:
        """Hand what arrived to the exchange; an ICMP error refuses it."""
        for _ in range(_READS_PER_WAKEUP):
            skt = self._socket
            if skt is None:
                return
            try:
                data = skt.recv(self._size)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                exchange = self._exchange
                self.close()
                if exchange is not None:
                    exchange.refused()
                return
            exchange = self._exchange
            if exchange is None:
                return
            exchange.udp_datagram(data, self._source)

    def connectionLost(self, reason) -> None:
        """The reactor gave the descriptor up (it is shutting down): the exchange is refused."""
        exchange = self._exchange
        self.close()
        if exchange is not None:
            exchange.refused()


class FreshSockets:
    """A fresh connected socket for every exchange (see the module docstring)."""

    def __init__(self, reactor, size: int, ids):
        self._reactor = reactor
        self._bare = isinstance(reactor, PosixReactorBase)
        self._open = udp_opener(reactor)
        self._size = size
        self._ids = ids

    def open(self, exchange, address):
        """A channel for ``exchange`` to ``address``; raises when no socket can be had."""
        if self._bare:
            return _BareChannel(self._reactor, exchange, address, self._size, self._ids)
        channel = _FreshChannel(exchange, self._ids)
        channel._port = self._open(channel, address, self._size)
        return channel

    def close(self) -> None:
        """Nothing outlives its exchange."""


class _PooledSocket(DatagramProtocol):
    """One pooled socket connected to one server: routes replies by ID to the exchanges that sent them."""

    noisy = False

    def __init__(self, pool: SocketPool, key):
        self._pool = pool
        self.key = key
        self.port = None
        self.opened = pool._reactor.seconds()
        self.uses = 0
        self.leases = 0
        self.retired = False
        self.ids: dict[int, object] = {}  # query ID -> exchange

    def datagramReceived(self, datagram: bytes, addr) -> None:
        """Hand the datagram to the exchange that sent its ID, or count it as stray."""
        exchange = self.ids.get(int.from_bytes(datagram[:2], "big")) if len(datagram) >= 2 else None
        if exchange is None:
            self._pool._on_stray()
        else:
            exchange.udp_datagram(datagram, addr)

    def connectionRefused(self) -> None:
        """ICMP port unreachable: every exchange on this socket fails, and the socket is closed."""
        self._pool._lost(self, close=True)

    def stopProtocol(self) -> None:
        """The port closed; unless the pool closed it, that was a socket error (see _FreshChannel)."""
        if self.port is not None:
            self.port = None
            self._pool._lost(self, close=False)


class _PooledChannel:
    """One exchange's lease on a pooled socket."""

    def __init__(self, socket: _PooledSocket, exchange):
        self._socket = socket
        self._exchange = exchange
        self._ids: list[int] = []

    def new_id(self) -> int:
        """A random ID not in use on this socket (raises OSError when none is found)."""
        ids = self._socket.ids
        random_id = self._socket._pool._ids
        for _ in range(_ID_TRIES):
            query_id = random_id()
            if query_id not in ids:
                return query_id
        raise OSError("no free query ID on a pooled upstream socket")

    def send(self, query_id: int, data: bytes) -> None:
        """Register ``query_id`` for this exchange (until the lease ends) and send."""
        socket = self._socket
        if socket.port is None:
            raise OSError("pooled upstream socket closed")
        socket.ids[query_id] = self._exchange
        self._ids.append(query_id)
        socket.uses += 1
        socket._pool._maybe_retire(socket)
        socket.port.write(data)

    def close(self) -> None:
        """End the lease: forget its IDs; a retired socket closes with its last lease."""
        socket, self._socket = self._socket, None
        if socket is None:
            return
        for query_id in self._ids:
            socket.ids.pop(query_id, None)
        socket.leases -= 1
        if socket.retired and socket.leases <= 0:
            socket._pool._close(socket)


class SocketPool:
    """Up to ``settings.sockets`` connected sockets per upstream, renewed (see the module docstring)."""

    def __init__(self, reactor, size: int, settings: SocketPoolSettings, ids, on_stray=lambda: None):
        self._reactor = reactor
        self._ids = ids
        self._open_port = udp_opener(reactor)
        self._size = size
        self._settings = settings
        self._on_stray = on_stray
        self._live: dict = {}  # server key -> list of sockets taking new exchanges
        self._all: set[_PooledSocket] = set()

    def open(self, exchange, address) -> _PooledChannel:
        """
        A lease for ``exchange`` on a random socket to ``address``, opening
        one while the server has fewer than ``sockets``; raises when no
        socket exists and none can be opened.
        """
        key = (address.host, address.port)
        live = self._live.setdefault(key, [])
        for socket in list(live):
            self._maybe_retire(socket)
        if len(live) < self._settings.sockets:
            try:
                live.append(self._new_socket(key, address))
            except Exception:
                if not live:
                    raise
        socket = random.choice(live)
        socket.leases += 1
        return _PooledChannel(socket, exchange)

    def close(self) -> None:
        """Close every socket (the exchanges on them fail as refused)."""
        for socket in list(self._all):
            self._lost(socket, close=True)

    def _new_socket(self, key, address) -> _PooledSocket:
        socket = _PooledSocket(self, key)
        socket.port = self._open_port(socket, address, self._size)
        self._all.add(socket)
        return socket

    def _maybe_retire(self, socket: _PooledSocket) -> None:
        """Take a socket out of service after max_uses sends or max_age seconds."""
        if socket.retired:
            return
        settings = self._settings
        if socket.uses >= settings.max_uses or self._reactor.seconds() - socket.opened >= settings.max_age:
            socket.retired = True
            live = self._live.get(socket.key, [])
            if socket in live:
                live.remove(socket)
            if socket.leases <= 0:
                self._close(socket)

    def _close(self, socket: _PooledSocket) -> None:
        self._all.discard(socket)
        port, socket.port = socket.port, None
        if port is not None:
            port.stopListening()

    def _lost(self, socket: _PooledSocket, close: bool) -> None:
        """The socket failed (or the pool is closing): drop it and fail its exchanges."""
        socket.retired = True
        live = self._live.get(socket.key, [])
        if socket in live:
            live.remove(socket)
        exchanges = list(dict.fromkeys(socket.ids.values()))
        socket.ids.clear()
        if close:
            self._close(socket)
        else:
            self._all.discard(socket)
        for exchange in exchanges:
            exchange.refused()
