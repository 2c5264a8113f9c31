"""
The dnsgo configuration: one frozen attrs class per YAML section, and the
loader that turns YAML into a validated :class:`Config`.

Each setting is declared once, as an attrs field that carries its *kind* (how
a raw YAML value is parsed and checked) and a one-line description.  One
generic builder walks those declarations, so adding a setting means adding a
field.  Checks that involve more than one setting live in one place,
:mod:`dnsgo.config.rules`.  Every problem is collected and
:class:`ConfigError` reports them all at once.

Reading secrets (:func:`secret_password`, :func:`api_token`,
:func:`signing_key`) touches files, so it is kept apart from parsing and
done when the services start.

The modules, each importing only from those above it:

- :mod:`~dnsgo.config.errors`: :class:`Problem` and :class:`ConfigError`;
- :mod:`~dnsgo.config.durations`: ``30s``, ``500ms``, ``1h30m``;
- :mod:`~dnsgo.config.addresses`: :class:`Address`, :func:`parse_address`,
  :func:`resolv_conf_nameservers`;
- :mod:`~dnsgo.config.reading`: the state of one parse (environment, problems);
- :mod:`~dnsgo.config.interpolate`: ``${VAR}`` and ``${VAR:-default}``;
- :mod:`~dnsgo.config.kinds`: the value kinds, the setting declarations and
  the generic section builder;
- :mod:`~dnsgo.config.schema`: the section classes and their defaults;
- :mod:`~dnsgo.config.rules`: the checks across settings;
- :mod:`~dnsgo.config.load`: :func:`parse_config` and :func:`load_config`;
- :mod:`~dnsgo.config.secrets`: passwords, keys and tokens read at start.

This package re-exports the public names, so ``from dnsgo.config import X``
is the way to use them.
"""
from __future__ import annotations

from dnsgo.config.addresses import (
    DEFAULT_RESOLV_CONF,
    Address,
    IPNetwork,
    parse_address,
    resolv_conf_nameservers,
)
from dnsgo.config.errors import ConfigError, Problem
from dnsgo.config.load import load_config, parse_config
from dnsgo.config.rules import consistency_problems
from dnsgo.config.schema import (
    DEFAULT_ALLOW,
    MIN_SIGNING_KEY,
    ApiConfig,
    CacheConfig,
    Config,
    ControlConfig,
    HAConfig,
    InvalidationConfig,
    LoggingConfig,
    MessageCacheConfig,
    NegativeCacheConfig,
    PasswordSecretConfig,
    PrefetchConfig,
    PubSubConfig,
    QuorumConfig,
    RRsetCacheConfig,
    SentinelConfig,
    ServeStaleConfig,
    ServerConfig,
    SharedCacheConfig,
    SocketPoolConfig,
    UpstreamConfig,
    default_shards,
)
from dnsgo.config.secrets import api_token, secret_password, signing_key

__all__ = [
    # errors
    "ConfigError",
    "Problem",
    # addresses
    "DEFAULT_RESOLV_CONF",
    "Address",
    "IPNetwork",
    "parse_address",
    "resolv_conf_nameservers",
    # schema
    "DEFAULT_ALLOW",
    "MIN_SIGNING_KEY",
    "ApiConfig",
    "CacheConfig",
    "Config",
    "ControlConfig",
    "HAConfig",
    "InvalidationConfig",
    "LoggingConfig",
    "MessageCacheConfig",
    "NegativeCacheConfig",
    "PasswordSecretConfig",
    "PrefetchConfig",
    "PubSubConfig",
    "QuorumConfig",
    "RRsetCacheConfig",
    "SentinelConfig",
    "ServeStaleConfig",
    "ServerConfig",
    "SharedCacheConfig",
    "SocketPoolConfig",
    "UpstreamConfig",
    "default_shards",
    # rules
    "consistency_problems",
    # load
    "load_config",
    "parse_config",
    # secrets
    "api_token",
    "secret_password",
    "signing_key",
]
