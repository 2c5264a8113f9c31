"""
The workers registered with a control plane, as its election sees them
(:class:`~dnsgo.control.election.VoterLink` over AMP): who may vote, and
PreVote, RequestVote and Renew sent over their control connections.
"""
from __future__ import annotations

from twisted.internet import defer

from dnsgo.control.commands import PreVote, Renew, RequestVote, call

#: The AMP command of each kind of request an election sends.
COMMANDS = {"prevote": PreVote, "vote": RequestVote, "renew": Renew}

#: The capability a worker announces when it can be a witness.
WITNESS = "witness"


class RegisteredVoters:
    """The electorate side of ``control`` (a ControlService), on ``reactor``."""

    def __init__(self, control, *, reactor) -> None:
        self._control = control
        self._reactor = reactor

    def members(self) -> dict[str, str]:
        """The connected workers that announced the witness capability: worker id -> site."""
        return {
            session.worker_id: session.cluster_name
            for session in self._control.registry.sessions()
            if session.protocol is not None and WITNESS in session.capabilities
        }

    def known(self) -> set[str]:
        """Every worker still registered (a forgotten one may leave the electorate)."""
        return {session.worker_id for session in self._control.registry.sessions()}

    def ask(self, worker_id: str, kind: str, arguments: dict, timeout: float) -> defer.Deferred:
        """Send one request to one worker; fires with its answer as a dict."""
        registry = self._control.registry
        if worker_id not in registry or registry.session(worker_id).protocol is None:
            return defer.fail(LookupError(f"worker {worker_id} is not connected"))
        protocol = registry.session(worker_id).protocol
        return call(protocol, COMMANDS[kind], timeout=timeout, reactor=self._reactor, **arguments)
