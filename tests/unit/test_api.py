"""
Tests of the management API: the pure body builders and request parser,
then the Klein app served over real HTTP on 127.0.0.1 with a fake
ClusterView (auth, the seed's JSON shapes and numbers, clearing, every
error status, OpenAPI conformance, and schemathesis when installed).
"""
import json
import os
import shutil
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from dnsgo.api import InsecureListenError, ManagementAPI, check_listen_allowed
from dnsgo.api import views
from dnsgo.api.auth import Unauthorized, check_bearer, is_loopback
from dnsgo.api.clear import ClearRequest, RequestError, clear_response_body, parse_clear_request, type_code
from dnsgo.api.openapi import openapi_document
from dnsgo.invalidation.flush import Flush
from tests.support.api_fakes import (
    SEED_ARCHITECTURE, SEED_SHARED, SEED_TIME, FakeCluster, FakeWorker, call, serve, snapshot,
)

TOKEN = "s3cret-token"

#: The seed's worker entry, exactly.
SEED_WORKER = {
    "workerId": "worker-1",
    "clusterName": "site-a",
    "address": "10.0.0.10:53",
    "status": "healthy",
    "messageCache": {"hits": 150000, "misses": 5000, "evicts": 100, "hit_rate": 96.77,
                     "size_bytes": 52428800, "max_size_bytes": 67108864, "num_shards": 32},
    "rrsetCache": {"hits": 10000, "misses": 5000, "evicts": 50, "hit_rate": 66.67,
                   "size_bytes": 104857600, "max_size_bytes": 134217728, "num_shards": 64},
    "lastUpdated": "2024-01-15T10:30:00Z",
}


def seed_cluster(**kwargs) -> FakeCluster:
    """The seed's example: one worker and a shared Redis cluster."""
    kwargs.setdefault("shared", SEED_SHARED)
    return FakeCluster(workers=[FakeWorker("worker-1", snapshot=snapshot("worker-1"))], **kwargs)


class AuthTests(unittest.SynchronousTestCase):
    """The bearer check and the listen-address rule, without HTTP."""

    def test_right_token(self):
        """The configured token with the Bearer scheme (any case) is let in."""
        check_bearer(b"Bearer abc", b"abc")
        check_bearer(b"bearer abc", b"abc")

    def test_wrong_tokens(self):
        """Missing header, other scheme, wrong or prefix token, empty credentials: Unauthorized."""
        for header in (None, b"Basic abc", b"Bearer abd", b"Bearer ab", b"Bearer abcd", b"Bearer", b"abc"):
            with self.assertRaises(Unauthorized, msg=header):
                check_bearer(header, b"abc")

    def test_no_token_configured(self):
        """Without a configured token every request is let in."""
        check_bearer(None, b"")

    def test_loopback(self):
        """127/8, ::1, IPv4-mapped loopback and localhost are loopback; others are not."""
        for host in ("127.0.0.1", "127.5.6.7", "::1", "[::1]", "::ffff:127.0.0.1", "localhost"):
            self.assertTrue(is_loopback(host), host)
        for host in ("0.0.0.0", "::", "10.0.0.1", "example.com"):
            self.assertFalse(is_loopback(host), host)

    def test_listen_without_token(self):
        """No token: loopback is allowed, any other address refused with a message naming the settings."""
        check_listen_allowed("127.0.0.1", "")
        check_listen_allowed("0.0.0.0", "tok")
        with self.assertRaises(InsecureListenError) as caught:
            check_listen_allowed("0.0.0.0", "")
        self.assertIn("api.auth_token", str(caught.exception))


class ViewTests(unittest.SynchronousTestCase):
    """The JSON bodies built from snapshots."""

    def test_seed_example(self):
        """The seed's example numbers give exactly its worker entry, sharedCache and aggregates."""
        cluster = seed_cluster()
        body = views.distributed_body("hybrid", cluster.workers(), SEED_SHARED, SEED_ARCHITECTURE)
        self.assertEqual(list(body), ["mode", "workers", "sharedCache", "aggregated", "architecture"])
        self.assertEqual(body["workers"], [SEED_WORKER])
        self.assertEqual(body["sharedCache"], {
            "type": "redis-cluster", "address": "redis-cluster:6379", "status": "connected",
            "stats": {"hits": 500000, "misses": 25000, "hit_rate": 95.24, "size_bytes": 268435456},
            "lastSync": "2024-01-15T10:30:00Z",
        })
        self.assertEqual(body["aggregated"], {
            "totalHits": 660000, "totalMisses": 35000, "averageHitRate": 94.96,
            "totalSizeBytes": 425721856, "workerCount": 1,
        })
        self.assertEqual(body["architecture"], SEED_ARCHITECTURE)

    def test_aggregates_over_workers(self):
        """Aggregates sum every worker's two caches; a worker without a snapshot adds zeros but counts."""
        small = snapshot("w2", messageCache={"hits": 1, "misses": 3, "evicts": 0, "hit_rate": 25.0,
                                             "size_bytes": 10, "max_size_bytes": 100, "num_shards": 1},
                         rrsetCache={"hits": 2, "misses": 0, "evicts": 0, "hit_rate": 100.0,
                                     "size_bytes": 5, "max_size_bytes": 100, "num_shards": 1})
        workers = [FakeWorker("w1", snapshot=snapshot("w1")), FakeWorker("w2", snapshot=small),
                   FakeWorker("w3", status="unhealthy")]
        body = views.distributed_body("local-only", workers, None, {})
        self.assertEqual(body["aggregated"], {
            "totalHits": 160003, "totalMisses": 10003, "averageHitRate": round(100 * 160003 / 170006, 2),
            "totalSizeBytes": 157286415, "workerCount": 3,
        })
        self.assertIsNone(body["sharedCache"])
        self.assertEqual(body["workers"][2]["messageCache"], dict.fromkeys(views.CACHE_FIELDS, 0) | {"hit_rate": 0.0})
        self.assertIsNone(body["workers"][2]["lastUpdated"])

    def test_no_lookups(self):
        """With no lookups at all the average hit rate is 0.0, not a division error."""
        self.assertEqual(views.aggregated_body([], None)["averageHitRate"], 0.0)
        self.assertEqual(views.hit_rate(0, 0), 0.0)
        self.assertEqual(views.hit_rate(1, 2), 33.33)

    def test_iso8601(self):
        """Epoch seconds become UTC ISO-8601 with a Z; None and strings pass through."""
        self.assertEqual(views.iso8601(SEED_TIME + 0.9), "2024-01-15T10:30:00Z")
        self.assertIsNone(views.iso8601(None))
        self.assertEqual(views.iso8601("2024-01-15T10:30:00Z"), "2024-01-15T10:30:00Z")

    def test_shared_hit_rate_computed(self):
        """A shared-cache dict without hit_rate gets one computed from its hits and misses."""
        body = views.shared_body({"type": "redis", "address": "a:1", "status": "connected",
                                  "stats": {"hits": 3, "misses": 1, "size_bytes": 7}, "lastSync": None})
        self.assertEqual(body["stats"], {"hits": 3, "misses": 1, "hit_rate": 75.0, "size_bytes": 7})

    def test_worker_detail(self):
        """/api/workers entries total the query rows and report uptime and breaker state."""
        detail = views.worker_detail(FakeWorker("w1", snapshot=snapshot("w1")))
        self.assertEqual(detail["queries"], 15)
        self.assertEqual(detail["uptimeSeconds"], 100.0)
        self.assertEqual(detail["sharedCache"], {"status": "connected", "breaker": "open"})
        self.assertEqual(detail["startedAt"], "2024-01-15T10:28:20Z")


class ClearRequestTests(unittest.SynchronousTestCase):
    """Parsing the DELETE body."""

    def parse(self, body) -> ClearRequest:
        return parse_clear_request(json.dumps(body).encode())

    def test_defaults(self):
        """An empty object clears both caches everywhere."""
        self.assertEqual(self.parse({}), ClearRequest("all", None, Flush.everything()))

    def test_seed_examples(self):
        """The seed's three request bodies parse as they read."""
        self.assertEqual(self.parse({"target": "all", "cacheType": "all"}).flush.caches, {"message", "rrset"})
        req = self.parse({"target": "worker", "workerIds": ["worker-1", "worker-2"], "cacheType": "message"})
        self.assertEqual((req.target, req.worker_ids, req.flush.caches), ("worker", ("worker-1", "worker-2"), {"message"}))
        self.assertEqual(self.parse({"target": "shared", "cacheType": "all"}).target, "shared")

    def test_by_name(self):
        """A name gets its final dot and is lowercased, a type mnemonic becomes its code, subtree is kept."""
        req = self.parse({"name": "Example.COM", "type": "aaaa", "subtree": True})
        self.assertEqual(req.target, "all")
        self.assertEqual(req.flush, Flush("example.com.", 28, True))
        self.assertEqual(self.parse({"name": "."}).flush.name, ".")

    def test_type_mnemonics(self):
        """Classic, modern and generic TYPEnnn mnemonics are known; others are not."""
        self.assertEqual([type_code(t) for t in ("A", "https", "CAA", "TYPE65534")], [1, 65, 257, 65534])
        for bad in ("BOGUS", "TYPE70000", ""):
            self.assertRaises(RequestError, type_code, bad)

    def test_duplicate_worker_ids(self):
        """Repeated worker ids are asked once."""
        self.assertEqual(self.parse({"target": "worker", "workerIds": ["a", "b", "a"]}).worker_ids, ("a", "b"))

    BAD = [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"all"', "JSON object"),
        ({"target": "everything"}, "unknown target"),
        ({"cacheType": "infra"}, "unknown cacheType"),
        ({"target": "worker"}, "needs a non-empty workerIds"),
        ({"target": "worker", "workerIds": []}, "needs a non-empty workerIds"),
        ({"target": "worker", "workerIds": "worker-1"}, "workerIds must be a list"),
        ({"target": "worker", "workerIds": [1]}, "non-empty strings"),
        ({"target": "worker", "workerIds": [""]}, "non-empty strings"),
        ({"target": "all", "workerIds": ["w"]}, "only allowed with target"),
        ({"target": "shared", "cacheType": "message"}, "RRsets only"),
        ({"target": 1}, "target must be a string"),
        ({"cacheType": None, "target": True}, "target must be a string"),
        ({"name": "a..b"}, "bad name"),
        ({"name": "x" * 64 + ".com"}, "bad name"),
        ({"name": "bücher.de"}, "bad name"),
        ({"name": 5}, "name must be"),
        ({"name": "a.", "type": "BOGUS"}, "unknown RR type"),
        ({"name": "a.", "type": 1}, "type must be"),
        ({"name": "a.", "subtree": "yes"}, "subtree must be"),
        ({"name": "a.", "subtree": 1}, "subtree must be"),
        ({"type": "A"}, "need a name"),
        ({"subtree": True}, "need a name"),
        ({"cachetype": "all"}, "unknown field(s) cachetype"),
    ]

    def test_bad_requests(self):
        """Every malformed body is refused with a reason saying what is wrong."""
        for body, reason in self.BAD:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            with self.assertRaises(RequestError, msg=raw) as caught:
                parse_clear_request(raw)
            self.assertIn(reason, str(caught.exception), raw)

    def test_response_body(self):
        """clearedCount counts successes; success needs every worker and, when asked, the shared cache."""
        result = {"results": [{"workerId": "a", "success": True, "cleared": ["message"]},
                              {"workerId": "b", "success": False, "cleared": []}], "sharedCleared": True}
        body = clear_response_body(result, shared_expected=True)
        self.assertEqual((body["success"], body["clearedCount"], body["sharedCleared"]), (False, 1, True))
        ok = {"results": [{"workerId": "a", "success": True, "cleared": ["rrset"]}], "sharedCleared": False}
        self.assertTrue(clear_response_body(ok, shared_expected=False)["success"])
        self.assertFalse(clear_response_body(ok, shared_expected=True)["success"])


class _Served(unittest.TestCase):
    """Base: serve a ManagementAPI over a FakeCluster on 127.0.0.1."""

    token = TOKEN

    def setUp(self):
        self.cluster = seed_cluster()
        self.api = ManagementAPI(self.cluster, token=self.token, reactor=reactor)
        self.port = serve(self, self.api)

    def call(self, method: bytes, path: bytes, body=None, token: str | None = TOKEN, headers=None):
        return call(self.port, method, path, token=token, body=body, headers=headers)


class HTTPAuthTests(_Served):
    """Authentication over HTTP."""

    @defer.inlineCallbacks
    def test_no_token(self):
        """Without a token: 401 JSON, WWW-Authenticate: Bearer, and nothing served."""
        r = yield self.call(b"GET", b"/api/cache/distributed", token=None)
        self.assertEqual(r.status, 401)
        self.assertTrue(r.header(b"WWW-Authenticate").startswith(b"Bearer"))
        self.assertEqual(r.json(), {"error": "unauthorized", "reason": "missing Authorization header"})

    @defer.inlineCallbacks
    def test_wrong_token_not_echoed(self):
        """A wrong token gets 401, and neither it nor the real one appears in the reply."""
        r = yield self.call(b"GET", b"/api/workers", token="guess-" + TOKEN)
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json()["reason"], "invalid bearer token")
        self.assertNotIn(TOKEN.encode(), r.body)
        self.assertNotIn(b"guess", r.body)

    @defer.inlineCallbacks
    def test_basic_scheme(self):
        """The token under another scheme is refused."""
        r = yield self.call(b"GET", b"/api/workers", token=None, headers={b"Authorization": [b"Basic " + TOKEN.encode()]})
        self.assertEqual(r.status, 401)

    @defer.inlineCallbacks
    def test_every_secured_operation(self):
        """Every operation the OpenAPI document marks secured answers 401 without the token, 2xx/4xx with it."""
        document = openapi_document("x")
        dump = (b'{"format":"dnsgo-cache-dump","version":1,"worker":"w","created":1}\n'
                + FakeCluster.dump_segments[0].encode() + b'{"end":true,"entries":1}\n')
        queries = {"/api/cache/entries": "?name=www.example.com"}
        bodies = {"delete": {"target": "worker", "workerIds": ["worker-1"]}, "/api/cache/load": dump}
        for path, item in document["paths"].items():
            for method, operation in item.items():
                body = bodies.get(method, bodies.get(path)) if method != "get" else None
                target = path + queries.get(path, "")
                r = yield self.call(method.upper().encode(), target.encode(), body=body, token=None)
                if operation.get("security") == []:
                    self.assertEqual(r.status, 200, path)
                    continue
                self.assertEqual(r.status, 401, (method, path))
                r = yield self.call(method.upper().encode(), target.encode(), body=body)
                self.assertEqual(r.status, 200, (method, path))

    @defer.inlineCallbacks
    def test_health_open(self):
        """/api/health needs no token."""
        r = yield self.call(b"GET", b"/api/health", token=None)
        self.assertEqual((r.status, r.json()), (200, {"status": "ok"}))


class ErrorTests(_Served):
    """Error statuses: 404, 405, 500 and readiness 503."""

    @defer.inlineCallbacks
    def test_ready(self):
        """/api/ready is 200 while the cluster is ready, 503 when not, without a token."""
        r = yield self.call(b"GET", b"/api/ready", token=None)
        self.assertEqual((r.status, r.json()), (200, {"status": "ready"}))
        self.cluster.is_ready = False
        r = yield self.call(b"GET", b"/api/ready", token=None)
        self.assertEqual((r.status, r.json()), (503, {"status": "not_ready"}))

    @defer.inlineCallbacks
    def test_not_found(self):
        """An unknown path, with or without a token, is a 404 JSON error."""
        for token in (None, TOKEN):
            r = yield self.call(b"GET", b"/api/nothing/here", token=token)
            self.assertEqual(r.status, 404)
            self.assertEqual(r.json()["error"], "not_found")
            self.assertTrue(r.header(b"Content-Type").startswith(b"application/json"))

    @defer.inlineCallbacks
    def test_method_not_allowed(self):
        """A known path with an unknown method is a 405 JSON error with Allow."""
        r = yield self.call(b"POST", b"/api/cache/distributed", body={})
        self.assertEqual(r.status, 405)
        self.assertEqual(r.json()["error"], "method_not_allowed")
        self.assertIn(b"DELETE", r.header(b"Allow"))

    @defer.inlineCallbacks
    def test_internal_error(self):
        """An exception in a handler is a 500 JSON error that reveals nothing, and it is logged."""
        self.cluster.broken = RuntimeError("secret detail")
        r = yield self.call(b"GET", b"/api/workers")
        self.assertEqual(r.status, 500)
        self.assertEqual(r.json(), {"error": "internal_error", "reason": "internal error; see the server log"})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @defer.inlineCallbacks
    def test_failed_deferred(self):
        """A failing Deferred from the cluster view is a 500 too."""
        self.cluster.shared_error = ConnectionError("redis gone")
        r = yield self.call(b"GET", b"/api/cache/distributed")
        self.assertEqual(r.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)


class OpenTests(unittest.TestCase):
    """An API without a token."""

    @defer.inlineCallbacks
    def test_open_without_token(self):
        """With no token configured, requests without Authorization are served."""
        port = serve(self, ManagementAPI(seed_cluster(), token="", reactor=reactor))
        r = yield call(port, b"GET", b"/api/workers")
        self.assertEqual(r.status, 200)


class DistributedTests(_Served):
    """GET /api/cache/distributed, /api/workers, /api/upstreams."""

    @defer.inlineCallbacks
    def test_seed_shape(self):
        """The reply is the seed's object with the seed's numbers, as JSON."""
        r = yield self.call(b"GET", b"/api/cache/distributed")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header(b"Content-Type"), b"application/json; charset=utf-8")
        body = r.json()
        self.assertEqual(body["mode"], "hybrid")
        self.assertEqual(body["workers"], [SEED_WORKER])
        self.assertEqual(body["sharedCache"]["stats"]["hits"], 500000)
        self.assertEqual(body["aggregated"]["totalHits"], 660000)
        self.assertEqual(body["architecture"], SEED_ARCHITECTURE)

    @defer.inlineCallbacks
    def test_no_shared_cache(self):
        """In local-only mode sharedCache is null and aggregates cover the workers only."""
        self.cluster.mode_name, self.cluster.shared = "local-only", None
        body = (yield self.call(b"GET", b"/api/cache/distributed")).json()
        self.assertIsNone(body["sharedCache"])
        self.assertEqual(body["aggregated"]["totalHits"], 160000)

    @defer.inlineCallbacks
    def test_workers(self):
        """/api/workers lists every worker with its status and heartbeat."""
        self.cluster.worker_list.append(FakeWorker("worker-2", status="unhealthy", last_heartbeat=None))
        body = (yield self.call(b"GET", b"/api/workers")).json()
        self.assertEqual([(w["workerId"], w["status"]) for w in body["workers"]],
                         [("worker-1", "healthy"), ("worker-2", "unhealthy")])
        self.assertEqual(body["workers"][0]["lastHeartbeat"], "2024-01-15T10:30:00Z")
        self.assertIsNone(body["workers"][1]["lastHeartbeat"])

    @defer.inlineCallbacks
    def test_upstreams(self):
        """/api/upstreams carries each worker's L3 entries unchanged."""
        body = (yield self.call(b"GET", b"/api/upstreams")).json()
        self.assertEqual(body, {"workers": [{"workerId": "worker-1", "upstreams": snapshot()["upstreams"]}]})


class ClearTests(_Served):
    """DELETE /api/cache/distributed."""

    def setUp(self):
        super().setUp()
        self.cluster.worker_list.append(FakeWorker("worker-2", snapshot=snapshot("worker-2")))

    def delete(self, body):
        return self.call(b"DELETE", b"/api/cache/distributed", body=body)

    @defer.inlineCallbacks
    def test_all(self):
        """Clearing everything asks the view once and answers the seed's response."""
        r = yield self.delete({"target": "all", "cacheType": "all"})
        self.assertEqual(self.cluster.clears, [("all", None, Flush.everything())])
        self.assertEqual(r.json(), {
            "success": True, "clearedCount": 2, "sharedCleared": True,
            "results": [{"workerId": "worker-1", "success": True, "cleared": ["message", "rrset"]},
                        {"workerId": "worker-2", "success": True, "cleared": ["message", "rrset"]}],
        })

    @defer.inlineCallbacks
    def test_workers(self):
        """Clearing some workers' message caches passes the ids and the cache type."""
        r = yield self.delete({"target": "worker", "workerIds": ["worker-2"], "cacheType": "message"})
        self.assertEqual(self.cluster.clears, [("worker", ["worker-2"], Flush.everything(caches="message"))])
        self.assertEqual(r.json()["results"], [{"workerId": "worker-2", "success": True, "cleared": ["message"]}])
        self.assertTrue(r.json()["success"])

    @defer.inlineCallbacks
    def test_shared(self):
        """Clearing the shared cache reports sharedCleared and no worker results."""
        r = yield self.delete({"target": "shared", "cacheType": "all"})
        self.assertEqual(r.json(), {"success": True, "clearedCount": 0, "results": [], "sharedCleared": True})

    @defer.inlineCallbacks
    def test_shared_failed(self):
        """A shared cache that could not be cleared makes success false (still 200)."""
        self.cluster.shared_cleared = False
        r = yield self.delete({})
        self.assertEqual(r.status, 200)
        self.assertEqual((r.json()["success"], r.json()["sharedCleared"], r.json()["clearedCount"]), (False, False, 2))

    @defer.inlineCallbacks
    def test_worker_failed(self):
        """A worker that failed to clear makes success false and is not counted."""
        self.cluster.failing = {"worker-1"}
        body = (yield self.delete({"target": "all", "cacheType": "rrset"})).json()
        self.assertEqual((body["success"], body["clearedCount"]), (False, 1))

    @defer.inlineCallbacks
    def test_by_name(self):
        """A by-name clear passes the canonical name, the type and subtree, target all by default."""
        r = yield self.delete({"name": "example.com", "type": "a", "subtree": True})
        self.assertEqual(r.status, 200)
        self.assertEqual(self.cluster.clears, [("all", None, Flush("example.com.", "A", True))])

    @defer.inlineCallbacks
    def test_bad_requests(self):
        """Every malformed body is a 400 JSON error with a reason, and nothing is cleared."""
        for body, reason in ClearRequestTests.BAD:
            r = yield self.delete(body)
            self.assertEqual(r.status, 400, body)
            self.assertEqual(r.json()["error"], "bad_request")
            self.assertIn(reason, r.json()["reason"], body)
        self.assertEqual(self.cluster.clears, [])

    @defer.inlineCallbacks
    def test_unknown_workers(self):
        """Unknown worker ids are a 400 naming them, before anything is cleared."""
        r = yield self.delete({"target": "worker", "workerIds": ["worker-1", "worker-9"]})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.json()["reason"], "unknown worker id(s): worker-9")
        self.assertEqual(self.cluster.clears, [])

    @defer.inlineCallbacks
    def test_worker_vanished(self):
        """A KeyError from the view (a worker gone since the check) is a 400 naming it."""
        self.cluster.vanished = {"worker-2"}
        r = yield self.delete({"target": "worker", "workerIds": ["worker-2"]})
        self.assertEqual(r.status, 400)
        self.assertIn("worker-2", r.json()["reason"])

    @defer.inlineCallbacks
    def test_shared_without_shared_cache(self):
        """Targeting the shared cache in a mode without one is a 400."""
        self.cluster.mode_name = "local-only"
        r = yield self.delete({"target": "shared"})
        self.assertEqual(r.status, 400)
        self.assertIn("no shared cache", r.json()["reason"])
        self.assertEqual(self.cluster.clears, [])

    @defer.inlineCallbacks
    def test_local_mode_success(self):
        """Without a shared cache, clearing all succeeds on the workers alone."""
        self.cluster.mode_name = "local-only"
        body = (yield self.delete({})).json()
        self.assertEqual((body["success"], body["sharedCleared"]), (True, False))


def _validator(document):
    """An OpenAPI 3.0 schema validator for the document's components, or skip."""
    try:
        from openapi_schema_validator import OAS30Validator
    except ImportError:
        raise unittest.SkipTest("openapi-schema-validator is not installed")

    def validate(instance, name):
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        OAS30Validator(schema).validate(instance)

    return validate


class DocumentTests(_Served):
    """The OpenAPI document: valid, in step with the routes, and true of live responses."""

    def test_spec_valid(self):
        """The document is a valid OpenAPI 3.0 document."""
        try:
            from openapi_spec_validator import validate
        except ImportError:
            raise unittest.SkipTest("openapi-spec-validator is not installed")
        validate(openapi_document("0.1.0"))

    def test_routes_match(self):
        """The document describes exactly the app's routes and methods (HEAD aside)."""
        routes = {
            (rule.rule, method.lower())
            for rule in ManagementAPI.app.url_map.iter_rules()
            for method in rule.methods - {"HEAD", "OPTIONS"}
        }
        documented = {(path, method) for path, item in openapi_document("x")["paths"].items() for method in item}
        self.assertEqual(routes, documented)

    def test_refs_resolve(self):
        """Every $ref in the document names a component that exists."""
        document = openapi_document("x")

        def refs(node):
            if isinstance(node, dict):
                if "$ref" in node:
                    yield node["$ref"]
                for value in node.values():
                    yield from refs(value)
            elif isinstance(node, list):
                for value in node:
                    yield from refs(value)

        found = list(refs(document))
        self.assertTrue(found)
        for ref in found:
            _, kind, name = ref.rsplit("/", 2)
            self.assertIn(name, document["components"][kind], ref)

    @defer.inlineCallbacks
    def test_served(self):
        """/api/openapi.json serves the document (behind the token)."""
        r = yield self.call(b"GET", b"/api/openapi.json")
        self.assertEqual(r.json(), openapi_document(r.json()["info"]["version"]))

    @defer.inlineCallbacks
    def test_live_responses_match(self):
        """Live 200, 400, 401 and 503 responses validate against their documented schemas."""
        document = openapi_document("x")
        validate = _validator(document)
        self.cluster.worker_list.append(FakeWorker("worker-2", status="unhealthy", last_heartbeat=None))
        checks = [
            (b"GET", b"/api/cache/distributed", None, TOKEN, "DistributedStats"),
            (b"GET", b"/api/workers", None, TOKEN, "Workers"),
            (b"GET", b"/api/upstreams", None, TOKEN, "Upstreams"),
            (b"GET", b"/api/health", None, None, "Health"),
            (b"DELETE", b"/api/cache/distributed", {"target": "all"}, TOKEN, "ClearResponse"),
            (b"DELETE", b"/api/cache/distributed", {"target": "nope"}, TOKEN, "Error"),
            (b"GET", b"/api/workers", None, None, "Error"),
        ]
        for method, path, body, token, schema in checks:
            r = yield self.call(method, path, body=body, token=token)
            validate(r.json(), schema)
        self.cluster.is_ready = False
        validate((yield self.call(b"GET", b"/api/ready", token=None)).json(), "Ready")
        self.cluster.mode_name, self.cluster.shared = "standalone", None
        validate((yield self.call(b"GET", b"/api/cache/distributed")).json(), "DistributedStats")

    def test_validator_can_fail(self):
        """The schema check rejects a body that breaks the document (a missing aggregate)."""
        document = openapi_document("x")
        validate = _validator(document)
        body = views.distributed_body("hybrid", seed_cluster().workers(), SEED_SHARED, SEED_ARCHITECTURE)
        del body["aggregated"]["workerCount"]
        from jsonschema.exceptions import ValidationError

        self.assertRaises(ValidationError, validate, body, "DistributedStats")


class MetricsRouteTests(_Served):
    """GET /metrics through the API."""

    @defer.inlineCallbacks
    def test_metrics(self):
        """/metrics needs the token and serves the Prometheus text format."""
        r = yield self.call(b"GET", b"/metrics", token=None)
        self.assertEqual(r.status, 401)
        r = yield self.call(b"GET", b"/metrics")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header(b"Content-Type"), b"text/plain; version=0.0.4; charset=utf-8")
        self.assertIn(b'dnsgo_cache_hits_total{layer="message",worker="worker-1"} 150000.0', r.body)


class SchemathesisTests(_Served):
    """Property-based testing of the live API against its own OpenAPI document."""

    timeout = 300

    @defer.inlineCallbacks
    def test_schemathesis(self):
        """schemathesis finds no 5xx, no undocumented status, and no response off its schema."""
        exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        if not os.path.exists(exe):
            exe = shutil.which("schemathesis")
        if exe is None:
            raise unittest.SkipTest("schemathesis is not installed")
        self.cluster.worker_list.append(FakeWorker("worker-2", status="unhealthy", last_heartbeat=None))
        base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, NO_COLOR="1")
        out, err, code = yield utils.getProcessOutputAndValue(exe, [
            "run", f"{base}/api/openapi.json", "--url", base,
            "-H", f"Authorization: Bearer {TOKEN}",
            # positive_data_acceptance expects every schema-valid body to be
            # accepted; cross-field rules (workerIds only with target worker)
            # make some of them 400 on purpose.
            "--checks", "all", "--exclude-checks", "positive_data_acceptance",
            "--max-examples", "40", "--workers", "1", "--seed", "1",
            "--request-timeout", "10",
        ], env=env)
        self.assertEqual(code, 0, (out + err).decode("utf-8", "replace")[-6000:])
        self.assertEqual(len(self.flushLoggedErrors()), 0)
