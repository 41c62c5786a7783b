"""``segany segment``: masks for points and/or a box on one image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segany.cli._common import (
    add_backend_arguments,
    add_model_arguments,
    check_device,
    parse_box,
    parse_point,
    predictor_from_args,
)

HELP = "segment an object in an image from points, a box and/or a text"
EXAMPLES = """example:
  segany segment photo.jpg --point 320,240 -o mask.png --overlay overlay.png
  segany segment photo.jpg --point 320,240 --point 100,80,0 --box 50,40,600,450 -o mask.png --json
  segany segment photo.jpg --point 320,240 --multimask -o mask.png   # writes mask_0.png .. mask_2.png
  segany segment photo.jpg --point 320,240 -o mask.png --backend onnx   # onnxruntime (exports once)
  segany segment photo.jpg --text "a wheel" -c text_sam.safetensors -o mask.png   # a model with a text path
  segany segment photo.jpg --text "a wheel" --point 320,240 -c text_sam.safetensors --clip clip_vit_l14_336 -o mask.png

Points are X,Y in pixels (foreground) or X,Y,LABEL with LABEL 1 (foreground) or 0 (background).
Masks are written as 8-bit PNGs (255 inside the object); scores are the model's predicted IoU.
Output paths are checked before the model runs, and the masks and overlay are written all or nothing.
Images over 300 megapixels are refused before decoding; SEGANY_MAX_IMAGE_PIXELS=N changes the cap.
--text needs a checkpoint trained with a text prompt path and CLIP weights (pip install 'segany[text]';
see docs/text-prompts.md): a proof of concept, as in the SAM paper, not a detector."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (JPEG, PNG, TIFF, ...; greyscale, RGBA and 16-bit are fine)")
    parser.add_argument("-p", "--point", action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a point prompt; repeat for more points")
    parser.add_argument("-b", "--box", metavar="X0,Y0,X1,Y1", help="a box prompt")
    parser.add_argument("-t", "--text", metavar="TEXT",
                        help="a text prompt, e.g. 'a wheel' (a checkpoint with a text prompt path only)")
    parser.add_argument("--clip", default="clip_vit_l14_336", metavar="NAME|ARCH:FILE",
                        help="the CLIP for --text: a release name (clip_vit_l14_336, clip_vit_l14, clip_vit_b32: "
                        "cached or downloaded like SAM's weights) or an open_clip architecture and a weights file, "
                        "e.g. ViT-L-14-336-quickgelu:ViT-L-14-336px.pt; default: %(default)s")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="where to write the mask")
    parser.add_argument("--multimask", action="store_true",
                        help="return three masks (for an ambiguous prompt such as one point), best first")
    parser.add_argument("--overlay", metavar="OVERLAY.png", help="also write a picture of the mask(s) over the image")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_model_arguments(parser)
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from segany.errors import PromptError
    from segany.io.files import atomic_write_many, check_output_path
    from segany.io.image import read_image

    points = [parse_point(p) for p in args.point]
    box = parse_box(args.box) if args.box else None
    if not points and box is None and args.text is None:
        raise PromptError("give at least one --point, a --box or a --text")
    if args.text is not None:
        from segany.errors import TextPromptError

        if not args.text.strip():
            raise TextPromptError("--text is empty")
        if args.backend == "onnx":
            raise TextPromptError("--text runs on the torch backend only; drop --backend onnx")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise PromptError(f"output {out} must be a .png file")
    paths = [out] if not args.multimask else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(3)]
    # Every output is checked before the image is read or the model runs ("fail before working").
    for path in paths:
        check_output_path(path, suffixes=(".png",), inputs=[args.image], create=False)
    if args.overlay:
        check_output_path(args.overlay, suffixes=(".png",), inputs=[args.image], what="--overlay")
        if Path(args.overlay).resolve() in {p.resolve() for p in paths}:
            raise PromptError(f"--overlay {args.overlay} is also a mask output")

    # The image before torch is imported: a refused decompression bomb costs ~40 MB, not a torch start.
    image = read_image(args.image)
    if args.backend == "torch":  # the onnx backend says itself that it runs on the CPU
        check_device(args.device)
    h, w = image.shape[:2]
    for x, y, _ in points:
        if not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"point {x:g},{y:g} is outside the image ({w}x{h} pixels)")
    if box is not None and (box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h):
        raise PromptError(f"box {','.join(f'{v:g}' for v in box)} is outside the image ({w}x{h} pixels)")

    predictor = predictor_from_args(args)
    if args.text is not None:
        # Before the image is encoded: which of model and CLIP is missing, in one line.
        predictor.require_text_path()
        from segany.io.clip import load_clip

        predictor.clip = load_clip(args.clip, device=predictor.device)
        predictor.clip.check_text(args.text)
        predictor.check_clip()  # a CLIP of another width than the checkpoint's text path
    predictor.set_image(image)
    coords = np.array([[x, y] for x, y, _ in points], dtype=float) if points else None
    labels = np.array([lab for _, _, lab in points]) if points else None
    masks, scores, _ = predictor.predict(
        point_coords=coords,
        point_labels=labels,
        box=np.array(box) if box is not None else None,
        multimask_output=args.multimask,
        text=args.text,
    )
    order = np.argsort(-scores)
    masks, scores = masks[order], scores[order]
    if len(masks) == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(masks))]

    files: dict[Path, bytes] = {}
    results = []
    for path, mask, score in zip(paths, masks, scores):
        files[path] = _png_bytes(mask)
        ys, xs = np.nonzero(mask)
        bbox = (
            [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if len(xs)
            else None
        )
        # A non-finite score (e.g. from NaN weights) is null in JSON: NaN is not valid JSON.
        value = round(float(score), 4) if np.isfinite(score) else None
        results.append({"mask": str(path), "score": value, "area": int(mask.sum()), "bbox": bbox})
    if args.overlay:
        from segany.io.overlay import overlay_masks, png_bytes

        files[Path(args.overlay)] = png_bytes(overlay_masks(image, masks[:1] if len(masks) > 1 else masks))
    # All or nothing: a full disk or a read-only overlay folder leaves no mask of a failed command.
    atomic_write_many(files)

    if args.json:
        json.dump({"image": str(args.image), "width": w, "height": h, "masks": results}, sys.stdout, indent=2)
        print()
    else:
        for r in results:
            score = "nan" if r["score"] is None else f"{r['score']:.3f}"
            print(f"{r['mask']}: score {score}, area {r['area']} px")
        if args.overlay:
            print(f"overlay: {args.overlay}")
    return 0


def _png_bytes(mask: "np.ndarray") -> bytes:  # noqa: F821
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()
