"""
Tests for dnsgo.config: loading, defaults, ${VAR} interpolation, addresses,
durations, resolv.conf, every validation error, secrets, the example files in
etc/ and the reference in docs/configuration.md.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from dnsgo.config import (
    Address,
    ApiConfig,
    CacheConfig,
    Config,
    ConfigError,
    MessageCacheConfig,
    PasswordSecretConfig,
    Problem,
    ServerConfig,
    SharedCacheConfig,
    api_token,
    consistency_problems,
    default_shards,
    load_config,
    parse_address,
    parse_config,
    resolv_conf_nameservers,
    secret_password,
)
from dnsgo.config.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "etc"
REFERENCE = ROOT / "docs" / "configuration.md"
SITES = {"SITE_A_IP": "192.0.2.1", "SITE_B_IP": "192.0.2.2"}


class ConfigTestCase(SynchronousTestCase):
    """Helpers: parse text against a private resolv.conf and an explicit environment."""

    def setUp(self) -> None:
        self.resolv = self.mktemp()
        Path(self.resolv).write_text("nameserver 192.0.2.53\n")

    def parse(self, text: str, environ: dict | None = None) -> Config:
        """Parse ``text``; the environment is empty unless given."""
        return parse_config(text, "test.yaml", environ or {}, self.resolv)

    def problems(self, text: str, environ: dict | None = None) -> list[Problem]:
        """Parse ``text``, which must fail, and return its problems."""
        error = self.assertRaises(ConfigError, self.parse, text, environ)
        return error.problems

    def assertProblem(self, text: str, path: str, fragment: str, environ: dict | None = None) -> None:
        """``text`` has exactly one problem, at ``path``, whose message holds ``fragment``."""
        problems = self.problems(text, environ)
        self.assertEqual([p.path for p in problems], [path], problems)
        self.assertIn(fragment, problems[0].message)


class DefaultsTests(ConfigTestCase):
    """The settings when nothing is configured."""

    def test_empty_text_is_all_defaults(self) -> None:
        """An empty file gives every default, with upstreams from resolv.conf."""
        config = self.parse("")
        self.assertEqual(config, Config(upstreams=(Address("192.0.2.53", 53),)))

    def test_comments_only_is_all_defaults(self) -> None:
        """A file of comments is the same as an empty one."""
        self.assertEqual(self.parse("# nothing\n\n# here\n"), self.parse(""))

    def test_load_config_none_is_embedded_default(self) -> None:
        """load_config(None) gives the defaults without reading a file."""
        config = load_config(None, environ={}, resolv_conf=self.resolv)
        self.assertEqual(config, self.parse(""))

    def test_default_values(self) -> None:
        """The documented defaults, spot-checked across sections."""
        config = self.parse("")
        self.assertEqual(config.server.listen_address, Address("127.0.0.1", 5353))
        self.assertEqual(config.server.num_workers, 1)
        self.assertEqual(config.server.edns_udp_size, 1232)
        self.assertEqual(config.server.tcp_idle_timeout, 10.0)
        self.assertEqual(config.upstream.timeout, 1.0)
        self.assertEqual(config.upstream.strategy, "best")
        self.assertEqual(config.cache.mode, "standalone")
        self.assertEqual(config.cache.message_cache.min_ttl, 0)
        self.assertEqual(config.cache.message_cache.max_ttl, 86400)
        self.assertEqual(config.cache.shared_cache.min_retry_backoff, 0.008)
        self.assertEqual(config.cache.shared_cache.password_secret.directory, "/var/run/secrets/dnsgo")
        self.assertEqual(config.cache.serve_stale.client_timeout, 1.8)
        self.assertEqual(config.cache.invalidation.pubsub.channel, "dns:invalidate")
        self.assertEqual(config.control.grpc_address, Address("127.0.0.1", 9090))
        self.assertEqual(config.high_availability.quorum.minimum, 3)
        self.assertEqual(config.api.listen_address, Address("127.0.0.1", 8080))
        self.assertEqual(config.logging.level, "info")

    def test_default_allow_is_not_an_open_resolver(self) -> None:
        """By default loopback and private clients are answered, the Internet is not."""
        allow = self.parse("").server.allow

        def allowed(ip: str) -> bool:
            return any(ipaddress.ip_address(ip) in network for network in allow)

        for ip in ("127.0.0.1", "::1", "10.1.2.3", "172.16.5.5", "192.168.1.1", "fd00::1", "fe80::1"):
            self.assertTrue(allowed(ip), ip)
        for ip in ("8.8.8.8", "172.32.0.1", "2001:db8::1", "100.64.0.1"):
            self.assertFalse(allowed(ip), ip)

    def test_default_shards_round_up_to_power_of_two(self) -> None:
        """default_shards(k) is CPUs x k rounded up to a power of two."""
        self.assertEqual(default_shards(4, cpu_count=1), 4)
        self.assertEqual(default_shards(4, cpu_count=3), 16)
        self.assertEqual(default_shards(8, cpu_count=5), 64)
        self.assertEqual(default_shards(4, cpu_count=8), 32)

    def test_default_num_shards_follow_cpu_count(self) -> None:
        """The cache shard defaults use this machine's CPU count."""
        config = self.parse("")
        self.assertEqual(config.cache.message_cache.num_shards, default_shards(4))
        self.assertEqual(config.cache.rrset_cache.num_shards, default_shards(8))
        self.assertEqual(default_shards(4), default_shards(4, cpu_count=os.cpu_count()))

    def test_null_section_is_defaults(self) -> None:
        """A section key with nothing under it keeps that section's defaults."""
        self.assertEqual(self.parse("cache:\n  prefetch:\n"), self.parse(""))

    def test_classes_validate_direct_construction(self) -> None:
        """Classes built in code are checked like loaded ones."""
        self.assertRaises(ValueError, MessageCacheConfig, num_shards=48)
        self.assertRaises(ValueError, ServerConfig, num_workers=True)
        self.assertRaises(ValueError, ServerConfig, listen_address="127.0.0.1:53")
        self.assertEqual(MessageCacheConfig(num_shards=64).num_shards, 64)


class FullFileTests(ConfigTestCase):
    """Settings given in a file reach the objects, converted."""

    def test_every_section(self) -> None:
        """A file that sets something in every section is parsed into those values."""
        config = self.parse(
            """
server:
  listen_address: "[::]:53"
  num_workers: 8
  allow: ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
  tcp_idle_timeout: 1m
upstreams: ["192.0.2.1", "[2001:db8::1]:5353"]
upstream: {timeout: 500ms, retries: 0, strategy: parallel, parallel_count: 3}
cache:
  mode: hybrid
  message_cache: {max_size_mb: 32, num_shards: 16, min_ttl: 60, max_ttl: 3600}
  rrset_cache: {num_shards: 128}
  shared_cache:
    enabled: true
    type: redis-sentinel
    sentinel: {master_name: main, addresses: ["sentinel-1", "10.0.0.2:26380"]}
    min_retry_backoff: 8ms
    max_retry_backoff: 1s
    read_preference: replicaPreferred
  serve_stale: {enabled: true, max_stale: 1h}
  invalidation: {strategy: pubsub, pubsub: {batch_delay: 50ms}}
control: {grpc_address: ":9090", heartbeat_timeout: 5m}
high_availability: {enabled: true, mode: active_active, quorum: {type: none}}
api: {enabled: false, listen_address: "127.0.0.1:0"}
logging: {level: debug, format: json, query_log: true}
"""
        )
        self.assertEqual(config.server.listen_address, Address("::", 53))
        self.assertEqual(config.server.num_workers, 8)
        self.assertEqual(
            config.server.allow,
            (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"),
             ipaddress.ip_network("198.51.100.7/32")),
        )
        self.assertEqual(config.server.tcp_idle_timeout, 60.0)
        self.assertEqual(config.upstreams, (Address("192.0.2.1", 53), Address("2001:db8::1", 5353)))
        self.assertEqual(config.upstream.timeout, 0.5)
        self.assertEqual(config.upstream.parallel_count, 3)
        self.assertEqual(config.cache.message_cache.min_ttl, 60)
        self.assertEqual(config.cache.rrset_cache.num_shards, 128)
        shared = config.cache.shared_cache
        self.assertEqual(
            shared.sentinel.addresses, (Address("sentinel-1", 26379), Address("10.0.0.2", 26380))
        )
        self.assertEqual((shared.min_retry_backoff, shared.max_retry_backoff), (0.008, 1.0))
        self.assertEqual(config.cache.serve_stale.max_stale, 3600.0)
        self.assertEqual(config.cache.invalidation.pubsub.batch_delay, 0.05)
        self.assertEqual(config.control.grpc_address, Address("0.0.0.0", 9090))
        self.assertEqual(config.control.heartbeat_timeout, 300.0)
        self.assertEqual(config.high_availability.quorum.type, "none")
        self.assertEqual(config.api.listen_address, Address("127.0.0.1", 0))
        self.assertEqual(config.logging.format, "json")

    def test_load_config_reads_file(self) -> None:
        """load_config reads the named file and names it in errors."""
        path = self.mktemp()
        Path(path).write_text("server:\n  num_workers: 3\n")
        config = load_config(path, environ={}, resolv_conf=self.resolv)
        self.assertEqual(config.server.num_workers, 3)
        Path(path).write_text("server:\n  num_workers: 0\n")
        error = self.assertRaises(ConfigError, load_config, path, {}, self.resolv)
        self.assertEqual(error.source, path)
        self.assertTrue(error.report().startswith(f"config error in {path}: 1 problem\n"))


class DurationTests(SynchronousTestCase):
    """parse_duration and durations in the file."""

    def test_units(self) -> None:
        """Each unit and a plain number give seconds as a float."""
        cases = {
            "500ms": 0.5, "8ms": 0.008, "30s": 30.0, "5m": 300.0, "1h": 3600.0,
            "1d": 86400.0, "1h30m": 5400.0, "1.5s": 1.5, "250us": 0.00025,
            "2.5": 2.5, " 10s ": 10.0, 2: 2.0, 0.25: 0.25, 0: 0.0,
        }
        for text, seconds in cases.items():
            self.assertAlmostEqual(parse_duration(text), seconds, msg=repr(text))
            self.assertIsInstance(parse_duration(text), float)

    def test_refused(self) -> None:
        """Garbage, unknown units, negative and non-finite values are refused."""
        for text in ("abc", "5x", "ms", "", "1h 30m", "-1s", "-2", "1e3s"):
            self.assertRaises(ValueError, parse_duration, text)
        self.assertRaises(ValueError, parse_duration, float("nan"))
        self.assertRaises(ValueError, parse_duration, float("inf"))
        self.assertRaises(ValueError, parse_duration, -1)
        for value in (True, None, [1]):
            self.assertRaises(TypeError, parse_duration, value)

    def test_format(self) -> None:
        """format_duration picks the largest whole unit."""
        self.assertEqual(format_duration(86400.0), "1d")
        self.assertEqual(format_duration(30.0), "30s")
        self.assertEqual(format_duration(90.0), "90s")
        self.assertEqual(format_duration(0.008), "8ms")
        self.assertEqual(format_duration(1.8), "1800ms")
        self.assertEqual(format_duration(0), "0s")

    @given(st.integers(min_value=0, max_value=10**9))
    def test_milliseconds_round_trip(self, milliseconds: int) -> None:
        """Any whole number of milliseconds parses to that many thousandths of a second."""
        self.assertAlmostEqual(parse_duration(f"{milliseconds}ms"), milliseconds / 1000)


class DurationSettingTests(ConfigTestCase):
    """Duration settings in the file."""

    def test_duration_string_in_file(self) -> None:
        """A duration setting accepts units."""
        self.assertEqual(self.parse("upstream: {timeout: 250ms}").upstream.timeout, 0.25)

    def test_bad_duration(self) -> None:
        """A duration that does not parse names its setting."""
        self.assertProblem("upstream: {timeout: soon}", "upstream.timeout", "expected a duration")

    def test_zero_timeout(self) -> None:
        """Timeouts must be longer than zero."""
        self.assertProblem("upstream: {timeout: 0}", "upstream.timeout", "longer than 0s")

    def test_large_plain_number_hint(self) -> None:
        """A plain number over the limit hints that numbers are seconds."""
        self.assertProblem("upstream: {timeout: 500}", "upstream.timeout", "a plain number means seconds")

    def test_duration_wrong_type(self) -> None:
        """A boolean is not a duration."""
        self.assertProblem("control: {heartbeat_timeout: true}", "control.heartbeat_timeout", "must be a duration")


class AddressTests(ConfigTestCase):
    """Every accepted address form, and the refused ones."""

    def test_listen_forms(self) -> None:
        """host:port, :port, 0.0.0.0:port, [::]:port and [v6]:port as listen addresses."""
        cases = {
            "127.0.0.1:5353": Address("127.0.0.1", 5353),
            ":53": Address("0.0.0.0", 53),
            "0.0.0.0:53": Address("0.0.0.0", 53),
            "[::]:53": Address("::", 53),
            "[2001:db8::1]:53": Address("2001:db8::1", 53),
            "[2001:DB8:0::0001]:53": Address("2001:db8::1", 53),
            "127.0.0.1:0": Address("127.0.0.1", 0),
        }
        for text, address in cases.items():
            config = self.parse(f'server: {{listen_address: "{text}"}}')
            self.assertEqual(config.server.listen_address, address, text)

    def test_upstream_forms(self) -> None:
        """Upstreams may leave out the port (53), also for bare IPv6."""
        config = self.parse(
            'upstreams: ["8.8.8.8", "2001:db8::1", "192.0.2.1:5353", "[2001:db8::2]:54", "[2001:db8::3]"]'
        )
        self.assertEqual(
            config.upstreams,
            (Address("8.8.8.8", 53), Address("2001:db8::1", 53), Address("192.0.2.1", 5353),
             Address("2001:db8::2", 54), Address("2001:db8::3", 53)),
        )

    def test_upstreams_as_string(self) -> None:
        """A string of upstreams separated by commas or spaces is a list."""
        config = self.parse('upstreams: "8.8.8.8, 1.1.1.1 9.9.9.9:5353"')
        self.assertEqual(
            config.upstreams,
            (Address("8.8.8.8", 53), Address("1.1.1.1", 53), Address("9.9.9.9", 5353)),
        )

    def test_redis_host_names(self) -> None:
        """Redis addresses may be names, lower-cased, with default ports 6379 and 26379."""
        config = self.parse(
            """
cache:
  shared_cache:
    type: redis-cluster
    address: "Redis.Example:6380"
    sentinel: {addresses: [sentinel-a]}
    cluster_addresses: ["redis-cluster-0.redis-cluster-headless:6379", "node-1"]
"""
        )
        shared = config.cache.shared_cache
        self.assertEqual(shared.address, Address("redis.example", 6380))
        self.assertEqual(shared.sentinel.addresses, (Address("sentinel-a", 26379),))
        self.assertEqual(
            shared.cluster_addresses,
            (Address("redis-cluster-0.redis-cluster-headless", 6379), Address("node-1", 6379)),
        )

    def test_str(self) -> None:
        """str(Address) is host:port, with IPv6 in brackets."""
        self.assertEqual(str(Address("192.0.2.1", 53)), "192.0.2.1:53")
        self.assertEqual(str(Address("2001:db8::1", 53)), "[2001:db8::1]:53")

    @given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
    def test_round_trip(self, ip, port: int) -> None:
        """Any IP address and port survive str() then parse_address()."""
        address = Address(str(ip), port)
        self.assertEqual(parse_address(str(address), listen=True), address)

    def test_upstream_host_name_refused(self) -> None:
        """Upstreams must be IP literals: no DNS lookups inside a DNS server."""
        self.assertProblem('upstreams: ["8.8.8.8", "dns.google:53"]', "upstreams[1]", "must use an IP address")

    def test_listen_host_name_refused(self) -> None:
        """A listen address must be an IP literal."""
        self.assertProblem('server: {listen_address: "localhost:53"}', "server.listen_address", "IP address")

    def test_unbracketed_ipv6_with_port(self) -> None:
        """An IPv6 listen address with a port needs brackets."""
        self.assertProblem('server: {listen_address: "2001:db8::1:53"}', "server.listen_address", "brackets")

    def test_listen_without_port(self) -> None:
        """A listen address needs a port."""
        self.assertProblem('api: {listen_address: "127.0.0.1"}', "api.listen_address", "has no port")

    def test_port_out_of_range(self) -> None:
        """Ports above 65535 are refused."""
        self.assertProblem('upstreams: ["192.0.2.1:65536"]', "upstreams[0]", "port must be between 1 and 65535")

    def test_port_zero_upstream(self) -> None:
        """Port 0 is only for listening."""
        self.assertProblem('upstreams: ["192.0.2.1:0"]', "upstreams[0]", "port must be between 1 and 65535")

    def test_port_not_a_number(self) -> None:
        """A port must be digits."""
        self.assertProblem('control: {grpc_address: "127.0.0.1:grpc"}', "control.grpc_address", "is not a number")

    def test_missing_bracket(self) -> None:
        """An opening bracket needs its closing one."""
        self.assertProblem('server: {listen_address: "[::1:53"}', "server.listen_address", "without ']'")

    def test_scope_id(self) -> None:
        """Scope ids are refused."""
        self.assertProblem('upstreams: ["fe80::1%eth0"]', "upstreams[0]", "scope ids")

    def test_upstream_without_host(self) -> None:
        """':53' is for listening, not for upstreams."""
        self.assertProblem('upstreams: [":53"]', "upstreams[0]", "has no host")

    def test_unspecified_upstream(self) -> None:
        """0.0.0.0 is not a destination."""
        self.assertProblem('upstreams: ["0.0.0.0"]', "upstreams[0]", "not a destination")

    def test_broken_ipv4_as_redis_name(self) -> None:
        """A dotted number that is not an IPv4 address is not taken for a name."""
        self.assertProblem(
            'cache: {shared_cache: {address: "1.2.3:6379"}}', "cache.shared_cache.address", "not a valid IPv4"
        )

    def test_bad_host_name(self) -> None:
        """Host names must be made of valid labels."""
        self.assertProblem(
            'cache: {shared_cache: {address: "bad_host!:6379"}}', "cache.shared_cache.address", "not a valid host name"
        )

    def test_address_wrong_type(self) -> None:
        """An address must be a string."""
        self.assertProblem("server: {listen_address: 53}", "server.listen_address", "must be an address string")

    def test_empty_upstreams(self) -> None:
        """An empty upstream list is refused."""
        self.assertProblem("upstreams: []", "upstreams", "at least 1 upstream")

    def test_repeated_upstream(self) -> None:
        """The same upstream twice is refused."""
        self.assertProblem('upstreams: ["8.8.8.8", "8.8.8.8:53"]', "upstreams[1]", "repeats upstreams[0]")


class ResolvConfTests(ConfigTestCase):
    """Upstreams from /etc/resolv.conf."""

    def write(self, text: str) -> str:
        """Write a resolv.conf and return its path."""
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_nameservers(self) -> None:
        """nameserver lines in order, without comments, options, bad lines, scope ids or repeats."""
        path = self.write(
            "# generated\n"
            "search example.com\n"
            "nameserver 192.0.2.1  # first\n"
            "; nameserver 192.0.2.99\n"
            "#nameserver 192.0.2.98\n"
            "nameserver 2001:db8::53\n"
            "nameserver fe80::1%eth0\n"
            "nameserver not-an-ip\n"
            "nameserver\n"
            "nameserver 192.0.2.1\n"
            "options edns0 trust-ad\n"
            "nameserver 198.51.100.1;comment\n"
        )
        self.assertEqual(
            resolv_conf_nameservers(path),
            (Address("192.0.2.1", 53), Address("2001:db8::53", 53), Address("198.51.100.1", 53)),
        )

    def test_missing_file(self) -> None:
        """Without a resolv.conf the upstream is 127.0.0.1:53."""
        self.assertEqual(resolv_conf_nameservers(self.mktemp()), (Address("127.0.0.1", 53),))

    def test_no_nameservers(self) -> None:
        """A resolv.conf without usable nameservers gives 127.0.0.1:53."""
        path = self.write("search example.com\nnameserver fe80::1%2\n")
        self.assertEqual(resolv_conf_nameservers(path), (Address("127.0.0.1", 53),))

    def test_used_only_when_upstreams_absent(self) -> None:
        """Configured upstreams replace resolv.conf entirely."""
        self.assertEqual(self.parse("").upstreams, (Address("192.0.2.53", 53),))
        self.assertEqual(self.parse("upstreams: [192.0.2.9]").upstreams, (Address("192.0.2.9", 53),))


class InterpolationTests(ConfigTestCase):
    """${VAR}, ${VAR:-default} and $$ in string values."""

    def test_variable(self) -> None:
        """${VAR} is replaced by the variable's value."""
        config = self.parse('cache: {shared_cache: {key_prefix: "${PREFIX}x"}}', {"PREFIX": "site-a:"})
        self.assertEqual(config.cache.shared_cache.key_prefix, "site-a:x")

    def test_default_when_unset_or_empty(self) -> None:
        """${VAR:-default} gives the default when VAR is unset or empty, else VAR."""
        text = 'server: {worker_id: "${ID:-w0}"}'
        self.assertEqual(self.parse(text).server.worker_id, "w0")
        self.assertEqual(self.parse(text, {"ID": ""}).server.worker_id, "w0")
        self.assertEqual(self.parse(text, {"ID": "w7"}).server.worker_id, "w7")

    def test_set_but_empty(self) -> None:
        """${VAR} of a variable set to '' is ''."""
        self.assertEqual(self.parse('server: {worker_id: "${ID}"}', {"ID": ""}).server.worker_id, "")

    def test_dollar_escape(self) -> None:
        """$$ is a literal dollar, and a lone $ stays as it is."""
        config = self.parse('cache: {shared_cache: {password: "a$$b${X}", key_prefix: "p$q"}}', {"X": "c"})
        self.assertEqual(config.cache.shared_cache.password, "a$bc")
        self.assertEqual(config.cache.shared_cache.key_prefix, "p$q")

    def test_list_items(self) -> None:
        """Variables are replaced inside list items."""
        config = self.parse(
            'cache: {shared_cache: {sentinel: {addresses: ["${SITE_A_IP}:26379", "${SITE_B_IP}"]}}}', SITES
        )
        self.assertEqual(
            config.cache.shared_cache.sentinel.addresses,
            (Address("192.0.2.1", 26379), Address("192.0.2.2", 26379)),
        )

    def test_numbers_and_booleans_from_environment(self) -> None:
        """A substituted value may stand for an integer, a number or a boolean."""
        config = self.parse(
            "server: {num_workers: '${N}', enable_tcp: '${TCP}'}\n"
            "cache: {shared_cache: {ttl_multiplier: '${M}'}}",
            {"N": "4", "TCP": "off", "M": "2.5"},
        )
        self.assertEqual(config.server.num_workers, 4)
        self.assertIs(config.server.enable_tcp, False)
        self.assertEqual(config.cache.shared_cache.ttl_multiplier, 2.5)

    def test_non_number_from_environment(self) -> None:
        """A substituted value that is not a number is refused for an integer setting."""
        self.assertProblem("server: {num_workers: '${N}'}", "server.num_workers", "must be an integer", {"N": "many"})

    def test_value_is_not_yaml(self) -> None:
        """A substituted value is a plain string, never parsed as YAML."""
        config = self.parse("server: {worker_id: '${ID}'}", {"ID": "{a: b}"})
        self.assertEqual(config.server.worker_id, "{a: b}")

    def test_comments_not_interpolated(self) -> None:
        """A ${VAR} in a comment needs no variable."""
        self.assertEqual(self.parse("# uses ${NOTHING}\nserver: {}  # ${NOPE}"), self.parse(""))

    def test_missing_variable(self) -> None:
        """An unset ${VAR} without a default is reported at its setting."""
        self.assertProblem(
            'cache: {shared_cache: {password: "${REDIS_PW}"}}', "cache.shared_cache.password", "REDIS_PW is not set"
        )

    def test_missing_variable_in_list(self) -> None:
        """An unset ${VAR} in a list is reported at its item."""
        self.assertProblem('upstreams: ["192.0.2.1", "${SITE_B_IP}"]', "upstreams[1]", "SITE_B_IP is not set")

    def test_bad_reference(self) -> None:
        """${...} must hold a variable name."""
        self.assertProblem('server: {worker_id: "${1X}"}', "server.worker_id", "is not ${NAME}")

    def test_unterminated_reference(self) -> None:
        """${ without } is refused."""
        self.assertProblem('server: {worker_id: "${X"}', "server.worker_id", "without '}'")


class ErrorTests(ConfigTestCase):
    """Every kind of single-setting mistake, reported with its path."""

    def test_unknown_key_suggestion(self) -> None:
        """An unknown key close to a known one gets a suggestion."""
        self.assertProblem(
            "cache: {message_cache: {max_size: 10}}", "cache.message_cache.max_size", "did you mean 'max_size_mb'?"
        )

    def test_unknown_key_camel_case(self) -> None:
        """The seed's Kubernetes camelCase spelling gets the snake_case suggestion."""
        self.assertProblem("cache: {messageCache: {}}", "cache.messageCache", "did you mean 'message_cache'?")

    def test_unknown_key_listing(self) -> None:
        """An unknown key far from every known one lists the known keys."""
        self.assertProblem("logging: {zzz: 1}", "logging.zzz", "expected one of: level, format, query_log")

    def test_unknown_section(self) -> None:
        """Unknown top-level sections are reported too."""
        self.assertProblem("multiCluster: {}", "multiCluster", "unknown key")

    def test_non_string_key(self) -> None:
        """A key that is not a string is an unknown key."""
        self.assertProblem("server: {1: 2}", "server.1", "unknown key")

    def test_bool_is_not_int(self) -> None:
        """true is not an integer."""
        self.assertProblem("server: {num_workers: true}", "server.num_workers", "must be an integer")

    def test_quoted_number_is_not_int(self) -> None:
        """A quoted number in the file is a string, not an integer."""
        self.assertProblem("server: {num_workers: '4'}", "server.num_workers", "must be an integer")

    def test_float_is_not_int(self) -> None:
        """1.5 is not an integer."""
        self.assertProblem("server: {edns_udp_size: 1500.5}", "server.edns_udp_size", "must be an integer")

    def test_number_is_not_string(self) -> None:
        """A number where a string belongs asks for quotes."""
        self.assertProblem(
            "cache: {shared_cache: {password: 12345}}", "cache.shared_cache.password", "put it in quotes"
        )

    def test_int_is_not_bool(self) -> None:
        """1 is not a boolean."""
        self.assertProblem("server: {enable_tcp: 1}", "server.enable_tcp", "must be true or false")

    def test_string_for_mapping(self) -> None:
        """A string where a section belongs."""
        self.assertProblem("cache: {message_cache: big}", "cache.message_cache", "must be a mapping")

    def test_scalar_for_list(self) -> None:
        """A number where a list belongs."""
        self.assertProblem("server: {allow: 5}", "server.allow", "must be a list")

    def test_null_value(self) -> None:
        """A key without a value is refused rather than guessed."""
        self.assertProblem("server:\n  num_workers:\n", "server.num_workers", "has no value")

    def test_non_finite_number(self) -> None:
        """.inf is not a usable number."""
        self.assertProblem(
            "cache: {shared_cache: {ttl_multiplier: .inf}}", "cache.shared_cache.ttl_multiplier", "finite"
        )

    def test_empty_string_refused(self) -> None:
        """Some strings may not be empty."""
        self.assertProblem(
            "cache: {invalidation: {pubsub: {channel: ''}}}", "cache.invalidation.pubsub.channel", "must not be empty"
        )

    def test_range_between(self) -> None:
        """Values outside a closed range name both ends."""
        self.assertProblem(
            "cache: {shared_cache: {database: 16}}", "cache.shared_cache.database", "must be between 0 and 15; got 16"
        )

    def test_range_edns(self) -> None:
        """The EDNS UDP size is 512..4096."""
        self.assertProblem("server: {edns_udp_size: 511}", "server.edns_udp_size", "between 512 and 4096")

    def test_range_retries(self) -> None:
        """Retries are 0..5."""
        self.assertProblem("upstream: {retries: 6}", "upstream.retries", "between 0 and 5")

    def test_range_at_least(self) -> None:
        """Values under an open range name the minimum."""
        self.assertProblem(
            "upstream: {parallel_count: 0}", "upstream.parallel_count", "must be at least 1; got 0"
        )

    def test_range_ttl_pct(self) -> None:
        """threshold_ttl_pct is 1..99."""
        self.assertProblem("cache: {prefetch: {threshold_ttl_pct: 100}}", "cache.prefetch.threshold_ttl_pct", "between 1 and 99")

    def test_range_num_workers(self) -> None:
        """server.num_workers is 1..256."""
        self.assertProblem("server: {num_workers: 257}", "server.num_workers", "between 1 and 256")

    def test_range_ttl_multiplier(self) -> None:
        """ttl_multiplier is at least 1.0."""
        self.assertProblem(
            "cache: {shared_cache: {ttl_multiplier: 0.5}}", "cache.shared_cache.ttl_multiplier", "between 1 and 100"
        )

    def test_message_shards_power_of_two(self) -> None:
        """message_cache.num_shards must be a power of two."""
        self.assertProblem(
            "cache: {message_cache: {num_shards: 48}}", "cache.message_cache.num_shards", "must be a power of two"
        )

    def test_rrset_shards_power_of_two(self) -> None:
        """rrset_cache.num_shards must be a power of two, with the nearest ones named."""
        self.assertProblem(
            "cache: {rrset_cache: {num_shards: 100}}", "cache.rrset_cache.num_shards", "(nearest: 64 or 128)"
        )

    def test_enum_lists_allowed(self) -> None:
        """An unknown mode lists the allowed ones."""
        self.assertProblem(
            "cache: {mode: distributed}", "cache.mode", "must be one of 'standalone', 'local-only', 'hybrid'"
        )

    def test_enum_suggestion(self) -> None:
        """A near miss of an allowed value gets a suggestion."""
        self.assertProblem(
            "cache: {shared_cache: {read_preference: replica_preferred}}",
            "cache.shared_cache.read_preference",
            "did you mean 'replicaPreferred'?",
        )

    def test_enum_wrong_type(self) -> None:
        """A non-string for a choice."""
        self.assertProblem("logging: {level: 10}", "logging.level", "must be one of")

    def test_network_host_bits(self) -> None:
        """A network with host bits set suggests the network."""
        self.assertProblem("server: {allow: ['10.1.2.3/8']}", "server.allow[0]", "did you mean '10.0.0.0/8'?")

    def test_network_garbage(self) -> None:
        """A string that is no network."""
        self.assertProblem("server: {allow: ['127.0.0.0/8', 'lan']}", "server.allow[1]", "is not a network")

    def test_empty_allow(self) -> None:
        """An empty allow list would refuse everyone."""
        self.assertProblem("server: {allow: []}", "server.allow", "at least 1 network")

    def test_duplicate_key(self) -> None:
        """A key given twice in one mapping is reported, not silently overridden."""
        self.assertProblem("logging:\n  level: info\n  level: debug\n", "logging.level", "appears twice (again on line 3)")

    def test_yaml_syntax_error(self) -> None:
        """Broken YAML is one problem at '<file>' with its line."""
        self.assertProblem("server:\n  num_workers: 2\n   bad: [\n", "<file>", "line 3")

    def test_top_level_list(self) -> None:
        """The top level must be a mapping."""
        self.assertProblem("- server\n- cache\n", "<file>", "top level must be a mapping")

    def test_top_level_scalar(self) -> None:
        """A lone scalar is not a configuration."""
        self.assertProblem("hello\n", "<file>", "got a string ('hello')")

    def test_unsafe_tag(self) -> None:
        """Python object tags are refused by the safe loader."""
        self.assertProblem("server: !!python/object:os.system {}\n", "<file>", "invalid YAML")

    def test_missing_file(self) -> None:
        """A file that cannot be read is one problem."""
        path = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, path, {}, self.resolv)
        self.assertEqual([p.path for p in error.problems], ["<file>"])
        self.assertIn("cannot read", error.problems[0].message)

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is one problem."""
        path = self.mktemp()
        Path(path).write_bytes(b"server: {worker_id: \xff}\n")
        error = self.assertRaises(ConfigError, load_config, path, {}, self.resolv)
        self.assertEqual([p.path for p in error.problems], ["<file>"])
        self.assertIn("UTF-8", error.problems[0].message)


class CrossCheckTests(ConfigTestCase):
    """Checks that involve more than one setting."""

    def test_min_ttl_above_max_ttl(self) -> None:
        """min_ttl may not exceed max_ttl."""
        self.assertProblem(
            "cache: {message_cache: {min_ttl: 600, max_ttl: 300}}",
            "cache.message_cache.min_ttl",
            "must not exceed max_ttl (300)",
        )

    def test_hybrid_needs_shared_cache(self) -> None:
        """mode hybrid without the shared cache enabled."""
        self.assertProblem("cache: {mode: hybrid}", "cache.mode", "needs cache.shared_cache.enabled: true")

    def test_shared_cache_needs_hybrid(self) -> None:
        """An enabled shared cache outside mode hybrid."""
        self.assertProblem(
            "cache: {mode: local-only, shared_cache: {enabled: true}}",
            "cache.shared_cache.enabled",
            "only with cache.mode 'hybrid'",
        )

    def test_sentinel_needs_addresses(self) -> None:
        """type redis-sentinel needs sentinels."""
        self.assertProblem(
            "cache: {shared_cache: {type: redis-sentinel}}",
            "cache.shared_cache.sentinel.addresses",
            "at least one sentinel",
        )

    def test_cluster_needs_addresses(self) -> None:
        """type redis-cluster needs seed nodes."""
        self.assertProblem(
            "cache: {shared_cache: {type: redis-cluster}}", "cache.shared_cache.cluster_addresses", "at least one node"
        )

    def test_cluster_database_zero(self) -> None:
        """Redis Cluster has only database 0."""
        self.assertProblem(
            "cache: {shared_cache: {type: redis-cluster, cluster_addresses: [r0], database: 2}}",
            "cache.shared_cache.database",
            "only database 0",
        )

    def test_pubsub_needs_hybrid(self) -> None:
        """Pub/sub invalidation needs Redis, so mode hybrid."""
        self.assertProblem(
            "cache: {invalidation: {strategy: pubsub}}", "cache.invalidation.strategy", "needs cache.mode 'hybrid'"
        )

    def test_backoff_order(self) -> None:
        """min_retry_backoff may not exceed max_retry_backoff."""
        self.assertProblem(
            "cache: {shared_cache: {min_retry_backoff: 1s, max_retry_backoff: 100ms}}",
            "cache.shared_cache.min_retry_backoff",
            "must not exceed max_retry_backoff (0.1s)",
        )

    def test_read_preference_needs_replicas(self) -> None:
        """Reading from replicas needs Sentinel or Cluster."""
        self.assertProblem(
            "cache: {shared_cache: {read_preference: replica}}",
            "cache.shared_cache.read_preference",
            "needs type 'redis-sentinel' or 'redis-cluster'",
        )

    def test_idle_connections_within_pool(self) -> None:
        """min_idle_conns may not exceed pool_size."""
        self.assertProblem(
            "cache: {shared_cache: {pool_size: 2, min_idle_conns: 3}}",
            "cache.shared_cache.min_idle_conns",
            "must not exceed pool_size (2)",
        )

    def test_password_and_secret(self) -> None:
        """The password comes from one place."""
        self.assertProblem(
            "cache: {shared_cache: {password: pw, password_secret: {file: /pw}}}",
            "cache.shared_cache.password_secret",
            "either password or password_secret",
        )

    def test_secret_file_and_name(self) -> None:
        """A secret is a file or a name and key, not both."""
        self.assertProblem(
            "cache: {shared_cache: {password_secret: {file: /pw, name: n, key: k}}}",
            "cache.shared_cache.password_secret.file",
            "either file or name and key",
        )

    def test_secret_name_without_key(self) -> None:
        """A secret name needs its key."""
        self.assertProblem(
            "cache: {shared_cache: {password_secret: {name: redis}}}",
            "cache.shared_cache.password_secret.key",
            "name and key must be given together",
        )

    def test_token_and_token_file(self) -> None:
        """The API token comes from one place."""
        self.assertProblem(
            "api: {auth_token: t, auth_token_file: /t}", "api.auth_token_file", "either auth_token or auth_token_file"
        )

    def test_forwarding_loop(self) -> None:
        """An upstream that is our own listen address is a loop."""
        self.assertProblem(
            "server: {listen_address: '0.0.0.0:53'}\nupstreams: ['192.0.2.1', '127.0.0.1']",
            "upstreams[1]",
            "forwarding loop",
        )

    def test_api_port_clash(self) -> None:
        """The API cannot listen on the DNS TCP port."""
        self.assertProblem(
            "server: {listen_address: '127.0.0.1:8080'}\napi: {listen_address: ':8080'}",
            "api.listen_address",
            "also server.listen_address",
        )

    def test_no_cascade_from_invalid_value(self) -> None:
        """A cross check that involves an invalid setting is not reported on top of it."""
        problems = self.problems("cache: {mode: hybird, shared_cache: {enabled: true}}")
        self.assertEqual([p.path for p in problems], ["cache.mode"])

    def test_no_cascade_from_default_substitute(self) -> None:
        """An invalid upstream list is not replaced by a default that then loops."""
        problems = self.problems("server: {listen_address: '0.0.0.0:53'}\nupstreams: [192.0.2.1, dns.google]")
        self.assertEqual([p.path for p in problems], ["upstreams[1]"])

    def test_no_cascade_from_invalid_section(self) -> None:
        """A broken section does not cause cross-check noise about its settings."""
        problems = self.problems("cache: {mode: hybrid, shared_cache: redis}")
        self.assertEqual([p.path for p in problems], ["cache.shared_cache"])

    def test_consistency_problems_on_built_config(self) -> None:
        """consistency_problems checks a Config built in code."""
        config = Config(cache=CacheConfig(mode="hybrid"))
        self.assertEqual(
            [p.path for p in consistency_problems(config)], ["cache.mode"]
        )
        self.assertEqual(consistency_problems(Config()), [])


class ReportTests(ConfigTestCase):
    """All problems at once, and how they read."""

    FIVE_MISTAKES = """
server:
  num_workers: 0
upstreams: ["dns.google"]
cache:
  mode: standalon
  message_cache:
    num_shards: 48
    min_ttl: 900
    max_ttl: 300
"""

    def test_all_problems_at_once(self) -> None:
        """A file with five mistakes reports five problems, in file order, cross checks last."""
        problems = self.problems(self.FIVE_MISTAKES)
        self.assertEqual(
            [p.path for p in problems],
            ["server.num_workers", "upstreams[0]", "cache.mode", "cache.message_cache.num_shards",
             "cache.message_cache.min_ttl"],
        )

    def test_report(self) -> None:
        """report() is a heading with the file and count, then one problem a line."""
        error = self.assertRaises(ConfigError, self.parse, self.FIVE_MISTAKES)
        lines = error.report().splitlines()
        self.assertEqual(lines[0], "config error in test.yaml: 5 problems")
        self.assertEqual(len(lines), 6)
        self.assertEqual(lines[4].strip(), str(error.problems[3]))
        self.assertTrue(lines[4].strip().startswith("cache.message_cache.num_shards: must be a power of two"))
        self.assertEqual(str(error), error.report())

    def test_report_singular(self) -> None:
        """One problem is '1 problem'."""
        error = self.assertRaises(ConfigError, self.parse, "server: {num_workers: 0}")
        self.assertEqual(error.report().splitlines()[0], "config error in test.yaml: 1 problem")

    def test_problem_str(self) -> None:
        """A problem reads 'path: message'."""
        problem = Problem("cache.message_cache.num_shards", "must be a power of two")
        self.assertEqual(str(problem), "cache.message_cache.num_shards: must be a power of two")


class SecretTests(ConfigTestCase):
    """Reading the Redis password and the API token, and keeping them out of repr()."""

    def write(self, text: str) -> str:
        """Write a file and return its path."""
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def test_password_inline(self) -> None:
        """password wins."""
        self.assertEqual(secret_password(SharedCacheConfig(password="pw")), "pw")

    def test_password_file(self) -> None:
        """password_secret.file is read without its trailing newline."""
        shared = SharedCacheConfig(password_secret=PasswordSecretConfig(file=self.write("s3cret\n")))
        self.assertEqual(secret_password(shared), "s3cret")

    def test_password_kubernetes_secret(self) -> None:
        """name and key read {directory}/{name}/{key}."""
        directory = Path(self.mktemp())
        (directory / "redis-password").mkdir(parents=True)
        (directory / "redis-password" / "password").write_text("from-k8s")
        shared = SharedCacheConfig(
            password_secret=PasswordSecretConfig(name="redis-password", key="password", directory=str(directory))
        )
        self.assertEqual(secret_password(shared), "from-k8s")

    def test_no_password(self) -> None:
        """Nothing configured means no password."""
        self.assertEqual(secret_password(SharedCacheConfig()), "")

    def test_password_file_missing(self) -> None:
        """An unreadable password file is a ConfigError at its setting."""
        shared = SharedCacheConfig(password_secret=PasswordSecretConfig(file=self.mktemp()))
        error = self.assertRaises(ConfigError, secret_password, shared)
        self.assertEqual([p.path for p in error.problems], ["cache.shared_cache.password_secret.file"])
        self.assertIn("cannot read", error.problems[0].message)

    def test_password_file_empty(self) -> None:
        """An empty password file is a ConfigError."""
        shared = SharedCacheConfig(password_secret=PasswordSecretConfig(file=self.write("\n")))
        error = self.assertRaises(ConfigError, secret_password, shared)
        self.assertIn("is empty", error.problems[0].message)

    def test_kubernetes_secret_missing(self) -> None:
        """A missing mounted secret is a ConfigError at password_secret."""
        shared = SharedCacheConfig(
            password_secret=PasswordSecretConfig(name="n", key="k", directory=self.mktemp())
        )
        error = self.assertRaises(ConfigError, secret_password, shared)
        self.assertEqual([p.path for p in error.problems], ["cache.shared_cache.password_secret"])

    def test_token_order(self) -> None:
        """auth_token, then auth_token_file (stripped), then $DNSGO_API_TOKEN, then ''."""
        environ = {"DNSGO_API_TOKEN": "from-env"}
        token_file = self.write("  from-file \n")
        self.assertEqual(api_token(ApiConfig(auth_token="inline"), environ), "inline")
        self.assertEqual(api_token(ApiConfig(auth_token_file=token_file), environ), "from-file")
        self.assertEqual(api_token(ApiConfig(), environ), "from-env")
        self.assertEqual(api_token(ApiConfig(), {}), "")

    def test_token_file_missing(self) -> None:
        """An unreadable token file is a ConfigError at api.auth_token_file."""
        error = self.assertRaises(ConfigError, api_token, ApiConfig(auth_token_file=self.mktemp()), {})
        self.assertEqual([p.path for p in error.problems], ["api.auth_token_file"])

    def test_repr_hides_secrets(self) -> None:
        """Neither the Redis password nor the API token shows in repr()."""
        config = self.parse(
            "cache: {shared_cache: {password: hunter2-pw}}\napi: {auth_token: tok-12345}"
        )
        self.assertEqual(config.cache.shared_cache.password, "hunter2-pw")
        self.assertEqual(config.api.auth_token, "tok-12345")
        for text in (repr(config), repr(config.cache.shared_cache), repr(config.api)):
            self.assertNotIn("hunter2-pw", text)
            self.assertNotIn("tok-12345", text)
        self.assertIn("key_prefix=", repr(config.cache.shared_cache))


class ExampleFileTests(ConfigTestCase):
    """The example configurations in etc/."""

    EXPECTED = {
        "standalone.yaml": ("standalone", False, None),
        "local-only.yaml": ("local-only", False, None),
        "hybrid-redis.yaml": ("hybrid", True, "redis"),
        "sentinel-site.yaml": ("hybrid", True, "redis-sentinel"),
        "cluster.yaml": ("hybrid", True, "redis-cluster"),
        "control.yaml": ("local-only", False, None),
    }

    def test_all_present(self) -> None:
        """etc/ holds one example per deployment in the seed."""
        self.assertEqual(sorted(p.name for p in EXAMPLES.glob("*.yaml")), sorted(self.EXPECTED))

    def test_all_load(self) -> None:
        """Every etc/*.yaml loads without problems and has the deployment its name says."""
        for path in sorted(EXAMPLES.glob("*.yaml")):
            try:
                config = load_config(str(path), environ=SITES, resolv_conf=self.resolv)
            except ConfigError as error:
                self.fail(error.report())
            mode, enabled, kind = self.EXPECTED[path.name]
            self.assertEqual(config.cache.mode, mode, path.name)
            self.assertEqual(config.cache.shared_cache.enabled, enabled, path.name)
            if kind is not None:
                self.assertEqual(config.cache.shared_cache.type, kind, path.name)

    def test_sentinel_site_needs_site_addresses(self) -> None:
        """sentinel-site.yaml names the missing site variables."""
        error = self.assertRaises(
            ConfigError, load_config, str(EXAMPLES / "sentinel-site.yaml"), {}, self.resolv
        )
        self.assertEqual(
            [p.path for p in error.problems],
            ["cache.shared_cache.sentinel.addresses[0]", "cache.shared_cache.sentinel.addresses[1]"],
        )

    def test_environment_overrides(self) -> None:
        """The examples' ${VAR:-default} settings follow the environment."""
        environ = {"DNSGO_LISTEN": "0.0.0.0:53", "DNSGO_UPSTREAMS": "192.0.2.7,192.0.2.8"}
        config = load_config(str(EXAMPLES / "local-only.yaml"), environ, self.resolv)
        self.assertEqual(config.server.listen_address, Address("0.0.0.0", 53))
        self.assertEqual(config.upstreams, (Address("192.0.2.7", 53), Address("192.0.2.8", 53)))


def _sections(cls: type, path: str = "") -> dict[str, list[str]]:
    """Map each section path to the names of its plain settings."""
    result: dict[str, list[str]] = {path: []}
    for field in attrs.fields(cls):
        if isinstance(field.default, attrs.Factory) and attrs.has(field.default.factory):
            result.update(_sections(field.default.factory, f"{path}.{field.name}".lstrip(".")))
        else:
            result[path].append(field.name)
    return result


class ReferenceTests(SynchronousTestCase):
    """docs/configuration.md documents every setting."""

    def test_every_setting_documented(self) -> None:
        """Each section has a '### `path`' heading (the top level: '### Top level')
        whose table has a row per setting."""
        text = REFERENCE.read_text()
        headings = {
            m.group(1) or "": m.end() for m in re.finditer(r"^### (?:`([^`]+)`|Top level)", text, re.M)
        }
        sections = _sections(Config)
        self.assertEqual(set(sections) - set(headings), set())
        for section, names in sections.items():
            start = headings[section]
            following = [pos for pos in headings.values() if pos > start]
            body = text[start:min(following, default=len(text))]
            for name in names:
                self.assertRegex(body, rf"\n\| `{re.escape(name)}` \|", f"{section}.{name}")
