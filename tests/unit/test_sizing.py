"""
Tests for L{dnsgo.cache.sizing}: costs in units, the TTL ints the caches
share, and what that does to the entries of L1 and L2.
"""
import gc
import sys
import tracemalloc

import dns.message
from twisted.internet.task import Clock
from twisted.names import dns as tdns
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.cache.message import MessageCache
from dnsgo.cache.rrset import RRsetCache, learn_from_wire
from dnsgo.cache.sizing import COST_UNIT, INT_BYTES, SharedInts, cost_units, shared_ints_capacity
from dnsgo.dns import records, wire


def runtime_int(value: int) -> int:
    """An int object equal to ``value`` made at run time (not a constant the compiler shares)."""
    return int(str(value))


def a_reply(name: str, ttl: int, owner: str | None = None, addresses: int = 1) -> tuple[wire.QueryInfo, bytes]:
    """(the query's QueryInfo, a reply of ``addresses`` A records at ``owner`` (default ``name``) with ``ttl``)."""
    query = dns.message.make_query(name, "A", use_edns=False)
    response = dns.message.make_response(query)
    rrset = response.find_rrset(response.answer, dns.name.from_text(owner or name), dns.rdataclass.IN,
                                dns.rdatatype.A, create=True)
    for i in range(addresses):
        rrset.add(dns.rdata.from_text("IN", "A", f"192.0.2.{i + 1}"), ttl)
    return wire.parse_query(query.to_wire()), response.to_wire()


def learn(cache: RRsetCache, name: str, ttl: int, owner: str | None = None, addresses: int = 1) -> None:
    """Store what an A reply for ``name`` teaches in the L2 ``cache``."""
    _, body = a_reply(name, ttl, owner, addresses)
    cache.store_learned(learn_from_wire(tdns.Query(name.encode(), tdns.A, tdns.IN), records.read_reply(body)))


def l2_entry(cache: RRsetCache, name: bytes):
    """The (key, entry) of the only L2 entry at ``name``."""
    [(key, entry)] = [(k, e) for shard in cache._shards for k, e in shard.items() if k[0] == name]
    return key, entry


class CostUnitsTests(SynchronousTestCase):
    """cost_units: bytes to 8-byte units, and the int a large cost needs."""

    def test_rounds_up(self):
        """Units round up, so no byte is left out of the bound."""
        self.assertEqual([cost_units(n) for n in (0, 1, 8, 9, 400, 2048)], [0, 1, 1, 2, 50, 256])

    def test_large_cost_pays_for_its_int(self):
        """Past 256 units (CPython's shared small ints) the cost's own int is added."""
        self.assertEqual(cost_units(2049), -(-(2049 + INT_BYTES) // COST_UNIT))
        self.assertEqual(cost_units(2049), 261)


class SharedIntsTests(SynchronousTestCase):
    """SharedInts keeps the first values and hands the same object out for equal ones."""

    def test_equal_values_share_one_object(self):
        """Two equal ints made apart come back as one object, which owns no bytes for its holders."""
        ints = SharedInts(4)
        first = ints.share(runtime_int(3600))
        second = ints.share(runtime_int(3600))
        self.assertIs(first, second)
        self.assertEqual(ints.owned_bytes(second), 0)
        self.assertEqual(ints.owned_bytes(runtime_int(3600)), INT_BYTES)  # an equal int not from the table

    def test_capacity(self):
        """Past the capacity a new value is returned as it is, and its holder pays for it."""
        ints = SharedInts(2)
        for value in (1000, 2000):
            ints.share(runtime_int(value))
        late = runtime_int(3000)
        self.assertIs(ints.share(late), late)
        self.assertIsNot(ints.share(runtime_int(3000)), late)
        self.assertEqual(ints.owned_bytes(late), INT_BYTES)
        self.assertEqual(len(ints), 2)

    def test_small_ints_cost_nothing_and_take_no_room(self):
        """Ints up to 256 are CPython's shared ones: free, and not kept."""
        ints = SharedInts(2)
        for value in (0, 30, 256):
            self.assertEqual(ints.owned_bytes(ints.share(runtime_int(value))), 0)
        self.assertEqual(len(ints), 0)
        self.assertEqual(ints.owned_bytes(257), INT_BYTES)

    def test_cost_covers_a_full_table(self):
        """The fixed cost is at least what a full table takes (tracemalloc)."""
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            ints = SharedInts(512)
            for i in range(512):
                ints.share(runtime_int(1000 + i))
            real = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLessEqual(real, ints.cost)
        self.assertGreater(real, 0.8 * ints.cost)

    def test_capacity_by_budget(self):
        """One value per 4 KiB of budget, from 16 to 1024."""
        self.assertEqual([shared_ints_capacity(b) for b in (0, 2**20, 2**21, 2**30)], [16, 256, 512, 1024])


class L1EntryTests(SynchronousTestCase):
    """An L1 entry's lifetime is shared, and its cost a small int."""

    def test_lifetime_shared_and_not_charged(self):
        """Two entries with one TTL share the lifetime int; the cost of each is in units, under 257."""
        cache = MessageCache(reactor=Clock())
        for name in ("a.example.", "b.example."):
            q, body = a_reply(name, runtime_int(3600))
            self.assertTrue(cache.store(q, body))
        entries = [e for shard in cache._shards for _, e in shard.items()]
        self.assertEqual(len(entries), 2)
        self.assertIs(entries[0].lifetime, entries[1].lifetime)
        self.assertTrue(all(e.cost <= 256 for e in entries))
        self.assertEqual(cache.stats().size_bytes, sum(e.cost for e in entries) * COST_UNIT)

    def test_unshared_lifetime_is_charged(self):
        """With the table full, an entry with a new TTL pays INT_BYTES more than one with a kept TTL."""
        sizes = []
        for ttl in (1000, 5000):
            cache = MessageCache(reactor=Clock(), max_size_mb=0.01, num_shards=1)  # 16 shared values
            for i in range(16):
                cache._ttls.share(runtime_int(1000 + i))
            q, body = a_reply("kept.example.", ttl)
            self.assertTrue(cache.store(q, body))
            sizes.append(cache.stats().size_bytes)
        self.assertEqual(sizes[1] - sizes[0], INT_BYTES)

    def test_budget_sets_the_table_aside(self):
        """The shards' budgets together are the configured bytes less the table's fixed cost."""
        cache = MessageCache(reactor=Clock(), max_size_mb=1, num_shards=4)
        self.assertEqual(cache.stats().max_size_bytes, 2**20)
        budgets = sum(shard.budget * shard.unit for shard in cache._shards)
        self.assertLessEqual(budgets, 2**20 - cache._ttls.cost)


class L2EntryTests(SynchronousTestCase):
    """An L2 entry: one object for name and owner, no tuple for one record, a shared TTL."""

    def test_lowercase_owner_is_the_keys_name(self):
        """An owner equal to the lowercased name is the key's very object."""
        cache = RRsetCache(reactor=Clock())
        learn(cache, "www.example.", 300)
        key, entry = l2_entry(cache, b"www.example")
        self.assertIs(entry.owner, key[0])

    def test_mixed_case_owner_kept_as_received(self):
        """An owner in another case is kept as it came, and charged for."""
        cache = RRsetCache(reactor=Clock())
        learn(cache, "www.example.", 300)
        lower = cache.stats().size_bytes
        cache = RRsetCache(reactor=Clock())
        learn(cache, "WWW.example.", 300)
        key, entry = l2_entry(cache, b"www.example")
        self.assertEqual((entry.owner, key[0]), (b"WWW.example", b"www.example"))
        # The owner's bytes, give or take the rounding to whole units.
        self.assertLess(abs(cache.stats().size_bytes - lower - sys.getsizeof(entry.owner)), COST_UNIT)
        self.assertEqual(cache.get(b"www.example", tdns.A)[0].name.name, b"WWW.example")

    def test_one_record_without_a_tuple(self):
        """One record is kept as its bytes; payloads is a tuple either way, and reads decode it."""
        cache = RRsetCache(reactor=Clock())
        learn(cache, "one.example.", 300)
        learn(cache, "two.example.", 300, addresses=2)
        _, one = l2_entry(cache, b"one.example")
        _, two = l2_entry(cache, b"two.example")
        self.assertEqual((one.rdata.__class__, one.payloads), (bytes, (b"\xc0\x00\x02\x01",)))
        self.assertEqual(two.rdata.__class__, tuple)
        self.assertEqual(len(two.payloads), 2)
        self.assertEqual([r.payload.dottedQuad() for r in cache.get(b"one.example", tdns.A)], ["192.0.2.1"])
        self.assertEqual(len(cache.get(b"two.example", tdns.A)), 2)

    def test_ttl_shared(self):
        """Two RRsets with one TTL share the int, and a renewal keeps sharing it."""
        clock = Clock()
        cache = RRsetCache(reactor=clock)
        learn(cache, "a.example.", runtime_int(3600))
        learn(cache, "b.example.", runtime_int(3600))
        _, a = l2_entry(cache, b"a.example")
        _, b = l2_entry(cache, b"b.example")
        self.assertIs(a.ttl, b.ttl)
        clock.advance(10)
        learn(cache, "a.example.", runtime_int(3600))
        _, renewed = l2_entry(cache, b"a.example")
        self.assertIs(renewed, a)
        self.assertIs(a.ttl, b.ttl)
        self.assertEqual(a.stored_at, 10)
