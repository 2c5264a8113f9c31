"""
The dashboard (``GET /dashboard``) in a real browser against a live
cluster: headless Chromium (Debian's) driven by Playwright, a control plane
and two workers as twistd processes in hybrid mode over a real
redis-server, forwarding to the dnspython authority of
tests/support/authority.py.

One test walks through what an operator does: a wrong token is refused and
not kept; the right one shows each worker's row with the counts the API
reports; queries sent with dnspython move the figures and the chart; a flush
from the form empties every cache level of the name (checked with
``GET /api/cache/entries`` and by the authority seeing the next query),
and a bad one shows the API's 400 reason; a token that stops working sends
the page back to the token form; an API that stops answering is reported
while the last figures stay.  A screenshot is saved in the test's
folder (and copied to $DNSGO_DASHBOARD_SCREENSHOT when that is set).
"""
import json
import os
import shutil
from urllib.parse import quote

from twisted.internet import defer
from twisted.trial import unittest

from tests.support import browser, redis_procs
from tests.support.cluster_procs import TOKEN, Cluster, by_worker, stop_process, wait_until
from tests.support.harness import ask, start_authority
from tests.support.redis_procs import RedisServer, cli

#: The sessionStorage key the page keeps the token under (dashboard.js).
TOKEN_KEY = "dnsgo.dashboard.token"

WWW = "www.example.test."
MX = "mx.example.test."

#: What each worker is asked before the page opens, and the burst sent while it watches.
FIRST_W1 = 3
FIRST_W2 = 2
BURST = 20

#: Every element of a worker row with a data-field: its data-value, else its text.
ROWS_JS = """
(selector) => Object.fromEntries([...document.querySelectorAll(selector + ' tbody tr')].map(tr => [
  tr.dataset.workerId + (tr.dataset.upstream ? ' ' + tr.dataset.upstream : ''),
  Object.fromEntries([...tr.querySelectorAll('[data-field]')].map(
    e => [e.dataset.field, e.dataset.value !== undefined ? e.dataset.value : e.textContent])),
]))
"""


def rows(page, table: str = "#workers") -> dict:
    """The rows of a table of the page: key -> {field: value}."""
    return page.evaluate(ROWS_JS, table)


def field(page, selector: str, name: str = "value") -> str | None:
    """A data attribute of the element ``selector``."""
    return page.get_attribute(selector, f"data-{name}")


def text(page, selector: str) -> str:
    return page.text_content(selector) or ""


def session_token(page) -> str | None:
    return page.evaluate("(key) => sessionStorage.getItem(key)", TOKEN_KEY)


def enter_token(page, token: str) -> None:
    page.fill("#token-input", token)
    page.click("#token-submit")


def flush_from_form(page, name: str, type_: str = "", cache: str = "all") -> None:
    """Fill the flush form and submit it; returns once the page shows the API's answer."""
    page.fill("#flush-name", name)
    page.fill("#flush-type", type_)
    page.select_option("#flush-cache", cache)
    page.evaluate("() => { const r = document.getElementById('flush-result'); r.dataset.state = 'idle'; }")
    page.click("#flush-submit")
    page.wait_for_function(
        "() => ['ok', 'partial', 'error'].includes(document.getElementById('flush-result').dataset.state)",
        timeout=10_000)


class DashboardTests(unittest.TestCase):
    """The dashboard in headless Chromium against a control plane, two workers and Redis."""

    skip = browser.SKIP or redis_procs.SKIP
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.authority = yield start_authority(self)
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.stop)
        # heartbeats every 4/3 s; a worker is marked unhealthy only after 4 s without one (a busy machine)
        self.cluster = Cluster(self, self.authority.address[1], heartbeat_timeout="4s")
        with open(self.cluster.config_path, "a", encoding="utf-8") as config:
            config.write(
                "cache:\n  mode: hybrid\n"
                f'  shared_cache:\n    enabled: true\n    type: redis\n    address: "127.0.0.1:{self.redis.port}"\n'
            )
        yield self.cluster.start_control()
        yield self.cluster.start_workers("w1", "w2")
        self.browser = yield browser.BrowserThread().start()
        self.addCleanup(self.browser.stop)
        self.page = yield self.browser.new_page(viewport={"width": 1400, "height": 1100})
        self.url = f"http://127.0.0.1:{self.cluster.api_port}/dashboard"

    def on_page(self, function, *args):
        """Run ``function(page, *args)`` in the browser's thread."""
        return self.browser.call(function, self.page, *args)

    def page_until(self, function, what: str, timeout: float = 15.0):
        """Fires with ``function(page)`` once it is truthy (asked every 0.2 s)."""
        return wait_until(lambda: self.on_page(function), what, timeout, interval=0.2)

    @defer.inlineCallbacks
    def ask_many(self, worker: str, name: str, type_: str, times: int):
        for _ in range(times):
            yield ask(self.cluster.dns_ports[worker], name, type_)

    @defer.inlineCallbacks
    def api_figures(self):
        """Each worker's queries (``/api/workers``) and L1/L2 hits and misses (``/api/cache/distributed``)."""
        workers = by_worker((yield self.cluster.get("/api/workers")))
        stats = by_worker((yield self.cluster.get("/api/cache/distributed")))
        return {
            w: {"queries": str(workers[w]["queries"]), "status": workers[w]["status"],
                "l1Hits": str(stats[w]["messageCache"]["hits"]), "l1Misses": str(stats[w]["messageCache"]["misses"]),
                "l2Hits": str(stats[w]["rrsetCache"]["hits"]), "l2Misses": str(stats[w]["rrsetCache"]["misses"])}
            for w in workers if w in stats
        }

    def page_figures(self, page):
        return {w: {k: row.get(k) for k in ("queries", "status", "l1Hits", "l1Misses", "l2Hits", "l2Misses")}
                for w, row in rows(page).items()}

    @defer.inlineCallbacks
    def wait_page_matches_api(self, what: str, queries: dict):
        """
        Fires with the figures once the API reports ``queries`` (workerId ->
        total) and the page's worker rows show what the API says.
        """
        last = {}

        @defer.inlineCallbacks
        def same():
            api = yield self.api_figures()
            shown = yield self.on_page(self.page_figures)
            last.update(api=api, page=shown)
            reported = {w: api.get(w, {}).get("queries") for w in queries}
            return api if api == shown and reported == {w: str(n) for w, n in queries.items()} else None

        return (yield wait_until(same, what, 15.0, lambda: json.dumps(last, indent=1), interval=0.3))

    @defer.inlineCallbacks
    def entries(self, name: str, type_: str):
        return (yield self.cluster.get(f"/api/cache/entries?name={quote(name)}&type={type_}"))

    @defer.inlineCallbacks
    def test_operator_walkthrough(self):
        """Token, live rows with real counts, figures moving with traffic, a flush that takes effect, a 401."""
        yield self.ask_many("w1", WWW, "A", FIRST_W1)
        yield self.ask_many("w2", MX, "MX", FIRST_W2)
        yield wait_until(
            lambda: self.api_figures().addCallback(
                lambda f: {w: f.get(w, {}).get("queries") for w in ("w1", "w2")} == {
                    "w1": str(FIRST_W1), "w2": str(FIRST_W2)}),
            "the workers to report the first queries", 10.0)

        # -- a wrong token is refused and not kept; the right one is kept in session storage only
        yield self.on_page(lambda page: page.goto(self.url))
        self.assertEqual((yield self.on_page(field, "body", "state")), "login")
        yield self.on_page(enter_token, "not-the-token")
        yield self.page_until(lambda page: "invalid bearer token" in text(page, "#login-error"),
                              "the page to show the API's 401 reason")
        self.assertIsNone((yield self.on_page(session_token)))
        yield self.on_page(enter_token, TOKEN)
        yield self.page_until(lambda page: field(page, "body", "state") == "live", "the board to go live")
        self.assertEqual((yield self.on_page(session_token)), TOKEN)
        self.assertEqual((yield self.on_page(lambda page: page.url)), self.url)

        # -- each worker's row shows the counts the API reports
        figures = yield self.wait_page_matches_api("the rows to show the API's counts",
                                                   {"w1": FIRST_W1, "w2": FIRST_W2})
        self.assertEqual(set(figures), {"w1", "w2"})
        self.assertEqual({f["status"] for f in figures.values()}, {"healthy"}, figures)
        # w1 asked one name FIRST_W1 times: one L1 miss, then hits
        self.assertEqual(figures["w1"]["l1Misses"], "1")
        self.assertEqual(figures["w1"]["l1Hits"], str(FIRST_W1 - 1))

        ha = yield self.cluster.get("/api/ha")
        shown_ha = yield self.on_page(lambda page: {k: field(page, f"#ha-{k}") for k in ("role", "term", "mode")})
        self.assertEqual(shown_ha, {"role": ha["role"], "term": str(ha["term"]), "mode": ha["mode"]}, ha)
        upstream = f"{self.authority.address[0]}:{self.authority.address[1]}"
        shown_upstreams = yield self.on_page(rows, "#upstreams")
        self.assertEqual(set(shown_upstreams), {f"w1 {upstream}", f"w2 {upstream}"}, shown_upstreams)
        self.assertEqual({u["health"] for u in shown_upstreams.values()}, {"healthy"}, shown_upstreams)

        # the shared cache: reachable, and the keys Redis holds (DBSIZE)
        @defer.inlineCallbacks
        def keys_shown():
            keys = int(cli(self.redis.port, "DBSIZE"))
            shown = yield self.on_page(lambda page: (field(page, "#shared-reachable", "reachable"),
                                                     field(page, "#shared-keys")))
            return keys > 0 and shown == ("true", str(keys))

        yield wait_until(keys_shown, "the shared cache's keys on the page", 15.0, interval=0.3)

        # -- queries move the figures: totals, hits, queries/s and the chart
        yield self.page_until(lambda page: rows(page)["w2"]["qps"] == "0", "w2's queries/s to be 0 (no traffic)")
        yield self.ask_many("w1", WWW, "A", BURST)
        figures = yield self.wait_page_matches_api("the rows to show the burst",
                                                   {"w1": FIRST_W1 + BURST, "w2": FIRST_W2})
        self.assertEqual(figures["w1"]["l1Hits"], str(FIRST_W1 - 1 + BURST))
        self.assertEqual(figures["w1"]["l1Misses"], "1")
        yield self.page_until(lambda page: float(field(page, "#chart", "peak-qps")) > 0,
                              "the chart's queries/s to rise")
        self.assertGreater(int((yield self.on_page(field, "#chart", "points"))), 1)

        # -- a flush from the form takes effect everywhere
        before = yield self.entries(WWW, "A")
        cached = by_worker(before)["w1"]
        self.assertTrue(cached["l1"] and cached["l2"], before)
        self.assertTrue(before["shared"]["entries"], before)
        asked = self.authority.authority.queries[(WWW, "A")]
        yield ask(self.cluster.dns_ports["w1"], WWW, "A")
        self.assertEqual(self.authority.authority.queries[(WWW, "A")], asked, "answered from the cache")

        yield self.on_page(flush_from_form, WWW, "A", "all")
        state, shown = yield self.on_page(lambda page: (field(page, "#flush-result", "state"),
                                                        text(page, "#flush-result")))
        self.assertEqual(state, "ok", shown)
        self.assertIn(f"Flushed {WWW} A on 2 worker(s)", shown)
        self.assertIn("shared cache cleared: yes", shown)
        after = yield self.entries(WWW, "A")
        for worker in after["workers"]:
            self.assertTrue(worker["success"], after)
            self.assertEqual((worker["l1"], worker["l2"]), ([], []), after)
        self.assertEqual(after["shared"]["entries"], [], after)
        yield ask(self.cluster.dns_ports["w1"], WWW, "A")
        self.assertEqual(self.authority.authority.queries[(WWW, "A")], asked + 1, "asked upstream again")

        # -- a bad flush shows the API's 400 reason, word for word
        bad = "bad..name."
        direct = yield self.cluster.clear({"name": bad, "cacheType": "all", "target": "all"})
        self.assertEqual(direct.status, 400)
        yield self.on_page(flush_from_form, bad, "", "all")
        state, shown = yield self.on_page(lambda page: (field(page, "#flush-result", "state"),
                                                        text(page, "#flush-result")))
        self.assertEqual((state, shown), ("error", f"Refused (400): {direct.json()['reason']}"))

        yield self.on_page(flush_from_form, WWW, "", "all")  # the result line of a good flush, for the picture
        yield self.page_until(lambda page: int(field(page, "#chart", "points")) > 3, "a few points on the chart")
        yield self.screenshot()

        # -- a token that stops working: back to the form, and forgotten
        yield self.on_page(lambda page: page.evaluate(
            "([key]) => sessionStorage.setItem(key, 'revoked')", [TOKEN_KEY]))
        yield self.on_page(lambda page: page.reload())
        yield self.page_until(lambda page: field(page, "body", "state") == "login", "the token form again")
        self.assertIn("invalid bearer token", (yield self.on_page(text, "#login-error")))
        self.assertIsNone((yield self.on_page(session_token)))

        # -- the API goes away: the page says so and keeps the last figures
        yield self.on_page(enter_token, TOKEN)
        yield self.page_until(lambda page: field(page, "body", "state") == "live", "the board to go live again")
        shown = yield self.on_page(self.page_figures)
        yield stop_process(self.cluster.control)
        yield self.page_until(lambda page: field(page, "body", "state") == "degraded", "the page to notice")
        self.assertIn("api/workers: unreachable", (yield self.on_page(text, "#problem")))
        self.assertEqual((yield self.on_page(self.page_figures)), shown)

    @defer.inlineCallbacks
    def screenshot(self):
        """Save the page as a PNG in the test's folder (and at $DNSGO_DASHBOARD_SCREENSHOT)."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "dashboard.png")
        yield self.on_page(lambda page: page.screenshot(path=path, full_page=True))
        self.assertGreater(os.path.getsize(path), 0)
        copy_to = os.environ.get("DNSGO_DASHBOARD_SCREENSHOT")
        if copy_to:
            shutil.copyfile(path, copy_to)
        return path
