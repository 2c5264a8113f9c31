"""
The dashboard's routes and ``GET /api/ha`` over a fake ClusterView: the
static files are served without a token from a fixed list with headers that
keep the page to its own origin, nothing else under /dashboard is served,
/api/ha needs the token; the page loads nothing from elsewhere and runs no
inline script.  The shared cache's key count reaches the API body.  (The
page itself is driven in a real browser by tests/e2e/test_dashboard.py.)
"""
import re
from html.parser import HTMLParser
from importlib import resources
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from dnsgo.api import ManagementAPI, views
from dnsgo.api.local_view import RootView
from dnsgo.api.shared_status import shared_cache_status
from dnsgo.api.static import DASHBOARD_FILES
from tests.support.api_fakes import FakeCluster, FakeWorker, call, serve, snapshot

TOKEN = "dashboard-unit-token"

#: Path served -> file of the package.
SERVED = {
    b"/dashboard": "index.html",
    b"/dashboard/dashboard.js": "dashboard.js",
    b"/dashboard/dashboard.css": "dashboard.css",
}


def package_file(name: str) -> bytes:
    """A dashboard file as the package holds it."""
    return resources.files("dnsgo.api").joinpath("dashboard", name).read_bytes()


class RouteTests(unittest.TestCase):
    """The routes, served by the API's own Site."""

    def setUp(self):
        self.cluster = FakeCluster([FakeWorker("w1", snapshot=snapshot("w1"))])
        self.port = serve(self, ManagementAPI(self.cluster, token=TOKEN, reactor=reactor))

    @defer.inlineCallbacks
    def test_files_served_without_token(self):
        """Each listed file: 200 without a token, its own bytes and content type, CSP, nosniff, no Referer."""
        for path, name in SERVED.items():
            r = yield call(self.port, b"GET", path)
            self.assertEqual(r.status, 200, path)
            self.assertEqual(r.body, package_file(name))
            self.assertEqual(r.header(b"content-type"), DASHBOARD_FILES[name])
            csp = r.header(b"content-security-policy").decode()
            self.assertIn("default-src 'self'", csp)
            self.assertIn("frame-ancestors 'none'", csp)
            self.assertEqual(r.header(b"x-content-type-options"), b"nosniff")
            self.assertEqual(r.header(b"referrer-policy"), b"no-referrer")

    @defer.inlineCallbacks
    def test_nothing_else_under_dashboard(self):
        """Other names, traversal (plain or percent-encoded) and a trailing slash get the JSON 404."""
        for path in [b"/dashboard/", b"/dashboard/index.html", b"/dashboard/static.py",
                     b"/dashboard/../app.py", b"/dashboard/%2e%2e/app.py", b"/dashboard/dashboard.js/..",
                     b"/dashboard/dashboard.js%2f..%2f..%2fapp.py", b"/dashboard/x/../dashboard.js.bak",
                     b"/dashboard/DASHBOARD.JS"]:
            r = yield call(self.port, b"GET", path, token=TOKEN)
            self.assertIn(r.status, (404,), path)
            self.assertEqual(r.json()["error"], "not_found", path)
            self.assertNotIn(b"import", r.body)

    @defer.inlineCallbacks
    def test_only_get(self):
        """The files are read-only: another method is a 405."""
        r = yield call(self.port, b"POST", b"/dashboard", body=b"x")
        self.assertEqual(r.status, 405)

    @defer.inlineCallbacks
    def test_ha_needs_token(self):
        """/api/ha: 401 without the token; with it, the view's answer."""
        r = yield call(self.port, b"GET", b"/api/ha")
        self.assertEqual(r.status, 401)
        self.cluster.ha_state = {"mode": "active_passive", "role": "standby", "term": 7,
                                 "leader": "10.0.0.1:8080", "site": "site-b", "priority": 50}
        r = yield call(self.port, b"GET", b"/api/ha", token=TOKEN)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), self.cluster.ha_state)


class NoHATests(unittest.SynchronousTestCase):
    """A process root's view answers /api/ha as a single process without HA."""

    def test_root_view(self):
        answer = RootView(object(), reactor=reactor).ha()
        self.assertEqual(answer, {"mode": "off", "role": "single", "term": 0,
                                  "leader": None, "site": None, "priority": None})
        answer["role"] = "changed"
        self.assertEqual(RootView(object(), reactor=reactor).ha()["role"], "single")


class _Tags(HTMLParser):
    """Every start tag of a page, with its attributes, and the text inside <script> and <style>."""

    def __init__(self):
        super().__init__()
        self.tags = []
        self.inline = []
        self._open = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline.append((self._open, data))


class PageTests(unittest.SynchronousTestCase):
    """What the page loads, read from the files: only its own files, no inline code (the CSP would block it)."""

    def test_page_loads_only_its_own_files(self):
        page = _Tags()
        page.feed(package_file("index.html").decode("utf-8"))
        self.assertEqual(page.inline, [])
        loaded = []
        for tag, attrs in page.tags:
            self.assertFalse([a for a in attrs if a.startswith("on")], (tag, attrs))
            self.assertNotIn("style", attrs, tag)
            for attr in ("src", "href"):
                if attr in attrs:
                    loaded.append(attrs[attr])
        self.assertEqual(sorted(loaded), ["dashboard/dashboard.css", "dashboard/dashboard.js"])

    def test_script_reaches_only_the_api(self):
        """The script fetches relative API paths only: no absolute URL, no token in a URL."""
        script = package_file("dashboard.js").decode("utf-8")
        self.assertIsNone(re.search(r"https?://|wss?://|\"//", script))
        self.assertEqual(sorted(set(re.findall(r'"(api/[^"]*)"', script))),
                         ["api/cache/distributed", "api/ha", "api/upstreams", "api/workers"])
        self.assertNotIn("?token", script)
        self.assertIn("sessionStorage", script)
        self.assertNotIn("localStorage", script)


class SharedKeysTests(unittest.SynchronousTestCase):
    """The shared cache's key count (DBSIZE) reaches ``sharedCache.stats.keys``."""

    def test_status_carries_keys(self):
        class Backend:
            def status(self):
                return SimpleNamespace(type="redis", address="127.0.0.1:6379", status="connected")

            def info(self):
                return defer.succeed({"keys": 42, "used_memory": 1000, "keyspace_hits": 3, "keyspace_misses": 1})

        status = self.successResultOf(shared_cache_status(None, Backend(), reactor=reactor))
        self.assertEqual(status["stats"]["keys"], 42)
        self.assertEqual(views.shared_body(status)["stats"]["keys"], 42)

    def test_body_without_keys_is_the_seeds(self):
        body = views.shared_body({"type": "redis", "address": "a", "status": "connected",
                                  "stats": {"hits": 1, "misses": 1, "hit_rate": 50.0, "size_bytes": 2}})
        self.assertEqual(list(body["stats"]), ["hits", "misses", "hit_rate", "size_bytes"])
