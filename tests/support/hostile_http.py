"""
A hostile HTTP/1.1 client for tests: raw bytes over a blocking socket to
127.0.0.1, so a test can send what a well-behaved client never would (a
Content-Length of 3 GB followed by a few kB, two Authorization headers, a
chunked body without its last chunk) and see exactly what the server
answers, how soon, and whether it then closes the connection.

The blocking exchange runs in the reactor's thread pool (:func:`exchange`)
while the reactor serves the request in its own thread.
"""
import json
import socket
import time
from collections.abc import Iterable

import attrs
from twisted.internet import threads

#: How long a test waits for a response before it counts as none.
ANSWER_TIMEOUT = 5.0
#: How long, after a response, to wait for the server to close.
CLOSE_TIMEOUT = 2.0


class NoAnswer(AssertionError):
    """The server sent no complete response in time (it is probably reading the body)."""


@attrs.frozen
class RawResponse:
    """
    What came back: status, reason, headers (names lower-cased, in order),
    the body (de-chunked), whether the server closed the connection after
    the response (``closed``) and whether that was a reset (``reset``),
    ``seconds`` from the first byte sent to the end of the response, and the
    statuses of interim (1xx) responses before it.
    """

    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    closed: bool
    reset: bool
    seconds: float
    interim: tuple[int, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of a header, in order."""
        return [value for key, value in self.headers if key == name.lower()]

    def json(self):
        """The body decoded as JSON."""
        return json.loads(self.body)


def bearer(token: str) -> tuple[bytes, bytes]:
    """An ``Authorization: Bearer <token>`` header."""
    return (b"Authorization", b"Bearer " + token.encode())


def request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """The request line and headers of an HTTP/1.1 request (with ``Host``), ending in the blank line."""
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


#: The chunk that ends a chunked body.
LAST_CHUNK = b"0\r\n\r\n"


def exchange_blocking(port: int, parts: bytes | Iterable[bytes], timeout: float = ANSWER_TIMEOUT,
                      close_timeout: float = CLOSE_TIMEOUT) -> RawResponse:
    """
    Connect to 127.0.0.1:``port``, send ``parts`` (bytes, or pieces sent
    one after the other; a send the server refuses ends the sending), then
    read one response, then wait up to ``close_timeout`` seconds for the
    server to close.  Raises NoAnswer when no response is complete within
    ``timeout`` seconds.
    """
    if isinstance(parts, bytes):
        parts = [parts]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        start = time.monotonic()
        for part in parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        reader = _Reader(sock, start + timeout)
        status, reason, headers, interim = _read_head(reader)
        response_headers = dict(headers)
        if b"chunked" in response_headers.get(b"transfer-encoding", b"").lower():
            body = _read_chunked(reader)
        elif b"content-length" in response_headers:
            body = reader.exactly(int(response_headers[b"content-length"]))
        else:
            body = reader.rest()
        seconds = time.monotonic() - start
        closed, reset = reader.closes(close_timeout)
        return RawResponse(status, reason, tuple(headers), body, closed, reset, seconds, interim)
    finally:
        sock.close()


def exchange(port: int, parts: bytes | Iterable[bytes], timeout: float = ANSWER_TIMEOUT,
             close_timeout: float = CLOSE_TIMEOUT):
    """:func:`exchange_blocking` in a thread; a Deferred firing with the RawResponse."""
    parts = [parts] if isinstance(parts, bytes) else list(parts)
    return threads.deferToThread(exchange_blocking, port, parts, timeout, close_timeout)


class _Reader:
    """Buffered reads from a socket until a deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.eof = False

    def _more(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer(f"no complete response in time; got {self.buffer[:200]!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise NoAnswer(f"no complete response in time; got {self.buffer[:200]!r}") from None
        if not data:
            self.eof = True
            raise NoAnswer(f"the connection closed before the response was complete; got {self.buffer[:200]!r}")
        self.buffer += data

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._more()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        try:
            while True:
                self._more()
        except NoAnswer:
            if not self.eof:
                raise
        data, self.buffer = self.buffer, b""
        return data

    def closes(self, timeout: float) -> tuple[bool, bool]:
        """(closed, reset): whether the server closes the connection within ``timeout`` seconds, and by a reset."""
        if self.eof:
            return True, False
        if timeout <= 0:
            return False, False
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True, False
        except socket.timeout:
            return False, False
        except ConnectionResetError:
            return True, True


def _read_head(reader: _Reader) -> tuple[int, bytes, list[tuple[bytes, bytes]], tuple[int, ...]]:
    interim = []
    while True:
        lines = reader.until(b"\r\n\r\n").split(b"\r\n")
        version, status, reason = (lines[0].split(b" ", 2) + [b""])[:3]
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        if not 100 <= int(status) < 200:
            return int(status), reason, headers, tuple(interim)
        interim.append(int(status))


def _read_chunked(reader: _Reader) -> bytes:
    body = b""
    while True:
        size = int(reader.until(b"\r\n").split(b";")[0], 16)
        if size == 0:
            reader.until(b"\r\n")
            return body
        body += reader.exactly(size)
        reader.exactly(2)
