"""Who runs the per-image jobs: this process, or a pool of Ray actors (one machine or a cluster).

Both take the same :class:`~segany.engine.job.ImageWorker` and yield the same status rows; Ray adds
only the execution (engine.md's pattern): ``ray.data.from_items`` of the jobs (ids and paths, never
pixels) -> ``map_batches`` over an actor pool (``ActorPoolStrategy(size=workers)``, ``batch_size=1``,
the model loaded once per actor) -> the driver consumes the rows with ``iter_rows``, so no task needs a
CPU after the pool (the small-machine deadlock of ray#44687). A killed actor is restarted and its
image retried (``max_restarts=-1``, ``max_task_retries=-1``); the retry finds the outputs if they
were written and skips, since the worker is idempotent.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any

from segany.engine.job import ImageJob, ImageWorker, JobSettings
from segany.errors import SeganyError

__all__ = ["RayOptions", "ray_available", "run_local", "run_ray"]


def run_local(
    jobs: list[ImageJob], settings: JobSettings, make_predictor: Callable[[], Any], overwrite: bool = False
) -> Iterator[dict[str, Any]]:
    """Run the jobs one after the other in this process; yield one status row per job."""
    worker = ImageWorker(settings, make_predictor, overwrite=overwrite)
    for job in jobs:
        yield worker(job).row()


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None


class _RayWorker:
    """The actor: an :class:`ImageWorker` behind Ray Data's batch interface (columns of lists)."""

    def __init__(self, settings: dict[str, Any], make_predictor: Callable[[], Any], overwrite: bool) -> None:
        self.worker = ImageWorker(JobSettings(**settings), make_predictor, overwrite=overwrite)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [
            self.worker(ImageJob(int(i), str(p), str(n))).row()
            for i, p, n in zip(batch["image_id"], batch["path"], batch["name"])
        ]
        return {key: [r[key] for r in rows] for key in rows[0]} if rows else {}


class RayOptions:
    """How to reach Ray and size the pool.

    Args:
        address: None for a new local Ray instance, else a cluster address (``ray://...``,
            ``HOST:PORT`` or ``auto``).
        workers: actors (each loads the model once).
        cpus_per_worker, gpus_per_worker: Ray resources per actor (threads follow the CPUs).
        object_store_mb: object store of a new local instance (only ids and rows travel through it).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int = 1,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        object_store_mb: int = 256,
    ) -> None:
        if workers < 1:
            raise SeganyError(f"--workers must be >= 1, got {workers}")
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise SeganyError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.object_store_mb = object_store_mb


def _start_ray(options: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a local run
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    for attempt in (1, 2):  # a busy machine can miss Ray's fixed 30 s start-up wait once
        try:
            if options.address:
                ray.init(address=options.address, **quiet)
            else:
                cpus = max(1, round(options.workers * options.cpus_per_worker))
                ray.init(num_cpus=cpus, num_gpus=None, object_store_memory=options.object_store_mb << 20, **quiet)
            return True
        except Exception as exc:  # noqa: BLE001 (a wrong address, a port in use): one line for the user
            ray.shutdown()
            if attempt == 2 or options.address or "timed out during startup" not in str(exc):
                raise SeganyError(f"cannot start or reach Ray ({options.address or 'local'}): {exc}") from None
    return True


def _quiet_data_context() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver shows its own progress
    for name, value in (
        ("print_on_execution_start", False),
        ("execution_no_progress_timeout_s", -1),  # one CPU image can take minutes
        ("wait_for_min_actors_s", 600),
        ("max_consecutive_actor_init_deaths", 3),  # one OOM while loading weights is not the end
    ):
        if hasattr(ctx, name):
            setattr(ctx, name, value)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    logging.getLogger("ray").setLevel(logging.ERROR)


def run_ray(
    jobs: list[ImageJob],
    settings: JobSettings,
    make_predictor: Callable[[], Any],
    options: RayOptions,
    overwrite: bool = False,
) -> Iterator[dict[str, Any]]:
    """Run the jobs on a pool of Ray actors; yield the status rows as they finish (any order)."""
    if not jobs:
        return
    if not ray_available():
        raise SeganyError("--ray needs Ray: pip install 'segany[ray]'")
    import ray
    import ray.data

    started = _start_ray(options)
    try:
        _quiet_data_context()
        threads = max(1, int(options.cpus_per_worker))
        actor_settings = asdict(replace(settings, threads=settings.threads or threads, record_pid=True))
        items = [asdict(job) for job in jobs]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():  # the restart settings have no named parameter yet
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = _map(ds, ray, settings=actor_settings, make_predictor=make_predictor, options=options,
                      overwrite=overwrite, jobs=len(jobs))
        yield from ds.iter_rows()
    finally:
        if started:
            ray.shutdown()


def _map(ds: Any, ray: Any, settings: dict[str, Any], make_predictor: Callable[[], Any], options: RayOptions,
         overwrite: bool, jobs: int) -> Any:
    return ds.map_batches(
        _RayWorker,
        fn_constructor_kwargs={"settings": settings, "make_predictor": make_predictor, "overwrite": overwrite},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(options.workers, jobs)),
        num_cpus=options.cpus_per_worker,
        max_restarts=-1,
        max_task_retries=-1,
        **({"num_gpus": options.gpus_per_worker} if options.gpus_per_worker else {}),
    )
