#!/usr/bin/env python
"""CPU inference benchmark: the official ``segment_anything`` package against segany (PyTorch float32,
the opt-in bfloat16 decoder and encoder, each of them through torch.compile, onnxruntime float32 and
int8), on one machine, in one run.

    nice python benchmarks/bench_cpu.py                 # full run (20-40 min on 2 cores)
    nice python benchmarks/bench_cpu.py --quick         # smoke run: tiny model only, 1 round
    nice python benchmarks/bench_cpu.py --write-results # also update "## CPU inference" in RESULTS.md

What is timed (wall clock, ``torch.set_num_threads(2)`` and 2 onnxruntime threads everywhere):

* encoder: ``predictor.set_image(image)`` (resize + normalise + encoder) on a real photo;
* click: ``predictor.predict(one point, multimask_output=True)`` with the image already set: prompt
  encoding, decoder, post-processing to the image size and thresholding;
* automatic generator: ``generate(image)`` with ``points_per_side`` points (smaller than the official
  32 to keep the run short), where segany's generator exists.

Every measurement runs in a fresh worker process (``bench_cpu_workers.py``), so its ``VmHWM`` is the
peak resident memory of one implementation (model + activations + interpreter and libraries). Rounds are
interleaved (official, segany, onnx fp32, onnx int8, official, ...) and ratios are taken within a
round, then the median over rounds: on a shared machine the load drifts, and this cancels most of it.

The int8 accuracy cost is the mean IoU between the masks of the int8 pipeline (int8 encoder and
decoder graphs) and the float32 one, for point and box prompts taken from real annotations (training
sets in $SEGANY_SHARED_DATA or ../shared/data, never the held-out sets). int8 graphs use the weight type that suits this
CPU (signed where it has VNNI/AMX; see segany.export.quantize). The bfloat16 decoder
(``SamPredictor(model, decoder_precision="bf16")``, timed only on CPUs with AVX-512 BF16 or AMX) is
checked the same way: its masks against the float32 decoder's on the same float32 embeddings, eager and
compiled (``compile_decoder=True``; compiled workers also report their first click, compilation included).
The encoder is also timed through torch.compile (``compile_encoder=True``, float32 and bfloat16; the
first, compiling image is reported apart and not timed).

On a VM that backs its memory lazily, pass ``--warm-memory 20`` (GiB): see
``bench_cpu_workers.warm_memory``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cpu_workers import REPO, THREADS, warm_memory  # noqa: E402  (this script's folder is on sys.path)
from _results import write_section  # noqa: E402  (this script's folder is on sys.path)

DATA = Path(os.environ.get("SEGANY_SHARED_DATA", REPO.parent / "shared" / "data"))
TRAINING_SETS = ("COCO_MVal", "BSDS500", "ISBI2012_EM", "SUIM_sample", "KvasirSEG_sample")


# ================================================================================================
# orchestration
# ================================================================================================


def run_worker(spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run one task in a fresh interpreter (inherits this process's niceness); parse its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "bench_cpu_workers.py"), json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['task']}/{spec['impl']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])



def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prepare_model(work: Path, name: str, source: str | None, seed: int) -> dict[str, Any]:
    """Save the model's weights and export ONNX (fp32 + int8) into ``work/name`` (reused if present)."""
    import torch

    import segany
    from segany.export.onnx import export_onnx

    folder = work / name
    checkpoint = folder / "model.safetensors"
    onnx_dir = folder / "onnx"
    if not (onnx_dir / "segany_onnx.json").is_file():
        _log(f"preparing {name} (weights + ONNX export)")
        if source is not None and Path(source).is_file():
            model = segany.load_model(source)
        else:
            sys.path.insert(0, str(REPO / "tests"))
            from sam_testing import randomize_

            model = randomize_(segany.load_model(source or name), seed).eval()
        from segany.io.checkpoint import save_checkpoint

        save_checkpoint(model, checkpoint)
        torch.set_num_threads(THREADS)
        export_onnx(model, onnx_dir, quantize="int8", check=False)
    model = segany.load_model(checkpoint)
    grid = model.prompt_encoder.image_embedding_size
    return {
        "checkpoint": str(checkpoint),
        "onnx_dir": str(onnx_dir),
        "embedding_shape": [1, model.prompt_encoder.embed_dim, grid[0], grid[1]],
        "image_size": model.image_encoder.img_size,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def accuracy_items(n_images: int) -> list[dict[str, Any]]:
    """Real training-set images with up to 3 prompts each: a point deep inside an annotated object
    and that object's box."""
    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils

    items: list[dict[str, Any]] = []
    per_set = max(1, n_images // 2)
    for name in TRAINING_SETS[:2]:
        ann_path = DATA / name / "annotations.json"
        if not ann_path.is_file():
            continue
        data = json.loads(ann_path.read_text())
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in data["annotations"]:
            if not a.get("iscrowd"):
                by_image.setdefault(a["image_id"], []).append(a)
        for info in sorted(data["images"], key=lambda i: i["file_name"])[:per_set]:
            anns = sorted(by_image.get(info["id"], []), key=lambda a: -a["area"])[:3]
            prompts = []
            for a in anns:
                m = mask_utils.decode(a["segmentation"]).astype(np.uint8)
                dist = cv2.distanceTransform(np.pad(m, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
                y, x = np.unravel_index(int(dist.argmax()), dist.shape)
                bx, by, bw, bh = a["bbox"]
                prompts.append({"kind": "point", "xy": [float(x), float(y)]})
                prompts.append({"kind": "box", "box": [bx, by, bx + bw, by + bh]})
            if prompts:
                items.append({"image": str(DATA / name / "images" / info["file_name"]), "prompts": prompts})
    return items[:n_images]


def bench_image() -> str:
    for name in TRAINING_SETS:
        folder = DATA / name / "images"
        if folder.is_dir():
            return str(sorted(folder.iterdir())[0])
    return str(sorted((REPO / "tests" / "data" / "images").glob("*.jpg"))[0])


def interleaved(task: str, impls: list[str], spec: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Run ``task`` for every implementation, ``rounds`` times, round-robin."""
    out: dict[str, dict[str, Any]] = {i: {"per_round": [], "peak_rss_mb": 0.0} for i in impls}
    for r in range(rounds):
        for impl in impls:
            _log(f"{task} {spec.get('label', '')} round {r + 1}/{rounds}: {impl}")
            res = run_worker({**spec, "task": task, "impl": impl})
            out[impl]["per_round"].append(statistics.median(res["times"]))
            if "first_s" in res:
                out[impl].setdefault("first_s", []).append(res["first_s"])
            out[impl]["peak_rss_mb"] = max(out[impl]["peak_rss_mb"], res["peak_rss_mb"])
            if "masks" in res:
                out[impl]["masks"] = res["masks"]
    base = out.get("official")
    for row in out.values():
        row["median_s"] = statistics.median(row["per_round"])
        if base is not None:
            ratios = [b / t for b, t in zip(base["per_round"], row["per_round"])]
            row["speedup"] = statistics.median(ratios)
    return out


def machine_info() -> dict[str, Any]:
    import numpy
    import onnxruntime
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        simd = " ".join(
            f
            for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")
            if f" {f}" in flags
        )
    except OSError:
        simd = ""
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "simd": simd,
        "cores": os.cpu_count(),
        "threads": THREADS,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "load_start": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, one round (checks the script)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (default 3)")
    parser.add_argument("--clicks", type=int, default=10, help="timed clicks per round (default 10)")
    parser.add_argument("--points-per-side", type=int, default=16, help="automatic generator grid (default 16)")
    parser.add_argument("--accuracy-images", type=int, default=4, help="images for the vit_b int8 check")
    parser.add_argument("--default-model", help="checkpoint of the 'default model' (default: the packaged one, "
                        "else a random tiny model)")
    parser.add_argument("--work-dir", type=Path, help="where to keep weights and exports (reused across runs)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the compile_decoder=True clicks and compile_encoder=True encodings "
                        "(each worker compiles for 10-40 s)")
    parser.add_argument("--json", type=Path, help="also write all numbers to this JSON file")
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    parser.add_argument("--warm-memory", type=float, default=0, metavar="GIB",
                        help="touch this much memory once before timing (VMs that back memory lazily; "
                        "see bench_cpu_workers.warm_memory)")
    args = parser.parse_args()
    if args.warm_memory:
        _log(f"touching {args.warm_memory:g} GiB of memory once")
        warm_memory(args.warm_memory)

    import torch

    torch.set_num_threads(THREADS)
    from segany.build import default_weights_path

    info = machine_info()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="segany-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    image = bench_image()
    rounds = 1 if args.quick else args.rounds

    default_source = args.default_model or (str(default_weights_path()) if default_weights_path() else None)
    default_label = "default" if default_source else "tiny (random; no packaged default weights)"
    models: dict[str, dict[str, Any]] = {}
    if not args.quick:
        models["vit_b"] = prepare_model(work, "vit_b", None, seed=0)
    models["default"] = prepare_model(work, "default" if default_source else "tiny", default_source, seed=0)
    models["default"]["label"] = default_label if not args.default_model else f"default ({args.default_model})"
    models.setdefault("vit_b", {}).setdefault("label", "vit_b (random weights)")

    results: dict[str, Any] = {"machine": info, "image": image, "models": models}
    from segany.inference.cpu import cpu_has_bf16

    enc16 = ["torch-bf16-encoder"] if cpu_has_bf16() else []
    enc_compiled = [] if args.no_compile else ["torch-encoder-compiled", *(f"{i}-compiled" for i in enc16)]
    enc_impls = ["official", "torch", *enc16, *enc_compiled, "onnx-fp32", "onnx-int8"]
    for key, spec in models.items():
        if "checkpoint" not in spec:
            continue
        small = spec["image_size"] < 1024
        enc_spec = {**spec, "image": image, "label": key, "warmup": 1 if small else 0, "repeat": 5 if small else 1}
        results[f"encoder/{key}"] = interleaved("encoder", enc_impls, enc_spec, rounds)

    bf16 = ["torch-bf16"] if cpu_has_bf16() else []
    info["bf16"] = bool(bf16)
    compiled = [] if args.no_compile else ["torch-compiled", *(f"{i}-compiled" for i in bf16)]
    for key, spec in models.items():
        if "checkpoint" not in spec:
            continue
        click_spec = {
            **spec,
            "image": image,
            "clicks": 3 if args.quick else args.clicks,
            "warmup": 2,
            "label": f"click {key}",
        }
        impls = ["official", "torch", *bf16, *compiled, "onnx-fp32", "onnx-int8"]
        results[f"click/{key}"] = interleaved("click", impls, click_spec, rounds)

    if (REPO / "src" / "segany" / "inference" / "automatic.py").is_file():
        amg_spec = {**models["default"], "image": image, "points_per_side": 8 if args.quick else args.points_per_side,
                    "label": "amg", "warmup": 1}
        results["amg"] = interleaved("amg", ["official", "torch", *bf16], amg_spec, 1)
    else:
        results["amg"] = None

    _log("int8 vs fp32 matrix product")
    results["gemm"] = run_worker({"task": "gemm", "impl": "onnx"})
    results["accuracy"] = {}
    results["accuracy_bf16"] = {}
    acc_models = [("default", 2 if args.quick else 20)] + ([] if args.quick else [("vit_b", args.accuracy_images)])
    for key, n in acc_models:
        items = accuracy_items(n)
        if items:
            _log(f"accuracy {key}: int8 vs fp32 on {len(items)} images")
            results["accuracy"][key] = run_worker(
                {"task": "accuracy", "impl": "int8", "onnx_dir": models[key]["onnx_dir"], "items": items}
            )
            extra = ["bf16-compiled", "bf16-encoder-compiled"] if compiled else []
            for impl in ["bf16", "bf16-encoder", *extra] if bf16 else []:
                _log(f"accuracy {key}: {impl} vs fp32 on {len(items)} images")
                results[f"accuracy_{impl}"] = results.get(f"accuracy_{impl}", {})
                results[f"accuracy_{impl}"][key] = run_worker(
                    {"task": "accuracy", "impl": impl, "checkpoint": models[key]["checkpoint"], "items": items}
                )
    info["load_end"] = os.getloadavg()

    text = format_results(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.write_results:
        write_section("## CPU inference", text)
    return 0


# ================================================================================================
# report
# ================================================================================================

IMPL_NAMES = {
    "official": "official segment_anything 1.0",
    "torch": "segany PyTorch fp32 (SamPredictor)",
    "torch-bf16": "segany PyTorch, bf16 decoder (decoder_precision='bf16')",
    "torch-bf16-encoder": "segany PyTorch, bf16 encoder (encoder_precision='bf16')",
    "torch-compiled": "segany PyTorch fp32, compiled decoder (compile_decoder=True)",
    "torch-bf16-compiled": "segany PyTorch, bf16 decoder, compiled (compile_decoder=True)",
    "torch-encoder-compiled": "segany PyTorch fp32, compiled encoder (compile_encoder=True)",
    "torch-bf16-encoder-compiled": "segany PyTorch, bf16 encoder, compiled (compile_encoder=True)",
    "onnx-fp32": "segany onnxruntime fp32",
    "onnx-int8": "segany onnxruntime int8",
}


def _rows(title: str, res: dict[str, Any], unit: float = 1.0, suffix: str = "s") -> list[str]:
    rows = []
    for impl, row in res.items():
        t = row["median_s"] * unit
        ratio = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        extra = f" ({row['masks']} masks)" if "masks" in row else ""
        rows.append(
            f"| {title} | {IMPL_NAMES.get(impl, impl)}{extra} | {t:.3g} {suffix} | {ratio} | {row['peak_rss_mb']:.0f} |"
        )
    return rows


def format_results(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "## CPU inference",
        "",
        f"Measured {m['date']} by `nice python benchmarks/bench_cpu.py` on {m['cpu']} ({m['cores']} cores, "
        f"{m['simd'] or 'no AVX2'}), {m['threads']} threads (torch and onnxruntime); Python {m['python']}, "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, numpy {m['numpy']}. Load average "
        f"{m['load_start'][0]:.1f} at the start, {m.get('load_end', (float('nan'),))[0]:.1f} at the end (shared "
        "machine: absolute times are noisy, ratios are medians of per-round ratios of interleaved runs).",
        f"Image: `{Path(results['image']).name}`. Peak memory: peak resident set (`VmHWM`) of a fresh worker process "
        "running one implementation (includes the interpreter and libraries, ~0.3-0.5 GB).",
        "",
        "| task | implementation | median time | speed vs official | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, spec in results["models"].items():
        if f"encoder/{key}" in results:
            lines += _rows(f"encoder, {spec['label']}, {spec['image_size']} px", results[f"encoder/{key}"])
    for key, spec in results["models"].items():
        if f"click/{key}" in results:
            lines += _rows(
                f"click, {spec['label']} (decoder + masks at image size)", results[f"click/{key}"], 1000.0, "ms"
            )
    if results.get("amg"):
        lines += _rows(f"automatic generator, {results['models']['default']['label']}", results["amg"])
    lines += [
        "",
        "`SamPredictor` clicks run its default decoder (`decoder=\"auto\"`: `segany.inference.decoders.fast` on "
        "a CPU) and `segany.ops.postprocess.upscale_masks`; the onnxruntime predictor runs the fast decoder "
        "exported (`image_cache.onnx`, `decoder_lowres.onnx`). The bf16 decoder "
        "(`segany.inference.decoders.bf16`, opt-in) keeps the image rows in bfloat16 and multiplies them in "
        "bfloat16 (float32 accumulation), with the token side in float32 except its 2048-wide MLPs. The "
        "decoder choices side by side: the Click decoders section (`bench_decoders.py`).",
    ]
    if not m.get("bf16", True):
        lines.append("bf16 decoder: not timed (this CPU has no AVX-512 BF16 or AMX).")
    if not results.get("amg"):
        lines.append("Automatic generator: skipped (src/segany/inference/automatic.py does not exist).")
    g = results.get("gemm")
    if g:
        lines.append(
            f"int8 headroom on this CPU: one ViT-B MLP product (4096x768 @ 768x3072) in onnxruntime takes "
            f"{1000 * g['fp32_s']:.0f} ms in float32 ({g['gflops_fp32']:.0f} GFLOP/s), {1000 * g['u8_s']:.0f} ms "
            f"dynamically quantised with uint8 weights ({g['fp32_s'] / g['u8_s']:.2f}x) and {1000 * g['s8_s']:.0f} ms "
            f"with int8 weights ({g['fp32_s'] / g['s8_s']:.2f}x); exports here use {g['int8_weights']} weights "
            "(`segany export --int8-weights auto`)."
        )
    for key, acc in results.get("accuracy", {}).items():
        lines.append(
            f"int8 accuracy, {results['models'][key]['label']}: mean mask IoU vs float32 {acc['mean_iou']:.3f} "
            f"(median {acc['median_iou']:.3f}, {100 * acc['share_iou_ge_0_9']:.0f}% of masks >= 0.9, min "
            f"{acc['min_iou']:.2f}) over {acc['masks']} masks from point and box prompts on {acc['images']} "
            f"real training-set images; embedding cosine similarity {acc['embedding_cosine']:.4f}."
        )
    for impl, name in (
        ("bf16", "bf16 decoder"),
        ("bf16-compiled", "compiled bf16 decoder"),
        ("bf16-encoder", "bf16 encoder"),
        ("bf16-encoder-compiled", "compiled bf16 encoder"),
    ):
        for key, acc in results.get(f"accuracy_{impl}", {}).items():
            same = "same float32 embeddings" if "encoder" not in impl else (
                f"float32 decoder; embedding cosine similarity {acc['embedding_cosine']:.5f}")
            lines.append(
                f"{name} accuracy, {results['models'][key]['label']}: mean mask IoU vs float32 "
                f"{acc['mean_iou']:.3f} (median {acc['median_iou']:.3f}, {100 * acc['share_iou_ge_0_9']:.0f}% of masks "
                f">= 0.9, min {acc['min_iou']:.2f}) over {acc['masks']} masks from point and box prompts on "
                f"{acc['images']} real training-set images ({same})."
            )
    for task, what in (
        ("encoder", "First image with compile_encoder=True"),
        ("click", "First click with compile_decoder=True"),
    ):
        for key, spec in results["models"].items():
            firsts = {i: r["first_s"] for i, r in results.get(f"{task}/{key}", {}).items() if i.endswith("-compiled")}
            if firsts:
                parts = ", ".join(
                    f"{IMPL_NAMES[i].replace('segany ', '')} {statistics.median(v):.1f} s" for i, v in firsts.items()
                )
                lines.append(f"{what} (compilation included), {spec['label']}: {parts}.")
    lines += ["", *goal_lines(results)]
    return "\n".join(lines) + "\n"


def goal_lines(results: dict[str, Any]) -> list[str]:
    """The issue's goals, each marked met or not met from the numbers above."""
    out = ["Goals (ratios to the official code on this machine):", ""]
    for key, spec in results["models"].items():
        enc = results.get(f"encoder/{key}")
        if not enc:
            continue
        fp32_impls = {"PyTorch": "torch", "PyTorch compiled": "torch-encoder-compiled", "onnxruntime": "onnx-fp32"}
        fp32 = {name: enc[impl]["speedup"] for name, impl in fp32_impls.items() if impl in enc}
        best = max(fp32.values())
        out.append(f"- encoder float32 >= 1.3x, {spec['label']}: {'met' if best >= 1.3 else 'NOT met'} "
                   f"({', '.join(f'{name} {x:.2f}x' for name, x in fp32.items())})")
        for impl, what in (
            ("torch-bf16-encoder", "bf16 PyTorch encoder"),
            ("torch-bf16-encoder-compiled", "bf16 PyTorch encoder, compiled"),
        ):
            if impl in enc:
                acc16 = results.get(f"accuracy_{impl.removeprefix('torch-')}", {}).get(key)
                iou16 = f", mean mask IoU {acc16['mean_iou']:.3f}" if acc16 else ""
                out.append(f"  (not a goal: the {what}, {enc[impl]['speedup']:.2f}x{iou16})")
        acc = results.get("accuracy", {}).get(key)
        iou = f", mean mask IoU {acc['mean_iou']:.3f}" if acc else ""
        ok = enc["onnx-int8"]["speedup"] >= 2.5 and (acc is None or acc["mean_iou"] >= 0.97)
        out.append(f"- encoder int8 >= 2.5x with IoU >= 0.97, {spec['label']}: {'met' if ok else 'NOT met'} "
                   f"({enc['onnx-int8']['speedup']:.2f}x{iou})")
    for key, spec in results["models"].items():
        click = results.get(f"click/{key}")
        if not click:
            continue
        # Reduced-precision paths count only with their accuracy cost measured and within the int8 bound.
        accuracy = {
            "onnx-int8": results.get("accuracy", {}).get(key),
            "torch-bf16": results.get("accuracy_bf16", {}).get(key),
            "torch-bf16-compiled": results.get("accuracy_bf16-compiled", {}).get(key),
        }
        parts, best = [], 0.0
        for impl in click:
            if impl == "official":
                continue
            acc = accuracy.get(impl)
            note = f" (mean mask IoU {acc['mean_iou']:.3f})" if acc else ""
            parts.append(f"{IMPL_NAMES[impl].replace('segany ', '')} {click[impl]['speedup']:.2f}x{note}")
            if impl not in accuracy or (acc is not None and acc["mean_iou"] >= 0.97):
                best = max(best, click[impl]["speedup"])
        out.append(f"- click >= 5x, {spec['label']}: {'met' if best >= 5 else 'NOT met'} ({', '.join(parts)})")
    return out


if __name__ == "__main__":
    sys.exit(main())
