"""
The state of one parse, handed from stage to stage: the environment that
``${VAR}`` reads, and the problems found so far.  Every stage records its
problems here rather than raising, so that one run reports them all.
"""
from __future__ import annotations

from collections.abc import Mapping

import attrs

from dnsgo.config.errors import Problem


@attrs.define
class _Reading:
    """The state of one parse: the environment for ${VAR}, and the problems
    found so far."""

    environ: Mapping[str, str]
    problems: list[Problem] = attrs.Factory(list)

    def add(self, path: str, message: str) -> None:
        """Record a problem."""
        self.problems.append(Problem(path, message))
