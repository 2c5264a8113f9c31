"""
The rules that involve more than one setting (``min_ttl`` against
``max_ttl``, the cache mode against the shared cache, where a secret comes
from, listeners that would clash...), all in one place: :func:`_conflicts`.

Each problem comes with the settings it involves, so that the loader reports
it only when none of them was already reported as invalid.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from dnsgo.config.addresses import Address
from dnsgo.config.errors import Problem
from dnsgo.config.schema import MIN_SIGNING_KEY, Config, SharedCacheConfig


def consistency_problems(config: Config) -> list[Problem]:
    """Return the problems that involve more than one setting of ``config``."""
    return [problem for problem, _ in _conflicts(config)]


def _conflict(path: str, message: str, *others: str) -> tuple[Problem, tuple[str, ...]]:
    """A cross-setting problem reported at ``path`` that also involves ``others``."""
    return Problem(path, message), (path, *others)


def _conflicts(config: Config) -> Iterator[tuple[Problem, tuple[str, ...]]]:
    """Every check that involves more than one setting, in one place.  Each
    problem comes with the paths it involves, so the loader can skip it when
    one of those settings was already reported as invalid."""
    cache = config.cache
    shared = cache.shared_cache
    l1 = cache.message_cache
    if l1.min_ttl > l1.max_ttl:
        yield _conflict("cache.message_cache.min_ttl",
                        f"must not exceed max_ttl ({l1.max_ttl}); got {l1.min_ttl}",
                        "cache.message_cache.max_ttl")
    if cache.mode == "hybrid" and not shared.enabled:
        yield _conflict("cache.mode", "'hybrid' needs cache.shared_cache.enabled: true",
                        "cache.shared_cache.enabled")
    if shared.enabled and cache.mode != "hybrid":
        yield _conflict("cache.shared_cache.enabled",
                        f"the shared cache is used only with cache.mode 'hybrid' (mode is '{cache.mode}')",
                        "cache.mode")
    if shared.type == "redis-sentinel" and not shared.sentinel.addresses:
        yield _conflict("cache.shared_cache.sentinel.addresses",
                        "must list at least one sentinel when type is 'redis-sentinel'",
                        "cache.shared_cache.type")
    if shared.type == "redis-cluster" and not shared.cluster_addresses:
        yield _conflict("cache.shared_cache.cluster_addresses",
                        "must list at least one node when type is 'redis-cluster'",
                        "cache.shared_cache.type")
    if shared.type == "redis-cluster" and shared.database != 0:
        yield _conflict("cache.shared_cache.database",
                        f"Redis Cluster has only database 0; got {shared.database}",
                        "cache.shared_cache.type")
    if shared.read_preference != "master" and shared.type == "redis":
        yield _conflict("cache.shared_cache.read_preference",
                        f"'{shared.read_preference}' needs type 'redis-sentinel' or 'redis-cluster'",
                        "cache.shared_cache.type")
    if shared.min_retry_backoff > shared.max_retry_backoff:
        yield _conflict("cache.shared_cache.min_retry_backoff",
                        f"must not exceed max_retry_backoff ({shared.max_retry_backoff:g}s); "
                        f"got {shared.min_retry_backoff:g}s",
                        "cache.shared_cache.max_retry_backoff")
    if shared.min_idle_conns > shared.pool_size:
        yield _conflict("cache.shared_cache.min_idle_conns",
                        f"must not exceed pool_size ({shared.pool_size}); got {shared.min_idle_conns}",
                        "cache.shared_cache.pool_size")
    yield from _secret_conflicts(shared)
    if cache.persist_path and config.server.num_workers > 1 and "{worker_id}" not in cache.persist_path:
        yield _conflict("cache.persist_path",
                        f"must contain {{worker_id}} when server.num_workers is {config.server.num_workers} "
                        "(each worker writes its own file)",
                        "server.num_workers")
    if cache.invalidation.strategy == "pubsub" and cache.mode != "hybrid":
        yield _conflict("cache.invalidation.strategy",
                        f"'pubsub' needs cache.mode 'hybrid' (mode is '{cache.mode}')",
                        "cache.mode")
    ha = config.high_availability
    if ha.renew_deadline >= ha.lease_duration:
        yield _conflict("high_availability.renew_deadline",
                        f"must be shorter than lease_duration ({ha.lease_duration:g}s); got {ha.renew_deadline:g}s",
                        "high_availability.lease_duration")
    if ha.retry_period >= ha.renew_deadline:
        yield _conflict("high_availability.retry_period",
                        f"must be shorter than renew_deadline ({ha.renew_deadline:g}s); got {ha.retry_period:g}s",
                        "high_availability.renew_deadline")
    if config.api.auth_token and config.api.auth_token_file:
        yield _conflict("api.auth_token_file", "set either auth_token or auth_token_file, not both",
                        "api.auth_token")
    yield from _listener_conflicts(config)


def _secret_conflicts(shared: SharedCacheConfig) -> Iterator[tuple[Problem, tuple[str, ...]]]:
    """The password may come from one place only, and a secret needs name and key."""
    secret = shared.password_secret
    base = "cache.shared_cache.password_secret"
    from_secret = bool(secret.file or secret.name or secret.key)
    if shared.password and from_secret:
        yield _conflict(base, "set either password or password_secret, not both",
                        "cache.shared_cache.password")
    if secret.file and (secret.name or secret.key):
        yield _conflict(f"{base}.file", "set either file or name and key, not both",
                        f"{base}.name", f"{base}.key")
    elif bool(secret.name) != bool(secret.key):
        missing = "key" if secret.name else "name"
        yield _conflict(f"{base}.{missing}", "name and key must be given together",
                        f"{base}.name", f"{base}.key")
    if shared.signing_key and shared.signing_key_file:
        yield _conflict("cache.shared_cache.signing_key_file",
                        "set either signing_key or signing_key_file, not both",
                        "cache.shared_cache.signing_key")
    if shared.signing_key and len(shared.signing_key) < MIN_SIGNING_KEY:
        yield _conflict("cache.shared_cache.signing_key",
                        f"must be at least {MIN_SIGNING_KEY} characters; got {len(shared.signing_key)}")


def _listener_conflicts(config: Config) -> Iterator[tuple[Problem, tuple[str, ...]]]:
    """Forwarding to ourselves would loop; two TCP listeners cannot share a port."""
    listen = config.server.listen_address
    for index, upstream in enumerate(config.upstreams):
        if _same_socket(listen, upstream):
            yield _conflict(f"upstreams[{index}]",
                            f"{upstream} is this server's own listen address (a forwarding loop)",
                            "upstreams", "server.listen_address")
    if config.api.enabled and config.server.enable_tcp and _clash(listen, config.api.listen_address):
        yield _conflict("api.listen_address",
                        f"{config.api.listen_address} is also server.listen_address",
                        "server.listen_address")


def _same_socket(listen: Address, other: Address) -> bool:
    """Whether ``other`` reaches the socket bound to ``listen``."""
    if listen.port != other.port or listen.port == 0:
        return False
    if listen.host == other.host:
        return True
    bound = ipaddress.ip_address(listen.host)
    try:
        target = ipaddress.ip_address(other.host)
    except ValueError:
        return False
    return bound.is_unspecified and target.is_loopback


def _clash(one: Address, other: Address) -> bool:
    """Whether two listen addresses would fight over one TCP port."""
    if one.port != other.port or one.port == 0:
        return False
    unspecified = ipaddress.ip_address(one.host).is_unspecified or ipaddress.ip_address(other.host).is_unspecified
    return one.host == other.host or unspecified


def _overlaps(a: str, b: str) -> bool:
    """Whether two setting paths are the same or one contains the other."""
    if a == b:
        return True
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer.startswith(shorter) and longer[len(shorter)] in ".["


def _conflicts_beyond(config: Config, invalid: list[str]) -> Iterator[Problem]:
    """The cross-setting problems of ``config`` that involve none of the
    settings at the paths ``invalid`` (already reported as invalid, and so
    left at their defaults)."""
    for problem, involved in _conflicts(config):
        if not any(_overlaps(path, bad) for path in involved for bad in invalid):
            yield problem
