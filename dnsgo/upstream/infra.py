"""
The L3 infrastructure cache: what this worker knows about each upstream
server, and the order in which to ask them.

Per upstream (a ``(host, port)`` tuple) it keeps:

* **srtt**, a smoothed round-trip time, updated like Unbound's:
  ``srtt = 7/8 srtt + 1/8 sample``.  A server never measured starts at
  :data:`INITIAL_SRTT` (0.376 s, Unbound's ``UNKNOWN_SERVER_NICENESS``), so a
  new server is ranked like a slow one until it answers, not ignored.  A
  failure (timeout or unusable reply) feeds a penalty sample of
  ``failure_rtt`` seconds (default 1 s, like PowerDNS's timeout sample), so a
  failing server sinks in the order before it is declared down.
* **success rate**, an exponentially weighted moving average of outcomes
  (1 for success, 0 for failure) with the same weight of 1/8; it starts at 1.
  It reacts over roughly the last 8 to 16 outcomes and needs no window buffer.
* in-flight count, consecutive failures, total queries and failures, and the
  ``reactor.seconds()`` time of the last response.
* **health**:

  - ``down`` after ``down_after`` consecutive failures;
  - ``degraded`` with at least one consecutive failure, or a success rate
    below ``degraded_below``;
  - ``healthy`` otherwise.  Any success makes a server healthy again
    (consecutive failures reset; the success rate recovers by itself).

A down server is left alone until its probe time.  It goes down with a
back-off of ``probe_backoff_min``; each failed probe doubles it, up to
``probe_backoff_max``; a success resets it.  When the probe is due the server
is put *first* in :meth:`InfraCache.order`, so the next query really tries it
(one query, which the upstream pool fails over from quickly if the probe
times out); once that query has started the server is excluded again until
the probe's outcome is known.

If every server is down, :meth:`InfraCache.order` returns all of them, soonest
probe first: a query is never refused without trying.

Selection is deterministic (srtt, then configured order).  A server that
never gets traffic keeps its srtt, so a slower server is only re-measured when
the faster ones fail; that is the usual trade of a best-first forwarder.
"""
from __future__ import annotations

from typing import Sequence

import attrs

#: srtt in seconds of a server with no measurement yet (Unbound's 376 ms).
INITIAL_SRTT = 0.376

#: Weight of a new sample in the srtt and success-rate averages.
EWMA_WEIGHT = 1 / 8

HEALTHY = "healthy"
DEGRADED = "degraded"
DOWN = "down"

Server = tuple[str, int]


def format_address(server: Server) -> str:
    """Render ``(host, port)`` as ``host:port`` (``[host]:port`` for IPv6)."""
    host, port = server
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@attrs.frozen
class UpstreamStatus:
    """One upstream's state at a moment, as the management API shows it."""

    address: str
    srtt_ms: float
    in_flight: int
    consecutive_failures: int
    success_rate: float
    last_response: float | None
    health: str
    next_probe: float | None
    queries: int
    failures: int


@attrs.define
class _ServerState:
    """The mutable record the cache keeps for one upstream."""

    index: int
    srtt: float = INITIAL_SRTT
    in_flight: int = 0
    consecutive_failures: int = 0
    success_rate: float = 1.0
    last_response: float | None = None
    queries: int = 0
    failures: int = 0
    down: bool = False
    backoff: float = 0.0
    next_probe: float | None = None
    probing: bool = False


class InfraCache:
    """
    Per-upstream RTT, failure and health bookkeeping, and the selection
    order derived from it.  The upstream pool reports every attempt with
    :meth:`started` followed by exactly one of :meth:`succeeded`,
    :meth:`failed` or :meth:`abandoned`.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        reactor,
        *,
        down_after: int = 3,
        probe_backoff_min: float = 1.0,
        probe_backoff_max: float = 60.0,
        degraded_below: float = 0.7,
        failure_rtt: float = 1.0,
    ):
        if not servers:
            raise ValueError("InfraCache needs at least one upstream server")
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        if not 0 < probe_backoff_min <= probe_backoff_max:
            raise ValueError("need 0 < probe_backoff_min <= probe_backoff_max")
        self._reactor = reactor
        self._down_after = down_after
        self._backoff_min = probe_backoff_min
        self._backoff_max = probe_backoff_max
        self._degraded_below = degraded_below
        self._failure_rtt = failure_rtt
        self._servers: dict[Server, _ServerState] = {}
        for server in servers:
            server = (server[0], int(server[1]))
            if server not in self._servers:
                self._servers[server] = _ServerState(index=len(self._servers))

    @property
    def servers(self) -> list[Server]:
        """The upstreams in configured order (duplicates removed)."""
        return list(self._servers)

    def started(self, server: Server) -> None:
        """Record that a query was sent to ``server``."""
        state = self._servers[server]
        state.in_flight += 1
        state.queries += 1
        if state.down and not state.probing and self._probe_due(state):
            state.probing = True

    def succeeded(self, server: Server, rtt: float) -> None:
        """Record a usable answer from ``server`` after ``rtt`` seconds."""
        state = self._finish(server)
        state.srtt += EWMA_WEIGHT * (rtt - state.srtt)
        state.success_rate += EWMA_WEIGHT * (1.0 - state.success_rate)
        state.consecutive_failures = 0
        state.last_response = self._reactor.seconds()
        state.down = False
        state.probing = False
        state.backoff = 0.0
        state.next_probe = None

    def failed(self, server: Server) -> None:
        """Record a timeout, refusal or unusable reply from ``server``."""
        state = self._finish(server)
        state.srtt += EWMA_WEIGHT * (self._failure_rtt - state.srtt)
        state.success_rate -= EWMA_WEIGHT * state.success_rate
        state.consecutive_failures += 1
        state.failures += 1
        now = self._reactor.seconds()
        if state.down:
            if state.probing:
                state.probing = False
                state.backoff = min(state.backoff * 2, self._backoff_max)
                state.next_probe = now + state.backoff
        elif state.consecutive_failures >= self._down_after:
            state.down = True
            state.backoff = self._backoff_min
            state.next_probe = now + state.backoff

    def abandoned(self, server: Server) -> None:
        """
        Record that a query to ``server`` ended with no verdict (cancelled,
        or lost a parallel race): only the in-flight count changes.  An
        abandoned probe leaves the probe due.
        """
        state = self._servers[server]
        state.in_flight = max(0, state.in_flight - 1)
        state.probing = False

    def order(self) -> list[Server]:
        """
        The servers to try, best first: due probes, then the usable
        (healthy or degraded) servers by srtt.  Down servers waiting for
        their probe are left out, unless every server is down; then all are
        returned, soonest probe first.
        """
        states = self._servers.items()
        if all(state.down for _, state in states):
            ranked = sorted(states, key=lambda item: (item[1].next_probe, item[1].index))
            return [server for server, _ in ranked]
        probes = [
            (server, state)
            for server, state in states
            if state.down and not state.probing and self._probe_due(state)
        ]
        probes.sort(key=lambda item: (item[1].next_probe, item[1].index))
        usable = [(server, state) for server, state in states if not state.down]
        usable.sort(key=lambda item: (item[1].srtt, item[1].index))
        return [server for server, _ in probes + usable]

    def best(self, n: int) -> list[Server]:
        """The first ``n`` servers of :meth:`order`."""
        return self.order()[: max(0, n)]

    def health(self, server: Server) -> str:
        """``'healthy'``, ``'degraded'`` or ``'down'`` for ``server``."""
        return self._health(self._servers[server])

    def snapshot(self) -> list[UpstreamStatus]:
        """Every upstream's state, in configured order."""
        return [
            UpstreamStatus(
                address=format_address(server),
                srtt_ms=state.srtt * 1000.0,
                in_flight=state.in_flight,
                consecutive_failures=state.consecutive_failures,
                success_rate=state.success_rate,
                last_response=state.last_response,
                health=self._health(state),
                next_probe=state.next_probe if state.down else None,
                queries=state.queries,
                failures=state.failures,
            )
            for server, state in self._servers.items()
        ]

    def _finish(self, server: Server) -> _ServerState:
        state = self._servers[server]
        state.in_flight = max(0, state.in_flight - 1)
        return state

    def _probe_due(self, state: _ServerState) -> bool:
        return state.next_probe is not None and self._reactor.seconds() >= state.next_probe

    def _health(self, state: _ServerState) -> str:
        if state.down:
            return DOWN
        if state.consecutive_failures or state.success_rate < self._degraded_below:
            return DEGRADED
        return HEALTHY
