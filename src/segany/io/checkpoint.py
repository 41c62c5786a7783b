"""Checkpoint files: read and write ``.pth`` (official key layout) and ``.safetensors``, and infer the
architecture from a state dict's shapes so any SAM-layout file loads with no model-type argument."""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch

from segany.errors import CheckpointError
from segany.model import Sam, SamConfig, build_sam

_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load the tensors of a checkpoint file, refusing anything but plain tensors.

    ``.pth``/``.pt`` files are read with ``weights_only=True`` (no arbitrary code from pickles);
    training checkpoints that wrap the weights under ``model``/``state_dict`` and DDP's ``module.``
    prefixes are unwrapped.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a folder, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: file is empty")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from None
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file; all mean "can't read"
            text = str(exc)
            if isinstance(exc, pickle.UnpicklingError) and ("GLOBAL" in text or "global" in text):
                line = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower()), "")
                raise CheckpointError(
                    f"{p}: refused: the file holds more than plain tensors, and loading it could run code"
                    + (f" ({line[:160]})" if line else "")
                ) from None
            first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            raise CheckpointError(
                f"{p}: not a readable PyTorch checkpoint (truncated or corrupt?): {first[:160]}"
            ) from None
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{p}: does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    if not any(k.startswith(_PARTS) for k in state):
        raise CheckpointError(
            f"{p}: not a SAM checkpoint: expected keys under image_encoder./prompt_encoder./mask_decoder., "
            f"found {_prefix_summary(state.keys())}"
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


def infer_config(state: dict[str, torch.Tensor], name: str = "custom") -> SamConfig:
    """Read the architecture off the tensor shapes of a SAM state dict.

    Width and patch size come from the patch embedding, depth from the block indices, head dimension
    and window size from the relative-position tables, global blocks from the tables that span the
    whole token grid, and input size from the absolute position embedding. Decoder head count is not
    visible in shapes; it is 8 in every known SAM model.
    """
    from segany.model.conv_encoder import infer_conv_encoder, is_conv_state_dict

    if is_conv_state_dict(state):
        try:
            conv = infer_conv_encoder(state)
        except KeyError as exc:
            raise CheckpointError(f"cannot infer the architecture: key {exc} is missing") from None
        return _decoder_config(state, SamConfig(image_encoder_type="conv", **conv), name)  # type: ignore[arg-type]
    patch_w = _need(state, "image_encoder.patch_embed.proj.weight")  # (D, 3, p, p)
    embed_dim, patch = patch_w.shape[0], patch_w.shape[-1]
    pos = state.get("image_encoder.pos_embed")  # (1, g, g, D)
    block_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    if not block_ids:
        raise CheckpointError("cannot infer the architecture: no image_encoder.blocks.* keys")
    depth = block_ids[-1] + 1
    table_len = [int(_need(state, f"image_encoder.blocks.{i}.attn.rel_pos_h").shape[0]) for i in range(depth)]
    head_dim = int(state[f"image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
    if pos is not None:
        grid = int(pos.shape[1])
    else:
        grid = (max(table_len) + 1) // 2
    global_idx = tuple(i for i, n in enumerate(table_len) if n == 2 * grid - 1)
    windowed = [n for n in table_len if n != 2 * grid - 1]
    window = (windowed[0] + 1) // 2 if windowed else 14
    d = SamConfig()
    mlp_hidden = _dim(state, "image_encoder.blocks.0.mlp.lin1.weight", 0, int(embed_dim * d.mlp_ratio))
    prompt_dim = _dim(state, "image_encoder.neck.0.weight", 0, d.prompt_embed_dim)
    mask_in = _dim(state, "prompt_encoder.mask_downscaling.3.weight", 0, d.mask_in_chans)
    dec_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
    dec_mlp = _dim(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight", 0, d.decoder_mlp_dim)
    iou_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k))}
    iou_hidden = _dim(state, "mask_decoder.iou_prediction_head.layers.0.weight", 0, d.iou_head_hidden_dim)
    num_tokens = _dim(state, "mask_decoder.mask_tokens.weight", 0, d.num_multimask_outputs + 1)
    config = SamConfig(
        image_size=grid * patch,
        patch_size=patch,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=global_idx,
        window_size=window,
        mlp_ratio=mlp_hidden / embed_dim,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=mask_in,
        decoder_depth=max(dec_layers) + 1 if dec_layers else d.decoder_depth,
        decoder_mlp_dim=dec_mlp,
        iou_head_depth=max(iou_layers) + 1 if iou_layers else d.iou_head_depth,
        iou_head_hidden_dim=iou_hidden,
        num_multimask_outputs=num_tokens - 1,
        name=name,
    )
    from segany.model import PRESETS

    for preset in PRESETS.values():  # name official sizes by their usual names
        if preset == config:  # ``name`` is not compared
            return config.replace(name=preset.name)
    return config


def _decoder_config(state: dict[str, torch.Tensor], base: SamConfig, name: str) -> SamConfig:
    """``base`` (an encoder read off ``state``) with the prompt encoder's and decoder's sizes of ``state``."""
    if not 16 <= base.image_size <= 4096 or base.image_size % 16:
        raise CheckpointError(f"cannot infer the architecture: input size {base.image_size} is not a multiple of 16 in 16..4096")
    d = SamConfig()
    dec_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))}
    iou_layers = {int(m.group(1)) for k in state if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.", k))}
    config = base.replace(
        mask_in_chans=_dim(state, "prompt_encoder.mask_downscaling.3.weight", 0, d.mask_in_chans),
        decoder_depth=max(dec_layers) + 1 if dec_layers else d.decoder_depth,
        decoder_mlp_dim=_dim(state, "mask_decoder.transformer.layers.0.mlp.lin1.weight", 0, d.decoder_mlp_dim),
        iou_head_depth=max(iou_layers) + 1 if iou_layers else d.iou_head_depth,
        iou_head_hidden_dim=_dim(state, "mask_decoder.iou_prediction_head.layers.0.weight", 0, d.iou_head_hidden_dim),
        num_multimask_outputs=_dim(state, "mask_decoder.mask_tokens.weight", 0, d.num_multimask_outputs + 1) - 1,
        name=name,
    )
    from segany.model import PRESETS

    for preset in PRESETS.values():
        if preset == config:
            return config.replace(name=preset.name)
    return config


def _mismatch_message(path: object, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys ({_prefix_summary(missing, depth=3)})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys ({_prefix_summary(unexpected, depth=3)})")
    return f"{path}: does not match the inferred architecture: " + "; ".join(parts)


def model_from_state_dict(state: dict[str, torch.Tensor], source: object = "state dict") -> Sam:
    """Build the inferred architecture and load ``state`` strictly."""
    try:
        config = infer_config(state, name=Path(str(source)).stem)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    model = build_sam(config)
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
            f"where {tuple(expected[k].shape)} was expected"
        )
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(path: str | os.PathLike[str]) -> Sam:
    """Load a SAM checkpoint (official ``.pth`` or ``.safetensors``) into a model on the CPU."""
    state = read_state_dict(path)
    model = model_from_state_dict(state, source=path)
    if str(path).endswith(".safetensors"):
        meta = read_safetensors_metadata(path)
        if meta.get("config"):
            # Keep knobs that shapes cannot show (decoder heads) from segany's own metadata.
            try:
                stored = SamConfig.from_dict(json.loads(meta["config"]))
            except (ValueError, TypeError):
                stored = None
            if stored is not None and stored.decoder_num_heads != model.config.decoder_num_heads:
                model = build_sam(model.config.replace(decoder_num_heads=stored.decoder_num_heads))
                model.load_state_dict(state, strict=True)
            if stored is not None and stored.name:
                model.config = model.config.replace(name=stored.name)
    return model


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
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"format": "segany-sam"}
            if getattr(model, "config", None) is not None:
                meta["config"] = json.dumps(model.config.to_dict())
            save_file(state, tmp, metadata=meta)
        else:
            torch.save(state, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; weights are meant to be shared
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p
