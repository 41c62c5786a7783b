"""The output folder of an automatic run: run manifest, SA-1B tar shards, leftovers of killed runs.

::

    OUT/run.json                 the model (file and sha256) and every setting that shapes the masks
    OUT/<name>.json              one SA-1B file per image (or a PNG folder with --format png)
    OUT/sa_000000.tar            with --shard-size: a sealed shard, ``<name>.<ext>`` image and
                                 ``<name>.json`` side by side (SA-1B's layout, WebDataset-compatible)
    OUT/sa_000000.done.json      written after its tar: members, their sha256, masks, failures
    OUT/report.json              the last run's report (images, masks, failures with reasons, time)

A rerun with the same settings does only what is missing; other settings are refused (a run is one
model and one configuration). Sealing writes the tar atomically, then the marker atomically, then
removes the shard's loose files, so a kill between any two steps leaves a state the next run repairs:
a tar without a marker is not trusted and is sealed again from the loose files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segany.errors import SeganyError
from segany.io.files import atomic_write_bytes, atomic_write_json

__all__ = [
    "REPORT_FILE",
    "RUN_FILE",
    "check_run_manifest",
    "file_sha256",
    "seal_shard",
    "sealed_shards",
    "shard_name",
    "sweep_leftovers",
]

RUN_FILE = "run.json"
REPORT_FILE = "report.json"
_MTIME = 1_600_000_000  # fixed member times: a resealed shard has the same bytes


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of a folder's files (names and contents, sorted), in 1 MB reads."""
    p = Path(path)
    digest = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            digest.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {json.dumps(b)} now, {json.dumps(a)} before")
    return found


def check_run_manifest(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Write ``OUT/run.json``, or check that the one there describes the same run.

    ``manifest["fingerprint"]`` holds what shapes the outputs (model sha256, generator settings,
    format, shards); the rest (paths, versions, dates) is informative.

    Raises:
        SeganyError: the folder holds a run with another fingerprint and ``overwrite`` is False.
    """
    path = out / RUN_FILE
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
            old_print = old["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SeganyError(f"{path} is not a segany run manifest; choose another output folder") from None
        changes = _differences(old_print, manifest["fingerprint"])
        if changes:
            shown = "; ".join(changes[:3]) + ("; ..." if len(changes) > 3 else "")
            raise SeganyError(
                f"{out} holds a run with other settings ({shown}): use another output folder, "
                "or --overwrite to redo it with these"
            )
        return
    atomic_write_json(path, manifest, indent=2)


def sweep_leftovers(out: Path) -> int:
    """Remove temporary files and folders of writes that a killed run left (``.*.tmp``, ``.*.old``)
    and the worker pid files of earlier runs; returns how many were removed."""
    removed = 0
    if not out.is_dir():
        return 0
    for p in list(out.rglob(".*")):
        if p.name.endswith((".tmp", ".old")) and p.exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed += 1
    shutil.rmtree(out / "_workers", ignore_errors=True)
    return removed


# --- shards ---------------------------------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"sa_{index:06d}"


def sealed_shards(out: Path) -> dict[str, dict[str, Any]]:
    """The done-markers of sealed shards whose tar is there and matches, by shard name."""
    found: dict[str, dict[str, Any]] = {}
    for marker in sorted(out.glob("sa_*.done.json")):
        name = marker.name[: -len(".done.json")]
        tar = out / f"{name}.tar"
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue  # not trusted: sealed again
        if tar.is_file() and tar.stat().st_size == data.get("tar_bytes"):
            found[name] = data
    return found


def _tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A reproducible tar (fixed times, owners and order) of ``(name, data)`` pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def seal_shard(
    out: Path,
    index: int,
    done: list[tuple[str, Path]],
    failed: Mapping[str, str],
) -> dict[str, Any]:
    """Seal one shard: ``sa_NNNNNN.tar`` with each finished image and its SA-1B JSON, then the marker,
    then remove the loose JSON files.

    Args:
        done: ``(name, image path)`` of the shard's finished images (their ``OUT/<name>.json`` exist).
        failed: name -> reason of the shard's images that failed.

    The tar is built in memory (a shard is bounded by ``--shard-size``) and written atomically.
    """
    name = shard_name(index)
    members: list[tuple[str, bytes]] = []
    digests: dict[str, str] = {}
    masks = 0
    for image_name, image_path in sorted(done):
        json_bytes = (out / f"{image_name}.json").read_bytes()
        masks += len(json.loads(json_bytes)["annotations"])
        image_member = image_name + Path(image_path).suffix.lower()
        members += [(image_member, Path(image_path).read_bytes()), (f"{image_name}.json", json_bytes)]
        digests[f"{image_name}.json"] = hashlib.sha256(json_bytes).hexdigest()
    data = _tar_bytes(members)
    atomic_write_bytes(out / f"{name}.tar", data)
    marker = {
        "shard": name,
        "images": sorted(n for n, _ in done),
        "masks": masks,
        "failed": dict(sorted(failed.items())),
        "tar_bytes": len(data),
        "tar_sha256": hashlib.sha256(data).hexdigest(),
        "json_sha256": digests,
    }
    atomic_write_json(out / f"{name}.done.json", marker, indent=1)
    for image_name, _ in done:
        (out / f"{image_name}.json").unlink(missing_ok=True)
    return marker
