"""
The shared cache over Redis Cluster: a slot router over txredisapi
connection pools.

txredisapi knows nothing of Redis Cluster, so this module does the
routing itself:

- the slot of a key is CRC16 of the key or its ``{hash tag}`` modulo 16384
  (:mod:`dnsgo.redis.crc16`);
- the slot map comes from ``CLUSTER SLOTS`` asked of any reachable node
  (known nodes first, then the configured startup nodes) at start, every
  ``refresh_interval`` seconds, after a ``MOVED`` reply (that slot is
  repointed at once, the full map follows), after a command fails on a
  connection error or CLUSTERDOWN, when a command finds no node for its
  slot, and every
  ``down_refresh_interval`` seconds while a master in the map is
  unreachable (to see its replica take over); requests are coalesced and at
  most one full refresh runs every ``min_refresh_interval`` seconds;
- ``MOVED`` and ``ASK`` replies are followed, at most ``MAX_REDIRECTS`` per
  command; ``ASK`` sends ``ASKING`` and the command on one connection of the
  target node and leaves the map alone;
- one :class:`~dnsgo.redis.pool.RedisPool` per node (txredisapi's binary-safe
  protocol over connections that reconnect quietly), opened for every master
  as soon as the map names it; a node with no usable connection fails its
  commands at once (the Guard retries connection errors within the
  deadline, by then possibly on a refreshed map) instead of queueing them;
- with ``read_preference`` 'replica' or 'replicaPreferred' each connection
  sends ``READONLY`` before its first command (reconnected ones too) and
  reads go to a replica of the slot's master ('replica': only replicas, a
  slot without a live replica is a miss; 'replicaPreferred': the master when
  no replica is live); writes always go to the master.

Choices:

- ``mget`` groups keys by slot, not by node: an ``MGET`` over keys of two
  slots fails with CROSSSLOT even when one node holds both.  A group of one
  key is a ``GET``; all groups are sent at once (commands for one node are
  pipelined on its connections) and the values are put back in order.  Any
  group failing fails the whole ``mget`` (the caller takes it as misses).
- ``delete_matching`` SCANs every master; each SCAN page and each DEL (keys
  grouped by slot) is one guarded call, so every call is bounded by its
  timeout while the whole sweep may take longer.
- ``publish`` goes to the master of the channel's slot; Redis Cluster
  broadcasts it to all nodes, but the count it returns is only of the
  subscribers on that node.  A subscription (``ResubscribingSubscriber``)
  sits on one node and, after each loss, resubscribes on the next live node.

Client choice, measured with ``bench/redis_cluster_client.py`` on this
machine (2 cores, shared with other test runs, load average about 6), the
3+3 test cluster on 127.0.0.1, 2000 GETs of 100-byte values per client,
five runs; medians, with the range in brackets:

    client                          one GET at a time          32 GETs in flight
                                    p50 ms        p99 ms        GETs/s        CPU us/GET
    this router (RedisPool per      0.070         0.23          17700         48
    node, txredisapi + hiredis)     [0.058-0.073] [0.19-3.96]   [10600-19200] [44-63]
    redis-py 8.1 RedisCluster in    0.161         0.67          5800          159
    deferToThread (10 threads)      [0.132-0.190] [0.30-1.57]   [5200-8600]   [106-171]

redis-py's cluster client is synchronous (or asyncio, which would mean
another reactor); from Twisted it has to run in the reactor's thread pool,
which costs a thread hop per command (about twice the latency and three
times the CPU per GET here), caps concurrency at the pool's size and adds a
dependency.  No Twisted client on PyPI speaks Cluster (txredisapi 1.6 and
its fork txredisapi3 have no MOVED/ASK or slot map, txredis was last
released in 2016).  So the router is kept.
"""
import random
import weakref
from typing import Callable, Iterable

import attrs
import txredisapi
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from dnsgo.redis.backend import BackendStatus, RedisUnavailable
from dnsgo.redis import commands
from dnsgo.redis.crc16 import SLOTS, key_slot
from dnsgo.redis.guard import Guard
from dnsgo.redis.pool import RedisPool
from dnsgo.redis.pubsub import ResubscribingSubscriber

Address = tuple[str, int]

MAX_REDIRECTS = 5
READ_PREFERENCES = ("master", "replica", "replicaPreferred")
CONNECTING, UP, DOWN = "connecting", "up", "down"

log = Logger(namespace="dnsgo.redis")


@attrs.frozen
class Shard:
    """A range of slots, its master and the replicas serving it."""

    start: int
    end: int
    master: Address
    replicas: tuple[Address, ...] = ()


def parse_cluster_slots(reply, asked: Address) -> tuple[Shard, ...]:
    """
    The shards in a ``CLUSTER SLOTS`` reply.  A node listed without a host
    (an empty or unknown endpoint) is on the host of ``asked``, the node
    that answered.
    """
    shards = []
    for entry in reply:
        start, end, master, *replicas = entry
        shards.append(Shard(int(start), int(end), _node_address(master, asked),
                            tuple(_node_address(r, asked) for r in replicas)))
    return tuple(shards)


def _node_address(node, asked: Address) -> Address:
    host, port = node[0], node[1]
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not host or host == "?":
        host = asked[0]
    return host, int(port)


@attrs.frozen
class Redirect:
    """A MOVED or ASK reply: the slot and the node to ask instead."""

    kind: str  # "MOVED" | "ASK"
    slot: int
    target: Address


def parse_redirect(message: str, replier: Address) -> Redirect | None:
    """The redirection in an error message, or None if it is another error."""
    parts = message.split()
    if len(parts) != 3 or parts[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = parts[2].rpartition(":")
    try:
        return Redirect(parts[0], int(parts[1]), (host or replier[0], int(port)))
    except ValueError:
        return None


def _addr(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


# -- one node's connections ----------------------------------------------------


class NodeClient:
    """
    The connections to one cluster node: a :class:`~dnsgo.redis.pool.RedisPool`
    (fails at once while the node is down, reconnects quietly) and its state,
    'connecting', 'up' or 'down'.  With ``readonly`` each connection sends
    ``READONLY`` before its first command, reconnected ones included.
    """

    def __init__(
        self,
        address: Address,
        *,
        password: str = "",
        pool_size: int = 10,
        readonly: bool = False,
        connect_timeout: float = 2.0,
        reactor,
    ) -> None:
        self.address = address
        self.readonly = readonly
        self._pool = RedisPool(address, password=password, size=pool_size, connect_timeout=connect_timeout,
                               reactor=reactor)
        self._pool.start()
        self._readonly_sent: "weakref.WeakSet" = weakref.WeakSet()

    @property
    def state(self) -> str:
        """'up' while a connection is usable, 'down' after connecting failed, else 'connecting'."""
        if self._pool.connected:
            return UP
        return DOWN if self._pool.failing else CONNECTING

    @property
    def last_error(self) -> str | None:
        """Why the node is not usable (never holds the password)."""
        return self._pool.last_error

    def when_settled(self) -> defer.Deferred:
        """Fires once the first connection is up or the first attempt has failed."""
        return self._pool.start()

    def execute(self, *args) -> defer.Deferred:
        """Send one command on one of the connections (``txredisapi.ConnectionError`` at once if none is up)."""
        try:
            return self._connection().execute_command(*args)
        except txredisapi.ConnectionError as e:
            return defer.fail(e)

    def execute_asking(self, *args) -> defer.Deferred:
        """Send ``ASKING`` and then the command, on the same connection."""
        try:
            conn = self._connection()
            conn.execute_command(b"ASKING").addErrback(lambda _: None)
            return conn.execute_command(*args)
        except txredisapi.ConnectionError as e:
            return defer.fail(e)

    def disconnect(self) -> defer.Deferred:
        """Close every connection and stop reconnecting."""
        return self._pool.stop()

    def _connection(self):
        conn = self._pool.connection()
        if self.readonly and conn not in self._readonly_sent:
            self._readonly_sent.add(conn)
            conn.execute_command(b"READONLY").addErrback(
                lambda f: log.warn("shared cache: READONLY refused by {node}: {why}",
                                   node=_addr(self.address), why=f.getErrorMessage()))
        return conn


# -- the backend ----------------------------------------------------------------


class ClusterRedis:
    """
    The :class:`~dnsgo.redis.backend.RedisBackend` for Redis Cluster: routes
    each command by key slot to the node that serves it, through ``guard``.

    ``node_factory`` (tests) makes the client of one node from its address;
    by default a :class:`NodeClient`.
    """

    def __init__(
        self,
        startup_nodes: list[tuple[str, int]],
        *,
        password: str = "",
        pool_size: int = 10,
        read_preference: str = "master",
        guard: Guard,
        reactor,
        refresh_interval: float = 30.0,
        min_refresh_interval: float = 0.5,
        refresh_timeout: float = 2.0,
        down_refresh_interval: float = 1.0,
        node_factory: Callable[[Address], object] | None = None,
    ) -> None:
        if read_preference not in READ_PREFERENCES:
            raise ValueError(f"read_preference must be one of {READ_PREFERENCES}, not {read_preference!r}")
        if not startup_nodes:
            raise ValueError("Redis Cluster needs at least one startup node")
        self._reactor = reactor
        self._startup = [(str(h), int(p)) for h, p in startup_nodes]
        self._password = password
        self._pool_size = pool_size
        self._read_preference = read_preference
        self._guard = guard
        self._refresh_interval = refresh_interval
        self._min_refresh_interval = min_refresh_interval
        self._refresh_timeout = refresh_timeout
        self._down_refresh_interval = down_refresh_interval
        self._node_factory = node_factory or self._make_node

        self._slots: list[Shard | None] = [None] * SLOTS
        self._shards: tuple[Shard, ...] = ()
        self._clients: dict[Address, object] = {}
        self._subscriptions: list[ResubscribingSubscriber] = []

        self._started = False
        self._stopped = False
        self._start_done = False
        self._periodic: task.LoopingCall | None = None
        self._refreshing: defer.Deferred | None = None
        self._refresh_again = False
        self._refresh_call = None
        self._last_refresh: float | None = None
        self._retry_delay = 1.0
        self.last_error: str | None = None

        self.refreshes = 0
        self.moved = 0
        self.asked = 0

    def __repr__(self) -> str:
        return f"<ClusterRedis {self._address_text()} read_preference={self._read_preference}>"

    @property
    def guard(self) -> Guard:
        """The guard every command goes through (its breaker and counters)."""
        return self._guard

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Load the slot map; fires when loaded or after one log line saying why not. Never fails."""
        if self._started:
            return defer.succeed(None)
        self._started = True
        self._periodic = task.LoopingCall(self._request_refresh)
        self._periodic.clock = self._reactor
        self._periodic.start(self._refresh_interval, now=False)
        d = self._refresh_now()

        def connected(loaded: bool):
            if not loaded:
                return loaded
            settling = [self._client(a).when_settled() for a in self._busy_nodes()]
            return defer.gatherResults(settling, consumeErrors=True).addBoth(lambda _: loaded)

        def started(loaded: bool) -> None:
            self._start_done = True
            if not loaded:
                log.warn("shared cache: no Redis Cluster node answered CLUSTER SLOTS ({nodes}): {why}; "
                         "retrying in the background", nodes=self._address_text(), why=self.last_error)

        return d.addCallback(connected).addCallback(started)

    def stop(self) -> defer.Deferred:
        """Stop refreshing, end the subscriptions and close every connection."""
        self._stopped = True
        if self._periodic is not None and self._periodic.running:
            self._periodic.stop()
        if self._refresh_call is not None and self._refresh_call.active():
            self._refresh_call.cancel()
        self._refresh_call = None
        done = [s.stop() for s in self._subscriptions]
        self._subscriptions = []
        clients, self._clients = self._clients, {}
        done += [c.disconnect() for c in clients.values()]
        return defer.gatherResults(done, consumeErrors=True).addBoth(lambda _: None)

    # -- the RedisBackend operations --------------------------------------------

    def get(self, key: bytes) -> defer.Deferred:
        """GET; fires with the value bytes or None."""
        slot = key_slot(key)
        return self._guard.read(lambda: self._execute(slot, commands.get(key), read=True))

    def mget(self, keys: list[bytes]) -> defer.Deferred:
        """The values of ``keys`` in order (None where absent): one GET or MGET per slot, in parallel."""
        if not keys:
            return defer.succeed([])
        return self._guard.read(lambda: self._mget(keys))

    def set(self, key: bytes, value: bytes, ttl: int) -> defer.Deferred:
        """SET key value EX ttl (rounded up to whole seconds, at least 1)."""
        slot = key_slot(key)
        args = commands.set_ex(key, value, ttl)
        return self._guard.write(lambda: self._execute(slot, args, read=False)).addCallback(lambda _: None)

    def delete(self, keys: list[bytes]) -> defer.Deferred:
        """DEL the keys (one DEL per slot); fires with how many existed."""
        if not keys:
            return defer.succeed(0)

        def op():
            ds = [self._execute(slot, commands.delete(group), read=False) for slot, group in _by_slot(keys).items()]
            return _gather(ds).addCallback(lambda counts: sum(int(c) for c in counts))

        return self._guard.write(op)

    @defer.inlineCallbacks
    def delete_matching(self, pattern: bytes):
        """SCAN MATCH ``pattern`` and DEL on every master; fires with the count."""
        if not self._shards:
            yield self._refresh_now()
        masters = self._masters()
        if not masters:
            raise RedisUnavailable("no Redis Cluster slot map")
        counts = yield _gather([self._delete_matching_on(m, pattern) for m in masters])
        return sum(counts)

    def publish(self, channel: bytes, message: bytes) -> defer.Deferred:
        """PUBLISH on the master of the channel's slot; fires with that node's receiver count."""
        slot = key_slot(channel)
        return self._guard.write(lambda: self._execute(slot, commands.publish(channel, message), read=False))

    def raise_term(self, key: bytes, term: int) -> defer.Deferred:
        """Store ``term`` at ``key`` unless a higher one is there (one EVAL on the key's master); the term after."""
        slot = key_slot(key)
        args = commands.raise_term(key, term)
        return self._guard.write(lambda: self._execute(slot, args, read=False)).addCallback(int)

    def subscribe(self, channel: bytes, on_message: Callable[[bytes], None],
                  on_reconnect: Callable[[], None]) -> ResubscribingSubscriber:
        """Subscribe on one node; after a loss, resubscribe on the next live node."""
        sub = ResubscribingSubscriber(self._subscription_address(), channel, on_message, on_reconnect,
                                      password=self._password, reactor=self._reactor)
        self._subscriptions.append(sub)
        sub.start()
        return sub

    @defer.inlineCallbacks
    def info(self):
        """keys and used_memory summed over the masters; keyspace hits and misses over the nodes read from."""
        masters = self._masters()
        if not masters:
            raise RedisUnavailable("no Redis Cluster slot map")
        everyone = list(dict.fromkeys(self._busy_nodes()))
        sizes, memory, stats = yield defer.gatherResults([
            _gather([self._guard.read(lambda m=m: self._client(m).execute(*commands.DBSIZE)) for m in masters]),
            _gather([self._guard.read(lambda m=m: self._client(m).execute(*commands.info_section(b"memory")))
                     for m in masters]),
            _gather([self._guard.read(lambda n=n: self._client(n).execute(*commands.info_section(b"stats")))
                     for n in everyone]),
        ], consumeErrors=True).addErrback(_unwrap)
        memory = [commands.parse_info(m) for m in memory]
        stats = [commands.parse_info(s) for s in stats]
        return {
            "keys": sum(int(s) for s in sizes),
            "used_memory": sum(int(m.get("used_memory", 0)) for m in memory),
            "keyspace_hits": sum(int(s.get("keyspace_hits", 0)) for s in stats),
            "keyspace_misses": sum(int(s.get("keyspace_misses", 0)) for s in stats),
            "masters": len(masters),
        }

    def time(self) -> defer.Deferred:
        """Fires with the clock (TIME) of the first master, in seconds since the epoch."""
        masters = self._masters()
        if not masters:
            return defer.fail(RedisUnavailable("no Redis Cluster slot map"))
        master = masters[0]
        d = self._guard.read(lambda: self._client(master).execute(*commands.TIME))
        return d.addCallback(commands.parse_time)

    def status(self) -> BackendStatus:
        """
        'connected' when a slot map is loaded, every master in it has a
        usable connection and the breaker is not open; 'connecting' while
        that is still under way; else 'unavailable' (no map, a master is
        unreachable, or the breaker is open).
        """
        masters = self._masters()
        breaker = self._guard.breaker.snapshot()
        if breaker.state == "open":
            status = "unavailable"
        elif masters and all(self._state(m) == UP for m in masters):
            status = "connected"
        elif not self._start_done or (masters and all(self._state(m) != DOWN for m in masters)):
            status = "connecting"
        else:
            status = "unavailable"
        return BackendStatus(
            type="redis-cluster",
            address=self._address_text(),
            status=status,
            breaker=breaker,
            master=None,
            last_error=self._guard.last_error or self.last_error,
        )

    def route(self, key: bytes) -> Address | None:
        """The master the slot map names for ``key`` now (None without a map); for the API and tests."""
        shard = self._slots[key_slot(key)]
        return None if shard is None else shard.master

    # -- routing ----------------------------------------------------------------

    def _execute(self, slot: int, args: tuple, *, read: bool) -> defer.Deferred:
        shard = self._slots[slot]
        if shard is None:
            self._request_refresh()
            return defer.fail(txredisapi.ConnectionError(f"no node known for slot {slot}"))
        try:
            address = self._reader(shard) if read else shard.master
        except txredisapi.ConnectionError as e:
            return defer.fail(e)
        return self._send(address, slot, args, 0, False)

    def _reader(self, shard: Shard) -> Address:
        if self._read_preference == "master":
            return shard.master
        up = [r for r in shard.replicas if self._state(r) == UP]
        if up:
            return random.choice(up)
        if self._read_preference == "replicaPreferred":
            return shard.master
        connecting = [r for r in shard.replicas if self._state(r) == CONNECTING]
        if connecting:
            return random.choice(connecting)
        raise txredisapi.ConnectionError(f"no live replica of {_addr(shard.master)}")

    def _send(self, address: Address, slot: int, args: tuple, redirects: int, asking: bool) -> defer.Deferred:
        client = self._client(address)
        d = client.execute_asking(*args) if asking else client.execute(*args)
        return d.addErrback(self._redirected, address, slot, args, redirects)

    def _redirected(self, failure, address: Address, slot: int, args: tuple, redirects: int):
        if failure.check(txredisapi.ConnectionError, ConnectionError, OSError):
            self._request_refresh()
            return failure
        if not failure.check(txredisapi.ResponseError):
            return failure
        message = str(failure.value)
        redirect = parse_redirect(message, address)
        if redirect is None:
            if message.startswith("CLUSTERDOWN"):
                self._request_refresh()
            return failure
        if redirects >= MAX_REDIRECTS:
            return failure
        if redirect.kind == "MOVED":
            self.moved += 1
            self._repoint(redirect.slot, redirect.target)
            return self._send(redirect.target, slot, args, redirects + 1, False)
        self.asked += 1
        return self._send(redirect.target, slot, args, redirects + 1, True)

    def _repoint(self, slot: int, master: Address) -> None:
        """A MOVED reply: the slot has a new master now (its replicas are known after the refresh)."""
        shard = self._slots[slot]
        if shard is None or shard.master != master:
            self._slots[slot] = Shard(slot, slot, master, ())
        self._request_refresh()

    def _mget(self, keys: list[bytes]) -> defer.Deferred:
        groups = _by_slot(keys)
        values: list = [None] * len(keys)
        ds = []
        for slot, group in groups.items():
            if len(group) == 1:
                d = self._execute(slot, commands.get(group[0]), read=True).addCallback(lambda v: [v])
            else:
                d = self._execute(slot, commands.mget(group), read=True)
            ds.append(d.addCallback(lambda got, slot=slot: (slot, got)))
        index = _positions(keys)

        def assemble(results):
            for slot, got in results:
                for key, value in zip(groups[slot], got):
                    for i in index[key]:
                        values[i] = value
            return values

        return _gather(ds).addCallback(assemble)

    @defer.inlineCallbacks
    def _delete_matching_on(self, master: Address, pattern: bytes):
        cursor = 0
        total = 0
        while True:
            reply = yield self._guard.read(lambda c=cursor: self._client(master).execute(*commands.scan(c, pattern)))
            cursor, keys = commands.parse_scan(reply)
            for slot, group in _by_slot(keys).items():
                args = commands.delete(group)
                total += int((yield self._guard.write(lambda s=slot, a=args: self._send(master, s, a, 0, False))))
            if cursor == 0:
                return total

    def _subscription_address(self) -> Callable[[], Address]:
        """Where a subscription connects next: the first live node, then the next one after each loss."""
        last: Address | None = None

        def pick() -> Address:
            nonlocal last
            nodes = self._masters() + self._replicas() + self._startup
            nodes = list(dict.fromkeys(nodes))
            live = [n for n in nodes if self._state(n) != DOWN] or nodes
            if last in live:
                live = live[live.index(last) + 1:] + live[: live.index(last) + 1]
            last = live[0]
            return last

        return pick

    # -- nodes ----------------------------------------------------------------

    def _make_node(self, address: Address) -> NodeClient:
        return NodeClient(address, password=self._password, pool_size=self._pool_size,
                          readonly=self._read_preference != "master", reactor=self._reactor)

    def _client(self, address: Address):
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = self._node_factory(address)
        return client

    def _state(self, address: Address) -> str:
        client = self._clients.get(address)
        return CONNECTING if client is None else client.state

    def _masters(self) -> list[Address]:
        return list(dict.fromkeys(s.master for s in self._shards))

    def _replicas(self) -> list[Address]:
        return list(dict.fromkeys(r for s in self._shards for r in s.replicas))

    def _address_text(self) -> str:
        return ",".join(_addr(a) for a in self._startup)

    # -- the slot map -----------------------------------------------------------

    def _request_refresh(self) -> None:
        """Refresh the map soon: now, or when the last refresh is ``min_refresh_interval`` old."""
        if self._stopped or not self._started:
            return
        if self._refreshing is not None:
            self._refresh_again = True
            return
        if self._refresh_call is not None and self._refresh_call.active():
            return
        wait = 0.0
        if self._last_refresh is not None:
            wait = self._last_refresh + self._min_refresh_interval - self._reactor.seconds()
        if wait > 0:
            self._refresh_call = self._reactor.callLater(wait, self._refresh_now)
        else:
            self._refresh_now()

    def _refresh_now(self) -> defer.Deferred:
        """Load the map now; fires with whether it was loaded (never fails)."""
        if self._refreshing is not None:
            return _follow(self._refreshing)
        self._refresh_call = None
        self._refreshing = d = self._load_map()

        def finished(loaded: bool) -> bool:
            self._refreshing = None
            self._last_refresh = self._reactor.seconds()
            self.refreshes += 1
            if self._stopped:
                return loaded
            if loaded:
                self._retry_delay = 1.0
            if not self._shards:
                # nothing to route with: try again soon, backing off
                self._refresh_later(self._retry_delay)
                self._retry_delay = min(self._retry_delay * 2, self._refresh_interval)
            elif any(self._state(m) == DOWN for m in self._masters()):
                # a master is unreachable: watch for its replica taking over
                self._refresh_later(self._down_refresh_interval)
            if self._refresh_again:
                self._refresh_again = False
                self._request_refresh()
            return loaded

        def broken(failure) -> bool:
            log.failure("shared cache: Redis Cluster map refresh failed", failure)
            return finished(False)

        d.addCallbacks(finished, broken)
        return _follow(d)

    def _refresh_later(self, delay: float) -> None:
        if self._refresh_call is None or not self._refresh_call.active():
            self._refresh_call = self._reactor.callLater(delay, self._refresh_now)

    @defer.inlineCallbacks
    def _load_map(self):
        errors = []
        for address in self._refresh_candidates():
            if self._stopped:
                return False
            try:
                client = self._client(address)
                asked = client.when_settled().addCallback(lambda _, c=client: c.execute(b"CLUSTER", b"SLOTS"))
                reply = yield _within(asked, self._refresh_timeout, self._reactor)
                shards = parse_cluster_slots(reply, address)
            except Exception as e:
                errors.append(f"{_addr(address)}: {_describe(e)}")
                continue
            if self._stopped:
                return False
            if not shards:
                errors.append(f"{_addr(address)}: no slots assigned")
                continue
            self._apply(shards, address)
            self.last_error = None
            return True
        self.last_error = "; ".join(errors)[:500] or "no node to ask"
        return False

    def _refresh_candidates(self) -> list[Address]:
        """Nodes to ask for the map: live known nodes (masters first), then the startup nodes, down ones last."""
        masters, replicas = self._masters(), self._replicas()
        random.shuffle(masters)
        random.shuffle(replicas)
        nodes = list(dict.fromkeys(masters + replicas + self._startup))
        order = {UP: 0, CONNECTING: 1, DOWN: 2}
        return sorted(nodes, key=lambda n: order[self._state(n)])

    def _apply(self, shards: tuple[Shard, ...], source: Address) -> None:
        slots: list[Shard | None] = [None] * SLOTS
        for shard in shards:
            for slot in range(shard.start, shard.end + 1):
                slots[slot] = shard
        changed = _topology(shards) != _topology(self._shards)
        self._slots = slots
        self._shards = shards
        if changed:
            covered = sum(s.end - s.start + 1 for s in shards)
            log.info("shared cache: Redis Cluster map from {source}: masters {masters}, replicas {replicas}, "
                     "{covered} of {total} slots", source=_addr(source),
                     masters=",".join(_addr(m) for m in self._masters()) or "-",
                     replicas=",".join(_addr(r) for r in self._replicas()) or "-", covered=covered, total=SLOTS)
        keep = set(self._masters()) | set(self._replicas())
        for address in [a for a in self._clients if a not in keep]:
            self._clients.pop(address).disconnect()
        # connect ahead of the first command to each node that will get some
        for address in self._busy_nodes():
            self._client(address)

    def _busy_nodes(self) -> list[Address]:
        """The nodes commands go to: the masters, and the replicas when reads go there."""
        return self._masters() + (self._replicas() if self._read_preference != "master" else [])


# -- helpers --------------------------------------------------------------------


def _by_slot(keys: Iterable[bytes]) -> dict[int, list[bytes]]:
    """The distinct keys grouped by slot, in first-seen order."""
    groups: dict[int, list[bytes]] = {}
    for key in dict.fromkeys(keys):
        groups.setdefault(key_slot(key), []).append(key)
    return groups


def _positions(keys: list[bytes]) -> dict[bytes, list[int]]:
    index: dict[bytes, list[int]] = {}
    for i, key in enumerate(keys):
        index.setdefault(key, []).append(i)
    return index


def _topology(shards: Iterable[Shard]) -> set:
    return {(s.start, s.end, s.master, frozenset(s.replicas)) for s in shards}


def _gather(ds: list[defer.Deferred]) -> defer.Deferred:
    """gatherResults that fails with the first failure itself (so the Guard can tell a connection error)."""
    return defer.gatherResults(ds, consumeErrors=True).addErrback(_unwrap)


def _unwrap(failure):
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure


def _follow(d: defer.Deferred) -> defer.Deferred:
    """A Deferred that fires with ``d``'s result without taking it from ``d``'s other listeners."""
    out = defer.Deferred()

    def relay(result):
        _fire(out, result)
        return result

    d.addBoth(relay)
    return out


def _within(d: defer.Deferred, timeout: float, reactor) -> defer.Deferred:
    """``d``'s result, or a TimeoutError after ``timeout`` s (``d`` is left alone, never cancelled)."""
    out = defer.Deferred()

    def expire():
        if not out.called:
            out.errback(txredisapi.TimeoutError(f"no reply within {timeout:g} s"))

    timer = reactor.callLater(timeout, expire)

    def relay(result):
        if timer.active():
            timer.cancel()
        if not out.called:
            _fire(out, result)
        return None

    d.addBoth(relay)
    return out


def _fire(d: defer.Deferred, result) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:200]
