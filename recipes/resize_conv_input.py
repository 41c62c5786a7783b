"""Re-target a convolutional-encoder model (``conv_small`` family) at another input size.

Usage::

    python recipes/resize_conv_input.py training/default-v2/model.safetensors 384 -o runs/init384.safetensors

A convolutional encoder's weights do not depend on the input size, nor do the prompt encoder's and the
mask decoder's (their positional encoding is a function of the coordinates), so the same weights run at
384 px input with a 24 x 24 embedding grid and 96 x 96 low-resolution masks. Only the encoder's
``input_size`` buffer, from which ``segany.load_model()`` reads the size, changes. The result is a start
for ``segany train ... model.init=...`` at the new size (the model needs some steps to adapt: objects look
larger to it).
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="a conv-encoder checkpoint (.safetensors)")
    ap.add_argument("size", type=int, help="new input side in pixels (a multiple of 16)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    from segany.io.checkpoint import load_checkpoint, save_checkpoint
    from segany.model.config import build_sam

    model = load_checkpoint(args.weights)
    if model.config.encoder != "conv":
        raise SystemExit(f"{args.weights}: a {model.config.encoder} encoder; only conv encoders resize this way")
    try:
        resized = build_sam(model.config.replace(image_size=args.size))
    except ValueError as exc:  # e.g. a size that is not a multiple of the encoder's stride
        raise SystemExit(f"size {args.size}: {exc}") from None
    state = {k: v for k, v in model.state_dict().items() if k != "image_encoder.input_size"}
    missing, unexpected = resized.load_state_dict(state, strict=False)
    if unexpected or missing != ["image_encoder.input_size"]:
        raise SystemExit(f"state mismatch: missing {missing}, unexpected {unexpected}")
    out = save_checkpoint(resized, args.output)
    grid = resized.config.image_embedding_size
    print(f"wrote {out}: input {args.size} px, embedding grid {(grid, grid)}")


if __name__ == "__main__":
    main()
