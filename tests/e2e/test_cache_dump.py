"""
Cache inspection, dump, load and warm restarts with real processes: a
control plane and workers (``twistd dnsgo control`` / ``worker``) or a
standalone ``twistd dnsgo`` with ``cache.persist_path``, forwarding to
tests.support.authority, asked over DNS with dnspython and over HTTP.

"Upstream dead" is the authority gone silent: a worker can then answer only
from what it holds.
"""
import json
import os

import dns.rcode
from twisted.internet import defer
from twisted.trial import unittest

from tests.support.authority import Authority, AuthorityServer, make_zone
from tests.support.cluster_procs import (
    TOKEN,
    Cluster,
    clean_environ,
    free_port,
    http,
    spawn_twistd,
    stop_process,
    wait_until,
    write_file,
)
from tests.support.harness import ask

#: Names of the test zone that only these tests ask for.
NAMES = [f"n{i:03d}.example.test." for i in range(40)]
ZONE_EXTRA = "".join(f"n{i:03d} IN A 192.0.2.{100 + i}\n" for i in range(40))


def answered(port: int, names, qtype: str = "A") -> defer.Deferred:
    """Fires with how many of ``names`` 127.0.0.1:port answers NOERROR with an answer (one query each, in turn)."""

    @defer.inlineCallbacks
    def run():
        count = 0
        for name in names:
            try:
                r = yield ask(port, name, qtype, timeout=1.5)
            except Exception:
                continue
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                count += 1
        return count

    return run()


class DumpTestCase(unittest.TestCase):
    """An authority serving NAMES; helpers for the cache routes."""

    timeout = 90

    def setUp(self):
        self.auth = AuthorityServer(Authority(make_zone(ZONE_EXTRA))).start()
        self.addCleanup(self.auth.stop)

    def post(self, api_port: int, path: str, body: bytes = b"") -> defer.Deferred:
        return http(api_port, "POST", path, body=body)


class DumpAndLoadTests(DumpTestCase):
    """POST /api/cache/dump from one worker and /api/cache/load into another."""

    @defer.inlineCallbacks
    def test_dump_from_a_loads_into_fresh_b_which_answers_with_the_upstream_dead(self):
        """
        Worker A learns NAMES; its dump has them all (header, entries, end
        line); a fresh worker B loaded with it answers every one of them
        after the upstream went silent, while a fresh worker C without the
        load answers none.  ``GET /api/cache/entries`` on B shows the name's
        RRset with source ``load``.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("wa")
        self.assertEqual((yield answered(cluster.dns_ports["wa"], NAMES)), len(NAMES))

        dump = yield self.post(cluster.api_port, "/api/cache/dump?worker=wa")
        self.assertEqual(dump.status, 200, dump)
        self.assertEqual(dump.headers.get("content-type"), "application/x-ndjson")
        lines = dump.body.decode("ascii").splitlines()
        header, end = json.loads(lines[0]), json.loads(lines[-1])
        self.assertEqual((header["format"], header["version"], header["worker"]), ("dnsgo-cache-dump", 1, "wa"))
        self.assertEqual(end, {"end": True, "entries": len(lines) - 2})
        dumped = {json.loads(line)["name"] for line in lines[1:-1]}
        self.assertLessEqual(set(NAMES), dumped)

        self.auth.authority.silent = True
        yield cluster.start_workers("wb", "wc")
        loaded = yield self.post(cluster.api_port, "/api/cache/load?worker=wb", dump.body)
        self.assertEqual(loaded.status, 200, loaded)
        result = loaded.json()
        self.assertEqual([r["workerId"] for r in result["results"]], ["wb"])
        self.assertTrue(result["results"][0]["success"], result)
        self.assertGreaterEqual(result["results"][0]["loaded"], len(NAMES))
        self.assertEqual(result["results"][0]["expired"], 0)

        warm = yield answered(cluster.dns_ports["wb"], NAMES)
        cold = yield answered(cluster.dns_ports["wc"], NAMES[:5])
        self.assertEqual((warm, cold), (len(NAMES), 0))

        body = yield cluster.get(f"/api/cache/entries?name={NAMES[0]}&type=A&worker=wb")
        [worker] = body["workers"]
        self.assertEqual(worker["workerId"], "wb")
        l2 = [e for e in worker["l2"] if e["type"] == "A"]
        self.assertEqual([e["source"] for e in l2], ["load"])
        self.assertEqual(l2[0]["records"][0].split()[-1], "192.0.2.100")

    @defer.inlineCallbacks
    def test_expired_truncated_and_foreign_dumps(self):
        """
        A dump whose every expiry has passed loads nothing (all counted
        expired); a dump cut before its end line, one of another version and
        one that is not JSON are each refused with 400 and a reason, and
        load nothing.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("wa")
        yield answered(cluster.dns_ports["wa"], NAMES[:10])
        dump = yield self.post(cluster.api_port, "/api/cache/dump")  # one worker: no ?worker= needed
        self.assertEqual(dump.status, 200, dump)
        lines = dump.body.decode("ascii").splitlines()
        self.assertGreaterEqual(len(lines), 12)

        def with_expiry(line: str) -> str:
            item = json.loads(line)
            if "expires" in item:
                item["expires"] = item["expires"] - 10_000
            return json.dumps(item)

        expired = "\n".join([lines[0], *map(with_expiry, lines[1:])]) + "\n"
        r = yield self.post(cluster.api_port, "/api/cache/load", expired.encode())
        self.assertEqual(r.status, 200, r)
        [result] = r.json()["results"]
        self.assertEqual((result["loaded"], result["expired"]), (0, len(lines) - 2))

        truncated = "\n".join(lines[:-1]).encode()
        header = json.loads(lines[0])
        header["version"] = 2
        other_version = "\n".join([json.dumps(header), *lines[1:]]).encode()
        for body, reason in [(truncated, "truncated"), (other_version, "version"), (b"PK\x03\x04 zip", "not JSON")]:
            r = yield self.post(cluster.api_port, "/api/cache/load", body)
            self.assertEqual(r.status, 400, r)
            self.assertIn(reason, r.json()["reason"])

    @defer.inlineCallbacks
    def test_entries_shows_each_level_and_refuses_bad_requests(self):
        """
        After one query, /api/cache/entries for the name shows the reply in
        L1 and the RRset in L2 of the worker asked, nothing on the other
        worker, with a remaining TTL at most the zone's 300; a bad name, a
        bad type, an unknown worker and a missing token are refused.
        """
        cluster = Cluster(self, self.auth.port)
        yield cluster.start_control()
        yield cluster.start_workers("wa", "wb")
        yield answered(cluster.dns_ports["wa"], ["www.example.test."])
        body = yield cluster.get("/api/cache/entries?name=WWW.example.test&type=a")
        self.assertEqual((body["name"], body["type"], body["shared"]), ("WWW.example.test.", "A", None))
        workers = {w["workerId"]: w for w in body["workers"]}
        self.assertEqual(set(workers), {"wa", "wb"})
        self.assertEqual((workers["wb"]["l1"], workers["wb"]["l2"]), ([], []))
        [l1] = workers["wa"]["l1"]
        self.assertEqual((l1["type"], l1["rcode"], l1["stale"]), ("A", "NOERROR", False))
        self.assertTrue(0 < l1["ttl"] <= 300, l1)
        self.assertIn("www.example.test. ", l1["records"][0].lower())
        self.assertTrue(l1["records"][0].endswith(" IN A 192.0.2.1"), l1)
        [l2] = workers["wa"]["l2"]
        self.assertEqual((l2["kind"], l2["rank"], l2["source"]), ("rrset", "answer", "upstream"))

        any_type = yield cluster.get("/api/cache/entries?name=www.example.test.&worker=wa")
        self.assertEqual([w["workerId"] for w in any_type["workers"]], ["wa"])
        self.assertEqual([e["type"] for e in any_type["workers"][0]["l2"]], ["A"])

        for query, reason in [("name=www..example", "name"), ("name=www.example.test&type=TYPE0", "type"),
                              ("name=www.example.test&worker=nobody", "nobody"), ("type=A", "name")]:
            r = yield cluster.api("GET", f"/api/cache/entries?{query}")
            self.assertEqual(r.status, 400, (query, r))
            self.assertIn(reason, r.json()["reason"])
        r = yield cluster.api("GET", "/api/cache/entries?name=www.example.test", token="wrong")
        self.assertEqual(r.status, 401)
        r = yield self.post(cluster.api_port, "/api/cache/dump")
        self.assertEqual(r.status, 400, r)
        self.assertIn("worker", r.json()["reason"])


class PersistTests(DumpTestCase):
    """``cache.persist_path``: written on a clean stop, loaded at start."""

    def standalone(self, dns_port: int, api_port: int, path: str):
        config = write_file(
            self,
            f'server:\n  listen_address: "127.0.0.1:{dns_port}"\n'
            f'upstreams: ["127.0.0.1:{self.auth.port}"]\n'
            "upstream:\n  timeout: 1s\n  retries: 1\n"
            f'cache:\n  persist_path: "{path}"\n'
            f'api:\n  listen_address: "127.0.0.1:{api_port}"\n  auth_token: "{TOKEN}"\n',
        )
        return spawn_twistd(self, "standalone", ["dnsgo", "--config", config], clean_environ(), graceful=10.0)

    @defer.inlineCallbacks
    def test_restart_comes_back_warm(self):
        """
        A standalone server learns NAMES and is stopped with SIGTERM: the
        file is there, whole.  Restarted with the upstream silent, it says
        how many entries it loaded and answers every name.
        """
        dns_port, api_port = free_port(), free_port()
        path = os.path.abspath(self.mktemp()) + ".dump"
        first = self.standalone(dns_port, api_port, path)
        yield first.wait_for_text("DNS listening")
        self.assertIn("no file yet; starting cold", first.text)
        self.assertEqual((yield answered(dns_port, NAMES)), len(NAMES))
        yield stop_process(first, 10.0)
        self.assertIn("wrote", first.text)
        with open(path) as f:
            lines = f.read().splitlines()
        self.assertEqual(json.loads(lines[-1]), {"end": True, "entries": len(lines) - 2})
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))).count(os.path.basename(path)), 1)

        self.auth.authority.silent = True
        second = self.standalone(dns_port, api_port, path)
        yield second.wait_for_text("DNS listening")
        self.assertRegex(second.text, r"loaded \d+ entries, skipped 0 expired")
        self.assertEqual((yield answered(dns_port, NAMES)), len(NAMES))

    @defer.inlineCallbacks
    def test_a_damaged_file_starts_cold_with_one_line(self):
        """A file cut in the middle, and one that is not a dump, each start the server cold with one warning line; it serves."""
        for name, content in [("cut", '{"format":"dnsgo-cache-dump","version":1,"worker":"x","created":1}\n{"na'),
                              ("foreign", "\x00\x01binary\n")]:
            dns_port, api_port = free_port(), free_port()
            path = os.path.abspath(self.mktemp()) + f".{name}"
            with open(path, "w") as f:
                f.write(content)
            proc = self.standalone(dns_port, api_port, path)
            yield proc.wait_for_text("DNS listening")
            refusals = [line for line in proc.text.splitlines() if "refused" in line and path in line]
            self.assertEqual(len(refusals), 1, proc.text)
            self.assertIn("starting cold", refusals[0])
            self.assertEqual((yield answered(dns_port, ["www.example.test."])), 1)
            yield stop_process(proc, 10.0)
