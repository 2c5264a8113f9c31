"""
Separate hosts for end-to-end tests, made of Linux network namespaces
(iproute2): a router namespace, and one namespace per host, each linked to
the router by a veth pair of its own; the test's own namespace reaches
every host through one more veth pair to the router.

Addresses: 10.N.0.0/16 (N chosen free), the test's side 10.N.0.1; host
``i`` of site ``s`` (counted from 1) is 10.N.s.(4i+1), on a /30 with the
router at 10.N.s.(4i+2).  Faults:

- :meth:`Topology.cut` drops every packet between two groups of hosts (a
  ``blackhole`` policy-routing rule in the router, both ways): a partition;
- :meth:`Topology.link_down` takes a host's link down (``ip link set down``);
- :meth:`Topology.heal` undoes both.

Each test names its namespaces uniquely and deletes them when it ends.
:func:`skip_unless_possible` raises SkipTest, with one line saying why,
where namespaces cannot be made (not root, no CAP_NET_ADMIN, no iproute2).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import uuid

import attrs
from twisted.trial.unittest import SkipTest

IP = shutil.which("ip") or "/usr/sbin/ip"


def run(*args: str, netns: str | None = None) -> str:
    """Run ``ip ARGS`` (in ``netns``); its output; CalledProcessError (with stderr) if it fails."""
    argv = [IP, *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def skip_unless_possible() -> None:
    """SkipTest (one line) unless this process can make network namespaces."""
    if not os.path.exists(IP):
        raise SkipTest("network namespaces: iproute2's ip is not installed")
    if os.geteuid() != 0:
        raise SkipTest("network namespaces need root (CAP_NET_ADMIN); not root")
    probe = f"dgprobe-{uuid.uuid4().hex[:8]}"
    try:
        run("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as e:
        why = (getattr(e, "stderr", "") or str(e)).strip().splitlines()[0:1]
        raise SkipTest(f"network namespaces cannot be made here: {why[0] if why else e}") from None
    run("netns", "del", probe)


@attrs.frozen
class NetHost:
    """One host: its namespace, address, site and the router's end of its link."""

    name: str
    site: str
    netns: str
    address: str
    router_side: str  # the veth name in the router namespace


class Topology:
    """
    Hosts in sites (``{site: [host name, ...]}``) behind one router, built
    at once; :meth:`destroy` removes everything (call it from a cleanup).
    """

    def __init__(self, sites: dict[str, list[str]]) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.net = self._free_net()
        self.router = f"dg{self.tag}-router"
        self.mgmt = f"dgm{self.tag}"  # the test's end of its link to the router
        self.hosts: dict[str, NetHost] = {}
        self.site_net: dict[str, str] = {}
        self._namespaces: list[str] = []
        self._rules: list[tuple[str, str]] = []
        self._down: list[str] = []
        try:
            self._build(sites)
        except BaseException:
            self.destroy()
            raise

    @property
    def test_address(self) -> str:
        """The test's own address, which every host reaches."""
        return f"10.{self.net}.0.1"

    # -- faults ------------------------------------------------------------

    def cut(self, one, other) -> None:
        """Drop every packet between ``one`` and ``other`` (site names, host names, or lists of them)."""
        for a in self._prefixes(one):
            for b in self._prefixes(other):
                for source, destination in ((a, b), (b, a)):
                    run("rule", "add", "from", source, "to", destination, "blackhole", netns=self.router)
                    self._rules.append((source, destination))

    def link_down(self, host: str) -> None:
        """Take ``host``'s link down (at the router's end)."""
        side = self.hosts[host].router_side
        run("link", "set", side, "down", netns=self.router)
        self._down.append(side)

    def heal(self) -> None:
        """Remove every cut and bring every link up again."""
        rules, self._rules = self._rules, []
        for source, destination in rules:
            run("rule", "del", "from", source, "to", destination, "blackhole", netns=self.router)
        down, self._down = self._down, []
        for side in down:
            run("link", "set", side, "up", netns=self.router)

    # -- building and removing -----------------------------------------------

    def destroy(self) -> None:
        """Delete every namespace and link this topology made (whatever state it is in)."""
        for netns in reversed(self._namespaces):
            try:
                run("netns", "del", netns)
            except subprocess.CalledProcessError:
                pass
        self._namespaces = []
        try:
            run("link", "del", self.mgmt)
        except subprocess.CalledProcessError:
            pass  # gone with the router namespace

    def _build(self, sites: dict[str, list[str]]) -> None:
        net = self.net
        self._add_netns(self.router)
        subprocess.run([IP, "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                       check=True, capture_output=True, timeout=20)
        run("link", "add", self.mgmt, "type", "veth", "peer", "name", "mgmt0", "netns", self.router)
        run("addr", "add", f"10.{net}.0.1/30", "dev", self.mgmt)
        run("link", "set", self.mgmt, "up")
        run("addr", "add", f"10.{net}.0.2/30", "dev", "mgmt0", netns=self.router)
        run("link", "set", "mgmt0", "up", netns=self.router)
        run("route", "add", f"10.{net}.0.0/16", "via", f"10.{net}.0.2", "dev", self.mgmt)
        for s, (site, names) in enumerate(sites.items(), 1):
            self.site_net[site] = f"10.{net}.{s}.0/24"
            for i, name in enumerate(names):
                netns = f"dg{self.tag}-{name}"
                self._add_netns(netns)
                host_ip, router_ip = f"10.{net}.{s}.{4 * i + 1}", f"10.{net}.{s}.{4 * i + 2}"
                router_side = f"r{s}x{i}"
                run("link", "add", router_side, "netns", self.router, "type", "veth", "peer", "name", "eth0",
                    "netns", netns)
                run("addr", "add", f"{host_ip}/30", "dev", "eth0", netns=netns)
                run("link", "set", "eth0", "up", netns=netns)
                run("route", "add", "default", "via", router_ip, netns=netns)
                run("addr", "add", f"{router_ip}/30", "dev", router_side, netns=self.router)
                run("link", "set", router_side, "up", netns=self.router)
                self.hosts[name] = NetHost(name, site, netns, host_ip, router_side)

    def _add_netns(self, netns: str) -> None:
        run("netns", "add", netns)
        self._namespaces.append(netns)
        run("link", "set", "lo", "up", netns=netns)

    def _prefixes(self, group) -> list[str]:
        names = [group] if isinstance(group, str) else list(group)
        out = []
        for name in names:
            if name in self.site_net:
                out.append(self.site_net[name])
            else:
                out.append(f"{self.hosts[name].address}/32")
        return out

    @staticmethod
    def _free_net() -> int:
        """A second octet N such that 10.N.0.0/16 is routed nowhere here yet."""
        routes = run("route", "show")
        taken = set()
        for line in routes.splitlines():
            word = line.split()[0] if line.split() else ""
            try:
                network = ipaddress.ip_network(word, strict=False)
            except ValueError:
                continue
            if network.version == 4:
                taken.add(network)
        for _ in range(200):
            n = 100 + int.from_bytes(os.urandom(1), "big") % 150
            candidate = ipaddress.ip_network(f"10.{n}.0.0/16")
            if not any(candidate.overlaps(t) for t in taken if t.prefixlen > 0):
                return n
        raise RuntimeError("no free 10.N.0.0/16 for a test network")
