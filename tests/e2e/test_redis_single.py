"""
SingleRedis and its subscriber against real redis-server processes: round
trips of binary values, TTLs, wrong passwords, unreachable servers, a Redis
killed and restarted under it, and subscriptions surviving killed
connections.
"""
import time

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from dnsgo.redis.backend import RedisUnavailable
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.guard import Guard
from dnsgo.redis.commands import info_numbers, parse_info, parse_scan
from dnsgo.redis.single import SingleRedis
from tests.support.redis_procs import SKIP, RedisServer, cli, free_port

READ_TIMEOUT = 0.5


def sleep(seconds: float) -> defer.Deferred:
    """Let the reactor run for ``seconds``."""
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(predicate, timeout: float = 5.0, what: str = "condition"):
    """Poll ``predicate`` every 20 ms until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield sleep(0.02)


class _Logs:
    """The formatted log lines of dnsgo.redis, collected while a test runs."""

    def __init__(self, test: TestCase) -> None:
        self.lines: list[str] = []
        globalLogPublisher.addObserver(self)
        test.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event) -> None:
        if event.get("log_namespace", "").startswith("dnsgo.redis"):
            self.lines.append(formatEvent(event))


class _Case(TestCase):
    """Starts a redis-server and a SingleRedis on it."""

    skip = SKIP
    server_password: str | None = None
    client_password = ""

    def setUp(self):
        self.server = RedisServer(password=self.server_password).start()
        self.addCleanup(self.server.stop)
        self.logs = _Logs(self)

    def make_backend(self, port=None, password=None, **kwargs) -> SingleRedis:
        breaker = CircuitBreaker(failure_threshold=3, reset_timeout=0.2, max_reset_timeout=0.4, reactor=reactor)
        guard = Guard(breaker, read_timeout=READ_TIMEOUT, write_timeout=READ_TIMEOUT, reactor=reactor)
        backend = SingleRedis(("127.0.0.1", port or self.server.port),
                              password=self.client_password if password is None else password,
                              pool_size=3, guard=guard, reactor=reactor, **kwargs)
        self.addCleanup(backend.stop)
        return backend

    def redis_cli(self, *args):
        return cli(self.server.port, *args, password=self.server_password)


class RoundTripTests(_Case):
    """Commands against a healthy server."""

    server_password = "s3cret-pw"
    client_password = "s3cret-pw"

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.backend = self.make_backend()
        yield self.backend.start()

    @defer.inlineCallbacks
    def test_binary_values_round_trip(self):
        """Values come back as the exact bytes stored: b"12" is not turned into a number, NUL and 0xff survive."""
        yield self.backend.set(b"k1", b"12", 60)
        yield self.backend.set(b"k\x00\xff", b"\x00\xff\r\n", 60)
        self.assertEqual((yield self.backend.get(b"k1")), b"12")
        self.assertEqual((yield self.backend.get(b"k\x00\xff")), b"\x00\xff\r\n")
        self.assertIsNone((yield self.backend.get(b"absent")))

    @defer.inlineCallbacks
    def test_mget_keeps_order_and_gaps(self):
        """mget returns the values in the order asked, None for missing keys."""
        yield self.backend.set(b"a", b"1", 60)
        yield self.backend.set(b"c", b"\x003", 60)
        self.assertEqual((yield self.backend.mget([b"c", b"b", b"a"])), [b"\x003", None, b"1"])
        self.assertEqual((yield self.backend.mget([])), [])

    @defer.inlineCallbacks
    def test_set_sets_the_ttl(self):
        """set stores with EX ttl; a fractional ttl is rounded up."""
        yield self.backend.set(b"t", b"v", 100)
        yield self.backend.set(b"f", b"v", 1.5)
        self.assertIn(int(self.redis_cli("TTL", "t")), (99, 100))
        self.assertEqual(int(self.redis_cli("TTL", "f")), 2)

    @defer.inlineCallbacks
    def test_database_is_selected(self):
        """With database=3 the keys land in Redis database 3."""
        backend = self.make_backend(database=3)
        yield backend.start()
        yield backend.set(b"indb3", b"v", 60)
        self.assertEqual(self.redis_cli("-n", "3", "GET", "indb3"), "v")
        self.assertEqual(self.redis_cli("GET", "indb3"), "")

    @defer.inlineCallbacks
    def test_delete_counts_existing_keys(self):
        """delete removes the keys and fires with how many existed."""
        yield self.backend.set(b"d1", b"v", 60)
        yield self.backend.set(b"d2", b"v", 60)
        self.assertEqual((yield self.backend.delete([b"d1", b"d2", b"nope"])), 2)
        self.assertIsNone((yield self.backend.get(b"d1")))
        self.assertEqual((yield self.backend.delete([])), 0)

    @defer.inlineCallbacks
    def test_delete_matching_removes_only_matches(self):
        """delete_matching deletes every key matching the pattern (across many SCAN pages) and nothing else."""
        yield defer.gatherResults([self.backend.set(b"dns:a:%d" % i, b"v", 60) for i in range(1200)])
        yield defer.gatherResults([self.backend.set(b"dns:b:%d" % i, b"v", 60) for i in range(3)])
        deleted = yield self.backend.delete_matching(b"dns:a:*")
        self.assertEqual(deleted, 1200)
        self.assertEqual(int(self.redis_cli("DBSIZE")), 3)
        self.assertEqual((yield self.backend.delete_matching(b"nothing:*")), 0)

    @defer.inlineCallbacks
    def test_publish_reaches_subscriber(self):
        """A published binary message reaches a subscriber; publish counts the receivers."""
        got = []
        sub = self.backend.subscribe(b"inv", got.append, lambda: None)
        yield sub.when_subscribed()
        receivers = yield self.backend.publish(b"inv", b"\x00name\xff")
        self.assertEqual(receivers, 1)
        yield wait_for(lambda: got, what="the message")
        self.assertEqual(got, [b"\x00name\xff"])

    @defer.inlineCallbacks
    def test_info_reports_keys_memory_hits(self):
        """info gives the key count, used memory and the hit/miss counters as ints."""
        yield self.backend.set(b"i1", b"v", 60)
        yield self.backend.set(b"i2", b"v", 60)
        before = yield self.backend.info()
        yield self.backend.get(b"i1")
        yield self.backend.get(b"missing")
        after = yield self.backend.info()
        self.assertEqual(after["keys"], 2)
        self.assertGreater(after["used_memory"], 0)
        self.assertEqual(after["keyspace_hits"] - before["keyspace_hits"], 1)
        self.assertEqual(after["keyspace_misses"] - before["keyspace_misses"], 1)

    def test_status_connected(self):
        """status names the type and address, says connected, holds no password."""
        status = self.backend.status()
        self.assertEqual((status.type, status.address, status.status, status.master),
                         ("redis", f"127.0.0.1:{self.server.port}", "connected", None))
        self.assertEqual(status.breaker.state, "closed")
        self.assertNotIn("s3cret", repr(status) + repr(self.backend))

    @defer.inlineCallbacks
    def test_killed_connections_are_replaced(self):
        """After CLIENT KILL of the normal connections the pool reconnects and commands work again."""
        yield self.backend.set(b"x", b"1", 60)
        self.redis_cli("CLIENT", "KILL", "TYPE", "normal")
        yield sleep(0.3)
        self.assertEqual((yield self.backend.get(b"x")), b"1")


class ParseInfoTests(TestCase):
    """The one INFO parser of dnsgo.redis.commands, used by every backend."""

    def test_picks_integer_fields(self):
        """The wanted fields are parsed as ints; others, non-integers and sections are ignored."""
        text = b"# Memory\r\nused_memory:1024\r\nused_memory_human:1K\r\n# Stats\r\nkeyspace_hits:7\r\nevicted_keys:x\r\n"
        self.assertEqual(info_numbers(text), {"used_memory": 1024, "keyspace_hits": 7})

    def test_every_field_as_text(self):
        """parse_info keeps every field as text, section headers left out (the Cluster backend sums them)."""
        text = "# Server\r\nredis_version:7.0.15\r\nused_memory:1024\r\n"
        self.assertEqual(parse_info(text), {"redis_version": "7.0.15", "used_memory": "1024"})

    def test_scan_reply(self):
        """A SCAN reply (cursor as bytes) becomes an int cursor and a list of keys."""
        self.assertEqual(parse_scan([b"17", [b"a", b"b"]]), (17, [b"a", b"b"]))
        self.assertEqual(parse_scan([b"0", []]), (0, []))


class WrongPasswordTests(_Case):
    """A password Redis refuses."""

    server_password = "right-pw-123"
    client_password = "wrong-pw-456"

    @defer.inlineCallbacks
    def test_one_clear_line_then_quiet_then_recovery(self):
        """
        start() fires anyway with one log line naming the address and the
        reason but not the password; retries stay quiet; commands fail fast;
        once Redis accepts the password one line says so and commands work.
        """
        backend = self.make_backend()
        yield backend.start()
        expected = f"shared cache: cannot use Redis at 127.0.0.1:{self.server.port}: invalid password"
        self.assertEqual(self.logs.lines, [expected])
        yield sleep(1.0)  # several retries
        self.assertEqual(self.logs.lines, [expected])
        yield self.assertFailure(backend.get(b"k"), RedisUnavailable)
        status = backend.status()
        self.assertEqual(status.status, "unavailable")
        self.assertEqual(status.last_error, "invalid password")
        for text in self.logs.lines + [repr(status)]:
            self.assertNotIn("wrong-pw", text)
            self.assertNotIn("right-pw", text)

        self.redis_cli("CONFIG", "SET", "requirepass", self.client_password)
        yield wait_for(lambda: backend.status().status == "connected", 5, "recovery")
        self.assertEqual(self.logs.lines[1:],
                         [f"shared cache: Redis at 127.0.0.1:{self.server.port} is usable again"])
        yield backend.set(b"k", b"v", 60)
        self.assertEqual(cli(self.server.port, "GET", "k", password=self.client_password), "v")

    @defer.inlineCallbacks
    def test_missing_password(self):
        """No password where Redis wants one: one line saying a password is required."""
        backend = self.make_backend(password="")
        yield backend.start()
        self.assertEqual(self.logs.lines,
                         [f"shared cache: cannot use Redis at 127.0.0.1:{self.server.port}: a password is required"])
        yield self.assertFailure(backend.set(b"k", b"v", 1), RedisUnavailable)


class UnreachableTests(_Case):
    """Nothing listening at the address."""

    @defer.inlineCallbacks
    def test_start_fires_and_commands_fail_fast(self):
        """start() fires with one line; commands fail with RedisUnavailable, then the breaker refuses them."""
        port = free_port()
        backend = self.make_backend(port=port)
        yield backend.start()
        self.assertEqual(self.logs.lines, [f"shared cache: cannot use Redis at 127.0.0.1:{port}: connection refused"])
        for _ in range(3):
            yield self.assertFailure(backend.get(b"k"), RedisUnavailable)
        self.assertEqual(backend.status().breaker.state, "open")
        yield self.assertFailure(backend.get(b"k"), RedisUnavailable)
        self.assertEqual(backend.guard.refused, 1)
        self.assertEqual(backend.status().status, "unavailable")
        yield sleep(0.5)
        self.assertEqual(len(self.logs.lines), 1)


class UnwantedPasswordTests(_Case):
    """A password configured for a Redis that has none."""

    @defer.inlineCallbacks
    def test_one_clear_line(self):
        """Redis refuses AUTH when it has no password: one line says so, without the password."""
        backend = self.make_backend(password="pw-nobody-asked-for")
        yield backend.start()
        self.assertEqual(self.logs.lines, [f"shared cache: cannot use Redis at 127.0.0.1:{self.server.port}: "
                                           "a password is configured but Redis has none"])
        self.assertNotIn("nobody", repr(backend.status()))


class OutageTests(_Case):
    """Redis going away and coming back under a running backend."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.backend = self.make_backend()
        yield self.backend.start()

    @defer.inlineCallbacks
    def test_kill_then_restart(self):
        """
        Killed: commands fail within the read timeout and the breaker opens
        after three failures.  Restarted: the breaker's probe closes it and
        writes work again.
        """
        yield self.backend.set(b"before", b"1", 60)
        self.server.kill()
        started = time.monotonic()
        yield self.assertFailure(self.backend.get(b"before"), RedisUnavailable)
        self.assertLess(time.monotonic() - started, READ_TIMEOUT + 0.2)
        for _ in range(2):
            yield self.assertFailure(self.backend.set(b"k", b"v", 60), RedisUnavailable)
        self.assertEqual(self.backend.status().breaker.state, "open")
        self.assertEqual(self.backend.status().status, "unavailable")

        self.server.start()
        written = []

        @defer.inlineCallbacks
        def try_write():
            try:
                yield self.backend.set(b"after", b"2", 60)
                written.append(True)
            except RedisUnavailable:
                pass

        deadline = time.monotonic() + 10
        while not written and time.monotonic() < deadline:
            yield try_write()
            yield sleep(0.05)
        self.assertTrue(written)
        self.assertEqual(self.backend.status().breaker.state, "closed")
        self.assertEqual(self.backend.status().status, "connected")
        self.assertEqual(self.redis_cli("GET", "after"), "2")

    @defer.inlineCallbacks
    def test_reconnect_closes_the_breaker_before_its_probe(self):
        """
        After a long outage the breaker's probe may be far off; the pool's
        reconnection closes it at once, so the shared cache is used again
        within about a second of Redis coming back.
        """
        breaker = CircuitBreaker(failure_threshold=1, reset_timeout=60.0, max_reset_timeout=60.0, reactor=reactor)
        guard = Guard(breaker, read_timeout=READ_TIMEOUT, write_timeout=READ_TIMEOUT, reactor=reactor)
        backend = SingleRedis(("127.0.0.1", self.server.port), password=self.client_password, pool_size=2,
                              guard=guard, reactor=reactor)
        self.addCleanup(backend.stop)
        yield backend.start()
        self.server.kill()
        yield self.assertFailure(backend.get(b"k"), RedisUnavailable)
        self.assertEqual(breaker.state, "open")
        self.server.start()
        deadline = time.monotonic() + 5
        while breaker.state != "closed" and time.monotonic() < deadline:
            yield sleep(0.05)
        self.assertEqual(breaker.state, "closed")
        yield backend.set(b"after", b"3", 60)
        self.assertEqual(self.redis_cli("GET", "after"), "3")

    @defer.inlineCallbacks
    def test_hung_redis_times_out(self):
        """A Redis that accepts but never answers (SIGSTOP) fails reads at the read timeout, not before."""
        import signal

        self.server.proc.send_signal(signal.SIGSTOP)
        self.addCleanup(self.server.proc.send_signal, signal.SIGCONT)
        started = time.monotonic()
        yield self.assertFailure(self.backend.get(b"k"), RedisUnavailable)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, READ_TIMEOUT - 0.05)
        self.assertLess(elapsed, READ_TIMEOUT + 0.2)
        self.assertEqual(self.backend.guard.timeouts, 1)


class SubscriptionTests(_Case):
    """The subscription stays alive across lost connections."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.backend = self.make_backend()
        yield self.backend.start()
        self.got, self.reconnects = [], []
        self.sub = self.backend.subscribe(b"inv", self.got.append, lambda: self.reconnects.append(1))
        yield self.sub.when_subscribed()

    @defer.inlineCallbacks
    def test_resubscribes_after_client_kill(self):
        """CLIENT KILL TYPE pubsub: the subscription comes back, on_reconnect is called, later messages arrive."""
        self.assertEqual(self.reconnects, [])
        self.assertEqual(self.redis_cli("CLIENT", "KILL", "TYPE", "pubsub"), "1")
        yield wait_for(lambda: self.reconnects, 2, "resubscription")
        self.assertEqual(self.reconnects, [1])
        self.assertEqual((yield self.backend.publish(b"inv", b"after-kill")), 1)
        yield wait_for(lambda: self.got, 2, "the message")
        self.assertEqual(self.got, [b"after-kill"])

    @defer.inlineCallbacks
    def test_resubscribes_after_restart(self):
        """After Redis is killed and restarted the subscription is restored and on_reconnect called once."""
        self.server.kill()
        yield sleep(0.3)
        self.assertFalse(self.sub.subscribed)
        self.server.start()
        yield wait_for(lambda: self.reconnects, 5, "resubscription")
        self.assertEqual(self.reconnects, [1])
        self.assertEqual(int(self.redis_cli("PUBLISH", "inv", "hello")), 1)
        yield wait_for(lambda: self.got, 2, "the message")
        self.assertEqual(self.got, [b"hello"])

    @defer.inlineCallbacks
    def test_stop_unsubscribes(self):
        """After stop() the subscription is gone and does not come back."""
        yield self.sub.stop()
        yield sleep(0.3)
        self.assertEqual(int(self.redis_cli("PUBLISH", "inv", "x")), 0)
        self.assertEqual(self.reconnects, [])


class KeepaliveTests(_Case):
    """The subscriber's PING finds a connection that went silent."""

    @defer.inlineCallbacks
    def test_silent_server_is_noticed(self):
        """A subscribed server that stops answering is dropped after an unanswered PING and resubscribed later."""
        import signal

        from dnsgo.redis.pubsub import ResubscribingSubscriber

        got, reconnects = [], []
        sub = ResubscribingSubscriber(("127.0.0.1", self.server.port), b"inv", got.append,
                                      lambda: reconnects.append(1), ping_interval=0.2, connect_timeout=0.5,
                                      reactor=reactor)
        sub.start()
        self.addCleanup(sub.stop)
        yield sub.when_subscribed()
        yield sleep(0.7)  # answered PINGs keep the subscription as it is
        self.assertTrue(sub.subscribed)
        self.assertEqual(reconnects, [])
        self.server.proc.send_signal(signal.SIGSTOP)
        try:
            yield wait_for(lambda: not sub.subscribed, 2, "the PING to fail")
            self.assertIn("PING", sub.last_error)
        finally:
            self.server.proc.send_signal(signal.SIGCONT)
        yield wait_for(lambda: reconnects, 5, "resubscription")
        self.assertEqual(int(self.redis_cli("PUBLISH", "inv", "m")), 1)
        yield wait_for(lambda: got, 2, "the message")


class BuildBackendTests(TestCase):
    """dnsgo.redis.factory.build_backend."""

    def test_single_server_from_config(self):
        """type 'redis' builds a SingleRedis at the configured address with a guard from the settings."""
        from dnsgo.config import Address, SharedCacheConfig
        from dnsgo.redis.factory import build_backend

        shared = SharedCacheConfig(type="redis", address=Address("127.0.0.1", 6390), read_timeout=0.3,
                                   write_timeout=0.7, max_retries=1, min_retry_backoff=0.002)
        backend = build_backend(shared, "pw", reactor)
        self.assertIsInstance(backend, SingleRedis)
        self.assertEqual(backend.status().address, "127.0.0.1:6390")
        self.assertEqual(backend.status().status, "connecting")
        guard = backend.guard
        self.assertEqual((guard._read_timeout, guard._write_timeout, guard._max_retries, guard._min_backoff),
                         (0.3, 0.7, 1, 0.002))

    def test_cluster_from_config(self):
        """type 'redis-cluster' builds the cluster backend."""
        from dnsgo.config import Address, SharedCacheConfig
        from dnsgo.redis.cluster import ClusterRedis
        from dnsgo.redis.factory import build_backend

        shared = SharedCacheConfig(type="redis-cluster", cluster_addresses=(Address("127.0.0.1", 7000),))
        self.assertIsInstance(build_backend(shared, "", reactor), ClusterRedis)

    def test_sentinel_from_config(self):
        """type 'redis-sentinel' builds the Sentinel backend."""
        from dnsgo.config import Address, SentinelConfig, SharedCacheConfig
        from dnsgo.redis.factory import build_backend
        from dnsgo.redis.sentinel import SentinelRedis

        shared = SharedCacheConfig(type="redis-sentinel",
                                   sentinel=SentinelConfig(addresses=(Address("127.0.0.1", 26379),)))
        self.assertIsInstance(build_backend(shared, "", reactor), SentinelRedis)
