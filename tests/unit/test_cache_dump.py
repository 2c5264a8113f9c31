"""
The cache dump format (dnsgo.cache.dump), cache inspection
(dnsgo.cache.inspect, RRsetCache.peek, MessageCache.peek), presentation
format (dnsgo.dns.present) and persist_path (dnsgo.app.persist), on a Clock.
"""
import json
import os

from twisted.internet import task
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.app.cache_tools import CacheTools
from dnsgo.app.persist import PersistService, persist_file
from dnsgo.cache import dump, inspect
from dnsgo.cache.message import MessageCache
from dnsgo.cache.rrset import RRsetCache
from dnsgo.dns import wire
from dnsgo.dns.names import parse_name
from dnsgo.dns.present import present_name, present_rdata, present_record

EPOCH = 1_764_500_000.0


def soa(owner=b"example.com", minimum=60):
    return dns.RRHeader(owner, dns.SOA, dns.IN, 60, dns.Record_SOA(b"ns.example.com", b"h.example.com", 1, 2, 3, 4, minimum))


def filled(clock):
    cache = RRsetCache(reactor=clock, num_shards=4)
    cache.insert_rrset(b"WWW.example.com", dns.A, dns.IN, [dns.Record_A("192.0.2.1"), b"\xc0\x00\x02\x02"], 300, source="upstream")
    cache.insert_rrset(b"mx.example.com", dns.MX, dns.IN, [dns.Record_MX(10, b"mail.example.com")], 120)
    cache.insert_negative(b"gone.example.com", None, dns.IN, dns.ENAME, soa(), 60)
    cache.insert_negative(b"www.example.com", dns.AAAA, dns.IN, dns.OK, soa(), 50)
    return cache


class Caches:
    def __init__(self, messages, rrsets):
        self.messages, self.rrsets = messages, rrsets


class DumpFormatTests(SynchronousTestCase):
    """Writing and reading a dump, and loading it into another cache."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        self.cache = filled(self.clock)
        self.lines = list(dump.dump_lines(self.cache, worker="w1", now=self.clock.seconds()))

    def test_round_trip_keeps_what_remains(self):
        """Loaded 30 s later, every entry is there with 30 s less, its owner's case, its rank, its source 'load'."""
        contents = dump.read_dump(self.lines)
        self.assertEqual((contents.worker, contents.created, len(contents.entries)), ("w1", EPOCH, 4))
        later = task.Clock()
        later.advance(EPOCH + 30)
        other = RRsetCache(reactor=later)
        self.assertEqual(dump.load(other, contents.entries, now=later.seconds()), dump.LoadResult(4, 0))
        [a1, a2] = other.get(b"www.example.com", dns.A)
        self.assertEqual((a1.name.name, a1.ttl, a2.payload.dottedQuad()), (b"WWW.example.com", 270, "192.0.2.2"))
        self.assertEqual(other.get(b"mx.example.com", dns.MX)[0].payload.name.name, b"mail.example.com")
        rcode, neg = other.get_negative(b"gone.example.com", dns.A)
        self.assertEqual((rcode, neg.ttl, neg.name.name), (dns.ENAME, 30, b"example.com"))
        self.assertEqual(other.get_negative(b"www.example.com", dns.AAAA)[1].ttl, 20)
        self.assertEqual({e.source for _, e in other.peek(b"www.example.com")}, {"load"})

    def test_expired_entries_are_skipped(self):
        """At 100 s the negative entries (60, 50 s) have expired; 2 load, 2 are counted expired."""
        contents = dump.read_dump(self.lines)
        other = RRsetCache(reactor=self.clock)
        self.assertEqual(dump.load(other, contents.entries, now=EPOCH + 100), dump.LoadResult(2, 2))

    def test_header_and_end_line(self):
        """The first line says format, version, worker and time; the last counts the entries."""
        self.assertEqual(json.loads(self.lines[0]), {"format": "dnsgo-cache-dump", "version": 1, "worker": "w1", "created": EPOCH})
        self.assertEqual(json.loads(self.lines[-1]), {"end": True, "entries": 4})
        self.assertTrue(all(line.endswith("\n") and line.isascii() for line in self.lines))

    def refused(self, lines, text):
        with self.assertRaises(dump.DumpError) as caught:
            dump.read_dump(lines)
        self.assertIn(text, str(caught.exception))

    def test_refusals(self):
        """Every kind of damage is refused with what and where."""
        self.refused([], "empty")
        self.refused(self.lines[:-1], "truncated")
        self.refused(self.lines[:3], "truncated")
        self.refused([self.lines[0].replace('"version":1', '"version":2'), *self.lines[1:]], "version")
        self.refused([self.lines[0].replace("dnsgo-cache-dump", "other"), *self.lines[1:]], "not a dnsgo cache dump")
        self.refused([*self.lines[:-1], '{"end":true,"entries":3}\n'], "counts 3 entries")
        self.refused([*self.lines, '{"x":1}\n'], "after the end line")
        self.refused([self.lines[0], "[1,2]\n", *self.lines[1:]], "line 2: not a JSON object")
        self.refused([self.lines[0], "{nope\n", *self.lines[1:]], "line 2: not JSON")

    def test_bad_entries(self):
        """An entry breaking a rule is refused with the line number and why."""
        entry = json.loads(self.lines[1])

        def with_change(**change):
            bad = {**entry, **change}
            return [self.lines[0], json.dumps(bad), '{"end":true,"entries":1}']

        rrset = next(json.loads(line) for line in self.lines[1:-1] if json.loads(line)["kind"] == "rrset")
        entry = rrset
        self.refused(with_change(kind="maybe"), "unknown kind")
        self.refused(with_change(owner="other.example.com."), "owner")
        self.refused(with_change(rdata=[]), "1 to 256 records")
        self.refused(with_change(rdata=["!!"]), "line 2")
        self.refused(with_change(expires="soon"), "expires")
        self.refused(with_change(name="no-final-dot"), "ending in a dot")
        self.refused(with_change(name="a..b."), "label")
        self.refused(with_change(type="TYPE0"), "type")
        negative = next(json.loads(line) for line in self.lines[1:-1] if json.loads(line)["kind"] == "nxdomain")
        entry = negative
        self.refused(with_change(soa={"owner": "elsewhere.org.", "rdata": negative["soa"]["rdata"]}), "zone")
        self.refused(with_change(soa={"owner": "example.com.", "rdata": "AAAA"}), "line 2")

    def test_escaped_names_round_trip(self):
        """A name with a space and a non-ASCII byte is written with \\DDD and read back exactly."""
        cache = RRsetCache(reactor=self.clock)
        cache.insert_rrset(b"a b\xff.example", dns.A, dns.IN, [b"\x01\x02\x03\x04"], 60)
        lines = list(dump.dump_lines(cache, worker="w", now=EPOCH))
        self.assertIn('"name":"a\\\\032b\\\\255.example."', lines[1])
        [entry] = dump.read_dump(lines).entries
        self.assertEqual((entry.name, entry.owner), (b"a b\xff.example", b"a b\xff.example"))


class PresentTests(SynchronousTestCase):
    """Presentation format of rdata."""

    def test_common_types(self):
        name = b"\x04mail\x07example\x00"
        self.assertEqual(present_rdata(1, b"\xc0\x00\x02\x01"), "192.0.2.1")
        self.assertEqual(present_rdata(28, bytes(15) + b"\x01"), "::1")
        self.assertEqual(present_rdata(15, b"\x00\x0a" + name), "10 mail.example.")
        self.assertEqual(present_rdata(5, name), "mail.example.")
        self.assertEqual(present_rdata(16, b"\x02hi\x03a\"b"), '"hi" "a\\"b"')
        self.assertEqual(present_rdata(33, b"\x00\x01\x00\x02\x00\x35" + name), "1 2 53 mail.example.")
        self.assertEqual(present_rdata(6, name + name + bytes(range(20))).split()[:3],
                         ["mail.example.", "mail.example.", str(int.from_bytes(bytes(range(4)), "big"))])

    def test_generic_form(self):
        """Unknown types, and rdata that does not parse as its type, use RFC 3597's form."""
        self.assertEqual(present_rdata(65280, b"\xab\xcd"), "\\# 2 abcd")
        self.assertEqual(present_rdata(1, b"\x01\x02"), "\\# 2 0102")
        self.assertEqual(present_rdata(5, b"\x05ab"), "\\# 3 056162")
        self.assertEqual(present_rdata(99, b""), "")

    def test_names_and_records(self):
        self.assertEqual(present_name(b"\x00"), ".")
        self.assertEqual(present_name(b"\x03a.b\x02c \x00"), "a\\.b.c\\032.")
        self.assertEqual(present_record(b"\x03www\x00", 30, 1, 1, b"\x7f\x00\x00\x01"), "www. 30 IN A 127.0.0.1")
        self.assertEqual(present_record(b"\x00", 0, 3, 65280, b""), ". 0 CH TYPE65280 \\# 0")


class InspectTests(SynchronousTestCase):
    """What inspection shows of L1 and L2, without touching their order or counters."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(EPOCH)

    def test_l2_entries(self):
        cache = filled(self.clock)
        self.clock.advance(10)
        before = cache.stats()
        entries, truncated = inspect.l2_entries(cache, b"www.example.com", None, now=self.clock.seconds())
        self.assertFalse(truncated)
        by_type = {e["type"]: e for e in entries}
        self.assertEqual(by_type["A"]["records"], ["WWW.example.com. 290 IN A 192.0.2.1", "WWW.example.com. 290 IN A 192.0.2.2"])
        self.assertEqual((by_type["AAAA"]["kind"], by_type["AAAA"]["ttl"]), ("nodata", 40))
        self.assertEqual(cache.stats(), before)
        [nx], _ = inspect.l2_entries(cache, b"gone.example.com", dns.A, now=self.clock.seconds())
        self.assertEqual((nx["type"], nx["kind"]), (None, "nxdomain"))
        self.clock.advance(45)
        entries, _ = inspect.l2_entries(cache, b"www.example.com", None, now=self.clock.seconds())
        self.assertEqual([e["type"] for e in entries], ["A"])

    def test_l1_entries(self):
        """A stored reply shows with its key flags, remaining TTL, records; then as stale once expired."""
        cache = MessageCache(reactor=self.clock, max_stale=3600)
        query = dns.Message(id=7, recDes=1)
        query.addQuery(b"www.example.com", dns.A)
        q = wire.parse_query(query.toStr())
        reply = dns.Message(id=7, answer=1, recDes=1, recAv=1)
        reply.queries = query.queries
        reply.answers = [dns.RRHeader(b"www.example.com", dns.A, dns.IN, 100, dns.Record_A("192.0.2.1"))]
        self.assertTrue(cache.store(q, reply.toStr()))
        self.clock.advance(40)
        [entry], truncated = inspect.l1_entries(cache, b"www.example.com", dns.A)
        self.assertEqual(entry, {"type": "A", "flags": "rd", "rcode": "NOERROR", "ttl": 60, "stale": False,
                                 "records": ["www.example.com. 60 IN A 192.0.2.1"]})
        self.assertEqual(inspect.l1_entries(cache, b"www.example.com", None)[0], [entry])
        self.assertEqual(inspect.l1_entries(cache, b"www.example.com", dns.AAAA)[0], [])
        self.assertEqual(cache.stats().hits + cache.stats().misses, 0)
        self.clock.advance(100)
        [stale], _ = inspect.l1_entries(cache, b"WWW.example.com", dns.A)
        self.assertEqual((stale["ttl"], stale["stale"], stale["records"]), (0, True, ["www.example.com. 0 IN A 192.0.2.1"]))

    def test_bounded(self):
        """More than MAX_ENTRIES entries of a name: the first ones, and truncated."""
        cache = RRsetCache(reactor=self.clock)
        for code in range(1000, 1000 + inspect.MAX_ENTRIES + 5):
            cache.insert_rrset(b"many.example", code, dns.IN, [b"x"], 60)
        entries, truncated = inspect.l2_entries(cache, b"many.example", None, now=EPOCH)
        self.assertEqual((len(entries), truncated), (inspect.MAX_ENTRIES, True))


class ToolsAndPersistTests(SynchronousTestCase):
    """CacheTools and PersistService over real files."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        self.tools = CacheTools(Caches(None, filled(self.clock)), "w1", reactor=self.clock)

    def test_dump_shards_and_load(self):
        """The segments' lines together are the dump's entries; loading them into another process's tools loads them all."""
        lines, shards = self.tools.dump_shard(0)
        self.assertEqual(shards, 4)
        every = [line for index in range(shards) for line in self.tools.dump_shard(index)[0]]
        self.assertEqual(len(every), 4)
        other = CacheTools(Caches(None, RRsetCache(reactor=self.clock)), "w2", reactor=self.clock)
        self.assertEqual(other.load("".join(every)), dump.LoadResult(4, 0))
        with self.assertRaises(ValueError):
            self.tools.dump_shard(4)
        with self.assertRaises(ValueError):
            other.load('{"name": "x."}\n')

    def test_inspect_refuses_bad_names(self):
        for name in ["", "a..b", "bad name", "ü.example", "x" * 64 + ".example"]:
            with self.assertRaises(ValueError):
                self.tools.inspect(name, None)
        with self.assertRaises(ValueError):
            self.tools.inspect("ok.example", "NOTATYPE")
        self.assertEqual(parse_name("WWW.example.com."), b"WWW.example.com")
        self.assertEqual(parse_name("."), b"")

    def test_persist_round_trip_and_damaged_files(self):
        """Stop writes the file (no temporary left); start loads it; a damaged file leaves the cache empty, the start going on."""
        folder = self.mktemp()
        os.makedirs(folder)
        path = persist_file(os.path.join(folder, "l2-{worker_id}.dump"), "w1")
        self.assertTrue(path.endswith("l2-w1.dump"))
        writer = PersistService(self.tools, path)
        writer.startService()  # no file yet: cold
        writer.stopService()
        self.assertEqual(os.listdir(folder), ["l2-w1.dump"])
        fresh = RRsetCache(reactor=self.clock)
        reader = PersistService(CacheTools(Caches(None, fresh), "w1", reactor=self.clock), path)
        reader.startService()
        self.assertEqual(fresh.stats().entries, 4)
        with open(path, "r+") as f:
            f.truncate(os.path.getsize(path) - 10)
        damaged = RRsetCache(reactor=self.clock)
        messages = []
        service = PersistService(CacheTools(Caches(None, damaged), "w1", reactor=self.clock), path)
        service.log = _ListLogger(messages)
        service.startService()
        self.assertEqual(damaged.stats().entries, 0)
        self.assertEqual(len(messages), 1)
        self.assertIn("starting cold", messages[0])

    def test_unwritable_folder_is_one_line(self):
        messages = []
        service = PersistService(self.tools, "/proc/no/such/folder/file")
        service.log = _ListLogger(messages)
        service.startService()
        service.stopService()
        self.assertTrue(any("not written" in m for m in messages), messages)


class _ListLogger:
    """Collects formatted warnings and infos."""

    def __init__(self, into):
        self._into = into

    def _add(self, text, **kw):
        self._into.append(text.format(**kw))

    def warn(self, text, **kw):
        self._add(text, **kw)

    def info(self, text, **kw):
        if "refused" in text or "not written" in text:
            self._add(text, **kw)
