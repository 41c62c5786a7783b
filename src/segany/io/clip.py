"""CLIP for the text prompt path (SAM paper, section 7.5): load a frozen CLIP by name or file, and embed
texts and image crops into its joint space (L2-normalised, ``(N, D)``).

A CLIP is named by a release in :data:`segany.io.hub.CLIP_WEIGHTS` (``clip_vit_l14_336``, the paper's;
cached, downloaded and checked as SAM's weights are), or given as ``ARCH:WEIGHTS``: an ``open_clip``
architecture name (``ViT-L-14-336-quickgelu``) or a JSON model configuration, and a weights file
(``.safetensors``, or a ``torch.save`` state dict; OpenAI's TorchScript files only when their SHA-256 is
one of the releases'). ``open_clip`` comes with the ``segany[text]`` extra.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segany.errors import CheckpointError, TextPromptError
from segany.io import hub

__all__ = ["CLIP_ARCHS", "ClipModel", "load_clip", "check_text"]

# open_clip architecture of each release in hub.CLIP_WEIGHTS (OpenAI's models use QuickGELU).
CLIP_ARCHS = {
    "clip_vit_l14_336": "ViT-L-14-336-quickgelu",
    "clip_vit_l14": "ViT-L-14-quickgelu",
    "clip_vit_b32": "ViT-B-32-quickgelu",
}
# CLIP's pixel normalisation (the same for every OpenAI model).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOW_TO_GET = "pip install 'segany[text]'"


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError:
        raise TextPromptError(f"text prompts need the open_clip package: {HOW_TO_GET}") from None
    return open_clip


@dataclass
class ClipModel:
    """A frozen CLIP (eval mode, no gradients) and its tokenizer.

    ``identity`` names architecture and weights (it keys the crop-embedding cache); ``embed_dim`` is the
    joint space's width (768 for ViT-L/14), ``image_size`` the crop side and ``context_length`` the
    tokens a text may take, start and end tokens included."""

    model: Any  # an open_clip CLIP
    tokenizer: Any
    identity: str
    embed_dim: int
    image_size: int
    context_length: int

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_text(self, text: str) -> None:
        """Refuse an empty text or one longer than CLIP's context, with one line."""
        check_text(text, self.tokenizer, self.context_length)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts -> L2-normalised embeddings ``(N, D)`` (float32, on the model's device)."""
        for t in texts:
            self.check_text(t)
        tokens = self.tokenizer(texts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    @torch.no_grad()
    def encode_crops(self, crops: np.ndarray, keep: np.ndarray | None = None) -> torch.Tensor:
        """Square uint8 crops ``(N, S, S, 3)`` (RGB, ``S = image_size``) -> L2-normalised embeddings
        ``(N, D)``. ``keep`` bool ``(N, S, S)``: pixels outside it are zeroed after normalisation (the
        paper's masked crops)."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if keep is not None:
            x = x * torch.from_numpy(np.ascontiguousarray(keep)).to(x.device).unsqueeze(1)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


def check_text(text: str, tokenizer: Any, context_length: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise TextPromptError("the text prompt is empty")
    n = len(tokenizer.encode(text)) + 2  # start and end tokens
    if n > context_length:
        raise TextPromptError(
            f"the text prompt is {n} tokens long; CLIP reads at most {context_length} (shorten it)"
        )


def _arch_config(arch: str) -> tuple[dict[str, Any], str]:
    """An open_clip model configuration by name, or from a JSON file; and its identity."""
    if arch.endswith(".json"):
        p = Path(arch)
        try:
            text = p.read_text(encoding="utf-8")
            cfg = json.loads(text)
        except (OSError, ValueError) as exc:
            raise TextPromptError(f"{arch}: not a readable CLIP model configuration ({exc})") from None
        cfg = cfg.get("model_cfg", cfg)
        return cfg, "json-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    cfg = _open_clip().get_model_config(arch)
    if cfg is None:
        raise TextPromptError(f"{arch}: not an open_clip architecture (e.g. ViT-L-14-336-quickgelu)")
    return cfg, arch


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or n.endswith("/code/") for n in z.namelist())


def _read_weights(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own types for damaged files
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    if _is_torchscript(path):
        # OpenAI's files are TorchScript archives, which cannot be read as plain tensors: loaded only
        # when the bytes are exactly a published release's.
        if sha256 not in {r.sha256 for r in hub.CLIP_WEIGHTS.values()}:
            raise CheckpointError(
                f"{path}: a TorchScript archive that is not one of the known CLIP releases; refused "
                "(loading it could run code): use a .safetensors file"
            )
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable CLIP weights file ({str(exc).splitlines()[0][:160]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return state


def _weights_path(spec: str, download: bool) -> tuple[str, Path, str]:
    """(architecture, weights file, its SHA-256) for a release name or ``ARCH:WEIGHTS``."""
    if spec in hub.CLIP_WEIGHTS:
        release = hub.CLIP_WEIGHTS[spec]
        try:
            path = hub.resolve(spec, download=download, table=hub.CLIP_WEIGHTS)
        except CheckpointError as exc:
            raise TextPromptError(
                f"CLIP weights missing: {exc} (download with network access, or pass ARCH:FILE)"
            ) from None
        return CLIP_ARCHS[spec], path, str(release.sha256)
    arch, sep, weights = spec.partition(":")
    if not sep or not arch or not weights:
        raise TextPromptError(
            f"CLIP weights missing: {spec!r} is neither a known CLIP ({', '.join(hub.CLIP_WEIGHTS)}) "
            "nor ARCH:FILE (e.g. ViT-L-14-336-quickgelu:ViT-L-14-336px.pt)"
        )
    path = Path(os.path.expanduser(weights))
    if not path.is_file():
        raise TextPromptError(f"CLIP weights missing: {path}: no such file")
    sha, _ = hub._hash_file(path)
    return arch, path, sha


def load_clip(spec: str, device: str | torch.device = "cpu", download: bool = True) -> ClipModel:
    """A frozen CLIP from a release name (``clip_vit_l14_336``) or ``ARCH:WEIGHTS`` (see the module)."""
    open_clip = _open_clip()
    arch, path, sha = _weights_path(spec, download)
    cfg, arch_id = _arch_config(arch)
    try:
        model = open_clip.CLIP(**cfg)
    except TypeError as exc:
        raise TextPromptError(f"{arch}: not a CLIP configuration open_clip can build ({exc})") from None
    state = _read_weights(path, sha)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for extra in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's files carry these
        state.pop(extra, None)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        keys = (result.missing_keys or result.unexpected_keys)[:3]
        raise CheckpointError(
            f"{path}: does not fit CLIP {arch} (missing {len(result.missing_keys)}, unexpected "
            f"{len(result.unexpected_keys)} keys, e.g. {', '.join(keys)})"
        )
    model = model.to(device).eval().requires_grad_(False)
    context = int(cfg.get("text_cfg", {}).get("context_length", 77))
    tokenizer = open_clip.SimpleTokenizer(context_length=context)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipModel(model, tokenizer, f"{arch_id}|{sha[:16]}", int(cfg["embed_dim"]), size, context)
