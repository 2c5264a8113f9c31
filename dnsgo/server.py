"""
The DNS listeners: UDP datagrams and RFC 7766 TCP streams, both feeding a
:class:`~dnsgo.handler.QueryHandler`, and the service that binds them.

Sockets are created here rather than by ``reactor.listenUDP`` so that
``SO_REUSEPORT`` can be set: several worker processes then share one
address and the kernel spreads queries over them.
"""
import socket

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.protocols.policies import TimeoutMixin


class DNSDatagramProtocol(protocol.DatagramProtocol):
    """Answers each datagram through the handler; never raises into the reactor."""

    log = Logger()

    def __init__(self, handler) -> None:
        self._handler = handler
        self._sendto = None

    def startProtocol(self) -> None:
        # Replies go straight to the socket: the addresses come from
        # recvfrom, so udp.Port.write's per-datagram address checks (three
        # isIPAddress calls) are wasted on the hot path.
        self._sendto = self.transport.socket.sendto

    def stopProtocol(self) -> None:
        self._sendto = None

    def datagramReceived(self, data: bytes, addr) -> None:
        try:
            reply = self._handler.handle(data, addr[0])
        except Exception:
            self.log.failure("unexpected error answering {addr}", addr=addr)
            reply = self._handler.servfail(data)
        if reply is None:
            return
        if type(reply) is bytes:
            self._send(reply, addr)
            return
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


class DNSStreamProtocol(Int16StringReceiver, TimeoutMixin):
    """
    DNS over TCP (RFC 7766): 2-byte length framing, many queries per
    connection, each answered as soon as it completes (so out of order), and
    closed after ``idle_timeout`` seconds with nothing received or sent.
    """

    log = Logger()

    def connectionMade(self) -> None:
        self.factory.connection_made(self)
        self._peer = self.transport.getPeer().host
        self.callLater = self.factory.reactor.callLater
        self.setTimeout(self.factory.idle_timeout)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.setTimeout(None)
        self.factory.connection_lost(self)

    def timeoutConnection(self) -> None:
        self.transport.loseConnection()

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
            self.transport.loseConnection()
            return
        if isinstance(reply, bytes):
            self._send(reply)
            return
        reply.addCallback(self._send)
        reply.addErrback(self._late_failure, data)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and self.connected:
            self.resetTimeout()
            self.sendString(reply)

    def _late_failure(self, failure, data: bytes) -> None:
        self.log.failure("unexpected error answering {peer}", failure, peer=self._peer)
        reply = self.factory.handler.servfail(data)
        if reply is not None:
            self._send(reply)


class DNSStreamFactory(protocol.ServerFactory):
    """Makes TCP connections and caps how many are open at once."""

    protocol = DNSStreamProtocol
    noisy = False

    def __init__(self, handler, *, idle_timeout: float = 10.0, max_connections: int = 1000, reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set = set()

    def connection_made(self, proto) -> None:
        """Track a new connection, refusing it past the limit."""
        if len(self.connections) >= self.max_connections:
            proto.transport.abortConnection()
            return
        self.connections.add(proto)

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
        reactor=None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._handler = handler
        self._host = host
        self._port = port
        self._enable_tcp = enable_tcp
        self._reuse_port = reuse_port
        self.tcp_factory = DNSStreamFactory(
            handler,
            idle_timeout=tcp_idle_timeout,
            max_connections=tcp_max_connections,
            reactor=reactor,
        )
        self._listening: list = []
        self.udp_port = self.tcp_port = None

    def startService(self) -> None:
        super().startService()
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
        self._listening.append(self._reactor.adoptDatagramPort(udp.fileno(), family, DNSDatagramProtocol(self._handler)))
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
