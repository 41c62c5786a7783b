"""Click-to-paint latency of the annotation page in headless Chromium (not a test).

For each model (segany's default model, and a ViT-B-sized decoder with random weights: the decoder is
the same size for every SAM) and each thread setting (1 thread; the page's default when cross-origin
isolated), the page is opened on a 1500 x 1001 photo (masks drawn at 1024 x 683) and clicked N times at
seeded random places (1 to 3 points per object, then Esc). Latency is the page's own measure: the
pointer event's timestamp to the end of the mask's putImageData. Beside it: segany's Python click time
(SamPredictor.predict, one point, multimask) and Python onnxruntime on the same decoder.onnx at the same
output size, on the same machine in the same run.

    PYTHONPATH=src python benchmarks/bench_annotate_page.py [--clicks 50] [--models default,vit_b]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from annotate_browser import block_external, click, launch, open_page
from annotate_stub import (
    ServerThread,
    StubImage,
    StubState,
    make_app,
    ort_decode,
    png_bytes,
)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _print_row(name: str, where: str, values: list[float]) -> None:
    print(f"| {name} | {where} | {statistics.median(values):.1f} | {pct(values, 95):.1f} | {len(values)} |", flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def build(name: str, photo: np.ndarray, folder: Path) -> tuple[StubState, object]:
    import torch

    from segany.build import load_model
    from segany.export.onnx import export_onnx
    from segany.inference.predictor import SamPredictor

    model = load_model(None if name == "default" else name)
    export_onnx(model, folder, encoder=False, check=False)
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


def python_times(st: StubState, predictor, clicks: int, rng: np.random.Generator) -> tuple[list[float], list[float]]:
    import onnxruntime as ort

    im = st.images[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(st.decoder, opts, providers=["CPUExecutionProvider"])
    segany_ms, ort_ms = [], []
    for i in range(clicks + 3):
        p = [[float(rng.uniform(0, im.width)), float(rng.uniform(0, im.height))]]
        t = time.perf_counter()
        predictor.predict(point_coords=np.array(p), point_labels=np.array([1]), multimask_output=True)
        a = time.perf_counter()
        ort_decode(session, im.embedding, st.image_size, (im.height, im.width), p, [1], out_size=(683, 1024))
        b = time.perf_counter()
        if i >= 3:
            segany_ms.append(1000 * (a - t))
            ort_ms.append(1000 * (b - a))
    return segany_ms, ort_ms


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
    context.close()
    # Paints without a click (Esc) carry no latency; the first 3 clicks warm the runtime up.
    return lat[3:], info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clicks", type=int, default=50)
    ap.add_argument("--models", default="default,vit_b")
    args = ap.parse_args()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from segany.io.image import read_image

    photo = np.asarray(Image.fromarray(read_image(REPO / "tests/data/images/chelsea.jpg")).resize((1500, 1001)))
    import os

    load = os.getloadavg()[0]
    started = dt.datetime.now()
    rows = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = launch(p)
        version = browser.version
        for name in args.models.split(","):
            st, predictor = build(name, photo, Path(tmp) / name)
            segany_ms, ort_ms = python_times(st, predictor, args.clicks, np.random.default_rng(1))
            with ServerThread(make_app(st)) as srv:
                for label, query in (("1 thread", "threads=1"), ("default threads", "")):
                    lat, info = page_times(browser, srv.url, query, args.clicks, np.random.default_rng(2))
                    rows.append(
                        (name, f"page, click to paint, {label} ({info['threads']}, isolated={info['isolated']})", lat)
                    )
                    rows.append(
                        (name, f"page, decoder run only (session.run in the worker), {label}", info["decode_ms"])
                    )
                    for row in rows[-2:]:
                        _print_row(*row)
            rows.append((name, "segany Python (SamPredictor.predict, torch)", segany_ms))
            rows.append((name, "Python onnxruntime, 1 thread, same decoder.onnx, 1024x683 out", ort_ms))
            for row in rows[-2:]:
                _print_row(*row)
        browser.close()
    print(f"\nMachine: {_cpu_name()}, {os.cpu_count()} cores, load average "
          f"{load:.1f} at start and {os.getloadavg()[0]:.1f} at the end; Chromium {version}; onnxruntime-web 1.31.1; "
          f"{started:%Y-%m-%d %H:%M}-{dt.datetime.now():%H:%M}; {args.clicks} clicks\n")
    print("| model | where | p50 ms | p95 ms | n |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        _print_row(*row)


if __name__ == "__main__":
    main()
