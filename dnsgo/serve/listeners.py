"""
The DNS listeners: UDP datagrams and RFC 7766 TCP streams, both feeding a
:class:`~dnsgo.serve.handler.QueryHandler`, and the service that binds them.

Sockets are created here rather than by ``reactor.listenUDP`` so that
``SO_REUSEPORT`` can be set: several worker processes then share one
address and the kernel spreads queries over them.

A TCP client holds a bounded amount of the server: one descriptor (the
number of connections is capped, below the open-file limit), at most
``TCP_OUTPUT_LIMIT`` bytes of replies it has not read plus the replies of
``TCP_MAX_IN_FLIGHT`` queries, and its connection for at most two idle
timeouts once it stops reading (one, when the kernel's buffers were
already full).
"""
import socket

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin

from dnsgo.serve import fdlimit


#: Datagrams the UDP listener reads in one wake-up at most before letting
#: the reactor serve its other descriptors (Twisted's ``udp.Port`` reads up
#: to 256 KiB).
UDP_READS_PER_WAKEUP = 256

#: The largest datagram read: larger ones are cut to this size by the kernel
#: and then fail to parse (FORMERR), as with ``udp.Port``.
UDP_MAX_DATAGRAM = 8192


class DNSDatagramListener:
    """
    The UDP socket, watched by the reactor directly (``addReader``): reads
    datagrams, answers each through the handler, and never raises into the
    reactor.

    It takes the place of a ``udp.Port`` and its protocol, whose three
    Python frames per datagram (``doRead``'s loop, ``datagramReceived``,
    ``write`` with three address checks) cost about a tenth of an L1 hit.
    Replies go straight to ``sendto``: the addresses come from
    ``recvfrom``.  A failed ``sendto`` (a full buffer, an unreachable
    client) drops the reply, as UDP is best effort.
    """

    log = Logger()

    def __init__(self, reactor, udp: socket.socket, handler) -> None:
        udp.setblocking(False)
        self._reactor = reactor
        self._socket = udp
        self._handler = handler
        self._recvfrom = udp.recvfrom
        self._sendto = udp.sendto
        self.fileno = udp.fileno

    def start(self) -> None:
        """Begin reading."""
        self._reactor.addReader(self)

    def stopListening(self) -> None:
        """Stop reading and close the socket (replies still due are dropped)."""
        skt, self._socket = self._socket, None
        self._sendto = None
        if skt is not None:
            self._reactor.removeReader(self)
            skt.close()

    def logPrefix(self) -> str:
        """What the reactor's log context calls this descriptor."""
        return "dnsgo-udp"

    def connectionLost(self, reason) -> None:
        """The reactor gave the descriptor up (it is shutting down)."""
        self.stopListening()

    def doRead(self) -> None:
        """Answer the datagrams waiting, up to ``UDP_READS_PER_WAKEUP`` of them."""
        recvfrom = self._recvfrom
        handle = self._handler.handle
        send = self._send
        for _ in range(UDP_READS_PER_WAKEUP):
            if self._socket is None:
                return
            try:
                data, addr = recvfrom(UDP_MAX_DATAGRAM)
            except BlockingIOError:
                return
            except OSError:
                # EINTR, or an error queued on the socket (an ICMP message
                # about an earlier reply): nothing to answer; read on.
                continue
            try:
                reply = handle(data, addr[0], False, send, addr)
            except Exception:
                self.log.failure("unexpected error answering {addr}", addr=addr)
                reply = self._handler.servfail(data)
            if reply is None:
                continue
            if type(reply) is bytes:
                sendto = self._sendto  # self._send, inlined for the hit path
                if sendto is not None:
                    try:
                        sendto(reply, addr)
                    except OSError:
                        pass
                continue
            reply.addCallback(self._send, addr)
            reply.addErrback(self._late_failure, data, addr)

    def _send(self, reply: bytes, addr) -> None:
        sendto = self._sendto
        if sendto is None:
            return
        try:
            sendto(reply, addr)
        except OSError:
            # A full socket buffer (EAGAIN) or an unreachable client: UDP
            # replies are best effort, and the client will retry.
            pass

    def _late_failure(self, failure, data: bytes, addr) -> None:
        self.log.failure("unexpected error answering {addr}", failure, addr=addr)
        reply = self._handler.servfail(data)
        if reply is not None:
            self._send(reply, addr)


#: Reply bytes a TCP connection may have waiting in user space (written but
#: not yet taken by the kernel) before dnsgo stops reading its queries: the
#: transport's write buffer limit, which makes it pause its producer.  It is
#: Twisted's default and holds the largest DNS message.
TCP_OUTPUT_LIMIT = 64 * 1024

#: Queries of one TCP connection being resolved at once; past it, the
#: connection's next queries stay unread until one is answered.
TCP_MAX_IN_FLIGHT = 16


def queued_output(transport) -> int:
    """
    Bytes written to a Twisted socket transport that the kernel has not
    taken yet (0 for transports that do not tell: only the
    ``FileDescriptor`` ones keep these attributes).
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except AttributeError:
        return 0


class DNSStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """
    DNS over TCP (RFC 7766): 2-byte length framing, many queries per
    connection, each answered as soon as it completes (so out of order).

    A client cannot make the server queue replies without bound: the
    protocol is the streaming producer of its transport, so once the
    transport holds more than ``output_limit`` unsent bytes it stops reading
    the client's queries (those already read wait unparsed) until the
    buffer drains; and at most ``max_in_flight`` of its queries are resolved
    at once.  After ``idle_timeout`` seconds with nothing received or sent
    the connection is closed: at once when nothing waits to be sent, aborted
    when the client took none of the waiting bytes in that time (a client
    that stopped reading), and given another period when it took some.
    """

    log = Logger()

    #: Queries handed to the handler whose replies have not arrived yet.
    _in_flight = 0
    #: The transport's write buffer is over its limit (it paused us).
    _blocked = False
    #: Inside dataReceived (resuming must then not re-enter it).
    _receiving = False
    #: Closing or closed: reading never resumes.
    _stopped = False
    #: Reply bytes (with their length prefix) handed to the transport.
    _written = 0
    #: How many of those the kernel had taken at the last activity.
    _flushed_mark = 0

    def connectionMade(self) -> None:
        factory = self.factory
        if not factory.connection_made(self):
            self._stopped = True
            return
        self._peer = self.transport.getPeer().host
        self.callLater = factory.reactor.callLater
        self.transport.bufferSize = factory.output_limit
        self.transport.registerProducer(self, True)
        self.setTimeout(factory.idle_timeout)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._stopped = True
        self.setTimeout(None)
        self.factory.connection_lost(self)

    def timeoutConnection(self) -> None:
        transport = self.transport
        queued = queued_output(transport)
        if not queued:
            self._close()
            return
        flushed = self._written - queued
        if flushed > self._flushed_mark:
            # The client reads, slowly: give it another period.
            self._flushed_mark = flushed
            self.setTimeout(self.factory.idle_timeout)
            return
        # The client took nothing for a whole period: loseConnection would
        # wait for it forever, holding the buffer.
        self.factory.stalled += 1
        self._stopped = True
        transport.abortConnection()

    def _close(self) -> None:
        """Close once the queued replies are sent (the idle timer still runs)."""
        if self._stopped:
            return
        self._stopped = True
        self.paused = True
        # A registered producer keeps loseConnection from ever closing.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    # IPushProducer, called by the transport about its write buffer.

    def pauseProducing(self) -> None:
        """The write buffer passed ``output_limit``: stop reading queries."""
        self._blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        """The write buffer drained: read queries again."""
        self._blocked = False
        self._flushed_mark = self._written
        self.resetTimeout()
        self._update_reading()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self._stopped = True
        self.paused = True

    def _update_reading(self) -> None:
        """Pause or resume reading the client's queries, as the limits say."""
        if self._stopped:
            return
        wait = self._blocked or self._in_flight >= self.factory.max_in_flight
        if wait:
            if not self.paused:
                self.paused = True
                self.transport.pauseProducing()
        elif self.paused:
            self.paused = False
            self.transport.resumeProducing()
            if not self._receiving:
                # Queries read before the pause are parsed now; inside
                # dataReceived its own loop carries on instead.
                self.dataReceived(b"")

    def dataReceived(self, data: bytes) -> None:
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False

    def stringReceived(self, data: bytes) -> None:
        self.resetTimeout()
        handler = self.factory.handler
        try:
            reply = handler.handle(data, self._peer, tcp=True)
        except Exception:
            self.log.failure("unexpected error answering {peer}", peer=self._peer)
            reply = handler.servfail(data)
        if reply is None:
            # RFC 7766 §6.2.2: a query we cannot answer ends the connection.
            self._close()
            return
        if isinstance(reply, bytes):
            self._send(reply)
            return
        self._in_flight += 1
        reply.addCallback(self._send)
        reply.addErrback(self._late_failure, data)
        reply.addBoth(self._answered)
        if self._in_flight >= self.factory.max_in_flight:
            self._update_reading()

    def _answered(self, _) -> None:
        self._in_flight -= 1
        self._update_reading()

    def _send(self, reply: bytes) -> None:
        transport = self.transport
        if transport is not None and self.connected:
            self.resetTimeout()
            self._flushed_mark = self._written - queued_output(transport)
            self._written += 2 + len(reply)
            self.sendString(reply)

    def _late_failure(self, failure, data: bytes) -> None:
        self.log.failure("unexpected error answering {peer}", failure, peer=self._peer)
        reply = self.factory.handler.servfail(data)
        if reply is not None:
            self._send(reply)


class DNSStreamFactory(protocol.ServerFactory):
    """
    Makes TCP connections and caps how many are open at once; counts those
    refused at the cap (``refused``) and those aborted because the client
    stopped reading (``stalled``).
    """

    protocol = DNSStreamProtocol
    noisy = False

    def __init__(
        self,
        handler,
        *,
        idle_timeout: float = 10.0,
        max_connections: int = 1000,
        max_in_flight: int = TCP_MAX_IN_FLIGHT,
        output_limit: int = TCP_OUTPUT_LIMIT,
        reactor,
    ) -> None:
        self.reactor = reactor
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_in_flight = max_in_flight
        self.output_limit = output_limit
        self.connections: set = set()
        self.refused = 0
        self.stalled = 0

    def connection_made(self, proto) -> bool:
        """Track a new connection; past the limit abort it and return False."""
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            proto.transport.abortConnection()
            return False
        self.connections.add(proto)
        return True

    def connection_lost(self, proto) -> None:
        """Forget a closed connection."""
        self.connections.discard(proto)


def bind_socket(host: str, port: int, kind: int, *, reuse_port: bool) -> socket.socket:
    """
    A bound (and for TCP, listening) non-blocking socket, with
    ``SO_REUSEPORT`` when several processes share the address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # TIME_WAIT must not block a restart; on UDP it would let a second
            # server steal the port, so it is not set there.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DNSService(service.Service):
    """
    Listens for DNS on one address over UDP and, when enabled, TCP.

    With port 0 the UDP port is chosen by the OS and TCP binds the same
    number; ``udp_port`` / ``tcp_port`` tell what was bound.

    At most ``tcp_max_connections`` client TCP connections are open at once,
    and fewer when the open-file limit ``descriptor_limit`` (by default this
    process's soft RLIMIT_NOFILE; None: unlimited) would leave too few
    descriptors for the upstream sockets: see :mod:`dnsgo.serve.fdlimit`.
    """

    log = Logger()

    def __init__(
        self,
        handler,
        host: str,
        port: int,
        *,
        enable_tcp: bool = True,
        reuse_port: bool = False,
        tcp_idle_timeout: float = 10.0,
        tcp_max_connections: int = 1000,
        descriptor_limit=fdlimit.PROCESS_LIMIT,
        reactor,
    ) -> None:
        self._reactor = reactor
        self._handler = handler
        self._host = host
        self._port = port
        self._enable_tcp = enable_tcp
        self._reuse_port = reuse_port
        if descriptor_limit is fdlimit.PROCESS_LIMIT:
            descriptor_limit = fdlimit.open_file_limit()
        self.descriptor_limit = descriptor_limit
        self.configured_tcp_max_connections = tcp_max_connections
        self.tcp_factory = DNSStreamFactory(
            handler,
            idle_timeout=tcp_idle_timeout,
            max_connections=fdlimit.tcp_connection_cap(tcp_max_connections, descriptor_limit),
            reactor=reactor,
        )
        self._listening: list = []
        self.udp_port = self.tcp_port = None

    def startService(self) -> None:
        super().startService()
        cap = self.tcp_factory.max_connections
        if self._enable_tcp and cap < self.configured_tcp_max_connections:
            self.log.warn(
                "tcp_max_connections lowered from {configured} to {cap}: the open-file limit is {limit}, "
                "and {reserve} descriptors are kept for upstream sockets, Redis and the listeners",
                configured=self.configured_tcp_max_connections,
                cap=cap,
                limit=self.descriptor_limit,
                reserve=fdlimit.descriptor_reserve(self.descriptor_limit),
            )
        # With port 0 the OS picks the UDP port, and TCP may find that number
        # taken: then both are tried again.
        for attempt in range(1 if self._port else 20):
            udp = bind_socket(self._host, self._port, socket.SOCK_DGRAM, reuse_port=self._reuse_port)
            tcp = None
            try:
                port = udp.getsockname()[1]
                if self._enable_tcp:
                    try:
                        tcp = bind_socket(self._host, port, socket.SOCK_STREAM, reuse_port=self._reuse_port)
                    except OSError:
                        if self._port or attempt == 19:
                            raise
                        continue
                self._adopt(udp, tcp)
                self.udp_port = port
                self.tcp_port = port if tcp is not None else None
                break
            finally:
                udp.close()
                if tcp is not None:
                    tcp.close()
        self.log.info(
            "DNS listening on {host} port {port} (udp{tcp})",
            host=self._host,
            port=self.udp_port,
            tcp="+tcp" if self._enable_tcp else "",
        )

    def _adopt(self, udp: socket.socket, tcp: socket.socket | None) -> None:
        family = udp.family
        listener = DNSDatagramListener(self._reactor, udp.dup(), self._handler)
        listener.start()
        self._listening.append(listener)
        if tcp is not None:
            self._listening.append(self._reactor.adoptStreamPort(tcp.fileno(), family, self.tcp_factory))

    def stopService(self):
        super().stopService()
        listening, self._listening = self._listening, []
        for conn in list(self.tcp_factory.connections):
            conn.transport.abortConnection()
        return defer.gatherResults(
            [defer.maybeDeferred(p.stopListening) for p in listening], consumeErrors=True
        )
