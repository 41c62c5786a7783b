"""Package trained weights as segany's default model (float16 on disk, float32 once loaded).

Usage::

    python recipes/package_default.py runs/default_cpu/model.safetensors --auto-thresholds 0.5 0.5

writes ``src/segany/weights/segany_default.safetensors`` and checks that ``segany.load_model()``
loads it back as float32 with outputs matching the float32 weights to float16 precision.
``--auto-thresholds`` stores the predicted-IoU and stability thresholds at which the automatic mask
generator keeps this model's masks by default (pick them with ``recipes/calibrate_auto.py``).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

TARGET = Path(__file__).resolve().parents[1] / "src" / "segany" / "weights" / "segany_default.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="trained weights (.safetensors or .pth)")
    ap.add_argument("--output", default=str(TARGET))
    ap.add_argument("--auto-thresholds", nargs=2, type=float, metavar=("IOU", "STABILITY"), default=None,
                    help="the model's own automatic-mask thresholds (default: none, SAM's 0.88 / 0.95 apply)")
    args = ap.parse_args()

    import segany
    from segany.io.checkpoint import load_checkpoint, save_checkpoint

    model = load_checkpoint(args.weights).eval()
    thresholds = tuple(args.auto_thresholds) if args.auto_thresholds else None
    model.config = model.config.replace(name="segany_default", auto_mask_thresholds=thresholds)
    half = copy.deepcopy(model).half()
    half.config = model.config
    out = save_checkpoint(half, args.output)
    size_mb = out.stat().st_size / 2**20

    loaded = segany.load_model(out) if Path(args.output) != TARGET else segany.load_model()
    assert all(p.dtype == torch.float32 for p in loaded.parameters()), "default model must load as float32"
    torch.manual_seed(0)
    s = model.image_size
    image = torch.rand(1, 3, s, s) * 255
    batch = [{"image": image[0], "original_size": (s, s), "point_coords": torch.tensor([[[s / 2, s / 3]]]),
              "point_labels": torch.tensor([[1]])}]
    with torch.no_grad():
        a = model(batch, multimask_output=True)[0]["low_res_logits"]
        b = loaded(batch, multimask_output=True)[0]["low_res_logits"]
    diff = (a - b).abs().max().item()
    print(f"wrote {out} ({size_mb:.1f} MiB, float16); config {loaded.config.name}: {loaded.config.to_dict()}")
    print(f"max |logit difference| float32 vs packaged: {diff:.4f} (logit range {a.abs().max().item():.1f})")


if __name__ == "__main__":
    main()
