"""
Tests for the Redis Cluster backend: key slots, the slot map, MOVED and ASK,
routing by read preference, failure handling (with fake nodes and a Clock),
and the same against a real 3-master, 3-replica cluster.
"""
import fnmatch
import random

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from dnsgo.redis.backend import RedisUnavailable
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.cluster import (
    DOWN,
    MAX_REDIRECTS,
    UP,
    ClusterRedis,
    Redirect,
    Shard,
    parse_cluster_slots,
    parse_redirect,
)
from dnsgo.redis.crc16 import SLOTS, crc16, hash_tag, key_slot
from dnsgo.redis.guard import Guard
from tests.support.redis_procs import SKIP, RedisCluster, cli, free_port

# -- key slots -------------------------------------------------------------------


class KeySlotTests(unittest.SynchronousTestCase):
    """CRC16 and hash tags, as the Redis Cluster specification defines them."""

    def test_crc16_check_value(self):
        """CRC16-XMODEM of '123456789' is 0x31C3, the reference check value."""
        self.assertEqual(crc16(b"123456789"), 0x31C3)

    def test_known_slots(self):
        """Slots Redis itself reports for a few keys."""
        self.assertEqual(key_slot(b"foo"), 12182)
        self.assertEqual(key_slot(b"bar"), 5061)
        self.assertEqual(key_slot(b""), 0)

    def test_hash_tag_rules(self):
        """Only the first {...} with something inside counts; otherwise the whole key is hashed."""
        self.assertEqual(hash_tag(b"{user1000}.following"), b"user1000")
        self.assertEqual(hash_tag(b"foo{}{bar}"), b"foo{}{bar}")
        self.assertEqual(hash_tag(b"foo{{bar}}zap"), b"{bar")
        self.assertEqual(hash_tag(b"foo{bar}{zap}"), b"bar")
        self.assertEqual(hash_tag(b"foo{bar"), b"foo{bar")
        self.assertEqual(hash_tag(b"}foo{bar}"), b"bar")

    def test_keys_sharing_a_tag_share_a_slot(self):
        """Keys with the same hash tag land in the same slot."""
        self.assertEqual(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"))
        self.assertNotEqual(key_slot(b"user1000.following"), key_slot(b"user1000.followers"))

    def test_slots_in_range(self):
        """Every slot is within 0..16383."""
        rng = random.Random(7)
        for _ in range(2000):
            key = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
            self.assertTrue(0 <= key_slot(key) < SLOTS)


# -- parsing ---------------------------------------------------------------------


class ParsingTests(unittest.SynchronousTestCase):
    """CLUSTER SLOTS replies and redirection errors."""

    def test_cluster_slots(self):
        """Ranges, masters and replicas come out as Shards; an empty host is the host that answered."""
        reply = [
            [0, 5460, [b"10.0.0.1", 7000, b"id1", []], [b"10.0.0.4", 7003, b"id4", []]],
            [5461, 16383, [b"", 7001, b"id2"]],
        ]
        self.assertEqual(parse_cluster_slots(reply, ("10.9.9.9", 7005)), (
            Shard(0, 5460, ("10.0.0.1", 7000), (("10.0.0.4", 7003),)),
            Shard(5461, 16383, ("10.9.9.9", 7001), ()),
        ))

    def test_redirects(self):
        """MOVED and ASK name a slot and a node; an empty host is the replier's; other errors are not redirects."""
        here = ("10.0.0.1", 7000)
        self.assertEqual(parse_redirect("MOVED 3999 127.0.0.1:6381", here), Redirect("MOVED", 3999, ("127.0.0.1", 6381)))
        self.assertEqual(parse_redirect("ASK 12 :7002", here), Redirect("ASK", 12, ("10.0.0.1", 7002)))
        self.assertEqual(parse_redirect("ASK 12 ::1:7002", here), Redirect("ASK", 12, ("::1", 7002)))
        self.assertIsNone(parse_redirect("CROSSSLOT Keys in request don't hash to the same slot", here))
        self.assertIsNone(parse_redirect("MOVED x y:z", here))


# -- fake nodes ------------------------------------------------------------------


def _error(text: str):
    return defer.fail(txredisapi.ResponseError(text))


class FakeCluster:
    """
    An in-memory Redis Cluster: who owns each slot, replicas, data, slot
    migrations, nodes that are down.  Answers like Redis: MOVED from a node
    that does not serve the slot, ASK from a migrating slot's owner,
    CROSSSLOT for multi-key commands across slots.
    """

    READS = {b"GET", b"MGET"}

    def __init__(self, masters: int = 3, with_replicas: bool = True) -> None:
        self.masters = [("127.0.0.1", 7000 + i) for i in range(masters)]
        self.replica_of = {("127.0.0.1", 7100 + i): m for i, m in enumerate(self.masters)} if with_replicas else {}
        self.owner: list = [None] * SLOTS
        per = SLOTS // masters
        for slot in range(SLOTS):
            self.owner[slot] = self.masters[min(slot // per, masters - 1)]
        self.data: dict[bytes, bytes] = {}
        self.migrating: dict[int, tuple] = {}
        self.down: set = set()
        self.nodes: dict[tuple, "FakeNode"] = {}
        self.loop: tuple | None = None  # two nodes that MOVED to each other forever

    def node(self, address) -> "FakeNode":
        """The node_factory for ClusterRedis."""
        node = self.nodes[address] = FakeNode(self, address)
        return node

    def sent(self, address, command: bytes) -> list[tuple]:
        """The commands named ``command`` a node has received."""
        node = self.nodes.get(address)
        return [] if node is None else [a for a in node.commands if a[0] == command]

    def slots_reply(self) -> list:
        reply = []
        start = 0
        for slot in range(1, SLOTS + 1):
            if slot == SLOTS or self.owner[slot] != self.owner[start]:
                master = self.owner[start]
                entry = [start, slot - 1, [master[0].encode(), master[1], b"id"]]
                entry += [[r[0].encode(), r[1], b"id"] for r, m in self.replica_of.items() if m == master]
                reply.append(entry)
                start = slot
        return reply

    def handle(self, node: "FakeNode", args: tuple, asking: bool) -> defer.Deferred:
        cmd = args[0]
        here = node.address
        if cmd == b"CLUSTER":
            return defer.succeed(self.slots_reply())
        if cmd == b"PUBLISH":
            return defer.succeed(0)
        if cmd == b"SCAN":
            keys = [k for k in self.data if self.owner[key_slot(k)] == here
                    and fnmatch.fnmatchcase(k.decode("latin-1"), args[3].decode("latin-1"))]
            return defer.succeed([b"0", keys])
        keys = list(args[1:]) if cmd in (b"MGET", b"DEL") else [args[1]]
        if len({key_slot(k) for k in keys}) > 1:
            return _error("CROSSSLOT Keys in request don't hash to the same slot")
        slot = key_slot(keys[0])
        owner = self.owner[slot]
        if self.loop is not None and here in self.loop:
            other = self.loop[1] if here == self.loop[0] else self.loop[0]
            return _error(f"MOVED {slot} {other[0]}:{other[1]}")
        if slot in self.migrating:
            target = self.migrating[slot]
            if here == owner:
                return _error(f"ASK {slot} {target[0]}:{target[1]}")
            if here == target and asking:
                return self.serve(cmd, args)
        if here != owner and not (cmd in self.READS and self.replica_of.get(here) == owner):
            return _error(f"MOVED {slot} {owner[0]}:{owner[1]}")
        return self.serve(cmd, args)

    def serve(self, cmd: bytes, args: tuple) -> defer.Deferred:
        if cmd == b"GET":
            return defer.succeed(self.data.get(args[1]))
        if cmd == b"MGET":
            return defer.succeed([self.data.get(k) for k in args[1:]])
        if cmd == b"SET":
            self.data[args[1]] = args[2]
            return defer.succeed(b"OK")
        if cmd == b"DEL":
            return defer.succeed(sum(self.data.pop(k, None) is not None for k in args[1:]))
        return _error(f"ERR unknown command {cmd!r}")


class FakeNode:
    """Stands in for NodeClient: records commands, answers through its FakeCluster."""

    def __init__(self, cluster: FakeCluster, address) -> None:
        self.cluster = cluster
        self.address = address
        self.commands: list[tuple] = []
        self.asking: list[tuple] = []
        self.disconnected = False

    @property
    def state(self) -> str:
        return DOWN if self.address in self.cluster.down else UP

    @property
    def is_down(self) -> bool:
        return self.state == DOWN

    def execute(self, *args) -> defer.Deferred:
        self.commands.append(args)
        if self.is_down:
            return defer.fail(txredisapi.ConnectionError(f"{self.address} is unreachable"))
        return self.cluster.handle(self, args, asking=False)

    def execute_asking(self, *args) -> defer.Deferred:
        self.asking.append(args)
        if self.is_down:
            return defer.fail(txredisapi.ConnectionError(f"{self.address} is unreachable"))
        return self.cluster.handle(self, args, asking=True)

    def when_settled(self) -> defer.Deferred:
        return defer.succeed(None)

    def disconnect(self) -> defer.Deferred:
        self.disconnected = True
        return defer.succeed(None)


class RouterTests(unittest.SynchronousTestCase):
    """The slot router against fake nodes, on a Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.fake = FakeCluster()
        self.logged: list[str] = []

        def observe(event):
            if event.get("log_namespace") == "dnsgo.redis" and event.get("log_format"):
                from twisted.logger import formatEvent
                self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def backend(self, read_preference: str = "master", start: bool = True, password: str = "") -> ClusterRedis:
        guard = Guard(CircuitBreaker(failure_threshold=100, reactor=self.clock), reactor=self.clock)
        backend = ClusterRedis([self.fake.masters[0]], password=password, read_preference=read_preference,
                               guard=guard, reactor=self.clock, node_factory=self.fake.node)
        if start:
            self.successResultOf(backend.start())
        self.addCleanup(backend.stop)
        return backend

    def pump(self, seconds: float, step: float = 0.01) -> None:
        """Advance the clock in small steps, so timers set along the way fire too."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def slots_asked(self) -> int:
        return sum(len(self.fake.sent(a, b"CLUSTER")) for a in self.fake.nodes)

    def key_on(self, master, prefix: bytes = b"k") -> bytes:
        """A key whose slot ``master`` owns."""
        for i in range(100000):
            key = prefix + b"%d" % i
            if self.fake.owner[key_slot(key)] == master:
                return key
        raise AssertionError("no key found")

    def test_routes_every_key_to_its_masters_slot(self):
        """Each SET goes straight to the master that owns the key's slot: no redirection needed."""
        backend = self.backend()
        for i in range(300):
            self.successResultOf(backend.set(b"key:%d" % i, b"v", 60))
        self.assertEqual(backend.moved, 0)
        for master in self.fake.masters:
            sets = self.fake.sent(master, b"SET")
            self.assertTrue(sets)
            self.assertTrue(all(self.fake.owner[key_slot(a[1])] == master for a in sets))

    def test_get_set_binary(self):
        """Values are bytes in and out, absent keys are None; SET carries EX ttl."""
        backend = self.backend()
        self.assertIsNone(self.successResultOf(backend.set(b"\x00k", b"\xff\x00v", 42)))
        self.assertEqual(self.successResultOf(backend.get(b"\x00k")), b"\xff\x00v")
        self.assertIsNone(self.successResultOf(backend.get(b"absent")))
        master = self.fake.owner[key_slot(b"\x00k")]
        self.assertEqual(self.fake.sent(master, b"SET"), [(b"SET", b"\x00k", b"\xff\x00v", b"EX", 42)])

    def test_moved_is_followed_and_repoints_the_slot(self):
        """A MOVED reply is followed at once, the slot points at the new master, and a full refresh follows."""
        backend = self.backend()
        a, b = self.fake.masters[0], self.fake.masters[1]
        key = self.key_on(a)
        self.fake.data[key] = b"value"
        self.fake.owner[key_slot(key)] = b  # resharded behind the client's back
        asked_before = self.slots_asked()

        self.assertEqual(self.successResultOf(backend.get(key)), b"value")
        self.assertEqual(backend.moved, 1)
        self.assertEqual(backend.route(key), b)
        self.assertEqual(len(self.fake.sent(a, b"GET")), 1)

        self.assertEqual(self.successResultOf(backend.get(key)), b"value")
        self.assertEqual(backend.moved, 1, "the second GET went straight to the new master")
        self.clock.advance(1)
        self.assertGreater(self.slots_asked(), asked_before, "a full refresh was made")

    def test_stale_map_refresh_is_rate_limited(self):
        """Many MOVED replies in a burst cause one refresh at once and at most one more per interval."""
        backend = self.backend()
        a, b = self.fake.masters[0], self.fake.masters[1]
        keys = [k for k in (b"m%d" % i for i in range(3000)) if self.fake.owner[key_slot(k)] == a][:50]
        for key in keys:
            self.fake.owner[key_slot(key)] = b
        self.clock.advance(1)
        asked_before = self.slots_asked()
        for key in keys:
            self.successResultOf(backend.get(key))
        self.assertEqual(self.slots_asked() - asked_before, 1)
        self.clock.advance(0.5)
        self.assertEqual(self.slots_asked() - asked_before, 1, "the refresh reached the new map; no more needed")

    def test_ask_is_followed_once_without_touching_the_map(self):
        """ASK sends ASKING + the command to the target; the map keeps the old owner."""
        backend = self.backend()
        a, b = self.fake.masters[0], self.fake.masters[2]
        key = self.key_on(a)
        self.fake.data[key] = b"moving"
        self.fake.migrating[key_slot(key)] = b
        asked_before = self.slots_asked()

        self.assertEqual(self.successResultOf(backend.get(key)), b"moving")
        self.assertEqual(self.fake.nodes[b].asking, [(b"GET", key)])
        self.assertEqual(backend.asked, 1)
        self.assertEqual(backend.route(key), a)
        self.successResultOf(backend.get(key))
        self.assertEqual(len(self.fake.sent(a, b"GET")), 2, "the next GET asked the old owner again")
        self.clock.advance(1)
        self.assertEqual(self.slots_asked(), asked_before, "ASK requests no refresh")

    def test_redirections_are_bounded(self):
        """Two nodes that redirect to each other: the operation fails after MAX_REDIRECTS redirections."""
        backend = self.backend()
        a, b = self.fake.masters[0], self.fake.masters[1]
        self.fake.loop = (a, b)
        key = self.key_on(a)
        self.failureResultOf(backend.get(key), RedisUnavailable)
        tries = len(self.fake.sent(a, b"GET")) + len(self.fake.sent(b, b"GET"))
        self.assertEqual(tries, MAX_REDIRECTS + 1)

    def test_mget_groups_by_slot_and_keeps_order(self):
        """One MGET per slot with several keys, a GET for a lone key; values come back in the asked order."""
        backend = self.backend()
        self.fake.data.update({b"{t}a": b"1", b"{t}b": b"2", b"x": b"3"})
        keys = [b"{t}a", b"x", b"absent", b"{t}b", b"{t}a"]
        self.assertEqual(self.successResultOf(backend.mget(keys)), [b"1", b"3", None, b"2", b"1"])
        owner = self.fake.owner[key_slot(b"{t}")]
        self.assertEqual(self.fake.sent(owner, b"MGET"), [(b"MGET", b"{t}a", b"{t}b")])
        self.assertEqual(self.successResultOf(backend.mget([])), [])

    def test_mget_fails_whole_when_a_node_is_down(self):
        """A group whose node is down fails the whole mget with RedisUnavailable."""
        backend = self.backend()
        self.fake.down.add(self.fake.masters[1])
        d = backend.mget([self.key_on(self.fake.masters[0]), self.key_on(self.fake.masters[1])])
        self.pump(0.1)
        self.failureResultOf(d, RedisUnavailable)

    def test_delete_groups_by_slot(self):
        """DEL is sent per slot (no CROSSSLOT) and the counts add up."""
        backend = self.backend()
        keys = [b"d%d" % i for i in range(20)]
        for key in keys[:15]:
            self.fake.data[key] = b"v"
        self.assertEqual(self.successResultOf(backend.delete(keys)), 15)
        self.assertEqual(self.fake.data, {})
        self.assertEqual(self.successResultOf(backend.delete([])), 0)

    def test_delete_matching_scans_every_master(self):
        """SCAN MATCH runs on each master and every match is deleted; others stay."""
        backend = self.backend()
        for i in range(100):
            self.fake.data[b"dns:%d" % i] = b"v"
            self.fake.data[b"other:%d" % i] = b"v"
        self.assertEqual(self.successResultOf(backend.delete_matching(b"dns:*")), 100)
        self.assertEqual(sorted(self.fake.data), sorted(b"other:%d" % i for i in range(100)))
        for master in self.fake.masters:
            self.assertEqual(len(self.fake.sent(master, b"SCAN")), 1)

    def test_replica_reads(self):
        """With read_preference 'replica', GETs go to the slot's replica and SETs to its master."""
        backend = self.backend("replica")
        key = self.key_on(self.fake.masters[1])
        replica = next(r for r, m in self.fake.replica_of.items() if m == self.fake.masters[1])
        self.successResultOf(backend.set(key, b"v", 60))
        self.assertEqual(self.successResultOf(backend.get(key)), b"v")
        self.assertEqual(len(self.fake.sent(replica, b"GET")), 1)
        self.assertEqual(self.fake.sent(self.fake.masters[1], b"GET"), [])
        self.assertEqual(len(self.fake.sent(self.fake.masters[1], b"SET")), 1)

    def test_replica_preference_without_a_live_replica(self):
        """'replica' fails a read when the slot's replicas are down; 'replicaPreferred' reads the master."""
        strict, preferred = self.backend("replica"), self.backend("replicaPreferred")
        key = self.key_on(self.fake.masters[0])
        self.fake.data[key] = b"v"
        self.fake.down.update(self.fake.replica_of)
        d = strict.get(key)
        self.pump(0.6)
        self.failureResultOf(d, RedisUnavailable)
        self.assertEqual(self.successResultOf(preferred.get(key)), b"v")

    def test_master_reads(self):
        """With read_preference 'master', replicas get no reads."""
        backend = self.backend("master")
        for i in range(50):
            self.successResultOf(backend.get(b"r%d" % i))
        self.assertFalse(any(self.fake.sent(r, b"GET") for r in self.fake.replica_of))

    def test_failover_is_found_by_refreshing(self):
        """
        A master goes down: its keys fail fast (RedisUnavailable) and the map is
        refreshed every second while it is down; once its replica owns the
        slots the keys work again.
        """
        backend = self.backend()
        a = self.fake.masters[0]
        replica = next(r for r, m in self.fake.replica_of.items() if m == a)
        key = self.key_on(a)
        self.fake.data[key] = b"v"
        self.fake.down.add(a)
        d = backend.get(key)
        self.pump(0.1)
        self.failureResultOf(d, RedisUnavailable)
        self.clock.advance(0.5)
        asked = self.slots_asked()
        self.clock.advance(1)
        self.assertGreater(self.slots_asked(), asked, "refreshing while a master is down")

        # the replica takes over
        for slot in range(SLOTS):
            if self.fake.owner[slot] == a:
                self.fake.owner[slot] = replica
        del self.fake.replica_of[replica]
        self.clock.advance(1)
        self.assertEqual(backend.route(key), replica)
        self.assertEqual(self.successResultOf(backend.get(key)), b"v")
        self.assertTrue(self.fake.nodes[a].disconnected, "the dead master's pool is closed once it left the map")
        asked = self.slots_asked()
        self.clock.advance(5)
        self.assertEqual(self.slots_asked(), asked, "no more fast refreshes once every master is up")

    def test_periodic_refresh(self):
        """The map is refreshed every refresh_interval (30 s) without any trigger."""
        self.backend()
        asked = self.slots_asked()
        self.clock.advance(29)
        self.assertEqual(self.slots_asked(), asked)
        self.clock.advance(1)
        self.assertEqual(self.slots_asked(), asked + 1)

    def test_start_without_any_node(self):
        """
        start() succeeds with one warning when no node answers; operations fail
        with RedisUnavailable; the map is loaded in the background once a node answers.
        """
        self.fake.down.update(self.fake.masters)
        backend = self.backend(start=False, password="s3cret-pw")
        d = backend.start()
        self.assertIsNone(self.successResultOf(d))
        warnings = [line for line in self.logged if "no Redis Cluster node" in line]
        self.assertEqual(len(warnings), 1)
        self.assertNotIn("s3cret-pw", " ".join(self.logged))
        self.assertEqual(backend.status().status, "unavailable")
        self.assertIsNone(backend.route(b"x"))
        d = backend.get(b"x")
        self.pump(0.6)
        self.failureResultOf(d, RedisUnavailable)

        self.fake.down.clear()
        self.clock.advance(5)
        self.assertEqual(backend.status().status, "connected")
        self.assertIsNone(self.successResultOf(backend.get(b"x")))
        self.assertEqual(len([line for line in self.logged if "no Redis Cluster node" in line]), 1)

    def test_status(self):
        """status() names the type and the startup nodes, never the password."""
        backend = self.backend(password="s3cret-pw")
        status = backend.status()
        self.assertEqual((status.type, status.address, status.status, status.master),
                         ("redis-cluster", "127.0.0.1:7000", "connected", None))
        self.assertNotIn("s3cret-pw", repr(status) + repr(backend))

    def test_stop_closes_every_node(self):
        """stop() disconnects every node pool and stops refreshing."""
        backend = self.backend()
        self.successResultOf(backend.get(b"x"))
        nodes = list(self.fake.nodes.values())
        self.successResultOf(backend.stop())
        self.assertTrue(all(n.disconnected for n in nodes))
        asked = self.slots_asked()
        self.clock.advance(100)
        self.assertEqual(self.slots_asked(), asked)

    def test_invalid_arguments(self):
        """A bad read_preference or no startup node is refused at construction."""
        guard = Guard(CircuitBreaker(reactor=self.clock), reactor=self.clock)
        self.assertRaises(ValueError, ClusterRedis, [("h", 1)], read_preference="nearest", guard=guard,
                          reactor=self.clock)
        self.assertRaises(ValueError, ClusterRedis, [], guard=guard, reactor=self.clock)


# -- a real cluster --------------------------------------------------------------


def start_cluster(with_replicas: bool = False, password: str | None = None) -> RedisCluster:
    """A started 3+3 cluster; with_replicas waits until CLUSTER SLOTS lists the replicas."""
    cluster = RedisCluster(password=password)
    for node in cluster.nodes:
        # replicas sync at once instead of after the default 5 s delay
        node.config_lines = (lambda lines=node.config_lines: lines() + ["repl-diskless-sync-delay 0"])
    cluster.start()
    if with_replicas:
        import time

        deadline = time.monotonic() + 30
        while cli(cluster.nodes[0].port, "CLUSTER", "SLOTS", password=password).count("127.0.0.1") < 6:
            if time.monotonic() > deadline:
                cluster.stop()
                raise RuntimeError("replicas were not listed in CLUSTER SLOTS")
            # writes advance the replication offsets; replicas at offset 0 are not listed
            for i in range(6):
                cli(cluster.nodes[0].port, "-c", "SET", f"warmup:{i}", "x", password=password)
            time.sleep(0.1)
    return cluster


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def commandstat(port: int, command: str) -> int:
    """How many times a node ran ``command`` (INFO commandstats)."""
    for line in cli(port, "INFO", "commandstats").splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


class RealClusterTests(unittest.TestCase):
    """The backend against real redis-server processes in cluster mode."""

    skip = SKIP
    with_replicas = False
    read_preference = "master"

    def setUp(self):
        self.cluster = start_cluster(self.with_replicas)
        self.addCleanup(self.cluster.stop)
        self.backend = self.make_backend()
        return self.backend.start()

    def make_backend(self, nodes=None, **kwargs) -> ClusterRedis:
        nodes = nodes or [("127.0.0.1", n.port) for n in self.cluster.nodes[:3]]
        kwargs.setdefault("read_preference", self.read_preference)
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        backend = ClusterRedis(nodes, pool_size=2, guard=guard, reactor=reactor, **kwargs)
        self.addCleanup(backend.stop)
        return backend

    @defer.inlineCallbacks
    def eventually(self, attempt, timeout: float, what: str):
        """Call ``attempt`` every 0.2 s until it gives a true value (RedisUnavailable counts as false)."""
        deadline = reactor.seconds() + timeout
        while True:
            try:
                result = yield attempt()
            except RedisUnavailable:
                result = None
            if result:
                return result
            if reactor.seconds() > deadline:
                self.fail(f"not within {timeout} s: {what}")
            yield sleep(0.2)


class RealClusterBasicsTests(RealClusterTests):
    """Routing, round trips and redirections on a real cluster (masters only)."""

    @defer.inlineCallbacks
    def test_key_slots_match_redis(self):
        """key_slot agrees with CLUSTER KEYSLOT for many keys, binary ones and hash tags included."""
        conn = yield txredisapi.Connection("127.0.0.1", self.cluster.nodes[0].port, charset=None,
                                           convertNumbers=False)
        self.addCleanup(conn.disconnect)
        rng = random.Random(1)
        alphabet = b"ab{}\x00\xff:."
        keys = [b"dns:example.com.:1", b"{user}x", b"foo{}{bar}", b"{}", b"{{a}}"]
        keys += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 12))) for _ in range(400)]
        keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 30))) for _ in range(400)]
        slots = yield defer.gatherResults([conn.execute_command(b"CLUSTER", b"KEYSLOT", k) for k in keys])
        self.assertEqual([key_slot(k) for k in keys], [int(s) for s in slots])

    @defer.inlineCallbacks
    def test_keys_spread_over_all_masters(self):
        """300 keys written through the backend land on all three masters."""
        for i in range(300):
            yield self.backend.set(b"dns:spread:%d" % i, b"v", 60)
        sizes = [int(cli(m.port, "DBSIZE")) for m in self.cluster.masters()]
        self.assertEqual(len(sizes), 3)
        self.assertTrue(all(size > 0 for size in sizes), sizes)
        self.assertEqual(sum(sizes), 300)
        self.assertEqual(self.backend.moved, 0)

    @defer.inlineCallbacks
    def test_round_trips(self):
        """get/set/mget/delete/delete_matching with binary values, and info/status."""
        values = {b"dns:\x00%d" % i: bytes([i, 0, 255, 10, 13]) * 3 for i in range(40)}
        for key, value in values.items():
            yield self.backend.set(key, value, 60)
        yield self.backend.set(b"keep:1", b"12", 60)
        self.assertEqual((yield self.backend.get(b"dns:\x007")), values[b"dns:\x007"])
        self.assertEqual((yield self.backend.get(b"keep:1")), b"12", "numbers stay bytes")
        self.assertIsNone((yield self.backend.get(b"absent")))
        keys = list(values) + [b"absent", b"dns:\x003"]
        self.assertEqual((yield self.backend.mget(keys)), list(values.values()) + [None, values[b"dns:\x003"]])
        self.assertTrue(0 < int(cli(self.cluster.nodes[0].port, "-c", "TTL", "keep:1")) <= 60, "SET ... EX ttl")

        self.assertEqual((yield self.backend.delete([b"dns:\x000", b"dns:\x001", b"absent"])), 2)
        self.assertEqual((yield self.backend.delete_matching(b"dns:*")), 38)
        self.assertEqual((yield self.backend.mget(list(values))), [None] * 40)
        self.assertEqual((yield self.backend.get(b"keep:1")), b"12")

        info = yield self.backend.info()
        self.assertEqual(info["keys"], 1)
        self.assertGreater(info["used_memory"], 0)
        self.assertEqual(self.backend.status().status, "connected")

    @defer.inlineCallbacks
    def test_ask_and_moved_during_a_slot_migration(self):
        """
        While a slot migrates, ASK is followed without changing the map; once
        the slot has moved, MOVED is followed and the map points at the new owner.
        """
        key = b"dns:migrating"
        slot = key_slot(key)
        yield self.backend.set(key, b"value", 600)
        source = self.backend.route(key)
        target = next(("127.0.0.1", m.port) for m in self.cluster.masters() if ("127.0.0.1", m.port) != source)
        source_id = cli(source[1], "CLUSTER", "MYID")
        target_id = cli(target[1], "CLUSTER", "MYID")
        cli(target[1], "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        cli(source[1], "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        self.assertEqual(cli(source[1], "MIGRATE", "127.0.0.1", str(target[1]), "", "0", "5000", "KEYS",
                             key.decode()), "OK")

        self.assertEqual((yield self.backend.get(key)), b"value")
        self.assertEqual(self.backend.asked, 1)
        self.assertEqual(self.backend.route(key), source, "ASK leaves the map alone")

        for master in self.cluster.masters():
            cli(master.port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        self.assertEqual((yield self.backend.get(key)), b"value")
        self.assertGreaterEqual(self.backend.moved, 1)
        self.assertEqual(self.backend.route(key), target)
        yield self.backend.set(key, b"new", 600)
        self.assertEqual(cli(target[1], "GET", key.decode()), "new")

    @defer.inlineCallbacks
    def test_starts_from_any_startup_node(self):
        """Dead startup nodes are skipped: the map comes from the first one that answers."""
        dead = [("127.0.0.1", free_port()), ("127.0.0.1", free_port())]
        backend = self.make_backend(dead + [("127.0.0.1", self.cluster.nodes[4].port)])
        yield backend.start()
        yield backend.set(b"dns:x", b"1", 60)
        self.assertEqual((yield backend.get(b"dns:x")), b"1")

    @defer.inlineCallbacks
    def test_pubsub_round_trip_and_move(self):
        """
        A published message reaches the subscriber; when the subscription's node
        dies the subscription moves to another node and messages arrive again.
        """
        got: list[bytes] = []
        reconnects: list[int] = []
        sub = self.backend.subscribe(b"dns:invalidate", got.append, lambda: reconnects.append(1))
        yield sub.when_subscribed()

        @defer.inlineCallbacks
        def delivered(message: bytes):
            yield self.backend.publish(b"dns:invalidate", message)
            yield sleep(0.1)
            return message in got

        yield self.eventually(lambda: delivered(b"one"), 5, "the first message")
        first = sub.server
        port = int(first.rsplit(":", 1)[1])
        next(n for n in self.cluster.nodes if n.port == port).kill()
        yield self.eventually(lambda: defer.succeed(sub.subscribed and sub.server != first), 15,
                              "the subscription to move")
        yield self.eventually(lambda: delivered(b"two"), 15, "a message after the move")
        self.assertEqual(reconnects, [1])


class NoClusterTests(unittest.TestCase):
    """The backend when nothing listens at the startup addresses."""

    skip = SKIP

    @defer.inlineCallbacks
    def test_start_never_fails(self):
        """start() fires after a log line, operations fail with RedisUnavailable within the timeout."""
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        backend = ClusterRedis([("127.0.0.1", free_port())], guard=guard, reactor=reactor)
        self.addCleanup(backend.stop)
        yield backend.start()
        self.assertEqual(backend.status().status, "unavailable")
        started = reactor.seconds()
        with self.assertRaises(RedisUnavailable):
            yield backend.get(b"x")
        self.assertLess(reactor.seconds() - started, 1.0)


class ReplicaReadTests(RealClusterTests):
    """read_preference 'replica' on a real cluster."""

    with_replicas = True
    read_preference = "replica"

    @defer.inlineCallbacks
    def test_reads_hit_replicas(self):
        """GETs are served by replicas (their cmdstat_get grows), none by masters."""
        keys = [b"dns:replica:%d" % i for i in range(60)]
        for key in keys:
            yield self.backend.set(key, b"v", 600)
        masters = self.cluster.masters()
        replicas = [n for n in self.cluster.nodes if n not in masters]
        for master in masters:
            cli(master.port, "WAIT", "1", "2000")
        before_masters = sum(commandstat(m.port, "get") for m in masters)
        before_replicas = sum(commandstat(r.port, "get") for r in replicas)
        values = []
        for key in keys:
            values.append((yield self.backend.get(key)))
        self.assertEqual(values, [b"v"] * 60)
        self.assertEqual(sum(commandstat(r.port, "get") for r in replicas) - before_replicas, 60)
        self.assertEqual(sum(commandstat(m.port, "get") for m in masters), before_masters)
        self.assertEqual(self.backend.moved, 0)
        self.assertEqual(sum(commandstat(r.port, "readonly") for r in replicas), 3 * 2, "READONLY per connection")


class FailoverTests(RealClusterTests):
    """A master dies and its replica takes over."""

    with_replicas = True

    @defer.inlineCallbacks
    def test_backend_follows_a_failover(self):
        """Within 15 s of killing a master, keys in its slots work again, on the promoted replica."""
        key = b"dns:failover"
        yield self.backend.set(key, b"before", 600)
        master = self.backend.route(key)
        replica = self.backend._slots[key_slot(key)].replicas[0]
        cli(master[1], "WAIT", "1", "2000")
        next(n for n in self.cluster.nodes if n.port == master[1]).kill()

        value = yield self.eventually(lambda: self.backend.get(key), 15, "reads after the failover")
        self.assertEqual(value, b"before")
        self.assertEqual(self.backend.route(key), replica)
        yield self.eventually(lambda: self.backend.set(key, b"after", 600).addCallback(lambda _: True), 15,
                              "writes after the failover")
        self.assertEqual((yield self.backend.get(key)), b"after")


class PasswordClusterTests(unittest.TestCase):
    """A cluster with requirepass: every pool and the subscription AUTH; the password never shows."""

    skip = SKIP
    password = "cluster-pw-0451"

    def setUp(self):
        self.cluster = start_cluster(password=self.password)
        self.addCleanup(self.cluster.stop)

    def backend(self, password: str) -> ClusterRedis:
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        backend = ClusterRedis([("127.0.0.1", self.cluster.nodes[0].port)], password=password, pool_size=2,
                               guard=guard, reactor=reactor)
        self.addCleanup(backend.stop)
        return backend

    @defer.inlineCallbacks
    def test_round_trip_with_password(self):
        """With the right password, commands on every master and pub/sub work."""
        backend = self.backend(self.password)
        yield backend.start()
        for i in range(30):
            yield backend.set(b"dns:pw:%d" % i, b"%d" % i, 60)
        self.assertEqual((yield backend.mget([b"dns:pw:%d" % i for i in range(30)])), [b"%d" % i for i in range(30)])
        got: list[bytes] = []
        sub = backend.subscribe(b"dns:pw", got.append, lambda: None)
        yield sub.when_subscribed()
        yield backend.publish(b"dns:pw", b"hello")
        for _ in range(50):
            if got:
                break
            yield sleep(0.05)
        self.assertEqual(got, [b"hello"])
        self.assertEqual(backend.status().status, "connected")

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """With a wrong password start() still fires, the status says why, and nothing shows the password."""
        backend = self.backend("not-the-" + self.password)
        yield backend.start()
        status = backend.status()
        self.assertEqual(status.status, "unavailable")
        self.assertIn("invalid password", status.last_error)
        self.assertNotIn(self.password, repr(status) + repr(backend))
        with self.assertRaises(RedisUnavailable):
            yield backend.get(b"x")
