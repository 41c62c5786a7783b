"""``segany stats --ray``: the pieces of each data set read by Ray tasks, their statistics merged."""

from __future__ import annotations

from typing import Any

from segany.engine.stats import DatasetStats, unit_stats, units
from segany.errors import SeganyError

__all__ = ["ray_stats"]


def ray_stats(sources: list[str], names: list[str], by: str | None, address: str) -> list[DatasetStats]:
    """One Ray task per piece (a COCO file, a tar shard, 256 loose files), merged in order per data set.
    Only paths go to the tasks and only histograms come back."""
    from segany.engine.executors import RayOptions, _start_ray, ray_available

    if not ray_available():
        raise SeganyError("--ray needs Ray: pip install 'segany[ray]'")
    import ray

    started = _start_ray(RayOptions(None if address == "local" else address))
    try:
        task: Any = ray.remote(num_cpus=1, max_retries=3)(unit_stats)
        pending = [(name, [task.remote(u, name, by) for u in units(source)]) for source, name in zip(sources, names)]
        results = []
        for name, refs in pending:
            total = DatasetStats(name)
            for part in ray.get(refs):
                total.merge(part)
            results.append(total)
        return results
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if hasattr(exc, "cause") else exc
        raise SeganyError(str(cause).strip().splitlines()[-1]) from None
    finally:
        if started:
            ray.shutdown()
