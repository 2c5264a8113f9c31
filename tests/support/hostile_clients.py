"""
Hostile DNS clients for the resource-exhaustion tests, on plain sockets (not
Twisted, so that nothing reads for them behind their back):

* :class:`NonReadingClient`: a TCP connection that pipelines many queries
  and never reads a reply;
* :func:`open_idle_connections`: TCP connections that send nothing at all;
* :func:`tcp_state`: the kernel's state of a client socket, which tells
  whether the server closed or reset it without reading from it;
* :func:`udp_burst`: many UDP queries at once from as many sockets (blocking:
  run it in a thread when the server is in the test's own process).
"""
import selectors
import socket
import struct
import time

#: Linux TCP states (include/net/tcp_states.h), the first byte of TCP_INFO.
TCP_ESTABLISHED = 1
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8


def framed(wire: bytes) -> bytes:
    """A DNS message with its RFC 7766 two-byte length."""
    return struct.pack("!H", len(wire)) + wire


def with_id(wire: bytes, query_id: int) -> bytes:
    """``wire`` with its ID replaced."""
    return struct.pack("!H", query_id & 0xFFFF) + wire[2:]


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (Linux): TCP_ESTABLISHED while open, TCP_CLOSE after a reset."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed (FIN) or reset (RST) this connection."""
    return tcp_state(sock) != TCP_ESTABLISHED


class NonReadingClient:
    """
    A TCP client that writes ``count`` framed copies of ``query`` (with IDs
    0, 1, ...) as fast as the kernel takes them and never reads: its small
    receive buffer fills at once and the server's replies pile up on the
    server's side.  :meth:`pump` writes what the kernel refused earlier.
    """

    def __init__(self, port: int, query: bytes, count: int, *, host: str = "127.0.0.1", rcvbuf: int = 4096):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect, so that the advertised window stays small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        self.sock.setblocking(False)
        self._pending = memoryview(b"".join(framed(with_id(query, i)) for i in range(count)))
        self.sent = 0
        self.pump()

    def pump(self) -> int:
        """Write as much of the rest as the kernel takes now; returns the bytes still unsent."""
        while self._pending:
            try:
                n = self.sock.send(self._pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # Reset by the server: nothing more to send.
                self._pending = memoryview(b"")
                break
            self.sent += n
            self._pending = self._pending[n:]
        return len(self._pending)

    @property
    def closed_by_peer(self) -> bool:
        """Whether the server closed or reset the connection."""
        return closed_by_peer(self.sock)

    def close(self) -> None:
        """Close the socket (a reset, since replies are unread)."""
        self.sock.close()


def open_non_reading_clients(port: int, query: bytes, clients: int, count: int, **kw) -> list[NonReadingClient]:
    """``clients`` :class:`NonReadingClient` connections, each pipelining ``count`` queries."""
    return [NonReadingClient(port, query, count, **kw) for _ in range(clients)]


def open_idle_connections(port: int, count: int, host: str = "127.0.0.1") -> list[socket.socket]:
    """
    Up to ``count`` TCP connections to ``host:port`` that send nothing.
    connect() returns once the kernel completes the handshake, whether or
    not the server has accepted the connection yet.  A server past its
    connection cap accepts and resets the extra ones; when that reset lands
    before connect() has reported, the socket is closed and left out, so
    fewer than ``count`` may come back.
    """
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5.0)
            try:
                s.connect((host, port))
            except ConnectionResetError:
                s.close()
                continue
            except BaseException:
                s.close()
                raise
            socks.append(s)
            s.setblocking(False)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def udp_burst(port: int, queries: list[bytes], timeout: float = 5.0, host: str = "127.0.0.1") -> list[bytes | None]:
    """
    Send every query at once, each from its own UDP socket, and wait up to
    ``timeout`` seconds in all for the replies; returns the reply bytes in
    the queries' order (None where none came).  Blocking.
    """
    socks = []
    selector = selectors.DefaultSelector()
    try:
        for i, q in enumerate(queries):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ, i)
            s.sendto(q, (host, port))
        replies: list[bytes | None] = [None] * len(queries)
        waiting = len(queries)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in selector.select(left):
                try:
                    replies[key.data] = key.fileobj.recv(65535)
                except OSError:
                    pass
                selector.unregister(key.fileobj)
                waiting -= 1
        return replies
    finally:
        selector.close()
        for s in socks:
            s.close()
