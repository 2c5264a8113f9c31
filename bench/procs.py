"""
Starting, pinning, measuring and stopping the processes of a benchmark run.

Every process is started in its own session, so that it and whatever it
forks can be stopped through its process group id, and is registered with a
``Processes`` registry that stops them all at the end whatever happens.
"""
import atexit
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that is free for both UDP and TCP on ``host`` right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of ``pid`` and of its descendants to ``cpu``."""
    for each in process_tree(pid):
        subprocess.run(["taskset", "-acp", str(cpu), str(each)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its live descendants, found through /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in task.read_text().split())
            except OSError:
                pass
    return found


def cpu_ticks(pid: int) -> tuple[int, int]:
    """User and system CPU time of ``pid`` and its descendants, in clock ticks (a process that is gone counts 0)."""
    try:
        tree = process_tree(pid)
    except OSError:  # a process of the tree ended while it was walked
        tree = [pid]
    user = system = 0
    for each in tree:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def rss_kib(pid: int) -> int:
    """Return the summed VmRSS, in KiB, of ``pid`` and its descendants."""
    total = 0
    for each in process_tree(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@dataclass
class Process:
    """One started process: its name, command, log file and Popen handle."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        """The process id of the started command (the group leader)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's log, to explain a failure."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.popen.returncode is not None and not _group_exists(self.pid):
            return
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + grace
        while _group_exists(self.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def _signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to the process group ``pgid`` if it still exists."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_exists(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still alive."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@dataclass
class Processes:
    """The registry of every process a run started; ``stop_all`` ends them all.

    Use it as a context manager; it also registers ``stop_all`` with atexit
    and turns SIGTERM/SIGHUP into SystemExit so that cleanup always runs.
    """

    started: list[Process] = field(default_factory=list)

    def __enter__(self) -> "Processes":
        atexit.register(self.stop_all)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _exit_on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_all()

    def start(self, name: str, command: list[str], log: Path, cpu: int | None = None,
              cwd: Path | None = None) -> Process:
        """Start ``command`` (under ``taskset -c cpu`` when given) with its
        output in ``log``, and register it."""
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]
        with open(log, "wb") as out:
            popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        process = Process(name, command, log, popen)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every registered process, newest first."""
        while self.started:
            self.started.pop().stop()


def _exit_on_signal(signum, frame) -> None:
    """Turn a termination signal into SystemExit so finally blocks run."""
    raise SystemExit(128 + signum)
