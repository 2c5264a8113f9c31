"""
The one map from exceptions to HTTP responses of the management API, and
the JSON replies it writes (every error response is JSON).
"""
import json

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from dnsgo.api import views
from dnsgo.api.auth import Unauthorized
from dnsgo.api.clear import RequestError, clip
from dnsgo.control.election import NotLeader

JSON_TYPE = b"application/json; charset=utf-8"

#: The longest reason an error response carries (values in it are cut shorter still).
MAX_REASON = 500


class BodyTooLarge(Exception):
    """A request body over ``limit`` bytes (HTTP 413); refused while it arrives, see dnsgo.api.site."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class Unavailable(Exception):
    """What the request needs cannot be reached now (HTTP 503): a worker that does not answer; the text says which."""


def error_response(error: BaseException) -> tuple[int, str, str, dict[bytes, bytes]]:
    """
    The one map from exceptions to responses: (status, error code, reason,
    extra headers).  Anything unexpected is a 500 whose reason reveals nothing.
    """
    if isinstance(error, RequestError):
        return 400, "bad_request", clip(str(error), MAX_REASON), {}
    if isinstance(error, Unavailable):
        return 503, "unavailable", clip(str(error), MAX_REASON), {}
    if isinstance(error, NotLeader):
        return 503, "not_leader", clip(str(error), MAX_REASON), {}
    if isinstance(error, BodyTooLarge):
        return 413, "payload_too_large", str(error), {b"Connection": b"close"}
    if isinstance(error, Unauthorized):
        return 401, "unauthorized", error.reason, {b"WWW-Authenticate": b'Bearer realm="dnsgo"'}
    if isinstance(error, NotFound):
        return 404, "not_found", "no such resource", {}
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        return 405, "method_not_allowed", f"allowed: {allowed}", {b"Allow": allowed.encode("ascii")}
    if isinstance(error, HTTPException):
        return error.code or 500, "http_error", error.description or error.name, {}
    return 500, "internal_error", "internal error; see the server log", {}


def json_reply(request, status: int, body, headers: dict[bytes, bytes] | None = None) -> bytes:
    """Set ``request``'s status and headers for a JSON reply and return the body to write."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return json.dumps(body, allow_nan=False).encode("utf-8") + b"\n"


def error_reply(request, error: BaseException) -> bytes:
    """The JSON error reply to ``error`` (status and headers set on ``request``), as error_response maps it;
    a standby's refusal also names the leader's API address (``leader``, null when there is none)."""
    status, code, reason, headers = error_response(error)
    body = views.error_body(code, reason)
    if isinstance(error, NotLeader):
        body["leader"] = error.leader or None
    return json_reply(request, status, body, headers)
