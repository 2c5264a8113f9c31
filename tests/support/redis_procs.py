"""
Real redis-server processes for the tests: a single server, a Sentinel set
(master, replica, three sentinels) and a Cluster (three masters, three
replicas), each on free ports on 127.0.0.1, in a temporary directory, and
stopped at the end of the test.

The temporary directories are made when a process starts, under trial's
temporary folder (``_trial_temp``, the current directory of a trial run):
one left behind by a test that fails before its cleanup goes with trial's
folder at the next run instead of piling up in the system's temporary
folder.  Outside trial (bench/) they are made in the system's.

Everything here is blocking and quick (processes start in milliseconds);
tests call it from setUp and register ``stop`` with addCleanup.  Tests skip
when redis-server is not installed.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REDIS_SERVER = shutil.which("redis-server")
REDIS_SENTINEL = shutil.which("redis-sentinel") or REDIS_SERVER
REDIS_CLI = shutil.which("redis-cli")
SKIP = None if REDIS_SERVER and REDIS_CLI else "redis-server / redis-cli are not installed"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (and its +10000 cluster bus port too)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def cli(port: int, *args: str, password: str | None = None, timeout: float = 5.0) -> str:
    """Run redis-cli against 127.0.0.1:port; returns its stdout (stripped)."""
    cmd = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port)]
    if password:
        cmd += ["--no-auth-warning", "-a", password]
    out = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)
    return out.stdout.strip()


def cli_set_bytes(port: int, key: bytes, value: bytes, timeout: float = 5.0) -> str:
    """SET ``key`` to binary ``value`` with redis-cli (``-x`` reads the value from stdin), as anyone with access could."""
    cmd = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), "-x", "SET", key.decode("utf-8")]
    out = subprocess.run(cmd, input=value, capture_output=True, timeout=timeout)
    return out.stdout.decode("utf-8", "replace").strip()


def make_dir(prefix: str) -> str:
    """A new directory for one process: under trial's temporary folder, the current directory, when trial runs."""
    # trial marks its folder; with -jN each worker runs in a numbered folder inside it
    under_trial = os.path.exists("_trial_marker") or os.path.exists(os.path.join("..", "_trial_marker"))
    return tempfile.mkdtemp(prefix=prefix, dir=os.getcwd() if under_trial else None)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class RedisServer:
    """One redis-server (optionally a replica, or a cluster node)."""

    def __init__(self, *, password: str | None = None, replicaof: "RedisServer | None" = None,
                 cluster: bool = False, port: int | None = None, directory: str | None = None) -> None:
        self.port = port or free_port()
        self.password = password
        self.replicaof = replicaof
        self.cluster = cluster
        #: Its data directory: ``directory``, else made by the first ``start``.
        self.dir = directory
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config_lines(self) -> list[str]:
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", "save \"\"", "appendonly no",
            "protected-mode no", f"logfile {self.dir}/redis-{self.port}.log", f"pidfile {self.dir}/redis-{self.port}.pid",
            "daemonize no", "repl-diskless-sync-delay 0",
        ]
        if self.password:
            lines += [f"requirepass {self.password}", f"masterauth {self.password}"]
        if self.replicaof is not None:
            lines.append(f"replicaof 127.0.0.1 {self.replicaof.port}")
        if self.cluster:
            lines += ["cluster-enabled yes", f"cluster-config-file {self.dir}/nodes-{self.port}.conf",
                      "cluster-node-timeout 1000", "cluster-require-full-coverage no"]
        return lines

    def start(self) -> "RedisServer":
        """Start the process and wait until it answers PING."""
        if self.dir is None:
            self.dir = make_dir("dnsgo-redis-")
        conf = os.path.join(self.dir, f"redis-{self.port}.conf")
        with open(conf, "w") as f:
            f.write("\n".join(self.config_lines()) + "\n")
        self.proc = subprocess.Popen([REDIS_SERVER, conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: cli(self.port, "PING", password=self.password) in ("PONG",), 10, f"redis on {self.port}")
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the process (default SIGKILL) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def restart(self) -> "RedisServer":
        """Start again on the same port (after ``kill``)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Kill and remove the data directory."""
        self.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


class SentinelProcess:
    """One redis-sentinel watching ``master`` under ``name``."""

    def __init__(self, master: RedisServer, name: str = "dns-cache", *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 3000) -> None:
        self.port = free_port()
        self.master = master
        self.name = name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.dir: str | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "SentinelProcess":
        if self.dir is None:
            self.dir = make_dir("dnsgo-sentinel-")
        conf = os.path.join(self.dir, "sentinel.conf")
        lines = [
            f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}", "protected-mode no",
            f"logfile {self.dir}/sentinel.log",
            f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.name} 1",
        ]
        if self.master.password:
            lines.append(f"sentinel auth-pass {self.name} {self.master.password}")
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([REDIS_SENTINEL, conf, "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        _wait(lambda: cli(self.port, "PING") == "PONG", 10, f"sentinel on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2)."""

    def __init__(self, name: str = "dns-cache", password: str | None = None, down_after_ms: int = 1000) -> None:
        self.name = name
        self.master = RedisServer(password=password)
        self.replica: RedisServer | None = None
        self.sentinels: list[SentinelProcess] = []
        self.password = password
        self.down_after_ms = down_after_ms

    def start(self) -> "SentinelSet":
        self.master.start()
        self.replica = RedisServer(password=self.password, replicaof=self.master).start()
        _wait(lambda: "master_link_status:up" in cli(self.replica.port, "INFO", "replication", password=self.password),
              10, "replication link")
        self.sentinels = [SentinelProcess(self.master, self.name, down_after_ms=self.down_after_ms).start()
                          for _ in range(3)]
        _wait(lambda: all(self._sees_replica(s) for s in self.sentinels), 15, "sentinels to discover the replica")
        return self

    def _sees_replica(self, s: SentinelProcess) -> bool:
        return str(self.replica.port) in cli(s.port, "SENTINEL", "replicas", self.name)

    def current_master_port(self) -> int:
        """The master port the sentinels report now."""
        out = cli(self.sentinels[0].port, "SENTINEL", "get-master-addr-by-name", self.name).split()
        return int(out[1])

    @property
    def sentinel_addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for r in (self.replica, self.master):
            if r is not None:
                r.stop()


class RedisCluster:
    """Three masters and three replicas, created with ``redis-cli --cluster create``."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.nodes = [RedisServer(cluster=True, password=password) for _ in range(6)]

    def start(self) -> "RedisCluster":
        for n in self.nodes:
            n.start()
        args = ["--cluster", "create", *[n.address for n in self.nodes], "--cluster-replicas", "1", "--cluster-yes"]
        cmd = [REDIS_CLI] + (["--no-auth-warning", "-a", self.password] if self.password else []) + args
        subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
        _wait(lambda: all("cluster_state:ok" in cli(n.port, "CLUSTER", "INFO", password=self.password)
                          for n in self.nodes), 30, "cluster_state:ok")
        return self

    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now."""
        return [n for n in self.nodes
                if n.proc and n.proc.poll() is None
                and "role:master" in cli(n.port, "INFO", "replication", password=self.password)]

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def wait_ok(self, timeout: float = 30) -> None:
        """Wait until every live node reports cluster_state:ok."""
        _wait(lambda: all("cluster_state:ok" in cli(n.port, "CLUSTER", "INFO", password=self.password)
                          for n in self.nodes if n.proc and n.proc.poll() is None), timeout, "cluster_state:ok")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
