"""
The worker-witness quorum of control-plane HA (``docs/ha.md#quorum``): how
many workers, from how many sites, must grant a vote or acknowledge a lease
renewal for a control plane to lead.

A quorum is at least ``minimum`` workers *and* more than half of the
electorate (so that two quorums of one electorate always share a worker,
which is what makes one leader per term), from at least ``min_sites``
distinct sites.  Only members of the electorate count.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs


@attrs.frozen
class Tally:
    """The outcome of counting one round of answers."""

    granted: int  # electorate members that said yes
    required: int  # how many are needed
    sites: tuple[str, ...]  # the sites of those that said yes, sorted
    sites_required: int

    @property
    def met(self) -> bool:
        """Whether the answers make a quorum."""
        return self.granted >= self.required and len(self.sites) >= self.sites_required

    def to_json(self) -> dict:
        """The tally for ``/api/ha``."""
        return {
            "granted": self.granted,
            "required": self.required,
            "sites": list(self.sites),
            "sites_required": self.sites_required,
            "met": self.met,
        }


@attrs.frozen
class QuorumRule:
    """``high_availability.quorum``: ``minimum`` workers from ``min_sites`` sites, and a majority."""

    minimum: int
    min_sites: int

    def required(self, electorate_size: int) -> int:
        """Grants needed from an electorate of ``electorate_size`` workers."""
        return max(self.minimum, electorate_size // 2 + 1)

    def tally(self, granted: Iterable[str], electorate: Mapping[str, str]) -> Tally:
        """Count the ``granted`` worker ids that belong to ``electorate`` (worker id -> site)."""
        members = {worker_id for worker_id in granted if worker_id in electorate}
        sites = tuple(sorted({electorate[worker_id] for worker_id in members}))
        return Tally(len(members), self.required(len(electorate)), sites, self.min_sites)
