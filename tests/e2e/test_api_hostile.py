"""
The management API against a hostile client: the findings of the attacker
review, each as a test over real sockets on 127.0.0.1 (the API served by
its own Site, as dnsgo.app.roles serves it) or, for pure parsing, directly.

- Bodies: the token is checked before a body is read, bodies over 64 KiB
  are refused with 413 while they arrive (declared or chunked), and values
  echoed in error reasons are cut short.
- 500s and ambiguity: deep nesting, ``TYPE0``, repeated JSON keys and two
  Authorization headers are 4xx answers with a JSON reason, never a 500 or
  a silently wider flush.
- The access log holds no query string (no ``?token=``) and no token.
"""
import json

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from dnsgo.api import ManagementAPI
from dnsgo.api.app import OPEN_PATHS
from dnsgo.api.auth import Unauthorized, check_authorization
from dnsgo.api.clear import ECHO_LIMIT, RequestError, parse_clear_request, type_code
from dnsgo.api.openapi import openapi_document
from dnsgo.api.site import MAX_BODY_BYTES, APISite, redacted_log_formatter
from dnsgo.config import parse_config
from dnsgo.dns.types import parse_qtype
from dnsgo.app.roles import api_service
from tests.support.api_fakes import SEED_SHARED, FakeCluster, FakeWorker, call, serve, snapshot
from tests.support.hostile_http import LAST_CHUNK, bearer, chunk, exchange, request_head

TOKEN = "s3cret-token"
CLEAR = b"/api/cache/distributed"
#: A Content-Length no test ever sends in full.
HUGE = b"3000000000"
#: How soon a refusal must come (the client gives up after hostile_http.ANSWER_TIMEOUT).
PROMPT_SECONDS = 2.0


def cluster() -> FakeCluster:
    """Two workers and a shared cache (hybrid mode)."""
    return FakeCluster(workers=[FakeWorker("worker-1", snapshot=snapshot("worker-1")),
                                FakeWorker("worker-2", snapshot=snapshot("worker-2"))], shared=SEED_SHARED)


class _Hostile(unittest.TestCase):
    """Base: a ManagementAPI with a token over a FakeCluster, served by its Site on 127.0.0.1."""

    def setUp(self):
        """Serve a ManagementAPI with a token on 127.0.0.1 through its Site."""
        self.cluster = cluster()
        self.api = ManagementAPI(self.cluster, token=TOKEN, reactor=reactor)
        self.port = serve(self, self.api)
        self.addCleanup(self.connections_closed)

    @defer.inlineCallbacks
    def connections_closed(self):
        """
        Wait (up to 3 s) until the server has seen every client connection
        close: a refused request keeps its connection and a drain timer
        (APIRequest._abort) until then, and neither may outlive the test.
        """
        from twisted.internet import tcp

        def open_here():
            servers = [s for s in reactor.getReaders() + reactor.getWriters()
                       if isinstance(s, tcp.Server) and s.getHost().port == self.port]
            timers = [c for c in reactor.getDelayedCalls() if getattr(c.func, "__name__", "") == "_abort"]
            return servers or timers

        for _ in range(300):
            if not open_here():
                return
            yield task.deferLater(reactor, 0.01, lambda: None)

    def send(self, parts, **kwargs):
        """Raw bytes to the API; fires with a hostile_http.RawResponse."""
        return exchange(self.port, parts, **kwargs)

    def head(self, method: bytes, target: bytes, *headers):
        """The request line and ``headers`` of a request, ending in the blank line."""
        return request_head(method, target, headers)

    def assert_refused(self, r, status: int, error: str, reason: str | None = None):
        """A prompt JSON error, the connection then closed cleanly (no reset), nothing cleared."""
        self.assertEqual(r.status, status, r.body)
        self.assertEqual(r.header(b"content-type"), b"application/json; charset=utf-8")
        self.assertEqual(r.json()["error"], error)
        if reason is not None:
            self.assertEqual(r.json()["reason"], reason)
        self.assertLess(r.seconds, PROMPT_SECONDS)
        self.assertTrue(r.closed, "the server should close the connection after refusing a body")
        self.assertFalse(r.reset, "the client should get a clean close, not a reset")
        self.assertEqual(self.cluster.clears, [])

    @defer.inlineCallbacks
    def assert_still_serving(self):
        """A normal request still gets its answer."""
        r = yield call(self.port, b"GET", b"/api/workers", token=TOKEN)
        self.assertEqual(r.status, 200)


class EarlyTokenTests(_Hostile):
    """The token is checked as soon as the headers are in, before any of the body is read."""

    @defer.inlineCallbacks
    def test_unauthenticated_huge_body_401_before_body_sent(self):
        """No token and Content-Length 3 GB, no body byte sent: 401 (with WWW-Authenticate) at once."""
        r = yield self.send(self.head(b"DELETE", CLEAR, (b"Content-Length", HUGE)))
        self.assert_refused(r, 401, "unauthorized", "missing Authorization header")
        self.assertTrue(r.header(b"www-authenticate").startswith(b"Bearer"))
        yield self.assert_still_serving()

    @defer.inlineCallbacks
    def test_wrong_token_small_body_401_unread(self):
        """A wrong token with a small announced body that never comes: 401 without waiting for it."""
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer("guess"), (b"Content-Length", b"100")))
        self.assert_refused(r, 401, "unauthorized", "invalid bearer token")
        self.assertNotIn(b"guess", r.body)
        self.assertNotIn(TOKEN.encode(), r.body)

    @defer.inlineCallbacks
    def test_unauthenticated_chunked_401(self):
        """No token and a chunked body: 401 before the first chunk."""
        r = yield self.send(self.head(b"DELETE", CLEAR, (b"Transfer-Encoding", b"chunked")))
        self.assert_refused(r, 401, "unauthorized")

    @defer.inlineCallbacks
    def test_auth_before_size(self):
        """Without a token an oversized body is 401, not 413: the size check tells a stranger nothing."""
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer("guess"), (b"Content-Length", HUGE)))
        self.assertEqual(r.status, 401)

    @defer.inlineCallbacks
    def test_every_secured_route(self):
        """Every route the OpenAPI document secures refuses an unauthenticated body before reading it."""
        for path, item in openapi_document("x")["paths"].items():
            for method, operation in item.items():
                if operation.get("security") == []:
                    continue
                r = yield self.send(self.head(method.upper().encode(), path.encode(), (b"Content-Length", HUGE)))
                self.assertEqual(r.status, 401, (method, path))
                self.assertLess(r.seconds, PROMPT_SECONDS)

    def test_needs_token(self):
        """needs_token: routed secured paths (however encoded, query or not) yes; open, unknown, 405 paths no."""
        for method, target in [(b"GET", b"/api/workers"), (b"DELETE", CLEAR), (b"GET", b"/api/%77orkers?token=x"),
                               (b"HEAD", b"/metrics"), (b"get", b"/api/upstreams")]:
            self.assertTrue(self.api.needs_token(method, target), target)
        for method, target in [(b"GET", b"/api/health"), (b"GET", b"/api/ready?x=1"), (b"GET", b"/nothing"),
                               (b"POST", CLEAR), (b"GET", b"/api/%ff")]:
            self.assertFalse(self.api.needs_token(method, target), target)
        self.assertFalse(ManagementAPI(self.cluster, token="", reactor=reactor).needs_token(b"GET", b"/api/workers"))

    def test_open_paths_are_the_documented_ones(self):
        """OPEN_PATHS are exactly the operations the OpenAPI document marks as needing no token."""
        documented = {path for path, item in openapi_document("x")["paths"].items()
                      if all(op.get("security") == [] for op in item.values())}
        self.assertEqual(OPEN_PATHS, documented)


class BodyCapTests(_Hostile):
    """Bodies over 64 KiB get 413 with a JSON reason while they arrive; the rest is never stored."""

    @defer.inlineCallbacks
    def test_huge_declared_length_413_promptly(self):
        """Token right, Content-Length 3 GB, 4 kB sent: 413 at once, connection closed, nothing cleared."""
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Content-Length", HUGE)) + b" " * 4096)
        self.assert_refused(r, 413, "payload_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes")
        self.assertEqual(r.header(b"connection"), b"close")
        yield self.assert_still_serving()

    @defer.inlineCallbacks
    def test_whitespace_flood_413(self):
        """Token right and 4 MB of whitespace actually sent: 413 (the body is dropped, not buffered)."""
        body = b" " * (4 << 20)
        r = yield self.send([self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Content-Length", b"%d" % len(body))), body],
                            timeout=10)
        self.assertEqual(r.status, 413)
        self.assertEqual(self.cluster.clears, [])
        yield self.assert_still_serving()

    @defer.inlineCallbacks
    def test_chunked_over_cap_413(self):
        """A chunked body passing 64 KiB gets 413 before its last chunk is sent."""
        parts = [self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Transfer-Encoding", b"chunked"))]
        parts += [chunk(b" " * 8192)] * 10
        r = yield self.send(parts)
        self.assert_refused(r, 413, "payload_too_large")

    @defer.inlineCallbacks
    def test_chunked_under_cap_accepted(self):
        """A chunked body under the cap is put together and served."""
        parts = [self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Transfer-Encoding", b"chunked")),
                 chunk(b'{"target": '), chunk(b" " * 30000), chunk(b'"all"}'), LAST_CHUNK]
        r = yield self.send(parts, close_timeout=0)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(len(self.cluster.clears), 1)

    @defer.inlineCallbacks
    def test_exactly_the_cap(self):
        """A body of exactly 64 KiB is served; one byte more is 413, with the connection closed cleanly."""
        body = b"{}" + b" " * (MAX_BODY_BYTES - 2)
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Content-Length", b"%d" % len(body))) + body,
                            close_timeout=0)
        self.assertEqual(r.status, 200, r.body)
        self.cluster.clears.clear()
        body += b" "
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Content-Length", b"%d" % len(body))) + body)
        self.assert_refused(r, 413, "payload_too_large")

    @defer.inlineCallbacks
    def test_open_route_capped_too(self):
        """The cap holds on routes without a token too: /api/health with a 3 GB body is 413."""
        r = yield self.send(self.head(b"GET", b"/api/health", (b"Content-Length", HUGE)))
        self.assertEqual(r.status, 413)
        self.assertTrue(r.closed)

    @defer.inlineCallbacks
    def test_unknown_route_capped(self):
        """A path that routes nowhere with a 3 GB body is 413 too, not read."""
        r = yield self.send(self.head(b"POST", b"/nothing", bearer(TOKEN), (b"Content-Length", HUGE)))
        self.assertEqual(r.status, 413)

    @defer.inlineCallbacks
    def test_no_continue_after_refusal(self):
        """Expect: 100-continue with an oversized body gets 413 and no 100 Continue."""
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer(TOKEN), (b"Expect", b"100-continue"),
                                      (b"Content-Length", b"1000000")))
        self.assert_refused(r, 413, "payload_too_large")
        self.assertEqual(r.interim, ())

    @defer.inlineCallbacks
    def test_small_cap(self):
        """APISite's max_body is the limit: 10 bytes allowed, a 20-byte body refused with a reason naming it."""
        port = serve(self, ManagementAPI(self.cluster, token=TOKEN, reactor=reactor), max_body=10)
        r = yield exchange(port, request_head(b"DELETE", CLEAR, [bearer(TOKEN), (b"Content-Length", b"20")]) + b"{}" + b" " * 18)
        self.assertEqual(r.json()["reason"], "the request body is larger than 10 bytes")


class TwoAuthorizationHeadersTests(_Hostile):
    """Exactly one Authorization header: two are refused whatever they hold."""

    @defer.inlineCallbacks
    def test_two_headers_refused(self):
        """Two headers (both right, right and wrong, wrong and right) get 401 with a JSON reason."""
        for pair in ([TOKEN, TOKEN], [TOKEN, "guess"], ["guess", TOKEN]):
            r = yield self.send(self.head(b"GET", b"/api/workers", *map(bearer, pair)), close_timeout=0)
            self.assertEqual(r.status, 401, pair)
            self.assertEqual(r.json(), {"error": "unauthorized", "reason": "more than one Authorization header"})

    @defer.inlineCallbacks
    def test_two_headers_with_body_refused_early(self):
        """Two headers on a DELETE with a body: 401 before the body, nothing cleared."""
        r = yield self.send(self.head(b"DELETE", CLEAR, bearer(TOKEN), bearer(TOKEN), (b"Content-Length", b"2")))
        self.assert_refused(r, 401, "unauthorized", "more than one Authorization header")

    def test_check_authorization(self):
        """check_authorization: one right header passes; none, two, or a wrong one raise Unauthorized."""
        check_authorization([b"Bearer abc"], b"abc")
        check_authorization([b"x", b"y"], b"")
        for values in (None, [], [b"Bearer abc", b"Bearer abc"], [b"Bearer abd"]):
            self.assertRaises(Unauthorized, check_authorization, values, b"abc")


class JSONAmbiguityTests(unittest.SynchronousTestCase):
    """Request bodies that used to give a 500 or a wider flush are 400 with a reason."""

    def refused(self, raw: bytes) -> str:
        """The reason parse_clear_request refuses ``raw`` with (failing the test if it does not)."""
        with self.assertRaises(RequestError) as caught:
            parse_clear_request(raw)
        return str(caught.exception)

    def test_deep_nesting(self):
        """Nesting deeper than the JSON decoder goes (at top level or in a field) is a RequestError."""
        self.assertIn("nested too deeply", self.refused(b"[" * 50000 + b"]" * 50000))
        self.assertIn("nested too deeply", self.refused(b'{"workerIds": ' + b"[" * 20000 + b"]" * 20000 + b"}"))

    def test_duplicate_keys(self):
        """A key given twice is refused (it would widen a flush by name into a full clear)."""
        self.assertIn("duplicate key 'name'", self.refused(b'{"name": "x", "name": null}'))
        self.assertIn("duplicate key", self.refused(b'{"target": "all", "workerIds": [], "target": "worker"}'))

    def test_type0(self):
        """TYPE0 (and anything else the flush refuses) is refused by the API's parser."""
        for bad in ("TYPE0", "0", "TYPE65536"):
            self.assertIn("unknown RR type", self.refused(json.dumps({"name": "a.", "type": bad}).encode()))

    def test_one_type_parser(self):
        """The API accepts exactly the types Flush accepts, and what it passes on reads back to the same code."""
        for text in ("A", "aaaa", "HTTPS", "caa", "ANY", "TYPE1", "TYPE65535", "TYPE65280", "65", "TYPE0", "0",
                     "TYPE65536", "BOGUS", "", "ALL_RECORDS", "TYPE-1", "١"):
            try:
                code = parse_qtype(text)
            except ValueError:
                self.assertRaises(RequestError, type_code, text)
                continue
            self.assertEqual(type_code(text), code, text)
            req = parse_clear_request(json.dumps({"name": "a.", "type": text}).encode())
            self.assertEqual(req.flush.qtype, code, text)


class EchoTests(unittest.SynchronousTestCase):
    """Values echoed in error reasons are cut to about a hundred characters, with an ellipsis."""

    def reason(self, body) -> str:
        """The reason parse_clear_request refuses ``body`` (JSON-encoded) with."""
        with self.assertRaises(RequestError) as caught:
            parse_clear_request(json.dumps(body).encode())
        return str(caught.exception)

    def test_long_values_cut(self):
        """A 1 MB name, type, target or unknown field name comes back cut short, never whole."""
        long = "a" * (1 << 20)
        for body in ({"name": long}, {"name": "a.", "type": long}, {"target": long}, {long: 1},
                     {"name": "\u00e9" * 100000}, {"name": "a.." + long}):
            reason = self.reason(body)
            self.assertLess(len(reason), 4 * ECHO_LIMIT, reason[:300])
            self.assertIn("\u2026", reason)


class HTTPEchoAndAmbiguityTests(_Hostile):
    """The same findings over HTTP: 400 JSON answers, nothing cleared, nothing logged as an error."""

    def delete(self, raw: bytes):
        """DELETE /api/cache/distributed with the right token and the body ``raw``."""
        return call(self.port, b"DELETE", CLEAR, token=TOKEN, body=raw)

    @defer.inlineCallbacks
    def test_deep_nesting_400(self):
        """A body nested 60000 deep is a 400, not a 500."""
        r = yield self.delete(b"[" * 30000 + b"]" * 30000)
        self.assertEqual((r.status, r.json()["error"]), (400, "bad_request"))
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_duplicate_key_400(self):
        """{"name": "x", "name": null} is a 400 and clears nothing (it used to clear everything)."""
        r = yield self.delete(b'{"name": "x", "name": null}')
        self.assertEqual(r.status, 400)
        self.assertIn("duplicate key", r.json()["reason"])
        self.assertEqual(self.cluster.clears, [])

    @defer.inlineCallbacks
    def test_type0_400(self):
        """"type": "TYPE0" is a 400 before the views (whose Flush would refuse it) are asked."""
        r = yield self.delete(b'{"name": "example.com", "type": "TYPE0"}')
        self.assertEqual(r.status, 400, r.body)
        self.assertEqual(self.cluster.clears, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    @defer.inlineCallbacks
    def test_long_name_reply_small(self):
        """A 60 kB bad name gets a small 400 reply."""
        r = yield self.delete(json.dumps({"name": "a.." + "b" * 60000}).encode())
        self.assertEqual(r.status, 400)
        self.assertLess(len(r.body), 600)

    @defer.inlineCallbacks
    def test_many_unknown_workers_cut(self):
        """Hundreds of long unknown worker ids: the reason names a few, each cut, and counts the rest."""
        ids = [f"w{i}-" + "x" * 200 for i in range(200)]
        r = yield self.delete(json.dumps({"target": "worker", "workerIds": ids}).encode())
        self.assertEqual(r.status, 400)
        reason = r.json()["reason"]
        self.assertLess(len(reason), 500)
        self.assertTrue(reason.startswith("unknown worker id(s): w0-xxx"), reason)
        self.assertRegex(reason, r"\u2026 and 1\d\d more$")


class AccessLogTests(_Hostile):
    """The access log drops query strings (a ?token= is never written) and never holds the token."""

    def setUp(self):
        """Serve the API and collect every log event while the test runs."""
        super().setUp()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self) -> str:
        """Everything logged so far: each event formatted, then each event's repr (fields and all)."""
        return "\n".join(formatEvent(e) or "" for e in self.events) + "\n" + "\n".join(map(repr, self.events))

    @defer.inlineCallbacks
    def test_query_strings_not_logged(self):
        """?token= in served, refused-by-route, refused-early and failed requests, and in a Referer, is not logged."""
        secret = "tried-in-query-7f3a"
        r = yield call(self.port, b"GET", b"/api/workers?token=" + secret.encode(), token=TOKEN,
                       headers={b"Referer": [b"http://x/y?token=" + secret.encode()]})
        self.assertEqual(r.status, 200)
        r = yield call(self.port, b"GET", b"/api/upstreams?token=" + secret.encode(), token=None)
        self.assertEqual(r.status, 401)
        r = yield self.send(self.head(b"DELETE", CLEAR + b"?token=" + secret.encode(), (b"Content-Length", HUGE)))
        self.assertEqual(r.status, 401)
        self.cluster.broken = RuntimeError("boom")
        r = yield call(self.port, b"GET", b"/api/workers?token=" + secret.encode(), token=TOKEN)
        self.assertEqual(r.status, 500)
        self.flushLoggedErrors(RuntimeError)
        text = self.logged()
        self.assertIn('"GET /api/workers HTTP/1.1" 200', text)
        self.assertIn('"GET /api/upstreams HTTP/1.1" 401', text)
        self.assertIn('"DELETE /api/cache/distributed HTTP/1.1" 401', text)
        self.assertIn('"http://x/y"', text)
        self.assertNotIn(secret, text)
        self.assertNotIn(TOKEN, text)

    def test_formatter(self):
        """redacted_log_formatter writes the combined format with the path only."""
        request = DummyRequest([b"api", b"workers"])
        request.uri = b"/api/workers?token=abc&x=1"
        request.code, request.sentLength = 200, 10
        request.requestHeaders.addRawHeader(b"Referer", b"https://h/p?token=abc#f")
        line = redacted_log_formatter("[ts]", request)
        self.assertIn('"GET /api/workers HTTP/1.0"', line)
        self.assertIn('"https://h/p"', line)
        self.assertNotIn("abc", line)


class WiringTests(unittest.TestCase):
    """dnsgo.app.roles serves the API through APISite."""

    def test_roles_serve_api_site(self):
        """api_service listens with an APISite: the body cap and the redacted access log are in force."""
        config = parse_config("api:\n  enabled: true\n  listen_address: 127.0.0.1:0\n  auth_token: abc\n", environ={})
        service = api_service(config, cluster(), environ={}, reactor=task.Clock())
        site = service.args[1]
        self.assertIsInstance(site, APISite)
        self.assertEqual(site.max_body, MAX_BODY_BYTES)
        self.assertIs(site._logFormatter, redacted_log_formatter)
        self.assertFalse(site.displayTracebacks)

    def test_document_states_limit(self):
        """The OpenAPI document states the body limit and documents 413 on the DELETE."""
        document = openapi_document("x")
        self.assertIn(f"{MAX_BODY_BYTES // 1024} KiB", document["info"]["description"])
        self.assertIn("413", document["paths"]["/api/cache/distributed"]["delete"]["responses"])
