"""
The Redis commands dnsgo sends, and the parsing of their replies: one
surface for the single, Sentinel and Cluster backends.

The builders return argument tuples (``(b"SET", key, value, b"EX", 300)``)
that each backend sends its own way (a pooled txredisapi connection, the
Sentinel master or replica, the Cluster node owning the slot).
:class:`NodeCommands` implements the :class:`~dnsgo.redis.backend.RedisBackend`
operations for a backend that talks to one node at a time (single and
Sentinel) over three hooks; the Cluster backend uses the builders and
parsers and spreads the work over its nodes itself.
"""
from __future__ import annotations

import math

from twisted.internet import defer

#: Keys asked for per SCAN step, and so deleted per DEL, by delete_matching.
SCAN_COUNT = 500

#: The INFO fields ``info()`` reports (as ints) when Redis has them.
INFO_FIELDS = ("used_memory", "keyspace_hits", "keyspace_misses", "evicted_keys", "expired_keys")

DBSIZE = (b"DBSIZE",)
INFO = (b"INFO",)
TIME = (b"TIME",)


def get(key: bytes) -> tuple:
    """GET key."""
    return (b"GET", key)


def mget(keys) -> tuple:
    """MGET key [key ...]."""
    return (b"MGET", *keys)


def set_ex(key: bytes, value: bytes, ttl: float) -> tuple:
    """SET key value EX ttl, the TTL rounded up to whole seconds, at least 1."""
    return (b"SET", key, value, b"EX", max(1, math.ceil(ttl)))


def delete(keys) -> tuple:
    """DEL key [key ...]."""
    return (b"DEL", *keys)


#: Raise the term stored at KEYS[1] to ARGV[1] unless it is higher; reply with the term stored after.
RAISE_TERM_SCRIPT = (
    b"local current = tonumber(redis.call('GET', KEYS[1]) or '0') "
    b"local term = tonumber(ARGV[1]) "
    b"if term > current then redis.call('SET', KEYS[1], ARGV[1]) return term end "
    b"return current"
)


def raise_term(key: bytes, term: int) -> tuple:
    """EVAL of :data:`RAISE_TERM_SCRIPT`: the compare-and-set of a control plane's HA term (docs/ha.md)."""
    return (b"EVAL", RAISE_TERM_SCRIPT, 1, key, term)


def scan(cursor, pattern: bytes) -> tuple:
    """SCAN cursor MATCH pattern COUNT :data:`SCAN_COUNT`."""
    return (b"SCAN", cursor, b"MATCH", pattern, b"COUNT", SCAN_COUNT)


def publish(channel: bytes, message: bytes) -> tuple:
    """PUBLISH channel message."""
    return (b"PUBLISH", channel, message)


def info_section(section: bytes) -> tuple:
    """INFO section."""
    return (b"INFO", section)


def parse_scan(reply) -> tuple[int, list]:
    """A SCAN reply as (the next cursor, the keys of this step)."""
    cursor, keys = reply
    return int(cursor), list(keys or ())


def parse_time(reply) -> float:
    """A TIME reply (seconds, microseconds) as float seconds since the epoch."""
    seconds, micros = reply
    return int(seconds) + int(micros) / 1e6


def parse_info(text: bytes | str) -> dict[str, str]:
    """Every ``name:value`` field of an INFO reply, as text (section headers left out)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


def info_numbers(text: bytes | str, fields=INFO_FIELDS) -> dict[str, int]:
    """The integer ``fields`` of an INFO reply (fields Redis did not report, or not as integers, are left out)."""
    parsed = parse_info(text)
    out = {}
    for name in fields:
        try:
            out[name] = int(parsed[name])
        except (KeyError, ValueError):
            pass
    return out


class NodeCommands:
    """
    The RedisBackend operations over one node at a time.  A backend using it
    provides ``_read(args)`` and ``_write(args)`` (run a command built here
    for reading or writing, within the guard's deadline; fire with the
    reply) and ``_admin(args)`` (run INFO or DBSIZE where the backend's
    figures live).
    """

    def get(self, key: bytes) -> defer.Deferred:
        """Fires with the value bytes, or None when absent."""
        return self._read(get(key))

    def mget(self, keys: list[bytes]) -> defer.Deferred:
        """Fires with the values (None where absent), in the order of ``keys``."""
        if not keys:
            return defer.succeed([])
        return self._read(mget(keys))

    def set(self, key: bytes, value: bytes, ttl: int) -> defer.Deferred:
        """SET key value EX ttl (rounded up to whole seconds, at least 1)."""
        return self._write(set_ex(key, value, ttl)).addCallback(lambda _: None)

    def delete(self, keys: list[bytes]) -> defer.Deferred:
        """DEL the keys; fires with how many existed."""
        if not keys:
            return defer.succeed(0)
        return self._write(delete(keys))

    @defer.inlineCallbacks
    def delete_matching(self, pattern: bytes):
        """SCAN MATCH pattern and DEL each batch, each step within its deadline; fires with how many went."""
        cursor, deleted = 0, 0
        while True:
            cursor, keys = parse_scan((yield self._write(scan(cursor, pattern))))
            if keys:
                deleted += yield self._write(delete(keys))
            if cursor == 0:
                return deleted

    def publish(self, channel: bytes, message: bytes) -> defer.Deferred:
        """PUBLISH; fires with the number of receivers."""
        return self._write(publish(channel, message))

    def raise_term(self, key: bytes, term: int) -> defer.Deferred:
        """Store ``term`` at ``key`` unless a higher one is there (atomically); fires with the term stored after."""
        return self._write(raise_term(key, term)).addCallback(int)

    def time(self) -> defer.Deferred:
        """Fires with the server's clock (TIME) in seconds since the epoch."""
        return self._admin(TIME).addCallback(parse_time)

    @defer.inlineCallbacks
    def info(self):
        """Fires with {"keys": DBSIZE, "used_memory": ..., "keyspace_hits": ..., ...} (ints)."""
        text = yield self._admin(INFO)
        keys = yield self._admin(DBSIZE)
        result = info_numbers(text)
        result["keys"] = int(keys)
        return result
