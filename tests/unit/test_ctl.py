"""
Tests of ``dnsgoctl`` (dnsgo.ctl) without dnsgo running: the command line,
where the settings come from, the tables, and what each kind of answer
becomes (exit code, one line on stderr) against a small real HTTP server
(http.server on 127.0.0.1, in a thread) that answers as told and records
what it was asked.  tests/e2e/test_ctl.py runs the console script against
a real control plane and workers.
"""
import contextlib
import datetime
import io
import json
import os
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from twisted.trial import unittest

from dnsgo.ctl import render, tables
from dnsgo.ctl.errors import BAD_REQUEST, FAILED, HTTP_ERROR, OK, UNAUTHORIZED, UNREACHABLE, USAGE, UsageError
from dnsgo.ctl.files import DumpCheck
from dnsgo.ctl.main import build_parser, run
from dnsgo.ctl.settings import DEFAULT_API, Flags, Settings, api_url, resolve

TOKEN = "unit-token-9f2c"


# -- a small HTTP server that answers as told ---------------------------------------


class Recorded:
    """One request the server got."""

    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class FakeAPI:
    """
    http.server on 127.0.0.1 (a free port) in a thread.  ``answers`` maps
    (method, path) to (status, body) with body a JSON-able value or bytes,
    or to a function of the Recorded request giving that pair; anything
    else is 404.  ``requests`` records every request.
    """

    def __init__(self, testcase, answers=None):
        self.answers = dict(answers or {})
        self.requests: list[Recorded] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                parts = urllib.parse.urlsplit(self.path)
                key = (self.command, parts.path)
                answer = api.answers.get(key)
                if callable(getattr(answer, "early", None)):
                    return answer.early(self)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, parts.path, dict(urllib.parse.parse_qsl(parts.query)),
                                    dict(self.headers.items()), body)
                api.requests.append(recorded)
                if answer is None:
                    status, payload = 404, {"error": "not_found", "reason": "no such path"}
                elif callable(answer):
                    status, payload = answer(recorded)
                else:
                    status, payload = answer
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", f"http://127.0.0.1:{api.port}/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        testcase.addCleanup(self.stop)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


class EarlyRefusal:
    """
    Answers ``status`` as soon as the headers are in, then reads and drops
    at most DRAIN_BYTES of the body and closes, as dnsgo.api.site does.
    """

    DRAIN_BYTES = 1 << 20

    def __init__(self, status, payload):
        self.status = status
        self.payload = payload
        self.read = 0

    def early(self, handler):
        data = json.dumps(self.payload).encode()
        handler.send_response(self.status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.settimeout(2.0)
        try:
            while self.read < self.DRAIN_BYTES:
                chunk = handler.connection.recv(65536)
                if not chunk:
                    break
                self.read += len(chunk)
        except OSError:
            pass


class CutOff:
    """Announces ``length`` bytes, sends ``data`` (fewer) and closes: a stream broken on the way."""

    def __init__(self, data, length):
        self.data = data
        self.length = length

    def early(self, handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Content-Length", str(self.length))
        handler.end_headers()
        handler.wfile.write(self.data)
        handler.wfile.flush()
        handler.close_connection = True


class Result:
    """What one run of dnsgoctl gave: exit code, stdout, stderr."""

    def __init__(self, code, out, err):
        self.code = code
        self.out = out
        self.err = err


def ctl(*argv, environ=None, stdin=b""):
    """Run dnsgoctl ``argv`` in this process with an empty environment (unless given); its Result."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.StringIO()
    inp = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    code = run(list(argv), environ=environ or {}, stdout=out, stderr=err, stdin=inp)
    return Result(code, out.buffer.getvalue().decode("utf-8"), err.getvalue())


def write(testcase, text, mode=0o600):
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def closed_port():
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKERS = {"workers": [
    {"workerId": "w1", "clusterName": "site-a", "address": "127.0.0.1:5301", "status": "healthy",
     "lastHeartbeat": "2024-01-15T10:29:58Z", "pid": 11, "uptimeSeconds": 100.0, "mode": "standalone",
     "queries": 15, "servfails": 1, "sharedCache": None},
    {"workerId": "w2", "clusterName": "site-b", "address": "127.0.0.1:5302", "status": "unhealthy",
     "lastHeartbeat": "2024-01-15T10:29:00Z", "pid": 12, "uptimeSeconds": 3725.0, "mode": "standalone",
     "queries": 2, "servfails": 0, "sharedCache": None},
    {"workerId": "w3", "clusterName": "site-a", "address": "127.0.0.1:5303", "status": "healthy",
     "lastHeartbeat": None, "pid": None, "uptimeSeconds": None, "mode": None,
     "queries": None, "servfails": None, "sharedCache": None},
]}


# -- the command line ----------------------------------------------------------------


class ParsingTests(unittest.SynchronousTestCase):
    """The argparse command line."""

    def test_connection_options_before_and_after_the_command(self):
        """--api, --token and --json are taken before the subcommand and after it."""
        parser = build_parser()
        before = parser.parse_args(["--api", "h:1", "--token", "t", "--json", "stats"])
        after = parser.parse_args(["stats", "--api", "h:1", "--token", "t", "--json"])
        for args in (before, after):
            self.assertEqual((args.command, args.api, args.token, args.json), ("stats", "h:1", "t", True))
        plain = parser.parse_args(["stats"])
        self.assertEqual((plain.api, plain.token, plain.json, plain.timeout), (None, None, False, None))

    def test_flush_arguments(self):
        """flush: NAME, --type, --subtree, --cache, repeated --worker."""
        args = build_parser().parse_args(
            ["flush", "example.com.", "--type", "AAAA", "--subtree", "--cache", "l1", "--worker", "a",
             "--worker", "b"])
        self.assertEqual((args.name, args.type, args.subtree, args.cache, args.worker, args.cluster),
                         ("example.com.", "AAAA", True, "l1", ["a", "b"], None))
        args = build_parser().parse_args(["flush", "x."])
        self.assertEqual((args.cache, args.subtree, args.worker), ("all", False, None))

    def test_lookup_type_is_optional(self):
        """lookup NAME [TYPE]."""
        parser = build_parser()
        self.assertEqual(parser.parse_args(["lookup", "a.b."]).type, None)
        self.assertEqual(parser.parse_args(["lookup", "a.b.", "MX"]).type, "MX")

    def test_usage_errors_exit_2_on_one_line(self):
        """Missing and wrong arguments: exit 2, one line on stderr naming the problem, nothing on stdout."""
        cases = [
            ((), "a command is needed"),
            (("frobnicate",), "invalid choice: 'frobnicate'"),
            (("flush",), "the following arguments are required: NAME"),
            (("flush", "x.", "--cache", "l3"), "invalid choice: 'l3'"),
            (("flush", "x.", "--worker", "a", "--cluster", "b"), "not allowed with argument"),
            (("stats", "--timeout", "soon"), "invalid float value: 'soon'"),
            (("dump",), "the following arguments are required: FILE"),
        ]
        for argv, expected in cases:
            result = ctl(*argv)
            self.assertEqual(result.code, USAGE, (argv, result.err))
            self.assertIn(expected, result.err, argv)
            self.assertEqual(len(result.err.strip().splitlines()), 1, result.err)
            self.assertEqual(result.out, "")
            self.assertTrue(result.err.startswith("dnsgoctl"), result.err)

    def test_help_exits_zero(self):
        """--help is not an error."""
        with contextlib.redirect_stdout(io.StringIO()) as shown:
            self.assertEqual(ctl("--help").code, OK)
        self.assertIn("Exit codes", shown.getvalue())


# -- settings -----------------------------------------------------------------------


class SettingsTests(unittest.SynchronousTestCase):
    """Where the address and token come from, and in which order."""

    def config(self, api_section: str, rest: str = "") -> str:
        return write(self, f"api:\n{api_section}{rest}")

    def test_defaults(self):
        """Nothing given: the API's default address and no token."""
        settings = resolve(Flags(), {})
        self.assertEqual((settings.api_url, settings.token, settings.token_source), (DEFAULT_API, "", "nowhere"))

    def test_flags_beat_environment_beat_config(self):
        """Each of address and token comes from the first of flags, $DNSGO_API/$DNSGO_TOKEN, the config file."""
        path = self.config('  listen_address: "127.0.0.3:8003"\n  auth_token: "from-file"\n')
        env = {"DNSGO_API": "127.0.0.2:8002", "DNSGO_TOKEN": "from-env"}
        every = resolve(Flags(api="127.0.0.1:8001", token="from-flag", config=path), env)
        self.assertEqual((every.api_url, every.token), ("http://127.0.0.1:8001", "from-flag"))
        self.assertEqual((every.api_source, every.token_source), ("--api", "--token"))
        no_flags = resolve(Flags(config=path), env)
        self.assertEqual((no_flags.api_url, no_flags.token), ("http://127.0.0.2:8002", "from-env"))
        self.assertEqual(no_flags.token_source, "$DNSGO_TOKEN")
        only_file = resolve(Flags(config=path), {})
        self.assertEqual((only_file.api_url, only_file.token), ("http://127.0.0.3:8003", "from-file"))
        self.assertIn("api.auth_token", only_file.token_source)
        mixed = resolve(Flags(config=path), {"DNSGO_TOKEN": "from-env"})
        self.assertEqual((mixed.api_url, mixed.token), ("http://127.0.0.3:8003", "from-env"))

    def test_token_file(self):
        """--token-file is read and stripped; it beats $DNSGO_TOKEN; with --token it is a usage error."""
        path = write(self, "  file-token\n")
        settings = resolve(Flags(token_file=path), {"DNSGO_TOKEN": "env"})
        self.assertEqual(settings.token, "file-token")
        with self.assertRaises(UsageError):
            resolve(Flags(token="a", token_file=path), {})
        for bad, reason in ((write(self, "\n\n"), "is empty"), ("/nonexistent/t", "No such file")):
            with self.assertRaises(UsageError) as caught:
                resolve(Flags(token_file=bad), {})
            self.assertIn(reason, caught.exception.message)

    def test_config_token_file_and_unspecified_listen(self):
        """api.auth_token_file is read as the server reads it; 0.0.0.0 and :: are reached on loopback."""
        token_path = write(self, "tok-from-file\n")
        path = self.config(f'  listen_address: "0.0.0.0:9001"\n  auth_token_file: "{token_path}"\n')
        settings = resolve(Flags(config=path), {})
        self.assertEqual((settings.api_url, settings.token), ("http://127.0.0.1:9001", "tok-from-file"))
        v6 = resolve(Flags(config=self.config('  listen_address: "[::]:9002"\n')), {})
        self.assertEqual(v6.api_url, "http://[::1]:9002")

    def test_config_uses_its_api_section_only(self):
        """A problem elsewhere in the file (an unset ${VAR}, a typo) does not stop dnsgoctl; one in api does."""
        path = self.config('  listen_address: "127.0.0.1:9003"\n',
                           'upstreams: ["${NOT_SET_ANYWHERE}"]\nservr: {}\n')
        self.assertEqual(resolve(Flags(config=path), {}).api_url, "http://127.0.0.1:9003")
        bad = self.config('  listen_address: "nowhere:x"\n  auth_tokn: "x"\n')
        with self.assertRaises(UsageError) as caught:
            resolve(Flags(config=bad), {})
        self.assertIn("api.listen_address", caught.exception.message)
        self.assertIn("api.auth_tokn", caught.exception.message)
        for text, reason in (('  enabled: false\n', "disables the API"),
                             ('  listen_address: "127.0.0.1:0"\n', "port 0")):
            with self.assertRaises(UsageError) as caught:
                resolve(Flags(config=self.config(text)), {})
            self.assertIn(reason, caught.exception.message)
        with self.assertRaises(UsageError) as caught:
            resolve(Flags(config="/nonexistent/dnsgo.yaml"), {})
        self.assertIn("cannot read /nonexistent/dnsgo.yaml", caught.exception.message)

    def test_config_not_read_when_not_needed(self):
        """With address and token given, a broken --config file is not read."""
        settings = resolve(Flags(api="h:1", token="t", config="/nonexistent/dnsgo.yaml"), {})
        self.assertEqual(settings.api_url, "http://h:1")

    def test_api_addresses(self):
        """HOST:PORT gets http://; a bare host gets port 8080; URLs stay; nonsense is a usage error."""
        self.assertEqual(api_url("10.0.0.1:9000", "x"), "http://10.0.0.1:9000")
        self.assertEqual(api_url("dnsgo-control", "x"), "http://dnsgo-control:8080")
        self.assertEqual(api_url("[::1]:81", "x"), "http://[::1]:81")
        self.assertEqual(api_url("https://api.example/dnsgo/", "x"), "https://api.example/dnsgo")
        self.assertEqual(api_url(" http://h:80 ", "x"), "http://h:80")
        for bad in ("ftp://h:1", "h:99999", "h:port", "http://user:pw@h:1", "http://h:1/?q=1", "http://:80",
                    "h:0"):
            with self.assertRaises(UsageError, msg=bad) as caught:
                api_url(bad, "--api")
            self.assertIn("--api", caught.exception.message)

    def test_token_is_never_shown(self):
        """Settings hide the token from repr; a token no header can carry is refused without being echoed."""
        settings = Settings(token="sekrit-value")
        self.assertNotIn("sekrit-value", repr(settings))
        self.assertNotIn("sekrit-value", repr(Flags(token="sekrit-value")))
        result = ctl("stats", "--token", "sekrit value\n")
        self.assertEqual(result.code, USAGE)
        self.assertNotIn("sekrit", result.err)

    def test_timeout(self):
        """--timeout must be positive."""
        with self.assertRaises(UsageError):
            resolve(Flags(timeout=0.0), {})
        self.assertEqual(resolve(Flags(timeout=2.5), {}).timeout, 2.5)


# -- tables -------------------------------------------------------------------------


class TableTests(unittest.SynchronousTestCase):
    """Aligned text tables and number formats."""

    def test_columns_line_up(self):
        """Every column starts at the same offset on every line; right columns end together."""
        text = tables.table(["NAME", "N", "NOTE"], [["a", 5, "x"], ["longer-name", 12345, None]], right=(1,))
        lines = text.splitlines()
        self.assertEqual(lines, [
            "NAME             N  NOTE",
            "a                5  x",
            "longer-name  12345  -",
        ])
        self.assertEqual({line.rindex(word) for line, word in zip(lines, ("NOTE", "x", "-"))}, {20})

    def test_alignment_holds_for_any_widths(self):
        """For rows of any widths, each column's cells start (left) or end (right) at one offset."""
        rows = [["x" * i, str(10 ** i), "y" * (5 - i)] for i in range(5)]
        lines = tables.table(["A", "B", "C"], rows, right=(1,)).splitlines()
        width_a = max(len(r[0]) for r in rows + [["A"]])
        width_b = max(len(r[1]) for r in rows + [["A", "B"]])
        for line, row in zip(lines[1:], rows):
            self.assertEqual(line[:width_a].rstrip(), row[0])
            b_end = width_a + len(tables.GAP) + width_b
            self.assertEqual(line[:b_end].split()[-1], row[1])
            self.assertEqual(line[b_end + len(tables.GAP):], row[2])

    def test_a_row_of_the_wrong_length_is_refused(self):
        """A row with more or fewer cells than headers is a bug, not a table."""
        with self.assertRaises(ValueError):
            tables.table(["A", "B"], [["1"]])

    def test_pairs(self):
        """Keys padded to the longest."""
        self.assertEqual(tables.pairs([("a", 1), ("long", None)]), "a     1\nlong  -")

    def test_formats(self):
        """Percentages, sizes, durations."""
        self.assertEqual(tables.percent(96.77), "96.8%")
        self.assertEqual(tables.percent(None), "-")
        self.assertEqual(tables.size(512), "512 B")
        self.assertEqual(tables.size(52428800), "50.0 MiB")
        self.assertEqual(tables.duration(45), "45s")
        self.assertEqual(tables.duration(185), "3m05s")
        self.assertEqual(tables.duration(7380), "2h03m")
        self.assertEqual(tables.duration(2 * 86400 + 7200), "2d02h")


class RenderTests(unittest.SynchronousTestCase):
    """API bodies as tables."""

    def test_workers(self):
        """One aligned row per worker, heartbeat as an age, missing figures as '-'."""
        now = datetime.datetime(2024, 1, 15, 10, 30, 0, tzinfo=datetime.timezone.utc)
        lines = render.workers(WORKERS, now).splitlines()
        self.assertEqual(len(lines), 4)
        self.assertTrue(lines[0].startswith("WORKER"))
        self.assertIn("2s ago", lines[1])
        self.assertIn("1m00s ago", lines[2])
        self.assertIn("1h02m", lines[2])
        cluster_column = lines[0].index("CLUSTER")
        self.assertEqual([line[cluster_column:].split()[0] for line in lines[1:]], ["site-a", "site-b", "site-a"])

    def test_lookup_rows(self):
        """An entry's first record on its row, more records below it, a failed worker as an error row."""
        body = {"name": "www.example.test.", "type": None, "workers": [
            {"workerId": "w1", "success": True, "error": None, "truncated": False,
             "l1": [{"type": "A", "flags": "rd", "rcode": "NOERROR", "ttl": 297, "stale": False,
                     "records": ["www.example.test. 297 IN A 192.0.2.1", "www.example.test. 297 IN A 192.0.2.9"]}],
             "l2": [{"type": "A", "kind": "rrset", "ttl": 296, "rank": "answer", "source": "upstream",
                     "records": ["www.example.test. 296 IN A 192.0.2.1"]}]},
            {"workerId": "w2", "success": False, "error": "timed out", "l1": [], "l2": []},
        ], "shared": None}
        lines = render.lookup(body).splitlines()
        self.assertEqual(len(lines), 5)
        self.assertEqual(lines[1].split()[:5], ["L1", "w1", "A", "297", "NOERROR"])
        self.assertTrue(lines[2].strip().startswith("www.example.test. 297 IN A 192.0.2.9"))
        self.assertEqual(lines[3].split()[:4], ["L2", "w1", "A", "296"])
        self.assertIn("from upstream", lines[3])
        self.assertIn("error: timed out", lines[4])
        records = lines[0].index("RECORDS")
        self.assertEqual(lines[2][records:], "www.example.test. 297 IN A 192.0.2.9")
        self.assertEqual(render.lookup({"name": "x.", "type": "A", "workers": [], "shared": None}),
                         "nothing cached for x. A")

    def test_dump_check(self):
        """A dump is whole with its header, its entries and its end line, and only then."""
        header = b'{"format": "dnsgo-cache-dump", "version": 1}\n'
        entry = b'{"name": "a.", "type": "A"}\n'
        check = DumpCheck()
        for line in (header, entry, entry, b'{"end": true, "entries": 2}\n'):
            check.feed(line)
        check.finish()
        self.assertEqual(check.entries, 2)
        for lines, reason in (([header, entry], "truncated"), ([], "empty"),
                              ([header, entry, b'{"end": true, "entries": 5}\n'], "counts 5")):
            check = DumpCheck()
            for line in lines:
                check.feed(line)
            with self.assertRaises(Exception) as caught:
                check.finish()
            self.assertIn(reason, str(caught.exception))
        with self.assertRaises(Exception):
            DumpCheck().feed(b'{"format": "something-else"}\n')


# -- answers and exit codes ---------------------------------------------------------


class ExitCodeTests(unittest.SynchronousTestCase):
    """What each answer of a real HTTP server becomes."""

    def test_ok_sends_the_bearer_token(self):
        """200: exit 0, the table on stdout; the request carried 'Authorization: Bearer <token>'."""
        api = FakeAPI(self, {("GET", "/api/workers"): (200, WORKERS)})
        result = ctl("workers", "--api", api.url, environ={"DNSGO_TOKEN": TOKEN})
        self.assertEqual((result.code, result.err), (OK, ""))
        self.assertIn("site-b", result.out)
        self.assertEqual(api.requests[0].headers["Authorization"], f"Bearer {TOKEN}")
        self.assertNotIn(TOKEN, result.out)

    def test_json_is_the_api_body(self):
        """--json prints the API's body as it came."""
        api = FakeAPI(self, {("GET", "/api/workers"): (200, WORKERS)})
        result = ctl("workers", "--json", "--api", api.url)
        self.assertEqual(json.loads(result.out), WORKERS)

    def test_401(self):
        """401: exit 4, the API's reason and where the token came from, never the token."""
        api = FakeAPI(self, {("GET", "/api/workers"): (401, {"error": "unauthorized", "reason": "invalid bearer token"})})
        result = ctl("workers", "--api", api.url, environ={"DNSGO_TOKEN": TOKEN})
        self.assertEqual(result.code, UNAUTHORIZED)
        self.assertEqual(result.err, "dnsgoctl: unauthorized: invalid bearer token (the token came from $DNSGO_TOKEN)\n")
        self.assertEqual(result.out, "")

    def test_400_prints_the_reason(self):
        """400: exit 5 with the API's reason."""
        reason = "name 'a..b': empty label"
        api = FakeAPI(self, {("DELETE", "/api/cache/distributed"): (400, {"error": "bad_request", "reason": reason})})
        result = ctl("flush", "a..b", "--api", api.url)
        self.assertEqual(result.code, BAD_REQUEST)
        self.assertEqual(result.err, f"dnsgoctl: bad request: {reason}\n")

    def test_other_statuses(self):
        """500, 404, 503 and a body that is not JSON: exit 6, one line naming the request and status."""
        api = FakeAPI(self, {
            ("GET", "/api/cache/distributed"): (500, {"error": "internal_error", "reason": "see the server log"}),
            ("GET", "/api/upstreams"): (200, b"<html>not the API</html>"),
            ("GET", "/api/workers"): (503, b""),
        })
        cases = [("stats", "GET /api/cache/distributed: HTTP 500 internal_error: see the server log"),
                 ("lookup", "GET /api/cache/entries: HTTP 404 not_found"),
                 ("upstreams", "is not JSON"),
                 ("workers", "GET /api/workers: HTTP 503")]
        for command, expected in cases:
            argv = [command, "x."] if command == "lookup" else [command]
            result = ctl(*argv, "--api", api.url)
            self.assertEqual(result.code, HTTP_ERROR, (command, result.err))
            self.assertIn(expected, result.err)
            self.assertEqual(len(result.err.splitlines()), 1)

    def test_redirects_are_not_followed(self):
        """A 302 is an error (exit 6); the token is not taken to the Location."""
        api = FakeAPI(self, {("GET", "/api/workers"): (302, {})})
        result = ctl("workers", "--api", api.url, "--token", TOKEN)
        self.assertEqual(result.code, HTTP_ERROR)
        self.assertIn("redirect", result.err)
        self.assertEqual([r.path for r in api.requests], ["/api/workers"])

    def test_nothing_listening(self):
        """A closed port: exit 3, the address and where it came from."""
        port = closed_port()
        result = ctl("status", environ={"DNSGO_API": f"127.0.0.1:{port}"})
        self.assertEqual(result.code, UNREACHABLE)
        self.assertEqual(result.err, f"dnsgoctl: cannot reach the API at http://127.0.0.1:{port} "
                                     "(from $DNSGO_API): connection refused\n")

    def test_no_answer_in_time(self):
        """A server that accepts but never answers: exit 3 after --timeout."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            start = time.monotonic()
            result = ctl("workers", "--api", f"127.0.0.1:{listener.getsockname()[1]}", "--timeout", "0.3")
            elapsed = time.monotonic() - start
        self.assertEqual(result.code, UNREACHABLE)
        self.assertIn("no answer within 0.3 s", result.err)
        self.assertLess(elapsed, 5.0)

    def test_upload_refused_before_its_body(self):
        """load of a 4 MiB file refused with 401 at the headers: exit 4, not a broken connection."""
        refusal = EarlyRefusal(401, {"error": "unauthorized", "reason": "invalid bearer token"})
        api = FakeAPI(self, {("POST", "/api/cache/load"): refusal})
        path = write(self, ('{"x": "' + "y" * 1000 + '"}\n') * 4096)
        result = ctl("load", path, "--api", api.url, "--token", "wrong")
        self.assertEqual(result.code, UNAUTHORIZED, result.err)
        self.assertIn("invalid bearer token", result.err)
        self.assertLess(refusal.read, os.path.getsize(path))

    def test_failure_reported_by_the_api(self):
        """A flush the API carried out with success false: exit 1, the table shows which worker failed."""
        api = FakeAPI(self, {("DELETE", "/api/cache/distributed"): (200, {
            "success": False, "clearedCount": 1, "sharedCleared": False,
            "results": [{"workerId": "w1", "success": True, "cleared": ["message", "rrset"]},
                        {"workerId": "w2", "success": False, "cleared": []}]})})
        result = ctl("flush", "example.test.", "--api", api.url)
        self.assertEqual(result.code, FAILED)
        self.assertRegex(result.out, r"w2\s+FAILED")
        self.assertEqual(len(result.err.splitlines()), 1)


# -- what the subcommands ask ----------------------------------------------------------


class FlushRequestTests(unittest.SynchronousTestCase):
    """The DELETE bodies flush sends."""

    def setUp(self):
        self.api = FakeAPI(self, {
            ("GET", "/api/workers"): (200, WORKERS),
            ("DELETE", "/api/cache/distributed"): lambda r: (200, {
                "success": True, "clearedCount": len(r.json().get("workerIds", [])), "results": [],
                "sharedCleared": False}),
        })

    def sent(self, *argv):
        result = ctl("flush", *argv, "--api", self.api.url)
        self.assertEqual(result.code, OK, result.err)
        return [r.json() for r in self.api.requests if r.method == "DELETE"][-1]

    def test_bodies(self):
        """Each --cache/--worker/--cluster combination maps onto target, cacheType and workerIds."""
        self.assertEqual(self.sent("a.test."), {"name": "a.test.", "cacheType": "all", "target": "all"})
        self.assertEqual(self.sent("a.test.", "--type", "aaaa", "--subtree", "--cache", "l1"),
                         {"name": "a.test.", "type": "aaaa", "subtree": True, "cacheType": "message",
                          "target": "all"})
        self.assertEqual(self.sent("a.test.", "--cache", "shared"),
                         {"name": "a.test.", "cacheType": "rrset", "target": "shared"})
        self.assertEqual(self.sent("a.test.", "--worker", "w2", "--worker", "w3"),
                         {"name": "a.test.", "cacheType": "all", "target": "worker", "workerIds": ["w2", "w3"]})
        self.assertEqual(self.sent("a.test.", "--cluster", "site-a", "--cache", "l1"),
                         {"name": "a.test.", "cacheType": "message", "target": "worker",
                          "workerIds": ["w1", "w3"]})
        # l2 alone must not reach the shared cache: every worker, by name.
        self.assertEqual(self.sent("a.test.", "--cache", "l2"),
                         {"name": "a.test.", "cacheType": "rrset", "target": "worker",
                          "workerIds": ["w1", "w2", "w3"]})

    def test_unknown_cluster_and_shared_with_workers(self):
        """A cluster no worker is in: exit 5 naming the clusters; --cache shared with --worker: exit 2."""
        result = ctl("flush", "a.test.", "--cluster", "site-z", "--api", self.api.url)
        self.assertEqual(result.code, BAD_REQUEST)
        self.assertIn("site-a, site-b", result.err)
        result = ctl("flush", "a.test.", "--cache", "shared", "--worker", "w1", "--api", self.api.url)
        self.assertEqual(result.code, USAGE)
        self.assertFalse([r for r in self.api.requests if r.method == "DELETE"])


class DumpLoadTests(unittest.SynchronousTestCase):
    """dump writes a whole file or none; load sends the file and reports each worker."""

    HEADER = {"format": "dnsgo-cache-dump", "version": 1, "worker": "w1", "created": 1700000000}
    ENTRY = {"name": "a.test.", "type": "A", "class": "IN", "kind": "rrset", "rank": "answer",
             "expires": 1700000300}

    def dump_body(self, entries, end=True):
        lines = [self.HEADER] + [self.ENTRY] * entries + ([{"end": True, "entries": entries}] if end else [])
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    def test_dump_to_a_file(self):
        """A whole dump: the file holds the stream, no temporary file is left, the worker is passed on."""
        body = self.dump_body(3)
        api = FakeAPI(self, {("POST", "/api/cache/dump"): (200, body)})
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "cache.ndjson")
        result = ctl("dump", path, "--worker", "w1", "--api", api.url)
        self.assertEqual(result.code, OK, result.err)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), body)
        self.assertEqual(os.listdir(directory), ["cache.ndjson"])
        self.assertIn("wrote 3 entries of w1", result.out)
        self.assertEqual(api.requests[0].query, {"worker": "w1"})

    def test_truncated_dump_leaves_no_file(self):
        """A stream without its end line: exit 1, and neither the file nor a temporary one exists."""
        api = FakeAPI(self, {("POST", "/api/cache/dump"): (200, self.dump_body(2, end=False))})
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        old = os.path.join(directory, "cache.ndjson")
        with open(old, "w") as f:
            f.write("the previous dump\n")
        result = ctl("dump", old, "--api", api.url)
        self.assertEqual(result.code, FAILED)
        self.assertIn("truncated", result.err)
        self.assertEqual(os.listdir(directory), ["cache.ndjson"])
        with open(old) as f:
            self.assertEqual(f.read(), "the previous dump\n")

    def test_dump_broken_on_the_way(self):
        """The connection breaks in the middle of the dump: exit 1 (truncated), and no file is left."""
        body = self.dump_body(3)
        api = FakeAPI(self, {("POST", "/api/cache/dump"): CutOff(body[:-40], len(body))})
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        result = ctl("dump", os.path.join(directory, "d"), "--api", api.url)
        self.assertEqual(result.code, FAILED, result.err)
        self.assertIn("truncated", result.err)
        self.assertEqual(os.listdir(directory), [])

    def test_dump_to_stdout(self):
        """dump - writes the stream to stdout and nothing else."""
        body = self.dump_body(1)
        api = FakeAPI(self, {("POST", "/api/cache/dump"): (200, body)})
        result = ctl("dump", "-", "--api", api.url)
        self.assertEqual((result.code, result.out.encode()), (OK, body))

    def test_dump_into_a_missing_directory(self):
        """A path in no directory: exit 2 before asking the API."""
        api = FakeAPI(self, {})
        result = ctl("dump", "/nonexistent/dir/cache.ndjson", "--api", api.url)
        self.assertEqual(result.code, USAGE)
        self.assertEqual(api.requests, [])

    def test_load(self):
        """load sends the file's bytes as NDJSON; a worker that failed makes exit 1."""
        body = self.dump_body(2)
        answer = {"results": [{"workerId": "w1", "success": True, "loaded": 2, "expired": 0, "error": None},
                              {"workerId": "w2", "success": False, "loaded": 0, "expired": 0,
                               "error": "not reachable"}]}
        api = FakeAPI(self, {("POST", "/api/cache/load"): (200, answer)})
        path = write(self, body.decode())
        result = ctl("load", path, "--api", api.url, "--token", TOKEN)
        self.assertEqual(result.code, FAILED)
        self.assertEqual(api.requests[0].body, body)
        self.assertEqual(api.requests[0].headers["Content-Type"], "application/x-ndjson")
        self.assertEqual(api.requests[0].headers["Authorization"], f"Bearer {TOKEN}")
        self.assertRegex(result.out, r"w2\s+FAILED\s+0\s+0\s+not reachable")
        stdin = ctl("load", "-", "--worker", "w1", "--api", api.url, stdin=body)
        self.assertEqual(api.requests[1].body, body)
        self.assertEqual(api.requests[1].query, {"worker": "w1"})
        self.assertEqual(stdin.code, FAILED)


class CheckConfigTests(unittest.SynchronousTestCase):
    """check-config validates locally, as twistd dnsgo --check-config does."""

    def test_valid(self):
        """A valid file: exit 0."""
        path = write(self, 'server:\n  listen_address: "127.0.0.1:5399"\nupstreams: ["127.0.0.1:53"]\n')
        result = ctl("check-config", path)
        self.assertEqual((result.code, result.out), (OK, f"{path}: configuration OK\n"))

    def test_every_problem_with_its_path(self):
        """An invalid file: exit 1, each problem with its dotted path, no traceback."""
        path = write(self, "cache:\n  message_cache:\n    num_shards: 48\n  mode: hybird\nservr: {}\n"
                           'upstreams: ["1.2.3.4:99999"]\n')
        result = ctl("check-config", path)
        self.assertEqual(result.code, FAILED)
        for expected in ("cache.message_cache.num_shards: must be a power of two", "cache.mode:",
                         "servr: unknown key", "upstreams[0]:", "4 problems"):
            self.assertIn(expected, result.err)
        self.assertNotIn("Traceback", result.err)
        machine = ctl("check-config", path, "--json")
        data = json.loads(machine.out)
        self.assertEqual((machine.code, data["valid"], len(data["problems"])), (FAILED, False, 4))
        self.assertIn({"path": "servr", "message": "unknown key; did you mean 'server'?"}, data["problems"])

    def test_missing_file(self):
        """A file that is not there: exit 1 naming it."""
        result = ctl("check-config", "/nonexistent/dnsgo.yaml")
        self.assertEqual(result.code, FAILED)
        self.assertIn("/nonexistent/dnsgo.yaml", result.err)

    def test_needs_no_api_settings(self):
        """check-config reads no settings: a broken $DNSGO_API does not matter."""
        path = write(self, 'upstreams: ["127.0.0.1:53"]\n')
        self.assertEqual(ctl("check-config", path, environ={"DNSGO_API": "ftp://x"}).code, OK)
