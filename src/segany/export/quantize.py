"""int8 quantisation of exported graphs with onnxruntime's dynamic quantiser.

Weights of matrix multiplications are stored as 8-bit integers, one scale per output channel;
activations are quantised to uint8 on the fly, per tensor, at run time. No calibration data is needed,
so the result does not depend on any data set. Convolutions and the attention products between two
activations stay float: onnxruntime's integer convolutions are slower than its float ones, and
activation x activation products gain little while costing accuracy.

Weights are unsigned (uint8): on x86 CPUs without VNNI instructions, onnxruntime's uint8 x int8 kernel
can saturate 16-bit intermediate sums (errors of ~10% on a ViT-B layer with per-channel scales),
while uint8 x uint8 does not.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["quantize_int8"]


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write a dynamically int8-quantised copy of the ONNX model ``src`` to ``dst``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            # Shape inference and graph clean-up let the quantiser see every weight product.
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the graph as it is
            prepared = Path(src)
        model = onnx.load(str(prepared))
        weights = {init.name for init in model.graph.initializer}
        # Only products with a constant weight operand: activation x activation products stay float.
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
                weight_type=QuantType.QUInt8,
            )
        else:
            onnx.save(model, str(staged))
        del model
        os.replace(staged, dst)
    return dst
