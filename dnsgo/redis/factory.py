"""
Build the shared-cache backend the configuration asks for: the circuit
breaker and the guard from the timeout and retry settings, then the
single-server, Sentinel or Cluster backend (the last two imported only when
used).
"""
from dnsgo.config import SharedCacheConfig
from dnsgo.redis.breaker import CircuitBreaker
from dnsgo.redis.guard import Guard


def build_guard(shared: SharedCacheConfig, reactor) -> Guard:
    """The guard (deadlines, retries with back-off, a fresh circuit breaker) from ``shared``."""
    breaker = CircuitBreaker(reactor=reactor)
    return Guard(
        breaker,
        read_timeout=shared.read_timeout,
        write_timeout=shared.write_timeout,
        max_retries=shared.max_retries,
        min_backoff=shared.min_retry_backoff,
        max_backoff=shared.max_retry_backoff,
        reactor=reactor,
    )


def build_backend(shared: SharedCacheConfig, password: str, reactor):
    """
    The :class:`~dnsgo.redis.backend.RedisBackend` for ``shared.type``
    ('redis', 'redis-sentinel' or 'redis-cluster'), not yet started.
    ``password`` is the resolved one (``dnsgo.config.secret_password``).
    """
    guard = build_guard(shared, reactor)
    if shared.type == "redis":
        from dnsgo.redis.single import SingleRedis

        return SingleRedis(
            (shared.address.host, shared.address.port),
            password=password,
            database=shared.database,
            pool_size=shared.pool_size,
            guard=guard,
            reactor=reactor,
        )
    if shared.type == "redis-sentinel":
        from dnsgo.redis.sentinel import SentinelRedis

        return SentinelRedis(
            shared.sentinel.master_name,
            [(a.host, a.port) for a in shared.sentinel.addresses],
            password=password,
            database=shared.database,
            pool_size=shared.pool_size,
            read_preference=shared.read_preference,
            guard=guard,
            reactor=reactor,
        )
    if shared.type == "redis-cluster":
        from dnsgo.redis.cluster import ClusterRedis

        return ClusterRedis(
            [(a.host, a.port) for a in shared.cluster_addresses],
            password=password,
            pool_size=shared.pool_size,
            read_preference=shared.read_preference,
            guard=guard,
            reactor=reactor,
        )
    raise ValueError(f"unknown shared cache type {shared.type!r}")
