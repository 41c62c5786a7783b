"""The data engine's automatic stage at scale, and dataset statistics.

* :mod:`segany.engine.job`: the per-image job (:class:`~segany.engine.job.ImageWorker`), isolated
  and idempotent, the same in one process and in every Ray actor;
* :mod:`segany.engine.executors`: this process or a Ray actor pool runs the jobs;
* :mod:`segany.engine.run`: the driver (resume, shards, progress, report);
* :mod:`segany.engine.layout`: the output folder (run manifest, SA-1B tar shards);
* :mod:`segany.engine.stats`: the paper's dataset statistics, streamed over COCO and SA-1B data
  (:mod:`~segany.engine.stats_plots` draws them, :mod:`~segany.engine.stats_ray` runs them on Ray).
"""
