"""
The L3 infrastructure cache: what this worker knows about each upstream
server, the retransmission timeout (RTO) to use with it, and the order in
which to ask them.

Per upstream (a ``(host, port)`` tuple) it keeps:

* **srtt and rttvar**, the smoothed round-trip time and its mean deviation,
  updated from every answered transmission as TCP does (RFC 6298 section 2,
  which is also Unbound's ``util/rtt.c``): the first sample ``R`` sets
  ``srtt = R`` and ``rttvar = R/2``; later ones set
  ``rttvar = 3/4 rttvar + 1/4 |srtt - R|`` then ``srtt = 7/8 srtt + 1/8 R``.
  Only answers are samples: a timeout says nothing about the round-trip
  time, so it never moves srtt (a server that was silent for a minute and
  answers again shows its real srtt at once).  A server never measured shows
  :data:`INITIAL_SRTT` (0.376 s).
* **rto**, the time to wait for a reply before sending again:
  ``srtt + 4 rttvar`` clamped to ``[rto_min, rto_max]`` (Unbound's
  ``RTT_MIN_TIMEOUT`` of 50 ms and ``infra-cache-max-rtt`` of 120 s); a server
  never measured has :data:`INITIAL_RTO` (376 ms, Unbound's
  ``UNKNOWN_SERVER_NICENESS``).  Each failure (a lost datagram, a refusal,
  an unusable reply) **doubles** it (exponential back-off, up to
  ``rto_max``); a usable answer recomputes it from srtt and rttvar, which
  undoes the whole back-off at once.  As in Unbound's ``rtt_lost``, a loss
  doubles the RTO *its transmission waited* for, not the current one, so
  many queries timing out together double it once, not once each; and a
  loss of a transmission sent before a success lowered the RTO is ignored.
* **success rate**, an exponentially weighted moving average of outcomes
  (1 for success, 0 for failure) with weight 1/8; it starts at 1.
* in-flight count, consecutive failures, total transmissions and failures,
  and the ``reactor.seconds()`` time of the last response.
* **health**:

  - ``down`` after ``down_after`` consecutive failures;
  - ``degraded`` with at least one consecutive failure, or a success rate
    below ``degraded_below``;
  - ``healthy`` otherwise.  Any success makes a server healthy again
    (consecutive failures reset; the success rate recovers by itself).

Health orders the servers; it never removes the last ones.  A down server
is left out of :meth:`InfraCache.order` until its probe time, *unless no
server is up*: then every server is offered, soonest probe first, so a lone
upstream, or the last one not yet down, is always tried, and a server that
answers again after an outage is used at once, without waiting for a probe.
It goes down with a probe back-off of ``probe_backoff_min``; each failed
probe doubles it, up to ``probe_backoff_max``; a success resets it.  When
the probe is due the server is put *first*, so the next query really tries
it; once that query has started the server is left out again (while others
are up) until the probe's outcome is known.

The usable servers are ranked as Unbound ranks them: by the RTO *before
clamping* (``srtt + 4 rttvar``, or the backed-off RTO after failures), then
by srtt, then by configured order.  A failing server sinks because its RTO
doubles; one answer brings it back.
"""
from __future__ import annotations

from typing import Sequence

import attrs

#: srtt in seconds shown for a server with no measurement yet.
INITIAL_SRTT = 0.376

#: RTO in seconds of a server with no measurement yet (Unbound's 376 ms).
INITIAL_RTO = 0.376

#: The RTO's floor and ceiling (Unbound's RTT_MIN_TIMEOUT and infra-cache-max-rtt).
RTO_MIN = 0.05
RTO_MAX = 120.0

#: Weights of a new sample in srtt (and the success rate), and in rttvar.
EWMA_WEIGHT = 1 / 8
RTTVAR_WEIGHT = 1 / 4

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
    rto_ms: float


@attrs.define
class _ServerState:
    """The mutable record the cache keeps for one upstream."""

    index: int
    srtt: float | None = None  # None until the first sample
    rttvar: float = 0.0
    rto: float = INITIAL_RTO
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
    Per-upstream RTT, RTO, failure and health bookkeeping, and the selection
    order derived from it.  The upstream pool reports every transmission
    with :meth:`started` followed by exactly one of :meth:`succeeded`,
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
        rto_min: float = RTO_MIN,
        rto_max: float = RTO_MAX,
    ):
        if not servers:
            raise ValueError("InfraCache needs at least one upstream server")
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        if not 0 < probe_backoff_min <= probe_backoff_max:
            raise ValueError("need 0 < probe_backoff_min <= probe_backoff_max")
        if not 0 < rto_min <= INITIAL_RTO <= rto_max:
            raise ValueError(f"need 0 < rto_min <= {INITIAL_RTO} <= rto_max")
        self._reactor = reactor
        self._down_after = down_after
        self._backoff_min = probe_backoff_min
        self._backoff_max = probe_backoff_max
        self._degraded_below = degraded_below
        self._rto_min = rto_min
        self._rto_max = rto_max
        self._servers: dict[Server, _ServerState] = {}
        for server in servers:
            server = (server[0], int(server[1]))
            if server not in self._servers:
                self._servers[server] = _ServerState(index=len(self._servers))

    @property
    def rto_max(self) -> float:
        """The RTO's ceiling in seconds."""
        return self._rto_max

    @property
    def servers(self) -> list[Server]:
        """The upstreams in configured order (duplicates removed)."""
        return list(self._servers)

    def rto(self, server: Server) -> float:
        """How long to wait for ``server``'s reply before sending again, in seconds."""
        return self._servers[server].rto

    def base_rto(self, server: Server) -> float:
        """``server``'s RTO without back-off: ``srtt + 4 rttvar`` clamped (:data:`INITIAL_RTO` before any sample)."""
        state = self._servers[server]
        return INITIAL_RTO if state.srtt is None else self._clamp(state.srtt + 4 * state.rttvar)

    def srtt(self, server: Server) -> float:
        """``server``'s smoothed RTT in seconds (:data:`INITIAL_SRTT` before any sample)."""
        srtt = self._servers[server].srtt
        return INITIAL_SRTT if srtt is None else srtt

    def started(self, server: Server) -> None:
        """Record that a query was sent to ``server``."""
        state = self._servers[server]
        state.in_flight += 1
        state.queries += 1
        if state.down and not state.probing and self._probe_due(state):
            state.probing = True

    def succeeded(self, server: Server, rtt: float | None) -> None:
        """
        Record a usable answer from ``server`` after ``rtt`` seconds: an RTT
        sample (``None``: no sample, e.g. an answer over TCP), and the end
        of any back-off.
        """
        state = self._finish(server)
        if rtt is not None:
            if rtt < 0.0:
                rtt = 0.0
            if state.srtt is None:
                state.srtt = rtt
                state.rttvar = rtt / 2
            else:
                state.rttvar += RTTVAR_WEIGHT * (abs(state.srtt - rtt) - state.rttvar)
                state.srtt += EWMA_WEIGHT * (rtt - state.srtt)
        state.rto = self.base_rto(server)
        state.success_rate += EWMA_WEIGHT * (1.0 - state.success_rate)
        state.consecutive_failures = 0
        state.last_response = self._reactor.seconds()
        state.down = False
        state.probing = False
        state.backoff = 0.0
        state.next_probe = None

    def failed(self, server: Server, rto: float | None = None) -> None:
        """
        Record a timeout, refusal or unusable reply from ``server``.  The
        RTO doubles: ``rto`` is the one the transmission waited for (a
        timeout); without it, the current one.  srtt does not move.
        """
        state = self._finish(server)
        self._back_off(state, state.rto if rto is None else rto)
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
        if state.in_flight > 0:
            state.in_flight -= 1
        state.probing = False

    def order(self, *, all_servers: bool = False) -> list[Server]:
        """
        The servers to try, best first: due probes, then the usable
        (healthy or degraded) servers by unclamped RTO, srtt and configured
        order.  Down servers waiting for their probe are left out, unless
        every server is down; then all are returned, soonest probe first.
        With ``all_servers``, those left out follow, soonest probe first
        (for a query that has ruled out every server of the usual order).
        """
        servers = self._servers
        if len(servers) == 1:
            return list(servers)  # one server: whatever its health, it is the one to try
        for state in servers.values():
            if state.down:
                break
        else:
            # None down (the usual case, once per miss): the usable order
            # alone.  Ranks end in the configured index, so ties never
            # compare the servers themselves.
            rank = self._rank
            return [server for _, server in sorted([(rank(state), server) for server, state in servers.items()])]
        return self._order_with_down(all_servers)

    def _order_with_down(self, all_servers: bool) -> list[Server]:
        """:meth:`order` in general, when some server may be down."""
        states = self._servers.items()
        by_probe = lambda item: (item[1].next_probe, item[1].index)  # noqa: E731
        if all(state.down for _, state in states):
            return [server for server, _ in sorted(states, key=by_probe)]
        probes = sorted(
            ((s, state) for s, state in states if state.down and not state.probing and self._probe_due(state)),
            key=by_probe,
        )
        usable = sorted(((s, state) for s, state in states if not state.down), key=lambda item: self._rank(item[1]))
        ranked = [server for server, _ in probes + usable]
        if all_servers:
            left_out = sorted(((s, state) for s, state in states if s not in ranked), key=by_probe)
            ranked += [server for server, _ in left_out]
        return ranked

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
                srtt_ms=self.srtt(server) * 1000.0,
                in_flight=state.in_flight,
                consecutive_failures=state.consecutive_failures,
                success_rate=state.success_rate,
                last_response=state.last_response,
                health=self._health(state),
                next_probe=state.next_probe if state.down else None,
                queries=state.queries,
                failures=state.failures,
                rto_ms=state.rto * 1000.0,
            )
            for server, state in self._servers.items()
        ]

    def _clamp(self, rto: float) -> float:
        # Comparisons, not min() and max(): this runs on every miss, and the
        # builtins cost about 800 instructions a call on CPython 3.11.
        if rto < self._rto_min:
            return self._rto_min
        return rto if rto < self._rto_max else self._rto_max

    def _back_off(self, state: _ServerState, waited: float) -> None:
        """Unbound's rtt_lost: double the RTO the transmission waited for, unless a success lowered it since."""
        if state.rto < waited:
            return
        state.rto = max(state.rto, min(self._rto_max, 2 * waited))

    def _rank(self, state: _ServerState) -> tuple:
        if state.srtt is None:
            return (state.rto, INITIAL_SRTT, state.index)
        unclamped = state.srtt + 4 * state.rttvar
        backed_off = state.rto > self._clamp(unclamped)
        return (state.rto if backed_off else unclamped, state.srtt, state.index)

    def _finish(self, server: Server) -> _ServerState:
        state = self._servers[server]
        if state.in_flight > 0:
            state.in_flight -= 1
        return state

    def _probe_due(self, state: _ServerState) -> bool:
        return state.next_probe is not None and self._reactor.seconds() >= state.next_probe

    def _health(self, state: _ServerState) -> str:
        if state.down:
            return DOWN
        if state.consecutive_failures or state.success_rate < self._degraded_below:
            return DEGRADED
        return HEALTHY
