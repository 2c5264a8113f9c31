"""
The twisted.web Site the management API listens with (:class:`APISite`).

twisted.web's own Request reads a whole request body (into memory, or a
temporary file past 100 kB) before any resource sees the request, so a
check in a route comes too late: an unauthenticated client could stream
gigabytes to disk only to be told 401.  :class:`APIRequest` acts while the
request arrives instead:

* as soon as the headers are in (``gotLength``) and a body is announced,
  a request for a route that needs the token is refused with 401 unless it
  carries exactly one right ``Authorization`` header, and a declared
  ``Content-Length`` over :data:`MAX_BODY_BYTES` with 413; nothing of the
  body has been read then;
* a chunked body is counted as it arrives (``handleContentChunk``) and
  refused with 413 the moment it passes the cap;
* an accepted body is kept in memory (it is at most the cap), and form
  bodies are never parsed into ``request.args``.

A refused request gets the API's usual JSON error (``dnsgo.api.app.
error_response`` maps it) with ``Connection: close``; then the sending side
of the connection is shut, and what the client still sends of its body is
read and dropped for a moment (at most :data:`DRAIN_BYTES` or
:data:`DRAIN_SECONDS`) before the connection is cut, so that the client
reads the answer rather than a reset.

Requests without a body are left to the routes, which check the token
themselves (as they also do, a second time, for requests let through here).

The access log (:func:`redacted_log_formatter`) is Twisted's combined log
format with the query string of the request-target and of the Referer
dropped: a token tried as ``?token=...`` must not be written to the log.
"""
import io

from twisted.web import http, server
from twisted.web.iweb import IAccessLogFormatter
from zope.interface import provider

from dnsgo.api.errors import BodyTooLarge, error_reply
from dnsgo.api.auth import Unauthorized

#: The largest request body accepted, in bytes (a clear request is well under 1 kB).
MAX_BODY_BYTES = 64 * 1024
#: The cap of a cache load's body (``api.max_load_mb``), the one route that takes large bodies.
MAX_LOAD_BYTES = 64 * 2**20
LOAD_PATHS = frozenset({b"/api/cache/load"})
#: After refusing a request whose body is still coming, how long, and how
#: many bytes of it, to read and drop before cutting the connection.
DRAIN_SECONDS = 5.0
DRAIN_BYTES = 1 << 20


def without_query(target: bytes) -> bytes:
    """``target`` (a request-target or a URL) without its query string or fragment."""
    return target.split(b"?", 1)[0].split(b"#", 1)[0]


class _LoggedRequest:
    """What the access log sees of a request: the request-target and the Referer without their query strings."""

    def __init__(self, request) -> None:
        self._request = request
        self.uri = without_query(request.uri)

    def getHeader(self, name):
        value = self._request.getHeader(name)
        if value is not None and name.lower() in (b"referer", "referer"):
            value = without_query(value if isinstance(value, bytes) else value.encode("latin-1"))
        return value

    def __getattr__(self, name):
        return getattr(self._request, name)


@provider(IAccessLogFormatter)
def redacted_log_formatter(timestamp: str, request) -> str:
    """Twisted's combined access-log line for ``request``, with no query string in it (see the module doc)."""
    return http.combinedLogFormatter(timestamp, _LoggedRequest(request))


class APIRequest(server.Request):
    """A twisted.web Request that refuses before or while its body arrives (see the module doc)."""

    _refused = False
    _received = 0
    _drained = 0
    _drain_timer = None

    def __init__(self, channel, *args, **kwargs) -> None:
        # The API reads JSON itself; form bodies are never parsed into args.
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        """The headers are in; ``length`` is the declared body length, None for a chunked body."""
        # An accepted body is at most the cap: memory, never a temporary file.
        self.content = io.BytesIO()
        if length == 0:
            return
        try:
            self.channel.site.check_headers(self, length)
        except (Unauthorized, BodyTooLarge) as error:
            self._refuse(error)

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a piece of the body, or drop it once the request is refused; refuse past the cap."""
        if self._refused:
            self._drain(len(data))
            return
        self._received += len(data)
        limit = self.channel.site.body_limit(getattr(self.channel, "_path", None))
        if self._received > limit:
            self.content.close()
            self.content = io.BytesIO()
            self._refuse(BodyTooLarge(limit))
            return
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: process the request, or, refused, close (the answer is already out)."""
        if self._refused:
            self._stop_draining()
            if self.channel is not None:
                self.channel.loseConnection()
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason) -> None:
        self._stop_draining()
        super().connectionLost(reason)

    def _refuse(self, error: BaseException) -> None:
        """Answer ``error`` now, before the body is (all) read, then stop sending and drain."""
        channel = self.channel
        self._refused = True
        # Request.requestReceived, which copies the request line here, runs
        # only after the body; the channel has parsed it already.
        self.method = getattr(channel, "_command", self.method)
        self.uri = getattr(channel, "_path", self.uri)
        self.clientproto = getattr(channel, "_version", b"HTTP/1.1")
        self.path = self.uri.split(b"?", 1)[0]
        # No "100 Continue" after the answer (allHeadersReceived sends it after gotLength).
        self.requestHeaders.removeHeader(b"Expect")
        channel.persistent = False
        body = error_reply(self, error)
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.setHeader(b"Connection", b"close")
        self.setHeader(b"Date", http.datetimeToString())
        self.write(body)
        self.finished = 1
        channel.site.log(self)
        # Half-close: the answer goes out and is followed by a FIN while the
        # rest of the body is still read (and dropped), so the client sees the
        # answer, not a reset for unread data.
        self.transport.unregisterProducer()
        self.transport.loseWriteConnection()
        self._drain_timer = channel.site.reactor.callLater(DRAIN_SECONDS, self._abort)

    def _drain(self, size: int) -> None:
        self._drained += size
        if self._drained > DRAIN_BYTES:
            self._abort()

    def _stop_draining(self) -> None:
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None

    def _abort(self) -> None:
        """Enough of a refused body: cut the connection."""
        self._stop_draining()
        if not self._disconnected:
            self.transport.abortConnection()


class APISite(server.Site):
    """
    The Site serving a ManagementAPI: its resource, :class:`APIRequest`
    (token checked before the body, body capped at ``max_body`` bytes) and
    :func:`redacted_log_formatter`, on ``reactor`` (required: twisted.web
    would otherwise take the global one).  Other keyword arguments
    (``logPath``, ``timeout``) are twisted.web.server.Site's.
    """

    requestFactory = APIRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, api, *, reactor, max_body: int = MAX_BODY_BYTES, max_load_body: int = MAX_LOAD_BYTES, **kwargs) -> None:
        kwargs.setdefault("logFormatter", redacted_log_formatter)
        super().__init__(api.resource(), reactor=reactor, **kwargs)
        self.api = api
        self.max_body = max_body
        self.max_load_body = max_load_body

    def body_limit(self, target: bytes | None) -> int:
        """The largest body a request for ``target`` may send: ``max_load_body`` for a cache load, else ``max_body``."""
        if target is not None and without_query(target) in LOAD_PATHS:
            return self.max_load_body
        return self.max_body

    def check_headers(self, request: APIRequest, length: int | None) -> None:
        """
        Raise Unauthorized or BodyTooLarge to refuse ``request`` before its
        body is read: its headers are in and a body of ``length`` bytes (None:
        chunked, unknown) is coming.  The token comes first, so an
        unauthenticated client learns nothing from the size check.
        """
        # The channel has parsed the request line but not yet handed it to the
        # request; should a Twisted version not keep it there, check the token.
        method = getattr(request.channel, "_command", None)
        target = getattr(request.channel, "_path", None)
        if method is None or target is None or self.api.needs_token(method, target):
            self.api.check_token(request.requestHeaders.getRawHeaders(b"Authorization"))
        limit = self.body_limit(target)
        if length is not None and length > limit:
            raise BodyTooLarge(limit)
