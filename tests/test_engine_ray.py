"""The automatic stage on Ray: the same files as the one-process run, a worker killed by its PID, a
killed driver. One local Ray instance (2 CPUs, 256 MB object store) serves the whole module."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from sam_testing import random_tiny
from test_engine_local import KNOBS, REPO, report, write_images

from segany.cli.main import main
from segany.io.checkpoint import save_checkpoint

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

RUN = [*KNOBS, "--points-per-side", "6", "--shard-size", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=256 << 20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, test_images) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray")
    folder = root / "in"
    write_images(folder, test_images, 12, size=(128, 96))
    (folder / "img99_broken.jpg").write_bytes(b"not an image")
    ckpt = save_checkpoint(random_tiny(seed=1), root / "tiny.pth")
    ref = root / "ref"
    assert main(["auto", str(folder), "-o", str(ref), "-c", str(ckpt), *RUN]) == 1
    return {"in": folder, "ckpt": ckpt, "ref": ref}


def _tars(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("sa_*.tar"))}


def test_a_worker_killed_by_pid_loses_nothing_and_the_run_equals_the_local_one(local_ray, data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            pids = sorted((out / "_workers").glob("*")) if (out / "_workers").is_dir() else []
            if pids and (list(out.glob("img*.json")) or list(out.glob("sa_*.tar"))):
                pid = int(pids[0].name)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_worker_mid_run, daemon=True)
    killer.start()
    rc = main(["auto", str(data["in"]), "-o", str(out), "-c", str(data["ckpt"]), *RUN, "--ray", "--workers", "2"])
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert rc == 1  # the broken image, recorded; everything else done
    counts = report(out)
    assert counts["failures"].keys() == {"img99_broken"} and counts["done"] == 12
    assert counts["workers"] >= 3  # two actors, plus the one Ray restarted after the kill
    assert _tars(out) == _tars(data["ref"])  # same masks, same records, byte for byte
    names = []
    for tar in out.glob("sa_*.tar"):
        with tarfile.open(tar) as t:
            names += [n for n in t.getnames() if n.endswith(".json")]
    assert len(names) == len(set(names)) == 12
    assert not list(out.rglob(".*.tmp")) and not list(out.glob("img*.json"))


def test_a_killed_driver_is_resumed_on_ray_without_recomputing(local_ray, data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "segany.cli.main", "auto", str(data["in"]), "-o", str(out), "-c", str(data["ckpt"]),
           *RUN, "--ray", "--workers", "1"]
    # Its own Ray instance, in its own session so that the kill takes its Ray processes too.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not ((out / "sa_000000.done.json").exists() and list(out.glob("img0[4-7].json"))):
            assert proc.poll() is None, "the run finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)  # let a worker that outlived its driver finish its last (atomic, identical) write
    finished = {p.stem for p in out.glob("img*.json")} | {"img00", "img01", "img02", "img03"}
    args = ["auto", str(data["in"]), "-o", str(out), "-c", str(data["ckpt"]), *RUN, "--ray", "--workers", "2"]
    assert main(args) == 1
    counts = report(out)
    # None recomputed: the rerun did exactly the images missing when it started (an actor of the killed
    # run may still have finished one after the snapshot: skipped, not redone).
    assert counts["skipped"] >= len(finished) and counts["done"] == 12 - counts["skipped"]
    assert _tars(out) == _tars(data["ref"])
    assert main(args) == 1 and report(out)["done"] == 0  # complete: no work, the broken image still reported


def test_stats_on_ray_give_the_one_process_figures(local_ray, tmp_path: Path) -> None:
    from test_cli_stats import sa1b_records

    folder = tmp_path / "data"
    (folder / "loose").mkdir(parents=True)
    records = sa1b_records()
    with tarfile.open(folder / "sa_000000.tar", "w") as tar:
        for name, blob in records.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    for name, blob in records.items():
        (folder / "loose" / name).write_bytes(blob)
    results = {}
    for mode, extra in (("local", []), ("ray", ["--ray"])):
        out = tmp_path / mode
        assert main(["stats", str(folder), "-o", str(out), "--by", "source", "--no-progress", *extra]) == 0
        results[mode] = json.loads((out / "stats.json").read_text())
    local, on_ray = results["local"]["datasets"]["data"], results["ray"]["datasets"]["data"]
    assert local["images"] == on_ray["images"] == 4
    for key in ("relative_size", "concavity"):
        assert on_ray[key]["masks_per_bin"] == local[key]["masks_per_bin"]
        assert on_ray[key]["mean"] == pytest.approx(local[key]["mean"])
    assert on_ray["centres"] == local["centres"] and on_ray["masks_per_image"] == local["masks_per_image"]
    assert results["ray"]["by"] == results["local"]["by"]
