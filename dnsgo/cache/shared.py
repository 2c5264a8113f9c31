"""
The shared L2 cache in Redis (mode ``hybrid``): RRsets and negative
answers every worker of every site can read, in the format of
:mod:`dnsgo.cache.shared_format` (``docs/redis-format.md``).

Every worker counts the shared entries' TTLs on one clock, Redis's: a
store keeps the offset between its reactor's clock and Redis's ``TIME``
(:meth:`SharedRRsetStore.sync_clock`, sampled at start and every minute by
the process root), writes stored-at times and counts remaining TTLs on
``reactor.seconds() + offset`` (:meth:`SharedRRsetStore.now`).  So workers
whose clocks disagree (two sites 30 s apart) agree on every remaining TTL
to within the sampling error (half a round trip), with no NTP needed.
Until the first sample the offset is 0 (the worker's own clock).  An
entry whose DNS TTL has run out is a miss, but stays in Redis until
``ceil(ttl * ttl_multiplier)`` seconds after it was written, for
:meth:`SharedRRsetStore.get_stale` (RFC 8767).

Writes are fire-and-forget: :meth:`SharedRRsetStore.store_reply` applies the
local cache's rules (:func:`dnsgo.cache.rrset.learn_from_reply`) and queues
one SET per entry; a few writes are in flight at a time, and when the queue
is full new writes are dropped and counted.  Nothing here raises into the
query path: a read that fails or comes back damaged is a miss.

The rank rule across workers: only answer-rank data goes to Redis (the
RRsets on the question's CNAME chain, and negative answers); authority and
additional data stay in each worker's local cache.  Every value in Redis
is then of one rank, so "lower rank never replaces higher" (RFC 2181
§5.4.1) holds with plain SETs and last writer wins, as it does for equal
ranks locally, without a read before each write.  Readers ignore values
of a lower rank, should a later version write them.

Between the entries of one name, the newest wins (values carry the time
they were stored): a live NXDOMAIN answers only if it is newer than every
RRset or NODATA entry fetched with it, and an RRset and a NODATA for the
same type are told apart the same way.  So no write ever needs to delete
another key, and concurrent writers cannot leave a stale denial in front
of newer data for the types looked up.

What a reader believes (Redis is a trust boundary: ``docs/redis-format.md``):
a value is used only if its records are of the key's owner, type and class
(a negative entry's SOA of the owner's zone), its stored-at time is not
ahead of the reader's clock by more than :data:`CLOCK_SKEW` seconds, and
its TTL is bounded again by this store's ``max_ttl`` (``negative_ttl`` for
negative entries) on the way in.  Other values are ``rejected``.  With a
``signer`` (``cache.shared_cache.signing_key``), every value is written
with an HMAC over its key and bytes, and a value without a valid one is a
miss counted in ``bad_signatures``.
"""
from __future__ import annotations

import math
from collections import deque

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.python.failure import Failure

from dnsgo.cache import shared_format as fmt
from dnsgo.cache.rrset import LearnedRRset, Rank, ancestors, at_or_below, learn_from_reply, normalize_name
from dnsgo.cache.shared_format import Entry, Kind
from dnsgo.cache.signing import Signer
from dnsgo.dns.names import dotted_to_wire

#: How far ahead of the reader's clock a value's stored-at time may be
#: (clock differences between sites); a later one is rejected.
CLOCK_SKEW = 5.0


@attrs.frozen
class SharedStats:
    """
    The shared store's counters: lookups that found a usable entry
    (``hits``) or not (``misses``, including those that failed); values
    that did not decode (``corrupt``); values that decoded but do not
    belong under their key or claim a future time (``rejected``); values
    without a valid signature while a signing key is set
    (``bad_signatures``); Redis operations that failed
    (``errors``: unavailable, timed out, refused by the breaker); writes
    done, dropped (the queue was full, the breaker was open so the reply
    was not even encoded, or the RRset is over the format's bounds),
    queued now and in flight now.
    """

    hits: int
    misses: int
    corrupt: int
    rejected: int
    bad_signatures: int
    errors: int
    writes: int
    dropped_writes: int
    queued: int
    in_flight: int


class SharedRRsetStore:
    """
    The L2 RRset cache shared through a :class:`~dnsgo.redis.backend.RedisBackend`.

    ``min_ttl``, ``max_ttl`` and ``negative_ttl`` bound what is written,
    as in :class:`~dnsgo.cache.rrset.RRsetCache` (pass the same values),
    and again what is read.  ``signer`` signs every value written and
    requires a valid signature on every value read.
    """

    log = Logger()

    def __init__(
        self,
        backend,
        *,
        key_prefix: str | bytes = "dns:",
        ttl_multiplier: float = 1.5,
        write_queue_size: int = 10000,
        max_in_flight: int = 8,
        min_ttl: int = 0,
        max_ttl: int = 86400,
        negative_ttl: int = 3600,
        signer: Signer | None = None,
        reactor,
    ) -> None:
        if ttl_multiplier < 1:
            raise ValueError(f"ttl_multiplier must be at least 1, not {ttl_multiplier}")
        if write_queue_size < 1 or max_in_flight < 1:
            raise ValueError("write_queue_size and max_in_flight must be positive")
        self._backend = backend
        self._reactor = reactor
        self._prefix = key_prefix.encode() if isinstance(key_prefix, str) else key_prefix
        self._multiplier = ttl_multiplier
        self._queue_size = write_queue_size
        self._max_in_flight = max_in_flight
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._negative_ttl = negative_ttl
        self._signer = signer
        self._queue: deque = deque()
        self._in_flight = 0
        self._pumping = False
        self._idle_waiters: list[defer.Deferred] = []
        self._corrupt_logged = False
        self._encode_logged = False
        self._hits = self._misses = self._corrupt = self._errors = 0
        self._rejected = self._bad_signatures = 0
        self._offset = 0.0
        self._clock_synced = False
        self._rejection_logged = False
        self._writes = self._dropped = 0

    def now(self) -> float:
        """The shared cache's clock: this reactor's seconds plus the offset to Redis's ``TIME``."""
        return self._reactor.seconds() + self._offset

    @property
    def clock_offset(self) -> float:
        """Seconds to add to this reactor's clock to read Redis's (0 until the first sample)."""
        return self._offset

    def sync_clock(self) -> defer.Deferred:
        """
        Sample Redis's ``TIME`` and keep the offset to this reactor's clock
        (the sample is taken as of the middle of the round trip).  Fires
        with True once it has, False when Redis could not be asked (the
        previous offset stays).  Never fails.
        """
        sent = self._reactor.seconds()
        d = defer.maybeDeferred(self._backend.time)

        def sampled(redis_time: float) -> bool:
            received = self._reactor.seconds()
            self._offset = redis_time - (sent + received) / 2
            self._clock_synced = True
            return True

        d.addCallbacks(sampled, lambda failure: False)
        return d

    @property
    def key_prefix(self) -> bytes:
        """The prefix of every key this store reads and writes."""
        return self._prefix

    # -- reading ---------------------------------------------------------

    def lookup(self, name: bytes, type: int, cls: int = dns.IN) -> defer.Deferred:
        """
        What Redis knows for the question ``name``/``type``/``cls``, in one
        round trip (MGET of the RRset, NODATA, NXDOMAIN and CNAME keys):
        fires with the :class:`~dnsgo.cache.shared_format.Entry` that
        answers it (an RRset of ``type``, a NODATA, an NXDOMAIN) or, failing
        that, the name's CNAME RRset; or None.  Only live answer-rank
        entries count.  Never fails.
        """
        keys = [
            fmt.rrset_key(self._prefix, name, type, cls),
            fmt.nodata_key(self._prefix, name, type, cls),
            fmt.nxdomain_key(self._prefix, name, cls),
            fmt.rrset_key(self._prefix, name, dns.CNAME, cls),
        ]
        above = ancestors(normalize_name(name))
        keys.extend(fmt.nxdomain_key(self._prefix, ancestor, cls) for ancestor in above)
        d = self._read(lambda: self._backend.mget(keys))
        d.addCallback(self._choose, keys, name, type, cls, above)
        return d

    def get(self, name: bytes, type: int, cls: int = dns.IN) -> defer.Deferred:
        """Fires with the live RRset of ``name``/``type``/``cls``, TTLs counted down, or None.  Never fails."""
        d = self.lookup(name, type, cls)
        d.addCallback(lambda entry: self.headers(entry) if _answers(entry, Kind.RRSET, type) else None)
        return d

    def get_negative(self, name: bytes, type: int, cls: int = dns.IN) -> defer.Deferred:
        """
        Fires with a live negative answer for ``name``/``type``:
        ``(dns.ENAME, soa)`` for NXDOMAIN, ``(dns.OK, soa)`` for NODATA, the
        SOA counted down; or None.  Never fails.
        """
        d = self.lookup(name, type, cls)
        d.addCallback(self._negative_of)
        return d

    def get_stale(self, name: bytes, type: int, cls: int = dns.IN, *, max_stale: float, answer_ttl: int = 30) -> defer.Deferred:
        """
        Fires with the RRset of ``name``/``type``/``cls`` even if its DNS
        TTL ran out less than ``max_stale`` seconds ago (RFC 8767), every
        TTL ``answer_ttl`` if it did and counted down if not; or None.  The
        value lasts in Redis ``ttl * (ttl_multiplier - 1)`` seconds past its
        DNS TTL, so that bounds how stale it can get.  Never fails.
        """
        key = fmt.rrset_key(self._prefix, name, type, cls)
        d = self._read(lambda: self._backend.get(key))

        def stale(value):
            entry = self._decoded(value, key, Kind.RRSET, name, type, cls)
            now = self.now()
            if entry is None or entry.rank < Rank.ANSWER or -entry.remaining(now) >= max_stale:
                self._misses += 1
                return None
            self._hits += 1
            if entry.live(now):
                return entry.headers(now)
            return [dns.RRHeader(rr.name.name, rr.type, rr.cls, answer_ttl, rr.payload) for rr in entry.records]

        d.addCallback(stale)
        return d

    def inspect(self, name: bytes, types, cls: int = dns.IN) -> defer.Deferred:
        """
        For inspection: fires with every believable value Redis holds for
        ``name`` in one MGET (its RRset and NODATA of each of ``types``, its
        NXDOMAIN), live or kept for serve-stale, as ``(kind, type, entry)``;
        or None when Redis could not be read.  Hits and misses are not
        counted.  Never fails.
        """
        wanted = [(Kind.NXDOMAIN, dns.SOA, fmt.nxdomain_key(self._prefix, name, cls), None)]
        for type in types:
            wanted.append((Kind.RRSET, type, fmt.rrset_key(self._prefix, name, type, cls), type))
            wanted.append((Kind.NODATA, dns.SOA, fmt.nodata_key(self._prefix, name, type, cls), type))
        d = self._read(lambda: self._backend.mget([key for _, _, key, _ in wanted]))

        def found(values):
            if values is _FAILED or not isinstance(values, (list, tuple)) or len(values) != len(wanted):
                return None
            out = []
            for value, (kind, rtype, key, type) in zip(values, wanted):
                entry = self._decoded(value, key, kind, name, rtype, cls)
                if entry is not None:
                    out.append((kind, type, entry))
            return out

        return d.addCallback(found)

    def headers(self, entry: Entry) -> list[dns.RRHeader]:
        """New ``RRHeader`` objects for ``entry``'s records, with the TTL that remains now."""
        return entry.headers(self.now())

    def _negative_of(self, entry):
        if entry is None or entry.kind == Kind.RRSET:
            return None
        rcode = dns.ENAME if entry.kind == Kind.NXDOMAIN else dns.OK
        return rcode, self.headers(entry)[0]

    def _read(self, op) -> defer.Deferred:
        """Run a backend read; a failure becomes ``_FAILED`` (counted), never an errback."""
        d = defer.maybeDeferred(op)
        d.addErrback(self._read_failed)
        return d

    def _read_failed(self, failure: Failure):
        self._errors += 1
        return _FAILED

    def _choose(self, values, keys: list[bytes], name: bytes, type: int, cls: int, above=()):
        if values is _FAILED or not isinstance(values, (list, tuple)) or len(values) != len(keys):
            if values is not _FAILED:
                self._errors += 1
            self._misses += 1
            return None
        now = self.now()
        expected = [(Kind.RRSET, type, name), (Kind.NODATA, dns.SOA, name), (Kind.NXDOMAIN, dns.SOA, name),
                    (Kind.RRSET, dns.CNAME, name)]
        expected += [(Kind.NXDOMAIN, dns.SOA, ancestor) for ancestor in above]
        live = []
        for value, key, (kind, rtype, owner) in zip(values, keys, expected):
            entry = self._decoded(value, key, kind, owner, rtype, cls)
            usable = entry is not None and entry.rank >= Rank.ANSWER and entry.live(now)
            live.append(entry if usable else None)
        positive, nodata, nxdomain, cname = live[:4]
        if type == dns.CNAME:
            cname = None  # the CNAME is the positive answer itself
        if nxdomain is None:
            # RFC 8020: the nearest NXDOMAIN above the name denies it too.
            nxdomain = next((e for e in live[4:] if e is not None), None)
        existing = [e.stored_at for e in (positive, nodata, cname) if e is not None]
        if nxdomain is not None and all(nxdomain.stored_at > t for t in existing):
            chosen = nxdomain
        elif positive is not None and (nodata is None or positive.stored_at >= nodata.stored_at):
            chosen = positive
        else:
            chosen = nodata or cname
        if chosen is None:
            self._misses += 1
        else:
            self._hits += 1
        return chosen

    def _decoded(self, value, key: bytes, kind: Kind, name: bytes, rtype: int, cls: int) -> Entry | None:
        """
        The entry in ``value`` if it is what ``key`` (of ``name``) should
        hold and believable, its TTL bounded; anything else is counted and
        is None.
        """
        if value is None or value is _FAILED:
            return None
        if self._signer is not None and not fmt.signed_by(value, key, self._signer):
            self._bad_signatures += 1
            self._log_rejection("has no valid signature", key)
            return None
        entry = fmt.decode_value(value)
        if entry is None or entry.kind != kind or entry.records[0].type != rtype or entry.records[0].cls != cls:
            self._corrupt += 1
            if not self._corrupt_logged:
                self._corrupt_logged = True
                self.log.warn(
                    "shared cache: value of {key!r} is damaged, of another version or not dnsgo's; "
                    "treated as a miss (logged once)",
                    key=key,
                )
            return None
        owner = normalize_name(name)
        if kind == Kind.RRSET:
            belongs = all(normalize_name(rr.name.name) == owner for rr in entry.records)
            cap = self._max_ttl
        else:
            belongs = at_or_below(owner, normalize_name(entry.records[0].name.name))
            cap = self._negative_ttl
        if not belongs or entry.stored_at > self.now() + CLOCK_SKEW or cap <= 0:
            self._rejected += 1
            self._log_rejection("holds another name's records or a future time", key)
            return None
        return entry if entry.ttl <= cap else attrs.evolve(entry, ttl=cap)

    def _log_rejection(self, why: str, key: bytes) -> None:
        if not self._rejection_logged:
            self._rejection_logged = True
            self.log.warn("shared cache: value of {key!r} {why}; treated as a miss (logged once)", key=key, why=why)

    # -- writing ---------------------------------------------------------

    def store_reply(self, query: dns.Query, rcode: int, answers, authority, additional) -> None:
        """Queue the writes of what an upstream reply to ``query`` teaches (answer rank only).  Never raises."""
        try:
            learned = learn_from_reply(query, rcode, answers, authority, additional)
        except Exception:
            self._log_encode_failure()
            return
        self.store_learned(learned)

    def store_learned(self, learned) -> None:
        """
        Queue the writes of :func:`~dnsgo.cache.rrset.learn_from_reply`'s
        answer-rank items.  Never raises.  While the backend's circuit breaker
        is open nothing is encoded: the writes would be refused anyway.
        """
        guard = getattr(self._backend, "guard", None)
        if guard is not None and guard.breaker.state == "open":
            self._dropped += 1
            return
        now = self.now()
        prefix = self._prefix
        for item in learned:
            try:
                if isinstance(item, LearnedRRset):
                    if item.rank < Rank.ANSWER or item.ttl <= 0:
                        continue
                    ttl = max(self._min_ttl, min(item.ttl, self._max_ttl))
                    if ttl <= 0:
                        continue
                    key = fmt.rrset_key(prefix, item.name, item.type, item.cls)
                    headers = [_value_record(item.owner, item.type, item.cls, ttl, p) for p in item.payloads]
                    value = fmt.encode_value(Kind.RRSET, now, ttl, item.rank, headers, key=key, signer=self._signer)
                else:
                    ttl = min(item.ttl, self._negative_ttl)
                    if ttl <= 0:
                        continue
                    if item.type is None:
                        key, kind = fmt.nxdomain_key(prefix, item.name, item.cls), Kind.NXDOMAIN
                    else:
                        key, kind = fmt.nodata_key(prefix, item.name, item.type, item.cls), Kind.NODATA
                    value = fmt.encode_value(kind, now, ttl, Rank.ANSWER, [item.soa], key=key, signer=self._signer)
            except fmt.TooLarge:
                self._dropped += 1
                continue
            except Exception:
                self._log_encode_failure()
                continue
            self._enqueue(key, value, math.ceil(ttl * self._multiplier), item.name, item.type)

    def _log_encode_failure(self) -> None:
        if not self._encode_logged:
            self._encode_logged = True
            self.log.failure("shared cache: could not encode an entry; not written (logged once)")

    def _enqueue(self, key: bytes, value: bytes, expire: int, name: bytes, type: int | None) -> None:
        if len(self._queue) >= self._queue_size:
            self._dropped += 1
            return
        self._queue.append((key, value, expire, name, type))
        self._pump()

    def _pump(self) -> None:
        """Start queued writes up to ``max_in_flight``; re-entry (a write done at once) only returns."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._in_flight < self._max_in_flight and self._queue:
                key, value, expire, _, _ = self._queue.popleft()
                self._in_flight += 1
                d = defer.maybeDeferred(self._backend.set, key, value, expire)
                d.addBoth(self._written)
        finally:
            self._pumping = False
        if not self._queue and not self._in_flight:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _written(self, result) -> None:
        self._in_flight -= 1
        if isinstance(result, Failure):
            self._errors += 1
        else:
            self._writes += 1
        self._pump()

    def idle(self) -> defer.Deferred:
        """Fires when no write is queued or in flight (for tests and an orderly stop)."""
        if not self._queue and not self._in_flight:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    # -- management ------------------------------------------------------

    def flush(self, name: bytes | None = None, type: int | None = None, subtree: bool = False) -> defer.Deferred:
        """
        Remove entries from Redis, with the filters of
        :meth:`~dnsgo.cache.rrset.RRsetCache.flush`, and the queued writes
        they cover.  Fires with how many keys were deleted, or fails with
        :class:`~dnsgo.redis.backend.RedisUnavailable`.
        """
        target = None if name is None else normalize_name(name)
        self._queue = deque(
            item for item in self._queue if not _flushed(item[3], item[4], target, type, subtree)
        )
        self._pump()
        patterns = fmt.flush_patterns(self._prefix, name, type, subtree)
        calls = [defer.maybeDeferred(self._backend.delete_matching, pattern) for pattern in patterns]
        d = defer.gatherResults(calls, consumeErrors=True)
        d.addCallbacks(sum, lambda f: f.value.subFailure)
        return d

    def stats(self) -> SharedStats:
        """The counters now."""
        return SharedStats(
            hits=self._hits,
            misses=self._misses,
            corrupt=self._corrupt,
            rejected=self._rejected,
            bad_signatures=self._bad_signatures,
            errors=self._errors,
            writes=self._writes,
            dropped_writes=self._dropped,
            queued=len(self._queue),
            in_flight=self._in_flight,
        )


#: A read that failed (counted in errors), as opposed to a value that is absent.
_FAILED = object()


def _answers(entry, kind: Kind, type: int) -> bool:
    return entry is not None and entry.kind == kind and entry.records[0].type == type


def _flushed(name: bytes, type: int | None, target: bytes | None, flush_type: int | None, subtree: bool) -> bool:
    """Whether a queued write of ``name``/``type`` (None: NXDOMAIN) falls under a flush."""
    if target is not None and name != target:
        if not subtree or (target and not name.endswith(b"." + target)):
            return False
    return flush_type is None or type is None or type == flush_type


def _value_record(owner: bytes, type: int, cls: int, ttl: int, payload):
    """A record to encode: rdata bytes as they came off the wire, or a payload object in an RRHeader."""
    if payload.__class__ is bytes:
        return fmt.ValueRecord(dotted_to_wire(owner), type, cls, payload)
    return dns.RRHeader(owner, type, cls, ttl, payload)
