"""
The shared cache over Redis Sentinel: the master (and, by read preference,
a replica) that the sentinels name, followed through failovers.

txredisapi's own ``Sentinel`` is not used.  With ``charset=None`` (needed for
binary values) its ``master_for`` never connects, because its ROLE check
compares ``b"master"`` with ``"master"``; it only notices a failover when its
connections drop; its replica parser breaks on bytes keys; and it discovers
with the global reactor and a fixed 10 s timeout.  So this module keeps the
master address itself and gives each server a plain
:class:`~dnsgo.redis.pool.RedisPool`:

* discovery asks every sentinel ``SENTINEL get-master-addr-by-name`` at
  once, tries the addresses by votes (the current master first on a tie),
  and takes the first one whose ``ROLE`` says master -- decoding the bytes
  reply, which is the workaround for txredisapi's check (:func:`role_name`).
  The probe also proves the password, so a wrong one is found (and logged
  once) before any pool exists;
* a :class:`~dnsgo.redis.pubsub.ResubscribingSubscriber` on every sentinel
  listens to ``+switch-master``; the message starts a pool to the new
  master at once and stops the old one (nothing waits for connections to
  drop), moves pub/sub subscriptions over, and closes the breaker;
* discovery runs again every ``refresh_interval``, when a sentinel
  subscription comes back (a message may have been missed), after
  ``recheck_after`` consecutive failed operations or a READONLY reply (at
  most once per ``recheck_interval``), and with back-off while no master is
  usable.  A discovery that overlapped a ``+switch-master`` cannot move the
  master back.  ``start`` never fails.
"""
import random
from collections import Counter
from typing import Callable

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from dnsgo.redis.backend import BackendStatus, RedisUnavailable
from dnsgo.redis.guard import Guard
from dnsgo.redis.pool import RedisPool, describe_failure, open_connection
from dnsgo.redis.pubsub import ResubscribingSubscriber
from dnsgo.redis.commands import NodeCommands

HostPort = tuple[str, int]

READ_PREFERENCES = ("master", "replica", "replicaPreferred")
_BAD_REPLICA_FLAGS = frozenset({"s_down", "o_down", "disconnected"})


def address_text(address: HostPort) -> str:
    """``host:port`` for logs and the status."""
    return f"{address[0]}:{address[1]}"


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def role_name(reply) -> str:
    """
    The role a ``ROLE`` reply names (``master``, ``slave``, ``sentinel``),
    whether its elements came back as bytes (``charset=None``) or str.
    txredisapi compares the raw element with ``"master"``, which never
    matches bytes; this is the comparison done right.
    """
    if not isinstance(reply, (list, tuple)) or not reply:
        return ""
    return _text(reply[0])


@attrs.frozen
class SwitchMaster:
    """A ``+switch-master`` message: ``<name> <old ip> <old port> <new ip> <new port>``."""

    name: str
    old: HostPort
    new: HostPort

    @classmethod
    def parse(cls, message: bytes) -> "SwitchMaster | None":
        """The parsed message, or None when it is not one."""
        parts = _text(message).split()
        if len(parts) != 5 or not parts[2].isdigit() or not parts[4].isdigit():
            return None
        return cls(parts[0], (parts[1], int(parts[2])), (parts[3], int(parts[4])))


def usable_replicas(reply, master: HostPort | None = None) -> tuple[HostPort, ...]:
    """
    The replicas in a ``SENTINEL replicas`` reply that can serve reads: not
    flagged s_down, o_down or disconnected, and not the master itself.
    """
    found = []
    for entry in reply or ():
        fields = {_text(k): _text(v) for k, v in zip(entry[::2], entry[1::2])}
        flags = set(fields.get("flags", "").split(","))
        if flags & _BAD_REPLICA_FLAGS or "ip" not in fields or not fields.get("port", "").isdigit():
            continue
        address = (fields["ip"], int(fields["port"]))
        if address != master:
            found.append(address)
    return tuple(found)


def describe_error(error) -> str:
    """A short reason for a log line or the status; never holds a password."""
    value = getattr(error, "value", error)
    if isinstance(value, (defer.TimeoutError, defer.CancelledError)):
        return "no answer in time"
    return describe_failure(value)


def _is_auth_problem(reason: str) -> bool:
    return "password" in reason


class TxRedisConnector:
    """
    The network edge of :class:`SentinelRedis`: one-command conversations
    (sentinel queries, the ROLE probe), pools and subscriptions.  Tests
    replace it with a fake.
    """

    def __init__(self, *, password: str = "", database: int = 0, pool_size: int = 10,
                 sentinel_password: str = "", timeout: float = 1.0, reactor) -> None:
        self._reactor = reactor
        self._password = password
        self._database = database
        self._pool_size = pool_size
        self._sentinel_password = sentinel_password
        self._timeout = timeout

    def ask_sentinel(self, address: HostPort, *command) -> defer.Deferred:
        """Run one command on a sentinel over a short-lived connection."""
        return self._ask(address, self._sentinel_password, command)

    def ask_server(self, address: HostPort, *command) -> defer.Deferred:
        """AUTH (when configured) and run one command on a Redis server over a short-lived connection."""
        return self._ask(address, self._password, command)

    @defer.inlineCallbacks
    def _ask(self, address: HostPort, password: str, command):
        conn = yield open_connection(address, password=password, timeout=self._timeout, reactor=self._reactor)
        watchdog = self._reactor.callLater(self._timeout, conn.transport.abortConnection)
        try:
            return (yield conn.execute_command(*command))
        finally:
            if watchdog.active():
                watchdog.cancel()
            conn.transport.abortConnection()

    def pool(self, address: HostPort) -> RedisPool:
        """A (not yet started) pool of connections to ``address``."""
        return RedisPool(address, password=self._password, database=self._database, size=self._pool_size,
                         connect_timeout=self._timeout, reactor=self._reactor)

    def subscriber(self, address, channel: bytes, on_message, on_reconnect, *, sentinel: bool):
        """A (not yet started) :class:`ResubscribingSubscriber` to a sentinel, or to a server."""
        return ResubscribingSubscriber(
            address, channel, on_message, on_reconnect,
            password=self._sentinel_password if sentinel else self._password,
            connect_timeout=self._timeout, reactor=self._reactor)


@attrs.frozen
class Topology:
    """What one discovery found: the master, and the usable replicas (None when not asked or unknown)."""

    master: HostPort
    replicas: tuple[HostPort, ...] | None


class NoMaster(Exception):
    """No sentinel named a master that answered ROLE with ``master``."""


class _MasterSubscription:
    """A subscription handed out by :meth:`SentinelRedis.subscribe`."""

    def __init__(self, owner: "SentinelRedis", subscriber) -> None:
        self._owner = owner
        self.subscriber = subscriber

    def stop(self) -> defer.Deferred:
        """Unsubscribe for good."""
        self._owner._subscriptions.discard(self)
        return self.subscriber.stop()


class SentinelRedis(NodeCommands):
    """
    A :class:`~dnsgo.redis.backend.RedisBackend` over Redis Sentinel.

    Writes, pub/sub and ``delete_matching``/``info`` go to the master.
    Reads go by ``read_preference``: ``master``; ``replica`` (a usable
    replica only: without one, reads fail at once as misses, without
    touching the breaker); ``replicaPreferred`` (a replica when one is
    usable, else the master).  Every Redis call goes through ``guard``.

    Beyond what the factory passes: ``sentinel_password`` (for sentinels
    with ``requirepass``), ``connect_timeout`` (each connection attempt and
    one-command conversation), ``refresh_interval`` (periodic discovery),
    ``recheck_after`` / ``recheck_interval`` (discovery after that many
    failed operations in a row, at most that often) and ``connector`` (the
    network edge, replaced in tests).
    """

    log = Logger(namespace="dnsgo.redis")

    def __init__(
        self,
        master_name: str,
        sentinels: list[tuple[str, int]],
        *,
        password: str = "",
        database: int = 0,
        pool_size: int = 10,
        read_preference: str = "master",
        guard: Guard,
        reactor,
        sentinel_password: str = "",
        connect_timeout: float = 1.0,
        refresh_interval: float = 10.0,
        recheck_interval: float = 1.0,
        recheck_after: int = 3,
        connector=None,
    ) -> None:
        if read_preference not in READ_PREFERENCES:
            raise ValueError(f"read_preference must be one of {', '.join(READ_PREFERENCES)}")
        if not sentinels:
            raise ValueError("at least one sentinel address is needed")
        self._reactor = reactor
        self._name = master_name
        self._sentinels = [(str(h), int(p)) for h, p in sentinels]
        self._read_preference = read_preference
        self.guard = guard
        self._refresh_interval = refresh_interval
        self._recheck_interval = recheck_interval
        self._recheck_after = recheck_after
        self._connector = connector or TxRedisConnector(
            password=password, database=database, pool_size=pool_size,
            sentinel_password=sentinel_password, timeout=connect_timeout, reactor=reactor)
        self._random = random.Random()

        self._running = False
        self._master: HostPort | None = None
        self._master_pool: RedisPool | None = None
        self._replica: HostPort | None = None
        self._replica_pool: RedisPool | None = None
        self._sentinel_subscribers: list = []
        self._subscriptions: set[_MasterSubscription] = set()
        self._master_waiters: list[defer.Deferred] = []
        self._checking: defer.Deferred | None = None
        self._check_waiters: list[defer.Deferred] = []
        self._next_check = None
        self._last_check: float | None = None
        self._retry_delay = 0.5
        self._failures = 0
        self._discovery_error: str | None = None
        self._logged_problem: str | None = None
        #: how often the master changed, by what noticed it ("+switch-master", "operations failing", ...)
        self.master_changes: Counter = Counter()
        #: +switch-master messages received for this master name
        self.switch_messages = 0
        #: discoveries run (start, refresh, retry, recheck)
        self.checks = 0

    def __repr__(self) -> str:
        return f"<SentinelRedis {self._name} via {','.join(address_text(a) for a in self._sentinels)}>"

    # -- RedisBackend: lifecycle and status ---------------------------------

    def start(self) -> defer.Deferred:
        """
        Subscribe to ``+switch-master`` on every sentinel and find the master;
        fires once connected to it, or after one log line saying why not.
        Never fails: discovery goes on in the background.
        """
        if self._running:
            return defer.succeed(None)
        self._running = True
        for address in self._sentinels:
            sub = self._connector.subscriber(
                address, b"+switch-master",
                lambda message, address=address: self._switch_message(address, message),
                lambda: self.check("sentinel subscription restored"),
                sentinel=True)
            self._sentinel_subscribers.append(sub)
            sub.start()
        d = self.check("start")
        d.addCallback(lambda _: self._master_pool.start() if self._master_pool is not None else None)
        return d.addBoth(lambda _: None)

    def stop(self) -> defer.Deferred:
        """Stop following the sentinels and close every connection."""
        self._running = False
        self._cancel_next_check()
        if self._checking is not None:
            self._checking.cancel()
        stopping = [sub.stop() for sub in self._sentinel_subscribers]
        stopping += [sub.stop() for sub in list(self._subscriptions)]
        stopping += [pool.stop() for pool in (self._master_pool, self._replica_pool) if pool is not None]
        self._sentinel_subscribers = []
        self._master_pool = self._replica_pool = None
        self._master = self._replica = None
        waiters, self._master_waiters = self._master_waiters, []
        for d in waiters:
            d.errback(RedisUnavailable("stopped"))
        return defer.gatherResults(stopping, consumeErrors=True).addBoth(lambda _: None)

    def status(self) -> BackendStatus:
        """Where the backend stands (never the password)."""
        breaker = self.guard.breaker.snapshot()
        pool = self._master_pool
        if pool is not None and pool.connected and breaker.state != "open":
            state = "connected"
        elif self._discovery_error or (pool is not None and pool.failing) or breaker.state == "open":
            state = "unavailable"
        else:
            state = "connecting"
        return BackendStatus(
            type="redis-sentinel",
            address=",".join(address_text(a) for a in self._sentinels),
            status=state,
            breaker=breaker,
            master=address_text(self._master) if self._master else None,
            last_error=self._discovery_error or (pool.last_error if pool else None) or self.guard.last_error,
        )

    @property
    def replica(self) -> str | None:
        """``host:port`` of the replica reads go to now, if any."""
        return address_text(self._replica) if self._replica else None

    @property
    def replica_connected(self) -> bool:
        """Whether the replica's pool has a connection now (reads go there only then)."""
        return self._replica_pool is not None and self._replica_pool.connected

    # -- RedisBackend: operations -------------------------------------------

    # dnsgo.redis.commands.NodeCommands over these: reads go to the read
    # target (read_preference), writes and INFO/DBSIZE to the master.

    def _read(self, args) -> defer.Deferred:
        return self._read_on(lambda conn: conn.execute_command(*args))

    def _write(self, args) -> defer.Deferred:
        return self._on_master(self.guard.write, lambda conn: conn.execute_command(*args))

    def _admin(self, args) -> defer.Deferred:
        return self._on_master(self.guard.read, lambda conn: conn.execute_command(*args))

    def subscribe(self, channel: bytes, on_message: Callable[[bytes], None],
                  on_reconnect: Callable[[], None]) -> "_MasterSubscription":
        """
        Subscribe on the current master.  After a failover the subscription
        moves to the new master and ``on_reconnect`` is called (messages may
        have been missed), as after any other reconnection.
        """
        sub = self._connector.subscriber(self._master_address, channel, on_message, on_reconnect, sentinel=False)
        handle = _MasterSubscription(self, sub)
        self._subscriptions.add(handle)
        sub.start()
        return handle

    def _master_address(self):
        if self._master is not None:
            return self._master
        d = defer.Deferred(lambda d: self._master_waiters.remove(d) if d in self._master_waiters else None)
        self._master_waiters.append(d)
        return d

    def _read_on(self, command) -> defer.Deferred:
        if self._read_preference == "replica" and self._master is not None and self._replica_pool is None:
            # no target at all: a miss at once, not a Redis failure for the breaker
            return defer.fail(RedisUnavailable("no usable replica"))
        return self._guarded(self.guard.read, self._reader, command)

    def _reader(self) -> RedisPool | None:
        if self._read_preference != "master" and self._replica_pool is not None:
            return self._replica_pool
        if self._read_preference == "replica":
            return None
        return self._master_pool

    def _on_master(self, run, command) -> defer.Deferred:
        return self._guarded(run, lambda: self._master_pool, command)

    def _guarded(self, run, pick, command) -> defer.Deferred:
        def op():
            pool = pick()  # at call time: a retry after a switch goes to the new master
            if pool is None:
                raise RedisUnavailable("no master known yet" if self._master is None else "no usable replica")
            return command(pool.connection())

        return run(op).addCallbacks(self._op_succeeded, self._op_failed)

    def _op_succeeded(self, result):
        self._failures = 0
        return result

    def _op_failed(self, failure):
        self._failures += 1
        if "READONLY" in str(failure.value) or self._failures >= self._recheck_after:
            self._recheck_soon()
        return failure

    # -- following the master -----------------------------------------------

    def check(self, reason: str) -> defer.Deferred:
        """
        Ask the sentinels for the master (and replicas) now, unless a check is
        already running; fires (with None) when that check is over, never fails.
        """
        waiter = defer.Deferred()
        self._check_waiters.append(waiter)
        if not self._running:
            self._check_over(None)
        elif self._checking is None:
            self._cancel_next_check()
            self._last_check = self._reactor.seconds()
            self.checks += 1
            self._checking = self._discover()
            self._checking.addCallbacks(self._discovered, self._discovery_failed,
                                        callbackArgs=(reason, self.switch_messages))
            self._checking.addBoth(self._check_over)
        return waiter

    def _check_over(self, _) -> None:
        self._checking = None
        waiters, self._check_waiters = self._check_waiters, []
        for d in waiters:
            d.callback(None)

    def _recheck_soon(self) -> None:
        if not self._running or self._checking is not None:
            return
        if self._last_check is not None and self._reactor.seconds() - self._last_check < self._recheck_interval:
            return
        self.check("operations failing")

    @defer.inlineCallbacks
    def _discover(self):
        answers = yield defer.gatherResults([self._ask_master_address(s) for s in self._sentinels])
        if not self._running:
            raise defer.CancelledError()
        votes: Counter = Counter()
        voter: dict[HostPort, HostPort] = {}
        problems = []
        for sentinel, address, problem in answers:
            if address is None:
                problems.append(f"sentinel {address_text(sentinel)}: {problem}")
                continue
            votes[address] += 1
            voter.setdefault(address, sentinel)
        # most votes first; on a tie the current master, then sentinel order
        order = sorted(votes, key=lambda a: (-votes[a], a != self._master, self._sentinels.index(voter[a])))
        for address in order:
            try:
                role = role_name((yield self._connector.ask_server(address, "ROLE")))
            except Exception as e:
                if not self._running:  # stop() cancelled this discovery: ask no one else
                    raise defer.CancelledError() from e
                reason = describe_error(e)
                problems.append(f"master {address_text(address)}: {reason}")
                if _is_auth_problem(reason):
                    break  # the same password everywhere: no use trying the others
                continue
            if role != "master":
                problems.append(f"{address_text(address)} named by the sentinels is a {role or 'non-master'}")
                continue
            replicas = None
            if self._read_preference != "master":
                replicas = yield self._ask_replicas(voter[address], address)
            return Topology(address, replicas)
        raise NoMaster("; ".join(problems) or "no sentinel answered")

    def _ask_master_address(self, sentinel: HostPort) -> defer.Deferred:
        """Fires with (sentinel, address or None, problem or None); never fails."""
        d = defer.maybeDeferred(self._connector.ask_sentinel, sentinel,
                                "SENTINEL", "get-master-addr-by-name", self._name)

        def answered(reply):
            if not reply or len(reply) < 2:
                return sentinel, None, f"does not monitor a master named '{self._name}'"
            return sentinel, (_text(reply[0]), int(_text(reply[1]))), None

        return d.addCallbacks(answered, lambda f: (sentinel, None, describe_error(f)))

    def _ask_replicas(self, sentinel: HostPort, master: HostPort) -> defer.Deferred:
        """Fires with the usable replicas, or None when the sentinel did not answer."""
        d = defer.maybeDeferred(self._connector.ask_sentinel, sentinel, "SENTINEL", "replicas", self._name)
        return d.addCallbacks(lambda reply: usable_replicas(reply, master), lambda _: None)

    def _discovered(self, topology: Topology, reason: str, switch_messages: int) -> None:
        if not self._running:  # finished after stop(): open nothing
            return
        if self.switch_messages != switch_messages and topology.master != self._master:
            # a +switch-master arrived while this discovery ran: it may have seen the old view
            self._schedule_check(self._refresh_interval, "refresh")
            return
        self._discovery_error = None
        self._retry_delay = 0.5
        if self._logged_problem is not None:
            self._logged_problem = None
            self.log.info("shared cache: redis-sentinel master '{name}' is usable again at {master}",
                          name=self._name, master=address_text(topology.master))
        self._adopt(topology.master, reason)
        if topology.replicas is not None:
            self._use_replicas(topology.replicas)
        self._schedule_check(self._refresh_interval, "refresh")

    def _discovery_failed(self, failure) -> None:
        if not self._running or failure.check(defer.CancelledError):
            return
        if failure.check(NoMaster):
            why = str(failure.value)
        else:
            self.log.failure("shared cache: redis-sentinel discovery failed", failure)
            why = describe_error(failure)
        self._discovery_error = why
        kind = "auth" if _is_auth_problem(why) else "unreachable"
        if self._logged_problem != kind:  # one line, and another only when the kind of trouble changes
            self._logged_problem = kind
            self.log.warn(
                "shared cache: redis-sentinel finds no usable master '{name}' via sentinels {sentinels}: "
                "{why}; retrying in the background",
                name=self._name, sentinels=",".join(address_text(a) for a in self._sentinels), why=why)
        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._refresh_interval)
        self._schedule_check(delay, "retry")

    def _schedule_check(self, delay: float, reason: str) -> None:
        self._cancel_next_check()
        if self._running:
            self._next_check = self._reactor.callLater(delay, self.check, reason)

    def _cancel_next_check(self) -> None:
        if self._next_check is not None and self._next_check.active():
            self._next_check.cancel()
        self._next_check = None

    def _switch_message(self, sentinel: HostPort, message: bytes) -> None:
        switch = SwitchMaster.parse(message)
        if switch is None or switch.name != self._name or not self._running:
            return
        self.switch_messages += 1
        if not self._adopt(switch.new, "+switch-master"):
            return
        # The sentinels agree within a second or two; until then one of them
        # may still name the old master, so the next discovery waits a full
        # refresh interval rather than racing them.
        self._discovery_error = self._logged_problem = None
        self._retry_delay = 0.5
        if self._checking is None:
            self._schedule_check(self._refresh_interval, "refresh")
        if self._read_preference != "master":
            # that sentinel has just published the new configuration: its replica list is current
            self._ask_replicas(sentinel, switch.new).addCallback(
                lambda replicas: self._use_replicas(replicas) if replicas is not None and self._running else None)

    def _adopt(self, master: HostPort, reason: str) -> bool:
        """Point the master pool at ``master``; True when it changed."""
        if master == self._master and self._master_pool is not None:
            return False
        old, old_pool = self._master, self._master_pool
        self._master = master
        self._master_pool = self._connector.pool(master)
        self._master_pool.start()
        self._failures = 0
        if old is None:
            self.log.info("shared cache: redis-sentinel master '{name}' is {master}",
                          name=self._name, master=address_text(master))
        else:
            self.master_changes[reason] += 1
            self.log.warn("shared cache: redis-sentinel master '{name}' moved from {old} to {new} "
                          "(noticed by {reason})", name=self._name, old=address_text(old),
                          new=address_text(master), reason=reason)
        # a new master owes nothing to the failures of the old one (or of none): try it at once
        self.guard.breaker.succeeded()
        if old_pool is not None:
            old_pool.stop()
        if self._replica == master:  # the promoted replica: reads follow the next replica list
            self._use_replicas(())
        waiters, self._master_waiters = self._master_waiters, []
        for d in waiters:
            d.callback(master)
        for handle in list(self._subscriptions):
            handle.subscriber.reconnect()
        return True

    def _use_replicas(self, replicas: tuple[HostPort, ...]) -> None:
        if self._replica in replicas:
            return
        old_pool = self._replica_pool
        if replicas:
            self._replica = self._random.choice(list(replicas))
            self._replica_pool = self._connector.pool(self._replica)
            self._replica_pool.start()
            self.log.info("shared cache: redis-sentinel reads from replica {replica}",
                          replica=address_text(self._replica))
        else:
            if self._replica is not None:
                self.log.info("shared cache: redis-sentinel has no usable replica now ({then})",
                              then="reads miss" if self._read_preference == "replica" else "reads go to the master")
            self._replica = self._replica_pool = None
        if old_pool is not None:
            old_pool.stop()
