"""
The management API over HTTP, for ``dnsgoctl``: requests with the bearer
token and a timeout, and every way one can fail turned into a
:class:`~dnsgo.ctl.errors.CtlError` with its exit code.

Requests go through urllib with no proxy (a management API is reached
directly; ``$http_proxy`` must not receive the token) and without following
redirects (a redirect would carry the ``Authorization`` header to another
place).  Uploads (``load``) go through http.client instead, because the API
answers 401 or 413 as soon as it has the headers, before reading the body:
the upload stops sending when an answer arrives and reads it, so a wrong
token is reported as such and not as a broken connection.
"""
from __future__ import annotations

import http.client
import json
import select
import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, BinaryIO

from dnsgo import __version__
from dnsgo.ctl.errors import BadRequest, CtlError, HttpError, Unauthorized, Unreachable
from dnsgo.ctl.settings import Settings

#: The most of an error answer read (the API keeps its reasons under 500 characters).
ERROR_BODY_LIMIT = 64 * 1024
#: How much of a file an upload sends at a time.
UPLOAD_CHUNK = 64 * 1024


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the answer is reported as the HTTP error it is."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class ApiClient:
    """The management API at ``settings.api_url``, asked with ``settings.token``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    # -- requests ------------------------------------------------------------

    def get_json(self, path: str, query: dict | None = None) -> Any:
        """GET ``path``; the JSON body of a 2xx answer."""
        with self.open("GET", path, query) as response:
            return self._json(self._read(response, "GET", path), "GET", path)

    def send_json(self, method: str, path: str, body: Any, query: dict | None = None) -> Any:
        """``method path`` with ``body`` as JSON; the JSON body of a 2xx answer."""
        data = json.dumps(body).encode()
        with self.open(method, path, query, data, "application/json") as response:
            return self._json(self._read(response, method, path), method, path)

    def open(self, method: str, path: str, query: dict | None = None, data: bytes | None = None,
             content_type: str | None = None):
        """
        Send a request; the urllib response of a 2xx answer, to read (a
        stream, for dumps) and close.  Raises CtlError for anything else.
        """
        request = urllib.request.Request(self.url(path, query), data=data, method=method)
        for name, value in self._headers(content_type):
            request.add_header(name, value)
        try:
            return self._opener.open(request, timeout=self.settings.timeout)
        except urllib.error.HTTPError as error:
            with error:
                raise self.status_error(error.code, _read_error_body(error), method, path) from None
        except urllib.error.URLError as error:
            raise self.unreachable(error.reason) from None
        except (OSError, http.client.HTTPException) as error:
            raise self.unreachable(error) from None

    def upload(self, path: str, source: BinaryIO, length: int, query: dict | None = None,
               content_type: str = "application/x-ndjson") -> Any:
        """
        POST ``length`` bytes read from ``source`` to ``path``; the JSON
        body of a 2xx answer.  Stops sending as soon as the API answers (on
        plain http: TLS may send records of its own that cannot be told apart).
        """
        parts = urllib.parse.urlsplit(self.url(path, query))
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(parts.hostname, parts.port, timeout=self.settings.timeout)
        target = urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
        watch = parts.scheme == "http"
        try:
            connection.putrequest("POST", target, skip_accept_encoding=True)
            for name, value in self._headers(content_type):
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(length))
            connection.endheaders()
            sent = 0
            while sent < length and not (watch and _answered(connection.sock)):
                chunk = source.read(min(UPLOAD_CHUNK, length - sent))
                if not chunk:
                    break
                try:
                    connection.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break  # it stopped reading: its answer says why
                sent += len(chunk)
            response = connection.getresponse()
            if not 200 <= response.status < 300:
                raise self.status_error(response.status, response.read(ERROR_BODY_LIMIT), "POST", path)
            return self._json(self._read(response, "POST", path), "POST", path)
        except CtlError:
            raise
        except (OSError, http.client.HTTPException) as error:
            raise self.unreachable(error) from None
        finally:
            connection.close()

    def lines(self, response, what: str, limit: int):
        """The lines of a streamed answer (each at most ``limit`` bytes); Unreachable if the stream breaks."""
        while True:
            try:
                line = response.readline(limit)
            except (OSError, http.client.HTTPException) as error:
                raise Unreachable(f"the API stopped sending {what}: {_why(error, self.settings.timeout)}") from None
            if not line:
                return
            yield line

    # -- pieces --------------------------------------------------------------

    def url(self, path: str, query: dict | None = None) -> str:
        """The full URL of ``path`` with ``query`` (None values left out)."""
        url = self.settings.api_url + path
        pairs = [(k, v) for k, v in (query or {}).items() if v is not None]
        return f"{url}?{urllib.parse.urlencode(pairs)}" if pairs else url

    def _headers(self, content_type: str | None):
        yield "Accept", "application/json"
        yield "User-Agent", f"dnsgoctl/{__version__}"
        if content_type is not None:
            yield "Content-Type", content_type
        if self.settings.token:
            yield "Authorization", f"Bearer {self.settings.token}"

    def _read(self, response, method: str, path: str) -> bytes:
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as error:
            raise Unreachable(f"the API stopped answering {method} {path}: {_why(error, self.settings.timeout)}") \
                from None

    @staticmethod
    def _json(body: bytes, method: str, path: str) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise HttpError(f"{method} {path}: the answer is not JSON (is this the dnsgo API?)") from None

    def status_error(self, status: int, body: bytes, method: str, path: str) -> CtlError:
        """The CtlError for an HTTP error ``status`` with ``body`` (the API's {"error", "reason"})."""
        error, reason = _error_fields(body)
        if status == 401:
            return Unauthorized(f"unauthorized: {reason or 'HTTP 401'} "
                                f"(the token came from {self.settings.token_source})")
        if status == 400:
            return BadRequest(f"bad request: {reason or 'HTTP 400 without a reason'}")
        if 300 <= status < 400:
            return HttpError(f"{method} {path}: HTTP {status}, a redirect, which dnsgoctl does not follow; "
                             "give the API's own address", status)
        detail = ": ".join(x for x in (error, reason) if x)
        return HttpError(f"{method} {path}: HTTP {status}" + (f" {detail}" if detail else ""), status)

    def unreachable(self, reason) -> Unreachable:
        """The Unreachable for a failure to connect or to get an answer."""
        return Unreachable(f"cannot reach the API at {self.settings.api_url} "
                           f"(from {self.settings.api_source}): {_why(reason, self.settings.timeout)}")


def _answered(sock) -> bool:
    """Whether the other end sent something (an early answer) or closed."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _read_error_body(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read(ERROR_BODY_LIMIT)
    except (OSError, http.client.HTTPException):
        return b""


def _error_fields(body: bytes) -> tuple[str, str]:
    """The API's ``error`` and ``reason`` from an error body ('' when absent)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    return str(data.get("error") or ""), str(data.get("reason") or "")


def _why(reason, timeout: float) -> str:
    """A short text for a connection failure."""
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror})"
    if isinstance(reason, http.client.RemoteDisconnected):
        return "it closed the connection without answering"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[0].lower() + reason.strerror[1:]
    text = str(reason) or type(reason).__name__
    return text
