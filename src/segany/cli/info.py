"""``segany info``: what a checkpoint holds (read and checked without building the model), or
(``--system``) what this machine offers inference."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "show what a checkpoint file or weights name holds, or (--system) this machine's best inference settings"
EXAMPLES = """examples:
  segany info sam_vit_b_01ec64.pth
  segany info mobile_sam.pt --json
  segany info facebook-sam-vit-base/        # a Hugging Face model folder
  segany info vit_h                         # a released model by name: where it is cached, or would be
  segany info --system                      # CPU features (AVX-512 BF16, AMX, VNNI) and the settings to use here"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        nargs="?",
        help="a .pth/.pt/.safetensors file, a Hugging Face model folder, or a name "
        "(vit_b, mobile_sam, sam_hq_vit_l, tiny, ...)",
    )
    parser.add_argument(
        "--system", action="store_true",
        help="instead of a checkpoint: this CPU's features, the accelerators PyTorch sees, and the recommended "
        "inference settings for this machine (as CLI flags and Python options)",
    )
    parser.add_argument("--json", action="store_true", help="print as JSON")


def _format(path: Any, state_keys_hf: bool) -> str:
    from segany.io.checkpoint import _sniff, read_safetensors_metadata

    if path.is_dir():
        return "Hugging Face transformers model folder"
    kind = _sniff(path)
    if kind == "safetensors":
        meta = read_safetensors_metadata(path)
        name = "safetensors (segany)" if meta.get("format") == "segany-sam" else "safetensors"
    elif kind == "zip":
        name = "PyTorch (torch.save zip)"
    else:
        name = "PyTorch (legacy torch.save)"
    return name + (", Hugging Face key names" if state_keys_hf else "")


def _describe_file(arg: str) -> dict[str, Any]:
    from pathlib import Path

    from segany.io import hub
    from segany.io.checkpoint import _file_bytes, inspect_checkpoint
    from segany.model import PRESETS

    path = Path(arg)
    notes: dict[str, object] = {}
    config, skeleton, _ = inspect_checkpoint(path, notes)  # checked against the file; nothing allocated
    hf_keys = bool(notes.get("hf"))
    release = unverifiable = None
    if not path.is_dir() and config.name in hub.WEIGHTS and PRESETS[config.name] == config:
        if hub.WEIGHTS[config.name].verifiable:
            found = hub.known_release(path)  # hashes only files whose architecture is a release's
            release = found.name if found is not None else None
        else:  # the architecture of a release whose checksum nobody has published: no match possible
            unverifiable = config.name
    info = _summary(config, skeleton)
    info.update(
        file=str(arg),
        format=_format(path, hf_keys and not path.is_dir()),
        file_bytes=_file_bytes(path),
        release=release,
        checksum_unknown=unverifiable,
    )
    return info


def _summary(config: Any, model: Any) -> dict[str, Any]:
    from segany.model import PRESETS

    parts = {
        "image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
        "prompt_encoder": sum(p.numel() for p in model.prompt_encoder.parameters()),
        "mask_decoder": sum(p.numel() for p in model.mask_decoder.parameters()),
    }
    return {
        "family": config.family,
        "architecture": config.name if config.name in PRESETS else "custom",
        "parameters": sum(parts.values()),
        "parameters_by_part": parts,
        "config": config.to_dict(),
    }


def _describe_name(name: str) -> dict[str, Any]:
    from segany.io import hub
    from segany.io.checkpoint import skeleton
    from segany.model import PRESETS

    config = PRESETS[name]
    info = _summary(config, skeleton(config))
    info["file"] = name
    release = hub.WEIGHTS.get(name)
    if release is None:
        info.update(format="preset (random weights)", file_bytes=None, release=None)
        return info
    cached = hub.find_cached(release)
    info.update(
        format="released weights",
        file_bytes=release.size,
        release=name,
        description=release.description,
        url=release.url,
        cached=str(cached) if cached else None,
        download_to=None if cached else str(hub.cache_dir() / release.filename),
        sha256=release.sha256,
        md5=release.md5,
    )
    return info


def system_info() -> dict[str, object]:
    """This machine as inference sees it: CPU features, devices, recommended settings."""
    import platform

    import torch

    from segany.inference.cpu import cpu_flags
    from segany.inference.options import recommendations

    flags = cpu_flags()
    features = {
        "AVX-512": "avx512f" in flags,
        "AVX-512 BF16": "avx512_bf16" in flags,
        "AMX (bf16)": "amx_bf16" in flags,
        "AMX (int8)": "amx_int8" in flags,
        "VNNI": bool(flags & {"avx512_vnni", "avx_vnni"}),
    }
    devices = ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_features": features if flags else {},
        "threads": torch.get_num_threads(),
        "devices": devices,
        "torch": torch.__version__,
        "recommended": [
            {"purpose": r.purpose, "exact": r.exact, "flags": r.flags, "python": r.python, "why": r.why}
            for r in recommendations(flags)
        ],
    }


def _print_system(info: dict[str, object]) -> None:
    features = info["cpu_features"]
    assert isinstance(features, dict)
    print(f"cpu:           {info['cpu']}, {info['threads']} threads (torch {info['torch']})")
    if features:
        print("features:      " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items()))
    else:
        print("features:      unknown (not an x86 CPU, or /proc/cpuinfo unreadable)")
    devices = info["devices"]
    assert isinstance(devices, list)
    print(f"devices:       {', '.join(devices)}")
    if len(devices) > 1:
        print("               on a GPU, --decoder auto runs the model's own decoder (no GPU benchmark yet)")
    print("recommended (figures: benchmarks/RESULTS.md):")
    recommended = info["recommended"]
    assert isinstance(recommended, list)
    for r in recommended:
        kind = "exact" if r["exact"] else "approximate"
        print(f"  {r['purpose']} [{kind}]: {r['why']}")
        print(f"    CLI:    {r['flags']}")
        call = "predictor_for(CHECKPOINT, " if "backend='onnx'" in r["python"] else "SamPredictor(model, "
        print(f"    Python: {call}options={r['python']})")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from segany.errors import CheckpointError, SeganyError
    from segany.io import hub
    from segany.model import PRESETS

    if args.system:
        if args.checkpoint:
            raise SeganyError("give either a checkpoint or --system, not both")
        info_system = system_info()
        if args.json:
            print(json.dumps(info_system, indent=2))
        else:
            _print_system(info_system)
        return 0
    if not args.checkpoint:
        raise SeganyError("give a checkpoint (a file or a weights name), or --system")
    arg = args.checkpoint
    if not Path(arg).exists() and arg in PRESETS:
        info = _describe_name(arg)
    elif Path(arg).exists():
        info = _describe_file(arg)
    else:
        if "." in Path(arg).name or "/" in arg:
            raise CheckpointError(f"{arg}: no such file")
        raise CheckpointError(f"{arg}: neither a file nor a known checkpoint name ({', '.join(hub.WEIGHTS)}, tiny)")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    _print(info)
    return 0


def _print(info: dict[str, Any]) -> None:
    c = info["config"]
    parts = info["parameters_by_part"]
    size = info.get("file_bytes")
    print(f"file:          {info['file']}")
    print(f"format:        {info['format']}" + (f", {size / 2**20:.1f} MiB" if size else ""))
    if "description" in info:
        print(f"release:       {info['description']}")
        print("location:      " + (info["cached"] or f"not downloaded yet: would go to {info['download_to']}"))
        print(f"address:       {info['url']}")
        if info["sha256"] or info["md5"]:
            print("checksum:      " + (f"SHA-256 {info['sha256']}" if info["sha256"] else f"MD5 {info['md5']}"))
        else:
            print("checksum:      checksum unknown (a download of it cannot be verified)")
    elif info["format"] != "preset (random weights)":
        if info["release"]:
            text = f"{info['release']} (checksum matches)"
        elif info.get("checksum_unknown"):
            text = f"{info['checksum_unknown']}'s architecture; checksum unknown (cannot be matched to the release)"
        else:
            text = "no known release (by checksum)"
        print(f"release:       {text}")
    print(f"family:        {info['family']}, architecture {info['architecture']}")
    print(f"parameters:    {info['parameters'] / 1e6:.2f} M "
          f"(encoder {parts['image_encoder'] / 1e6:.2f} M, prompt encoder {parts['prompt_encoder'] / 1e6:.3f} M, "
          f"decoder {parts['mask_decoder'] / 1e6:.2f} M)")
    grid = c["image_size"] // (16 if c["encoder"] == "tiny_vit" else c["patch_size"])
    print(f"input size:    {c['image_size']} px, embedding grid {grid}x{grid}")
    if c["encoder"] == "conv":
        print(f"encoder:       convolutional, widths {c['conv_widths']}, residual blocks {c['conv_depths']}")
    elif c["encoder"] == "tiny_vit":
        print(f"encoder:       TinyViT, widths {c['tiny_vit_dims']}, depths {c['tiny_vit_depths']}, "
              f"heads {c['tiny_vit_heads'][1:]}, windows {c['tiny_vit_windows'][1:]}")
    else:
        print(
            f"encoder:       ViT, width {c['encoder_embed_dim']}, depth {c['encoder_depth']}, "
            f"heads {c['encoder_num_heads']}, "
            f"patch {c['patch_size']}, window {c['window_size']}, global blocks {c['encoder_global_attn_indexes']}"
        )
    print(f"decoder:       width {c['prompt_embed_dim']}, depth {c['decoder_depth']}, heads {c['decoder_num_heads']}, "
          f"MLP {c['decoder_mlp_dim']}, {c['num_multimask_outputs']} multimask outputs"
          + (", HQ token and feature fusion" if c["hq"] else ""))
    if c.get("text_embed_dim"):
        print(f"text prompts:  yes, from {c['text_embed_dim']}-wide CLIP embeddings (segany segment --text)")
