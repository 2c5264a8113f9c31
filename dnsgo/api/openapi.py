"""
The OpenAPI 3.0 description of the management API, served at
``/api/openapi.json``.  The schemas describe the bodies that
:mod:`dnsgo.api.views` and :mod:`dnsgo.api.clear` actually build; the
tests check live responses against them.
"""
from dnsgo.api.clear import CACHE_TYPES, TARGETS

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _object(properties: dict, required=None, extra: bool = False, **more) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": extra, **more}
    required = list(properties) if required is None else required
    if required:  # OpenAPI 3.0 forbids an empty list
        schema["required"] = required
    return schema


_INT = {"type": "integer", "minimum": 0}
_NUMBER = {"type": "number"}
_RATE = {"type": "number", "minimum": 0, "maximum": 100, "description": "percent of lookups that hit"}
_STRING = {"type": "string"}
_TIME = {"type": "string", "format": "date-time", "description": "UTC, e.g. 2024-01-15T10:30:00Z"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def _schemas() -> dict:
    return {
        "Error": _object({"error": _STRING, "reason": _STRING}),
        "CacheStats": _object({
            "hits": _INT, "misses": _INT, "evicts": _INT, "hit_rate": _RATE,
            "size_bytes": _INT, "max_size_bytes": _INT, "num_shards": _INT,
        }),
        "Worker": _object({
            "workerId": _STRING, "clusterName": _STRING, "address": _STRING,
            "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
            "messageCache": _ref("CacheStats"), "rrsetCache": _ref("CacheStats"),
            "lastUpdated": _nullable(_TIME),
        }),
        "SharedCache": _object({
            "type": {"type": "string", "enum": ["redis", "redis-sentinel", "redis-cluster"]},
            "address": _STRING,
            "status": _STRING,
            "stats": _object({"hits": _INT, "misses": _INT, "hit_rate": _RATE, "size_bytes": _INT, "keys": _INT},
                             required=["hits", "misses", "hit_rate", "size_bytes"]),
            "lastSync": _nullable(_TIME),
        }, nullable=True, description="null when there is no shared cache (modes standalone and local-only)"),
        "Aggregated": _object({
            "totalHits": _INT, "totalMisses": _INT, "averageHitRate": _RATE,
            "totalSizeBytes": _INT, "workerCount": _INT,
        }, description=(
            "Sums over all listed workers' message and RRset caches plus the shared cache; "
            "averageHitRate = 100 * totalHits / (totalHits + totalMisses)."
        )),
        "Architecture": _object({
            "description": _STRING, "l1Type": _STRING, "l2Type": _STRING, "replication": _STRING,
            "invalidation": _STRING, "features": {"type": "array", "items": _STRING},
            "highAvailability": _ref("HighAvailabilitySummary"),
        }, required=["description", "l1Type", "l2Type", "replication", "invalidation", "features"]),
        "DistributedStats": _object({
            "mode": {"type": "string", "enum": ["standalone", "local-only", "hybrid"]},
            "workers": {"type": "array", "items": _ref("Worker")},
            "sharedCache": _ref("SharedCache"),
            "aggregated": _ref("Aggregated"),
            "architecture": _ref("Architecture"),
        }),
        "ClearRequest": _object({
            "target": {"type": "string", "enum": list(TARGETS), "default": "all"},
            "workerIds": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                          "description": 'required with target "worker", refused otherwise'},
            "cacheType": {"type": "string", "enum": list(CACHE_TYPES), "default": "all"},
            "name": {"type": "string", "description": "clear only this domain name's entries"},
            "type": {"type": "string", "description": "RR type mnemonic (A, AAAA, TYPE65...); needs name"},
            "subtree": {"type": "boolean", "default": False, "description": "also the names below name"},
        }, required=[]),
        "ClearResult": _object({
            "workerId": _STRING, "success": {"type": "boolean"},
            "cleared": {"type": "array", "items": {"type": "string", "enum": ["message", "rrset"]}},
        }),
        "ClearResponse": _object({
            "success": {"type": "boolean"}, "clearedCount": _INT,
            "results": {"type": "array", "items": _ref("ClearResult")},
            "sharedCleared": {"type": "boolean"},
        }),
        "WorkerDetail": _object({
            "workerId": _STRING, "clusterName": _STRING, "address": _STRING,
            "status": {"type": "string", "enum": ["healthy", "unhealthy"]},
            "lastHeartbeat": _nullable(_TIME), "lastUpdated": _nullable(_TIME),
            "version": _nullable(_STRING), "pid": _nullable(_INT), "startedAt": _nullable(_TIME),
            "uptimeSeconds": _nullable(_NUMBER), "serving": _nullable({"type": "boolean"}),
            "mode": _nullable(_STRING), "queries": _nullable(_INT), "servfails": _nullable(_INT),
            "prefetches": _nullable(_INT), "staleAnswers": _nullable(_INT),
            "sharedCache": _nullable(_object({"status": _nullable(_STRING), "breaker": _nullable(_STRING)})),
        }),
        "Workers": _object({"workers": {"type": "array", "items": _ref("WorkerDetail")}}),
        "Upstream": _object({
            "address": _STRING, "srtt_ms": _NUMBER, "in_flight": _INT, "consecutive_failures": _INT,
            "success_rate": _NUMBER, "last_response": _nullable(_NUMBER), "health": _STRING,
            "next_probe": _nullable(_NUMBER), "queries": _INT, "failures": _INT,
        }, required=["address", "srtt_ms", "health"], extra=True),
        "Upstreams": _object({"workers": {"type": "array", "items": _object({
            "workerId": _STRING, "upstreams": {"type": "array", "items": _ref("Upstream")},
        })}}),
        "CacheEntries": _object({
            "name": _STRING, "type": _nullable(_STRING),
            "workers": {"type": "array", "items": _object({
                "workerId": _STRING, "clusterName": _STRING, "success": {"type": "boolean"}, "error": _nullable(_STRING),
                "l1": {"type": "array", "items": _object({
                    "type": _STRING, "flags": _STRING, "rcode": _STRING, "ttl": _INT, "stale": {"type": "boolean"},
                    "records": {"type": "array", "items": _STRING}})},
                "l2": {"type": "array", "items": _object({
                    "type": _nullable(_STRING), "kind": {"type": "string", "enum": ["rrset", "nodata", "nxdomain"]},
                    "ttl": _INT, "rank": _STRING, "source": {"type": "string", "enum": ["upstream", "shared", "load"]},
                    "records": {"type": "array", "items": _STRING}})},
                "truncated": {"type": "boolean"},
            })},
            "shared": _nullable(_object({
                "reachable": {"type": "boolean"},
                "entries": {"type": "array", "items": _object({
                    "type": _nullable(_STRING), "kind": _STRING, "ttl": _INT, "stale": {"type": "boolean"},
                    "rank": _STRING, "records": {"type": "array", "items": _STRING}})},
            })),
        }),
        "LoadResult": _object({
            "entries": _INT, "writtenBy": _STRING,
            "results": {"type": "array", "items": _object({
                "workerId": _STRING, "success": {"type": "boolean"}, "loaded": _INT, "expired": _INT,
                "error": _nullable(_STRING)})},
        }),
        "Health": _object({"status": {"type": "string", "enum": ["ok"]}}),
        "Ready": _object({"status": {"type": "string", "enum": ["ready", "not_ready"]}}),
        "HighAvailability": _object({
            "mode": {"type": "string", "enum": ["off", "active_passive"]},
            "role": {"type": "string", "enum": ["single", "active", "standby", "candidate"]},
            "term": _INT, "leader": _nullable(_STRING), "site": _nullable(_STRING),
            "priority": _nullable({"type": "integer"}),
            # With HA (docs/ha.md):
            "node_id": _STRING, "leader_id": _nullable(_STRING), "lease_expires_in": _nullable(_NUMBER),
            "peers": {"type": "array", "items": _STRING},
            "quorum": _object({"granted": _INT, "required": _INT, "sites": {"type": "array", "items": _STRING},
                               "sites_required": _INT, "met": {"type": "boolean"}}),
            "voters": {"type": "array", "items": _object({
                "worker_id": _STRING, "site": _STRING, "voter": {"type": "boolean"},
                "last_ack": _nullable(_NUMBER), "last_heard": _nullable(_NUMBER), "term_seen": _nullable(_INT),
            })},
            "elections": _INT,
        }, required=["mode", "role", "term", "leader", "site", "priority"]),
        "HighAvailabilitySummary": _object({
            "mode": {"type": "string", "enum": ["active_passive"]},
            "role": {"type": "string", "enum": ["active", "standby", "candidate"]},
            "term": _INT, "leader": _nullable(_STRING), "site": _STRING, "priority": {"type": "integer"},
        }),
        "NotLeader": _object({"error": {"type": "string", "enum": ["not_leader"]}, "reason": _STRING,
                              "leader": _nullable(_STRING)}),
    }


def _json(description: str, schema: dict, **more) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **more}


def _static(description: str, media_type: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _responses() -> dict:
    error = _ref("Error")
    return {
        "BadRequest": _json("The request is invalid; reason says why.", error),
        "Unauthorized": _json(
            "The bearer token is missing or wrong.", error,
            headers={"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
        ),
        "PayloadTooLarge": _json(
            "The request body is over 64 KiB; refused as it arrives, and the connection is closed.", error,
        ),
        "InternalError": _json("An unexpected error (logged by the server).", error),
    }


def _get(summary: str, ok: dict, *, secured: bool = True, more: dict | None = None) -> dict:
    responses = {"200": ok, **(more or {})}
    if secured:
        responses["401"] = {"$ref": "#/components/responses/Unauthorized"}
    responses["500"] = {"$ref": "#/components/responses/InternalError"}
    operation = {"summary": summary, "responses": responses}
    if not secured:
        operation["security"] = []
    return operation


def openapi_document(version: str) -> dict:
    """The OpenAPI 3.0.3 document of the management API, as a JSON-able dict."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "dnsgo management API",
            "version": version,
            "description": (
                "Cache statistics and cache clearing across dnsgo workers, worker and upstream state, "
                "health, readiness and Prometheus metrics.  Every route except /api/health, "
                "/api/ready and the dashboard's static files needs 'Authorization: Bearer <token>' (one such header) when a token is configured.  "
                "Request bodies are limited to 64 KiB (413), but a cache load's (api.max_load_mb)."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/cache/distributed": {
                "get": _get("Cache statistics of every worker and of the shared cache.",
                            _json("The statistics.", _ref("DistributedStats"))),
                "delete": {
                    "summary": "Clear caches: all, some workers', or the shared one; whole or by name.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ClearRequest")}}},
                    "responses": {
                        "200": _json("What was cleared where.", _ref("ClearResponse")),
                        "400": {"$ref": "#/components/responses/BadRequest"},
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "413": {"$ref": "#/components/responses/PayloadTooLarge"},
                        "500": {"$ref": "#/components/responses/InternalError"},
                        "503": _json("A standby control plane (docs/ha.md): leader is where to ask.",
                                     _ref("NotLeader")),
                    },
                },
            },
            "/api/cache/entries": {"get": {
                **_get("What L1, L2 (per worker) and the shared cache hold for one name.",
                       _json("The entries.", _ref("CacheEntries")),
                       more={"400": {"$ref": "#/components/responses/BadRequest"}}),
                "parameters": [
                    {"name": "name", "in": "query", "required": True, "schema": _STRING},
                    {"name": "type", "in": "query", "required": False, "schema": _STRING},
                    {"name": "worker", "in": "query", "required": False, "schema": _STRING},
                ],
            }},
            "/api/cache/dump": {"post": {
                **_get("One worker's L2 as a cache dump (docs/cache-dump.md), streamed.",
                       _static("The dump (JSON lines).", "application/x-ndjson"),
                       more={"400": {"$ref": "#/components/responses/BadRequest"},
                             "503": _json("The worker did not give its cache.", _ref("Error"))}),
                "parameters": [{"name": "worker", "in": "query", "required": False, "schema": _STRING}],
            }},
            "/api/cache/load": {"post": {
                **_get("Load a cache dump into one worker's L2, or every worker's.",
                       _json("What each worker loaded.", _ref("LoadResult")),
                       more={"400": {"$ref": "#/components/responses/BadRequest"},
                             "413": {"$ref": "#/components/responses/PayloadTooLarge"}}),
                "parameters": [{"name": "worker", "in": "query", "required": False, "schema": _STRING}],
                "requestBody": {"required": True, "content": {
                    "application/x-ndjson": {"schema": _STRING},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                }},
            }},
            "/api/workers": {"get": _get("Every worker's identity, liveness and totals.", _json("The workers.", _ref("Workers")))},
            "/api/upstreams": {"get": _get("Every worker's view of its upstreams (the L3 cache).",
                                           _json("The upstreams.", _ref("Upstreams")))},
            "/api/health": {"get": _get("Liveness: the API answers.", _json("Alive.", _ref("Health")), secured=False)},
            "/api/ready": {"get": _get(
                "Readiness: the DNS service is up.", _json("Ready.", _ref("Ready")), secured=False,
                more={"503": _json("Not ready yet, or no longer.", _ref("Ready"))},
            )},
            "/api/ha": {"get": _get("The high-availability state: mode, role, term, leader.",
                                    _json("The state.", _ref("HighAvailability")))},
            "/dashboard": {"get": _get("The dashboard page (static; its script asks for the token).",
                                       _static("The page.", "text/html"), secured=False)},
            "/dashboard/dashboard.js": {"get": _get("The dashboard's script.",
                                                    _static("The script.", "text/javascript"), secured=False)},
            "/dashboard/dashboard.css": {"get": _get("The dashboard's style sheet.",
                                                     _static("The style sheet.", "text/css"), secured=False)},
            "/api/openapi.json": {"get": _get("This document.", _json("OpenAPI 3.0 document.", {"type": "object"}))},
            "/metrics": {"get": _get(
                "Prometheus metrics (text exposition format 0.0.4).",
                {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
            )},
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": _schemas(),
            "responses": _responses(),
        },
    }
