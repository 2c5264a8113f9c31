"""
What is wrong with a configuration: :class:`Problem` (one thing, at a dotted
path) and :class:`ConfigError` (raised with every problem found, and able to
report them for people).
"""
from __future__ import annotations

import attrs


@attrs.frozen
class Problem:
    """One thing wrong with a configuration: where it is (a dotted path such
    as ``cache.message_cache.num_shards`` or ``upstreams[1]``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem], source: str = "<config>") -> None:
        super().__init__(list(problems), source)
        self.problems = list(problems)
        self.source = source

    def report(self) -> str:
        """Return the problems for people: a heading line, then one problem a line."""
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        lines = [f"config error in {self.source}: {count} {noun}"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()
