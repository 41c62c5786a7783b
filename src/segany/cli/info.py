"""``segany info``: what a checkpoint holds."""

from __future__ import annotations

import argparse
import json

HELP = "show a checkpoint's inferred architecture, parameter count and file format"
EXAMPLES = """example:
  segany info sam_vit_b_01ec64.pth
  segany info my_finetuned.safetensors --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pth or .safetensors file, or a preset name (vit_b, tiny, ...)")
    parser.add_argument("--json", action="store_true", help="print as JSON")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

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
    if getattr(c, "image_encoder_type", "vit") == "conv":
        print(f"encoder:       convolutional, widths {list(c.conv_widths)}, residual blocks {list(c.conv_depths)}")
    else:
        print(f"encoder:       width {c.encoder_embed_dim}, depth {c.encoder_depth}, heads {c.encoder_num_heads}, "
              f"window {c.window_size}, global blocks {list(c.encoder_global_attn_indexes)}")
    print(f"decoder:       width {c.prompt_embed_dim}, depth {c.decoder_depth}, heads {c.decoder_num_heads}, "
          f"MLP {c.decoder_mlp_dim}, {c.num_multimask_outputs} multimask outputs")
    return 0
