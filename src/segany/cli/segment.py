"""``segany segment``: masks for points and/or a box on one image."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from segany.cli._common import add_backend_arguments, add_model_arguments, parse_box, parse_point, predictor_from_args

HELP = "segment an object in an image from points and/or a box"
EXAMPLES = """example:
  segany segment photo.jpg --point 320,240 -o mask.png --overlay overlay.png
  segany segment photo.jpg --point 320,240 --point 100,80,0 --box 50,40,600,450 -o mask.png --json
  segany segment photo.jpg --point 320,240 --multimask -o mask.png   # writes mask_0.png .. mask_2.png
  segany segment photo.jpg --point 320,240 -o mask.png --backend onnx   # onnxruntime (exports once)

Points are X,Y in pixels (foreground) or X,Y,LABEL with LABEL 1 (foreground) or 0 (background).
Masks are written as 8-bit PNGs (255 inside the object); scores are the model's predicted IoU."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (JPEG, PNG, TIFF, ...; greyscale, RGBA and 16-bit are fine)")
    parser.add_argument("-p", "--point", action="append", default=[], metavar="X,Y[,LABEL]",
                        help="a point prompt; repeat for more points")
    parser.add_argument("-b", "--box", metavar="X0,Y0,X1,Y1", help="a box prompt")
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
    from segany.io.files import atomic_write_bytes
    from segany.io.image import read_image

    points = [parse_point(p) for p in args.point]
    box = parse_box(args.box) if args.box else None
    if not points and box is None:
        raise PromptError("give at least one --point or a --box")
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise PromptError(f"output {out} must be a .png file")
    if not out.parent.exists():
        raise PromptError(f"output folder {out.parent} does not exist")

    image = read_image(args.image)
    h, w = image.shape[:2]
    for x, y, _ in points:
        if not (0 <= x < w and 0 <= y < h):
            raise PromptError(f"point {x:g},{y:g} is outside the image ({w}x{h} pixels)")
    if box is not None and (box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h):
        raise PromptError(f"box {','.join(f'{v:g}' for v in box)} is outside the image ({w}x{h} pixels)")

    predictor = predictor_from_args(args)
    predictor.set_image(image)
    coords = np.array([[x, y] for x, y, _ in points], dtype=float) if points else None
    labels = np.array([lab for _, _, lab in points]) if points else None
    masks, scores, _ = predictor.predict(
        point_coords=coords,
        point_labels=labels,
        box=np.array(box) if box is not None else None,
        multimask_output=args.multimask,
    )
    order = np.argsort(-scores)
    masks, scores = masks[order], scores[order]
    if len(masks) == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(masks))]

    results = []
    for path, mask, score in zip(paths, masks, scores):
        atomic_write_bytes(path, _png_bytes(mask))
        ys, xs = np.nonzero(mask)
        bbox = (
            [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            if len(xs)
            else None
        )
        results.append({"mask": str(path), "score": round(float(score), 4), "area": int(mask.sum()), "bbox": bbox})
    if args.overlay:
        from segany.io.overlay import overlay_masks

        from PIL import Image
        import io as _io

        picture = overlay_masks(image, masks[:1] if len(masks) > 1 else masks)
        buf = _io.BytesIO()
        Image.fromarray(picture).save(buf, format="PNG")
        atomic_write_bytes(args.overlay, buf.getvalue())

    if args.json:
        json.dump({"image": str(args.image), "width": w, "height": h, "masks": results}, sys.stdout, indent=2)
        print()
    else:
        for r in results:
            print(f"{r['mask']}: score {r['score']:.3f}, area {r['area']} px")
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
