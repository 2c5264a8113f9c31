"""
A deterministic model of control-plane HA for unit tests: real
:class:`~dnsgo.control.election.Election` and
:class:`~dnsgo.control.witness.Witness` objects on one task.Clock, talking
through a simulated network whose links can be cut (requests and answers
on a cut link are lost; the sender sees a timeout).

It also records what a checker needs: each control plane's active
intervals (from the election's role changes) and every command a worker
accepted, with the newest term any worker had seen at that moment.
"""
import json
import random

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock

from dnsgo.control.commands import CommandTimeout, StaleTerm
from dnsgo.control.election import ACTIVE, Election, HASettings, NotLeader
from dnsgo.control.quorum import QuorumRule
from dnsgo.control.state_file import MemoryState
from dnsgo.control.witness import Witness

#: Short timings, as in the e2e tests.
LEASE, RENEW, RETRY = 3.0, 2.0, 0.5


def settings(node_id: str, site: str, priority: int = 0, minimum: int = 3, min_sites: int = 2) -> HASettings:
    """HA settings of a simulated control plane."""
    return HASettings(node_id=node_id, site=site, priority=priority, api_address=f"{node_id}:8080",
                      lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY,
                      quorum=QuorumRule(minimum, min_sites))


@attrs.define
class SimWorker:
    """A simulated worker: its witness, site and (in-memory) state store."""

    worker_id: str
    site: str
    witness: Witness
    store: MemoryState
    alive: bool = True


class SimLink:
    """One control plane's view of the workers (the VoterLink of its election)."""

    def __init__(self, net: "SimNet", node_id: str) -> None:
        self._net = net
        self._node = node_id

    def members(self) -> dict[str, str]:
        return {w.worker_id: w.site for w in self._net.workers.values() if self._net.reachable(self._node, w)}

    def known(self) -> set[str]:
        return set(self.members())

    def ask(self, worker_id: str, kind: str, arguments: dict, timeout: float) -> defer.Deferred:
        return self._net.deliver(self._node, worker_id, kind, arguments, timeout)


class SimNet:
    """Control planes and workers on one clock, with cuttable links and a record of what happened."""

    def __init__(self, *, seed: int = 1, delay=lambda cp, worker: 0.01, report_every: float = 0.5) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)  # wall-clock-like times
        self.rng = random.Random(seed)
        self.delay = delay
        self.workers: dict[str, SimWorker] = {}
        self.controls: dict[str, Election] = {}
        self.down: set[str] = set()  # control planes not running
        self.cut: set[frozenset] = set()  # pairs of nodes (or sites) that cannot talk
        self.intervals: dict[str, list[list]] = {}  # node -> [[start, end|None, term]]
        self.accepted: list[tuple[str, int, int, float]] = []  # (worker, term, newest term seen anywhere, time)
        self.refused: list[tuple[str, int, str]] = []  # (worker, term, why)
        self._reports = None
        self.report_every = report_every

    # -- building ----------------------------------------------------------

    def add_worker(self, worker_id: str, site: str, store: MemoryState | None = None) -> SimWorker:
        store = store or MemoryState()
        witness = Witness(store, lease_duration=LEASE, reactor=self.clock)
        worker = SimWorker(worker_id, site, witness, store)
        self.workers[worker_id] = worker
        return worker

    def add_control(self, node_id: str, site: str, priority: int = 0, **quorum) -> Election:
        election = Election(settings(node_id, site, priority, **quorum), SimLink(self, node_id),
                            reactor=self.clock, rng=random.Random(self.rng.random()),
                            on_change=lambda role, term, n=node_id: self._changed(n, role, term))
        self.controls[node_id] = election
        self.intervals.setdefault(node_id, [])
        return election

    def start(self) -> None:
        """Start every control plane and the workers' periodic reports."""
        for node_id, election in self.controls.items():
            if node_id not in self.down:
                election.startService()
        self._reports = self.clock.callLater(self.report_every, self._report)

    # -- faults ------------------------------------------------------------

    def site_of(self, node: str) -> str:
        if node in self.workers:
            return self.workers[node].site
        return self.controls[node].settings.site

    def reachable(self, a: str, b) -> bool:
        """Whether control plane ``a`` and worker ``b`` can talk now."""
        worker = b if isinstance(b, SimWorker) else self.workers[b]
        if a in self.down or not worker.alive:
            return False
        pairs = {frozenset((a, worker.worker_id)), frozenset((self.site_of(a), worker.site)),
                 frozenset((a, worker.site)), frozenset((self.site_of(a), worker.worker_id))}
        return not (pairs & self.cut)

    def kill_control(self, node_id: str) -> None:
        """A control plane stops at once (kill -9): its timers die with it."""
        self.down.add(node_id)
        election = self.controls[node_id]
        if election.running:
            election.stopService()

    def restart_control(self, node_id: str) -> None:
        """A fresh control plane process with the same name (it keeps nothing)."""
        old = self.controls[node_id]
        self.down.discard(node_id)
        self.add_control(node_id, old.settings.site, old.settings.priority,
                         minimum=old.settings.quorum.minimum, min_sites=old.settings.quorum.min_sites)
        self.controls[node_id].startService()

    def restart_worker(self, worker_id: str, keep_state: bool) -> None:
        """A worker process restarts, with its state file or without."""
        old = self.workers[worker_id]
        self.add_worker(worker_id, old.site, old.store if keep_state else MemoryState())

    def partition(self, a: str, b: str) -> None:
        """Cut every link between ``a`` and ``b`` (nodes or sites)."""
        self.cut.add(frozenset((a, b)))

    def heal(self) -> None:
        """Every link works again."""
        self.cut.clear()

    # -- traffic -----------------------------------------------------------

    def deliver(self, node: str, worker_id: str, kind: str, arguments: dict, timeout: float) -> defer.Deferred:
        """A request to a worker and its answer, each crossing the network (lost on a cut link)."""
        result = defer.Deferred()
        worker = self.workers[worker_id]
        delay = self.delay(node, worker_id)

        def expire():
            if not result.called:
                result.errback(CommandTimeout(f"no answer to {kind}"))

        timer = self.clock.callLater(timeout, expire)

        def arrive():
            if not self.reachable(node, worker):
                return
            answer = self._handle(worker, kind, arguments)
            self.clock.callLater(delay, back, answer)

        def back(answer):
            if self.reachable(node, worker) and not result.called:
                timer.cancel()
                result.callback(answer)

        self.clock.callLater(delay, arrive)
        return result

    def _handle(self, worker: SimWorker, kind: str, arguments: dict) -> dict:
        witness = worker.witness
        if kind == "prevote":
            return witness.pre_vote(arguments["term"], arguments["candidate"]).to_amp()
        if kind == "vote":
            return witness.vote(arguments["term"], arguments["candidate"]).to_amp()
        voters = json.loads(arguments["voters"])
        return witness.renew(arguments["term"], arguments["leader"], arguments["lease"], voters["voters"],
                             arguments["leader_api"], voters["rev"]).to_amp()

    def command(self, node_id: str) -> list:
        """The control plane sends a (fenced) command to every worker it reaches; what each said."""
        election = self.controls[node_id]
        try:
            term = election.fence()
        except NotLeader:
            return []
        outcomes = []
        for worker in self.workers.values():
            if not self.reachable(node_id, worker):
                continue
            newest = max(w.witness.state.term for w in self.workers.values())
            try:
                worker.witness.admit(term, "ClearCache")
            except StaleTerm as e:
                self.refused.append((worker.worker_id, term, str(e)))
                outcomes.append((worker.worker_id, False))
            else:
                self.accepted.append((worker.worker_id, term, newest, self.clock.seconds()))
                outcomes.append((worker.worker_id, True))
        return outcomes

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Let ``seconds`` of simulated time pass."""
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def active(self) -> list[str]:
        """The control planes that may command now."""
        return [n for n, e in self.controls.items() if n not in self.down and e.can_command()]

    def max_term(self) -> int:
        """The newest term any control plane or worker knows."""
        return max([e.term for e in self.controls.values()] + [w.witness.state.term for w in self.workers.values()])

    def overlaps(self) -> list:
        """Pairs of active intervals of different control planes that overlap in time."""
        spans = [(node, start, end if end is not None else float("inf"), term)
                 for node, items in self.intervals.items() for start, end, term in items]
        found = []
        for i, (n1, s1, e1, t1) in enumerate(spans):
            for n2, s2, e2, t2 in spans[i + 1:]:
                if n1 != n2 and s1 < e2 and s2 < e1:
                    found.append(((n1, s1, e1, t1), (n2, s2, e2, t2)))
        return found

    # -- internals ---------------------------------------------------------

    def _changed(self, node: str, role: str, term: int) -> None:
        spans = self.intervals[node]
        now = self.clock.seconds()
        if role == ACTIVE and (not spans or spans[-1][1] is not None):
            spans.append([now, None, term])
        elif role != ACTIVE and spans and spans[-1][1] is None:
            spans[-1][1] = now

    def _report(self) -> None:
        for worker in self.workers.values():
            report = worker.witness.report()
            for node, election in self.controls.items():
                if election.running and self.reachable(node, worker):
                    election.observe(worker.worker_id, report)
        self._reports = self.clock.callLater(self.report_every, self._report)
