"""Checkpoint files: read and write ``.pth`` (official key layout) and ``.safetensors``, and infer the
architecture from a state dict's shapes so any SAM-layout file loads with no model-type argument."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import warnings
from collections import Counter
from pathlib import Path

import torch

from segany.errors import CheckpointError
from segany.io import hf_sam
from segany.io.files import sweep_stale_temps, temp_path
from segany.model import Sam, SamConfig, build_sam

_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# The first layer of the optional text prompt path: (prompt width, CLIP width).
TEXT_PROJ_KEY = "prompt_encoder.text_proj.0.weight"
# The largest model input size a file's metadata may ask for (SAM's is 1024): inputs are resized to it.
MAX_IMAGE_SIZE = 4096


def _sniff(p: Path) -> str:
    """``"safetensors"``, ``"zip"`` (torch.save) or ``"other"`` (legacy torch pickle, or not a checkpoint),
    by the file's first bytes rather than its name."""
    with open(p, "rb") as f:
        head = f.read(10)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 10 and head[8:10] == b'{"':
        return "safetensors"
    return "other"


def _read_file(p: Path) -> object:
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: file is empty")
    kind = _sniff(p)
    if kind == "safetensors" or (kind == "other" and p.suffix == ".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before refusing them
            warnings.simplefilter("ignore")
            with open(p, "rb") as f:  # a file object: torch would pick its loader by the name's suffix
                return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "can't read"
        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and ("GLOBAL" in text or "global" in text):
            line = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower()), "")
            raise CheckpointError(
                f"{p}: refused: the file holds more than plain tensors, and loading it could run code"
                + (f" ({line[:160]})" if line else "")
            ) from None
        if isinstance(exc, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
            raise CheckpointError(
                f"{p}: refused: the file is a pickle of more than plain tensors, and loading it could run code"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): {first[:160]}"
        ) from None


def read_state_dict(path: str | os.PathLike[str], notes: dict[str, object] | None = None) -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint, refusing anything but plain tensors, in the official key layout.

    Files are told apart by their first bytes: ``.safetensors`` or ``torch.save`` files (read with
    ``weights_only=True``: no code from pickles). Training checkpoints that wrap the weights under
    ``model``/``state_dict`` and DDP's ``module.`` prefixes are unwrapped. Hugging Face transformers'
    SAM weights (a file, or a model folder with ``config.json``) are converted to the official names
    (``notes["hf"]`` is then set, when ``notes`` is given).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        files = hf_sam.weight_files(p)
        if not files:
            raise CheckpointError(
                f"{p}: is a folder, not a checkpoint file (nor a Hugging Face model folder with model.safetensors)"
            )
        p = files[0]
    state = _read_file(p)
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if hf_sam.is_hf_state(state):
        state = hf_sam.from_hf(state)
        if notes is not None:
            notes["hf"] = True
    if not any(k.startswith(_PARTS) for k in state):
        raise CheckpointError(
            f"{p}: not a SAM checkpoint: expected keys under image_encoder./prompt_encoder./mask_decoder. "
            f"(or Hugging Face's vision_encoder.), found {_prefix_summary(state.keys())}"
        )
    return state


def _prefix_summary(keys: object, depth: int = 2, limit: int = 6) -> str:
    counts = Counter(".".join(str(k).split(".")[:depth]) for k in keys)  # type: ignore[attr-defined]
    if not counts:
        return "nothing"
    items = [f"{prefix}.* ({n})" if n > 1 else prefix for prefix, n in sorted(counts.items())[:limit]]
    more = len(counts) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"cannot infer the architecture: key '{key}' is missing")
    return state[key]


def _dim(state: dict[str, torch.Tensor], key: str, axis: int, default: int) -> int:
    """A size read off ``key``, or the official default when the key is absent (the strict load
    that follows then names every missing key, which says more than failing here)."""
    return int(state[key].shape[axis]) if key in state else default


def _indices(state: dict[str, torch.Tensor], pattern: str, what: str) -> list[int]:
    """Sorted distinct integers matched by ``pattern``'s group in the keys; refused unless they run
    0, 1, ..., n-1 (a gap or a huge index would otherwise make the model that gets built huge)."""
    rx = re.compile(pattern)
    ids = sorted({int(m.group(1)) for k in state if (m := rx.match(k))})
    if ids and ids[-1] != len(ids) - 1:
        missing = sorted(set(range(ids[-1] + 1)) - set(ids))
        shown = ", ".join(str(i) for i in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise CheckpointError(f"cannot infer the architecture: {what} are not numbered 0..{ids[-1]} (missing {shown})")
    return ids


def infer_config(state: dict[str, torch.Tensor], name: str = "custom") -> SamConfig:
    """Read the architecture off the tensor shapes of a SAM-family state dict (official key layout).

    The image encoder is SAM's ViT (``image_encoder.patch_embed.proj``) or MobileSAM's TinyViT
    (``image_encoder.patch_embed.seq``); ``mask_decoder.hf_token`` marks SAM-HQ. Decoder head count and
    TinyViT's input size are not visible in shapes; they are 8 and 1024 in every known release.
    Nothing is allocated: the shapes are checked against the file by :func:`check_state`.
    """
    try:
        return _infer(state, name)
    except (IndexError, ValueError, ZeroDivisionError, OverflowError) as exc:  # shapes of the wrong rank
        raise CheckpointError(f"cannot infer the architecture: tensor shapes do not fit SAM's layout ({exc})") from None


def _infer(state: dict[str, torch.Tensor], name: str) -> SamConfig:
    from segany.model.conv_encoder import infer_conv_encoder, is_conv_state_dict

    if "image_encoder.patch_embed.seq.0.c.weight" in state:
        config = _infer_tiny_vit(state)
    elif is_conv_state_dict(state):
        try:
            conv = infer_conv_encoder(state)
        except KeyError as exc:
            raise CheckpointError(f"cannot infer the architecture: key {exc} is missing") from None
        config = SamConfig(encoder="conv", **conv)  # type: ignore[arg-type]
        if not 16 <= config.image_size <= 4096 or config.image_size % 16:
            raise CheckpointError(
                f"cannot infer the architecture: input size {config.image_size} is not a multiple of 16 in 16..4096"
            )
    elif "image_encoder.patch_embed.proj.weight" in state:
        config = _infer_vit(state)
    else:
        raise CheckpointError(
            "cannot infer the architecture: expected SAM's ViT (image_encoder.patch_embed.proj.weight) or "
            "MobileSAM's TinyViT (image_encoder.patch_embed.seq.0.c.weight), found "
            + _prefix_summary([k for k in state if k.startswith("image_encoder.")] or state.keys(), depth=3)
        )
    d = SamConfig()
    dec_layers = _indices(state, r"^mask_decoder\.transformer\.layers\.(\d+)\.", "decoder layers")
    iou_layers = _indices(state, r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", "IoU head layers")
    num_tokens = _dim(state, "mask_decoder.mask_tokens.weight", 0, d.num_multimask_outputs + 1)
    config = config.replace(
        prompt_embed_dim=_dim(state, "image_encoder.neck.0.weight", 0, d.prompt_embed_dim),
        mask_in_chans=_dim(state, "prompt_encoder.mask_downscaling.3.weight", 0, d.mask_in_chans),
        decoder_depth=len(dec_layers) or d.decoder_depth,
        decoder_mlp_dim=_dim(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight", 0, d.decoder_mlp_dim),
        iou_head_depth=len(iou_layers) or d.iou_head_depth,
        iou_head_hidden_dim=_dim(state, "mask_decoder.iou_prediction_head.layers.0.weight", 0, d.iou_head_hidden_dim),
        num_multimask_outputs=max(num_tokens - 1, 1),
        hq="mask_decoder.hf_token.weight" in state,
        text_embed_dim=_dim(state, TEXT_PROJ_KEY, 1, 0) or None,  # segany's text prompt path, when present
        name=name,
    )
    from segany.model import PRESETS

    for preset in PRESETS.values():  # name official sizes by their usual names
        if preset == config:  # ``name`` is not compared
            return config.replace(name=preset.name)
    return config


def _infer_vit(state: dict[str, torch.Tensor]) -> SamConfig:
    patch_w = state["image_encoder.patch_embed.proj.weight"]  # (D, 3, p, p)
    if patch_w.ndim != 4:
        raise CheckpointError(
            f"cannot infer the architecture: image_encoder.patch_embed.proj.weight has shape {tuple(patch_w.shape)}"
        )
    embed_dim, patch = int(patch_w.shape[0]), int(patch_w.shape[-1])
    pos = state.get("image_encoder.pos_embed")  # (1, g, g, D)
    block_ids = _indices(state, r"^image_encoder\.blocks\.(\d+)\.", "encoder blocks")
    if not block_ids:
        raise CheckpointError("cannot infer the architecture: no image_encoder.blocks.* keys")
    depth = len(block_ids)
    table_len = [int(_need(state, f"image_encoder.blocks.{i}.attn.rel_pos_h").shape[0]) for i in range(depth)]
    head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[-1])
    if head_dim <= 0 or embed_dim % head_dim or patch <= 0:
        raise CheckpointError(
            f"cannot infer the architecture: width {embed_dim} is not a multiple of the head size {head_dim}"
        )
    grid = int(pos.shape[1]) if pos is not None and pos.ndim == 4 else (max(table_len) + 1) // 2
    global_idx = tuple(i for i, n in enumerate(table_len) if n == 2 * grid - 1)
    windowed = [n for n in table_len if n != 2 * grid - 1]
    d = SamConfig()
    mlp_hidden = _dim(state, "image_encoder.blocks.0.mlp.lin1.weight", 0, int(embed_dim * d.mlp_ratio))
    return SamConfig(
        image_size=grid * patch,
        patch_size=patch,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=global_idx,
        window_size=(windowed[0] + 1) // 2 if windowed else 14,
        mlp_ratio=mlp_hidden / embed_dim if embed_dim else d.mlp_ratio,
    )


def _infer_tiny_vit(state: dict[str, torch.Tensor]) -> SamConfig:
    d = SamConfig(encoder="tiny_vit")
    dims = [int(state["image_encoder.patch_embed.seq.0.c.weight"].shape[0]) * 2]
    for i in range(3):
        dims.append(int(_need(state, f"image_encoder.layers.{i}.downsample.conv1.c.weight").shape[0]))
    depths, heads, windows = [], [d.tiny_vit_heads[0]], [d.tiny_vit_windows[0]]  # stage 0 is convolutional
    for i in range(4):
        depths.append(len(_indices(state, rf"^image_encoder\.layers\.{i}\.blocks\.(\d+)\.", f"stage {i} blocks")))
        if i:
            biases = _need(state, f"image_encoder.layers.{i}.blocks.0.attn.attention_biases")
            heads.append(int(biases.shape[0]))
            windows.append(math.isqrt(int(biases.shape[-1])))
    mlp_hidden = _dim(state, "image_encoder.layers.1.blocks.0.mlp.fc1.weight", 0, int(dims[1] * d.mlp_ratio))
    conv_hidden = _dim(state, "image_encoder.layers.0.blocks.0.conv1.c.weight", 0, int(dims[0] * d.tiny_vit_conv_ratio))
    return d.replace(
        tiny_vit_dims=tuple(dims),
        tiny_vit_depths=tuple(depths),
        tiny_vit_heads=tuple(heads),
        tiny_vit_windows=tuple(windows),
        mlp_ratio=mlp_hidden / dims[1] if dims[1] else d.mlp_ratio,
        tiny_vit_conv_ratio=conv_hidden / dims[0] if dims[0] else d.tiny_vit_conv_ratio,
        tiny_vit_classes=_dim(state, "image_encoder.head.weight", 0, d.tiny_vit_classes),
    )


def _mismatch_message(path: object, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys ({_prefix_summary(missing, depth=3)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys ({_prefix_summary(unexpected, depth=3)})")
    return f"{path}: does not match the inferred architecture: " + "; ".join(parts)


def skeleton(config: SamConfig) -> Sam:
    """The architecture on the ``meta`` device: names, shapes and dtypes, no memory, no initialisation."""
    try:
        with torch.device("meta"):
            return build_sam(config)
    except Exception as exc:  # an untrusted configuration: whatever breaks, it describes no usable model
        raise CheckpointError(f"the inferred architecture cannot be built: {exc}") from None


def check_state(
    state: dict[str, torch.Tensor], config: SamConfig, source: object = "state dict", file_bytes: int | None = None
) -> Sam:
    """Check ``state`` against ``config``'s architecture before anything is allocated, and return the
    architecture's skeleton (on the ``meta`` device).

    Refused, with one line naming what was expected: missing or unexpected keys, a tensor of the wrong
    shape, a non-floating-point weight, a tensor that holds fewer bytes than its shape says (an
    expanded view), non-finite weights, and tensors that hold more bytes than the file (``file_bytes``).
    """
    try:
        model = skeleton(config)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(_mismatch_message(source, missing, unexpected))
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{source}: {len(bad)} tensors have unexpected shapes, e.g. {k}: {tuple(state[k].shape)} "
            f"where {tuple(expected[k].shape)} was expected (a {config.family} model)"
        )
    storages: dict[int, int] = {}
    for k, v in state.items():
        if v.is_floating_point() != expected[k].is_floating_point() or v.is_complex():
            kind = "floating-point" if expected[k].is_floating_point() else "integer"
            raise CheckpointError(f"{source}: {k} has dtype {v.dtype} where {kind} values were expected")
        storage = v.untyped_storage()
        if v.numel() and (v.storage_offset() + v.numel()) * v.element_size() > storage.nbytes():
            raise CheckpointError(f"{source}: {k} holds fewer values than its shape {tuple(v.shape)} says")
        storages[storage.data_ptr()] = storage.nbytes()
    if file_bytes is not None and sum(storages.values()) > file_bytes:
        raise CheckpointError(f"{source}: the tensors need more bytes than the file holds (corrupt?)")
    nonfinite = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if nonfinite is not None:
        raise CheckpointError(f"{source}: {nonfinite} holds NaN or infinite values")
    return model


def model_from_state_dict(
    state: dict[str, torch.Tensor],
    source: object = "state dict",
    config: SamConfig | None = None,
    file_bytes: int | None = None,
) -> Sam:
    """Infer the architecture (unless given), check ``state`` against it, then build and load strictly."""
    if config is None:
        try:
            config = infer_config(state, name=Path(str(source)).stem)
        except CheckpointError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
    check_state(state, config, source, file_bytes)
    model = build_sam(config)
    model.load_state_dict(state, strict=True)
    return model


def inspect_checkpoint(
    path: str | os.PathLike[str], notes: dict[str, object] | None = None
) -> tuple[SamConfig, Sam, dict[str, torch.Tensor]]:
    """Read and check a checkpoint without building the model: its configuration, its skeleton (``meta``
    device; parameter names and counts) and its state dict."""
    state = read_state_dict(path, notes)
    config = _config_for(path, state)
    model = check_state(state, config, path, _file_bytes(path))
    return config, model, state


def _file_bytes(path: str | os.PathLike[str]) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in hf_sam.weight_files(p))
    return p.stat().st_size


def _config_for(path: str | os.PathLike[str], state: dict[str, torch.Tensor]) -> SamConfig:
    """The inferred configuration, completed by what the file says besides its shapes: segany's
    safetensors metadata, or a Hugging Face folder's ``config.json`` (decoder heads, input size)."""
    try:
        config = infer_config(state, name=Path(str(path)).stem)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    p = Path(path)
    if p.is_dir():
        overrides = hf_sam.config_overrides(p)
        return config.replace(**overrides) if overrides else config
    if _sniff(p) != "safetensors":
        return config
    meta = read_safetensors_metadata(p)
    if not meta.get("config"):
        return config
    try:
        stored = SamConfig.from_dict(json.loads(meta["config"]))
    except (ValueError, TypeError):
        return config
    if _matches(state, stored):
        return stored  # segany's own file: the configuration it was saved with, every knob included
    # Knobs that shapes cannot show; the rest is checked against the tensors.
    config = config.replace(decoder_num_heads=stored.decoder_num_heads)
    return config.replace(name=stored.name) if stored.name else config


def _matches(state: dict[str, torch.Tensor], config: SamConfig) -> bool:
    """Whether ``config`` (from a file's metadata: untrusted) describes exactly ``state``'s tensors."""
    blocks = config.encoder_depth if config.encoder == "vit" else sum(config.tiny_vit_depths)
    if blocks + config.decoder_depth > len(state) or not 16 <= config.image_size <= MAX_IMAGE_SIZE:
        return False  # cannot be (and would cost time to build even on the meta device)
    try:
        expected = skeleton(config).state_dict()
    except CheckpointError:
        return False
    return set(expected) == set(state) and all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items())


def load_checkpoint(path: str | os.PathLike[str]) -> Sam:
    """Load a SAM-family checkpoint (official ``.pth``, segany ``.safetensors``, MobileSAM, SAM-HQ, or
    Hugging Face weights) into a model on the CPU. Everything is checked before the model is built."""
    state = read_state_dict(path)
    config = _config_for(path, state)
    return model_from_state_dict(state, source=path, config=config, file_bytes=_file_bytes(path))


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def save_checkpoint(model: Sam, path: str | os.PathLike[str]) -> Path:
    """Write the model's weights in the official key layout, atomically.

    ``.safetensors`` files also carry the configuration as metadata; anything else is a ``torch.save``
    of the plain state dict, which the official ``segment_anything`` code loads as it is.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sweep_stale_temps(p.parent, p.name)  # temporaries of an earlier writer killed mid-write
    tmp = temp_path(p)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # O_EXCL: the name is ours alone
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"format": "segany-sam"}
            if getattr(model, "config", None) is not None:
                meta["config"] = json.dumps(model.config.to_dict())
            save_file(state, str(tmp), metadata=meta)
        else:
            torch.save(state, tmp)
        os.chmod(tmp, 0o644)  # whatever the umask: weights are meant to be shared
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def save_hf_folder(model: Sam, folder: str | os.PathLike[str]) -> Path:
    """Write the model as a Hugging Face transformers model folder (``config.json`` and
    ``model.safetensors``, ``facebook/sam-vit-*`` key names), which ``SamModel.from_pretrained`` loads.
    The folder appears complete or not at all. SAM's ViT family only (transformers has no TinyViT/HQ SAM).
    """
    config = getattr(model, "config", None)
    if config is None or config.encoder != "vit" or config.hq:
        raise CheckpointError("only SAM (ViT) models have a Hugging Face transformers layout")
    out = Path(folder)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: folder exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(out.parent, out.name)
    tmp = temp_path(out)
    tmp.mkdir()
    try:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        hf = hf_sam.to_hf(state)
        # safetensors refuses shared memory: the two copies of the positional matrix become two tensors.
        hf = {k: v.clone() for k, v in hf.items()}
        save_file(hf, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_sam.hf_config(config), indent=2) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out

