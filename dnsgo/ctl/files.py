"""
Cache dumps on the operator's side: a dump streamed from the API is
checked as it passes (:class:`DumpCheck`: the header names the format, the
last line is the end mark with the entry count) and written atomically
(:func:`write_atomically`: a temporary file in the same directory, then a
rename), so a file at the path is always a whole dump.  The format itself
is the server's (docs/api.md, ``POST /api/cache/dump``): dnsgoctl only
checks that the stream is complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable

from dnsgo.ctl.errors import Failed

#: The ``format`` of a dump's first line.
DUMP_FORMAT = "dnsgo-cache-dump"
#: The longest dump line read (an RRset with many records is long, but not this long).
MAX_LINE = 16 * 1024 * 1024


class DumpCheck:
    """Follows the lines of a dump and says whether it arrived whole."""

    def __init__(self) -> None:
        self.header: dict | None = None
        self.entries = 0
        self.ended = False
        self.declared: int | None = None

    def feed(self, line: bytes) -> None:
        """One line of the stream (with its newline); Failed when it cannot belong to a dump."""
        if self.ended:
            if line.strip():
                raise Failed("the dump goes on after its end line")
            return
        if not line.endswith(b"\n"):
            if len(line) >= MAX_LINE:
                raise Failed(f"a line of the dump is longer than {MAX_LINE} bytes")
            raise Failed(f"the dump stopped in the middle of a line after {self.entries} entries (truncated)")
        try:
            data = json.loads(line)
        except ValueError:
            raise Failed(f"line {self.entries + (self.header is not None) + 1} of the dump is not JSON") from None
        if self.header is None:
            if not isinstance(data, dict) or data.get("format") != DUMP_FORMAT:
                raise Failed(f"the API's answer is not a cache dump (its first line has no "
                             f"\"format\": \"{DUMP_FORMAT}\")")
            self.header = data
        elif isinstance(data, dict) and data.get("end") is True:
            self.ended = True
            self.declared = data.get("entries")
        else:
            self.entries += 1

    def finish(self) -> None:
        """Failed unless the stream had its header and end line, and as many entries as the end line says."""
        if self.header is None:
            raise Failed("the dump is empty: the API sent no header line")
        if not self.ended:
            raise Failed(f"the dump stopped after {self.entries} entries without its end line (truncated)")
        if isinstance(self.declared, int) and self.declared != self.entries:
            raise Failed(f"the dump's end line counts {self.declared} entries, but {self.entries} arrived")


def checked(lines: Iterable[bytes], check: DumpCheck) -> Iterable[bytes]:
    """``lines``, each fed to ``check`` before it is given out, and ``check`` finished after the last."""
    for line in lines:
        check.feed(line)
        yield line
    check.finish()


def write_atomically(path: str, chunks: Iterable[bytes]) -> int:
    """
    Write ``chunks`` to a temporary file beside ``path`` (mode 0600: a dump
    tells what was resolved), flush it to disk, then rename it to ``path``;
    the byte count.  On any failure the temporary file is removed and
    ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=directory)
    written = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return written
