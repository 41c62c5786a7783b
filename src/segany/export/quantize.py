"""int8 quantisation of exported graphs with onnxruntime's dynamic quantiser.

Weights of matrix multiplications are stored as 8-bit integers, one scale per output channel;
activations are quantised to uint8 on the fly, per tensor, at run time. No calibration data is needed,
so the result does not depend on any data set. Convolutions and the attention products between two
activations stay float: onnxruntime's integer convolutions are slower than its float ones, and
activation x activation products gain little while costing accuracy.

Weight signedness depends on the CPU that will run the graphs (``weights="auto"``: this one). With an
int8 dot-product instruction (x86 VNNI or AMX) onnxruntime multiplies uint8 activations by int8 weights
exactly and fast (several times faster than float32, and faster than with uint8 weights; see
benchmarks/RESULTS.md).
Without one, its uint8 x int8 kernel can saturate 16-bit intermediate sums (errors of ~10% on a ViT-B
layer with per-channel scales), so weights are unsigned (uint8 x uint8 does not saturate).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from segany.inference.onnx_backend import cpu_has_int8_dot

__all__ = ["quantize_int8", "int8_weight_type"]

WeightType = Literal["auto", "s8", "u8"]


def int8_weight_type(weights: WeightType = "auto") -> Literal["s8", "u8"]:
    """Resolve ``"auto"``: signed weights where this CPU has an int8 dot product, else unsigned."""
    if weights not in ("auto", "s8", "u8"):
        raise ValueError(f"int8 weights must be 'auto', 's8' or 'u8', not {weights!r}")
    if weights == "auto":
        return "s8" if cpu_has_int8_dot() else "u8"
    return weights


def quantize_int8(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], weights: WeightType = "auto"
) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX model ``src`` to ``dst``.

    ``weights``: ``"s8"`` (signed, for CPUs with VNNI/AMX), ``"u8"`` (unsigned, safe everywhere) or
    ``"auto"`` (:func:`int8_weight_type`: whichever suits this CPU).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    weight_type = int8_weight_type(weights)
    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Shape inference and graph clean-up let the quantiser see every weight product.
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the graph as it is
            prepared = Path(src)
        model = onnx.load(str(prepared))
        # Only products with a constant weight matrix: activation x activation products stay float, and
        # so do products with a constant vector (the quantiser gets their output shape wrong).
        weights = {init.name for init in model.graph.initializer if len(init.dims) >= 2}
        nodes = [
            n.name
            for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights
        ]
        staged = Path(tmp) / dst.name
        if nodes:
            quantize_dynamic(
                str(prepared),
                str(staged),
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_quantize=nodes,
                per_channel=True,
                weight_type=QuantType.QInt8 if weight_type == "s8" else QuantType.QUInt8,
            )
        else:
            onnx.save(model, str(staged))
        del model
        os.replace(staged, dst)
    return dst
