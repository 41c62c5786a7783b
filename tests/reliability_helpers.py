"""Helpers for the reliability tests (issue 20): hostile files made on the fly, commands run in a child
process under an address-space limit (so a regression fails there instead of exhausting the machine),
and a way to make a folder really read-only even for root."""

from __future__ import annotations

import os
import resource
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of ``width`` x ``height`` pixels written row by row (a 27000x27000
    one is ~90 KB and takes well under a second, with almost no memory)."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    chunks = []
    for _ in range(height):
        chunks.append(comp.compress(row))
    chunks.append(comp.flush())
    idat = b"".join(chunks)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("SEGANY_DEBUG", None)
    env.update(extra)
    return env


def run_limited(
    args: Sequence[str],
    *,
    memory_bytes: int | None = 2 * 1024**3,
    timeout: float = 120,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m segany.cli.main ARGS`` in a child limited to ``memory_bytes`` of address space."""

    def limit() -> None:
        if memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return subprocess.run(
        [*wrapper, sys.executable, "-m", "segany.cli.main", *args],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env or child_env(),
    )


def unprivileged_wrapper() -> list[str] | None:
    """A command prefix under which a mode-555 folder is really read-only: nothing for an ordinary
    user; ``setpriv`` dropping CAP_DAC_OVERRIDE for root; None if neither is possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "true"], capture_output=True
    )
    return (
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"] if probe.returncode == 0 else None
    )


def dead_pid() -> int:
    """The id of a process that has exited (for stale temporary names)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
