"""Atomic file writes (a reader never sees a half-written output file) and checked JSON reading.

Each writer puts the data in a temporary file in the destination folder (so that the final rename
stays on one file system), flushes it to disk, then renames it over the destination with
:func:`os.replace`, which is atomic on POSIX and Windows. On any failure the temporary file is removed
and the destination is left as it was; the error is an :class:`~segany.errors.OutputError` naming the
destination. Temporary names record their writer (:func:`temp_path`), so the leftovers of a killed
write are swept by the next write into that folder (:func:`sweep_stale_temps`).

:func:`check_output_path` checks an output path before a command does any work.

:func:`read_json` and the small ``json_*`` field checkers turn unreadable or malformed JSON input into
:class:`~segany.io.FormatError` messages that name the file and the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from segany.errors import OutputError
from segany.io import FormatError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_many",
    "check_output_path",
    "sweep_stale_temps",
    "temp_path",
    "atomic_write_text",
    "atomic_write_json",
    "to_jsonable",
    "read_json",
    "json_int",
    "json_float",
    "json_floats",
]


def _fsync_dir(folder: Path) -> None:
    """Flush the folder entry so the rename itself survives a crash (best effort; no-op on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- temporary names that say who made them, so a later run can sweep a killed writer's leftovers ----

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]
# ".NAME.<host>-<pid>-<rand>.tmp": written by this module's writers (files and folders).
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[0-9a-f]{4})-(?P<pid>\d+)-[0-9a-f]{6}\.tmp$")
# Names from before the owner was recorded (".NAME.<12 hex>.tmp", mkstemp's ".NAME.<8 chars>.tmp"):
# their writer is unknown, so they are swept only once they are clearly abandoned.
_LEGACY_RE = re.compile(r"^\.(?P<name>.+)\.(?:[0-9a-f]{12}|[a-z0-9_]{8})\.tmp$")
LEGACY_TEMP_AGE_S = 3600.0


def temp_path(target: str | os.PathLike[str]) -> Path:
    """A hidden temporary path beside ``target`` (same folder, so a rename onto it stays on one file
    system) whose name records this host and process: :func:`sweep_stale_temps` removes it later if
    this process dies before cleaning up (SIGKILL, power loss)."""
    t = Path(target)
    return t.parent / f".{t.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(3)}.tmp"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: the process exists but belongs to someone else
        return True
    return True


def _is_stale(entry: os.DirEntry[str], now: float) -> bool:
    m = _TEMP_RE.match(entry.name)
    if m is not None:
        # Another host's writer cannot be asked whether it still runs (shared file systems): leave it.
        return m["host"] == _HOST and not _pid_alive(int(m["pid"]))
    if _LEGACY_RE.match(entry.name) is not None:
        try:
            return now - entry.stat(follow_symlinks=False).st_mtime > LEGACY_TEMP_AGE_S
        except OSError:
            return False
    return False


def sweep_stale_temps(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders that killed segany writers left in ``folder``.

    A temporary entry is stale when the process named in it (:func:`temp_path`) is no longer running
    on this host, or, for older names that record no process, when it is more than
    :data:`LEGACY_TEMP_AGE_S` seconds old. ``name``: only the leftovers of writes to ``folder/name``.
    Best effort: anything that cannot be removed is left. Returns what was removed.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or not entry.name.endswith(".tmp"):
            continue
        if name is not None and not entry.name.startswith(f".{name}."):
            continue
        if not _is_stale(entry, now):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


_SWEPT: set[str] = set()


def _sweep_once(folder: Path) -> None:
    """Sweep ``folder`` at the first write into it by this process: leftovers come from processes that
    died before, and scanning a folder of thousands of outputs at every write would be quadratic."""
    key = os.path.abspath(folder)
    if key not in _SWEPT:
        sweep_stale_temps(folder)
        _SWEPT.add(key)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_fd(fd: int, data: bytes) -> None:
    """Write and flush ``data`` to a fresh file descriptor (closes it)."""
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _stage(target: Path, data: bytes) -> Path:
    """Write ``data`` into a new temporary file beside ``target``; return its path. Raises OutputError
    naming ``target`` (the temporary file removed) if the folder cannot be made or written."""
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create its folder {folder} ({_describe(exc)})") from exc
    _sweep_once(folder)
    tmp = temp_path(target)
    try:
        # O_EXCL: never clobber someone else's temporary file; mode 0o666 is filtered by the umask.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({_describe(exc)})") from exc
    try:
        _write_fd(fd, data)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{target}: cannot write ({_describe(exc)})") from exc
        raise
    return tmp


def _commit(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            what = "it is a folder" if target.is_dir() else _describe(exc)
            raise OutputError(f"{target}: cannot write ({what})") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Missing parent folders are created. The new file gets the usual permissions (0o666 minus the
    umask), unlike :mod:`tempfile` files, which would be private to the user. At the first write into a
    folder, leftover temporary files of earlier, killed writers are removed (:func:`sweep_stale_temps`).

    Raises:
        OutputError: (also an ``OSError``) the folder cannot be made, the disk is full, the path is a
            folder, ...; the message names ``path``, and ``path`` is left as it was.
    """
    target = Path(path)
    tmp = _stage(target, data)
    _commit(tmp, target)
    _fsync_dir(target.parent)
    return target


def atomic_write_many(items: Mapping[str | os.PathLike[str], bytes]) -> list[Path]:
    """Write several files all or nothing (as far as a file system allows): every file is first written
    in full to a temporary file, and only then are they renamed into place. A failure while writing
    (disk full, read-only folder) leaves every destination as it was; a rename that fails midway
    removes the files this call created. Returns the paths in order."""
    targets = [Path(p) for p in items]
    staged: list[tuple[Path, Path]] = []
    try:
        for target, data in zip(targets, items.values()):
            staged.append((_stage(target, data), target))
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    created: list[Path] = []
    try:
        for i, (tmp, target) in enumerate(staged):  # noqa: B007 (i is read in the except clause)
            existed = target.exists()
            _commit(tmp, target)
            if not existed:
                created.append(target)
    except BaseException:
        for tmp, _ in staged[i + 1 :]:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        for target in created:
            with contextlib.suppress(OSError):
                target.unlink()
        raise
    for folder in {t.parent for t in targets}:
        _fsync_dir(folder)
    return targets


# --- checking an output path before any work --------------------------------------------------


def _probe_writable(folder: Path, label: str) -> None:
    """Create and remove an empty file in ``folder``: the one test of writability that also holds for
    root without CAP_DAC_OVERRIDE, read-only mounts and ACLs (``os.access`` misses some of these)."""
    probe = temp_path(folder / "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise OutputError(f"{label}: cannot write in {folder} ({_describe(exc)})") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_path(
    path: str | os.PathLike[str],
    *,
    folder: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    suffixes: Sequence[str] | None = None,
    create: bool = True,
    what: str = "output",
) -> Path:
    """Check, before any work, that ``path`` can be written; return it. Writes nothing.

    Args:
        path: a file to write (``folder=False``) or a folder to write into (``folder=True``).
        inputs: files the command reads; ``path`` may not be one of them (a mask over its own image).
        suffixes: allowed file suffixes (lower case, with the dot), e.g. ``(".png",)``.
        create: whether missing folders may be made (by the writer, later); if not, the folder must exist.
        what: how messages name the path (``"output"``, ``"--overlay"``, ``"report folder"``).
    Raises:
        OutputError: ``path`` is a folder where a file is meant or a file where a folder is meant, has
            the wrong suffix, is one of ``inputs``, its folder is missing (``create=False``) or sits
            under a file, or the nearest existing folder is not writable (read-only, no permission).
    """
    p = Path(path)
    if folder:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{what} {p} exists and is not a folder")
        where = p
    else:
        if p.is_dir():
            raise OutputError(f"{what} {p} is a folder; give a file name")
        if suffixes is not None and p.suffix.lower() not in suffixes:
            raise OutputError(f"{what} {p} must be a {' or '.join(suffixes)} file")
        for source in inputs:
            if source is not None and p.exists() and Path(source).exists() and os.path.samefile(p, source):
                raise OutputError(f"{what} {p} is the input {source}; refusing to overwrite it")
        where = p.parent
    existing = where
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise OutputError(f"{what} {p}: {existing} is a file, not a folder")
    if existing != where and not create:
        raise OutputError(f"{what} folder {where} does not exist")
    _probe_writable(existing, f"{what} {p}")
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8 by default) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any) -> Any:
    """``json`` fallback for numpy scalars/arrays and torch tensors (anything with ``tolist``)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = None) -> Path:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically; return the path.

    Numpy scalars and arrays (and torch tensors) are converted with ``tolist``. The JSON is produced
    completely before the file is touched, so a serialisation error leaves no file behind.
    """
    text = json.dumps(obj, indent=indent, default=to_jsonable, ensure_ascii=False)
    return atomic_write_text(path, text + "\n" if indent is not None else text)


# --- reading JSON with errors a user can act on -------------------------------------------------


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse the JSON file at ``path``.

    Raises:
        FormatError: the file is missing, unreadable, not UTF-8, or not valid (e.g. truncated) JSON;
            the message names the file and, for syntax errors, the line and column.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{what} not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise FormatError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise FormatError(f"{p}: not a UTF-8 text file (byte {exc.start}); is it really a {what}?") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        stripped = text.rstrip()
        # Every object/array document ends with a closing bracket; a missing one means a cut file.
        cut = exc.pos >= len(stripped) or not stripped.endswith(("}", "]"))
        hint = "; the file ends early (truncated?)" if cut else ""
        raise FormatError(f"{p}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}){hint}") from exc


def json_int(value: Any, where: str, name: str, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise FormatError naming ``where`` and the field ``name``.

    Integral floats (``3.0``) are accepted since some writers emit them.
    """
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise FormatError(f"{where}: '{name}' must be an integer, got {value!r}")
    result = int(value)
    if minimum is not None and result < minimum:
        raise FormatError(f"{where}: '{name}' must be >= {minimum}, got {result}")
    return result


def json_float(value: Any, where: str, name: str) -> float:
    """Return ``value`` as a finite float, or raise FormatError naming ``where`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FormatError(f"{where}: '{name}' must be a finite number, got {value!r}")
    return float(value)


def json_floats(value: Any, where: str, name: str, length: int) -> list[float]:
    """Return ``value`` as a list of ``length`` finite floats (e.g. an xywh box), or raise FormatError."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise FormatError(f"{where}: '{name}' must be a list of {length} numbers, got {value!r}")
    return [json_float(v, where, name) for v in value]
