"""
Many deadlines on one reactor timer, for the upstream pool.

Every miss arms two deadlines (the query's budget and its transmission's
RTO) and nearly always cancels both a millisecond later, when the answer
comes.  As ``reactor.callLater`` calls that is two ``DelayedCall`` objects,
two insertions into the reactor's heap and two cancellations per miss,
about a tenth of the miss path's CPU.  :class:`Deadlines` keeps them in a
heap of its own and holds one reactor timer, set for the earliest live
deadline: arming is a ``heappush``, cancelling flips a flag, and the reactor
timer is rearmed only when it fires (or when a deadline comes in earlier
than the one it is set for).  When no deadline is live the heap is emptied
and the reactor timer cancelled, so an idle pool leaves no delayed call.

Each deadline fires at its own time, as ``callLater`` would: the reactor
timer is set for the earliest one, and every deadline due by then runs, in
order of time.
"""
from __future__ import annotations

import heapq
import itertools

#: Deadlines due within this many seconds of the reactor's time run now
#: (the reactor timer's time is computed from a difference and may land a
#: rounding error short of the deadline).
_SLACK = 1e-9


class Deadline:
    """One armed deadline: ``active()`` and ``cancel()`` as a ``DelayedCall`` has them."""

    __slots__ = ("time", "_callback", "_owner")

    def __init__(self, time: float, callback, owner: Deadlines):
        self.time = time
        self._callback = callback
        self._owner = owner

    def active(self) -> bool:
        """Whether it is still to fire."""
        return self._callback is not None

    def cancel(self) -> None:
        """Do not fire (nothing happens when it already fired or was cancelled)."""
        if self._callback is not None:
            self._callback = None
            self._owner._cancelled()


class Deadlines:
    """Calls each armed callback at its deadline, on one reactor timer (see the module docstring)."""

    def __init__(self, reactor):
        self._reactor = reactor
        self._heap: list = []
        self._order = itertools.count()
        self._live = 0
        self._timer = None  # the reactor's DelayedCall, set for self._timer_at
        self._timer_at = 0.0

    def call_later(self, delay: float, callback) -> Deadline:
        """Call ``callback()`` in ``delay`` seconds, unless the returned :class:`Deadline` is cancelled."""
        now = self._reactor.seconds()
        at = now + delay if delay > 0.0 else now  # not max(): see InfraCache._clamp
        deadline = Deadline(at, callback, self)
        heapq.heappush(self._heap, (at, next(self._order), deadline))
        self._live += 1
        self._arm(at, now)
        return deadline

    def _arm(self, at: float, now: float) -> None:
        """Make sure the reactor timer fires by ``at``."""
        timer = self._timer
        if timer is None:
            self._timer = self._reactor.callLater(max(0.0, at - now), self._fire)
            self._timer_at = at
        elif at < self._timer_at:
            timer.reset(max(0.0, at - now))
            self._timer_at = at

    def _cancelled(self) -> None:
        self._live -= 1
        if not self._live:
            self._heap.clear()
            self._stop_timer()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _fire(self) -> None:
        """The reactor timer: run what is due, then set it for the next live deadline."""
        self._timer = None
        heap = self._heap
        due = self._reactor.seconds() + _SLACK
        while heap and heap[0][0] <= due:
            deadline = heapq.heappop(heap)[2]
            callback = deadline._callback
            if callback is None:
                continue
            deadline._callback = None
            self._live -= 1
            callback()
        while heap and heap[0][2]._callback is None:
            heapq.heappop(heap)
        if not heap:
            self._live = 0
            self._stop_timer()
            return
        # A callback may have armed the timer already, for its own deadline,
        # which need not be the earliest.
        self._arm(heap[0][0], self._reactor.seconds())
