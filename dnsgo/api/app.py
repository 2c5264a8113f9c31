"""
The management API: a Klein app bound to a :class:`ManagementAPI` instance.

It reads and acts on the cluster only through a :class:`ClusterView`, which
the composition root implements for a standalone process and for the
control plane.  Every error response is JSON, and exceptions are mapped to
HTTP statuses in one place (:func:`dnsgo.api.errors.error_response`).

Serve it with :meth:`ManagementAPI.site` (a :class:`dnsgo.api.site.APISite`):
that checks the token as soon as a request's headers are in, caps request
bodies while they arrive, and keeps query strings out of the access log.
"""
from typing import Protocol
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException

from klein import Klein

import dnsgo
from dnsgo.api import views
from dnsgo.api.auth import check_authorization
from dnsgo.api.cache_io import parse_dump_request, parse_entries_request, parse_load_request
from dnsgo.api.clear import RequestError, clear_response_body, clip, clip_list, parse_clear_request
from dnsgo.api.errors import Unavailable, error_reply, error_response, json_reply
from dnsgo.api.openapi import openapi_document
from dnsgo.api.static import Dashboard
from dnsgo.api.metrics import ClusterMetrics
from dnsgo.cache.dump import end_line, header_line
from dnsgo.control.commands import describe
from dnsgo.control.election import NotLeader
from dnsgo.dns.types import RRSET
from dnsgo.invalidation.flush import Flush

#: What generate_latest() writes; every Prometheus version reads it.
PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

#: The routes served without a token (probes carry none).  Every other route needs it.
#: The dashboard's files carry no data (its script asks for the token).
OPEN_PATHS = frozenset({
    "/api/health", "/api/ready", "/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css",
})

class WorkerView(Protocol):
    """What the API knows about one worker."""

    worker_id: str
    cluster_name: str
    address: str
    status: str  # "healthy" | "unhealthy"
    last_heartbeat: float | None  # Unix time
    snapshot: dict | None  # dnsgo.api.snapshot.worker_snapshot(), None before the first report


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

    def clear(self, target: str, worker_ids: list[str] | None, flush: Flush) -> Deferred:
        """Apply ``flush`` where ``target`` says; fires with {results: [{workerId, success, cleared}],
        sharedCleared}.  Raises KeyError at once for unknown worker ids."""

    def upstreams(self) -> list[dict]:
        """[{workerId, upstreams: [L3 entries as in the snapshot]}]."""

    def entries(self, worker_ids: list[str] | None, name: str, type: str | None) -> Deferred:
        """Each worker's (or the listed ones') L1 and L2 for ``name``: [{workerId, success, l1, l2, truncated[, error]}].
        Raises KeyError at once for unknown worker ids."""

    def shared_entries(self, name: str, type: str | None) -> Deferred:
        """What the shared cache holds for ``name``: {reachable, entries}, or None without a shared cache."""

    def dump_shard(self, worker_id: str, shard: int) -> Deferred:
        """(lines, shards): the dump lines of segment ``shard`` of the worker's L2 and how many segments it has."""

    def load(self, worker_ids: list[str] | None, chunks) -> Deferred:
        """Load chunks of dump entry lines: [{workerId, success, loaded, expired[, error]}]."""

    def ha(self) -> dict:
        """{mode, role, term, leader, site, priority}: the high-availability state (docs/dashboard.md)."""


def _path_info(target: bytes) -> str | None:
    """
    The path a request-target routes by, decoded as twisted.web and Klein
    decode it (each segment percent-unquoted, then UTF-8); None when it
    cannot be decoded (Klein refuses those itself).
    """
    path = target.split(b"?", 1)[0]
    try:
        return "/" + b"/".join(unquote_to_bytes(s) for s in path[1:].split(b"/")).decode("utf-8")
    except UnicodeDecodeError:
        return None


class ManagementAPI:
    """
    The HTTP management API over a ClusterView.  ``token`` is the bearer
    token ('' disables authentication; then listen on loopback only, see
    dnsgo.api.auth.check_listen_allowed).  Serve :meth:`site`.
    """

    app = Klein()
    log = Logger()

    def __init__(self, view: ClusterView, token: str = "", *, reactor) -> None:
        self._reactor = reactor
        self._view = view
        self._token = token.encode("utf-8")
        self._metrics = ClusterMetrics(view, reactor=reactor)
        self._openapi = openapi_document(dnsgo.__version__)
        self._dashboard = Dashboard.load()

    @property
    def metrics(self) -> ClusterMetrics:
        """The Prometheus side (its ``registry`` is private to this instance)."""
        return self._metrics

    def resource(self):
        """
        The twisted.web resource serving this API.  Serve it through
        :meth:`site`: on its own it checks the token only after twisted.web
        has read the whole body, and nothing caps that body.
        """
        return self.app.resource()

    def site(self, **kwargs):
        """
        The twisted.web Site to listen with: :meth:`resource` behind
        dnsgo.api.site.APISite (token checked before the body is read, body
        capped, query strings kept out of the access log).  ``kwargs`` go to APISite.
        """
        from dnsgo.api.site import APISite

        kwargs.setdefault("reactor", self._reactor)
        return APISite(self, **kwargs)

    def needs_token(self, method: bytes, target: bytes) -> bool:
        """
        Whether a request for ``method`` and ``target`` (the request-target,
        query and all) reaches a route that needs the token: a token is set
        and the route matched is not one of OPEN_PATHS.  A request that routes
        nowhere (404, 405, a redirect) gets Klein's answer without its body
        being looked at.
        """
        if not self._token:
            return False
        path = _path_info(target)
        if path is None:
            return False
        adapter = self.app.url_map.bind("localhost", path_info=path, default_method=method.decode("latin-1"))
        try:
            rule, _ = adapter.match(return_rule=True)
        except HTTPException:
            return False
        return rule.rule not in OPEN_PATHS

    def check_token(self, authorization: list[bytes] | None) -> None:
        """Raise Unauthorized unless ``authorization`` (the values of every Authorization header) is the one right token."""
        check_authorization(authorization, self._token)

    def _authorize(self, request) -> None:
        self.check_token(request.requestHeaders.getRawHeaders(b"Authorization"))

    @app.handle_errors(Exception)
    def _error(self, request, failure):
        if error_response(failure.value)[0] >= 500 and not failure.check(NotLeader):
            self.log.failure(
                "management API: {method} {path} failed", failure,
                method=request.method.decode("ascii", "replace"), path=request.path.decode("ascii", "replace"),
            )
        return error_reply(request, failure.value)

    @app.route("/api/health", methods=["GET"])
    def health(self, request):
        """Liveness: always ok while the process answers; no token needed."""
        return json_reply(request, 200, {"status": "ok"})

    @app.route("/api/ready", methods=["GET"])
    def ready(self, request):
        """Readiness: 200 when serving DNS, else 503; no token needed (probes carry none)."""
        if self._view.ready():
            return json_reply(request, 200, {"status": "ready"})
        return json_reply(request, 503, {"status": "not_ready"})

    @app.route("/api/cache/distributed", methods=["GET"])
    async def distributed(self, request):
        """The seed's cache statistics of all workers and the shared cache."""
        self._authorize(request)
        shared = await self._view.shared_cache()
        view = self._view
        return json_reply(request, 200, views.distributed_body(view.mode(), view.workers(), shared, view.architecture()))

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
                req.target, list(req.worker_ids) if req.worker_ids is not None else None, req.flush,
            )
        except KeyError as error:
            _refuse_unknown(error.args[0] if error.args else ())
            raise
        result = await pending
        shared_expected = req.target == "shared" or (
            req.target == "all" and mode == "hybrid" and RRSET in req.flush.caches
        )
        return json_reply(request, 200, clear_response_body(result, shared_expected))

    @app.route("/api/cache/entries", methods=["GET"])
    async def cache_entries(self, request):
        """What L1, L2 (per worker) and the shared cache hold for a name (docs/api.md)."""
        self._authorize(request)
        req = parse_entries_request(request.args)
        workers = {w.worker_id: w for w in self._view.workers()}
        if req.worker is not None:
            _refuse_unknown([req.worker] if req.worker not in workers else [])
        try:
            pending = self._view.entries([req.worker] if req.worker else None, req.name, req.type)
        except KeyError as error:
            _refuse_unknown(error.args[0] if error.args else ())
            raise
        except ValueError as error:
            raise RequestError(str(error)) from None
        results = await pending
        shared = await self._view.shared_entries(req.name, req.type)
        return json_reply(request, 200, views.entries_body(req, results, workers, shared))

    @app.route("/api/cache/dump", methods=["POST"])
    async def cache_dump(self, request):
        """One worker's L2 as a cache dump (docs/cache-dump.md), streamed segment by segment."""
        self._authorize(request)
        worker = parse_dump_request(request.args)
        known = [w.worker_id for w in self._view.workers()]
        if worker is None:
            if len(known) != 1:
                raise RequestError(f"give ?worker=ID: there are {len(known)} workers")
            worker = known[0]
        _refuse_unknown([] if worker in known else [worker])
        try:
            lines, shards = await self._view.dump_shard(worker, 0)
        except KeyError:
            _refuse_unknown([worker])
            raise
        except Exception as error:
            raise Unavailable(f"worker {clip(worker)} did not give its cache: {describe(Failure(error))}") from None
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(header_line(worker, self._reactor.seconds()).encode("ascii"))
        count = 0
        for shard in range(shards):
            if shard:
                try:
                    lines, _ = await self._view.dump_shard(worker, shard)
                except Exception as error:
                    # The status is sent: leave the end line out, so that the dump reads as cut off.
                    self.log.warn("cache dump of {worker} cut off at segment {shard}: {why}",
                                  worker=worker, shard=shard, why=describe(Failure(error)))
                    return b""
            count += lines.count("\n")
            request.write(lines.encode("ascii"))
        request.write(end_line(count).encode("ascii"))
        return b""

    @app.route("/api/cache/load", methods=["POST"])
    async def cache_load(self, request):
        """Load a cache dump into one worker's L2 or every worker's; 400 for anything but a whole dump."""
        self._authorize(request)
        req = parse_load_request(request.args, request.content.read())
        if req.worker is not None:
            _refuse_unknown([] if req.worker in {w.worker_id for w in self._view.workers()} else [req.worker])
        try:
            pending = self._view.load([req.worker] if req.worker else None, req.chunks)
        except KeyError as error:
            _refuse_unknown(error.args[0] if error.args else ())
            raise
        results = await pending
        return json_reply(request, 200, views.load_body(req, results))

    @app.route("/api/workers", methods=["GET"])
    def workers(self, request):
        """Every worker's identity, liveness and totals."""
        self._authorize(request)
        return json_reply(request, 200, views.workers_body(self._view.workers()))

    @app.route("/api/upstreams", methods=["GET"])
    def upstreams(self, request):
        """Every worker's upstreams (L3)."""
        self._authorize(request)
        return json_reply(request, 200, views.upstreams_body(self._view.upstreams()))

    @app.route("/api/ha", methods=["GET"])
    def ha(self, request):
        """The high-availability state: mode, role, term, leader."""
        self._authorize(request)
        return json_reply(request, 200, self._view.ha())

    @app.route("/dashboard", methods=["GET"], endpoint="dashboard_page", defaults={"name": "index.html"})
    @app.route("/dashboard/dashboard.js", methods=["GET"], endpoint="dashboard_js", defaults={"name": "dashboard.js"})
    @app.route("/dashboard/dashboard.css", methods=["GET"], endpoint="dashboard_css", defaults={"name": "dashboard.css"})
    def dashboard(self, request, name):
        """The dashboard's page, script and style sheet (a fixed list; static, so no token)."""
        return self._dashboard.reply(request, name)

    @app.route("/api/openapi.json", methods=["GET"])
    def openapi(self, request):
        """The OpenAPI 3.0 document of this API."""
        self._authorize(request)
        return json_reply(request, 200, self._openapi)

    @app.route("/metrics", methods=["GET"])
    async def prometheus(self, request):
        """Prometheus text; needs the token like /api/* (Prometheus sends it with ``authorization``)."""
        self._authorize(request)
        text = await self._metrics.render()
        request.setHeader(b"Content-Type", PROMETHEUS_TYPE)
        return text


def _refuse_unknown(ids) -> None:
    """RequestError naming unknown worker ids (the first few, each cut short), if there are any."""
    ids = [ids] if isinstance(ids, str) else list(ids)
    if ids:
        raise RequestError(f"unknown worker id(s): {clip_list(ids)}")
