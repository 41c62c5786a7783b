"""Pick a predictor backend for a model, exporting it to ONNX when the onnxruntime backend needs it.

Lives in the export layer because it may export; the predictors themselves are in
:mod:`segany.inference`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from segany.errors import CheckpointError
from segany.inference.onnx_backend import MANIFEST, OnnxPredictor, is_export_folder
from segany.inference.options import InferenceOptions, OptionsError
from segany.inference.predictor import SamPredictor
from segany.io.identity import model_id

__all__ = ["predictor_for"]


def _cache_folder(checkpoint: Path) -> Path:
    """Where the ONNX export of a checkpoint file is kept between runs."""
    stat = checkpoint.stat()
    key = hashlib.sha256(f"{checkpoint.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segany" / "onnx"
    return base / f"{checkpoint.stem}-{key}"


def _int8_suits_this_cpu(folder: Path) -> bool:
    """The cached export has int8 graphs with the weight type this CPU wants (else export again)."""
    from segany.export.quantize import int8_weight_type

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Exports from before the weight type was recorded used unsigned weights.
    have = manifest.get("int8_weights") or ("u8" if manifest.get("quantize") == "int8" else None)
    return (folder / "encoder.int8.onnx").is_file() and have == int8_weight_type("auto")


def _cached_export_is_sound(folder: Path) -> bool:
    """Whether a cached export looks whole: its manifest parses and every graph it lists is there with
    the size the manifest recorded (a graph cut short by a full disk or a killed copy fails this).
    Cheap: nothing is loaded; a graph that is whole but corrupt is caught when onnxruntime loads it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
        sizes = manifest.get("file_bytes") or {}
        for name in files.values():
            if name == MANIFEST:
                continue
            size = (folder / name).stat().st_size
            if name in sizes and size != int(sizes[name]):
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _load_export(folder: Path, make: Any) -> OnnxPredictor:
    """``make(folder)``, with onnxruntime's refusal of a truncated or corrupt graph (``InvalidProtobuf``,
    ``Fail``, ...: exceptions outside segany's) turned into a :class:`CheckpointError` naming the folder."""
    try:
        return make(folder)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors derive from Exception only
        if type(exc).__module__.startswith("onnxruntime"):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                f"{folder}: an ONNX graph cannot be loaded (truncated or corrupt?): {first}"
            ) from None
        raise


def _exported_model_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("model_id")
    except (OSError, ValueError, AttributeError):
        return None


def predictor_for(
    model_or_path: Any,
    backend: Literal["torch", "onnx"] | None = None,
    *,
    options: InferenceOptions | None = None,
    precision: Literal["auto", "fp32", "int8"] | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    quantize: str | None = None,
    num_threads: int | None = None,
    decoder: str | None = None,
    decoder_precision: Literal["fp32", "bf16"] | None = None,
    compile_decoder: bool | None = None,
    encoder_precision: Literal["fp32", "bf16"] | None = None,
    compile_encoder: bool | None = None,
) -> SamPredictor | OnnxPredictor:
    """A predictor for ``model_or_path`` on the chosen backend.

    ``model_or_path``: a :class:`~segany.model.Sam`, a checkpoint file or preset name, ``None`` (the
    default model), or (ONNX only) a folder written by ``segany export``. For the ONNX backend, a model
    or checkpoint is exported first: into ``export_dir`` if given, else (checkpoint files) into a cache
    under ``~/.cache/segany/onnx`` that later calls reuse, else a temporary folder.
    ``quantize="int8"`` adds int8 graphs to a new export.

    ``options`` (:class:`~segany.inference.options.InferenceOptions`) holds every inference choice; the
    keywords are shortcuts that change it: ``backend``, ``precision`` (``onnx_precision``),
    ``num_threads``, ``decoder`` (a decoder name; ``"torch"`` means ``"auto"``: prompts in segany's
    PyTorch decoder when the model is at hand, which is faster on CPUs than the exported graphs;
    ``"onnx"``: the exported graphs), ``decoder_precision``, ``compile_decoder``, ``encoder_precision``
    and ``compile_encoder``. An option that does not apply to the backend is refused with one line.
    """
    from segany.model import Sam

    options = InferenceOptions.build(
        options,
        backend=backend,
        onnx_precision=precision,
        num_threads=num_threads,
        decoder="auto" if decoder == "torch" else decoder,
        decoder_precision=decoder_precision,
        compile_decoder=compile_decoder,
        encoder_precision=encoder_precision,
        compile_encoder=compile_encoder,
    )
    path = Path(model_or_path) if isinstance(model_or_path, (str, os.PathLike)) else None
    if options.backend == "torch":
        if path is not None and is_export_folder(path):
            raise CheckpointError(f"{path} is an ONNX export; use backend='onnx' or pass a checkpoint")
        from segany.build import load_model

        sam = model_or_path if isinstance(model_or_path, Sam) else load_model(model_or_path)
        return SamPredictor(sam, options=options)

    torch_decoder = options.decoder != "onnx"
    if path is not None and is_export_folder(path):
        for option, value, default in (
            ("decoder", options.decoder, ("auto", "onnx")),
            ("compile_decoder", options.compile_decoder, (False,)),
            ("decode_chunk", options.decode_chunk, (None,)),
        ):
            if value not in default:
                raise OptionsError(
                    f"{path} is an ONNX export: its decoder runs in onnxruntime; {option}={value!r} needs a checkpoint"
                )
        return _load_export(path, lambda f: OnnxPredictor(f, options=options))

    def model() -> Sam:
        if isinstance(model_or_path, Sam):
            return model_or_path
        from segany.build import load_model

        return load_model(model_or_path)

    def predictor(folder: Path, sam: Sam | None) -> OnnxPredictor:
        """The onnxruntime encoder of ``folder``, prompts in ``sam``'s PyTorch decoder (if given)."""
        return OnnxPredictor(folder, decoder_model=sam, options=options)

    folder = Path(export_dir) if export_dir is not None else None
    if folder is None and path is not None and path.is_file():
        folder = _cache_folder(path)
        if is_export_folder(folder) and (quantize is None or _int8_suits_this_cpu(folder)):
            sam = model() if torch_decoder else None
            same_model = sam is None or _exported_model_id(folder) == model_id(sam)
            if same_model and _cached_export_is_sound(folder):
                try:
                    return _load_export(folder, lambda f: predictor(f, sam))
                except CheckpointError:
                    pass
            if same_model:
                # A cache is ours to repair: a cut or corrupt graph (a full disk, a killed copy) is exported again.
                print(f"segany: the cached ONNX export {folder} is damaged; exporting again", file=sys.stderr)
            # else: exported from other weights (or before exports recorded them): export again.
            shutil.rmtree(folder, ignore_errors=True)
    sam = model()
    temporary = folder is None
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="segany-onnx-"))
    from segany.export.onnx import export_onnx

    try:
        export_onnx(sam, folder, quantize=quantize)
        # onnxruntime holds the graphs in memory once the sessions exist, so a temporary export can go now.
        return _load_export(folder, lambda f: predictor(f, sam if torch_decoder else None))
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
