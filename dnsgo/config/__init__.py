"""
The dnsgo configuration: one frozen attrs class per YAML section, and the
loader that turns YAML into a validated :class:`Config`.

Each setting is declared once, as an attrs field that carries its *kind* (how
a raw YAML value is parsed and checked) and a one-line description.  One
generic builder walks those declarations, so adding a setting means adding a
field.  Checks that involve more than one setting live in one function,
:func:`consistency_problems`.  Every problem is collected and
:class:`ConfigError` reports them all at once.

Reading secrets (:func:`secret_password`, :func:`api_token`) touches files, so
it is kept apart from parsing and done when the services start.
"""
from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union

import attrs
import yaml

from dnsgo.config.durations import EXAMPLES as _DURATION_EXAMPLES
from dnsgo.config.durations import parse_duration

DEFAULT_RESOLV_CONF = "/etc/resolv.conf"

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


# --------------------------------------------------------------------------
# Problems


@attrs.frozen
class Problem:
    """One thing wrong with a configuration: where it is (a dotted path such
    as ``cache.message_cache.num_shards`` or ``upstreams[1]``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem], source: str = "<config>") -> None:
        super().__init__(list(problems), source)
        self.problems = list(problems)
        self.source = source

    def report(self) -> str:
        """Return the problems for people: a heading line, then one problem a line."""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"config error in {self.source}: {count} {noun}"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# --------------------------------------------------------------------------
# Addresses


@attrs.frozen
class Address:
    """A host and a port.  ``host`` is a normalised IP literal, or (only for
    Redis and Sentinel addresses) a lower-cased host name."""

    host: str = attrs.field(validator=attrs.validators.instance_of(str))
    port: int = attrs.field(validator=attrs.validators.instance_of(int))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_HOSTNAME_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


def parse_address(
    text: str,
    *,
    default_port: int | None = None,
    ip_only: bool = False,
    listen: bool = False,
) -> Address:
    """
    Parse ``host:port``, ``[ipv6]:port``, or (when ``default_port`` is given)
    a bare host or IPv6 literal, into an :class:`Address`.

    ``listen`` marks an address to bind: the host must be an IP literal, it
    may be empty (``":53"`` means ``0.0.0.0:53``) or unspecified, and port 0
    (pick a free port) is allowed.  ``ip_only`` refuses host names.  Raises
    ValueError with a message for people.
    """
    text = text.strip()
    if not text:
        raise ValueError("is empty; expected host:port")
    host, port_text = _split_host_port(text, default_port is not None)
    if port_text is None:
        port = default_port
    else:
        port = _parse_port(port_text, text, listen)
    if host == "":
        if not listen:
            raise ValueError(f"{text!r} has no host")
        host = "0.0.0.0"
    ip = _ip_literal(host, text)
    if ip is None:
        if ip_only or listen:
            what = "a listen address" if listen else "this address"
            raise ValueError(
                f"{text!r}: {what} must use an IP address, not a name such as {host!r}"
            )
        return Address(_hostname(host, text), port)
    if ip.is_unspecified and not listen:
        raise ValueError(f"{text!r}: {ip} is not a destination")
    return Address(str(ip), port)


def _split_host_port(text: str, port_optional: bool) -> tuple[str, str | None]:
    """Split an address into host and port text (None when absent)."""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"{text!r} has '[' without ']'")
        host, rest = text[1:close], text[close + 1 :]
        if ":" not in host:
            raise ValueError(f"{text!r}: brackets are only for IPv6 addresses")
        if rest == "" and port_optional:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"{text!r} has no port; expected [{host}]:PORT")
        return host, rest[1:]
    if text.count(":") > 1:
        if not port_optional:
            raise ValueError(
                f"{text!r}: write an IPv6 address with its port in brackets, "
                f"as in [2001:db8::1]:53"
            )
        return text, None
    host, colon, port_text = text.rpartition(":")
    if not colon:
        if not port_optional:
            raise ValueError(f"{text!r} has no port; expected host:port")
        return text, None
    return host, port_text


def _parse_port(port_text: str, text: str, listen: bool) -> int:
    """Parse a port number; 0 is allowed only for listen addresses."""
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    lowest = 0 if listen else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"{text!r}: port must be between {lowest} and 65535")
    return port


def _ip_literal(host: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return ``host`` as an IP address, or None when it is not an IP literal."""
    if "%" in host:
        raise ValueError(f"{text!r}: scope ids such as %eth0 are not supported")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        if ":" in host:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        return None


def _hostname(host: str, text: str) -> str:
    """Check a host name and return it lower-cased."""
    name = host.lower()
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if labels[-1].isdigit():
        raise ValueError(f"{text!r}: {host!r} is not a valid IPv4 address")
    if len(name) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels):
        raise ValueError(f"{text!r}: {host!r} is not a valid host name")
    return name


def resolv_conf_nameservers(path: str = DEFAULT_RESOLV_CONF) -> tuple[Address, ...]:
    """
    Return the ``nameserver`` entries of a resolv.conf file as port-53
    addresses, in order and without repeats.

    Comments (``#``, ``;``), other options and unparsable lines are ignored,
    and so are addresses with a scope id (``fe80::1%eth0``): a link-local
    address is useless without its interface.  A missing file or one without
    usable entries gives ``127.0.0.1:53``, as the C library assumes.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        text = ""
    found: list[Address] = []
    for line in text.splitlines():
        words = re.split(r"[#;]", line, maxsplit=1)[0].split()
        if len(words) < 2 or words[0] != "nameserver" or "%" in words[1]:
            continue
        try:
            ip = ipaddress.ip_address(words[1])
        except ValueError:
            continue
        if ip.is_unspecified:
            continue
        address = Address(str(ip), 53)
        if address not in found:
            found.append(address)
    return tuple(found) or (Address("127.0.0.1", 53),)


def default_shards(per_cpu: int, cpu_count: int | None = None) -> int:
    """Return ``cpu_count * per_cpu`` rounded up to a power of two;
    ``cpu_count`` defaults to ``os.cpu_count()``."""
    if cpu_count is None:
        cpu_count = os.cpu_count() or 1
    wanted = max(1, cpu_count * per_cpu)
    return 1 << (wanted - 1).bit_length()


# --------------------------------------------------------------------------
# Kinds: how one raw YAML value is parsed and checked

_BAD = object()  # a value that failed; its problem is already recorded
_SKIP = object()  # a value whose ${VAR} could not be substituted (reported)


class _Invalid(ValueError):
    """A raw value is not acceptable; the message is for people."""


class _Interpolated(str):
    """A string that came from ${VAR} substitution, and so may stand for a
    number or a boolean."""


@attrs.define
class _Reading:
    """The state of one parse: the environment for ${VAR}, and the problems
    found so far."""

    environ: Mapping[str, str]
    problems: list[Problem] = attrs.Factory(list)

    def add(self, path: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(path, message))


class _Kind:
    """Base of the kinds: parse a raw value, recording problems under a path."""

    def parse(self, raw: object, path: str, reading: _Reading) -> Any:
        """Return the parsed value, or _BAD after recording a problem."""
        if raw is _SKIP:
            return _BAD
        try:
            return self.convert(raw)
        except _Invalid as invalid:
            reading.add(path, str(invalid))
            return _BAD

    def convert(self, raw: object) -> Any:
        """Return the parsed value or raise _Invalid."""
        raise NotImplementedError


def _show(raw: object) -> str:
    """Describe a raw YAML value for an error message."""
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return f"{'true' if raw else 'false'} (a boolean)"
    if isinstance(raw, int):
        return f"an integer ({raw})"
    if isinstance(raw, float):
        return f"a number ({raw:g})"
    if isinstance(raw, str):
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(raw, Mapping):
        return "a mapping"
    if isinstance(raw, (list, tuple)):
        return "a list"
    return f"a {type(raw).__name__}"


def _check_range(value: float, minimum: float | None, maximum: float | None, unit: str = "") -> None:
    """Raise _Invalid when ``value`` is outside ``minimum..maximum``."""
    low_ok = minimum is None or value >= minimum
    high_ok = maximum is None or value <= maximum
    if low_ok and high_ok:
        return

    def show(number: float) -> str:
        return (f"{number:g}" if isinstance(number, float) else str(number)) + unit

    if minimum is not None and maximum is not None:
        raise _Invalid(f"must be between {show(minimum)} and {show(maximum)}; got {show(value)}")
    if minimum is not None:
        raise _Invalid(f"must be at least {show(minimum)}; got {show(value)}")
    raise _Invalid(f"must be at most {show(maximum)}; got {show(value)}")


def _suggest(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    """Return the option ``word`` was most likely meant to be, if any."""

    def squash(text: str) -> str:
        return text.replace("_", "").replace("-", "").lower()

    for option in options:
        if squash(option) == squash(word):
            return option
    close = difflib.get_close_matches(word.lower(), [o.lower() for o in options], n=1, cutoff=0.6)
    if close:
        return next(o for o in options if o.lower() == close[0])
    return None


@attrs.frozen
class _Integer(_Kind):
    """A whole number (a YAML integer; not a boolean), within a range."""

    minimum: int | None = None
    maximum: int | None = None
    power_of_two: bool = False

    def convert(self, raw: object) -> int:
        if isinstance(raw, _Interpolated):
            raw = _number_from_text(raw, int)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"must be an integer; got {_show(raw)}")
        _check_range(raw, self.minimum, self.maximum)
        if self.power_of_two and raw & (raw - 1):
            lower = 1 << (raw.bit_length() - 1)
            raise _Invalid(
                f"must be a power of two; got {raw} (nearest: {lower} or {lower * 2})"
            )
        return raw


@attrs.frozen
class _Number(_Kind):
    """A real number (integer or float; not a boolean), within a range."""

    minimum: float | None = None
    maximum: float | None = None

    def convert(self, raw: object) -> float:
        if isinstance(raw, _Interpolated):
            raw = _number_from_text(raw, float)
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise _Invalid(f"must be a number; got {_show(raw)}")
        if not math.isfinite(raw):
            raise _Invalid("must be a finite number")
        _check_range(raw, self.minimum, self.maximum)
        return float(raw)


def _number_from_text(text: str, kind: type) -> object:
    """Turn a substituted string into a number when it spells one."""
    try:
        return kind(text.strip())
    except ValueError:
        return str(text)


@attrs.frozen
class _Duration(_Kind):
    """A duration: seconds as a number, or a string such as ``500ms``."""

    maximum: float | None = None
    positive: bool = False

    def convert(self, raw: object) -> float:
        try:
            seconds = parse_duration(raw)
        except TypeError:
            raise _Invalid(
                f"must be a duration such as {_DURATION_EXAMPLES}; got {_show(raw)}"
            ) from None
        except ValueError as error:
            raise _Invalid(str(error)) from None
        if self.positive and seconds <= 0:
            raise _Invalid(f"must be longer than 0s; got {raw!r}")
        try:
            _check_range(seconds, None, self.maximum, unit="s")
        except _Invalid as invalid:
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                raise _Invalid(f"{invalid} (a plain number means seconds; write e.g. '500ms')") from None
            raise
        return seconds


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


@attrs.frozen
class _Boolean(_Kind):
    """true or false (YAML booleans; from ${VAR} also yes/no/on/off/1/0)."""

    def convert(self, raw: object) -> bool:
        if isinstance(raw, _Interpolated):
            word = raw.strip().lower()
            if word in _TRUE_WORDS or word in _FALSE_WORDS:
                return word in _TRUE_WORDS
        if not isinstance(raw, bool):
            raise _Invalid(f"must be true or false; got {_show(raw)}")
        return raw


@attrs.frozen
class _String(_Kind):
    """A string; quote numbers in YAML to make them strings."""

    non_empty: bool = False

    def convert(self, raw: object) -> str:
        if not isinstance(raw, str):
            hint = " (put it in quotes)" if isinstance(raw, (int, float)) else ""
            raise _Invalid(f"must be a string; got {_show(raw)}{hint}")
        if self.non_empty and not raw:
            raise _Invalid("must not be empty")
        return str(raw)


@attrs.frozen
class _Choice(_Kind):
    """One string out of a fixed set."""

    options: tuple[str, ...]

    def convert(self, raw: object) -> str:
        listed = ", ".join(f"'{o}'" for o in self.options)
        if not isinstance(raw, str):
            raise _Invalid(f"must be one of {listed}; got {_show(raw)}")
        if raw in self.options:
            return str(raw)
        guess = _suggest(raw, self.options)
        hint = f"; did you mean '{guess}'?" if guess else ""
        raise _Invalid(f"must be one of {listed}; got {raw!r}{hint}")


@attrs.frozen
class _AddressKind(_Kind):
    """An address string; see parse_address for the flags."""

    default_port: int | None = None
    ip_only: bool = False
    listen: bool = False
    why: str = ""

    def convert(self, raw: object) -> Address:
        if isinstance(raw, Address):
            raw = str(raw)
        if not isinstance(raw, str):
            raise _Invalid(f"must be an address string such as '127.0.0.1:53'; got {_show(raw)}")
        try:
            return parse_address(
                raw, default_port=self.default_port, ip_only=self.ip_only, listen=self.listen
            )
        except ValueError as error:
            message = str(error)
            if self.why and "not a name" in message:
                message += f" ({self.why})"
            raise _Invalid(message) from None


@attrs.frozen
class _Network(_Kind):
    """An IP network in CIDR form; a bare address means a single host."""

    def convert(self, raw: object) -> IPNetwork:
        if isinstance(raw, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            return raw
        if not isinstance(raw, str):
            raise _Invalid(f"must be a network such as '10.0.0.0/8'; got {_show(raw)}")
        text = raw.strip()
        try:
            return ipaddress.ip_network(text)
        except ValueError:
            pass
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Invalid(
                f"{raw!r} is not a network such as '10.0.0.0/8' or '2001:db8::/32'"
            ) from None
        raise _Invalid(f"{raw!r} has host bits set; did you mean '{loose}'?")


@attrs.frozen
class _ListOf(_Kind):
    """A list of values of one kind, kept as a tuple.  A string is split at
    commas and white space, so one ${VAR} can hold a whole list."""

    item: _Kind
    min_items: int = 0
    noun: str = "entry"

    def parse(self, raw: object, path: str, reading: _Reading) -> Any:
        if raw is _SKIP:
            return _BAD
        if isinstance(raw, str):
            items: list | tuple = [word for word in re.split(r"[\s,]+", raw) if word]
        elif isinstance(raw, (list, tuple)):
            items = raw
        else:
            reading.add(path, f"must be a list; got {_show(raw)}")
            return _BAD
        if len(items) < self.min_items:
            reading.add(path, f"must list at least {self.min_items} {self.noun}")
            return _BAD
        values: list = []
        failed = False
        for index, item in enumerate(items):
            where = f"{path}[{index}]"
            value = self.item.parse(item, where, reading)
            if value is _BAD:
                failed = True
            elif value in values:
                reading.add(where, f"repeats {path}[{values.index(value)}] ({value})")
                failed = True
            else:
                values.append(value)
        return _BAD if failed else tuple(values)


@attrs.frozen
class _Section(_Kind):
    """A nested mapping described by another attrs class; null means defaults."""

    cls: type

    def parse(self, raw: object, path: str, reading: _Reading) -> Any:
        if raw is _SKIP:
            return _BAD
        if isinstance(raw, self.cls):
            return raw
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            reading.add(path, f"must be a mapping of settings; got {_show(raw)}")
            return _BAD
        return _build(self.cls, raw, path, reading)


def _validator(kind: _Kind):
    """An attrs validator that applies ``kind`` to a value given in its
    parsed form, so classes built by hand are checked like loaded ones."""

    def validate(instance: object, attribute: attrs.Attribute, value: object) -> None:
        reading = _Reading(environ={})
        parsed = kind.parse(value, attribute.name, reading)
        if reading.problems:
            raise ValueError(str(reading.problems[0]))
        if parsed != value:
            raise ValueError(f"{attribute.name}: must be given parsed, as {type(parsed).__name__}")

    return validate


def _setting(kind: _Kind, default: Any = attrs.NOTHING, *, factory: Any = None,
             doc: str, secret: bool = False) -> Any:
    """Declare one setting: its kind, default, description, and whether its
    value must stay out of repr()."""
    if factory is not None:
        default = attrs.Factory(factory)
    return attrs.field(
        default=default,
        validator=_validator(kind),
        repr=not secret,
        metadata={"kind": kind, "doc": doc},
    )


def _section(cls: type, doc: str) -> Any:
    """Declare a nested section with all its defaults."""
    return _setting(_Section(cls), factory=cls, doc=doc)


# --------------------------------------------------------------------------
# The sections

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


@attrs.frozen
class MessageCacheConfig:
    """The L1 cache of whole responses, local to each worker."""

    max_size_mb: int = _setting(_Integer(1, 1 << 20), 64, doc="size limit in MiB")
    num_shards: int = _setting(
        _Integer(1, 65536, power_of_two=True), factory=lambda: default_shards(4),
        doc="shards (a power of two); default CPUs x 4 rounded up")
    min_ttl: int = _setting(_TTL, 0, doc="raise shorter TTLs to this many seconds")
    max_ttl: int = _setting(_TTL, 86400, doc="cap longer TTLs at this many seconds")


@attrs.frozen
class RRsetCacheConfig:
    """The local L2 cache of RRsets."""

    max_size_mb: int = _setting(_Integer(1, 1 << 20), 128, doc="size limit in MiB")
    num_shards: int = _setting(
        _Integer(1, 65536, power_of_two=True), factory=lambda: default_shards(8),
        doc="shards (a power of two); default CPUs x 8 rounded up")


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
    quorum: QuorumConfig = _section(QuorumConfig, "quorum settings")


@attrs.frozen
class ApiConfig:
    """The HTTP management API."""

    enabled: bool = _setting(_Boolean(), True, doc="serve the management API")
    listen_address: Address = _setting(
        _LISTEN, Address("127.0.0.1", 8080), doc="HTTP listen address")
    auth_token: str = _setting(_String(), "", doc="bearer token (hidden from repr)", secret=True)
    auth_token_file: str = _setting(_String(), "", doc="file holding the bearer token")


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


# --------------------------------------------------------------------------
# Building a section from a mapping


def _join(path: str, key: str) -> str:
    """Append a key to a dotted path."""
    return f"{path}.{key}" if path else key


def _build(cls: type, raw: Mapping, path: str, reading: _Reading) -> Any:
    """Build ``cls`` from a mapping, substituting ${VAR} in its values and
    recording a problem for each unknown key and bad value; those settings
    keep their defaults so that checking goes on and reports everything."""
    fields = {field.name: field for field in attrs.fields(cls)}
    for key, line in getattr(raw, "duplicates", ()):
        reading.add(_join(path, key), f"appears twice (again on line {line})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = _join(path, str(key))
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            reading.add(where, _unknown_key(str(key), tuple(fields)))
            continue
        kind = field.metadata["kind"]
        if value is None and not isinstance(kind, _Section):
            reading.add(where, "has no value; give one or remove the key to keep the default")
            continue
        if not isinstance(kind, _Section):
            value = _interpolate(value, where, reading)
        parsed = kind.parse(value, where, reading)
        if parsed is not _BAD:
            values[key] = parsed
    return cls(**values)


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    """The message for a key the section does not have."""
    guess = _suggest(key, known)
    if guess:
        return f"unknown key; did you mean '{guess}'?"
    return "unknown key; expected one of: " + ", ".join(known)


# --------------------------------------------------------------------------
# Checks across settings


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
    if cache.invalidation.strategy == "pubsub" and cache.mode != "hybrid":
        yield _conflict("cache.invalidation.strategy",
                        f"'pubsub' needs cache.mode 'hybrid' (mode is '{cache.mode}')",
                        "cache.mode")
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


# --------------------------------------------------------------------------
# YAML and ${VAR} interpolation


class _Mapping(dict):
    """A YAML mapping that remembers its repeated keys (key, line)."""

    duplicates: tuple[tuple[str, int], ...] = ()


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, noting repeated keys instead of silently
    keeping the last one."""

    def construct_yaml_map(self, node: yaml.MappingNode) -> Iterator[_Mapping]:
        """Build a mapping as SafeLoader does, recording its repeated keys."""
        data = _Mapping()
        yield data
        seen: set[str] = set()
        duplicates = []
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    duplicates.append((key_node.value, key_node.start_mark.line + 1))
                seen.add(key_node.value)
        data.update(self.construct_mapping(node))
        data.duplicates = tuple(duplicates)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)

_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _interpolate(node: object, path: str, reading: _Reading) -> object:
    """Substitute ${VAR} in a string value, or in the strings of a list
    (only one level deep: no setting holds nested lists)."""
    if isinstance(node, list):
        return [
            _substitute(item, f"{path}[{index}]", reading) if isinstance(item, str) else item
            for index, item in enumerate(node)
        ]
    if isinstance(node, str):
        return _substitute(node, path, reading)
    return node


def _substitute(text: str, path: str, reading: _Reading) -> object:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in one string; a lone
    ``$`` stays as it is."""
    if "$" not in text:
        return text
    errors: list[str] = []
    substituted = False

    def expand(match: re.Match) -> str:
        nonlocal substituted
        if match.group("dollar"):
            return "$"
        if match.group("open"):
            errors.append("'${' without '}' (write '$$' for a literal dollar)")
            return ""
        body = match.group("body")
        name, has_default, default = body.partition(":-")
        if not _VARIABLE.match(name):
            errors.append(f"'${{{body}}}' is not ${{NAME}} or ${{NAME:-default}}")
            return ""
        substituted = True
        value = reading.environ.get(name)
        if value:
            return value
        if has_default:
            return default
        if value is None:
            errors.append(f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return ""
        return value

    result = _REFERENCE.sub(expand, text)
    for error in errors:
        reading.add(path, error)
    if errors:
        return _SKIP
    return _Interpolated(result) if substituted else result


def _yaml_problem(error: yaml.YAMLError) -> Problem:
    """Describe a YAML syntax error, with its line and column."""
    mark = getattr(error, "problem_mark", None)
    what = getattr(error, "problem", None) or str(error)
    if mark is None:
        return Problem("<file>", f"invalid YAML: {what}")
    return Problem("<file>", f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}")


# --------------------------------------------------------------------------
# Entry points


def parse_config(
    text: str,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    resolv_conf: str = DEFAULT_RESOLV_CONF,
) -> Config:
    """
    Parse and validate YAML ``text`` into a Config.

    ``${VAR}``/``${VAR:-default}`` in string values come from ``environ``
    (default ``os.environ``).  When ``upstreams`` is absent the nameservers
    of ``resolv_conf`` are used.  Raises ConfigError listing every problem;
    ``source`` names the text in its report.
    """
    if environ is None:
        environ = os.environ
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError([_yaml_problem(error)], source) from None
    if data is None:
        data = _Mapping()
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem("<file>", f"the top level must be a mapping of sections (server:, cache:, ...); got {_show(data)}")],
            source,
        )
    reading = _Reading(environ)
    config = _build(Config, data, "", reading)
    if "upstreams" not in data:
        config = attrs.evolve(config, upstreams=resolv_conf_nameservers(resolv_conf))
    problems = reading.problems
    invalid = [problem.path for problem in problems]
    for problem, involved in _conflicts(config):
        if not any(_overlaps(path, bad) for path in involved for bad in invalid):
            problems.append(problem)
    if problems:
        raise ConfigError(problems, source)
    return config


def load_config(
    path: str | None,
    environ: Mapping[str, str] | None = None,
    resolv_conf: str = DEFAULT_RESOLV_CONF,
) -> Config:
    """Read and validate the YAML file at ``path``; None gives the embedded
    default (every setting at its default).  Raises ConfigError."""
    if path is None:
        return parse_config("", "<default>", environ, resolv_conf)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError([Problem("<file>", f"cannot read: {error.strerror}")], path) from None
    except UnicodeDecodeError as error:
        raise ConfigError([Problem("<file>", f"is not UTF-8 text ({error.reason} at byte {error.start})")], path) from None
    return parse_config(text, path, environ, resolv_conf)


# --------------------------------------------------------------------------
# Secrets, read when the services start


def _read_secret(path: str, setting: str, source: str) -> str:
    """Read a secret file without its trailing newline; ConfigError if that fails."""
    try:
        with open(path, encoding="utf-8") as file:
            value = file.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError([Problem(setting, f"cannot read {path}: {reason}")], source) from None
    if not value:
        raise ConfigError([Problem(setting, f"{path} is empty")], source)
    return value


def secret_password(shared: SharedCacheConfig, source: str = "<config>") -> str:
    """
    Return the Redis password: ``password`` if set, else the contents of
    ``password_secret.file``, else of ``{directory}/{name}/{key}`` (a
    Kubernetes secret mounted as a directory), else ''.  Raises ConfigError
    naming the setting when the file cannot be read or is empty.
    """
    if shared.password:
        return shared.password
    secret = shared.password_secret
    if secret.file:
        return _read_secret(secret.file, "cache.shared_cache.password_secret.file", source)
    if secret.name and secret.key:
        path = os.path.join(secret.directory, secret.name, secret.key)
        return _read_secret(path, "cache.shared_cache.password_secret", source)
    return ""


def signing_key(shared: SharedCacheConfig, source: str = "<config>") -> bytes:
    """
    Return the shared-cache signing key as UTF-8 bytes: ``signing_key`` if
    set, else the contents of ``signing_key_file``, else ``b''`` (no
    signing).  Raises ConfigError naming the setting when the file cannot
    be read, is empty, or holds a key shorter than MIN_SIGNING_KEY.
    """
    if shared.signing_key:
        return shared.signing_key.encode("utf-8")
    if not shared.signing_key_file:
        return b""
    setting = "cache.shared_cache.signing_key_file"
    key = _read_secret(shared.signing_key_file, setting, source)
    if len(key) < MIN_SIGNING_KEY:
        raise ConfigError([Problem(setting, f"the key in {shared.signing_key_file} is shorter than "
                                            f"{MIN_SIGNING_KEY} characters")], source)
    return key.encode("utf-8")


def api_token(api: ApiConfig, environ: Mapping[str, str] | None = None, source: str = "<config>") -> str:
    """
    Return the API bearer token: ``auth_token``, else the stripped contents of
    ``auth_token_file``, else ``$DNSGO_API_TOKEN``, else '' (no token).
    Raises ConfigError when the token file cannot be read or is empty.
    """
    if api.auth_token:
        return api.auth_token
    if api.auth_token_file:
        return _read_secret(api.auth_token_file, "api.auth_token_file", source).strip()
    if environ is None:
        environ = os.environ
    return environ.get("DNSGO_API_TOKEN", "")
