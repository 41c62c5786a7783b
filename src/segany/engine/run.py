"""The driver of an automatic run: what is left to do, who does it, shards, progress and the report.

:func:`run_auto` is the same for both executors: it checks the output folder against the run
manifest, sweeps what a killed run left, skips every image already done (a loose output or a sealed
shard), hands the rest to :func:`~segany.engine.executors.run_local` or
:func:`~segany.engine.executors.run_ray`, seals each shard as soon as all its images are resolved,
shows progress (images, masks, throughput, ETA) and writes ``OUT/report.json``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segany.engine.job import ImageJob, JobSettings, is_done
from segany.engine.layout import (
    REPORT_FILE,
    check_run_manifest,
    seal_shard,
    sealed_shards,
    shard_name,
    sweep_leftovers,
)
from segany.errors import SeganyError
from segany.io.files import atomic_write_json

__all__ = ["Report", "run_auto"]

Executor = Callable[[list[ImageJob]], Iterator[dict[str, Any]]]


@dataclass
class Report:
    """What a run did. ``failures`` maps image names to reasons (this run's and sealed shards')."""

    images: int = 0
    done: int = 0
    skipped: int = 0
    masks: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    shards_sealed: list[str] = field(default_factory=list)
    workers: int = 0  # processes that loaded the model (Ray: actors, restarts included)
    executor: str = "local"

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_json(self) -> dict[str, Any]:
        rate = self.done / self.seconds * 3600 if self.seconds > 0 else 0.0
        return {
            "images": self.images, "done": self.done, "skipped": self.skipped, "failed": self.failed,
            "masks": self.masks, "seconds": round(self.seconds, 3), "images_per_hour": round(rate, 1),
            "failures": dict(sorted(self.failures.items())), "shards_sealed": self.shards_sealed,
            "workers": self.workers, "executor": self.executor,
        }


class _Shards:
    """Which images each shard holds and how each was resolved, to seal a shard once all are."""

    def __init__(self, out: Path, jobs: list[ImageJob], size: int, sealed: dict[str, dict[str, Any]]) -> None:
        self.out, self.size = out, size
        self.members: dict[int, list[ImageJob]] = {}
        for job in jobs:
            self.members.setdefault((job.image_id - 1) // size, []).append(job)
        self.sealed = {int(name[3:]) for name in sealed}
        self.ok: dict[int, set[str]] = {k: set() for k in self.members}
        self.failed: dict[int, dict[str, str]] = {k: {} for k in self.members}

    def resolve(self, job: ImageJob, status: str, reason: str = "") -> str | None:
        """Record one image; seal its shard when complete and return the shard's name."""
        k = (job.image_id - 1) // self.size
        if k in self.sealed:
            return None
        if status == "failed":
            self.failed[k][job.name] = reason
        else:
            self.ok[k].add(job.name)
        if len(self.ok[k]) + len(self.failed[k]) < len(self.members[k]):
            return None
        done = [(j.name, Path(j.path)) for j in self.members[k] if j.name in self.ok[k]]
        seal_shard(self.out, k, done, self.failed[k])
        self.sealed.add(k)
        return shard_name(k)


def run_auto(
    jobs: list[ImageJob],
    settings: JobSettings,
    execute: Executor,
    manifest: dict[str, Any],
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    executor_name: str = "local",
) -> Report:
    """Run the automatic stage over ``jobs`` into ``settings.out``.

    Args:
        execute: runs a list of jobs and yields their status rows (an executor bound to its worker
            settings and model, e.g. a partial of :func:`~segany.engine.executors.run_local`).
        manifest: the run manifest (see :func:`~segany.engine.layout.check_run_manifest`).
        shard_size: seal every ``shard_size`` images (by id) into ``sa_NNNNNN.tar`` (sa1b format only).
    """
    from tqdm import tqdm

    start = time.perf_counter()
    out = Path(settings.out)
    try:  # fail before working: an output folder we cannot write is one line, before any image
        out.mkdir(parents=True, exist_ok=True)
        sweep_leftovers(out)
        check_run_manifest(out, manifest, overwrite)
    except OSError as exc:
        raise SeganyError(f"cannot write to {exc.filename or out}: {exc.strerror or exc}") from None
    report = Report(images=len(jobs), executor=executor_name)

    sealed = sealed_shards(out) if shard_size and not overwrite else {}
    in_sealed: set[str] = set()
    for marker in sealed.values():
        in_sealed.update(marker["images"])
        report.failures.update(marker.get("failed", {}))
        in_sealed.update(marker.get("failed", {}))
    shards = _Shards(out, jobs, shard_size, sealed) if shard_size else None

    todo: list[ImageJob] = []
    for job in jobs:
        if job.name in in_sealed:
            report.skipped += 1
        elif not overwrite and is_done(out, job.name, settings.format, settings.overlay):
            report.skipped += 1
            if shards is not None and (name := shards.resolve(job, "ok")):
                report.shards_sealed.append(name)
        else:
            todo.append(job)
    if report.skipped:
        note = f"segany auto: skipping {report.skipped} image(s) already done in {out} (--overwrite redoes them)"
        print(note, file=sys.stderr)

    by_id = {job.image_id: job for job in todo}
    bar = tqdm(total=len(todo), unit="img", disable=not progress or not todo, dynamic_ncols=True)
    try:
        for row in execute(todo) if todo else ():
            job = by_id[int(row["image_id"])]
            status = row["status"]
            if status == "failed":
                report.failures[job.name] = row["reason"]
                bar.write(f"segany auto: skipping {job.path}: {row['reason']}", file=sys.stderr)
            elif status == "skipped":  # a retried task whose image was already written
                report.done += 1
            else:
                report.done += 1
                report.masks += int(row["masks"])
            if shards is not None and (name := shards.resolve(job, status, row.get("reason", ""))):
                report.shards_sealed.append(name)
            bar.set_postfix(masks=report.masks, failed=report.failed, refresh=False)
            bar.update(1)
    finally:
        bar.close()
        workers = out / "_workers"
        report.workers = len(list(workers.iterdir())) if workers.is_dir() else (1 if todo else 0)
        shutil.rmtree(workers, ignore_errors=True)
        sweep_leftovers(out)  # a worker killed mid-write leaves a temporary file nothing trusts
        report.seconds = time.perf_counter() - start
        try:
            atomic_write_json(out / REPORT_FILE, report.to_json(), indent=2)
        except OSError as exc:  # e.g. the disk filled up: the report is printed anyway
            print(f"segany auto: cannot write {out / REPORT_FILE}: {exc.strerror or exc}", file=sys.stderr)
    return report
