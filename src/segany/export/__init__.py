"""Export to other runtimes: ONNX graphs for onnxruntime, browsers and the official tools.

See :func:`segany.export.onnx.export_onnx` (and ``segany export --help``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def __getattr__(name: str) -> Any:  # lazy: keep ``import segany.export`` free of torch start-up cost
    if name == "export_onnx":
        from segany.export.onnx import export_onnx

        return export_onnx
    raise AttributeError(f"module 'segany.export' has no attribute {name!r}")
