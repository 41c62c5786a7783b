"""Export a SAM model to ONNX: image encoder, official-compatible decoder, and segany's fast split.

Files written to the output folder (see :mod:`segany.export.graphs` for each graph's inputs/outputs):

=========================  ==================================================================
``encoder.onnx``           uint8 ``(h, w, 3)`` resized RGB image -> ``image_embeddings``
``decoder.onnx``           same inputs/outputs/options as the official ``SamOnnxModel`` export
``image_cache.onnx``       per-image part of the decoder (segany's onnxruntime predictor)
``decoder_lowres.onnx``    batched prompts -> low-resolution logits (segany's predictor)
``*.int8.onnx``           with ``quantize="int8"``: dynamically quantised encoder, image_cache
                           and decoder_lowres
``segany_onnx.json``       what the folder holds: model configuration, sizes, file names
=========================  ==================================================================

A SAM-HQ model's folder holds ``encoder.onnx`` (its output: the HQ embedding, ``C + early_dim``
channels), ``decoder.onnx`` with the official SAM-HQ export's interface and options
(:class:`~segany.export.graphs.HQDecoderGraph`) and the manifest: segany's decoder split does not run
SAM-HQ, so the onnxruntime predictor decodes an HQ export's prompts in PyTorch (given the model).

Graphs are written with ``torch.onnx.export``: the ``torch.export``-based exporter for opset >= 18 and
the TorchScript exporter for older opsets (the official export's default is 17).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from segany.errors import SeganyError
from segany.export.graphs import (
    EncoderGraph,
    HQDecoderGraph,
    ImageCacheGraph,
    LowResDecoderGraph,
    OfficialDecoderGraph,
)
from segany.model import Sam

__all__ = ["ExportError", "OnnxExport", "export_onnx", "MANIFEST", "FORMAT_VERSION"]

MANIFEST = "segany_onnx.json"
FORMAT_VERSION = 1
DEFAULT_OPSET = 17
# Above this many parameter bytes the weights go to a side file (protobuf files are limited to 2 GB).
_EXTERNAL_DATA_BYTES = 1_800_000_000


class ExportError(SeganyError):
    """The export failed or its check against PyTorch did not pass."""


@dataclass
class OnnxExport:
    """Paths of an exported folder (``files`` maps a role such as ``"encoder"`` to a file)."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


# -- example inputs ------------------------------------------------------------------------------


def _example_inputs(model: Sam) -> dict[str, tuple[torch.Tensor, ...]]:
    """Deterministic example inputs for tracing and for the post-export check."""
    g = torch.Generator().manual_seed(0)
    s = model.image_encoder.img_size
    c = model.prompt_encoder.embed_dim
    gh, gw = model.prompt_encoder.image_embedding_size
    mh, mw = model.prompt_encoder.mask_input_size
    early = int(getattr(model.mask_decoder, "early_dim", 0))  # SAM-HQ's early features ride along
    embedding = torch.randn(1, c + early, gh, gw, generator=g)
    # Non-square, so that the padding code path is traced with distinct height and width.
    image = torch.randint(0, 256, (s * 3 // 4, s, 3), generator=g, dtype=torch.uint8)
    k, b = 5, 2
    coords = torch.rand(1, k, 2, generator=g) * s
    labels = torch.tensor([[1.0, 0.0, 1.0, 2.0, 3.0]])
    mask = torch.randn(1, 1, mh, mw, generator=g)
    cache_in = (embedding, mask, torch.tensor([1.0]))
    batch_coords = torch.rand(b, 3, 2, generator=g) * s
    batch_labels = torch.tensor([[1.0, 0.0, -1.0], [1.0, 2.0, 3.0]])
    return {
        "encoder": (image,),
        "decoder": (embedding, coords, labels, mask, torch.tensor([1.0]), torch.tensor([s * 0.75 + 17.0, s + 5.0])),
        "image_cache": cache_in,
        "decoder_lowres": (batch_coords, batch_labels),
    }


# -- one graph -----------------------------------------------------------------------------------


def _param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _export_graph(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic: dict[str, dict[int, str]],
    opset: int,
    dim_max: dict[str, int],
) -> None:
    """Write ``module`` traced on ``args`` to ``path`` with the named dynamic axes (``dim_max``: upper
    bounds of some of them, for the ``torch.export`` exporter)."""
    module = module.eval()
    external = _param_bytes(module) > _EXTERNAL_DATA_BYTES
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # The math attention kernel traces to plain ops with ordinary (contiguous) output strides; the
    # fused CPU kernel's output layout confuses the exporter's decomposition of later reshapes.
    with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, tracer warnings)
        if opset >= 18:
            shapes = {
                name: {axis: torch.export.Dim(label, max=dim_max.get(label)) for axis, label in axes.items()}
                for name, axes in dynamic.items()
            }
            dynamic_shapes = tuple(shapes.get(name) for name in input_names)
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=external,
                verbose=False,
            )
        else:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=opset,
                dynamo=False,
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )


# -- checks --------------------------------------------------------------------------------------


def _check(path: Path, module: nn.Module, args: tuple[torch.Tensor, ...], names: Sequence[str]) -> float:
    """Run the exported graph with onnxruntime on ``args``; return the largest |difference| to PyTorch
    over all floating outputs, relative to each output's scale (max |value|, at least 1)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: arg.numpy() for name, arg in zip(names, args)}
    got = session.run(None, feeds)
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, (tuple, list)) else (want,)
    worst = 0.0
    for g, w in zip(got, want):
        w = w.detach().numpy()
        if g.shape != w.shape:
            raise ExportError(f"{path.name}: output shape {g.shape} != PyTorch {w.shape}")
        if w.dtype.kind == "f" and w.size:
            scale = max(1.0, float(abs(w).max()))
            diff = float(abs(g - w).max()) / scale
            # max() would drop a NaN (max(0.1, nan) is 0.1), so non-finite outputs are reported as such.
            if not math.isfinite(diff):
                return math.nan
            worst = max(worst, diff)
    return worst


def _max_opset() -> int:
    """The newest opset both torch's exporter and the installed onnx know."""
    import onnx

    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as torch_max
    except ImportError:  # a private constant; without it trust onnx
        torch_max = 10**6
    return int(min(torch_max, onnx.defs.onnx_opset_version()))


def _check_opset(opset: int) -> None:
    import importlib.util

    if opset < 13:
        raise ExportError(f"opset {opset} is too old; use 13 or newer (official default: 17)")
    newest = _max_opset()
    if opset > newest:
        raise ExportError(
            f"opset {opset} is newer than this torch/onnx can write (at most {newest}; official default: 17)"
        )
    if opset >= 18 and importlib.util.find_spec("onnxscript") is None:
        raise ExportError(f"opset {opset} uses the torch.export exporter, which needs onnxscript "
                          "(pip install onnxscript), or use --opset 17")


def _sweep_old_staging(out: Path) -> None:
    """Remove staging folders that killed exports left in ``out`` (see segany.io.files.sweep_stale_temps;
    ``.export-*`` folders of older versions record no process, so only those an hour old go)."""
    from segany.io.files import LEGACY_TEMP_AGE_S, sweep_stale_temps

    sweep_stale_temps(out)
    for old in out.glob(".export-*"):
        try:
            if old.is_dir() and time.time() - old.stat().st_mtime > LEGACY_TEMP_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


# -- public API ----------------------------------------------------------------------------------


def export_onnx(
    model: Sam,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    int8_weights: Literal["auto", "s8", "u8"] = "auto",
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    encoder: bool = True,
    check: bool = True,
    tolerance: float = 1e-4,
    hq_token_only: bool | None = None,
    hq_multimask_output: bool = False,
) -> OnnxExport:
    """Export ``model`` to ONNX files in ``out_dir`` (created if needed; existing files replaced).

    Args:
        model: a SAM model (any size; its own architecture is exported).
        opset: ONNX opset; >= 18 uses the ``torch.export`` exporter, lower the TorchScript one.
        quantize: ``"int8"`` also writes dynamically quantised ``encoder.int8.onnx``,
            ``image_cache.int8.onnx`` and ``decoder_lowres.int8.onnx``.
        int8_weights: signedness of the int8 weights: ``"s8"`` (fast on CPUs with VNNI/AMX), ``"u8"``
            (safe on any x86 CPU) or ``"auto"`` (whichever suits this CPU; see segany.export.quantize).
        return_single_mask, use_stability_score, return_extra_metrics: the official export's options
            for ``decoder.onnx`` (same defaults: all off). A SAM-HQ ``decoder.onnx`` always returns one
            mask (``return_single_mask`` changes nothing there).
        hq_token_only, hq_multimask_output: SAM-HQ models only, the official SAM-HQ export's
            ``hq_token_only`` (the HQ mask alone instead of added to SAM's; None: the model's own
            ``mask_decoder.hq_token_only``) and ``multimask_output`` (SAM's part from the best
            multimask token instead of the single-mask token).
        encoder: also export the image encoder (slow for big models).
        check: run every graph once with onnxruntime and compare with PyTorch (relative |diff| <=
            ``tolerance``); raises :class:`ExportError` otherwise.
    Returns:
        the written paths and the measured differences.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be 'int8' or None, not {quantize!r}")
    from segany.inference.fast_decoder import is_hq

    hq: dict[str, bool] | None = None
    if is_hq(model):
        only = model.mask_decoder.hq_token_only if hq_token_only is None else hq_token_only
        hq = {"hq_token_only": bool(only), "multimask_output": bool(hq_multimask_output)}
    elif hq_token_only is not None or hq_multimask_output:
        raise ExportError("hq_token_only and hq_multimask_output apply to SAM-HQ models only")
    from segany.export.quantize import int8_weight_type

    try:
        weights = int8_weight_type(int8_weights) if quantize == "int8" else None
    except ValueError as exc:
        raise ExportError(str(exc)) from exc
    _check_opset(opset)
    # Export on the CPU in eval mode, then give the caller's model back as it was.
    device, training = model.device, model.training
    try:
        return _export_all(
            model.eval().cpu(), Path(out_dir), opset, quantize, weights, return_single_mask, use_stability_score,
            return_extra_metrics, encoder, check, tolerance, hq,
        )
    finally:
        model.to(device).train(training)


def _export_all(
    model: Sam,
    out: Path,
    opset: int,
    quantize: str | None,
    int8_weights: Literal["s8", "u8"] | None,
    return_single_mask: bool,
    use_stability_score: bool,
    return_extra_metrics: bool,
    encoder: bool,
    check: bool,
    tolerance: float,
    hq: dict[str, bool] | None,
) -> OnnxExport:
    from segany.io.files import temp_path

    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _sweep_old_staging(out)
        staging = temp_path(out / "export")
        staging.mkdir()
    except OSError as exc:
        raise ExportError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    try:
        return _export_into(model, out, staging, opset, quantize, int8_weights, return_single_mask,
                            use_stability_score, return_extra_metrics, encoder, check, tolerance, hq)
    except BaseException:
        if created:  # a failed export into a new folder leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_into(
    model: Sam,
    out: Path,
    tmp: Path,
    opset: int,
    quantize: str | None,
    int8_weights: Literal["s8", "u8"] | None,
    return_single_mask: bool,
    use_stability_score: bool,
    return_extra_metrics: bool,
    encoder: bool,
    check: bool,
    tolerance: float,
    hq: dict[str, bool] | None,
) -> OnnxExport:
    """:func:`_export_all` once ``out`` exists: graphs are staged in ``tmp`` (a temporary folder in
    ``out``) and moved into ``out`` only when all of them were written and checked. ``hq``: a SAM-HQ
    model's decoder options (its folder then has no decoder split), None for SAM's decoder."""
    examples = _example_inputs(model)
    s = model.image_encoder.img_size
    result = OnnxExport(folder=out)

    graphs: list[tuple[str, nn.Module, tuple[torch.Tensor, ...], list[str], list[str], dict[str, dict[int, str]]]] = []
    if encoder:
        graphs.append(
            ("encoder", EncoderGraph(model), examples["encoder"], ["image"], ["image_embeddings"],
             {"image": {0: "height", 1: "width"}})
        )
    official_outputs = ["masks", "iou_predictions", "low_res_masks"]
    if return_extra_metrics:
        official_outputs = ["masks", "iou_predictions", "stability_scores", "areas", "low_res_masks"]
    decoder_graph: nn.Module
    if hq is not None:
        decoder_graph = HQDecoderGraph(
            model, hq["hq_token_only"], hq["multimask_output"], use_stability_score, return_extra_metrics
        )
    else:
        decoder_graph = OfficialDecoderGraph(model, return_single_mask, use_stability_score, return_extra_metrics)
    graphs.append(
        (
            "decoder",
            decoder_graph,
            examples["decoder"],
            ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size"],
            official_outputs,
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    )
    if hq is None:  # segany's decoder split (the onnxruntime predictor's prompts): SAM's decoder only
        cache_graph = ImageCacheGraph(model)
        with torch.no_grad():
            cache_example = cache_graph(*examples["image_cache"])
        # The low-resolution decoder uses a batch-1 cache shared by B prompts.
        lowres_args = tuple(cache_example) + examples["decoder_lowres"]
        graphs += [
            (
                "image_cache",
                cache_graph,
                examples["image_cache"],
                ["image_embeddings", "mask_input", "has_mask_input"],
                ["src", "k1", "v1", "q1"],
                {},
            ),
            (
                "decoder_lowres",
                LowResDecoderGraph(model),
                lowres_args,
                ["src", "k1", "v1", "q1", "point_coords", "point_labels"],
                ["low_res_masks", "iou_predictions"],
                {"point_coords": {0: "batch", 1: "num_points"}, "point_labels": {0: "batch", 1: "num_points"}},
            ),
        ]

    # Graphs are staged in tmp (see _export_all, which removes it) and moved into out once all passed.
    staged: dict[str, Path] = {}
    for name, module, args, inputs, outputs, dynamic in graphs:
        path = Path(tmp) / f"{name}.onnx"
        try:
            _export_graph(module, args, path, inputs, outputs, dynamic, opset, {"height": s, "width": s})
        except Exception as exc:  # exporter failures are long; keep the first line
            raise ExportError(f"exporting {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        if check:
            diff = _check(path, module, args, inputs)
            result.max_abs_diff[name] = diff
            if math.isnan(diff):
                raise ExportError(f"{name}.onnx: the model's outputs are not finite (NaN or inf weights?)")
            if diff > tolerance:
                raise ExportError(f"{name}.onnx differs from PyTorch by {diff:.2e} (> {tolerance:.0e})")
        staged[name] = path
    if int8_weights is not None:
        from segany.export.quantize import quantize_int8

        # The encoder and segany's fast decoder split (the graphs the onnxruntime predictor runs);
        # only products with constant weights become int8 (see segany.export.quantize).
        for name in [n for n in staged if n in ("encoder", "image_cache", "decoder_lowres")]:
            q = Path(tmp) / f"{name}.int8.onnx"
            quantize_int8(staged[name], q, int8_weights)
            staged[f"{name}.int8"] = q
    for name, path in staged.items():
        for produced in sorted(Path(tmp).glob(path.name + "*")):  # the graph and any weight side file
            os.replace(produced, out / produced.name)
        result.files[name] = out / path.name

    # File sizes let a reader (the export cache of segany.export.backend) spot a truncated graph.
    result.sizes = {name: path.stat().st_size for name, path in result.files.items()}
    manifest = _manifest(
        model, result, opset, quantize, int8_weights, return_single_mask, use_stability_score, return_extra_metrics, hq
    )
    from segany.io.files import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    result.files["manifest"] = out / MANIFEST
    return result


def _manifest(
    model: Sam,
    result: OnnxExport,
    opset: int,
    quantize: str | None,
    int8_weights: str | None,
    single: bool,
    stability: bool,
    extra: bool,
    hq: dict[str, bool] | None,
) -> dict[str, Any]:
    from segany.io.identity import model_id

    config = model.config.to_dict() if model.config is not None else {}
    return {
        "format": "segany-onnx",
        "version": FORMAT_VERSION,
        "model_id": model_id(model),  # checked by OnnxPredictor(decoder_model=...) and embeddings' users
        "opset": opset,
        "image_size": model.image_encoder.img_size,
        "embed_dim": model.prompt_encoder.embed_dim,
        # The encoder's output channels: embed_dim, plus SAM-HQ's early features.
        "embedding_channels": model.prompt_encoder.embed_dim + int(getattr(model.mask_decoder, "early_dim", 0)),
        "hq": hq,  # SAM-HQ's decoder options (hq_token_only, multimask_output), null for SAM's decoder
        "embedding_size": list(model.prompt_encoder.image_embedding_size),
        "mask_input_size": list(model.prompt_encoder.mask_input_size),
        "num_mask_tokens": model.mask_decoder.num_mask_tokens,
        "mask_threshold": model.mask_threshold,
        "image_format": model.image_format,
        "encoder_input": "uint8 (h, w, 3) RGB resized so that max(h, w) == image_size (Pillow bilinear)",
        "decoder_options": {
            "return_single_mask": single,
            "use_stability_score": stability,
            "return_extra_metrics": extra,
        },
        "quantize": quantize,
        "int8_weights": int8_weights,
        "files": {name: path.name for name, path in result.files.items()},
        "file_bytes": {path.name: result.sizes[name] for name, path in result.files.items() if name in result.sizes},
        "max_abs_diff_vs_torch": result.max_abs_diff,
        "config": config,
    }
