"""
Cache invalidation (``cache.invalidation``): dropping entries from the caches
of this worker, of every other worker, and of the shared store.

A :class:`Flush` says what goes: everything, a name, a name and type, or a
name and everything below it, in the L1 message cache, the L2 RRset cache
or both.  :func:`apply_locally` applies one to this process's caches.  An
invalidator carries a flush to where it must go, per strategy:

* ``local-only`` (:class:`LocalInvalidator`): this process only;
* ``pubsub`` (:class:`PubSubInvalidator`): this process at once, the shared
  store once (by this worker, the one that started the flush), then every
  other worker through Redis pub/sub, in batches;
* ``broadcast`` (:class:`BroadcastInvalidator`): this process, then a
  ``send`` callable the control plane provides.

The pub/sub message format is versioned and documented in
``docs/invalidation.md``; :func:`encode_batch` and :func:`decode_batch`
implement it.  With a signing key (``cache.shared_cache.signing_key``), a
message carries an HMAC over the channel and the JSON, and a subscriber
ignores (and counts) a message without a valid one, or one sent more than
:data:`MAX_SIGNED_AGE` seconds from its own clock (a replay).
"""
from __future__ import annotations

import os
import secrets
from typing import Callable, Iterable

import attrs
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from dnsgo.cache.signing import Signer
from dnsgo.dns.types import CACHE_KINDS, RRSET
from dnsgo.invalidation.batch import (
    MAX_SIGNED_AGE,
    BadMessage,
    BadSignature,
    Batch,
    decode_batch,
    encode_batch,
    open_message,
    sign_message,
)
from dnsgo.invalidation.flush import Flush, apply_batch_locally, apply_locally

# -- invalidators ----------------------------------------------------------------


class SharedFlushFailed(Exception):
    """
    The flush was applied locally (``removed`` entries) and passed on to
    the other workers, but clearing the shared store failed (``reason``).
    """

    def __init__(self, removed: int, reason: str) -> None:
        super().__init__(f"the shared store was not cleared: {reason}")
        self.removed = removed
        self.reason = reason


@attrs.frozen
class InvalidationStats:
    """
    The counters of an invalidator, for the management API and metrics.

    ``flushes``: flushes started here; ``sent_batches``/``sent_flushes``:
    messages (batches) handed on to the other workers and the flushes in
    them; ``publish_failures``: batches that could not be sent (they are
    retried); ``pending``: flushes waiting to be sent; ``received_batches``:
    batches from other workers applied here; ``applied_flushes``: flushes
    in those batches; ``skipped_own``: batches of this worker's own that
    came back; ``ignored_messages``: malformed messages or unknown versions;
    ``resync_clears``: caches cleared because the subscription came back
    after a loss; ``bad_signatures``: messages ignored for a missing or
    wrong signature, or as replays (a signing key is set);
    ``removed_entries``: entries all of that dropped here;
    ``shared_failures``: flushes the shared store could not apply.
    """

    strategy: str
    flushes: int = 0
    sent_batches: int = 0
    sent_flushes: int = 0
    publish_failures: int = 0
    pending: int = 0
    received_batches: int = 0
    applied_flushes: int = 0
    skipped_own: int = 0
    ignored_messages: int = 0
    bad_signatures: int = 0
    resync_clears: int = 0
    removed_entries: int = 0
    shared_failures: int = 0


#: The counters an invalidator keeps (every field of InvalidationStats but the strategy and the queue length).
_COUNTERS = tuple(f.name for f in attrs.fields(InvalidationStats) if f.name not in ("strategy", "pending"))


class _Originator:
    """
    What every strategy does with a flush started in this process: apply it
    here, clear the shared store once, and apply it here again once the
    shared store is clear (a query in between may have refilled the local
    caches from the shared store's old entries).
    """

    strategy = "?"
    log = Logger()

    def __init__(self, caches, shared_store=None) -> None:
        self.caches = caches
        self._shared = shared_store
        self._counts = dict.fromkeys(_COUNTERS, 0)

    def stats(self) -> InvalidationStats:
        """The counters now."""
        return InvalidationStats(self.strategy, **self._counts)

    def _apply(self, flush: Flush) -> int:
        removed = apply_locally(flush, self.caches)
        self._counts["removed_entries"] += removed
        return removed

    def _flush_here(self, flush: Flush) -> defer.Deferred:
        """Apply ``flush`` locally and in the shared store; fires with the count or fails with SharedFlushFailed."""
        self._counts["flushes"] += 1
        removed = self._apply(flush)
        if self._shared is None or RRSET not in flush.caches:
            return defer.succeed(removed)
        d = defer.maybeDeferred(self._shared.flush, flush.dotted_name(), flush.qtype, flush.subtree)

        def cleared(shared_removed):
            count = shared_removed if isinstance(shared_removed, int) else 0
            return removed + count + self._apply(flush)

        def failed(failure):
            self._counts["shared_failures"] += 1
            reason = f"{type(failure.value).__name__}: {failure.value}"[:300]
            self.log.warn("invalidation: clearing the shared store for {flush} failed: {reason}",
                          flush=flush, reason=reason)
            raise SharedFlushFailed(removed + self._apply(flush), reason)

        d.addCallbacks(cleared, failed)
        return d


class LocalInvalidator(_Originator):
    """
    Strategy ``local-only``: a flush applies to this process's caches (and
    to the shared store when one is given) and goes nowhere else.
    """

    strategy = "local-only"

    def invalidate(self, flush: Flush) -> defer.Deferred:
        """Apply ``flush``; fires with the number of entries dropped (see :class:`SharedFlushFailed`)."""
        return self._flush_here(flush)


class BroadcastInvalidator(_Originator):
    """
    Strategy ``broadcast``: a flush applies here, then ``send(flush)`` (a
    Deferred) hands it to the control plane, which relays it to the other
    workers; they pass what they get to :meth:`receive`.
    """

    strategy = "broadcast"

    def __init__(self, caches, send: Callable[[Flush], defer.Deferred], shared_store=None) -> None:
        super().__init__(caches, shared_store)
        self._send = send

    def invalidate(self, flush: Flush) -> defer.Deferred:
        """Apply ``flush`` here, then send it; fires with the local count once sent (or fails as send does)."""

        def relay(result):
            sent = defer.maybeDeferred(self._send, flush)

            def done(_):
                self._counts["sent_batches"] += 1
                self._counts["sent_flushes"] += 1
                return result

            def failed(failure):
                self._counts["publish_failures"] += 1
                return failure

            return sent.addCallbacks(done, failed)

        return self._flush_here(flush).addBoth(relay)

    def receive(self, flush: Flush) -> int:
        """Apply a flush another worker started; return the entries dropped."""
        self._counts["received_batches"] += 1
        self._counts["applied_flushes"] += 1
        return self._apply(flush)


def unique_origin_id(prefix: str = "dnsgo") -> str:
    """An origin id for a worker process that no other process shares: ``prefix``, the pid and random hex."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


class PubSubInvalidator(_Originator, service.Service):
    """
    Strategy ``pubsub``: flushes travel over a Redis pub/sub ``channel``.

    :meth:`invalidate` applies a flush here at once, clears the shared store
    (``shared_store.flush(dotted_name, qtype, subtree)``, a Deferred; only
    for flushes of the ``"rrset"`` cache), then queues the flush.  The
    queue is published in batches of up to ``batch_size`` flushes, each at
    most ``batch_delay`` seconds after its first flush was queued (one
    PUBLISH per batch).  A batch that cannot be published is queued again
    and retried every ``retry_delay`` seconds; more than ``max_pending``
    waiting flushes collapse into one flush of everything.

    As a subscriber it applies every flush of every batch from another
    ``origin_id`` to this process's caches.  When the subscription comes
    back after a loss it clears the ``resync_caches`` kinds of its caches
    (by default L1 and the local L2), because it may have missed flushes.

    ``origin_id`` must be unique per process (see :func:`unique_origin_id`):
    a worker skips batches carrying its own.  With a ``signer`` every
    message is signed, and only signed, recent messages are applied.  A
    Twisted service: starting it subscribes, stopping it publishes what is
    queued and unsubscribes.
    """

    strategy = "pubsub"

    def __init__(
        self,
        caches,
        backend,
        channel: bytes,
        batch_size: int,
        batch_delay: float,
        origin_id: str,
        shared_store=None,
        *,
        reactor,
        retry_delay: float = 1.0,
        max_pending: int = 10000,
        resync_caches: Iterable[str] = CACHE_KINDS,
        signer: Signer | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if batch_delay < 0:
            raise ValueError(f"batch_delay must not be negative, not {batch_delay}")
        super().__init__(caches, shared_store)
        self._reactor = reactor
        self._backend = backend
        self.channel = channel
        self._batch_size = batch_size
        self._batch_delay = batch_delay
        self.origin_id = origin_id
        self._retry_delay = retry_delay
        self._max_pending = max(max_pending, batch_size)
        self._resync = Flush.everything(resync_caches) if resync_caches else None
        self._queue: list[Flush] = []
        self._timer = None
        self._backing_off = False
        self._seq = 0
        self._signer = signer
        self._last_complaint = None
        #: The backend's subscription while running.
        self.subscription = None

    # -- the service ------------------------------------------------------

    def startService(self) -> None:
        """Subscribe to the channel."""
        super().startService()
        self.subscription = self._backend.subscribe(self.channel, self._on_message, self._on_reconnect)

    def stopService(self) -> defer.Deferred:
        """Publish what is queued (once, without retrying) and unsubscribe."""
        super().stopService()
        self._cancel_timer()
        pending, self._queue = self._queue, []
        sends = [self._publish(batch, retry=False) for batch in self._batches(pending)]
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            sends.append(defer.maybeDeferred(subscription.stop))
        return defer.DeferredList(sends, consumeErrors=True).addCallback(lambda _: None)

    def stats(self) -> InvalidationStats:
        """The counters now."""
        return InvalidationStats(self.strategy, pending=len(self._queue), **self._counts)

    # -- sending ----------------------------------------------------------

    def invalidate(self, flush: Flush) -> defer.Deferred:
        """
        Apply ``flush`` here and in the shared store, then queue it for the
        other workers; fires with the entries dropped here and in the shared
        store (or fails with :class:`SharedFlushFailed`; the flush is
        queued all the same).
        """

        def enqueue(result):
            self._enqueue(flush)
            return result

        return self._flush_here(flush).addBoth(enqueue)

    def _enqueue(self, flush: Flush) -> None:
        if not self.running:  # stopped (or not started): no batching, one try
            self._publish([flush], retry=False)
            return
        self._queue.append(flush)
        if len(self._queue) > self._max_pending:
            self._queue = [Flush.everything()]
        if self._backing_off:
            return
        if len(self._queue) >= self._batch_size:
            self._publish_queue()
        elif self._timer is None:
            self._timer = self._reactor.callLater(self._batch_delay, self._publish_queue)

    def _publish_queue(self) -> None:
        """Publish everything queued now, one PUBLISH per ``batch_size`` flushes."""
        self._cancel_timer()
        self._backing_off = False
        pending, self._queue = self._queue, []
        for batch in self._batches(pending):
            self._publish(batch, retry=True)

    def _batches(self, flushes: list[Flush]) -> list[list[Flush]]:
        size = self._batch_size
        return [flushes[i : i + size] for i in range(0, len(flushes), size)]

    def _publish(self, batch: list[Flush], retry: bool) -> defer.Deferred:
        self._seq += 1
        message = encode_batch(Batch(tuple(batch), self.origin_id, self._seq, self._reactor.seconds()))
        if self._signer is not None:
            message = sign_message(message, self.channel, self._signer)
        d = defer.maybeDeferred(self._backend.publish, self.channel, message)

        def sent(_receivers):
            self._counts["sent_batches"] += 1
            self._counts["sent_flushes"] += len(batch)

        def failed(failure):
            self._counts["publish_failures"] += 1
            retrying = retry and self.running
            self._complain("invalidation: publishing {count} flush(es) failed ({why}){then}",
                           count=len(batch), why=str(failure.value)[:200],
                           then="; retrying" if retrying else "; dropped")
            if retrying:
                self._requeue(batch)

        return d.addCallbacks(sent, failed)

    def _requeue(self, batch: list[Flush]) -> None:
        self._queue[:0] = batch
        if len(self._queue) > self._max_pending:
            self._queue = [Flush.everything()]
        self._backing_off = True
        self._cancel_timer()
        self._timer = self._reactor.callLater(self._retry_delay, self._publish_queue)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- receiving --------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        try:
            batch = decode_batch(open_message(data, self.channel, self._signer))
            if self._signer is not None and (
                batch.sent_at is None or abs(batch.sent_at - self._reactor.seconds()) > MAX_SIGNED_AGE
            ):
                raise BadSignature(f"signed message sent more than {MAX_SIGNED_AGE:g} s from now (a replay?)")
        except BadSignature as e:
            self._counts["bad_signatures"] += 1
            self._complain("invalidation: ignored a message on {channel}: {why}",
                           channel=self.channel.decode("utf-8", "replace"), why=str(e)[:200])
            return
        except BadMessage as e:
            self._counts["ignored_messages"] += 1
            self._complain("invalidation: ignored a message on {channel}: {why}",
                           channel=self.channel.decode("utf-8", "replace"), why=str(e)[:200])
            return
        if batch.origin == self.origin_id:
            self._counts["skipped_own"] += 1
            return
        self._counts["received_batches"] += 1
        self._counts["applied_flushes"] += len(batch.flushes)
        self._counts["removed_entries"] += apply_batch_locally(batch.flushes, self.caches)

    def _on_reconnect(self) -> None:
        self._counts["resync_clears"] += 1
        removed = self._apply(self._resync) if self._resync is not None else 0
        self.log.info("invalidation: resubscribed to {channel}; cleared {removed} cached entries "
                      "(flushes may have been missed)",
                      channel=self.channel.decode("utf-8", "replace"), removed=removed)

    def _complain(self, fmt: str, **kw) -> None:
        """Log a warning, at most one every 10 seconds (a flood of bad messages must not flood the log)."""
        now = self._reactor.seconds()
        if self._last_complaint is not None and now - self._last_complaint < 10:
            return
        self._last_complaint = now
        self.log.warn(fmt, **kw)


def build_invalidator(config, caches, *, origin_id: str | None = None, backend=None, shared_store=None,
                      send: Callable[[Flush], defer.Deferred] | None = None, reactor,
                      signer: Signer | None = None):
    """
    The invalidator ``config`` (a :class:`~dnsgo.config.InvalidationConfig`)
    asks for: ``pubsub`` needs ``backend`` (and takes ``origin_id``, a
    unique one by default, and ``signer``), ``broadcast`` needs ``send``.
    A :class:`PubSubInvalidator` must be started (it is a service).
    """
    if config.strategy == "pubsub":
        if backend is None:
            raise ValueError("invalidation strategy 'pubsub' needs a Redis backend")
        ps = config.pubsub
        return PubSubInvalidator(
            caches, backend, ps.channel.encode("utf-8"), ps.batch_size, ps.batch_delay,
            origin_id or unique_origin_id(), shared_store=shared_store, reactor=reactor, signer=signer,
        )
    if config.strategy == "broadcast":
        if send is None:
            raise ValueError("invalidation strategy 'broadcast' needs the control plane's send")
        return BroadcastInvalidator(caches, send, shared_store=shared_store)
    return LocalInvalidator(caches, shared_store=shared_store)
