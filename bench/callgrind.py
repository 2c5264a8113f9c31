"""Reading callgrind's output files: the instructions it counted."""
from pathlib import Path


def instructions_counted(directory: Path) -> int:
    """
    The instructions callgrind counted, from the ``callgrind.out*`` files in
    ``directory`` (the largest ``summary:`` or ``totals:`` figure: with a
    ``callgrind_control -d`` dump, the dump holds the counted part and the
    file written at exit what came after it); 0 when there is none.
    """
    counted = 0
    for path in directory.glob("callgrind.out*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                counted = max(counted, int(line.split()[1]))
    return counted
