"""Worker side of ``bench_cpu.py``: one implementation, one task, in a fresh process.

Run by the orchestrator as ``python benchmarks/bench_cpu_workers.py SPEC_JSON``; prints one JSON line with
the timings (seconds) and the peak resident memory of this process.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
THREADS = 2


def warm_memory(gib: float) -> None:
    """Touch ``gib`` GiB of fresh memory once, then free it.

    On a virtual machine whose memory the host hands out lazily (e.g. a Firecracker VM restored from a
    snapshot), the first touch of each guest page costs microseconds: a 4 MB temporary took ~2.5 ms
    more the first time than later ones, which skews whichever implementation allocates more. Once
    touched, pages stay backed, so later processes (every benchmark worker) run at the machine's real
    speed. Harmless elsewhere (a few seconds).
    """
    import numpy as np

    chunks = []
    for _ in range(int(gib)):
        chunk = np.empty(1 << 30, dtype=np.uint8)
        chunk[::4096] = 1  # one write per page
        chunks.append(chunk)
    del chunks


def _setup_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. ``VmHWM`` belongs to the address space, which ``exec``
    replaces; ``ru_maxrss`` would carry over the parent's peak into a freshly started worker."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB; macOS: bytes


def _load_image(path: str):
    from segany.io.image import read_image

    return read_image(path)


def _predictor(impl: str, spec: dict[str, Any]):
    """A predictor with the official API for ``impl``: official | onnx-fp32 | onnx-int8 | a segany PyTorch
    variant (see :func:`_torch_predictor`)."""
    import segany

    if impl.startswith("onnx"):
        from segany.inference.onnx_backend import OnnxPredictor

        return OnnxPredictor(spec["onnx_dir"], precision=impl.split("-")[1], num_threads=THREADS)
    model = segany.load_model(spec["checkpoint"])
    if impl == "official":
        sys.path.insert(0, str(REPO / "tests"))
        from sam_testing import official_twin
        from segment_anything import SamPredictor as OfficialPredictor

        return OfficialPredictor(official_twin(model))
    return _torch_predictor(segany, model, impl)


def _torch_predictor(segany, model, impl: str):
    """torch | torch-bf16 (bfloat16 decoder) | torch-encoder | torch-bf16-encoder, each optionally
    ``-compiled`` (the decoder, or the encoder for the ``encoder`` names); the accuracy worker's names drop
    the ``torch-``."""
    name = impl.removeprefix("torch").removeprefix("-").removesuffix("-compiled")
    compiled = impl.endswith("-compiled")
    return segany.SamPredictor(
        model,
        decoder_precision="bf16" if name == "bf16" else "fp32",
        encoder_precision="bf16" if name == "bf16-encoder" else "fp32",
        compile_decoder=compiled and not name.endswith("encoder"),
        compile_encoder=compiled and name.endswith("encoder"),
    )


def _set_embedding(predictor, embedding, original_size) -> None:
    """Give any predictor an image embedding without running its encoder."""
    if hasattr(predictor, "set_image_embedding"):
        predictor.set_image_embedding(embedding, original_size)
        return
    # The official predictor has no setter; its own set_torch_image assigns these same fields.
    predictor.reset_image()
    predictor.features = embedding
    predictor.original_size = tuple(original_size)
    predictor.input_size = tuple(
        predictor.transform.get_preprocess_shape(*original_size, predictor.model.image_encoder.img_size)
    )
    predictor.is_image_set = True


def worker_encoder(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    image = _load_image(spec["image"])
    predictor = _predictor(spec["impl"], spec)
    times = []
    compiled = spec["impl"].endswith("-compiled")
    # Untimed first calls (small models, and compiled encoders: the first call compiles): one-time set-up
    # would dominate them.
    warmup = spec.get("warmup", 0) + (1 if compiled else 0)
    with torch.inference_mode():
        for _ in range(warmup + spec.get("repeat", 1)):
            start = time.perf_counter()
            predictor.set_image(image)
            times.append(time.perf_counter() - start)
    out: dict[str, Any] = {"times": times[warmup:], "peak_rss_mb": _peak_rss_mb()}
    if compiled:
        out["first_s"] = times[0]
    return out


def worker_click(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    image = _load_image(spec["image"])
    predictor = _predictor(spec["impl"], spec)
    g = torch.Generator().manual_seed(0)
    cfg = spec["embedding_shape"]
    embedding = torch.randn(*cfg, generator=g)
    h, w = image.shape[:2]
    _set_embedding(predictor, embedding, (h, w))
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0], [w, h], size=(spec["warmup"] + spec["clicks"], 2))
    times = []
    with torch.inference_mode():
        for i, pt in enumerate(points):
            start = time.perf_counter()
            masks, scores, _ = predictor.predict(
                point_coords=pt[None], point_labels=np.array([1]), multimask_output=True
            )
            elapsed = time.perf_counter() - start
            assert masks.shape == (3, h, w) and masks.dtype == bool
            if i == 0:
                first = elapsed  # includes one-off set-up (compilation with compile_decoder=True)
            if i >= spec["warmup"]:
                times.append(elapsed)
    return {"times": times, "first_s": first, "peak_rss_mb": _peak_rss_mb()}


def worker_amg(spec: dict[str, Any]) -> dict[str, Any]:
    import segany

    image = _load_image(spec["image"])
    model = segany.load_model(spec["checkpoint"])
    if spec["impl"] == "official":
        sys.path.insert(0, str(REPO / "tests"))
        from sam_testing import official_twin
        from segment_anything import SamAutomaticMaskGenerator as Generator

        generator = Generator(official_twin(model), points_per_side=spec["points_per_side"])
    else:
        from segany.inference.automatic import SamAutomaticMaskGenerator as Generator

        generator = Generator(_torch_predictor(segany, model, spec["impl"]), points_per_side=spec["points_per_side"])
    for _ in range(spec.get("warmup", 0)):
        generator.generate(image)
    start = time.perf_counter()
    records = generator.generate(image)
    return {"times": [time.perf_counter() - start], "masks": len(records), "peak_rss_mb": _peak_rss_mb()}


def worker_accuracy(spec: dict[str, Any]) -> dict[str, Any]:
    """Mask IoU against float32 on real annotations: of the int8 graphs (encoder and decoder split,
    ``impl`` int8), of the bfloat16 decoder on float32 embeddings (``impl`` bf16, or bf16-compiled), or
    of the bfloat16 encoder (``impl`` bf16-encoder, or bf16-encoder-compiled; float32 decoder)."""
    import numpy as np
    import torch

    torch_impl = spec["impl"].startswith("bf16")
    same_encoder = torch_impl and "encoder" not in spec["impl"]
    if torch_impl:
        import segany

        model = segany.load_model(spec["checkpoint"])
        fp32: Any = segany.SamPredictor(model)
        other: Any = _torch_predictor(segany, model, spec["impl"])
    else:
        from segany.inference.onnx_backend import OnnxPredictor

        fp32 = OnnxPredictor(spec["onnx_dir"], precision="fp32", num_threads=THREADS)
        other = OnnxPredictor(spec["onnx_dir"], precision="int8", num_threads=THREADS)
    ious: list[float] = []
    cosines: list[float] = []
    for item in spec["items"]:
        image = _load_image(item["image"])
        fp32.set_image(image)
        if same_encoder:  # only the decoder differs
            other.set_image_embedding(fp32.get_image_embedding(), image.shape[:2])
        else:
            other.set_image(image)
        a, b = fp32.get_image_embedding().flatten(), other.get_image_embedding().flatten()
        cosines.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
        # Each predictor runs its own graphs: int8 encoder and int8 decoder split against float32.
        for prompt in item["prompts"]:
            kwargs: dict[str, Any] = {"multimask_output": prompt["kind"] == "point"}
            if prompt["kind"] == "point":
                kwargs.update(point_coords=np.array([prompt["xy"]]), point_labels=np.array([1]))
            else:
                kwargs.update(box=np.array(prompt["box"]))
            ma, _, _ = fp32.predict(**kwargs)
            mb, _, _ = other.predict(**kwargs)
            for x, y in zip(ma, mb):
                union = np.logical_or(x, y).sum()
                ious.append(1.0 if union == 0 else float(np.logical_and(x, y).sum() / union))
    arr = np.array(ious)
    return {
        "images": len(spec["items"]),
        "masks": int(arr.size),
        "mean_iou": float(arr.mean()),
        "median_iou": float(np.median(arr)),
        "share_iou_ge_0_9": float((arr >= 0.9).mean()),
        "min_iou": float(arr.min()),
        "embedding_cosine": float(np.mean(cosines)),
    }


def worker_gemm(spec: dict[str, Any]) -> dict[str, Any]:
    """One ViT-B MLP product (4096 x 768 @ 768 x 3072) in onnxruntime, float32 vs dynamic int8 with
    unsigned and signed weights: how much int8 can gain on this CPU at all."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from segany.export.quantize import int8_weight_type, quantize_int8

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((768, 3072)) / 28).astype(np.float32)
    x = rng.standard_normal((4096, 768)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096, 768])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096, 3072])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(fp32))
        paths = {"fp32": fp32}
        for weights in ("u8", "s8"):  # both weight types, whichever this CPU would get by default
            paths[weights] = quantize_int8(fp32, Path(tmp) / f"{weights}.onnx", weights=weights)
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        for name, path in paths.items():
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            session.run(None, {"x": x})
            runs = []
            for _ in range(7):
                start = time.perf_counter()
                session.run(None, {"x": x})
                runs.append(time.perf_counter() - start)
            times[name] = min(runs)
    return {"times": [times["fp32"]], "fp32_s": times["fp32"], "u8_s": times["u8"], "s8_s": times["s8"],
            "int8_weights": int8_weight_type("auto"),
            "gflops_fp32": 2 * 4096 * 768 * 3072 / times["fp32"] / 1e9, "peak_rss_mb": _peak_rss_mb()}


WORKERS = {
    "gemm": worker_gemm,
    "encoder": worker_encoder,
    "click": worker_click,
    "amg": worker_amg,
    "accuracy": worker_accuracy,
}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    _setup_threads()
    print(json.dumps(WORKERS[spec["task"]](spec)))
