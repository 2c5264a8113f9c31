"""
Tests for dnsgo.invalidation: flush values, applying them to real L1 and L2
caches, the pub/sub message format, and the local, pub/sub and broadcast
invalidators (on a Clock with an in-memory broker, and over a real
redis-server).
"""
import json
import os
import time

from twisted.internet import defer, reactor as real_reactor, task
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dnsgo.dns import wire
from dnsgo.upstream.failures import FailureCache
from dnsgo.cache.message import MessageCache
from dnsgo.cache.rrset import RRsetCache
from dnsgo.config import InvalidationConfig, PubSubConfig
from dnsgo.invalidation.batch import (
    FORMAT_VERSION,
    MAX_MESSAGE_BYTES,
    MAX_SIGNED_AGE,
    SIGNED_PREFIX,
    BadMessage,
    Batch,
    decode_batch,
    encode_batch,
    sign_message,
)
from dnsgo.invalidation.strategies import (
    BroadcastInvalidator,
    InvalidationStats,
    LocalInvalidator,
    PubSubInvalidator,
    SharedFlushFailed,
    build_invalidator,
)
from dnsgo.invalidation.flush import Flush, apply_locally
from dnsgo.dns.types import parse_cache_kinds, parse_qtype, qtype_text
from dnsgo.serve.reply import encode_reply
from dnsgo.cache.signing import Signer
from dnsgo.app.assemble import Caches
from tests.support.fake_pubsub import FakeBroker, FakePubSubBackend
from tests.support.redis_procs import SKIP, RedisServer, cli

CHANNEL = b"dns:invalidate"

#: (name, type) of every entry ``fill_all`` stores, in both caches.
ENTRIES = [
    ("www.example.com", dns.A),
    ("www.example.com", dns.AAAA),
    ("example.com", dns.A),
    ("a.b.example.com", dns.A),
    ("notexample.com", dns.A),
    ("example.org", dns.A),
]


def _record(name: str, qtype: int) -> dns.RRHeader:
    payload = dns.Record_A("192.0.2.1") if qtype == dns.A else dns.Record_AAAA("2001:db8::1")
    return dns.RRHeader(name.encode(), qtype, dns.IN, 300, payload)


def _query(name: str, qtype: int) -> wire.QueryInfo:
    return wire.parse_query(wire.build_query(1, wire.text_to_name(name), qtype))


def make_caches(clock) -> Caches:
    """Real L1 and L2 caches on ``clock``, with a failure cache."""
    return Caches(MessageCache(reactor=clock), RRsetCache(reactor=clock), 3600, FailureCache(reactor=clock))


def fill(caches: Caches, name: str, qtype: int) -> None:
    """Store an answer for ``name``/``qtype`` in L1 (reply bytes) and L2 (RRsets)."""
    q = _query(name, qtype)
    rr = _record(name, qtype)
    assert caches.messages.store(q, encode_reply(q, dns.OK, [rr], [], []))
    caches.rrsets.store_reply(dns.Query(name.encode(), qtype), dns.OK, [rr], [], [])


def fill_all(caches: Caches) -> None:
    """Store every entry of ENTRIES."""
    for name, qtype in ENTRIES:
        fill(caches, name, qtype)


def in_l1(caches: Caches, name: str, qtype: int) -> bool:
    """Whether L1 answers ``name``/``qtype``."""
    return caches.messages.lookup(_query(name, qtype)) is not None


def in_l2(caches: Caches, name: str, qtype: int) -> bool:
    """Whether L2 holds the RRset of ``name``/``qtype``."""
    return caches.rrsets.get(name.encode(), qtype) is not None


def remaining(caches: Caches) -> tuple[set, set]:
    """The ENTRIES still in L1 and in L2."""
    return (
        {e for e in ENTRIES if in_l1(caches, *e)},
        {e for e in ENTRIES if in_l2(caches, *e)},
    )


class FlushValueTests(SynchronousTestCase):
    """Flush values: canonical names, types, cache kinds, JSON."""

    def test_canonical_name(self):
        """Names are stored lowercase and absolute, whatever the input's case and final dot."""
        self.assertEqual(Flush("WWW.Example.COM").name, "www.example.com.")
        self.assertEqual(Flush("www.example.com.").name, "www.example.com.")
        self.assertEqual(Flush(".").name, ".")
        self.assertEqual(Flush("www.example.com"), Flush("www.EXAMPLE.com."))

    def test_bad_names(self):
        """Empty labels, overlong labels, non-ASCII and non-text names are refused."""
        for bad in ("", "a..b", "x" * 64 + ".com", "exämple.com", b"example.com", 12):
            with self.assertRaises(ValueError, msg=repr(bad)):
                Flush(bad)

    def test_types(self):
        """Types are given as codes, mnemonics in any case, or TYPEnnn; written back as mnemonics when known."""
        self.assertEqual(Flush("a.", "aaaa").qtype, 28)
        self.assertEqual(Flush("a.", 28).qtype, 28)
        self.assertEqual(parse_qtype("HTTPS"), 65)
        self.assertEqual(parse_qtype("TYPE65280"), 65280)
        self.assertEqual(parse_qtype("257"), 257)
        self.assertEqual(qtype_text(1), "A")
        self.assertEqual(qtype_text(255), "ANY")
        self.assertEqual(qtype_text(65280), 65280)
        for bad in ("BOGUS", 0, 65536, -1, True, "TYPE", 1.5, "TYPE٣"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                parse_qtype(bad)

    def test_cache_kinds(self):
        """Cache kinds: 'all', one kind, or a collection; unknown kinds and none at all are refused."""
        self.assertEqual(Flush().caches, frozenset({"message", "rrset"}))
        self.assertEqual(Flush(caches="all").caches, frozenset({"message", "rrset"}))
        self.assertEqual(Flush(caches="message").caches, frozenset({"message"}))
        self.assertEqual(parse_cache_kinds(["rrset"]), frozenset({"rrset"}))
        for bad in ([], "infra", ["message", "shared"]):
            with self.assertRaises(ValueError, msg=repr(bad)):
                Flush(caches=bad)

    def test_subtree_must_be_bool(self):
        """subtree is a real boolean (a JSON "yes" or 1 is refused)."""
        for bad in ("yes", 1, None):
            with self.assertRaises(ValueError):
                Flush("a.", subtree=bad)

    def test_everything(self):
        """Flush.everything() names no name and no type; a subtree flush of the root is everything too."""
        self.assertEqual(Flush.everything(), Flush())
        self.assertTrue(Flush.everything().is_everything)
        self.assertTrue(Flush(".", subtree=True).is_everything)
        self.assertFalse(Flush(".").is_everything)
        self.assertFalse(Flush(qtype="A").is_everything)
        self.assertEqual(Flush.everything("message").caches, frozenset({"message"}))

    def test_frozen(self):
        """A flush cannot be changed."""
        with self.assertRaises(AttributeError):
            Flush("a.").name = "b."

    def test_name_forms(self):
        """The L1 form is the wire name, the L2 form dotted bytes without the final dot."""
        f = Flush("WWW.example.com")
        self.assertEqual(f.wire_name(), b"\x03www\x07example\x03com\x00")
        self.assertEqual(f.dotted_name(), b"www.example.com")
        self.assertEqual(Flush(".").wire_name(), b"\x00")
        self.assertEqual(Flush(".").dotted_name(), b"")
        self.assertIsNone(Flush().wire_name())
        self.assertIsNone(Flush().dotted_name())

    def test_json_round_trip(self):
        """to_json and from_json agree, with the type as a mnemonic or a number."""
        for f in (Flush(), Flush("example.com", "A", True, "rrset"), Flush("x.", 65280)):
            self.assertEqual(Flush.from_json(json.loads(json.dumps(f.to_json()))), f)
        self.assertEqual(
            Flush("example.com", "AAAA").to_json(),
            {"name": "example.com.", "type": "AAAA", "subtree": False, "caches": ["message", "rrset"]},
        )
        self.assertEqual(Flush.from_json({"name": "example.com", "type": 28}), Flush("example.com", "AAAA"))

    def test_from_json_malformed(self):
        """from_json refuses what does not describe a flush, with a ValueError."""
        for bad in (
            [],
            {},
            {"name": 5},
            {"name": "a.", "type": True},
            {"name": "a.", "subtree": "true"},
            {"name": "a.", "caches": "message"},
            {"name": "a.", "caches": [1]},
            {"name": "a.", "caches": []},
        ):
            with self.assertRaises(ValueError, msg=repr(bad)):
                Flush.from_json(bad)


class ApplyLocallyTests(SynchronousTestCase):
    """apply_locally on real MessageCache and RRsetCache instances filled with real entries."""

    def setUp(self):
        self.clock = Clock()
        self.caches = make_caches(self.clock)
        fill_all(self.caches)
        self.assertEqual(remaining(self.caches), (set(ENTRIES), set(ENTRIES)))

    def test_name(self):
        """A name flush drops every type of that name, in both caches, and nothing else."""
        removed = apply_locally(Flush("WWW.example.com."), self.caches)
        self.assertEqual(removed, 4)
        left = set(ENTRIES) - {("www.example.com", dns.A), ("www.example.com", dns.AAAA)}
        self.assertEqual(remaining(self.caches), (left, left))

    def test_batch_equals_one_by_one(self):
        """A batch (one L1 scan) leaves exactly what applying its flushes one at a time leaves."""
        from dnsgo.invalidation.flush import apply_batch_locally

        batch = [Flush("www.example.com", "AAAA"), Flush("example.org"),
                 Flush("example.com", subtree=True, caches="message")]
        other = make_caches(self.clock)
        fill_all(other)
        one_by_one = sum(apply_locally(f, other) for f in batch)
        self.assertEqual(apply_batch_locally(batch, self.caches), one_by_one)
        self.assertEqual(remaining(self.caches), remaining(other))
        self.assertNotEqual(remaining(self.caches), (set(ENTRIES), set(ENTRIES)))

    def test_name_and_type(self):
        """A name+type flush drops only that type of that name."""
        removed = apply_locally(Flush("www.example.com", "AAAA"), self.caches)
        self.assertEqual(removed, 2)
        left = set(ENTRIES) - {("www.example.com", dns.AAAA)}
        self.assertEqual(remaining(self.caches), (left, left))

    def test_subtree(self):
        """A subtree flush drops the name and every name below it, at label boundaries."""
        removed = apply_locally(Flush("example.com", subtree=True), self.caches)
        left = {("notexample.com", dns.A), ("example.org", dns.A)}
        self.assertEqual(remaining(self.caches), (left, left))
        self.assertEqual(removed, 8)

    def test_subtree_and_type(self):
        """A subtree flush with a type drops that type only, below the name."""
        apply_locally(Flush("example.com", "A", subtree=True), self.caches)
        left = {("www.example.com", dns.AAAA), ("notexample.com", dns.A), ("example.org", dns.A)}
        self.assertEqual(remaining(self.caches), (left, left))

    def test_everything(self):
        """Flush.everything() empties both caches and counts every entry."""
        self.assertEqual(apply_locally(Flush.everything(), self.caches), 2 * len(ENTRIES))
        self.assertEqual(remaining(self.caches), (set(), set()))
        self.assertEqual(len(self.caches.messages), 0)
        self.assertEqual(self.caches.rrsets.stats().entries, 0)

    def test_one_cache_kind(self):
        """A flush of one cache kind leaves the other alone."""
        apply_locally(Flush("example.org", caches="message"), self.caches)
        self.assertEqual(remaining(self.caches), (set(ENTRIES) - {("example.org", dns.A)}, set(ENTRIES)))
        apply_locally(Flush.everything("rrset"), self.caches)
        self.assertEqual(remaining(self.caches), (set(ENTRIES) - {("example.org", dns.A)}, set()))

    def test_type_only(self):
        """A flush by type without a name drops that type everywhere."""
        apply_locally(Flush(qtype="AAAA"), self.caches)
        left = set(ENTRIES) - {("www.example.com", dns.AAAA)}
        self.assertEqual(remaining(self.caches), (left, left))

    def test_unknown_name(self):
        """A flush of a name nobody cached drops nothing."""
        self.assertEqual(apply_locally(Flush("nowhere.test"), self.caches), 0)
        self.assertEqual(remaining(self.caches), (set(ENTRIES), set(ENTRIES)))

    def test_failures_forgotten(self):
        """Any flush forgets remembered upstream failures, so the next query goes upstream."""
        self.caches.failures.failed("k")
        apply_locally(Flush("nowhere.test"), self.caches)
        self.assertFalse(self.caches.failures.recent("k"))

    def test_missing_caches(self):
        """A process without a local L2 (or failure cache) applies flushes to what it has."""
        caches = Caches(MessageCache(reactor=self.clock), None, 0)
        fill_l1 = _query("www.example.com", dns.A)
        caches.messages.store(fill_l1, encode_reply(fill_l1, dns.OK, [_record("www.example.com", dns.A)], [], []))
        self.assertEqual(apply_locally(Flush.everything(), caches), 1)


DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "docs", "invalidation.md")


def doc_example() -> bytes:
    """The example message of docs/invalidation.md: its first JSON block after the format heading."""
    with open(DOCS, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Message format"):]
    start = section.index("```json\n") + len("```json\n")
    return section[start:section.index("```", start)].encode("utf-8")


class MessageFormatTests(SynchronousTestCase):
    """The versioned JSON message format (docs/invalidation.md)."""

    def test_documented_example(self):
        """The example in docs/invalidation.md decodes to what it says."""
        batch = decode_batch(doc_example())
        self.assertEqual(batch.origin, "worker-1")
        self.assertEqual(batch.seq, 17)
        self.assertEqual(batch.sent_at, 1764150000.123)
        self.assertEqual(
            batch.flushes,
            (
                Flush("example.com.", dns.A),
                Flush("example.net.", subtree=True, caches="message"),
                Flush(qtype=65, caches="rrset"),
            ),
        )

    def test_round_trip(self):
        """encode_batch and decode_batch agree; the version and every field are written."""
        batch = Batch((Flush("a.example", "TXT"), Flush.everything()), "w-1", 3, 1764150000.5)
        data = encode_batch(batch)
        self.assertEqual(decode_batch(data), batch)
        obj = json.loads(data)
        self.assertEqual(obj["v"], FORMAT_VERSION)
        self.assertEqual(obj["flushes"][0]["type"], "TXT")

    def test_minimal_message(self):
        """A hand-written message needs only v and flushes, and a flush only its name."""
        batch = decode_batch(b'{"v":1,"flushes":[{"name":"example.com"}]}')
        self.assertEqual(batch, Batch((Flush("example.com"),)))

    def test_unknown_keys_skipped(self):
        """Keys the format does not name are skipped (room for optional additions within version 1)."""
        batch = decode_batch(b'{"v":1,"extra":[1],"flushes":[{"name":null,"hint":"x"}]}')
        self.assertEqual(batch.flushes, (Flush(),))

    def test_malformed(self):
        """Anything else is a BadMessage, never another exception."""
        for bad in (
            b"",
            b"not json",
            b"\xff\xfe",
            b"[1]",
            b'{"flushes": []}',
            b'{"v": 2, "flushes": []}',
            b'{"v": "1", "flushes": []}',
            b'{"v": true, "flushes": []}',
            b'{"v": 1}',
            b'{"v": 1, "flushes": {}}',
            b'{"v": 1, "origin": 5, "flushes": []}',
            b'{"v": 1, "seq": "x", "flushes": []}',
            b'{"v": 1, "sent_at": "now", "flushes": []}',
            b'{"v": 1, "sent_at": NaN, "flushes": []}',
            b'{"v": 1, "flushes": [{"name": "a..b"}]}',
            b'{"v": 1, "flushes": [{"name": "a.", "type": "BOGUS"}]}',
            b"[" * 100000,
            b'{"v": 1, "flushes": [' + b'{"name": null},' * (MAX_MESSAGE_BYTES // 15) + b'{"name": null}]}',
        ):
            with self.assertRaises(BadMessage, msg=repr(bad[:60])):
                decode_batch(bad)


class FakeSharedStore:
    """A shared store that records its flush calls; ``hold`` makes them wait for the test."""

    def __init__(self, result=0, fail=False, hold=False):
        self.calls = []
        self.result = result
        self.fail = fail
        self.hold = hold
        self.waiting = []

    def flush(self, name, qtype, subtree):
        self.calls.append((name, qtype, subtree))
        if self.hold:
            d = defer.Deferred()
            self.waiting.append(d)
            return d
        if self.fail:
            return defer.fail(RuntimeError("shared store down"))
        return defer.succeed(self.result)


class PubSubTests(SynchronousTestCase):
    """PubSubInvalidator on a Clock with an in-memory broker: batching, applying, skipping, resyncing."""

    def setUp(self):
        self.clock = Clock()
        self.broker = FakeBroker()

    def worker(self, origin, batch_size=100, batch_delay=0.1, shared=None, **kw):
        """A started invalidator for a new worker with filled caches and its own connection."""
        caches = make_caches(self.clock)
        fill_all(caches)
        backend = FakePubSubBackend(self.broker)
        inv = PubSubInvalidator(caches, backend, CHANNEL, batch_size, batch_delay, origin,
                                shared_store=shared, reactor=self.clock, **kw)
        inv.startService()
        self.addCleanup(inv.stopService)
        return inv, caches, backend

    def published(self):
        return [decode_batch(m) for m in self.broker.messages(CHANNEL)]

    def test_one_publish_per_delay(self):
        """Five flushes within batch_delay go out as exactly one PUBLISH, batch_delay after the first."""
        a, _, _ = self.worker("a")
        names = [f"n{i}.example" for i in range(5)]
        for name in names:
            a.invalidate(Flush(name))
            self.clock.advance(0.01)
        self.assertEqual(self.published(), [])
        self.clock.advance(0.1 - 0.05 - 0.001)
        self.assertEqual(self.published(), [])
        self.clock.advance(0.002)
        batches = self.published()
        self.assertEqual(len(batches), 1)
        self.assertEqual([f.name for f in batches[0].flushes], [n + "." for n in names])
        self.assertEqual(batches[0].origin, "a")
        self.clock.advance(10)
        self.assertEqual(len(self.published()), 1)
        self.assertEqual(a.stats().sent_batches, 1)
        self.assertEqual(a.stats().sent_flushes, 5)

    def test_batches_by_size(self):
        """With batch_size 2, five flushes make three PUBLISHes: two full ones at once, the rest after the delay."""
        a, _, backend = self.worker("a", batch_size=2)
        for i in range(5):
            a.invalidate(Flush(f"n{i}.example"))
        self.assertEqual([len(b.flushes) for b in self.published()], [2, 2])
        self.assertEqual(a.stats().pending, 1)
        self.clock.advance(0.1)
        self.assertEqual([len(b.flushes) for b in self.published()], [2, 2, 1])
        self.assertEqual(backend.publish_attempts, 3)
        self.assertEqual([b.seq for b in self.published()], [1, 2, 3])

    def test_delay_counts_from_first_flush(self):
        """A batch leaves batch_delay after its first flush, not after the latest one."""
        a, _, _ = self.worker("a")
        a.invalidate(Flush("one.example"))
        self.clock.advance(0.08)
        a.invalidate(Flush("two.example"))
        self.clock.advance(0.021)
        self.assertEqual([len(b.flushes) for b in self.published()], [2])

    def test_flush_reaches_other_worker(self):
        """A flush on A drops entries on A at once and on B when the batch arrives, in both caches."""
        a, a_caches, _ = self.worker("a")
        b, b_caches, _ = self.worker("b")
        a.invalidate(Flush("www.example.com", "A"))
        self.assertFalse(in_l1(a_caches, "www.example.com", dns.A))
        self.assertTrue(in_l1(b_caches, "www.example.com", dns.A))
        self.clock.advance(0.1)
        left = set(ENTRIES) - {("www.example.com", dns.A)}
        self.assertEqual(remaining(b_caches), (left, left))
        self.assertEqual(b.stats().received_batches, 1)
        self.assertEqual(b.stats().applied_flushes, 1)
        self.assertEqual(b.stats().removed_entries, 2)

    def test_own_batches_skipped(self):
        """A worker skips its own batches when Redis sends them back to it."""
        a, a_caches, _ = self.worker("a")
        a.invalidate(Flush("www.example.com", "A"))
        fill(a_caches, "www.example.com", dns.A)  # refilled before the batch goes out
        self.clock.advance(0.1)
        self.assertEqual(len(self.published()), 1)
        self.assertTrue(in_l1(a_caches, "www.example.com", dns.A))
        self.assertEqual(a.stats().skipped_own, 1)
        self.assertEqual(a.stats().received_batches, 0)

    def test_malformed_and_foreign_versions_ignored(self):
        """Malformed messages and unknown versions are counted and ignored; the caches stay as they were."""
        b, b_caches, _ = self.worker("b")
        bad = [
            b"garbage",
            b'{"v": 2, "origin": "x", "flushes": [{"name": null}]}',
            b'{"v": 1, "flushes": [{"name": null}, {"name": "a..b"}]}',
            b'{"v": 1, "flushes": "everything"}',
        ]
        for message in bad:
            self.broker.deliver(CHANNEL, message)
        self.assertEqual(b.stats().ignored_messages, len(bad))
        self.assertEqual(b.stats().received_batches, 0)
        self.assertEqual(remaining(b_caches), (set(ENTRIES), set(ENTRIES)))
        # a good message after them still applies
        self.broker.deliver(CHANNEL, b'{"v": 1, "flushes": [{"name": "example.org"}]}')
        self.assertFalse(in_l1(b_caches, "example.org", dns.A))
        self.assertEqual(b.stats().received_batches, 1)

    def test_reconnect_clears(self):
        """After the subscription comes back from a loss, the worker's L1 and local L2 are empty and it counts that."""
        a, _, _ = self.worker("a")
        b, b_caches, _ = self.worker("b")
        b.subscription.lose()
        a.invalidate(Flush("www.example.com"))
        self.clock.advance(0.1)
        self.assertTrue(in_l1(b_caches, "www.example.com", dns.A))  # missed it
        b.subscription.restore()
        self.assertEqual(remaining(b_caches), (set(), set()))
        self.assertEqual(b.stats().resync_clears, 1)
        self.assertEqual(b.stats().removed_entries, 2 * len(ENTRIES))

    def test_reconnect_clears_only_resync_caches(self):
        """resync_caches={'message'} clears only L1 on a resubscription."""
        b, b_caches, _ = self.worker("b", resync_caches={"message"})
        b.subscription.restore()
        self.assertEqual(remaining(b_caches), (set(), set(ENTRIES)))

    def test_shared_store_cleared_once(self):
        """Only the originating worker clears the shared store, once per flush, with the L2 name form."""
        shared_a, shared_b = FakeSharedStore(result=3), FakeSharedStore()
        a, _, _ = self.worker("a", shared=shared_a)
        self.worker("b", shared=shared_b)
        d = a.invalidate(Flush("WWW.example.com", "A", subtree=True))
        self.assertEqual(self.successResultOf(d), 2 + 3)
        self.clock.advance(0.1)
        self.assertEqual(shared_a.calls, [(b"www.example.com", dns.A, True)])
        self.assertEqual(shared_b.calls, [])
        a.invalidate(Flush.everything("message"))
        self.assertEqual(len(shared_a.calls), 1, "an L1-only flush leaves the shared store alone")

    def test_everything_in_shared_store(self):
        """A flush of everything reaches the shared store as name None, type None."""
        shared = FakeSharedStore()
        a, _, _ = self.worker("a", shared=shared)
        a.invalidate(Flush.everything())
        self.assertEqual(shared.calls, [(None, None, False)])

    def test_shared_store_failure(self):
        """A shared store failure fails the Deferred with the local count, and the flush is still published."""
        a, _, _ = self.worker("a", shared=FakeSharedStore(fail=True))
        failure = self.failureResultOf(a.invalidate(Flush("www.example.com")), SharedFlushFailed)
        self.assertEqual(failure.value.removed, 4)
        self.assertEqual(a.stats().shared_failures, 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.published()), 1)

    def test_published_after_shared_store(self):
        """A flush is queued once the shared store is clear, and local entries refilled meanwhile are dropped again."""
        shared = FakeSharedStore(hold=True)
        a, a_caches, _ = self.worker("a", shared=shared)
        d = a.invalidate(Flush("www.example.com", "A"))
        fill(a_caches, "www.example.com", dns.A)  # refilled from the not yet cleared shared store
        self.clock.advance(1)
        self.assertEqual(self.published(), [])
        self.assertNoResult(d)
        shared.waiting[0].callback(1)
        self.assertEqual(self.successResultOf(d), 2 + 1 + 2)
        self.assertFalse(in_l1(a_caches, "www.example.com", dns.A))
        self.clock.advance(0.1)
        self.assertEqual(len(self.published()), 1)

    def test_publish_retried(self):
        """A batch that cannot be published is kept and retried every retry_delay until it goes out."""
        a, _, backend = self.worker("a", retry_delay=1.0)
        b, b_caches, _ = self.worker("b")
        backend.fail_publish = True
        a.invalidate(Flush("www.example.com"))
        self.clock.advance(0.1)
        self.assertEqual(a.stats().publish_failures, 1)
        self.assertEqual(a.stats().pending, 1)
        a.invalidate(Flush("example.org"))  # queued behind the retry, not sent on its own
        self.assertEqual(backend.publish_attempts, 1)
        self.clock.advance(1.0)
        self.assertEqual(a.stats().publish_failures, 2)
        backend.fail_publish = False
        self.clock.advance(1.0)
        self.assertEqual([len(x.flushes) for x in self.published()], [2])
        self.assertFalse(in_l1(b_caches, "www.example.com", dns.A))
        self.assertFalse(in_l1(b_caches, "example.org", dns.A))
        self.assertEqual(a.stats().pending, 0)

    def test_no_publishing_while_backing_off(self):
        """After a failed publish, full batches wait for the retry instead of hammering Redis."""
        a, _, backend = self.worker("a", batch_size=1, retry_delay=1.0)
        backend.fail_publish = True
        a.invalidate(Flush("one.example"))
        self.assertEqual(backend.publish_attempts, 1)
        a.invalidate(Flush("two.example"))
        a.invalidate(Flush("three.example"))
        self.assertEqual(backend.publish_attempts, 1)
        backend.fail_publish = False
        self.clock.advance(1.0)
        self.assertEqual(sorted(b.flushes[0].name for b in self.published()),
                         ["one.example.", "three.example.", "two.example."])
        a.invalidate(Flush("four.example"))
        self.assertEqual(len(self.published()), 4, "a full batch goes out at once again")

    def test_pending_collapses(self):
        """More than max_pending waiting flushes collapse into one flush of everything."""
        a, _, backend = self.worker("a", batch_size=2, max_pending=4)
        backend.fail_publish = True
        for i in range(6):
            a.invalidate(Flush(f"n{i}.example"))
            self.clock.advance(1.0)
        self.assertLessEqual(a.stats().pending, 4)
        backend.fail_publish = False
        self.clock.advance(1.0)
        flushes = [f for batch in self.published() for f in batch.flushes]
        self.assertIn(Flush.everything(), flushes)

    def test_stop_publishes_pending(self):
        """Stopping publishes what is queued at once and ends the subscription."""
        a, _, _ = self.worker("a")
        a.invalidate(Flush("www.example.com"))
        subscription = a.subscription
        self.successResultOf(a.stopService())
        self.assertEqual(len(self.published()), 1)
        self.assertTrue(subscription.stopped)
        self.clock.advance(1)
        self.assertEqual(len(self.published()), 1)

    def test_after_stop_no_batching(self):
        """A flush that completes after the service stopped is published at once, not left on a timer."""
        a, _, _ = self.worker("a")
        self.successResultOf(a.stopService())
        a.invalidate(Flush("www.example.com"))
        self.assertEqual(len(self.published()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stats_value(self):
        """stats() is a frozen snapshot."""
        a, _, _ = self.worker("a")
        stats = a.stats()
        self.assertIsInstance(stats, InvalidationStats)
        self.assertEqual(stats.strategy, "pubsub")
        a.invalidate(Flush("x."))
        self.assertEqual(stats.flushes, 0)
        self.assertEqual(a.stats().flushes, 1)
        with self.assertRaises(AttributeError):
            stats.flushes = 5


class LocalAndBroadcastTests(SynchronousTestCase):
    """The local-only and broadcast invalidators, and choosing one from the configuration."""

    def setUp(self):
        self.clock = Clock()
        self.caches = make_caches(self.clock)
        fill_all(self.caches)

    def test_local(self):
        """local-only: a flush drops this process's entries and fires with the count."""
        inv = LocalInvalidator(self.caches)
        self.assertEqual(self.successResultOf(inv.invalidate(Flush("www.example.com"))), 4)
        self.assertFalse(in_l2(self.caches, "www.example.com", dns.A))
        self.assertEqual(inv.stats().flushes, 1)
        self.assertEqual(inv.stats().strategy, "local-only")

    def test_broadcast(self):
        """broadcast: a flush applies here, then goes to send; a received one applies here only."""
        sent = []
        inv = BroadcastInvalidator(self.caches, lambda f: sent.append(f) or defer.succeed(None))
        self.assertEqual(self.successResultOf(inv.invalidate(Flush("example.org"))), 2)
        self.assertEqual(sent, [Flush("example.org")])
        self.assertEqual(inv.receive(Flush("www.example.com", "AAAA")), 2)
        self.assertEqual(sent, [Flush("example.org")])
        self.assertFalse(in_l1(self.caches, "www.example.com", dns.AAAA))
        stats = inv.stats()
        self.assertEqual((stats.sent_batches, stats.received_batches), (1, 1))

    def test_broadcast_send_failure(self):
        """A failed send fails the flush's Deferred (after the local flush) and is counted."""
        inv = BroadcastInvalidator(self.caches, lambda f: defer.fail(ConnectionError("control plane down")))
        self.failureResultOf(inv.invalidate(Flush("example.org")), ConnectionError)
        self.assertFalse(in_l1(self.caches, "example.org", dns.A))
        self.assertEqual(inv.stats().publish_failures, 1)

    def test_build(self):
        """build_invalidator picks the class the strategy names and refuses missing collaborators."""
        local = build_invalidator(InvalidationConfig(), self.caches, reactor=self.clock)
        self.assertIsInstance(local, LocalInvalidator)
        cfg = InvalidationConfig(strategy="pubsub", pubsub=PubSubConfig(channel="c", batch_size=7, batch_delay=0.2))
        with self.assertRaises(ValueError):
            build_invalidator(cfg, self.caches, reactor=self.clock)
        ps = build_invalidator(cfg, self.caches, backend=FakePubSubBackend(FakeBroker()), origin_id="w1",
                               reactor=self.clock)
        self.assertIsInstance(ps, PubSubInvalidator)
        self.assertEqual((ps.channel, ps.origin_id), (b"c", "w1"))
        bc = InvalidationConfig(strategy="broadcast")
        with self.assertRaises(ValueError):
            build_invalidator(bc, self.caches, reactor=self.clock)
        self.assertIsInstance(build_invalidator(bc, self.caches, send=lambda f: None, reactor=self.clock),
                              BroadcastInvalidator)

    def test_unique_origins(self):
        """build_invalidator gives each pubsub invalidator its own origin id when none is given."""
        cfg = InvalidationConfig(strategy="pubsub")
        make = lambda: build_invalidator(cfg, self.caches, backend=FakePubSubBackend(FakeBroker()), reactor=self.clock)
        self.assertNotEqual(make().origin_id, make().origin_id)


def _build_backend():
    """dnsgo.redis.factory.build_backend, or None while it does not exist yet."""
    try:
        from dnsgo.redis.factory import build_backend
    except ImportError:
        return None
    return build_backend


class RealRedisTests(TestCase):
    """Two workers' invalidators over a real redis-server, including a killed subscriber connection."""

    skip = SKIP or (None if _build_backend() else "dnsgo.redis.factory is not there yet")
    timeout = 60
    BATCH_DELAY = 0.1

    def setUp(self):
        from dnsgo.config import Address, SharedCacheConfig

        self.redis = RedisServer().start()
        self.addCleanup(self.redis.stop)
        shared = SharedCacheConfig(enabled=True, type="redis", address=Address("127.0.0.1", self.redis.port))
        build_backend = _build_backend()
        self.workers = {}
        for origin in ("a", "b"):
            backend = build_backend(shared, "", real_reactor)
            caches = make_caches(real_reactor)
            fill_all(caches)
            inv = PubSubInvalidator(caches, backend, CHANNEL, 100, self.BATCH_DELAY, f"worker-{origin}",
                                    reactor=real_reactor)
            self.workers[origin] = (inv, caches, backend)
        return self._start()

    @defer.inlineCallbacks
    def _start(self):
        for inv, _, backend in self.workers.values():
            yield backend.start()
            self.addCleanup(backend.stop)
            inv.startService()
            self.addCleanup(inv.stopService)
        # both subscriptions live: a probe published by hand reaches both
        yield self._poll(lambda: cli(self.redis.port, "PUBSUB", "NUMSUB", CHANNEL.decode()).split()[-1] == "2",
                         "two subscribers")

    @defer.inlineCallbacks
    def _poll(self, predicate, what, timeout=10.0, interval=0.01):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield task.deferLater(real_reactor, interval, lambda: None)

    @defer.inlineCallbacks
    def _flush_reaches_b(self, flush, name, qtype):
        """Flush on A; return how long it took to reach B's L1 (asserting it did, within batch_delay + 0.5 s)."""
        a, _, _ = self.workers["a"]
        _, b_caches, _ = self.workers["b"]
        self.assertTrue(in_l1(b_caches, name, qtype))
        start = time.monotonic()
        yield a.invalidate(flush)
        yield self._poll(lambda: not in_l1(b_caches, name, qtype), f"{name} to leave B's L1",
                         timeout=self.BATCH_DELAY + 0.5)
        elapsed = time.monotonic() - start
        self.assertLess(elapsed, self.BATCH_DELAY + 0.5)
        return elapsed

    @defer.inlineCallbacks
    def test_flush_reaches_b_and_survives_kill(self):
        """
        A flush on A reaches B within batch_delay + 0.5 s; after the pub/sub
        connections are killed, B resubscribes, clears its L1, and a new flush
        on A reaches it again.
        """
        a, a_caches, _ = self.workers["a"]
        b, b_caches, _ = self.workers["b"]
        yield self._flush_reaches_b(Flush("www.example.com", "A"), "www.example.com", dns.A)
        self.assertTrue(in_l1(b_caches, "example.org", dns.A))
        self.assertEqual(b.stats().received_batches, 1)
        # A's own copy comes back on its subscription, which may be a moment behind B's.
        yield self._poll(lambda: a.stats().skipped_own == 1, "A to see its own batch come back")

        killed = cli(self.redis.port, "CLIENT", "KILL", "TYPE", "pubsub")
        self.assertEqual(killed, "2")
        yield self._poll(lambda: b.stats().resync_clears == 1 and a.stats().resync_clears == 1,
                         "resubscription")
        self.assertEqual(len(b_caches.messages), 0, "B's L1 is cleared on reconnect")
        yield self._poll(lambda: cli(self.redis.port, "PUBSUB", "NUMSUB", CHANNEL.decode()).split()[-1] == "2",
                         "two subscribers again")

        fill(b_caches, "example.org", dns.A)
        yield self._flush_reaches_b(Flush("example.org"), "example.org", dns.A)
        self.assertEqual(b.stats().received_batches, 2)


KEY = Signer(b"0123456789abcdef-key")


class SignedPubSubTests(SynchronousTestCase):
    """Invalidation messages with cache.shared_cache.signing_key: only signed, recent ones are applied."""

    def setUp(self):
        self.clock = Clock()
        self.broker = FakeBroker()

    def worker(self, origin, signer=KEY):
        """A started invalidator with filled caches, signing with ``signer``."""
        caches = make_caches(self.clock)
        fill_all(caches)
        inv = PubSubInvalidator(caches, FakePubSubBackend(self.broker), CHANNEL, 100, 0.1, origin,
                                reactor=self.clock, signer=signer)
        inv.startService()
        self.addCleanup(inv.stopService)
        return inv, caches

    def forge(self, flush=None, sent_at=0.0, channel=CHANNEL, signer=None):
        """Publish a message by hand, as anyone who can PUBLISH could; signed with ``signer`` if given."""
        message = encode_batch(Batch((flush or Flush.everything(),), "mallory", 1, sent_at))
        if signer is not None:
            message = sign_message(message, channel, signer)
        self.broker.deliver(CHANNEL, message)

    def test_signed_flush_applied(self):
        """A flush from a worker with the key reaches another with the key; the message on the wire is signed."""
        a, _ = self.worker("a")
        b, b_caches = self.worker("b")
        a.invalidate(Flush("www.example.com", "A"))
        self.clock.advance(0.1)
        self.assertTrue(self.broker.messages(CHANNEL)[0].startswith(SIGNED_PREFIX))
        self.assertFalse(in_l1(b_caches, "www.example.com", dns.A))
        self.assertEqual(b.stats().received_batches, 1)

    def test_unsigned_message_ignored(self):
        """An unsigned flush-everything is ignored and counted; nothing is dropped."""
        b, b_caches = self.worker("b")
        self.forge()
        self.assertEqual(remaining(b_caches), (set(ENTRIES), set(ENTRIES)))
        self.assertEqual((b.stats().bad_signatures, b.stats().received_batches), (1, 0))

    def test_wrong_key_or_channel_ignored(self):
        """A message signed with another key, or for another channel, is ignored."""
        b, b_caches = self.worker("b")
        self.forge(signer=Signer(b"another-key-0123456789"))
        self.forge(signer=KEY, channel=b"other:channel")
        self.assertEqual(len(b_caches.messages), len(ENTRIES))
        self.assertEqual(b.stats().bad_signatures, 2)

    def test_tampered_message_ignored(self):
        """A signed message whose JSON was changed after signing is ignored."""
        b, b_caches = self.worker("b")
        signed = sign_message(encode_batch(Batch((Flush("www.example.com", "A"),), "a", 1, 0.0)), CHANNEL, KEY)
        self.broker.deliver(CHANNEL, signed.replace(b'"www.example.com."', b'"example.com."'))
        self.assertTrue(in_l1(b_caches, "example.com", dns.A))
        self.assertEqual(b.stats().bad_signatures, 1)

    def test_replay_ignored(self):
        """A validly signed message sent more than MAX_SIGNED_AGE ago (or without sent_at) is a replay."""
        b, b_caches = self.worker("b")
        self.clock.advance(MAX_SIGNED_AGE + 1)
        self.forge(signer=KEY, sent_at=0.0)
        self.forge(signer=KEY, sent_at=None)
        self.assertEqual(len(b_caches.messages), len(ENTRIES))
        self.assertEqual(b.stats().bad_signatures, 2)
        self.forge(signer=KEY, sent_at=self.clock.seconds())
        self.assertEqual(len(b_caches.messages), 0)

    def test_no_key_reads_signed_messages(self):
        """A worker without a key applies signed messages too (Redis is trusted), and unsigned ones."""
        b, b_caches = self.worker("b", signer=None)
        self.forge(Flush("www.example.com", "A"), signer=KEY)
        self.forge(Flush("example.org"))
        self.assertFalse(in_l1(b_caches, "www.example.com", dns.A))
        self.assertFalse(in_l1(b_caches, "example.org", dns.A))
        self.assertEqual(b.stats().received_batches, 2)


class SignedRealRedisTests(TestCase):
    """A forged PUBLISH through redis-cli against invalidators with a signing key, over a real redis-server."""

    skip = SKIP
    timeout = 30

    @defer.inlineCallbacks
    def test_forged_publish_ignored_signed_one_applied(self):
        """
        redis-cli PUBLISH of an unsigned flush-everything is ignored and
        counted by B; a flush from A (same key) still reaches B.
        """
        from dnsgo.config import Address, SharedCacheConfig
        from dnsgo.redis.factory import build_backend

        redis = RedisServer().start()
        self.addCleanup(redis.stop)
        shared = SharedCacheConfig(enabled=True, type="redis", address=Address("127.0.0.1", redis.port))
        workers = []
        for origin in ("a", "b"):
            backend = build_backend(shared, "", real_reactor)
            caches = make_caches(real_reactor)
            fill_all(caches)
            inv = PubSubInvalidator(caches, backend, CHANNEL, 100, 0.05, origin, reactor=real_reactor, signer=KEY)
            yield backend.start()
            self.addCleanup(backend.stop)
            inv.startService()
            self.addCleanup(inv.stopService)
            workers.append((inv, caches))
        (a, _), (b, b_caches) = workers
        deadline = time.monotonic() + 10
        while cli(redis.port, "PUBSUB", "NUMSUB", CHANNEL.decode()).split()[-1] != "2":
            self.assertLess(time.monotonic(), deadline, "two subscribers")
            yield task.deferLater(real_reactor, 0.01, lambda: None)
        forged = encode_batch(Batch((Flush.everything(),), "mallory", 1, time.time())).decode()
        self.assertEqual(cli(redis.port, "PUBLISH", CHANNEL.decode(), forged), "2")
        yield a.invalidate(Flush("www.example.com", "A"))
        while in_l1(b_caches, "www.example.com", dns.A):
            self.assertLess(time.monotonic(), deadline, "the signed flush to reach B")
            yield task.deferLater(real_reactor, 0.01, lambda: None)
        self.assertTrue(in_l1(b_caches, "example.org", dns.A))
        self.assertEqual((b.stats().bad_signatures, b.stats().received_batches), (1, 1))
