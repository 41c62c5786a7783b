"""``segany export``: write a model as ONNX graphs for onnxruntime, browsers and the official tools."""

from __future__ import annotations

import argparse

HELP = "export a model to ONNX (image encoder + official-compatible decoder), optionally int8"
EXAMPLES = """example:
  segany export sam_vit_b_01ec64.pth -o sam_onnx/
  segany export sam_vit_b_01ec64.pth -o sam_onnx/ --quantize int8 --return-single-mask

Writes to the output folder:
  encoder.onnx          uint8 (h, w, 3) RGB image, resized so its long side is 1024 -> image_embeddings
  decoder.onnx          the official SamOnnxModel interface (image_embeddings, point_coords, point_labels,
                        mask_input, has_mask_input, orig_im_size -> masks, iou_predictions, low_res_masks)
  image_cache.onnx, decoder_lowres.onnx   the fast split used by 'segany ... --backend onnx'
  encoder.int8.onnx     with --quantize int8
  segany_onnx.json      what the folder holds
A SAM-HQ model writes encoder.onnx (the HQ embedding: C + early channels) and decoder.onnx with the official
SAM-HQ export's interface (one mask; --hq-token-only, --hq-multimask-output), no decoder split.
Every graph is run once with onnxruntime and compared with PyTorch (skip with --no-check)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="model weights (.pth or .safetensors, official or segany), a preset name (random weights), "
        "or 'default' for the packaged default model",
    )
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--quantize", choices=["int8"],
                        help="also write dynamically int8-quantised encoder and decoder graphs")
    parser.add_argument("--int8-weights", choices=["auto", "s8", "u8"], default="auto",
                        help="int8 weight type: s8 for CPUs with VNNI/AMX (fast), u8 for any x86 CPU; "
                        "auto (default) picks for this CPU")
    parser.add_argument("--opset", type=int, default=17, metavar="N",
                        help="ONNX opset (default: 17, as the official export; >= 18 uses torch.export)")
    parser.add_argument("--return-single-mask", action="store_true",
                        help="decoder.onnx returns only the best mask (official option)")
    parser.add_argument("--use-stability-score", action="store_true",
                        help="decoder.onnx scores masks by stability instead of predicted IoU (official option)")
    parser.add_argument("--return-extra-metrics", action="store_true",
                        help="decoder.onnx also returns stability scores and areas (official option)")
    parser.add_argument("--hq-token-only", action="store_true",
                        help="SAM-HQ: decoder.onnx returns the HQ mask alone (official SAM-HQ export option)")
    parser.add_argument("--hq-multimask-output", action="store_true",
                        help="SAM-HQ: SAM's part of the mask from the best multimask token (official SAM-HQ "
                        "export's multimask_output)")
    parser.add_argument("--no-encoder", action="store_true", help="skip the image encoder (decoders only)")
    parser.add_argument("--no-check", action="store_true", help="do not compare the graphs with PyTorch")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from segany.build import load_model
    from segany.export.onnx import export_onnx
    from segany.io.files import check_output_path

    # Before the model is loaded: a read-only folder or a file in the way fails at once, not after minutes.
    check_output_path(args.output, folder=True)
    model = load_model(None if args.checkpoint == "default" else args.checkpoint)
    result = export_onnx(
        model,
        Path(args.output),
        opset=args.opset,
        quantize=args.quantize,
        int8_weights=args.int8_weights,
        return_single_mask=args.return_single_mask,
        use_stability_score=args.use_stability_score,
        return_extra_metrics=args.return_extra_metrics,
        encoder=not args.no_encoder,
        check=not args.no_check,
        hq_token_only=True if args.hq_token_only else None,
        hq_multimask_output=args.hq_multimask_output,
    )
    for role, path in result.files.items():
        size = path.stat().st_size / 1e6
        diff = result.max_abs_diff.get(role)
        note = f"  max rel. diff vs PyTorch {diff:.1e}" if diff is not None else ""
        print(f"{path}  {size:8.1f} MB{note}")
    return 0
