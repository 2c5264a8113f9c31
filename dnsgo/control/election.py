"""
A control plane's side of high availability (``docs/ha.md``): which of the
control planes leads, decided by the workers as witnesses.

States: ``standby`` (follows, or waits for a leader), ``candidate`` (asking
for votes, or elected and waiting for its first quorum of lease renewals)
and ``active`` (holds a lease; only then may it command workers).

- A standby that has seen no valid lease held by another control plane for
  the lease duration (from its start, or from the end of the last lease the
  workers reported), plus ``priority`` x ``retry_period`` and a random part
  of half a ``retry_period``, runs a *pre-vote* for the next term; only if
  that wins a quorum does it raise its term and ask for votes.
- Elected, it renews its lease every ``retry_period``.  A quorum of
  acknowledgements of renewals sent at time ``t`` or later makes it active
  until ``t + renew_deadline``; the workers promise ``lease_duration`` from
  their answer, which is later than ``t``, so the lease the leader counts
  on ends before any worker's promise does.  Without a newer quorum it
  steps down at that moment, and its commands stop at once.
- Any answer or report with a newer term makes it step down.

The election talks to the workers through a link (:class:`VoterLink`), so
that it runs the same over AMP (:mod:`dnsgo.control.voters`) and in unit
tests on a task.Clock.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from dnsgo.control.quorum import QuorumRule, Tally

STANDBY, CANDIDATE, ACTIVE = "standby", "candidate", "active"


class NotLeader(Exception):
    """This control plane may not command workers now; ``leader`` is the leader's API address, if known."""

    def __init__(self, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


@attrs.frozen
class HASettings:
    """One control plane's HA settings (``high_availability`` and its identity)."""

    node_id: str  # its name in votes and leases
    site: str
    priority: int  # the lower campaigns first
    api_address: str  # where its management API answers, host:port ('' if none)
    lease_duration: float
    renew_deadline: float
    retry_period: float
    quorum: QuorumRule
    peers: tuple[str, ...] = ()


class VoterLink(Protocol):
    """How an election reaches the workers."""

    def members(self) -> dict[str, str]:
        """The connected workers that can vote: worker id -> site."""

    def known(self) -> set[str]:
        """Every registered worker id, connected or not (a forgotten one leaves the electorate)."""

    def ask(self, worker_id: str, kind: str, arguments: dict, timeout: float) -> defer.Deferred:
        """
        Send ``kind`` ("prevote", "vote" or "renew", with the AMP arguments
        of PreVote, RequestVote or Renew) to a worker; fires with its answer
        ({granted, term, holder, remaining, reason}) or fails.
        """


class Election(service.Service):
    """
    The leadership state machine of one control plane, on ``reactor``'s
    clock.  ``observe`` feeds it the workers' reports; ``fence`` gives the
    term to put on a command, or raises :class:`NotLeader`.  ``on_change(role,
    term)`` (optional) is called on every change of role or term.
    """

    log = Logger(namespace="dnsgo.control.ha")

    def __init__(self, settings: HASettings, link: VoterLink, *, reactor, rng: random.Random | None = None,
                 on_change: Callable[[str, int], None] | None = None) -> None:
        self.settings = settings
        self._link = link
        self._reactor = reactor
        self._rng = rng or random.Random()
        self._on_change = on_change
        self.role = STANDBY
        #: The newest term this control plane knows of.
        self.term = 0
        #: Vote rounds started (pre-votes that failed are not counted).
        self.elections = 0
        self._leading_term: int | None = None  # the term it was elected in, while elected
        self._leader_id: str | None = None  # another control plane holding a lease, as reported
        self._leader_api: str | None = None
        self._seen_until = 0.0  # that lease is known to run until then
        self._electorate: dict[str, str] = {}  # worker id -> site: the last leader's voters
        self._electorate_version = (-1, 0)  # (term, revision) of that list
        self._changed_at: float | None = None  # leader: when it last changed the electorate
        self._lease_from: float | None = None  # send time of the newest renewals with a quorum
        self._elected_at = 0.0
        self._acks: dict[str, float] = {}  # worker -> send time of the newest renewal it acknowledged
        self._heard: dict[str, tuple[int, float]] = {}  # worker -> (term it reported, when)
        self._not_before = 0.0
        self._offset = 0.0
        self._busy = False
        self._timer = None
        self._stepdown = None
        self._renewer: task.LoopingCall | None = None
        self._tally: Tally | None = None

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        """Wait one lease duration for a leader to show itself, then campaign if none did."""
        super().startService()
        self._offset = self._new_offset()
        self._not_before = self._reactor.seconds() + self.settings.lease_duration
        self.log.info(
            "HA: {node} (site {site}, priority {priority}) starts as standby; lease {lease:g}s, "
            "renew deadline {renew:g}s, retry {retry:g}s",
            node=self.settings.node_id, site=self.settings.site or "-", priority=self.settings.priority,
            lease=self.settings.lease_duration, renew=self.settings.renew_deadline, retry=self.settings.retry_period,
        )
        self._arm()

    def stopService(self):
        """Stop every timer; a leader stops leading."""
        super().stopService()
        if self._leading_term is not None:
            self._step_down("stopping")
        self._cancel(self._timer)
        self._timer = None

    # -- what the rest of the control plane asks ------------------------------

    def can_command(self) -> bool:
        """Whether this control plane holds a lease now, and so may command workers."""
        return (
            self.role == ACTIVE
            and self._lease_from is not None
            and self._reactor.seconds() < self._lease_from + self.settings.renew_deadline
        )

    def fence(self) -> int:
        """The term to put on a command to the workers; NotLeader when this control plane may not send one."""
        if self.can_command():
            return self.term
        leader = self.leader()
        where = f"; the leader is {leader[1] or leader[0]}" if leader else "; there is no leader now"
        raise NotLeader(f"this control plane is {self.role}{where}", leader[1] if leader else None)

    def leader(self) -> tuple[str, str] | None:
        """(node id, API address) of the control plane believed to lead now, or None."""
        if self._leading_term is not None:
            return self.settings.node_id, self.settings.api_address
        if self._leader_id is not None and self._reactor.seconds() < self._seen_until:
            return self._leader_id, self._leader_api or ""
        return None

    def observe(self, worker_id: str, report: dict) -> None:
        """
        A worker's report (its witness's ``report()``, with Register and
        every Heartbeat): the term it follows, the lease it promised, the
        last leader's electorate.
        """
        try:
            term = int(report.get("term", 0))
            voters = {str(w): str(s) for w, s in report.get("voters", ())}
            version = (term, int(report.get("voters_rev", 0)))
        except (TypeError, ValueError, AttributeError):
            self.log.warn("HA: worker {worker_id} sent a malformed report", worker_id=worker_id)
            return
        self._heard[worker_id] = (term, self._reactor.seconds())
        if len(self._heard) > 2 * len(self._electorate) + 64:
            known = self._link.known()
            self._heard = {w: seen for w, seen in self._heard.items() if w in known or w in self._electorate}
        self._learn(worker_id, report)
        if voters and version > self._electorate_version and self._leading_term is None:
            self._electorate, self._electorate_version = voters, version

    def status(self) -> dict:
        """What ``GET /api/ha`` shows of this control plane."""
        now = self._reactor.seconds()
        leader = self.leader()
        if self.role == ACTIVE and self._lease_from is not None:
            expires_in = max(0.0, self._lease_from + self.settings.renew_deadline - now)
        elif leader is not None and self._leading_term is None:
            expires_in = max(0.0, self._seen_until - now)
        else:
            expires_in = None
        members = self._link.members()
        electorate = self._electorate or members
        voters = []
        for worker_id in sorted(set(electorate) | set(self._heard)):
            term_seen, heard_at = self._heard.get(worker_id, (None, None))
            voters.append({
                "worker_id": worker_id,
                "site": electorate.get(worker_id, members.get(worker_id, "")),
                "voter": worker_id in electorate,
                "last_ack": self._acks.get(worker_id),
                "last_heard": heard_at,
                "term_seen": term_seen,
            })
        tally = self._tally or self.settings.quorum.tally((), electorate)
        return {
            "mode": "active_passive",
            "role": self.role,
            "term": self.term,
            "node_id": self.settings.node_id,
            "leader": leader[1] or leader[0] if leader else None,
            "leader_id": leader[0] if leader else None,
            "lease_expires_in": None if expires_in is None else round(expires_in, 3),
            "site": self.settings.site,
            "priority": self.settings.priority,
            "peers": list(self.settings.peers),
            "quorum": tally.to_json(),
            "voters": voters,
            "elections": self.elections,
        }

    # -- standing by ---------------------------------------------------------

    def _campaign_time(self) -> float:
        """When a standby may start a pre-vote."""
        return max(self._not_before, self._seen_until) + self._offset

    def _new_offset(self) -> float:
        retry = self.settings.retry_period
        return self.settings.priority * retry + self._rng.uniform(0, retry / 2)

    def _arm(self) -> None:
        """(Re)schedule the next campaign check of a standby."""
        if not self.running or self._leading_term is not None or self._busy:
            return
        at = self._campaign_time()
        if self._timer is not None and self._timer.active():
            if abs(self._timer.getTime() - at) < 1e-6:
                return
            self._timer.cancel()
        self._timer = self._reactor.callLater(max(0.0, at - self._reactor.seconds()), self._wake)

    def _wake(self) -> None:
        self._timer = None
        if not self.running or self._leading_term is not None or self._busy:
            return
        if self._reactor.seconds() < self._campaign_time():
            self._arm()
            return
        defer.ensureDeferred(self._campaign()).addErrback(
            lambda f: self.log.failure("HA: campaign failed", f)
        )

    async def _campaign(self) -> None:
        """Pre-vote, then (if it won) vote, then (if that won) start renewing."""
        self._busy = True
        try:
            await self._try_to_win()
        finally:
            self._busy = False
        if self._leading_term is None:
            self._offset = self._new_offset()
            self._not_before = self._reactor.seconds() + self.settings.retry_period
            self._arm()

    async def _try_to_win(self) -> None:
        node = self.settings.node_id
        members = self._link.members()
        electorate = dict(self._electorate) if self._electorate else dict(members)
        pre_term = self.term + 1
        granted = await self._round(members, "prevote", {"term": pre_term, "candidate": node})
        self._tally = tally = self.settings.quorum.tally(granted, electorate)
        if not tally.met or not self.running:
            self.log.debug("HA: pre-vote for term {term} lost ({granted}/{required}, sites {sites})",
                           term=pre_term, granted=tally.granted, required=tally.required, sites=tally.sites)
            return
        term = max(pre_term, self.term + 1)
        self.term = term
        self.elections += 1
        self._set_role(CANDIDATE)
        self.log.info("HA: {node} asks for votes in term {term}", node=node, term=term)
        members = self._link.members()
        granted = await self._round(members, "vote", {"term": term, "candidate": node})
        self._tally = tally = self.settings.quorum.tally(granted, electorate)
        if not tally.met or self.term != term or not self.running:
            self.log.info("HA: election of term {term} lost ({granted}/{required} votes, sites {sites})",
                          term=term, granted=tally.granted, required=tally.required, sites=list(tally.sites))
            self._set_role(STANDBY)
            return
        self.log.info("HA: {node} elected in term {term} ({granted}/{required} votes, sites {sites})",
                      node=node, term=term, granted=tally.granted, required=tally.required, sites=list(tally.sites))
        self._electorate, self._electorate_version = electorate, (term, 0)
        self._changed_at = None
        self._leading_term = term
        self._elected_at = self._reactor.seconds()
        self._lease_from = None
        self._acks = {}
        self._leader_id = None
        self._arm_stepdown(self._elected_at)
        self._renewer = task.LoopingCall(self._renew)
        self._renewer.clock = self._reactor
        self._renewer.start(self.settings.retry_period, now=True)

    async def _round(self, members: dict[str, str], kind: str, arguments: dict) -> set[str]:
        """Ask every member at once; the ids of those that granted (answers are learned from)."""
        timeout = self.settings.retry_period
        asked = []
        for worker_id in members:
            d = defer.maybeDeferred(self._link.ask, worker_id, kind, arguments, timeout)
            d.addCallback(lambda answer, w=worker_id: (w, answer))
            d.addErrback(lambda failure, w=worker_id: (w, None))
            asked.append(d)
        granted = set()
        for worker_id, answer in await defer.gatherResults(asked):
            if answer is None:
                continue
            self._learn(worker_id, answer)
            if answer.get("granted"):
                granted.add(worker_id)
        return granted

    # -- leading -----------------------------------------------------------

    def _renew(self) -> None:
        """Send one round of renewals, stamped with the time they left."""
        term = self._leading_term
        if term is None:
            return
        sent = self._reactor.seconds()
        members = self._link.members()
        self._change_electorate(members, sent)
        voters = {"rev": self._electorate_version[1], "voters": sorted(self._electorate.items())}
        arguments = {
            "term": term,
            "leader": self.settings.node_id,
            "lease": self.settings.lease_duration,
            "leader_api": self.settings.api_address,
            "voters": json.dumps(voters, separators=(",", ":")),
        }
        for worker_id, site in members.items():
            d = defer.maybeDeferred(self._link.ask, worker_id, "renew", arguments, self.settings.retry_period)
            d.addCallbacks(self._renewed, lambda _f: None, callbackArgs=(worker_id, site, sent, term))

    def _renewed(self, answer: dict, worker_id: str, site: str, sent: float, term: int) -> None:
        if self._leading_term != term:
            return
        if not answer.get("granted"):
            self._learn(worker_id, answer)
            return
        self._acks[worker_id] = max(self._acks.get(worker_id, 0.0), sent)
        self._recount()

    def _change_electorate(self, members: dict[str, str], now: float) -> None:
        """
        One change to the electorate, if one is due and the last one is
        settled (a quorum of the new electorate acknowledged a renewal that
        carried it): a worker the registry forgot leaves (unless the rest
        could no longer make a quorum), or a worker that acknowledged a
        renewal of this term joins.  One worker at a time, so that a quorum
        of the old list and one of the new always share a worker.
        """
        if not self.can_command():
            return
        if self._changed_at is not None and (self._lease_from is None or self._lease_from < self._changed_at):
            return
        rule = self.settings.quorum
        known = self._link.known()
        for worker_id in sorted(w for w in self._electorate if w not in known):
            rest = {w: s for w, s in self._electorate.items() if w != worker_id}
            if len(rest) >= rule.minimum and len(set(rest.values())) >= rule.min_sites:
                self.log.info("HA: {worker_id} was forgotten; it leaves the electorate", worker_id=worker_id)
                self._electorate = rest
                self._acks.pop(worker_id, None)
                break
        else:
            joining = sorted(w for w in self._acks if w not in self._electorate and w in members)
            if not joining:
                return
            worker_id = joining[0]
            self.log.info("HA: {worker_id} ({site}) joins the electorate",
                          worker_id=worker_id, site=members[worker_id] or "-")
            self._electorate = {**self._electorate, worker_id: members[worker_id]}
        term, rev = self._electorate_version
        self._electorate_version = (term, rev + 1)
        self._changed_at = now

    def _recount(self) -> None:
        """The newest send time ``t`` whose renewals, with all newer ones, were acknowledged by a quorum."""
        quorum = self.settings.quorum
        for sent in sorted(set(self._acks.values()), reverse=True):
            tally = quorum.tally([w for w, t in self._acks.items() if t >= sent], self._electorate)
            if tally.met:
                self._tally = tally
                if self._lease_from is None or sent > self._lease_from:
                    self._lease_from = sent
                    self._arm_stepdown(sent)
                    if self.role != ACTIVE:
                        self.log.info("HA: {node} is active in term {term}",
                                      node=self.settings.node_id, term=self.term)
                        self._set_role(ACTIVE)
                return

    def _arm_stepdown(self, since: float) -> None:
        self._cancel(self._stepdown)
        at = since + self.settings.renew_deadline
        self._stepdown = self._reactor.callLater(max(0.0, at - self._reactor.seconds()), self._deadline)

    def _deadline(self) -> None:
        self._stepdown = None
        if self._leading_term is None:
            return
        if self.role == ACTIVE:
            why = f"no quorum of renewals for {self.settings.renew_deadline:g}s"
        else:
            why = f"no quorum of renewals within {self.settings.renew_deadline:g}s of the election"
        self._step_down(why)

    def _step_down(self, why: str) -> None:
        self.log.warn("HA: {node} steps down from term {term}: {why}",
                      node=self.settings.node_id, term=self._leading_term, why=why)
        self._leading_term = None
        self._lease_from = None
        self._acks = {}
        if self._renewer is not None and self._renewer.running:
            self._renewer.stop()
        self._renewer = None
        self._cancel(self._stepdown)
        self._stepdown = None
        self._set_role(STANDBY)
        self._offset = self._new_offset()
        self._not_before = self._reactor.seconds() + self.settings.retry_period
        self._arm()

    # -- internals ---------------------------------------------------------

    def _learn(self, worker_id: str, answer: dict) -> None:
        """What an answer or report says: a newer term; a lease held by another control plane."""
        try:
            term = int(answer.get("term", 0))
            holder = str(answer.get("holder") or "")
            remaining = float(answer.get("remaining") or 0.0)
        except (TypeError, ValueError):
            return
        if term > self.term:
            self.term = term
            if self._leading_term is not None and term > self._leading_term:
                self._step_down(f"worker {worker_id} follows the newer term {term}")
            elif self._on_change is not None:
                self._on_change(self.role, self.term)
        if holder and holder != self.settings.node_id and remaining > 0:
            leader_api = answer.get("leader_api")
            if holder != self._leader_id:
                self._leader_id, self._leader_api = holder, str(leader_api or "")
            elif leader_api:
                self._leader_api = str(leader_api)
            until = self._reactor.seconds() + remaining
            if until > self._seen_until:
                self._seen_until = until
                self._arm()

    def _set_role(self, role: str) -> None:
        if role != self.role:
            self.role = role
            if self._on_change is not None:
                self._on_change(role, self.term)

    @staticmethod
    def _cancel(call) -> None:
        if call is not None and call.active():
            call.cancel()
