"""
A worker's side of control-plane HA (``docs/ha.md``): the witness that
votes for control planes, promises the leader a lease, and fences the
commands of any control plane whose term is not the newest it has seen.

Rules (Raft's terms and votes, with leases):

- a vote is granted for a term higher than any seen (or the same term, to
  the candidate already voted for), when no unexpired lease is promised to
  another control plane, and not within one lease duration of a start
  without saved state;
- a renewal from a term at least the highest seen makes (or extends) the
  lease promise: no vote for anyone else until ``lease`` seconds from now;
- a command whose term is lower than the highest seen is refused
  (:class:`~dnsgo.control.commands.StaleTerm`); one with no term is
  refused once any term was seen;
- the state is saved (:mod:`dnsgo.control.state_file`) before the answer
  that depends on it is given; a state that cannot be saved is not granted.
"""
from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.logger import Logger

from dnsgo.control.commands import StaleTerm
from dnsgo.control.state_file import WitnessState

#: The longest lease a control plane may ask for (seconds).
MAX_LEASE = 3600.0


@attrs.frozen
class WitnessAnswer:
    """The answer to a pre-vote, a vote or a renewal."""

    granted: bool
    term: int  # the witness's highest term, after the request
    holder: str  # the control plane holding an unexpired lease promise ('' for none)
    remaining: float  # seconds that promise still runs
    reason: str  # why it was refused ('' when granted)

    def to_amp(self) -> dict:
        """The answer as the AMP response of PreVote, RequestVote and Renew."""
        return attrs.asdict(self)


class Witness:
    """
    One worker's votes and lease promises, kept in ``store`` (a
    :class:`~dnsgo.control.state_file.StateFile` or ``MemoryState``) on
    ``reactor``'s clock (seconds since the epoch).  ``lease_duration`` is
    how long it stays silent after starting without saved state.
    """

    log = Logger(namespace="dnsgo.control.ha")

    def __init__(self, store, *, lease_duration: float, reactor) -> None:
        self._store = store
        self._reactor = reactor
        try:
            saved = store.load()
        except (OSError, ValueError) as e:
            self.log.error("witness state unreadable ({why}); starting as if it had none", why=str(e))
            saved = None
        now = reactor.seconds()
        self.state: WitnessState = saved or WitnessState()
        #: Whether the state came from a previous run.
        self.restored = saved is not None
        # Without saved state this worker may have voted or promised a lease
        # and forgotten it: it keeps quiet until such a promise has run out.
        self._quiet_until = 0.0 if self.restored else now + lease_duration
        if self.restored:
            self.log.info("witness state restored: term {term}, lease holder {holder}",
                          term=self.state.term, holder=self.state.lease_holder or "-")

    # -- requests from candidates and leaders -------------------------------

    def pre_vote(self, term: int, candidate: str) -> WitnessAnswer:
        """Would this worker vote for ``candidate`` in ``term``?  Changes nothing."""
        reason = self._refusal(term, candidate)
        return self._answer(reason)

    def vote(self, term: int, candidate: str) -> WitnessAnswer:
        """Vote for ``candidate`` in ``term`` if the rules allow it (saved before the answer)."""
        reason = self._refusal(term, candidate)
        if reason is None:
            reason = self._save(attrs.evolve(self.state, term=term, voted_for=candidate))
            if reason is None:
                self.log.info("voted for {candidate} in term {term}", candidate=candidate, term=term)
        return self._answer(reason)

    def renew(self, term: int, leader: str, lease: float, voters: Iterable[tuple[str, str]] = (),
              leader_api: str = "", voters_rev: int = 0) -> WitnessAnswer:
        """
        The leader of ``term`` renews its lease: promise it ``lease`` seconds
        from now, and remember its electorate ``voters`` ((worker id, site)
        pairs, revision ``voters_rev``) and API address (saved before the answer).
        """
        if not 0 < lease <= MAX_LEASE:
            return self._answer(f"lease must be in (0, {MAX_LEASE:g}]s; got {lease!r}")
        state, now = self.state, self._reactor.seconds()
        if term < state.term:
            return self._answer(f"term {term} is older than term {state.term}")
        if term == state.term and state.lease_holder not in (None, leader) and now < state.lease_expires:
            return self._answer(f"term {term} is led by {state.lease_holder}")
        if term > state.term or state.lease_holder != leader:
            self.log.info("{leader} leads term {term}", leader=leader, term=term)
        new = attrs.evolve(
            state,
            term=term,
            voted_for=state.voted_for if term == state.term else None,
            lease_holder=leader,
            lease_expires=now + lease,
            leader_api=leader_api,
            voters=tuple((str(worker_id), str(site)) for worker_id, site in voters),
            voters_rev=voters_rev,
        )
        return self._answer(self._save(new))

    def admit(self, term: int | None, command: str) -> None:
        """
        Let a command from a control plane through, or raise StaleTerm: its
        ``term`` must be at least the highest seen (a higher one is adopted
        and saved); no term is accepted only while no term was ever seen
        (a control plane without HA).
        """
        current = self.state.term
        if term is None:
            if current > 0:
                raise StaleTerm(f"{command} carries no term; this worker follows term {current}")
            return
        if term < current:
            self.log.warn("refused {command} of stale term {term} (current term {current})",
                          command=command, term=term, current=current)
            raise StaleTerm(f"{command} of term {term} refused: this worker follows term {current}")
        if term > current:
            why = self._save(attrs.evolve(self.state, term=term, voted_for=None))
            if why is not None:
                raise StaleTerm(f"{command} of term {term} refused: {why}")

    # -- what the worker tells every control plane ----------------------------

    def holder(self) -> str | None:
        """The control plane holding an unexpired lease promise, if any."""
        state = self.state
        if state.lease_holder is not None and self._reactor.seconds() < state.lease_expires:
            return state.lease_holder
        return None

    def report(self) -> dict:
        """What this worker knows of the leadership, sent with Register and every Heartbeat."""
        state = self.state
        holder = self.holder()
        return {
            "term": state.term,
            "holder": holder or "",
            "remaining": self._remaining(),
            "leader_api": state.leader_api if holder else "",
            "voters": [list(pair) for pair in state.voters],
            "voters_rev": state.voters_rev,
            "quiet": max(0.0, self._quiet_until - self._reactor.seconds()),
        }

    # -- internals ---------------------------------------------------------

    def _refusal(self, term: int, candidate: str) -> str | None:
        """Why a vote for ``candidate`` in ``term`` is refused (None: it is not)."""
        state, now = self.state, self._reactor.seconds()
        if now < self._quiet_until:
            return f"started without saved state; votes again in {self._quiet_until - now:.1f}s"
        if term < state.term or (term == state.term and state.voted_for not in (None, candidate)):
            return f"term {term} is not newer than term {state.term}"
        if state.lease_holder not in (None, candidate) and now < state.lease_expires:
            return f"lease promised to {state.lease_holder} for {state.lease_expires - now:.1f}s more"
        return None

    def _save(self, new: WitnessState) -> str | None:
        """Save ``new`` and make it the state; why not (None: saved)."""
        try:
            self._store.save(new)
        except OSError as e:
            self.log.error("cannot save the witness state: {why}", why=str(e))
            return f"cannot save the witness state: {e.strerror or e}"
        self.state = new
        return None

    def _remaining(self) -> float:
        state = self.state
        if state.lease_holder is None:
            return 0.0
        return max(0.0, state.lease_expires - self._reactor.seconds())

    def _answer(self, reason: str | None) -> WitnessAnswer:
        return WitnessAnswer(
            granted=reason is None,
            term=self.state.term,
            holder=self.holder() or "",
            remaining=self._remaining(),
            reason=reason or "",
        )
