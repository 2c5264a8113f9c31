"""
Configuration files and command lines of the upstream (NSD) and of the
servers under test (dnsgo, Unbound, the stock Twisted Names server).

Each ``*_command`` function writes what its program needs into a work
directory and returns the argv to start it in the foreground.
"""
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workload import READY_NAME, ZONE

HOST = "127.0.0.1"


def venv_bin(program: str) -> str:
    """The path of ``program`` in the virtualenv running this script."""
    return str(Path(sys.executable).parent / program)


# --------------------------------------------------------------------------
# NSD, the authoritative upstream


#: NSD's response-rate limit (``bench/run.py --nsd-rrl``); 0 turns RRL off.
NSD_RRL = [0]


def nsd_config(workdir: Path, port: int, zonefile: Path) -> Path:
    """Write an nsd.conf serving ``zonefile`` on HOST:port with every state
    file inside ``workdir`` and a unix control socket; check it; return it."""
    conf = workdir / "nsd.conf"
    conf.write_text(f"""\
server:
  ip-address: {HOST}
  port: {port}
  do-ip6: no
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "{workdir}"
  database: ""
  zonelistfile: "{workdir}/zone.list"
  xfrdfile: "{workdir}/xfrd.state"
  xfrdir: "{workdir}"
  pidfile: "{workdir}/nsd.pid"
  logfile: "{workdir}/nsd.log"
  verbosity: 0
  hide-version: yes
  refuse-any: no
  rrl-ratelimit: {NSD_RRL[0]}
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: yes
  control-interface: "{workdir}/nsd.sock"
zone:
  name: {ZONE}
  zonefile: "{zonefile}"
""")
    subprocess.run(["nsd-checkconf", str(conf)], check=True, timeout=30)
    return conf


def nsd_command(conf: Path) -> list[str]:
    """The argv running NSD in the foreground with ``conf``."""
    return ["/usr/sbin/nsd", "-d", "-c", str(conf)]


def start_nsd(procs, workdir: Path, zonefile: Path, cpu: int, timeout: float = 300):
    """
    Start NSD (``procs.start``) on a free port serving ``zonefile``, wait
    until it answers, pin it to ``cpu``; return (port, its nsd.conf, the
    Process).  SystemExit with the end of its log when it does not answer.
    """
    import probe
    from procs import free_port, pin

    port = free_port()
    conf = nsd_config(workdir, port, zonefile)
    nsd = procs.start("nsd", nsd_command(conf), workdir / "nsd.out", cpu=cpu)
    if not probe.wait_until_answering(port, READY_NAME, timeout, nsd.alive):
        raise SystemExit(f"nsd did not start:\n{nsd.log_tail()}")
    pin(nsd.pid, cpu)
    return port, conf, nsd


def nsd_queries(conf: Path) -> int:
    """How many queries NSD has received since it started (``num.queries``
    of ``nsd-control stats_noreset``)."""
    output = subprocess.run(["nsd-control", "-c", str(conf), "stats_noreset"], check=True,
                            capture_output=True, text=True, timeout=30).stdout
    for line in output.splitlines():
        if line.startswith("num.queries="):
            return int(line.split("=", 1)[1])
    raise RuntimeError(f"no num.queries in nsd-control output:\n{output}")


# --------------------------------------------------------------------------
# The servers under test


def unbound_command(workdir: Path, port: int, upstream_port: int) -> list[str]:
    """Write an unbound.conf for a one-thread forwarder to the upstream and
    return the argv running it in the foreground."""
    conf = workdir / "unbound.conf"
    conf.write_text(f"""\
server:
  interface: {HOST}
  port: {port}
  do-ip6: no
  num-threads: 1
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  local-zone: "test." nodefault
  module-config: "iterator"
  qname-minimisation: no
  msg-cache-size: {CACHE_MB[0]}m
  rrset-cache-size: {CACHE_MB[1]}m
  cache-min-ttl: 0
  prefetch: no
forward-zone:
  name: "."
  forward-addr: {HOST}@{upstream_port}
""")
    subprocess.run(["unbound-checkconf", str(conf)], check=True, timeout=30,
                   stdout=subprocess.DEVNULL)
    return ["/usr/sbin/unbound", "-d", "-c", str(conf)]


#: Extra top-level YAML for dnsgo's configuration (``bench/run.py --dnsgo-upstream``).
DNSGO_UPSTREAM_EXTRA: list[str] = []

#: The message and RRset cache sizes in MiB of dnsgo and Unbound alike (``bench/run.py --cache-mb``).
CACHE_MB: list[int] = [64, 128]

#: dnsgo's eviction policy (``bench/run.py --dnsgo-eviction``).
DNSGO_EVICTION: list[str] = ["s3fifo"]


def dnsgo_command(workdir: Path, port: int, upstream_port: int) -> list[str]:
    """Write the minimal dnsgo YAML configuration (the caches sized like
    Unbound's) and return the twistd argv running it in the foreground."""
    conf = workdir / "dnsgo.yaml"
    upstream = "".join(f"  {line}\n" for line in DNSGO_UPSTREAM_EXTRA)
    conf.write_text(f"""\
server:
  listen_address: "{HOST}:{port}"
upstreams: ["{HOST}:{upstream_port}"]
cache:
  message_cache: {{max_size_mb: {CACHE_MB[0]}, eviction: {DNSGO_EVICTION[0]}}}
  rrset_cache: {{max_size_mb: {CACHE_MB[1]}, eviction: {DNSGO_EVICTION[0]}}}
api:
  enabled: false
""" + (f"upstream:\n{upstream}" if upstream else ""))
    return [venv_bin("twistd"), "-n", "--pidfile=", "dnsgo", "--config", str(conf)]


def twisted_names_command(workdir: Path, port: int, upstream_port: int) -> list[str]:
    """Write a .tac running the stock ``twistd dns --cache --recursive`` service
    and return the twistd argv.

    ``twistd dns --resolv-conf`` reads only addresses from resolv.conf and
    always pairs them with ``twisted.names.dns.PORT`` (53), so the .tac builds
    the very same service from the same ``twisted.names.tap`` Options with
    that constant pointed at the upstream's port.
    """
    resolv = workdir / "resolv.conf"
    resolv.write_text(f"nameserver {HOST}\n")
    tac = workdir / "twisted_names.tac"
    tac.write_text(f"""\
from twisted.application import service
from twisted.names import dns, tap

dns.PORT = {upstream_port}
options = tap.Options()
options.parseOptions(["--cache", "--resolv-conf", {str(resolv)!r},
                      "--interface", {HOST!r}, "--port", "{port}"])
application = service.Application("twisted-names")
tap.makeService(options).setServiceParent(application)
""")
    return [venv_bin("twistd"), "-n", "--pidfile=", "-y", str(tac)]


@dataclass(frozen=True)
class ServerKind:
    """A server under test: its column name and how to configure and start it."""

    name: str
    command: Callable[[Path, int, int], list[str]]
    startup_limit: float


SERVERS = (
    ServerKind("dnsgo", dnsgo_command, 60.0),
    ServerKind("unbound", unbound_command, 30.0),
    ServerKind("twisted-names", twisted_names_command, 60.0),
)
