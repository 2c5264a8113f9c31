"""
``cache.persist_path``: a serving process writes its L2 to a file when it
stops cleanly and loads it when it starts, so a restarted worker is warm.

The file is a cache dump (``docs/cache-dump.md``).  It is written to a
temporary file in the same folder, flushed to disk, then renamed over the
old one, so a crash while writing leaves the previous file whole.  A file
that is missing starts the process cold, silently; one that is damaged, cut
off, of another version or not a dump starts it cold with one log line.
Nothing here ever stops a start or a stop.
"""
from __future__ import annotations

import os
import tempfile

from twisted.application import service
from twisted.logger import Logger

from dnsgo.cache.dump import DumpError, read_dump


def persist_file(path: str, worker_id: str) -> str:
    """The file of ``cache.persist_path`` for ``worker_id`` (``{worker_id}`` in the path is replaced)."""
    return path.replace("{worker_id}", worker_id)


class PersistService(service.Service):
    """Loads ``path`` into the process's L2 at start and writes L2 to it at stop, through ``tools`` (a CacheTools)."""

    log = Logger(namespace="dnsgo.persist")

    def __init__(self, tools, path: str) -> None:
        self._tools = tools
        self._path = path

    def startService(self) -> None:
        super().startService()
        try:
            with open(self._path, "rb") as f:
                contents = read_dump(f)
        except FileNotFoundError:
            self.log.info("cache.persist_path {path}: no file yet; starting cold", path=self._path)
            return
        except (OSError, DumpError) as e:
            self.log.warn("cache.persist_path {path}: refused ({why}); starting cold", path=self._path, why=_why(e))
            return
        result = self._tools.load_entries(contents.entries)
        self.log.info(
            "cache.persist_path {path}: loaded {loaded} entries, skipped {expired} expired (written by {worker})",
            path=self._path, loaded=result.loaded, expired=result.expired, worker=contents.worker,
        )

    def stopService(self):
        super().stopService()
        folder = os.path.dirname(os.path.abspath(self._path))
        temp = None
        try:
            fd, temp = tempfile.mkstemp(prefix=".dnsgo-dump-", dir=folder)
            count = 0
            with os.fdopen(fd, "w", encoding="ascii") as f:
                for line in self._tools.dump_lines():
                    f.write(line)
                    count += 1
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, self._path)
            temp = None
            self.log.info("cache.persist_path {path}: wrote {entries} entries", path=self._path, entries=max(0, count - 2))
        except OSError as e:
            self.log.warn("cache.persist_path {path}: not written ({why})", path=self._path, why=_why(e))
        finally:
            if temp is not None:
                try:
                    os.unlink(temp)
                except OSError:
                    pass


def _why(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__
    return str(error)[:200]
