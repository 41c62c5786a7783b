"""Two CPU processes (gloo) stay in sync and match a single process with the same global batch."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from segany.train.config import load_config
from segany.train.loop import train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recipe(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        "\n".join(
            [
                "[model]", 'preset = "tiny"', "[data]",
                f'datasets = ["{data}"]', "masks_per_image = 2",
                f'cache_dir = "{tmp_path / "cache"}"',
                "[optim]", "lr = 2e-3", "warmup_steps = 1", "[loop]",
                "steps = 2", "global_batch = 2", "micro_batch = 1", "num_rounds = 3", "threads = 1",
                "log_every = 1", "checkpoint_every = 100", "",
            ]
        )
    )
    return path


def _rows(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_two_processes_match_one(tmp_path: Path, shapes_data: Path) -> None:
    recipe = _recipe(tmp_path, shapes_data)
    # One process: global batch 2 as 2 accumulated micro-batches of 1 image.
    train(load_config(recipe), tmp_path / "single", progress=False)
    # Two processes: 1 image each; the model's and the optimiser's state live per rank.
    out = tmp_path / "ddp"
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_entry, args=(r, 2, port, str(recipe), str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    ranks = [torch.load(out / f"weights-rank{r}.pt", weights_only=True) for r in range(2)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), f"ranks differ at {k}"
    single = torch.load(tmp_path / "single" / "model.pth", weights_only=True)
    for k, v in single.items():
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-4, atol=1e-5, msg=k)
    a, b = _rows(tmp_path / "single"), _rows(out)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["iou_first"] == pytest.approx(ra["iou_first"], abs=1e-4)


def _rank_entry(rank: int, world: int, port: int, recipe: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    from segany.train import loop

    captured: dict[str, torch.nn.Module] = {}
    real_build = loop.build_model

    def keep(cfg):  # the training loop's own model object, to read its weights after the last step
        captured["model"] = real_build(cfg)
        return captured["model"]

    loop.build_model = keep
    loop.train(load_config(recipe), out, progress=False)
    state = {k: v.detach().clone() for k, v in captured["model"].state_dict().items()}
    torch.save(state, Path(out) / f"weights-rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
