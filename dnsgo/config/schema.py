"""
The schema: one frozen attrs class per YAML section (:class:`ServerConfig`,
:class:`CacheConfig`, ...) and :class:`Config` for the whole file.  Each
field is one setting, declared with its kind, default and one-line
description; the defaults (and :func:`default_shards` for shard counts)
live here too.
"""
from __future__ import annotations

import ipaddress
import os
from typing import Literal

import attrs

from dnsgo.config.addresses import Address, IPNetwork
from dnsgo.config.kinds import (
    _AddressKind,
    _Boolean,
    _Choice,
    _Duration,
    _Integer,
    _ListOf,
    _Network,
    _Number,
    _section,
    _setting,
    _String,
)

_LISTEN = _AddressKind(ip_only=True, listen=True)
_NO_NAMES = "dnsgo does not look up names to find its upstreams"
_TTL = _Integer(0, 2**31 - 1)

#: The shortest signing key accepted (characters).
MIN_SIGNING_KEY = 16

DEFAULT_ALLOW: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(network)
    for network in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                    "192.168.0.0/16", "fc00::/7", "fe80::/10")
)


def default_shards(per_cpu: int, cpu_count: int | None = None) -> int:
    """Return ``cpu_count * per_cpu`` rounded up to a power of two;
    ``cpu_count`` defaults to ``os.cpu_count()``."""
    if cpu_count is None:
        cpu_count = os.cpu_count() or 1
    wanted = max(1, cpu_count * per_cpu)
    return 1 << (wanted - 1).bit_length()


@attrs.frozen
class ServerConfig:
    """Where and how the DNS server listens, and whom it answers."""

    listen_address: Address = _setting(
        _LISTEN, Address("127.0.0.1", 5353),
        doc="IP address and port for DNS over UDP and TCP; ':53' means 0.0.0.0:53")
    num_workers: int = _setting(
        _Integer(1, 256), 1, doc="worker processes sharing the listen address (SO_REUSEPORT)")
    enable_tcp: bool = _setting(_Boolean(), True, doc="also serve DNS over TCP")
    allow: tuple[IPNetwork, ...] = _setting(
        _ListOf(_Network(), 1, "network"), DEFAULT_ALLOW,
        doc="client networks that get answers; others are refused")
    edns_udp_size: int = _setting(
        _Integer(512, 4096), 1232, doc="largest UDP reply, advertised in EDNS")
    tcp_idle_timeout: float = _setting(
        _Duration(positive=True), 10.0, doc="close idle TCP connections after this long")
    tcp_max_connections: int = _setting(
        _Integer(1), 1000, doc="open TCP connections per worker")
    worker_id: str = _setting(_String(), "", doc="name of this worker in the API and control plane")
    cluster_name: str = _setting(_String(), "", doc="name of this site/cluster in the API and control plane")


@attrs.frozen
class SocketPoolConfig:
    """The UDP sockets upstream queries go out on: fresh per question (0), or a pool per upstream."""

    sockets: int = _setting(
        _Integer(0, 1024), 0,
        doc="sockets per upstream, each on a random port (0: a fresh socket per question, the most entropy)")
    max_uses: int = _setting(_Integer(1), 1000, doc="a pooled socket is replaced after this many queries")
    max_age: float = _setting(_Duration(positive=True), 60.0, doc="or after this long")


@attrs.frozen
class UpstreamConfig:
    """How queries are forwarded to the upstream servers."""

    timeout: float = _setting(
        _Duration(positive=True, maximum=60.0), 1.0, doc="wait this long for an upstream reply")
    retries: int = _setting(_Integer(0, 5), 1, doc="extra attempts after a timeout")
    strategy: Literal["best", "parallel"] = _setting(
        _Choice(("best", "parallel")), "best",
        doc="'best': the upstream with the best RTT; 'parallel': several at once, first answer wins")
    parallel_count: int = _setting(
        _Integer(1), 2, doc="upstreams asked at once with strategy 'parallel'")
    tcp_fallback_after: int = _setting(
        _Integer(0, 100), 3,
        doc="after this many UDP losses in a row to one upstream, ask it over TCP (0: never)")
    socket_pool: SocketPoolConfig = _section(
        SocketPoolConfig, "the sockets upstream queries go out on (docs/upstream.md)")


def _eviction_setting():
    """``eviction`` of both local caches (the policies of dnsgo.cache.eviction, which config/ cannot import)."""
    return _setting(_Choice(("s3fifo", "lru")), "s3fifo", doc="eviction policy of each shard: 's3fifo' or 'lru'")


@attrs.frozen
class MessageCacheConfig:
    """The L1 cache of whole responses, local to each worker."""

    max_size_mb: int = _setting(_Integer(1, 1 << 20), 64, doc="size limit in MiB")
    num_shards: int = _setting(
        _Integer(1, 65536, power_of_two=True), factory=lambda: default_shards(4),
        doc="shards (a power of two); default CPUs x 4 rounded up")
    min_ttl: int = _setting(_TTL, 0, doc="raise shorter TTLs to this many seconds")
    max_ttl: int = _setting(_TTL, 86400, doc="cap longer TTLs at this many seconds")
    eviction: Literal["s3fifo", "lru"] = _eviction_setting()


@attrs.frozen
class RRsetCacheConfig:
    """The local L2 cache of RRsets."""

    max_size_mb: int = _setting(_Integer(1, 1 << 20), 128, doc="size limit in MiB")
    num_shards: int = _setting(
        _Integer(1, 65536, power_of_two=True), factory=lambda: default_shards(8),
        doc="shards (a power of two); default CPUs x 8 rounded up")
    eviction: Literal["s3fifo", "lru"] = _eviction_setting()


@attrs.frozen
class SentinelConfig:
    """Where the Redis Sentinels are and which master they watch."""

    master_name: str = _setting(_String(non_empty=True), "dns-cache", doc="the master's name in Sentinel")
    addresses: tuple[Address, ...] = _setting(
        _ListOf(_AddressKind(default_port=26379), noun="address"), (),
        doc="Sentinel host:port list (port 26379 when left out)")


@attrs.frozen
class PasswordSecretConfig:
    """Where to read the Redis password from instead of the config file."""

    name: str = _setting(_String(), "", doc="Kubernetes secret name (a directory under 'directory')")
    key: str = _setting(_String(), "", doc="key inside the secret (a file in that directory)")
    file: str = _setting(_String(), "", doc="a file holding the password")
    directory: str = _setting(
        _String(non_empty=True), "/var/run/secrets/dnsgo", doc="where secrets are mounted")


@attrs.frozen
class SharedCacheConfig:
    """The Redis-backed shared L2 cache (mode 'hybrid')."""

    enabled: bool = _setting(_Boolean(), False, doc="use Redis as the L2 cache")
    type: Literal["redis", "redis-sentinel", "redis-cluster"] = _setting(
        _Choice(("redis", "redis-sentinel", "redis-cluster")), "redis", doc="how Redis is deployed")
    address: Address = _setting(
        _AddressKind(default_port=6379), Address("127.0.0.1", 6379),
        doc="single Redis host:port (type 'redis')")
    sentinel: SentinelConfig = _section(SentinelConfig, "Sentinel settings (type 'redis-sentinel')")
    cluster_addresses: tuple[Address, ...] = _setting(
        _ListOf(_AddressKind(default_port=6379), noun="address"), (),
        doc="seed nodes (type 'redis-cluster')")
    database: int = _setting(_Integer(0, 15), 0, doc="Redis database number")
    password: str = _setting(_String(), "", doc="Redis password (hidden from repr)", secret=True)
    password_secret: PasswordSecretConfig = _section(
        PasswordSecretConfig, "read the password from a file or mounted secret")
    key_prefix: str = _setting(_String(), "dns:", doc="prefix of every key dnsgo writes")
    signing_key: str = _setting(
        _String(), "",
        doc=f"HMAC-SHA256 key signing shared values and invalidation messages, at least "
            f"{MIN_SIGNING_KEY} characters (hidden from repr); unset, Redis is trusted", secret=True)
    signing_key_file: str = _setting(_String(), "", doc="a file holding the signing key")
    ttl_multiplier: float = _setting(
        _Number(1.0, 100.0), 1.5, doc="Redis expiry = DNS TTL x this (room for serve-stale)")
    pool_size: int = _setting(_Integer(1, 10000), 10, doc="connections per worker")
    min_idle_conns: int = _setting(_Integer(0, 10000), 5, doc="connections kept open when idle")
    max_retries: int = _setting(_Integer(0, 100), 3, doc="retries of a failed command")
    min_retry_backoff: float = _setting(_Duration(), 0.008, doc="first retry delay")
    max_retry_backoff: float = _setting(_Duration(), 0.512, doc="longest retry delay")
    read_timeout: float = _setting(
        _Duration(positive=True, maximum=60.0), 0.5, doc="a slower reply counts as a miss")
    write_timeout: float = _setting(
        _Duration(positive=True, maximum=60.0), 0.5, doc="give up writing after this long")
    read_preference: Literal["master", "replica", "replicaPreferred"] = _setting(
        _Choice(("master", "replica", "replicaPreferred")), "master",
        doc="where reads go (replicas only with sentinel/cluster)")


@attrs.frozen
class PrefetchConfig:
    """Refreshing popular entries before they expire."""

    enabled: bool = _setting(_Boolean(), True, doc="refresh popular entries early")
    threshold_hits: int = _setting(_Integer(1), 100, doc="hits needed before an entry is prefetched")
    threshold_ttl_pct: int = _setting(
        _Integer(1, 99), 10, doc="prefetch when less than this % of the TTL remains")


@attrs.frozen
class NegativeCacheConfig:
    """Caching NXDOMAIN and NODATA answers (RFC 2308)."""

    enabled: bool = _setting(_Boolean(), True, doc="cache negative answers")
    ttl: int = _setting(_TTL, 3600, doc="upper bound on a negative answer's TTL, in seconds")


@attrs.frozen
class ServeStaleConfig:
    """Answering from expired data when upstreams fail (RFC 8767)."""

    enabled: bool = _setting(_Boolean(), False, doc="serve expired data when a refresh fails")
    max_stale: float = _setting(_Duration(), 86400.0, doc="how long past expiry data may be served")
    answer_ttl: int = _setting(_Integer(0, 3600), 30, doc="TTL of stale answers, in seconds")
    client_timeout: float = _setting(
        _Duration(positive=True, maximum=60.0), 1.8,
        doc="answer stale data after waiting this long for upstreams")


@attrs.frozen
class PubSubConfig:
    """Redis pub/sub invalidation messages."""

    channel: str = _setting(_String(non_empty=True), "dns:invalidate", doc="Redis channel")
    batch_size: int = _setting(_Integer(1, 100000), 100, doc="names per message")
    batch_delay: float = _setting(_Duration(), 0.1, doc="wait this long to fill a batch")


@attrs.frozen
class InvalidationConfig:
    """How a cache clear reaches the other workers."""

    strategy: Literal["local-only", "pubsub", "broadcast"] = _setting(
        _Choice(("local-only", "pubsub", "broadcast")), "local-only",
        doc="'local-only', 'pubsub' (Redis) or 'broadcast' (control plane)")
    pubsub: PubSubConfig = _section(PubSubConfig, "settings for strategy 'pubsub'")


@attrs.frozen
class CacheConfig:
    """The cache layers and how they are deployed."""

    mode: Literal["standalone", "local-only", "hybrid"] = _setting(
        _Choice(("standalone", "local-only", "hybrid")), "standalone",
        doc="'standalone', 'local-only', or 'hybrid' (shared L2 in Redis)")
    message_cache: MessageCacheConfig = _section(MessageCacheConfig, "L1 message cache")
    rrset_cache: RRsetCacheConfig = _section(RRsetCacheConfig, "local L2 RRset cache")
    shared_cache: SharedCacheConfig = _section(SharedCacheConfig, "shared L2 in Redis")
    prefetch: PrefetchConfig = _section(PrefetchConfig, "prefetching")
    negative_cache: NegativeCacheConfig = _section(NegativeCacheConfig, "negative caching")
    serve_stale: ServeStaleConfig = _section(ServeStaleConfig, "serving stale data")
    invalidation: InvalidationConfig = _section(InvalidationConfig, "invalidation")
    persist_path: str = _setting(
        _String(), "",
        doc="file a worker writes its L2 to on a clean stop and loads at start ('': none); "
            "'{worker_id}' in it is replaced by the worker id")


@attrs.frozen
class ControlConfig:
    """The control plane that workers report to."""

    grpc_address: Address = _setting(
        _LISTEN, Address("127.0.0.1", 9090), doc="control channel listen address")
    heartbeat_timeout: float = _setting(
        _Duration(positive=True), 30.0, doc="a worker silent this long is gone")


@attrs.frozen
class QuorumConfig:
    """How control planes agree which of them is active."""

    type: Literal["worker_witness", "none"] = _setting(
        _Choice(("worker_witness", "none")), "worker_witness", doc="quorum method")
    minimum: int = _setting(_Integer(1), 3, doc="witnessing workers needed")
    min_clusters_required: int = _setting(_Integer(1), 2, doc="sites those workers must span")


@attrs.frozen
class HAConfig:
    """Control-plane high availability across sites."""

    enabled: bool = _setting(_Boolean(), False, doc="run control planes as an HA group")
    mode: Literal["active_passive", "active_active"] = _setting(
        _Choice(("active_passive", "active_active")), "active_passive", doc="HA mode")
    node_id: str = _setting(
        _String(), "", doc="this control plane's name in votes and leases (default: site/host:port)")
    peers: tuple[Address, ...] = _setting(
        _ListOf(_AddressKind(), noun="address"), (),
        doc="the other control planes' control addresses (shown in /api/ha)")
    priority: int = _setting(
        _Integer(0, 1000), 0, doc="the lower campaigns first when no leader is seen ($HA_PRIORITY wins)")
    lease_duration: float = _setting(
        _Duration(positive=True, maximum=3600.0), 15.0,
        doc="how long a worker's promise to the leader lasts after its last acknowledged renewal")
    renew_deadline: float = _setting(
        _Duration(positive=True, maximum=3600.0), 10.0,
        doc="the leader steps down without a quorum of renewals for this long")
    retry_period: float = _setting(
        _Duration(positive=True, maximum=3600.0), 2.0, doc="how often the leader renews and candidates retry")
    state_dir: str = _setting(
        _String(), "", doc="where a worker keeps its vote and lease promise ('' : in memory only)")
    quorum: QuorumConfig = _section(QuorumConfig, "quorum settings")


@attrs.frozen
class ApiConfig:
    """The HTTP management API."""

    enabled: bool = _setting(_Boolean(), True, doc="serve the management API")
    listen_address: Address = _setting(
        _LISTEN, Address("127.0.0.1", 8080), doc="HTTP listen address")
    auth_token: str = _setting(_String(), "", doc="bearer token (hidden from repr)", secret=True)
    auth_token_file: str = _setting(_String(), "", doc="file holding the bearer token")
    max_load_mb: float = _setting(
        _Number(0.0625, 4096), 64.0, doc="the largest cache dump POST /api/cache/load takes (MiB)")


@attrs.frozen
class LoggingConfig:
    """What is logged and how."""

    level: Literal["debug", "info", "warning", "error"] = _setting(
        _Choice(("debug", "info", "warning", "error")), "info", doc="lowest level logged")
    format: Literal["text", "json"] = _setting(_Choice(("text", "json")), "text", doc="line format")
    query_log: bool = _setting(_Boolean(), False, doc="log every query")


@attrs.frozen
class Config:
    """The whole dnsgo configuration.  Built in code, ``upstreams`` defaults
    to 127.0.0.1:53; the loader uses /etc/resolv.conf when the key is absent."""

    server: ServerConfig = _section(ServerConfig, "the DNS listener")
    upstreams: tuple[Address, ...] = _setting(
        _ListOf(_AddressKind(default_port=53, ip_only=True, why=_NO_NAMES), 1, "upstream"),
        (Address("127.0.0.1", 53),),
        doc="upstream servers, IP[:port]; default: nameservers of /etc/resolv.conf")
    upstream: UpstreamConfig = _section(UpstreamConfig, "forwarding behaviour")
    cache: CacheConfig = _section(CacheConfig, "caches")
    control: ControlConfig = _section(ControlConfig, "control plane")
    high_availability: HAConfig = _section(HAConfig, "control-plane HA")
    api: ApiConfig = _section(ApiConfig, "management API")
    logging: LoggingConfig = _section(LoggingConfig, "logging")
