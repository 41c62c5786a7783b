"""Training configuration: one dataclass per recipe section, read from a TOML file.

A recipe is a TOML file with the sections ``[model]``, ``[data]``, ``[optim]``, ``[loop]`` and ``[text]`` (every
key optional; the defaults follow the SAM paper, Appendix A). Command-line overrides use dotted
names, ``optim.lr=1e-4`` or ``loop.steps=200``, and are parsed as TOML values (strings may be bare).
"""

from __future__ import annotations

import dataclasses
import os

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segany.errors import SeganyError
from segany.train.validate import validate_config


class ConfigError(SeganyError):
    """A recipe file or a command-line override is malformed."""


@dataclass
class ModelSection:
    """Which network to train and how to initialise it."""

    preset: str = "tiny"  # a segany.model.PRESETS name: the architecture to start from
    architecture: dict[str, Any] = field(default_factory=dict)  # SamConfig field overrides of the preset
    init: str | None = None  # checkpoint to fine-tune from (official .pth or segany file); None = random
    drop_path_rate: float = 0.0
    freeze_image_encoder: bool = False  # encoded without gradients, in eval mode (BatchNorm statistics kept)
    gradient_checkpointing: bool = False


@dataclass
class DataSection:
    """Where the images come from and how they are prepared."""

    # Each entry: "path" or "path:split" (split as in splits.json, e.g. "train+val").
    datasets: list[str] = field(default_factory=list)
    masks_per_image: int = 64  # the paper's cap per GPU; fewer are used if an image has fewer
    max_area_fraction: float = 0.9  # masks covering more of the image are dropped (paper)
    min_mask_pixels: int = 4  # masks smaller than this after resizing are dropped
    large_scale_jitter: bool = False
    jitter_scale: tuple[float, float] = (0.1, 2.0)
    hflip: bool = False  # mirror half of the images
    color_jitter: float = 0.0  # brightness, contrast and saturation scaled by 1 + U(-x, x)
    copy_paste: float = 0.0  # share of images that get 1..copy_paste_max objects of other images pasted on
    copy_paste_max: int = 3
    copy_paste_scale: tuple[float, float] = (0.25, 1.0)  # pasted objects rescaled by a factor in this range
    cache_dir: str | None = None  # resized images and masks are cached here (default: OUTPUT/cache)
    num_workers: int = 0
    limit_per_dataset: int | None = None


@dataclass
class OptimSection:
    """AdamW, linear warm-up then step decay, layer-wise learning-rate decay."""

    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    warmup_steps: int = 250
    decay_steps: list[int] = field(default_factory=list)  # lr is multiplied by decay_factor at each
    decay_factor: float = 0.1
    # Encoder block i gets lr * layer_decay ** (depth - i) (TinyViT's blocks counted across stages); 1.0 = off.
    layer_decay: float = 1.0
    grad_clip: float | None = None


@dataclass
class LoopSection:
    """The interactive simulation, batch, precision, logging and checkpoints."""

    steps: int = 1000
    global_batch: int = 4  # images per optimiser step, whatever the number of processes
    micro_batch: int | None = None  # images per forward pass per process (accumulate the rest)
    num_rounds: int = 11  # paper: 1 initial prompt + 8 point rounds + 2 rounds without a new point
    min_rounds: int | None = None  # set: each step runs a random number of rounds in [min_rounds, num_rounds]
    loss_rounds: str = "all"  # "all", or "first_last": the other rounds run without gradient (faster)
    box_probability: float = 0.5  # round 1 prompt: a noisy box with this probability, else a point
    center_click_probability: float = (
        0.0  # clicks at the error region's centre (the evaluation clicker) instead of uniform
    )
    box_noise_fraction: float = 0.1
    box_noise_max: float = 20.0
    loss_size: int | None = None  # side at which mask losses are computed; None = the input size
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    rank_weight: float = 0.0  # > 0: also train the IoU head to order the three masks (not in the paper)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    bf16: bool = False
    fast_decoder: bool = True  # the decoder rewritten with fewer multiply-adds (same function)
    device: str = "auto"  # "auto": cuda if available, else cpu
    threads: int | None = None  # torch intra-op threads per process (None: torch's default)
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500  # steps
    checkpoint_minutes: float | None = None  # also checkpoint after this much wall time


@dataclass
class TextSection:
    """The text prompt path (SAM paper, section 7.5; :mod:`segany.train.text`): off while ``clip`` is unset."""

    clip: str | None = None  # a CLIP release name (clip_vit_l14_336) or ARCH:WEIGHTS; sets the model's text path
    rate: float = 0.5  # share of masks whose first prompt is their crop's CLIP image embedding
    scale: tuple[float, float] = (1.0, 2.0)  # the mask's box is enlarged by a factor in this range
    scale_levels: int = 5  # ... drawn from this many evenly spaced values (so cached crops repeat)
    mask_out_probability: float = 0.5  # crops with the outside of the mask zeroed
    cache: bool = True  # keep crop embeddings on disk under the data cache folder
    precompute: bool = False  # embed every crop of the (unaugmented) data before the first step
    batch: int = 32  # crops per CLIP call


@dataclass
class TrainConfig:
    """A whole recipe."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loop: LoopSection = field(default_factory=LoopSection)
    text: TextSection = field(default_factory=TextSection)
    name: str = "run"
    base_dir: str = "."  # folder the recipe came from; relative data paths are resolved against it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve_path(self, path: str) -> Path:
        """A path from the recipe: absolute, or relative to the cwd, else to the recipe's folder.

        ``$SEGANY_DATA`` is expanded; when unset it defaults to ``<recipe folder>/../../shared/data``
        (the shared data next to a checkout whose recipes live in ``recipes/``).
        """
        if "${SEGANY_DATA}" in path or "$SEGANY_DATA" in path:
            os.environ.setdefault("SEGANY_DATA", str(Path(self.base_dir).parent.parent / "shared" / "data"))
        p = Path(os.path.expandvars(os.path.expanduser(path)))
        if p.is_absolute() or p.exists():
            return p
        return Path(self.base_dir) / p


_SECTIONS = {
    "model": ModelSection, "data": DataSection, "optim": OptimSection, "loop": LoopSection, "text": TextSection,
}


def _coerce(section: str, name: str, value: Any, default: Any) -> Any:
    """Turn TOML values into the field's type where it matters (tuples, floats given as ints)."""
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"{section}.{name}: expected a list of {len(default)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{section}.{name}: expected true or false, got {value!r}")
    return value


def _build_section(section: str, values: dict[str, Any]) -> Any:
    cls = _SECTIONS[section]
    obj = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown setting {section}.{key} (known: {', '.join(sorted(names))})")
        setattr(obj, key, _coerce(section, key, value, getattr(obj, key)))
    return obj


def config_from_dict(d: dict[str, Any], name: str = "run", base_dir: str = ".") -> TrainConfig:
    """Build a :class:`TrainConfig` from nested dicts (the parsed TOML)."""
    unknown = set(d) - set(_SECTIONS) - {"name"}
    if unknown:
        raise ConfigError(f"unknown recipe section(s): {', '.join(sorted(unknown))}")
    parts = {}
    for section in _SECTIONS:
        values = d.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        parts[section] = _build_section(section, values)
    return TrainConfig(**parts, name=str(d.get("name", name)), base_dir=base_dir)


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"optim.lr=1e-4"`` -> ``("optim", "lr", 1e-4)``; values are TOML (bare words are strings)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    section, name = key.strip().split(".", 1)
    if section not in _SECTIONS:
        raise ConfigError(f"override {text!r}: unknown section {section!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare string such as a path
    return section, name.strip(), value


def load_config(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML recipe (or start from defaults when ``path`` is None) and apply overrides."""
    d: dict[str, Any] = {}
    name, base = "run", "."
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: no such recipe file")
        try:
            d = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file (a recipe is UTF-8 TOML)") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read the recipe ({exc.strerror or exc})") from None
        name, base = p.stem, str(p.resolve().parent)
    for text in overrides or []:
        section, key, value = parse_override(text)
        d.setdefault(section, {})[key] = value
    cfg = config_from_dict(d, name=name, base_dir=base)
    validate_config(cfg)
    return cfg
