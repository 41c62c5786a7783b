"""What every benchmark script shares: the CPU's name for the "Machine:" line, a wall-clock timer, and
replacing the script's own section of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_section(heading: str, text: str, path: Path = RESULTS) -> Path:
    """Put ``text`` (which starts with ``heading``) in place of the section under ``heading``, from the
    heading to the next ``## `` heading, or append it when there is none; written atomically."""
    from segany.io.files import atomic_write_text

    old = path.read_text() if path.is_file() else "# Benchmarks\n\nEach section is written by its own benchmark script.\n"
    section = text.rstrip("\n") + "\n"
    if heading in old:
        start = old.index(heading)
        end = old.find("\n## ", start + len(heading))
        new = old[:start] + section + (old[end:] if end >= 0 else "")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, new)
    return path
