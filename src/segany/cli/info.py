"""``segany info``: what a checkpoint holds, or (``--system``) what this machine offers inference."""

from __future__ import annotations

import argparse
import json

HELP = "show a checkpoint's architecture, parameters and file format, or (--system) this machine's best settings"
EXAMPLES = """example:
  segany info sam_vit_b_01ec64.pth
  segany info my_finetuned.safetensors --json
  segany info --system            # CPU features (AVX-512 BF16, AMX, VNNI) and the settings to use here"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="a .pth or .safetensors file, or a preset name (vit_b, tiny...)")
    parser.add_argument(
        "--system", action="store_true",
        help="instead of a checkpoint: this CPU's features, the accelerators PyTorch sees, and the recommended "
        "inference settings for this machine (as CLI flags and Python options)",
    )
    parser.add_argument("--json", action="store_true", help="print as JSON")


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

    from segany.errors import SeganyError

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
        raise SeganyError("give a checkpoint (a file or a preset name), or --system")

    from segany.build import load_model
    from segany.model import PRESETS

    model = load_model(args.checkpoint)
    config = model.config
    path = Path(args.checkpoint)
    if args.checkpoint in PRESETS and not path.exists():
        fmt, size = "preset (random weights)", None
    elif path.suffix == ".safetensors":
        fmt, size = "safetensors", path.stat().st_size
    else:
        fmt, size = "PyTorch (torch.save state dict)", path.stat().st_size
    parts = {
        "image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
        "prompt_encoder": sum(p.numel() for p in model.prompt_encoder.parameters()),
        "mask_decoder": sum(p.numel() for p in model.mask_decoder.parameters()),
    }
    info = {
        "file": str(args.checkpoint),
        "format": fmt,
        "file_bytes": size,
        "architecture": config.name if config.name in PRESETS else "custom",
        "parameters": sum(parts.values()),
        "parameters_by_part": parts,
        "config": config.to_dict(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    c = config
    print(f"file:          {info['file']}")
    print(f"format:        {fmt}" + (f", {size / 2**20:.1f} MiB" if size else ""))
    print(f"architecture:  {info['architecture']}")
    print(f"parameters:    {info['parameters'] / 1e6:.2f} M "
          f"(encoder {parts['image_encoder'] / 1e6:.2f} M, prompt encoder {parts['prompt_encoder'] / 1e6:.3f} M, "
          f"decoder {parts['mask_decoder'] / 1e6:.2f} M)")
    print(f"input size:    {c.image_size} px, patch {c.patch_size}, embedding grid "
          f"{c.image_embedding_size}x{c.image_embedding_size}")
    print(f"encoder:       width {c.encoder_embed_dim}, depth {c.encoder_depth}, heads {c.encoder_num_heads}, "
          f"window {c.window_size}, global blocks {list(c.encoder_global_attn_indexes)}")
    print(f"decoder:       width {c.prompt_embed_dim}, depth {c.decoder_depth}, heads {c.decoder_num_heads}, "
          f"MLP {c.decoder_mlp_dim}, {c.num_multimask_outputs} multimask outputs")
    return 0
