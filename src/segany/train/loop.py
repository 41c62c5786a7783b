"""The training loop: build everything from a recipe, run the steps, log, checkpoint, export.

One process::

    segany train recipes/tiny_smoke.toml --output runs/tiny

Several processes (same command, same results up to float rounding; the global batch is fixed by
the recipe, each process takes ``global_batch / N`` images and accumulates micro-batches)::

    torchrun --nproc_per_node 2 -m segany.cli.main train recipes/tiny_smoke.toml --output runs/tiny

Resume after an interruption (same output folder)::

    segany train recipes/tiny_smoke.toml --output runs/tiny --resume
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from segany.errors import SeganyError
from segany.io.checkpoint import load_checkpoint, save_checkpoint
from segany.model import PRESETS, Sam, build_sam
from segany.train import distributed as dist_utils
from segany.train.config import ConfigError, TrainConfig
from segany.train.data import (
    StepBatchSampler,
    TrainDataset,
    build_cache,
    collate_list,
    split_dataset_spec,
)
from segany.train.engine import STAT_NAMES, interactive_step
from segany.train.logs import MetricsLog, plot_losses
from segany.train.optim import build_optimizer, build_scheduler, decay_depths, lr_factor
from segany.train.state import (
    TrainingStateError,
    load_training_state,
    save_training_state,
    set_rng_state,
)
from segany.train.validate import validate_config


@dataclass
class TrainResult:
    """What a finished run reports: last step, mean of the logged metrics over the last log window,
    the exported weights and the wall time."""

    step: int
    metrics: dict[str, float]
    weights: Path | None
    seconds: float


def build_model(cfg: TrainConfig, text_embed_dim: int | None = None) -> Sam:
    """The model to train: ``model.init`` if set (any SAM checkpoint; its architecture wins), else
    ``model.preset`` with ``model.architecture`` overrides, randomly initialised. ``text_embed_dim``
    (the CLIP width, when ``text.clip`` is set): the model gets a text prompt path of that width, new
    and randomly initialised when ``model.init`` has none."""
    m = cfg.model
    if m.init:
        base = load_checkpoint(cfg.resolve_path(m.init))
        config = base.config.replace(drop_path_rate=m.drop_path_rate)
        if text_embed_dim is not None and config.text_embed_dim not in (None, text_embed_dim):
            raise ConfigError(
                f"text.clip: its embeddings are {text_embed_dim} wide, but model.init's text path takes "
                f"{config.text_embed_dim}"
            )
        if text_embed_dim is not None:
            config = config.replace(text_embed_dim=text_embed_dim)
        model = build_sam(config)
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(not k.startswith("prompt_encoder.text_proj.") for k in missing):
            model.load_state_dict(base.state_dict(), strict=True)  # raises, naming the keys
    else:
        if m.preset not in PRESETS:
            raise ConfigError(f"model.preset {m.preset!r} is not one of {', '.join(sorted(PRESETS))}")
        arch = dict(m.architecture)
        if "encoder_global_attn_indexes" in arch:
            arch["encoder_global_attn_indexes"] = tuple(arch["encoder_global_attn_indexes"])
        if text_embed_dim is not None:
            arch["text_embed_dim"] = text_embed_dim
        try:
            config = PRESETS[m.preset].replace(**arch, drop_path_rate=m.drop_path_rate)
        except TypeError as exc:
            raise ConfigError(f"model.architecture: {exc}") from None
        model = build_sam(config)
    model.image_encoder.gradient_checkpointing = m.gradient_checkpointing
    if m.freeze_image_encoder:
        model.image_encoder.requires_grad_(False)
    return model


def build_dataset(cfg: TrainConfig, size: int, cache_dir: Path, is_main: bool) -> TrainDataset:
    """Cached, resized training images (rank 0 builds the caches, the others wait and read them)."""
    if not cfg.data.datasets:
        raise ConfigError("data.datasets is empty: name at least one data set folder")
    specs = [split_dataset_spec(s) for s in cfg.data.datasets]
    items = []
    for phase in ("build", "read"):
        if (phase == "build") != is_main:
            dist_utils.barrier()
            continue
        items = []
        for path, split in specs:
            items += build_cache(cfg.resolve_path(path), split, size, cache_dir, cfg.data.limit_per_dataset)
    d = cfg.data
    return TrainDataset(
        items,
        size,
        d.masks_per_image,
        d.max_area_fraction,
        d.min_mask_pixels,
        jitter=tuple(d.jitter_scale) if d.large_scale_jitter else None,
        seed=cfg.loop.seed,
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        copy_paste=d.copy_paste,
        copy_paste_max=d.copy_paste_max,
        copy_paste_scale=(d.copy_paste_scale[0], d.copy_paste_scale[1]),
    )


class RunFolderError(SeganyError):
    """The output folder holds an earlier run and neither resuming nor overwriting was asked for."""


class TrainingDiverged(SeganyError):
    """The loss became NaN or infinite; the run stopped before that step's update."""


# Files a run writes at its top level (the cache folder is kept on --overwrite: it only depends on the data).
RUN_FILES = ("checkpoint.pt", "model.safetensors", "model.pth", "metrics.csv", "loss.png", "config.json")


def check_run_folder(output: Path, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder holding an earlier run unless ``resume`` or ``overwrite`` is set, and a
    path that is not a folder; nothing is written."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other: choose one")
    if output.exists() and not output.is_dir():
        raise RunFolderError(f"{output}: exists and is not a folder")
    earlier = [n for n in RUN_FILES if (output / n).exists()] + [p.name for p in output.glob("rng-rank*.pt")]
    if earlier and not (resume or overwrite):
        raise RunFolderError(
            f"{output}: holds an earlier run ({', '.join(earlier[:3])}); pass --resume to continue it "
            "or --overwrite to replace it"
        )


def _clear_run_files(output: Path) -> None:
    for name in RUN_FILES:
        (output / name).unlink(missing_ok=True)
    for p in output.glob("rng-rank*.pt"):
        p.unlink()


def _restore(
    state: dict[str, Any], model: Sam, optimizer: Any, scheduler: Any, cfg: TrainConfig, device: torch.device
) -> int:
    """Load a saved training state into the new model, optimiser and scheduler; returns its step."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise TrainingStateError(
            f"the saved state does not fit this recipe's model ({str(exc).splitlines()[0][:200]})"
        ) from None
    start_step = int(state["step"])
    # The recipe's lr and schedule win over the saved ones (identical when the recipe is
    # unchanged), so a resumed run can change them, e.g. to extend or shorten training.
    scheduler.base_lrs = [cfg.optim.lr * g["lr_scale"] for g in optimizer.param_groups]
    for g, base in zip(optimizer.param_groups, scheduler.base_lrs):
        g["lr"] = base * lr_factor(start_step, cfg.optim)
    set_rng_state(state["rng"], device)
    return start_step


def _make_loader(
    cfg: TrainConfig, dataset: TrainDataset, start_step: int, info: Any
) -> tuple[DataLoader, StepBatchSampler]:
    loop = cfg.loop
    try:
        sampler = StepBatchSampler(
            len(dataset), loop.global_batch, start_step, loop.steps, info.rank, info.world, loop.micro_batch, loop.seed
        )
    except ValueError as exc:
        raise ConfigError(f"loop.global_batch: {exc}") from None
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_list,
        num_workers=cfg.data.num_workers,
        persistent_workers=False,
    )
    return loader, sampler


def _check_finite(out: Any, batch: list[dict[str, Any]], step: int, device: torch.device) -> None:
    """Stop at once on a NaN or infinite loss, naming the step (1-based, as logged) and the images.
    Every process takes the decision together, so none is left waiting in a collective."""
    bad = not bool(torch.isfinite(out.loss.detach()).all())
    if dist_utils.any_process(bad, device):
        images = ", ".join(str(item["index"]) for item in batch)
        value = float(out.loss.detach()) if bad else "finite here, not on another process"
        raise TrainingDiverged(
            f"loss is {value} at step {step + 1} (images {images}); the run stopped before "
            "updating the weights, the last checkpoint is intact: lower optim.lr or set optim.grad_clip, then --resume"
        )


class _Window:
    """Sums of the step statistics between two log lines."""

    def __init__(self) -> None:
        self.sums = {k: 0.0 for k in STAT_NAMES}
        self.images = 0.0
        self.t0 = time.time()

    def add(self, out: Any) -> None:
        for k in STAT_NAMES:
            self.sums[k] += out.stats[k]
        self.images += out.images

    def row(self, step: int, lr: float, info: Any, t_start: float) -> dict[str, float]:
        sums = dist_utils.all_reduce_sum([self.sums[k] for k in STAT_NAMES] + [self.images], info.device)
        n = max(sums[-1], 1.0)
        elapsed = time.time() - self.t0
        return {
            "step": step,
            "lr": lr,
            **{k: sums[i] / n for i, k in enumerate(STAT_NAMES)},
            "images_per_s": sums[-1] / max(elapsed, 1e-9),
            "elapsed_s": time.time() - t_start,
        }


def train(
    cfg: TrainConfig,
    output: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Run (or resume) the recipe ``cfg``, writing everything under ``output``.

    Writes ``checkpoint.pt`` (resumable state), ``model.safetensors`` and ``model.pth`` (weights in
    the official key layout), ``metrics.csv``, ``loss.png`` and ``config.json`` (the recipe). Works
    unchanged under torchrun. Nothing is written until the recipe validates, the output folder is
    accepted (an earlier run needs ``resume`` or ``overwrite``) and a resumed state has been read.

    Raises:
        ConfigError: a bad setting (named). RunFolderError: an earlier run in ``output``.
        TrainingStateError: an unreadable saved state. TrainingDiverged: a non-finite loss.
    """
    from segany.io.files import atomic_write_json

    t_start = time.time()
    validate_config(cfg)
    output = Path(output)
    check_run_folder(output, resume, overwrite)
    state = load_training_state(output, 0) if resume else None  # read (and checked) before anything is written
    if resume and state is None:
        print(f"segany train: {output} holds no checkpoint.pt: starting from step 0", flush=True)
    info = dist_utils.init_distributed(cfg.loop.device)
    if info.rank != 0 and resume:
        state = load_training_state(output, info.rank)
    loop = cfg.loop
    if loop.threads:
        torch.set_num_threads(loop.threads)
    clip = _load_clip(cfg, info.device)
    torch.manual_seed(loop.seed)
    model = (build_model(cfg) if clip is None else build_model(cfg, clip.embed_dim)).to(info.device).train()
    if cfg.model.freeze_image_encoder:
        model.image_encoder.eval()  # frozen: BatchNorm statistics (convolutional encoders) stay as loaded too
    dist_utils.broadcast_parameters(model)
    depth, stage_depths = decay_depths(model)  # layer decay over ViT or TinyViT blocks
    optimizer = build_optimizer(model, cfg.optim, depth, stage_depths)
    scheduler = build_scheduler(optimizer, cfg.optim)
    if state is not None:
        start_step = _restore(state, model, optimizer, scheduler, cfg, info.device)
    else:
        start_step = 0
        # Drop path differs per process (like independent GPUs); everything else is seeded per item.
        torch.manual_seed(loop.seed * 1000 + info.rank)
        np.random.seed(loop.seed * 1000 + info.rank)
    del state
    if info.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear_run_files(output)
        atomic_write_json(output / "config.json", cfg.to_dict(), indent=2)

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else output / "cache"
    dataset = build_dataset(cfg, model.image_size, cache_dir, info.is_main)
    text = _text_training(cfg, clip, cache_dir)
    if text is not None and cfg.text.precompute:
        from segany.train.text import precompute

        new = precompute(text, dataset.items, progress and info.is_main)
        if info.is_main:
            print(f"segany train: {new} crop embeddings computed ({text.embedder.hits} already cached)", flush=True)
    loader, sampler = _make_loader(cfg, dataset, start_step, info)
    params = [p for p in model.parameters() if p.requires_grad]
    log = MetricsLog(output / "metrics.csv", start_step) if info.is_main else None
    bar = None
    if progress and info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=loop.steps, initial=start_step, desc=cfg.name, dynamic_ncols=True)
    if info.is_main:
        print(
            f"segany train: {len(dataset)} images ({dataset.num_masks()} masks), {info.world} process(es), "
            f"global batch {loop.global_batch} = {info.world} x {sampler.accumulation} x {sampler.micro} images, "
            f"steps {start_step}->{loop.steps}, model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params",
            flush=True,
        )

    window = _Window()
    last_ckpt_t = time.time()
    last_metrics: dict[str, float] = {}
    step = start_step
    micro = 0
    for batch in loader:
        out = interactive_step(model, batch, loop, cfg.model.freeze_image_encoder, text)
        _check_finite(out, batch, step, info.device)
        # Each process's share of the global mean over images; the all-reduce averages it.
        (out.loss * (info.world / loop.global_batch)).backward()
        window.add(out)
        micro += 1
        if micro < sampler.accumulation:
            continue
        micro = 0
        dist_utils.all_reduce_gradients(params, info.world)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        if step % loop.log_every == 0 or step == loop.steps:
            row = window.row(step, optimizer.param_groups[-1]["lr"], info, t_start)
            last_metrics = {k: row[k] for k in STAT_NAMES}
            if log is not None:
                log.write(row)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}", iou=f"{row['iou_last']:.3f}", img_s=f"{row['images_per_s']:.2f}"
                )
            window = _Window()
        if bar is not None:
            bar.update(1)
        due = step % loop.checkpoint_every == 0 or step == loop.steps
        if loop.checkpoint_minutes:
            due = dist_utils.any_process(due or time.time() - last_ckpt_t > 60 * loop.checkpoint_minutes, info.device)
        if due:
            if text is not None:
                text.embedder.flush()
            _checkpoint(output, info, model, optimizer, scheduler, step, cfg)
            last_ckpt_t = time.time()
    if bar is not None:
        bar.close()
    weights = output / "model.safetensors" if info.is_main else None
    dist_utils.barrier()
    return TrainResult(step=step, metrics=last_metrics, weights=weights, seconds=time.time() - t_start)


def _load_clip(cfg: TrainConfig, device: torch.device) -> Any:
    """The frozen CLIP of ``text.clip`` (None when unset); a file in ``ARCH:WEIGHTS`` is found as the
    recipe's other paths are."""
    spec = cfg.text.clip
    if not spec:
        return None
    from segany.io.clip import load_clip
    from segany.io.hub import CLIP_WEIGHTS

    if spec not in CLIP_WEIGHTS and ":" in spec:
        arch, _, weights = spec.partition(":")
        if arch.endswith(".json"):
            arch = str(cfg.resolve_path(arch))
        spec = f"{arch}:{cfg.resolve_path(weights)}"
    return load_clip(spec, device=device)


def _text_training(cfg: TrainConfig, clip: Any, cache_dir: Path) -> Any:
    if clip is None:
        return None
    from segany.train.text import CropEmbedder, TextTraining, scale_levels

    t = cfg.text
    embedder = CropEmbedder(clip, cache_dir if t.cache else None, t.batch)
    return TextTraining(embedder, t.rate, scale_levels(t.scale[0], t.scale[1], t.scale_levels), t.mask_out_probability)


def _checkpoint(
    output: Path, info: Any, model: Sam, optimizer: Any, scheduler: Any, step: int, cfg: TrainConfig
) -> None:
    save_training_state(output, info.rank, model, optimizer, scheduler, step, cfg.to_dict(), info.device)
    if info.is_main:
        save_checkpoint(model, output / "model.safetensors")
        save_checkpoint(model, output / "model.pth")
        if (output / "metrics.csv").is_file():
            plot_losses(output / "metrics.csv", output / "loss.png")
    dist_utils.barrier()
