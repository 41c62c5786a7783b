"""Click-to-paint latency of the annotation page in headless Chromium (not a test).

For each model (segany's default model, and a ViT-B-sized decoder with random weights: the decoder is
the same size for every SAM), each decoder the page can run in its worker (segany's split decoder in
float32 and int8: image_cache once per image, decoder_lowres per click, upscaling in the worker; the
official-compatible decoder.onnx, the fallback) and each thread setting (1 thread; the page's default
when cross-origin isolated), the page is opened on a 1500 x 1001 photo (masks drawn at 1024 x 683) and
clicked N times at seeded random places (1 to 3 points per object, then Esc; the 2nd and 3rd feed the
previous mask back, which for the split decoder re-runs image_cache on that click). Latency is the
page's own measure: the pointer event's timestamp to the end of the mask's putImageData; beside it the
worker's own split of the time (graphs' session.run; low-res -> masks). Also: segany's Python click time
(SamPredictor.predict, one point, multimask), Python onnxruntime on the same decoder.onnx at the same
output size, segany's onnxruntime predictor on the same split graphs, and how close the int8 split
decoder's masks are to the float32 ones on the page's click sequence, on the same machine in the same run.

    PYTHONPATH=src python benchmarks/bench_annotate_page.py [--clicks 50] [--models default,vit_b]
        [--decoders split,split-int8,official]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from _results import cpu_name  # beside this script
sys.path.insert(0, str(REPO / "tests"))

from annotate_browser import block_external, click, launch, open_page
from annotate_stub import (
    ServerThread,
    SplitReference,
    StubImage,
    StubState,
    make_app,
    ort_decode,
    png_bytes,
    split_files,
)

DECODERS = {  # --decoders name -> (row label, split precision or None for decoder.onnx)
    "split": ("split decoder fp32", "fp32"),
    "split-int8": ("split decoder int8", "int8"),
    "official": ("official decoder.onnx", None),
}


def _print_row(name: str, where: str, values: list[float]) -> None:
    print(f"| {name} | {where} | {statistics.median(values):.1f} | {pct(values, 95):.1f} | {len(values)} |", flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build(name: str, photo: np.ndarray, folder: Path) -> tuple[StubState, object]:
    import torch

    from segany.build import load_model
    from segany.export.onnx import export_onnx
    from segany.inference.predictor import SamPredictor

    # vit_b: that architecture with random weights (nothing downloaded; the decoder's cost is the same).
    model = load_model() if name == "default" else load_model(name, pretrained=False)
    # Unsigned int8 weights, as `segany annotate --decoder-precision int8` writes them.
    export_onnx(model, folder, encoder=False, check=False, quantize="int8", int8_weights="u8")
    predictor = SamPredictor(model)
    if name == "default":
        predictor.set_image(photo)
        emb = predictor.get_image_embedding().detach().numpy().astype(np.float32)
    else:  # random weights: a random embedding is as good as an encoded one, and skips the ViT-B encoder
        g = torch.Generator().manual_seed(0)
        emb = torch.randn(1, 256, 64, 64, generator=g).numpy()
        predictor.set_image_embedding(torch.from_numpy(emb), (photo.shape[0], photo.shape[1]))
    image = StubImage(1, png_bytes(photo), photo.shape[1], photo.shape[0], emb)
    st = StubState(model_id=f"bench-{name}", image_size=model.image_encoder.img_size,
                   decoder=(folder / "decoder.onnx").read_bytes(), images=[image])
    return st, predictor


def python_times(
    st: StubState, predictor, folder: Path, clicks: int, rng: np.random.Generator
) -> dict[str, list[float]]:
    """Per click, ms: segany's torch click, onnxruntime on decoder.onnx, segany's onnxruntime predictor
    on the split graphs (fp32, int8), all with 1 thread on the same single-point prompts."""
    import onnxruntime as ort
    import torch

    from segany.inference.onnx_backend import OnnxPredictor

    im = st.images[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(st.decoder, opts, providers=["CPUExecutionProvider"])
    splits = {}
    for precision in ("fp32", "int8"):
        splits[precision] = OnnxPredictor(folder, precision=precision, num_threads=1)
        splits[precision].set_image_embedding(torch.from_numpy(im.embedding), (im.height, im.width))
    out: dict[str, list[float]] = {k: [] for k in ("torch", "official", "fp32", "int8")}
    for i in range(clicks + 3):
        p = [[float(rng.uniform(0, im.width)), float(rng.uniform(0, im.height))]]
        t = [time.perf_counter()]
        predictor.predict(point_coords=np.array(p), point_labels=np.array([1]), multimask_output=True)
        t.append(time.perf_counter())
        ort_decode(session, im.embedding, st.image_size, (im.height, im.width), p, [1], out_size=(683, 1024))
        t.append(time.perf_counter())
        for precision in ("fp32", "int8"):
            splits[precision].predict(point_coords=np.array(p), point_labels=np.array([1]), multimask_output=True)
            t.append(time.perf_counter())
        if i >= 3:
            for k, key in enumerate(out):
                out[key].append(1000 * (t[k + 1] - t[k]))
    return out


def int8_agreement(st: StubState, folder: Path, clicks: int, rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """IoU of the int8 split decoder's masks with the float32 ones (1024 x 683, as the page draws them)
    on the page's click sequence: objects of 1 to 3 foreground points, each later click feeding back the
    previous low-res mask of the candidate shown, the candidate picked as the page picks it. Returns the
    IoUs of the masks shown (each precision's own pick) and of all four mask tokens."""
    im = st.images[0]
    refs = {p: SplitReference(folder, p) for p in ("fp32", "int8")}
    shown, tokens = [], []
    points: list[list[float]] = []
    feed: dict[str, np.ndarray | None] = {"fp32": None, "int8": None}
    for i in range(clicks + 3):
        x, y = float(rng.uniform(0.05, 0.95) * im.width), float(rng.uniform(0.05, 0.95) * im.height)
        points.append([x, y])
        masks = {}
        for p, ref in refs.items():
            logits, ious, low = ref.decode(im.embedding, (im.height, im.width), points, [1] * len(points),
                                           mask_input=feed[p], out_size=(683, 1024))
            k = len(points) + 1  # the padding point counts, as in the page's defaultCandidate
            cand = 0 if k >= 3 else 1 + int(np.argmax(ious[1:]))
            masks[p] = (logits > 0, cand)
            feed[p] = low[cand]
        (a, ca), (b, cb) = masks["fp32"], masks["int8"]
        if i >= 3:
            shown.append(_iou(a[ca], b[cb]))
            tokens.extend(_iou(a[t], b[t]) for t in range(a.shape[0]))
        if len(points) == 3 or i == 2:
            points, feed = [], {"fp32": None, "int8": None}
    return shown, tokens


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def page_times(browser, url: str, query: str, clicks: int, rng: np.random.Generator) -> tuple[list[float], dict]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    block_external(context)
    page = context.new_page()
    open_page(page, url, 1, query=query)
    info = page.evaluate("window.__segany.decoderInfo")
    w, h = page.evaluate("[window.__segany.S.W, window.__segany.S.H]")
    n = 0
    for i in range(clicks + 3):
        click(page, float(rng.uniform(0.05, 0.95) * w), float(rng.uniform(0.05, 0.95) * h))
        n += 1
        if n == 3 or i == 2:
            page.keyboard.press("Escape")
            n = 0
    lat = page.evaluate("window.__segany.S.latencies")
    info["decode_ms"] = page.evaluate("window.__segany.S.decodeMs")[3:]
    timings = page.evaluate("window.__segany.S.decoder.timings.filter((t) => !t.final)")[3:]
    info["upscale_ms"] = [t["upscaleMs"] for t in timings]
    info["cache_ms"] = [t["cacheMs"] for t in timings if t["cacheMs"] > 0]
    context.close()
    # Paints without a click (Esc) carry no latency; the first 3 clicks warm the runtime up.
    return lat[3:], info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--models", default="default,vit_b")
    ap.add_argument("--decoders", default="split,split-int8,official", help=f"of {', '.join(DECODERS)}")
    args = ap.parse_args()
    decoders = args.decoders.split(",")
    unknown = set(decoders) - set(DECODERS)
    if unknown:
        ap.error(f"unknown decoder(s) {', '.join(sorted(unknown))}; choose from {', '.join(DECODERS)}")
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from segany.io.image import read_image

    photo = np.asarray(Image.fromarray(read_image(REPO / "tests/data/images/chelsea.jpg")).resize((1500, 1001)))
    import os

    load = os.getloadavg()[0]
    started = dt.datetime.now()
    rows = []
    agreement = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = launch(p)
        version = browser.version
        for name in args.models.split(","):
            folder = Path(tmp) / name
            st, predictor = build(name, photo, folder)
            py = python_times(st, predictor, folder, args.clicks, np.random.default_rng(1))
            with ServerThread(make_app(st)) as srv:
                for decoder in decoders:
                    label, precision = DECODERS[decoder]
                    st.split = split_files(folder, precision) if precision else {}
                    st.split_precision = precision or "fp32"
                    for threads, query in (("1 thread", "threads=1"), ("default threads", "")):
                        lat, info = page_times(browser, srv.url, query, args.clicks, np.random.default_rng(2))
                        if info.get("decoder") != ("split" if precision else "official"):
                            raise SystemExit(f"the page ran {info.get('decoder')} instead of {label}: {info.get('splitError')}")
                        new = [
                            (name, f"page, {label}, click to paint, {threads} ({info['threads']}, "
                                   f"isolated={info['isolated']})", lat),
                            (name, f"page, {label}, graphs only (session.run in the worker), {threads}",
                             info["decode_ms"]),
                        ]
                        if precision:
                            new.append((name, f"page, {label}, low-res -> masks in the worker, {threads}",
                                        info["upscale_ms"]))
                            if info["cache_ms"]:
                                new.append((name, f"page, {label}, image_cache re-run on fed-back clicks, {threads}",
                                            info["cache_ms"]))
                        rows.extend(new)
                        for row in new:
                            _print_row(*row)
            new = [
                (name, "segany Python (SamPredictor.predict, torch)", py["torch"]),
                (name, "Python onnxruntime, 1 thread, same decoder.onnx, 1024x683 out", py["official"]),
                (name, "Python onnxruntime split fp32 (OnnxPredictor.predict, 1 thread, 1500x1001 out)", py["fp32"]),
                (name, "Python onnxruntime split int8 (OnnxPredictor.predict, 1 thread, 1500x1001 out)", py["int8"]),
            ]
            rows.extend(new)
            for row in new:
                _print_row(*row)
            if "split-int8" in decoders:
                shown, tokens = int8_agreement(st, folder, args.clicks, np.random.default_rng(2))
                agreement.append((name, shown, tokens))
        browser.close()
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} cores, load average "
          f"{load:.1f} at start and {os.getloadavg()[0]:.1f} at the end; Chromium {version}; onnxruntime-web 1.31.1; "
          f"{started:%Y-%m-%d %H:%M}-{dt.datetime.now():%H:%M}; {args.clicks} clicks\n")
    print("| model | where | p50 ms | p95 ms | n |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        _print_row(*row)
    if agreement:
        print("\nint8 split decoder vs float32, masks at 1024x683 on the page's click sequence:\n")
        print("| model | mean IoU, mask shown | min IoU, mask shown | mean IoU, all 4 tokens | min, all 4 tokens | clicks |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, shown, tokens in agreement:
            print(f"| {name} | {np.mean(shown):.4f} | {np.min(shown):.4f} | {np.mean(tokens):.4f} | "
                  f"{np.min(tokens):.4f} | {len(shown)} |")


if __name__ == "__main__":
    main()
