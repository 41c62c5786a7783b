"""Atomic file writes (a reader never sees a half-written output file) and checked JSON reading.

Each writer puts the data in a temporary file in the destination folder (so that the final rename
stays on one file system), flushes it to disk, then renames it over the destination with
:func:`os.replace`, which is atomic on POSIX and Windows. On any failure the temporary file is removed
and the destination is left as it was.

:func:`read_json` and the small ``json_*`` field checkers turn unreadable or malformed JSON input into
:class:`~segany.io.FormatError` messages that name the file and the field.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

from segany.io import FormatError

__all__ = [
    "atomic_write_bytes",
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path.

    Missing parent folders are created. The new file gets the usual permissions (0o666 minus the
    umask), unlike :mod:`tempfile` files, which would be private to the user.
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never clobber someone else's temporary file; mode 0o666 is filtered by the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
    return target


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
