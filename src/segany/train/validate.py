"""Recipe validation: the type and range of every setting, checked before a run writes anything.

Each rule names the setting (``optim.lr``) in its message, so a bad recipe or override is refused with
one line instead of failing later inside torch.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any


def _finite(v: float) -> bool:
    return math.isfinite(v)


# (section, key) -> (check, what it must be). Types are checked separately, from the dataclass fields.
_RANGES: dict[tuple[str, str], tuple[Callable[[Any], bool], str]] = {
    ("model", "drop_path_rate"): (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("data", "datasets"): (lambda v: len(v) > 0 and all(x.strip() for x in v), "a non-empty list of data set folders"),
    ("data", "masks_per_image"): (lambda v: v >= 1, ">= 1"),
    ("data", "max_area_fraction"): (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("data", "min_mask_pixels"): (lambda v: v >= 0, ">= 0"),
    ("data", "jitter_scale"): (lambda v: 0.0 < v[0] <= v[1] <= 10.0, "two scales with 0 < low <= high <= 10"),
    ("data", "color_jitter"): (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("data", "copy_paste"): (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("data", "copy_paste_max"): (lambda v: 1 <= v <= 64, "in 1..64"),
    ("data", "copy_paste_scale"): (lambda v: 0.0 < v[0] <= v[1] <= 10.0, "two scales with 0 < low <= high <= 10"),
    ("data", "num_workers"): (lambda v: 0 <= v <= 64, "in 0..64"),
    ("data", "limit_per_dataset"): (lambda v: v is None or v >= 1, ">= 1 (or absent for no limit)"),
    ("optim", "lr"): (lambda v: _finite(v) and 0.0 < v < 1.0, "a learning rate in (0, 1)"),
    ("optim", "betas"): (lambda v: all(0.0 <= b < 1.0 for b in v), "two numbers in [0, 1)"),
    ("optim", "weight_decay"): (lambda v: _finite(v) and v >= 0.0, ">= 0"),
    ("optim", "warmup_steps"): (lambda v: v >= 0, ">= 0"),
    ("optim", "decay_steps"): (
        lambda v: all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v),
        "a list of steps >= 0",
    ),
    ("optim", "decay_factor"): (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("optim", "layer_decay"): (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("optim", "grad_clip"): (lambda v: v is None or (_finite(v) and v > 0.0), "> 0 (or absent for none)"),
    ("loop", "steps"): (lambda v: v >= 1, ">= 1"),
    ("loop", "global_batch"): (lambda v: v >= 1, ">= 1"),
    ("loop", "micro_batch"): (lambda v: v is None or v >= 1, ">= 1 (or absent)"),
    ("loop", "num_rounds"): (lambda v: 1 <= v <= 64, "in 1..64"),
    ("loop", "min_rounds"): (lambda v: v is None or v >= 1, ">= 1 (or absent)"),
    ("loop", "loss_rounds"): (lambda v: v in ("all", "first_last"), "'all' or 'first_last'"),
    ("loop", "box_probability"): (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("loop", "center_click_probability"): (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("loop", "box_noise_fraction"): (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("loop", "box_noise_max"): (lambda v: _finite(v) and v >= 0.0, ">= 0"),
    ("loop", "loss_size"): (lambda v: v is None or 4 <= v <= 4096, "in 4..4096 (or absent)"),
    ("loop", "focal_weight"): (lambda v: _finite(v) and v >= 0.0, ">= 0"),
    ("loop", "dice_weight"): (lambda v: _finite(v) and v >= 0.0, ">= 0"),
    ("loop", "iou_weight"): (lambda v: _finite(v) and v >= 0.0, ">= 0"),
    ("loop", "rank_weight"): (lambda v: _finite(v) and v >= 0.0, ">= 0"),
    ("loop", "focal_alpha"): (lambda v: v <= 1.0, "<= 1 (negative: no class weighting)"),
    ("loop", "focal_gamma"): (lambda v: 0.0 <= v <= 10.0, "in [0, 10]"),
    ("loop", "device"): (
        lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()),
        "'auto', 'cpu', 'cuda' or 'cuda:N'",
    ),
    ("loop", "threads"): (lambda v: v is None or 0 <= v <= 1024, "in 0..1024 (0 or absent: torch's default)"),
    ("loop", "seed"): (lambda v: 0 <= v < 2**32, "in 0..2**32-1"),
    ("loop", "log_every"): (lambda v: v >= 1, ">= 1"),
    ("loop", "checkpoint_every"): (lambda v: v >= 1, ">= 1"),
    ("loop", "checkpoint_minutes"): (lambda v: v is None or (_finite(v) and v > 0.0), "> 0 (or absent)"),
    ("text", "clip"): (lambda v: v is None or bool(v.strip()), "a CLIP name or ARCH:WEIGHTS (or absent: no text path)"),
    ("text", "rate"): (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("text", "scale"): (lambda v: 0.5 <= v[0] <= v[1] <= 10.0, "two factors with 0.5 <= low <= high <= 10"),
    ("text", "scale_levels"): (lambda v: 1 <= v <= 1000, "in 1..1000"),
    ("text", "mask_out_probability"): (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    ("text", "batch"): (lambda v: 1 <= v <= 4096, "in 1..4096"),
}


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the field annotation ``hint`` (bools are not numbers; ints fit floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and Ellipsis not in typing.get_args(hint) and len(value) != len(args):
            return False
        return all(_type_ok(v, args[0] if len(args) == 1 else args[i]) for i, v in enumerate(value))
    if origin is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return {"<class 'int'>": "an integer", "<class 'float'>": "a number", "<class 'str'>": "a string",
            "<class 'bool'>": "true or false"}.get(text, text)


def validate_config(cfg: Any) -> None:
    """Check every setting of a :class:`segany.train.config.TrainConfig`; raise ``ConfigError`` naming
    the first bad one (``section.key: expected ..., got ...``)."""
    from segany.model import PRESETS
    from segany.train.config import ConfigError

    for section in ("model", "data", "optim", "loop", "text"):
        obj = getattr(cfg, section, None)
        if obj is None:  # a configuration object from before the section existed
            continue
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{section}.{f.name}"
            if not _type_ok(value, hints[f.name]):
                raise ConfigError(f"{key}: expected {_type_name(hints[f.name])}, got {value!r}")
            rule = _RANGES.get((section, f.name))
            if rule is not None and not rule[0](value):
                raise ConfigError(f"{key}: must be {rule[1]}, got {value!r}")
    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset: {cfg.model.preset!r} is not one of {', '.join(sorted(PRESETS))}")
    if cfg.loop.min_rounds is not None and cfg.loop.min_rounds > cfg.loop.num_rounds:
        raise ConfigError(
            f"loop.min_rounds: must be <= loop.num_rounds ({cfg.loop.num_rounds}), got {cfg.loop.min_rounds}"
        )
    if cfg.loop.micro_batch is not None and cfg.loop.micro_batch > cfg.loop.global_batch:
        raise ConfigError(
            f"loop.micro_batch: must be <= loop.global_batch ({cfg.loop.global_batch}), got {cfg.loop.micro_batch}"
        )
    if cfg.loop.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"loop.device: {cfg.loop.device!r} asked for, but torch sees no CUDA GPU here (use 'auto' or 'cpu')"
            )
