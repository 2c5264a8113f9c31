"""
An in-memory stand-in for a :class:`~dnsgo.redis.backend.RedisBackend`,
for unit tests driven by a ``Clock``.

A :class:`FakeRedisServer` is the Redis server: keys, values, expiry times
on the clock, pub/sub channels.  Each :class:`FakeRedis` is one worker's
backend connected to it, with switches a test flips:

* ``fail``: every operation fails at once with ``RedisUnavailable``;
* ``hang``: every operation's Deferred never fires (as txredisapi does
  while Redis is down); with a ``guard`` the guard's deadline ends it, as
  in the real backends;
* ``paused``: operations wait in ``pending`` until :meth:`FakeRedis.release`
  answers them, to see what is in flight.

``calls`` records every operation as ``(name, args)``.
"""
import re

from twisted.internet import defer

from dnsgo.redis.backend import BackendStatus, BreakerState, RedisUnavailable


def glob_to_regex(pattern: bytes) -> "re.Pattern[bytes]":
    """A regex matching what Redis's glob ``pattern`` (SCAN MATCH) matches: ``* ? [..]`` and ``\\`` escapes."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i : i + 1]
        if c == b"\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1 : i + 2]))
            i += 2
            continue
        if c == b"*":
            out.append(b".*")
        elif c == b"?":
            out.append(b".")
        elif c == b"[":
            end = pattern.find(b"]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith(b"^"):
                    body = b"^" + re.escape(body[1:])
                else:
                    body = re.escape(body)
                out.append(b"[" + body.replace(b"\\-", b"-") + b"]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile(b"".join(out) + b"\\Z", re.DOTALL)


class FakeRedisServer:
    """The shared state: values with their expiry time on ``clock``, and pub/sub."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.data: dict[bytes, tuple[bytes, float]] = {}
        self.channels: dict[bytes, list] = {}

    def get(self, key: bytes):
        """The value of ``key``, or None if absent or expired (then removed)."""
        item = self.data.get(key)
        if item is None:
            return None
        if self.clock.seconds() >= item[1]:
            del self.data[key]
            return None
        return item[0]

    def set(self, key: bytes, value: bytes, ttl: int) -> None:
        """SET key value EX ttl."""
        if not isinstance(value, bytes) or ttl <= 0:
            raise ValueError("bad SET")
        self.data[key] = (value, self.clock.seconds() + ttl)

    def ttl(self, key: bytes) -> float | None:
        """The seconds ``key`` has left, or None if absent."""
        if self.get(key) is None:
            return None
        return self.data[key][1] - self.clock.seconds()

    def live_keys(self) -> list[bytes]:
        """Every key that has not expired."""
        return [k for k in list(self.data) if self.get(k) is not None]


class _Subscription:
    def __init__(self, server: FakeRedisServer, channel: bytes, on_message) -> None:
        self.server, self.channel, self.on_message = server, channel, on_message

    def stop(self) -> defer.Deferred:
        subs = self.server.channels.get(self.channel, [])
        if self in subs:
            subs.remove(self)
        return defer.succeed(None)


class FakeRedis:
    """One backend connection to a :class:`FakeRedisServer` (see the module docstring)."""

    def __init__(self, server: FakeRedisServer, *, guard=None) -> None:
        self.server = server
        self.guard = guard
        self.fail = False
        self.hang = False
        self.paused = False
        self.pending: list[tuple[defer.Deferred, object]] = []
        self.hung: list[defer.Deferred] = []
        self.calls: list[tuple[str, tuple]] = []
        self.started = False

    # -- switches --------------------------------------------------------

    def release(self, count: int | None = None) -> int:
        """Answer up to ``count`` (default all) paused operations, oldest first; returns how many."""
        batch = self.pending if count is None else self.pending[:count]
        self.pending = self.pending[len(batch) :]
        for d, thunk in batch:
            try:
                d.callback(thunk())
            except Exception as e:
                d.errback(e)
        return len(batch)

    def _op(self, name: str, args: tuple, thunk, write: bool = False) -> defer.Deferred:
        self.calls.append((name, args))

        def call():
            if self.fail:
                return defer.fail(RedisUnavailable("fake Redis failing"))
            if self.hang:
                d = defer.Deferred()
                self.hung.append(d)
                return d
            if self.paused:
                d = defer.Deferred()
                self.pending.append((d, thunk))
                return d
            return defer.maybeDeferred(thunk)

        if self.guard is None:
            return call()
        return self.guard.write(call) if write else self.guard.read(call)

    # -- the RedisBackend protocol ---------------------------------------

    def start(self) -> defer.Deferred:
        """Nothing to connect."""
        self.started = True
        return defer.succeed(None)

    def stop(self) -> defer.Deferred:
        """Nothing to disconnect."""
        self.started = False
        return defer.succeed(None)

    def get(self, key: bytes) -> defer.Deferred:
        """GET."""
        return self._op("get", (key,), lambda: self.server.get(key))

    def mget(self, keys: list[bytes]) -> defer.Deferred:
        """MGET."""
        keys = list(keys)
        return self._op("mget", (keys,), lambda: [self.server.get(k) for k in keys])

    def set(self, key: bytes, value: bytes, ttl: int) -> defer.Deferred:
        """SET key value EX ttl."""
        return self._op("set", (key, value, ttl), lambda: self.server.set(key, value, ttl), write=True)

    def delete(self, keys: list[bytes]) -> defer.Deferred:
        """DEL."""
        keys = list(keys)

        def run():
            found = [k for k in keys if self.server.get(k) is not None]
            for k in found:
                del self.server.data[k]
            return len(found)

        return self._op("delete", (keys,), run, write=True)

    def delete_matching(self, pattern: bytes) -> defer.Deferred:
        """SCAN MATCH pattern + DEL."""
        regex = glob_to_regex(pattern)

        def run():
            doomed = [k for k in self.server.live_keys() if regex.match(k)]
            for k in doomed:
                del self.server.data[k]
            return len(doomed)

        return self._op("delete_matching", (pattern,), run, write=True)

    def publish(self, channel: bytes, message: bytes) -> defer.Deferred:
        """PUBLISH."""

        def run():
            subs = list(self.server.channels.get(channel, []))
            for s in subs:
                s.on_message(message)
            return len(subs)

        return self._op("publish", (channel, message), run, write=True)

    def subscribe(self, channel: bytes, on_message, on_reconnect):
        """SUBSCRIBE (never loses the connection)."""
        sub = _Subscription(self.server, channel, on_message)
        self.server.channels.setdefault(channel, []).append(sub)
        return sub

    def time(self) -> defer.Deferred:
        """TIME: the server's clock."""
        return self._op("time", (), lambda: self.server.clock.seconds())

    def info(self) -> defer.Deferred:
        """Key count and a rough memory figure."""
        return self._op(
            "info",
            (),
            lambda: {"keys": len(self.server.live_keys()), "used_memory": sum(len(v) for v, _ in self.server.data.values())},
        )

    def status(self) -> BackendStatus:
        """Connected unless failing or hanging."""
        breaker = self.guard.breaker.snapshot() if self.guard is not None else BreakerState("closed", 0, None, None, 0)
        return BackendStatus(
            type="redis",
            address="fake",
            status="unavailable" if (self.fail or self.hang) else "connected",
            breaker=breaker,
            master=None,
            last_error=None,
        )
