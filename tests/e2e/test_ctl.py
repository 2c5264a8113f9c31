"""
``dnsgoctl`` as operators run it: the installed console script
(.venv/bin/dnsgoctl) as a child process, against a real control plane
(``twistd dnsgo control``) with two real workers (``twistd dnsgo worker``,
in clusters site-a and site-b) forwarding to tests.support.authority.

Every subcommand is run, with its table and its --json, and checked
against what the API and the DNS traffic say; and the error paths: a wrong
or missing token (exit 4), the API down (exit 3), a bad name (exit 5 with
the API's reason).  No run may print the token.
"""
import json
import os
import sys

import dns.rcode
from twisted.internet import defer, utils
from twisted.trial import unittest

from tests.support.authority import AuthorityServer
from tests.support.cluster_procs import (
    TOKEN,
    WWW,
    Cluster,
    by_worker,
    clean_environ,
    free_port,
    spawn_twistd,
    stop_process,
    wait_until,
    write_file,
)
from tests.support.harness import ask

#: The console script installed with the package, next to the venv's python.
DNSGOCTL = os.path.join(os.path.dirname(sys.executable), "dnsgoctl")

#: The workers of every test and the cluster each is in.
SITES = {"w1": "site-a", "w2": "site-b"}


class Run:
    """One run of dnsgoctl: exit code, stdout, stderr."""

    def __init__(self, argv, out: bytes, err: bytes, code: int) -> None:
        self.argv = argv
        self.out = out.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")
        self.code = code

    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"<dnsgoctl {' '.join(self.argv)}: exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}>"


def dnsgoctl(*argv: str, **env: str) -> defer.Deferred:
    """
    Run the console script with ``argv`` in an environment without
    DNSGO_* variables but ``env``; fires with its :class:`Run`.  Fails if
    the token appears in its output or a traceback does.
    """
    environ = {k: v for k, v in clean_environ().items() if not k.startswith("DNSGO_")}
    environ.update(env)

    def checked(result):
        out, err, code = result
        run = Run(argv, out, err, code)
        if TOKEN in run.out or TOKEN in run.err:
            raise AssertionError(f"dnsgoctl printed the token: {run!r}")
        if "Traceback" in run.err:
            raise AssertionError(f"dnsgoctl printed a traceback: {run!r}")
        return run

    return utils.getProcessOutputAndValue(DNSGOCTL, list(argv), env=environ, path=os.getcwd()).addCallback(checked)


class SitedCluster(Cluster):
    """A :class:`Cluster` whose workers are each given a cluster name (SITES) in their local file."""

    def spawn_worker(self, worker_id: str):
        port = self.dns_ports.setdefault(worker_id, free_port())
        local = write_file(self.testcase, f'server:\n  listen_address: "127.0.0.1:{port}"\n'
                                          f'  cluster_name: "{SITES[worker_id]}"\n')
        proc = spawn_twistd(
            self.testcase, worker_id,
            ["dnsgo", "worker", "--control-plane", f"127.0.0.1:{self.control_port}",
             "--worker-id", worker_id, "--config", local],
        )
        self.workers[worker_id] = proc
        return proc


def table_rows(text: str) -> list[list[str]]:
    """The rows of the first table in ``text`` (after its header line), split at the two-space column gaps."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("WORKER", "LEVEL")))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.split("  ") if cell.strip()])
    return rows


class CtlTestCase(unittest.TestCase):
    """An authority, and a control plane with workers w1 and w2, for each test."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.auth = AuthorityServer().start()
        self.addCleanup(self.auth.stop)
        self.cluster = SitedCluster(self, self.auth.port)
        yield self.cluster.start_control()
        yield self.cluster.start_workers(*SITES)
        #: The environment that points dnsgoctl at this cluster's API.
        self.env = {"DNSGO_API": f"127.0.0.1:{self.cluster.api_port}", "DNSGO_TOKEN": TOKEN}

    def ctl(self, *argv: str, **env: str) -> defer.Deferred:
        """dnsgoctl ``argv`` with this cluster's address and token in the environment (unless ``env`` overrides)."""
        return dnsgoctl(*argv, **{**self.env, **env})

    @defer.inlineCallbacks
    def ok(self, *argv: str, **env: str):
        """dnsgoctl ``argv``, which must exit 0 with nothing on stderr; its Run."""
        run = yield self.ctl(*argv, **env)
        self.assertEqual((run.code, run.err), (0, ""), run)
        return run

    def upstream_count(self, name: str = WWW[0], qtype: str = WWW[1]) -> int:
        return self.auth.authority.queries[(name, qtype)]

    @defer.inlineCallbacks
    def ask_ok(self, worker: str, name: str = WWW[0], qtype: str = WWW[1]):
        r = yield ask(self.cluster.dns_ports[worker], name, qtype)
        self.assertEqual(r.rcode(), dns.rcode.NOERROR, r)
        return r

    def lookups_reported(self, expected: dict) -> defer.Deferred:
        """Fires with /api/cache/distributed once each worker in ``expected`` reports that many L1 lookups."""

        def check():
            def seen(body):
                if body is None:
                    return None
                workers = by_worker(body)
                for worker, lookups in expected.items():
                    cache = workers.get(worker, {}).get("messageCache") or {}
                    if cache.get("hits", 0) + cache.get("misses", 0) != lookups:
                        return None
                return body

            return self.cluster.get_or_none("/api/cache/distributed").addCallback(seen)

        return wait_until(check, f"L1 lookups {expected}", 10.0)


class ViewTests(CtlTestCase):
    """status, stats, workers and upstreams show what the API holds."""

    @defer.inlineCallbacks
    def test_status_stats_workers_upstreams(self):
        """
        After 3 queries at w1 (1 miss, 2 hits) and 1 at w2: status gives the
        mode, HA role, 2 healthy workers and each one's L1 hit rate; stats
        each cache's hits and misses; workers each worker's cluster and
        status; upstreams the authority with its queries.  Each --json is
        the API's own figures.
        """
        for _ in range(3):
            yield self.ask_ok("w1")
        yield self.ask_ok("w2")
        body = yield self.lookups_reported({"w1": 3, "w2": 1})
        api = by_worker(body)

        run = yield self.ok("status")
        self.assertRegex(run.out, r"(?m)^mode\s+standalone$")
        self.assertRegex(run.out, r"(?m)^HA\s+single \(HA off\)$")
        self.assertRegex(run.out, r"(?m)^workers\s+2 \(2 healthy\)$")
        self.assertRegex(run.out, r"(?m)^shared cache\s+none$")
        rows = {row[0]: row for row in table_rows(run.out)}
        self.assertEqual(sorted(rows), ["w1", "w2"])
        self.assertEqual(rows["w1"][1:3], ["site-a", "healthy"])
        self.assertEqual(rows["w1"][4], f"{api['w1']['messageCache']['hit_rate']:.1f}%")
        self.assertEqual(rows["w2"][4], f"{api['w2']['messageCache']['hit_rate']:.1f}%")

        run = yield self.ok("status", "--json")
        status = run.json()
        self.assertEqual((status["mode"], status["workerCount"], status["healthyWorkers"]), ("standalone", 2, 2))
        self.assertEqual(status["ha"]["role"], "single")
        self.assertEqual({w["workerId"]: w["messageHitRate"] for w in status["workers"]},
                         {w: api[w]["messageCache"]["hit_rate"] for w in SITES})

        run = yield self.ok("stats")
        rows = {(row[0], row[1]): row for row in table_rows(run.out)}
        for worker in SITES:
            cache = api[worker]["messageCache"]
            self.assertEqual(rows[(worker, "L1 message")][2:4], [str(cache["hits"]), str(cache["misses"])])
        self.assertEqual((rows[("w1", "L1 message")][2], rows[("w1", "L1 message")][3]), ("2", "1"))
        run = yield self.ok("--json", "stats")
        stats = by_worker(run.json())
        self.assertEqual({w: stats[w]["messageCache"]["hits"] for w in SITES}, {"w1": 2, "w2": 0})

        run = yield self.ok("workers")
        rows = {row[0]: row for row in table_rows(run.out)}
        self.assertEqual({w: rows[w][1:2] + rows[w][3:4] for w in SITES},
                         {"w1": ["site-a", "healthy"], "w2": ["site-b", "healthy"]})
        self.assertEqual(rows["w1"][2], f"127.0.0.1:{self.cluster.dns_ports['w1']}")
        run = yield self.ok("workers", "--json")
        self.assertEqual({w["workerId"]: w["clusterName"] for w in run.json()["workers"]}, SITES)

        upstream = f"127.0.0.1:{self.auth.port}"

        def upstreams_reported():
            return self.ctl("upstreams", "--json").addCallback(
                lambda r: r if r.code == 0 and all(
                    any(u["address"] == upstream and u["queries"] >= 1 for u in w["upstreams"])
                    for w in r.json()["workers"]) and len(r.json()["workers"]) == 2 else None)

        yield wait_until(upstreams_reported, "both workers' upstream counts", 10.0)
        run = yield self.ok("upstreams")
        rows = table_rows(run.out)
        self.assertEqual(sorted((row[0], row[1], row[2]) for row in rows),
                         [("w1", upstream, "healthy"), ("w2", upstream, "healthy")])
        header = run.out.splitlines()[0].split("  ")
        self.assertIn("SRTT MS", [h.strip() for h in header])


class FlushTests(CtlTestCase):
    """flush reaches the caches and workers it names."""

    @defer.inlineCallbacks
    def test_flush_by_worker_cluster_cache_and_subtree(self):
        """
        --worker and --cluster flush one worker (the other stays warm);
        --cache l2 leaves L1 answering and l1 then sends the query upstream;
        a subtree flush reaches every name below and every worker.
        """
        for worker in SITES:
            yield self.ask_ok(worker)
        yield self.ask_ok("w1", "mail.example.test.")
        self.assertEqual(self.upstream_count(), 2)

        run = yield self.ok("flush", "www.example.test.", "--type", "A", "--worker", "w1")
        self.assertIn("flushed www.example.test. A from every cache on w1", run.out)
        self.assertEqual([row[:2] for row in table_rows(run.out)], [["w1", "ok"]])
        yield self.ask_ok("w1")
        self.assertEqual(self.upstream_count(), 3)
        yield self.ask_ok("w2")
        self.assertEqual(self.upstream_count(), 3)

        run = yield self.ok("flush", "www.example.test.", "--cluster", "site-b", "--json")
        self.assertEqual(run.json()["request"]["workerIds"], ["w2"])
        self.assertTrue(run.json()["result"]["success"])
        yield self.ask_ok("w2")
        self.assertEqual(self.upstream_count(), 4)

        yield self.ok("flush", "www.example.test.", "--cache", "l2", "--worker", "w1")
        yield self.ask_ok("w1")
        self.assertEqual(self.upstream_count(), 4, "L1 should still answer after an L2-only flush")
        yield self.ok("flush", "www.example.test.", "--cache", "l1", "--worker", "w1")
        yield self.ask_ok("w1")
        self.assertEqual(self.upstream_count(), 5, "with L1 and L2 flushed the query must go upstream")

        run = yield self.ok("flush", "example.test.", "--subtree")
        self.assertEqual(sorted(row[0] for row in table_rows(run.out)), ["w1", "w2"])
        for worker in SITES:
            yield self.ask_ok(worker)
        self.assertEqual(self.upstream_count(), 7)
        yield self.ask_ok("w1", "mail.example.test.")
        self.assertEqual(self.upstream_count("mail.example.test."), 2)

    @defer.inlineCallbacks
    def test_bad_requests_exit_5_with_the_reason(self):
        """A bad name, a bad type and an unknown worker: exit 5 and the API's own reason; an unknown cluster too."""
        for body, argv in (({"name": "bad..name."}, ["flush", "bad..name."]),
                           ({"name": "www.example.test.", "type": "NOPE"},
                            ["flush", "www.example.test.", "--type", "NOPE"]),
                           ({"name": "x.", "target": "worker", "workerIds": ["w9"], "cacheType": "all"},
                            ["flush", "x.", "--worker", "w9"])):
            response = yield self.cluster.clear(body)
            self.assertEqual(response.status, 400, response)
            run = yield self.ctl(*argv)
            self.assertEqual(run.code, 5, run)
            self.assertEqual(run.err, f"dnsgoctl: bad request: {response.json()['reason']}\n")
            self.assertEqual(run.out, "")
        run = yield self.ctl("flush", "x.", "--cluster", "site-z")
        self.assertEqual(run.code, 5, run)
        self.assertIn("site-a, site-b", run.err)


class AccessTests(CtlTestCase):
    """Where the address and token come from, and what a wrong one or a dead API gives."""

    @defer.inlineCallbacks
    def test_token_sources_and_failures(self):
        """
        The token from --token-file and from the control plane's own
        --config works; a wrong token and none exit 4 with the API's
        reason; once the control plane is gone, exit 3.
        """
        token_file = write_file(self, TOKEN + "\n")
        run = yield self.ok("workers", "--token-file", token_file, DNSGO_TOKEN="")
        self.assertEqual(sorted(row[0] for row in table_rows(run.out)), ["w1", "w2"])
        run = yield dnsgoctl("--config", self.cluster.config_path, "workers", "--json")
        self.assertEqual((run.code, sorted(w["workerId"] for w in run.json()["workers"])), (0, ["w1", "w2"]), run)

        run = yield self.ctl("status", DNSGO_TOKEN="wrong-token")
        self.assertEqual(run.code, 4, run)
        self.assertEqual(run.err, "dnsgoctl: unauthorized: invalid bearer token (the token came from $DNSGO_TOKEN)\n")
        run = yield self.ctl("stats", DNSGO_TOKEN="")
        self.assertEqual(run.code, 4, run)
        self.assertIn("missing Authorization header", run.err)
        run = yield self.ctl("flush", "www.example.test.", "--token", "wrong-token")
        self.assertEqual(run.code, 4, run)

        yield stop_process(self.cluster.control)
        for argv in (["status"], ["flush", "www.example.test."], ["lookup", "www.example.test."]):
            run = yield self.ctl(*argv)
            self.assertEqual(run.code, 3, run)
            self.assertEqual(run.err, f"dnsgoctl: cannot reach the API at http://127.0.0.1:{self.cluster.api_port} "
                                      "(from $DNSGO_API): connection refused\n")


class CacheTests(CtlTestCase):
    """lookup, dump and load (the routes of docs/api.md's cache inspection and dump sections)."""

    @defer.inlineCallbacks
    def test_lookup_shows_each_level_and_a_flush_empties_it(self):
        """
        After www A is asked at w1, lookup shows it in w1's L1 and L2 with
        its record and a TTL of at most the zone's 300 s, and nothing at w2;
        after a flush, lookup shows the name gone.
        """
        yield self.ask_ok("w1")
        run = yield self.ok("lookup", "www.example.test.", "A")
        rows = table_rows(run.out)
        self.assertEqual(sorted((row[0], row[1], row[2]) for row in rows if row[0] in ("L1", "L2")),
                         [("L1", "w1", "A"), ("L2", "w1", "A")])
        for row in rows:
            self.assertTrue(0 < int(row[3]) <= 300, row)
            self.assertIn("192.0.2.1", row[-1])
        run = yield self.ok("lookup", "www.example.test.", "--json")
        workers = by_worker(run.json())
        self.assertEqual(sorted(workers), ["w1", "w2"])
        self.assertEqual((workers["w2"]["l1"], workers["w2"]["l2"]), ([], []))
        self.assertEqual([e["type"] for e in workers["w1"]["l2"]], ["A"])

        yield self.ok("flush", "www.example.test.")
        run = yield self.ok("lookup", "www.example.test.", "A")
        self.assertEqual(run.out, "nothing cached for www.example.test. A\n")

        run = yield self.ctl("lookup", "bad..name.")
        self.assertEqual(run.code, 5, run)
        self.assertIn("bad name", run.err)

    @defer.inlineCallbacks
    def test_dump_from_one_worker_and_load_into_the_other(self):
        """
        dump --worker w1 writes a whole dump (and no temporary file);
        load --worker w2 loads it; then, with the upstream silent, w2
        answers the dumped names.  Without --worker, dump is refused (two
        workers: exit 5); a truncated file is refused by load (exit 5).
        """
        names = ["www.example.test.", "mail.example.test.", "h10.example.test."]
        for name in names:
            yield self.ask_ok("w1", name)
        directory = os.path.abspath(self.mktemp())
        os.mkdir(directory)
        path = os.path.join(directory, "w1.dump")

        run = yield self.ok("dump", path, "--worker", "w1")
        self.assertRegex(run.out, rf"^wrote \d+ entries of w1 to {path} \(\d+ bytes\)\n$")
        self.assertEqual(os.listdir(directory), ["w1.dump"])
        with open(path, "rb") as f:
            lines = f.read().splitlines()
        header, end = json.loads(lines[0]), json.loads(lines[-1])
        self.assertEqual((header["format"], header["worker"]), ("dnsgo-cache-dump", "w1"))
        self.assertEqual(end, {"end": True, "entries": len(lines) - 2})
        dumped = {json.loads(line)["name"].lower().rstrip(".") + "." for line in lines[1:-1]}
        self.assertTrue(set(names) <= dumped, dumped)

        run = yield self.ctl("dump", os.path.join(directory, "other.dump"))
        self.assertEqual(run.code, 5, run)
        self.assertEqual(os.listdir(directory), ["w1.dump"])

        run = yield self.ok("load", path, "--worker", "w2", "--json")
        results = run.json()["results"]
        self.assertEqual([(r["workerId"], r["success"]) for r in results], [("w2", True)])
        self.assertEqual(results[0]["loaded"], len(lines) - 2)

        self.auth.authority.silent = True
        asked = self.auth.authority.total
        for name in names:
            r = yield self.ask_ok("w2", name)
            self.assertTrue(r.answer, name)
        self.assertEqual(self.auth.authority.total, asked)

        cut = write_file(self, "\n".join(line.decode() for line in lines[:-1]) + "\n")
        run = yield self.ctl("load", cut, "--worker", "w2")
        self.assertEqual(run.code, 5, run)
        self.assertIn("not a loadable cache dump", run.err)


class CheckConfigTests(unittest.TestCase):
    """check-config through the console script, with no API anywhere."""

    @defer.inlineCallbacks
    def test_valid_and_invalid(self):
        """A valid file: exit 0; an invalid one: exit 1 and each problem with its path on stderr."""
        good = write_file(self, 'server:\n  listen_address: "127.0.0.1:5399"\nupstreams: ["127.0.0.1:53"]\n')
        run = yield dnsgoctl("check-config", good)
        self.assertEqual((run.code, run.out), (0, f"{good}: configuration OK\n"), run)
        bad = write_file(self, 'api:\n  listen_address: "127.0.0.1:99999"\ncache:\n  mode: hybird\n')
        run = yield dnsgoctl("check-config", bad)
        self.assertEqual(run.code, 1, run)
        self.assertIn("2 problems", run.err)
        self.assertIn("api.listen_address:", run.err)
        self.assertIn("cache.mode:", run.err)
        run = yield dnsgoctl("check-config", bad, "--json")
        self.assertEqual(sorted(p["path"] for p in run.json()["problems"]), ["api.listen_address", "cache.mode"])
