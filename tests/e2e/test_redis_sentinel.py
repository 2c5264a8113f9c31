"""
Tests for L{dnsgo.redis.sentinel}: the shared cache over Redis Sentinel.

The first group drives L{SentinelRedis} with a Clock and a fake connector
(scripted sentinels, servers, pools and subscriptions) to check discovery,
the ROLE-bug workaround, ``+switch-master``, rechecks and read preferences
exactly.  The second runs real redis-server and redis-sentinel processes
(tests/support/redis_procs.py), including a ``kill -9`` failover.
"""
import time

import txredisapi
from twisted.internet import defer, error, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from dnsgo.redis.backend import RedisUnavailable
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.guard import Guard
from dnsgo.redis.sentinel import SentinelRedis, SwitchMaster, role_name, usable_replicas
from tests.support.redis_procs import SKIP, RedisServer, SentinelSet, cli

NAME = "dns-cache"
S1, S2, S3 = ("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)
A, B, R = ("10.0.1.1", 6379), ("10.0.1.2", 6379), ("10.0.1.3", 6379)
PASSWORD = "s3cret-Pa55"


def captured_logs(test) -> list[str]:
    """Collect every log line emitted during ``test`` (formatted)."""
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def replica_entry(address, flags="slave") -> list[bytes]:
    """One entry of a ``SENTINEL replicas`` reply, as txredisapi gives it with charset=None."""
    return [b"name", f"{address[0]}:{address[1]}".encode(), b"ip", address[0].encode(),
            b"port", str(address[1]).encode(), b"flags", flags.encode()]


class FakeConnection:
    """A connection of a FakePool: runs commands against the pool's server."""

    def __init__(self, pool: "FakePool") -> None:
        self.pool = pool

    def execute_command(self, *command):
        self.pool.commands.append(command)
        return self.pool.server.run(command)


class FakeServer:
    """A scripted Redis server: a dict store, or failing/hanging on every command."""

    def __init__(self) -> None:
        self.store: dict[bytes, bytes] = {}
        self.error: Exception | None = None
        self.hang = False

    def run(self, command):
        if self.hang:
            return defer.Deferred()
        if self.error is not None:
            return defer.fail(self.error)
        name = command[0].decode() if isinstance(command[0], bytes) else command[0]
        if name == "GET":
            return defer.succeed(self.store.get(command[1]))
        if name == "SET":
            self.store[command[1]] = command[2]
            return defer.succeed(b"OK")
        return defer.succeed(None)


class FakePool:
    """What TxRedisConnector.pool returns, for one address."""

    def __init__(self, connector: "FakeConnector", address) -> None:
        self.address = address
        self.server = connector.server(address)
        self.commands: list[tuple] = []
        self.started = self.stopped = False
        self.connected = True
        self.failing = False
        self.last_error = None

    def start(self):
        self.started = True
        return defer.succeed(None)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)

    def connection(self):
        if self.stopped:
            raise txredisapi.ConnectionError("stopped")
        return FakeConnection(self)


class FakeSubscriber:
    """What TxRedisConnector.subscriber returns."""

    def __init__(self, address, channel, on_message, on_reconnect, sentinel) -> None:
        self.address, self.channel, self.sentinel = address, channel, sentinel
        self.on_message, self.on_reconnect = on_message, on_reconnect
        self.started = self.stopped = False
        self.reconnects = 0

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True
        return defer.succeed(None)

    def reconnect(self):
        self.reconnects += 1


class FakeConnector:
    """Scripted sentinels (master address and replicas per sentinel) and ROLE replies per server."""

    def __init__(self) -> None:
        self.masters: dict = {}  # sentinel -> master address, or an Exception
        self.replicas: dict = {}  # sentinel -> SENTINEL replicas reply
        self.roles: dict = {}  # server -> ROLE reply, or an Exception
        self.servers: dict = {}
        self.pools: list[FakePool] = []
        self.subscribers: list[FakeSubscriber] = []
        self.asked: list = []

    def ask_sentinel(self, address, *command):
        self.asked.append((address, command))
        if command[1] == "get-master-addr-by-name":
            answer = self.masters.get(address, error.ConnectionRefusedError("refused"))
            if isinstance(answer, defer.Deferred):  # answered later by the test
                return answer.addCallback(lambda a: [a[0].encode(), str(a[1]).encode()])
            if isinstance(answer, Exception):
                return defer.fail(answer)
            return defer.succeed([answer[0].encode(), str(answer[1]).encode()])
        return defer.succeed(self.replicas.get(address, []))

    def ask_server(self, address, *command):
        self.asked.append((address, command))
        answer = self.roles.get(address, error.ConnectionRefusedError("refused"))
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def pool(self, address):
        pool = FakePool(self, address)
        self.pools.append(pool)
        return pool

    def subscriber(self, address, channel, on_message, on_reconnect, *, sentinel):
        sub = FakeSubscriber(address, channel, on_message, on_reconnect, sentinel)
        self.subscribers.append(sub)
        return sub

    def server(self, address) -> FakeServer:
        """The fake server at ``address``."""
        return self.servers.setdefault(address, FakeServer())

    def live_pool(self, address) -> FakePool:
        """The pool to ``address`` that is not stopped."""
        [pool] = [p for p in self.pools if p.address == address and not p.stopped]
        return pool

    def sentinel_subscriber(self, sentinel) -> FakeSubscriber:
        """The +switch-master subscription on ``sentinel``."""
        [sub] = [s for s in self.subscribers if s.sentinel and s.address == sentinel]
        return sub


MASTER_ROLE = [b"master", 0, []]
SLAVE_ROLE = [b"slave", b"10.0.1.1", 6379, b"connected", 0]


def result_of(d):
    """What a Deferred fired with (a Failure for an error); fails the test when it has not fired."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


class FakeSentinelTests(SynchronousTestCase):
    """SentinelRedis against a fake connector, on a Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.fake = FakeConnector()
        self.fake.masters = {S1: A, S2: A, S3: A}
        self.fake.roles = {A: MASTER_ROLE, B: MASTER_ROLE}
        self.breaker = CircuitBreaker(reactor=self.clock)
        self.guard = Guard(self.breaker, read_timeout=0.5, write_timeout=0.5, reactor=self.clock)
        self.logs = captured_logs(self)

    def backend(self, **kwargs) -> SentinelRedis:
        """A started backend over the fake sentinels S1..S3."""
        b = SentinelRedis(NAME, [S1, S2, S3], guard=self.guard, reactor=self.clock, connector=self.fake,
                          **kwargs)
        result_of(b.start())
        self.addCleanup(b.stop)
        return b

    def test_role_name_reads_bytes(self):
        """
        role_name decodes a ROLE reply given as bytes (charset=None), which
        txredisapi's own check (``role[0] != "master"``) never matches.
        """
        self.assertEqual(role_name(MASTER_ROLE), "master")
        self.assertEqual(role_name(SLAVE_ROLE), "slave")
        self.assertEqual(role_name(["master", 0, []]), "master")
        self.assertEqual(role_name(None), "")
        self.assertNotEqual(MASTER_ROLE[0], "master")  # the txredisapi bug this works around

    def test_start_adopts_master_after_role_check(self):
        """start() finds the master the sentinels name, verifies its bytes ROLE reply, and pools to it."""
        b = self.backend()
        self.assertEqual(b.status().master, "10.0.1.1:6379")
        self.assertEqual(b.status().type, "redis-sentinel")
        self.assertEqual(b.status().address, "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379")
        self.assertIn((A, ("ROLE",)), self.fake.asked)
        self.assertTrue(self.fake.live_pool(A).started)
        self.assertEqual([s.channel for s in self.fake.subscribers], [b"+switch-master"] * 3)
        self.assertTrue(all(s.started and s.sentinel for s in self.fake.subscribers))

    def test_address_that_is_not_master_is_skipped(self):
        """
        When the sentinels' majority names a server whose ROLE says slave (a
        stale view), the next named address that says master is used.
        """
        self.fake.masters = {S1: A, S2: A, S3: B}
        self.fake.roles = {A: SLAVE_ROLE, B: MASTER_ROLE}
        b = self.backend()
        self.assertEqual(b.status().master, "10.0.1.2:6379")
        self.assertEqual([p.address for p in self.fake.pools], [B])

    def test_majority_wins(self):
        """Two sentinels naming B outvote one naming A (both answer ROLE master)."""
        self.fake.masters = {S1: A, S2: B, S3: B}
        b = self.backend()
        self.assertEqual(b.status().master, "10.0.1.2:6379")

    def test_switch_master_moves_pools_at_once(self):
        """
        A +switch-master message for our master name moves writes to the new
        master at once, stops the old pool, reconnects pub/sub subscriptions
        and resets the breaker; messages for other names are ignored.
        """
        b = self.backend()
        sub = b.subscribe(b"inval", lambda m: None, lambda: None)
        for _ in range(5):
            self.breaker.failed()
        self.assertEqual(self.breaker.state, "open")
        subscriber = self.fake.sentinel_subscriber(S2)
        subscriber.on_message(b"other 10.0.1.1 6379 10.0.1.9 6379")
        self.assertEqual(b.status().master, "10.0.1.1:6379")
        subscriber.on_message(b"dns-cache 10.0.1.1 6379 10.0.1.2 6379")
        self.assertEqual(b.status().master, "10.0.1.2:6379")
        self.assertEqual(b.master_changes, {"+switch-master": 1})
        self.assertTrue(self.fake.pools[0].stopped)
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(sub.subscriber.reconnects, 1)
        self.assertEqual(sub.subscriber.address(), B)
        result_of(b.set(b"k", b"v", 60))
        self.assertEqual(self.fake.server(B).store, {b"k": b"v"})
        self.assertEqual(self.fake.server(A).store, {})

    def test_duplicate_switch_messages_change_once(self):
        """Every sentinel publishes +switch-master; the second and third copies change nothing."""
        b = self.backend()
        for sentinel in (S1, S2, S3):
            self.fake.sentinel_subscriber(sentinel).on_message(b"dns-cache 10.0.1.1 6379 10.0.1.2 6379")
        self.assertEqual(b.switch_messages, 3)
        self.assertEqual(b.master_changes, {"+switch-master": 1})
        self.assertEqual(len(self.fake.pools), 2)

    def test_repeated_failures_recheck_the_master(self):
        """
        Three failed operations in a row make the backend ask the sentinels
        again (belt and braces, should +switch-master be missed), and it
        follows the master they name now.
        """
        b = self.backend(recheck_interval=1.0)
        self.fake.server(A).error = txredisapi.ResponseError("LOADING")
        self.fake.masters = {S1: B, S2: B, S3: B}
        self.clock.advance(2)
        asked = len(self.fake.asked)
        for _ in range(2):
            self.assertIsInstance(result_of(b.get(b"k")).value, RedisUnavailable)
        self.assertEqual(len(self.fake.asked), asked)
        self.assertIsInstance(result_of(b.get(b"k")).value, RedisUnavailable)
        self.assertEqual(b.status().master, "10.0.1.2:6379")
        self.assertEqual(b.master_changes, {"operations failing": 1})

    def test_rechecks_are_rate_limited(self):
        """Failures within recheck_interval of the last discovery do not ask the sentinels again."""
        b = self.backend(recheck_interval=5.0)
        self.fake.server(A).error = txredisapi.ResponseError("LOADING")
        checks = b.checks
        for _ in range(6):
            result_of(b.get(b"k"))
        self.assertEqual(b.checks, checks)
        self.clock.advance(5)
        result_of(b.get(b"k"))
        self.assertEqual(b.checks, checks + 1)

    def test_readonly_rechecks_at_once(self):
        """A READONLY reply (writing to a demoted master) asks the sentinels after a single failure."""
        b = self.backend()
        self.clock.advance(2)
        self.fake.server(A).error = txredisapi.ResponseError("READONLY You can't write against a read only replica.")
        self.fake.roles[A] = SLAVE_ROLE
        self.fake.masters = {S1: B, S2: B, S3: B}
        self.assertIsInstance(result_of(b.set(b"k", b"v", 5)).value, RedisUnavailable)
        self.assertEqual(b.status().master, "10.0.1.2:6379")

    def test_sentinel_resubscription_rechecks(self):
        """When a sentinel subscription comes back (a +switch-master may have been missed), discovery runs."""
        b = self.backend()
        self.fake.masters = {S1: B, S2: B, S3: B}
        self.fake.sentinel_subscriber(S1).on_reconnect()
        self.assertEqual(b.master_changes, {"sentinel subscription restored": 1})

    def test_periodic_refresh(self):
        """Discovery runs again every refresh_interval and notices a changed master."""
        b = self.backend(refresh_interval=10.0)
        self.fake.masters = {S1: B, S2: B, S3: B}
        self.clock.advance(9.9)
        self.assertEqual(b.status().master, "10.0.1.1:6379")
        self.clock.advance(0.2)
        self.assertEqual(b.status().master, "10.0.1.2:6379")

    def test_wrong_password_logs_once_and_retries(self):
        """
        A wrong password: start() still fires, one warning line says
        'invalid password' (without the password), no pool is made,
        operations fail as RedisUnavailable, and discovery keeps retrying
        quietly until the password works.
        """
        self.fake.roles = {A: txredisapi.ResponseError("WRONGPASS invalid username-password pair")}
        b = self.backend(password=PASSWORD)
        status = b.status()
        self.assertEqual((status.status, status.master), ("unavailable", None))
        self.assertIn("invalid password", status.last_error)
        self.assertEqual(self.fake.pools, [])
        self.assertIsInstance(result_of(b.get(b"k")).value, RedisUnavailable)
        warnings = [line for line in self.logs if "no usable master" in line]
        self.assertEqual(len(warnings), 1)
        self.assertIn("invalid password", warnings[0])
        checks = b.checks
        self.clock.pump([1] * 20)
        self.assertGreater(b.checks, checks + 3)
        self.assertEqual(len([line for line in self.logs if "no usable master" in line]), 1)
        self.fake.roles = {A: MASTER_ROLE}
        self.clock.advance(10)
        self.assertEqual(b.status().master, "10.0.1.1:6379")
        self.assertFalse(any(PASSWORD in line for line in self.logs))

    def test_no_sentinel_answers(self):
        """No sentinel answering: start() fires, status says unavailable, one line names the sentinels."""
        self.fake.masters = {}
        b = self.backend()
        self.assertEqual(b.status().status, "unavailable")
        self.assertIn("sentinel 10.0.0.1:26379: connection refused", b.status().last_error)
        self.assertEqual(len([line for line in self.logs if "no usable master" in line]), 1)
        self.fake.masters = {S3: A}
        self.clock.advance(10)
        self.assertEqual(b.status().master, "10.0.1.1:6379")

    def test_read_preference_replica(self):
        """'replica' reads go to a usable replica (flagged ones skipped); writes go to the master."""
        self.fake.replicas = {S1: [replica_entry(B, "slave,s_down,disconnected"), replica_entry(R)]}
        b = self.backend(read_preference="replica")
        self.assertEqual(b.replica, "10.0.1.3:6379")
        self.fake.server(R).store[b"k"] = b"from-replica"
        self.assertEqual(result_of(b.get(b"k")), b"from-replica")
        result_of(b.set(b"w", b"v", 5))
        self.assertEqual(self.fake.server(A).store, {b"w": b"v"})

    def test_replica_without_replicas_misses(self):
        """'replica' with no usable replica: reads fail at once, without touching the breaker."""
        self.fake.replicas = {S1: [replica_entry(R, "slave,o_down")]}
        b = self.backend(read_preference="replica")
        for _ in range(5):
            self.assertIsInstance(result_of(b.get(b"k")).value, RedisUnavailable)
        self.assertEqual(self.breaker.state, "closed")
        self.assertEqual(self.fake.live_pool(A).commands, [])

    def test_replica_preferred_falls_back_to_master(self):
        """'replicaPreferred' reads from the master while no replica is usable, and from one once it is."""
        self.fake.replicas = {S1: []}
        b = self.backend(read_preference="replicaPreferred", refresh_interval=10.0)
        self.fake.server(A).store[b"k"] = b"from-master"
        self.assertEqual(result_of(b.get(b"k")), b"from-master")
        self.fake.replicas = {S1: [replica_entry(R)]}
        self.fake.server(R).store[b"k"] = b"from-replica"
        self.clock.advance(10)
        self.assertEqual(result_of(b.get(b"k")), b"from-replica")

    def test_failover_promoting_the_read_replica(self):
        """When the replica reads go to is promoted, reads leave it and follow the new replica list."""
        self.fake.replicas = {S1: [replica_entry(B)], S2: [replica_entry(A, "slave,s_down")]}
        b = self.backend(read_preference="replicaPreferred")
        self.assertEqual(b.replica, "10.0.1.2:6379")
        self.fake.sentinel_subscriber(S2).on_message(b"dns-cache 10.0.1.1 6379 10.0.1.2 6379")
        self.assertEqual((b.status().master, b.replica), ("10.0.1.2:6379", None))

    def test_subscription_waits_for_a_master(self):
        """A subscription made before any master is known gets the address once one is found."""
        self.fake.masters = {}
        b = self.backend()
        sub = b.subscribe(b"inval", lambda m: None, lambda: None)
        pending = sub.subscriber.address()
        self.assertNoResult(pending)
        self.fake.masters = {S1: A}
        self.clock.advance(10)
        self.assertEqual(result_of(pending), A)

    def test_stale_discovery_does_not_undo_a_switch(self):
        """
        A discovery that was under way when +switch-master arrived, and comes
        back naming the old master, does not move the backend back to it.
        """
        b = self.backend()
        answers = [defer.Deferred() for _ in range(3)]
        self.fake.masters = dict(zip((S1, S2, S3), answers))
        b.check("refresh")
        self.fake.sentinel_subscriber(S1).on_message(b"dns-cache 10.0.1.1 6379 10.0.1.2 6379")
        for d in answers:
            d.callback(A)  # the old view: A still answers ROLE master
        self.assertEqual(b.status().master, "10.0.1.2:6379")
        self.assertEqual(b.master_changes, {"+switch-master": 1})

    def test_stop_during_discovery(self):
        """stop() while the sentinels have not answered: start() fires, nothing is probed or pooled afterwards."""
        answers = [defer.Deferred() for _ in range(3)]
        self.fake.masters = dict(zip((S1, S2, S3), answers))
        b = SentinelRedis(NAME, [S1, S2, S3], guard=self.guard, reactor=self.clock, connector=self.fake)
        started = b.start()
        self.assertNoResult(started)
        result_of(b.stop())
        self.assertIsNone(result_of(started))
        self.assertFalse([c for _, c in self.fake.asked if c == ("ROLE",)])
        self.assertEqual(self.fake.pools, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_stops_everything(self):
        """stop() stops the sentinel subscriptions, user subscriptions and pools, and timers."""
        b = SentinelRedis(NAME, [S1], guard=self.guard, reactor=self.clock, connector=self.fake)
        result_of(b.start())
        sub = b.subscribe(b"inval", lambda m: None, lambda: None)
        result_of(b.stop())
        self.assertTrue(all(s.stopped for s in self.fake.subscribers))
        self.assertTrue(sub.subscriber.stopped)
        self.assertTrue(all(p.stopped for p in self.fake.pools))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ParsingTests(SynchronousTestCase):
    """The small parsers."""

    def test_switch_master(self):
        """A +switch-master message parses into name, old and new addresses; anything else into None."""
        self.assertEqual(SwitchMaster.parse(b"dns-cache 127.0.0.1 6379 127.0.0.2 6380"),
                         SwitchMaster("dns-cache", ("127.0.0.1", 6379), ("127.0.0.2", 6380)))
        self.assertIsNone(SwitchMaster.parse(b"dns-cache 127.0.0.1 6379"))
        self.assertIsNone(SwitchMaster.parse(b"dns-cache a b c d"))

    def test_usable_replicas(self):
        """Replicas flagged s_down, o_down or disconnected, and the master itself, are not usable."""
        reply = [replica_entry(A), replica_entry(B, "slave,s_down"), replica_entry(R, "slave,disconnected"),
                 replica_entry(("10.0.1.4", 1), "slave,o_down"), replica_entry(("10.0.1.5", 2), "slave")]
        self.assertEqual(usable_replicas(reply, master=A), (("10.0.1.5", 2),))
        self.assertEqual(usable_replicas(None), ())


class QuickSyncServer(RedisServer):
    """A redis-server that starts a replica's full sync at once (Redis 7 waits 5 s for more replicas)."""

    def config_lines(self) -> list[str]:
        return super().config_lines() + ["repl-diskless-sync-delay 0"]


def start_sentinel_set(test, password=None) -> SentinelSet:
    """A started SentinelSet (down-after 1 s), stopped at the end of ``test``."""
    s = SentinelSet(password=password, down_after_ms=1000)
    s.master = QuickSyncServer(password=password)
    test.addCleanup(s.stop)
    return s.start()


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` on the real reactor."""
    return task.deferLater(reactor, seconds, lambda: None)


def commandstat(port: int, command: str, password=None) -> int:
    """How many times ``command`` ran on the server at ``port`` (INFO commandstats)."""
    for line in cli(port, "INFO", "commandstats", password=password).splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


class RealSentinelTests(TestCase):
    """SentinelRedis against real redis-server and redis-sentinel processes (password protected)."""

    skip = SKIP
    timeout = 30

    def setUp(self):
        self.set = start_sentinel_set(self, password=PASSWORD)
        self.sentinels = [("127.0.0.1", s.port) for s in self.set.sentinels]

    @defer.inlineCallbacks
    def backend(self, **kwargs):
        """A started backend on the set's sentinels."""
        kwargs.setdefault("password", PASSWORD)
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        b = SentinelRedis(NAME, self.sentinels, guard=guard, reactor=reactor, **kwargs)
        self.addCleanup(b.stop)
        yield b.start()
        return b

    @defer.inlineCallbacks
    def test_operations_on_the_master(self):
        """
        get/set/mget/delete/delete_matching/info go to the master the
        sentinels name, binary values intact; status shows it connected.
        """
        b = yield self.backend()
        status = b.status()
        self.assertEqual((status.status, status.master), ("connected", self.set.master.address))
        value = b"\x00\xff12"
        yield b.set(b"t:1", value, 60)
        yield b.set(b"t:2", b"2", 60)
        self.assertEqual(cli(self.set.master.port, "EXISTS", "t:1", password=PASSWORD), "1")
        self.assertEqual((yield b.get(b"t:1")), value)
        self.assertEqual((yield b.mget([b"t:1", b"nope", b"t:2"])), [value, None, b"2"])
        info = yield b.info()
        self.assertEqual(info["keys"], 2)
        self.assertGreater(info["used_memory"], 0)
        self.assertEqual((yield b.delete([b"t:2", b"nope"])), 1)
        yield b.set(b"x:1", b"1", 60)
        self.assertEqual((yield b.delete_matching(b"t:*")), 1)
        self.assertEqual((yield b.get(b"x:1")), b"1")
        self.assertFalse(PASSWORD in repr(b) + repr(b.status()))

    @defer.inlineCallbacks
    def test_replica_reads(self):
        """
        With read_preference 'replica', a GET runs on the replica (its
        commandstats count it, the master's do not) and returns what was
        written to the master once replicated; the write itself hit the master.
        """
        b = yield self.backend(read_preference="replica")
        self.assertEqual(b.replica, self.set.replica.address)
        yield b.set(b"r:1", b"replicated", 60)
        for _ in range(150):
            if b.replica_connected:
                break
            yield sleep(0.02)
        for _ in range(150):
            if cli(self.set.replica.port, "GET", "r:1", password=PASSWORD) == "replicated":
                break
            yield sleep(0.02)
        replica_gets = commandstat(self.set.replica.port, "get", PASSWORD)
        master_gets = commandstat(self.set.master.port, "get", PASSWORD)
        self.assertEqual((yield b.get(b"r:1")), b"replicated")
        self.assertEqual(commandstat(self.set.replica.port, "get", PASSWORD), replica_gets + 1)
        self.assertEqual(commandstat(self.set.master.port, "get", PASSWORD), master_gets)

    @defer.inlineCallbacks
    def test_pubsub_on_the_master(self):
        """subscribe/publish go through the master: a published message reaches the subscriber."""
        b = yield self.backend()
        got = []
        sub = b.subscribe(b"inval", got.append, lambda: None)
        yield sub.subscriber.when_subscribed()
        self.assertEqual((yield b.publish(b"inval", b"name.example.")), 1)
        for _ in range(50):
            if got:
                break
            yield sleep(0.02)
        self.assertEqual(got, [b"name.example."])
        yield sub.stop()

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """
        A wrong password: start() fires without error, one log line says
        'invalid password' and never shows the password, operations fail
        as RedisUnavailable, status says unavailable.
        """
        logs = captured_logs(self)
        wrong = "not-the-Pa55word"
        b = yield self.backend(password=wrong)
        status = b.status()
        self.assertEqual((status.status, status.master), ("unavailable", None))
        self.assertIn("invalid password", status.last_error)
        yield self.assertFailure(b.get(b"k"), RedisUnavailable)
        yield sleep(1.2)  # a couple of quiet retries
        self.assertGreater(b.checks, 1)
        lines = [line for line in logs if "invalid password" in line and "redis-sentinel" in line]
        self.assertEqual(len(lines), 1, logs)
        self.assertFalse([line for line in logs if wrong in line or PASSWORD in line])


class FailoverTests(TestCase):
    """A real failover: kill -9 the master while writing every 50 ms."""

    skip = SKIP
    timeout = 40

    @defer.inlineCallbacks
    def test_kill_master(self):
        """
        After ``kill -9`` of the master the sentinels promote the replica;
        the backend learns it from +switch-master (the only path enabled
        here: no rechecks, no refreshes within the test), and writes succeed
        on the new master within 10 s of the kill; status shows its port.
        """
        s = start_sentinel_set(self)
        guard = Guard(CircuitBreaker(reactor=reactor), reactor=reactor)
        b = SentinelRedis(NAME, [("127.0.0.1", x.port) for x in s.sentinels], guard=guard,
                          read_preference="replicaPreferred", recheck_interval=600, refresh_interval=600,
                          reactor=reactor)
        self.addCleanup(b.stop)
        yield b.start()
        self.assertEqual(b.status().master, s.master.address)
        yield b.set(b"before", b"1", 60)
        # replication is asynchronous (and starts up to 1 s after the initial sync): wait for it,
        # or the kill may lose the key
        for _ in range(150):
            if cli(s.replica.port, "GET", "before") == "1":
                break
            yield sleep(0.02)

        outcomes = []  # (seconds since the kill, key, ok)
        killed_at = []

        def write():
            n = len(outcomes)
            key = b"w:%d" % n
            issued = time.monotonic() - killed_at[0] if killed_at else None
            slot = [issued, key, None]
            outcomes.append(slot)
            d = b.set(key, b"v", 60)
            d.addCallbacks(lambda _: slot.__setitem__(2, True), lambda _: slot.__setitem__(2, False))

        writer = task.LoopingCall(write)
        writer.start(0.05)
        self.addCleanup(lambda: writer.running and writer.stop())
        yield sleep(0.3)
        s.master.kill()
        killed_at.append(time.monotonic())

        recovered = None
        while time.monotonic() - killed_at[0] < 20:
            ok_after = [o for o in outcomes if o[0] is not None and o[2]]
            if ok_after:
                recovered = ok_after[0]
                break
            yield sleep(0.05)
        writer.stop()
        self.assertIsNotNone(recovered, "no write succeeded within 20 s of the kill")
        failover_seconds = recovered[0]
        print(f"\n  failover: first successful write issued {failover_seconds:.2f} s after kill -9")
        self.assertLess(failover_seconds, 10.0)
        self.assertTrue(any(o[2] is False for o in outcomes), "writes should have failed during the outage")
        self.assertEqual(b.status().master, s.replica.address)
        self.assertEqual(b.master_changes, {"+switch-master": 1})
        self.assertGreaterEqual(b.switch_messages, 1)
        self.assertEqual(cli(s.replica.port, "GET", recovered[1].decode()), "v")
        self.assertEqual((yield b.get(b"before")), b"1")
