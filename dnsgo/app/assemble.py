"""
Building one serving process: the caches, the resolver chain, the listeners,
the invalidator and (in hybrid mode) the shared cache, under a
:class:`ServerRoot`.  The roles (:mod:`dnsgo.app.roles`) put these roots
together with the control plane and the management API.
"""
import os

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from dnsgo.app.identity import Identity, default_worker_id, now_wall


class Caches:
    """The local caches of one server process: L1 messages, L2 RRsets, remembered failures."""

    def __init__(self, messages, rrsets, negative_ttl: int, failures=None) -> None:
        self.messages = messages
        self.rrsets = rrsets
        self.negative_ttl = negative_ttl
        self.failures = failures


def build_caches(cache_config, on_prefetch=None, reactor=None) -> Caches:
    """L1 and L2 per the ``cache`` section (negative caching off means a 0 s negative TTL)."""
    from dnsgo.upstream.failures import FailureCache
    from dnsgo.cache.message import MessageCache
    from dnsgo.cache.rrset import RRsetCache

    neg = cache_config.negative_cache.ttl if cache_config.negative_cache.enabled else 0
    mc, rc = cache_config.message_cache, cache_config.rrset_cache
    pf, stale = cache_config.prefetch, cache_config.serve_stale
    messages = MessageCache(
        max_size_mb=mc.max_size_mb,
        num_shards=mc.num_shards,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        max_stale=stale.max_stale if stale.enabled else 0.0,
        prefetch_hits=pf.threshold_hits if pf.enabled else None,
        prefetch_ttl_pct=pf.threshold_ttl_pct,
        on_prefetch=on_prefetch,
        reactor=reactor,
    )
    rrsets = RRsetCache(
        max_size_mb=rc.max_size_mb,
        num_shards=rc.num_shards,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        reactor=reactor,
    )
    return Caches(messages, rrsets, neg, FailureCache(reactor=reactor))


class ServerRoot(service.MultiService):
    """
    One serving dnsgo process: its child services plus the parts the
    management API, the control client and tests look at.

    Attached to a twistd application, it installs the ``logging`` section's
    observer there, which twistd then uses.
    """

    log = Logger()

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.infra = self.pool = self.handler = self.caches = None
        self.identity: Identity | None = None
        self.dns_service = None
        self.invalidator = None
        self.backend = None
        self.shared_store = None

    def setServiceParent(self, parent):
        from dnsgo.app.logs import install_observer

        install_observer(parent, self.config.logging)
        return super().setServiceParent(parent)

    def shared_snapshot(self) -> dict | None:
        """The shared cache's part of the stats snapshot (None outside hybrid mode)."""
        if self.backend is None:
            return None
        import attrs

        status = attrs.asdict(self.backend.status())
        stats = attrs.asdict(self.shared_store.stats()) if self.shared_store is not None else {}
        return {**status, **stats}

    def invalidation_snapshot(self) -> dict:
        """The invalidator's counters for the snapshot."""
        import attrs

        return attrs.asdict(self.invalidator.stats())

    def shared_cache_status(self) -> defer.Deferred:
        """The API's ``sharedCache`` object, or None outside hybrid mode."""
        from dnsgo.api.shared_status import shared_cache_status

        return shared_cache_status(self.config, self.backend, self.shared_store)

    def clear_local(self, flush) -> int:
        """Apply ``flush`` to this process's L1 and/or L2 (no shared store, no publishing)."""
        from dnsgo.invalidation.flush import apply_locally

        return apply_locally(flush, self.caches)

    def clear_caches(self, target, flush) -> defer.Deferred:
        """
        The API's clear for a single process: ``all`` goes through the
        invalidator (so pub/sub peers and the shared store hear of it),
        ``worker`` clears this process only, ``shared`` the shared store only.
        Fires with {results, sharedCleared}.
        """
        from dnsgo.invalidation.flush import apply_locally, flush_shared
        from dnsgo.invalidation.strategies import SharedFlushFailed

        mine = [{"workerId": self.identity.worker_id, "success": True, "cleared": sorted(flush.caches)}]
        if target == "shared":
            d = flush_shared(self.shared_store, flush)
            d.addCallback(lambda cleared: {"results": [], "sharedCleared": cleared})
            return d
        if target == "worker":
            apply_locally(flush, self.caches)
            return defer.succeed({"results": mine, "sharedCleared": False})
        shared_wanted = self.shared_store is not None and "rrset" in flush.caches
        d = self.invalidator.invalidate(flush)

        def failed(failure):
            failure.trap(SharedFlushFailed)
            return {"results": mine, "sharedCleared": False}

        d.addCallbacks(lambda _: {"results": mine, "sharedCleared": shared_wanted}, failed)
        return d


def identity_for(config, environ=None) -> Identity:
    """This process's worker id, cluster name and DNS address."""
    environ = os.environ if environ is None else environ
    return Identity(
        worker_id=config.server.worker_id or environ.get("WORKER_ID", "") or default_worker_id(),
        cluster_name=config.server.cluster_name or environ.get("SITE_ID", ""),
        address=str(config.server.listen_address),
        started_at=now_wall(),
    )


def _no_peers(flush) -> defer.Deferred:
    """Broadcast from a process with no control plane: there is nobody to tell."""
    return defer.succeed(None)


def build_service(config, reactor=None, reuse_port: bool = False, environ=None, broadcast=None) -> ServerRoot:
    """
    The whole server for ``config``: DNS listeners over the resolver chain
    with L1, L2 (local, or local + Redis in hybrid mode) and the forwarder.
    ``reuse_port`` lets several worker processes share the listen address;
    ``broadcast(flush)`` hands flushes to the control plane (strategy
    ``broadcast``; a process without one has no peers to tell).
    """
    from dnsgo.serve.acl import ClientFilter
    from dnsgo.upstream.infra import InfraCache
    from dnsgo.resolve.l2 import RRsetResolver, fill_from_reply
    from dnsgo.serve.handler import QueryHandler
    from dnsgo.invalidation.strategies import build_invalidator, unique_origin_id
    from dnsgo.resolve.chain import Chain
    from dnsgo.resolve.forwarding import ForwardingResolver
    from dnsgo.serve.listeners import DNSService
    from dnsgo.upstream.pool import UpstreamPool

    root = ServerRoot(config)
    root.identity = identity_for(config, environ)
    infra = InfraCache([(a.host, a.port) for a in config.upstreams], reactor=reactor)
    up = config.upstream
    pool = UpstreamPool(
        infra,
        timeout=up.timeout,
        retries=up.retries,
        strategy=up.strategy,
        parallel_count=up.parallel_count,
        udp_size=config.server.edns_udp_size,
        reactor=reactor,
    )
    caches = build_caches(config.cache, on_prefetch=lambda q: root.handler.prefetch(q), reactor=reactor)
    signer = None
    if config.cache.mode == "hybrid":
        from dnsgo.resolve.hybrid import HybridRRsetResolver, fill_hybrid

        signer = shared_signer(config)
        root.backend, root.shared_store = build_shared(config, signer, reactor=reactor)
        l2 = HybridRRsetResolver(caches.rrsets, root.shared_store)
        on_reply = fill_hybrid(caches.rrsets, root.shared_store)
        root.addService(_BackendService(root.backend))
    else:
        l2 = RRsetResolver(caches.rrsets)
        on_reply = fill_from_reply(caches.rrsets)
    forwarder = ForwardingResolver(pool, on_reply=on_reply, failures=caches.failures)
    handler = QueryHandler(
        Chain([l2, forwarder]),
        ClientFilter(config.server.allow),
        edns_udp_size=config.server.edns_udp_size,
        message_cache=caches.messages,
        refresher=forwarder,
        serve_stale=config.cache.serve_stale,
        negative_ttl=caches.negative_ttl,
        max_ttl=config.cache.message_cache.max_ttl,
        query_log=config.logging.query_log,
        reactor=reactor,
    )
    root.invalidator = build_invalidator(
        config.cache.invalidation,
        caches,
        origin_id=unique_origin_id(root.identity.worker_id),
        backend=root.backend,
        shared_store=root.shared_store,
        send=broadcast or _no_peers,
        reactor=reactor,
        signer=signer,
    )
    if isinstance(root.invalidator, service.Service):
        root.invalidator.setServiceParent(root)
    listen = config.server.listen_address
    dns_service = DNSService(
        handler,
        listen.host,
        listen.port,
        enable_tcp=config.server.enable_tcp,
        reuse_port=reuse_port,
        tcp_idle_timeout=config.server.tcp_idle_timeout,
        tcp_max_connections=config.server.tcp_max_connections,
        reactor=reactor,
    )
    dns_service.setName("dns")
    dns_service.setServiceParent(root)
    root.dns_service = dns_service
    root.infra = infra
    root.pool = pool
    root.handler = handler
    root.caches = caches
    return root


def shared_signer(config):
    """The :class:`~dnsgo.cache.signing.Signer` of ``cache.shared_cache.signing_key`` (or its file), or None."""
    from dnsgo.config import signing_key
    from dnsgo.cache.signing import Signer

    key = signing_key(config.cache.shared_cache)
    return Signer(key) if key else None


def build_shared(config, signer=None, reactor=None):
    """The Redis backend and the shared RRset store of hybrid mode (values signed by ``signer``, if any)."""
    from dnsgo.cache.shared import SharedRRsetStore
    from dnsgo.config import secret_password
    from dnsgo.redis.factory import build_backend

    shared = config.cache.shared_cache
    mc = config.cache.message_cache
    backend = build_backend(shared, secret_password(shared), reactor=reactor)
    neg = config.cache.negative_cache.ttl if config.cache.negative_cache.enabled else 0
    store = SharedRRsetStore(
        backend,
        key_prefix=shared.key_prefix,
        ttl_multiplier=shared.ttl_multiplier,
        min_ttl=mc.min_ttl,
        max_ttl=mc.max_ttl,
        negative_ttl=neg,
        signer=signer,
        reactor=reactor,
    )
    return backend, store


class _BackendService(service.Service):
    """Starts and stops a Redis backend with the process (start never fails)."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def startService(self) -> None:
        super().startService()
        self._backend.start()

    def stopService(self):
        super().stopService()
        return self._backend.stop()
