"""
The management API: a Klein app bound to a :class:`ManagementAPI` instance.

It reads and acts on the cluster only through a :class:`ClusterView`, which
the composition root implements for a standalone process and for the
control plane.  Every error response is JSON, and exceptions are mapped to
HTTP statuses in one place (:func:`error_response`).
"""
import json
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from klein import Klein

import dnsgo
from dnsgo.api import views
from dnsgo.api.auth import Unauthorized, check_bearer
from dnsgo.api.clear import RequestError, clear_response_body, parse_clear_request
from dnsgo.api.openapi import openapi_document
from dnsgo.metrics import ClusterMetrics

JSON_TYPE = b"application/json; charset=utf-8"
#: What generate_latest() writes; every Prometheus version reads it.
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class WorkerView(Protocol):
    """What the API knows about one worker."""

    worker_id: str
    cluster_name: str
    address: str
    status: str  # "healthy" | "unhealthy"
    last_heartbeat: float | None  # Unix time
    snapshot: dict | None  # dnsgo.stats.worker_snapshot(), None before the first report


class ClusterView(Protocol):
    """The cluster as the management API sees and acts on it."""

    def mode(self) -> str:
        """The cache mode: standalone, local-only or hybrid."""

    def architecture(self) -> dict:
        """The seed's ``architecture`` object (description, l1Type, l2Type, replication, invalidation, features)."""

    def ready(self) -> bool:
        """True when DNS is being served."""

    def workers(self) -> list[WorkerView]:
        """Every known worker, healthy or not."""

    def shared_cache(self) -> Deferred:
        """Fires with {type, address, status, stats{hits, misses, hit_rate, size_bytes}, lastSync} or None."""

    def clear(self, target: str, worker_ids: list[str] | None, cache_types: list[str],
              name: str | None, type: str | None, subtree: bool) -> Deferred:
        """Clear caches; fires with {results: [{workerId, success, cleared}], sharedCleared}.
        Raises KeyError at once for unknown worker ids."""

    def upstreams(self) -> list[dict]:
        """[{workerId, upstreams: [L3 entries as in the snapshot]}]."""


def error_response(error: BaseException) -> tuple[int, str, str, dict[bytes, bytes]]:
    """
    The one map from exceptions to responses: (status, error code, reason,
    extra headers).  Anything unexpected is a 500 whose reason reveals nothing.
    """
    if isinstance(error, RequestError):
        return 400, "bad_request", str(error), {}
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


def _json(request, status: int, body, headers: dict[bytes, bytes] | None = None) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    request.setHeader(b"Cache-Control", b"no-store")
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return json.dumps(body, allow_nan=False).encode("utf-8") + b"\n"


class ManagementAPI:
    """
    The HTTP management API over a ClusterView.  ``token`` is the bearer
    token ('' disables authentication; then listen on loopback only, see
    dnsgo.api.auth.check_listen_allowed).  Serve :meth:`resource`.
    """

    app = Klein()
    log = Logger()

    def __init__(self, view: ClusterView, token: str = "", reactor=None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._view = view
        self._token = token.encode("utf-8")
        self._metrics = ClusterMetrics(view, reactor=reactor)
        self._openapi = openapi_document(dnsgo.__version__)

    @property
    def metrics(self) -> ClusterMetrics:
        """The Prometheus side (its ``registry`` is private to this instance)."""
        return self._metrics

    def resource(self):
        """The twisted.web resource serving this API."""
        return self.app.resource()

    def _authorize(self, request) -> None:
        check_bearer(request.getHeader(b"Authorization"), self._token)

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        status, error, reason, headers = error_response(failure.value)
        if status >= 500:
            self.log.failure(
                "management API: {method} {path} failed", failure,
                method=request.method.decode("ascii", "replace"), path=request.path.decode("ascii", "replace"),
            )
        return _json(request, status, views.error_body(error, reason), headers)

    @app.route("/api/health", methods=["GET"])
    def health(self, request):
        """Liveness: always ok while the process answers; no token needed."""
        return _json(request, 200, {"status": "ok"})

    @app.route("/api/ready", methods=["GET"])
    def ready(self, request):
        """Readiness: 200 when serving DNS, else 503; no token needed (probes carry none)."""
        if self._view.ready():
            return _json(request, 200, {"status": "ready"})
        return _json(request, 503, {"status": "not_ready"})

    @app.route("/api/cache/distributed", methods=["GET"])
    async def distributed(self, request):
        """The seed's cache statistics of all workers and the shared cache."""
        self._authorize(request)
        shared = await self._view.shared_cache()
        view = self._view
        return _json(request, 200, views.distributed_body(view.mode(), view.workers(), shared, view.architecture()))

    @app.route("/api/cache/distributed", methods=["DELETE"])
    async def clear(self, request):
        """Clear caches as the body asks; 400 with a reason for a bad request."""
        self._authorize(request)
        req = parse_clear_request(request.content.read())
        mode = self._view.mode()
        if req.target == "shared" and mode != "hybrid":
            raise RequestError(f'there is no shared cache in mode "{mode}"')
        if req.worker_ids is not None:
            known = {w.worker_id for w in self._view.workers()}
            _refuse_unknown([w for w in req.worker_ids if w not in known])
        try:
            pending = self._view.clear(
                req.target, list(req.worker_ids) if req.worker_ids is not None else None,
                list(req.cache_types), req.name, req.type, req.subtree,
            )
        except KeyError as error:
            _refuse_unknown(error.args[0] if error.args else ())
            raise
        result = await pending
        shared_expected = req.target == "shared" or (
            req.target == "all" and mode == "hybrid" and "rrset" in req.cache_types
        )
        return _json(request, 200, clear_response_body(result, shared_expected))

    @app.route("/api/workers", methods=["GET"])
    def workers(self, request):
        """Every worker's identity, liveness and totals."""
        self._authorize(request)
        return _json(request, 200, views.workers_body(self._view.workers()))

    @app.route("/api/upstreams", methods=["GET"])
    def upstreams(self, request):
        """Every worker's upstreams (L3)."""
        self._authorize(request)
        return _json(request, 200, views.upstreams_body(self._view.upstreams()))

    @app.route("/api/openapi.json", methods=["GET"])
    def openapi(self, request):
        """The OpenAPI 3.0 document of this API."""
        self._authorize(request)
        return _json(request, 200, self._openapi)

    @app.route("/metrics", methods=["GET"])
    async def prometheus(self, request):
        """Prometheus text; needs the token like /api/* (Prometheus sends it with ``authorization``)."""
        self._authorize(request)
        text = await self._metrics.render()
        request.setHeader(b"Content-Type", PROMETHEUS_TYPE)
        return text


def _refuse_unknown(ids) -> None:
    """RequestError naming unknown worker ids, if there are any."""
    ids = [ids] if isinstance(ids, str) else list(ids)
    if ids:
        raise RequestError(f"unknown worker id(s): {', '.join(map(str, ids))}")
