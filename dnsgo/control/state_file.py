"""
Where a worker keeps its witness state (``docs/ha.md#the-state-file``): a
small JSON file written atomically (a temporary file in the same directory,
flushed and fsynced, renamed over the old one, then the directory fsynced),
so that after a crash it holds either the old state or the new one, never
half of each.  :class:`MemoryState` keeps it in memory only.
"""
from __future__ import annotations

import json
import os

import attrs

#: The format version written in the file.
VERSION = 1


@attrs.frozen
class WitnessState:
    """What a worker has promised, as it must survive a restart."""

    term: int = 0  # the highest term seen
    voted_for: str | None = None  # the candidate this worker voted for in ``term``
    lease_holder: str | None = None  # the control plane it promised its lease to
    lease_expires: float = 0.0  # until when (seconds since the epoch)
    leader_api: str = ""  # the lease holder's API address
    voters: tuple[tuple[str, str], ...] = ()  # the last leader's electorate: (worker id, site)
    voters_rev: int = 0  # its revision within ``term`` (the leader changes it one worker at a time)

    def to_json(self) -> dict:
        """The file's JSON object."""
        return {
            "version": VERSION,
            "term": self.term,
            "voted_for": self.voted_for,
            "lease_holder": self.lease_holder,
            "lease_expires": self.lease_expires,
            "leader_api": self.leader_api,
            "voters": [list(pair) for pair in self.voters],
            "voters_rev": self.voters_rev,
        }

    @classmethod
    def from_json(cls, data) -> WitnessState:
        """The state a file's JSON object holds; ValueError if it holds none."""
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"not a version {VERSION} witness state")
        try:
            term = data["term"]
            if not isinstance(term, int) or isinstance(term, bool) or term < 0:
                raise ValueError(f"term must be a non-negative integer; got {term!r}")
            voters = tuple((str(worker_id), str(site)) for worker_id, site in data.get("voters", ()))
            return cls(
                term=term,
                voted_for=_optional_text(data.get("voted_for")),
                lease_holder=_optional_text(data.get("lease_holder")),
                lease_expires=float(data.get("lease_expires", 0.0)),
                leader_api=str(data.get("leader_api", "")),
                voters=voters,
                voters_rev=int(data.get("voters_rev", 0)),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed witness state: {e!r}") from None


def _optional_text(value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected text or null; got {value!r}")
    return value


class StateFile:
    """The witness state in the file at ``path`` (its directory is created if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> WitnessState | None:
        """The saved state, or None when there is no file.  ValueError for a file that is not one."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return WitnessState.from_json(json.loads(text))
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from None

    def save(self, state: WitnessState) -> None:
        """Replace the saved state atomically and durably (returns once it is on disk)."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        temporary = f"{self.path}.tmp-{os.getpid()}"
        data = json.dumps(state.to_json(), separators=(",", ":")).encode("utf-8")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def __repr__(self) -> str:
        return f"<StateFile {self.path}>"


class MemoryState:
    """Witness state kept in memory only (no ``state_dir``): lost with the process."""

    def __init__(self) -> None:
        self.saved: WitnessState | None = None
        self.path = None

    def load(self) -> WitnessState | None:
        """What was saved in this process, if anything."""
        return self.saved

    def save(self, state: WitnessState) -> None:
        """Keep ``state``."""
        self.saved = state
