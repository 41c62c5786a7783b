"""What this CPU multiplies fast, read from ``/proc/cpuinfo``: picks int8 weight types and bfloat16 paths."""

from __future__ import annotations

import functools
import platform

__all__ = ["cpu_flags", "cpu_has_bf16", "cpu_has_int8_dot"]

# x86 instruction sets that multiply uint8 by int8 straight into 32-bit sums (no 16-bit saturation).
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# x86 instruction sets with bfloat16 dot products; without them PyTorch emulates bfloat16 products.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this CPU; empty on other architectures or when unreadable."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has an int8 dot-product instruction (x86 VNNI or AMX).

    On such CPUs onnxruntime multiplies signed int8 weights ~2.5x faster than uint8 ones and without
    the saturation of the AVX2 fallback, so int8 exports use signed weights there. False when unknown.
    """
    return not _INT8_DOT_FLAGS.isdisjoint(cpu_flags())


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 dot products (x86 AVX-512 BF16 or AMX), which make bfloat16 matrix
    products 2-2.5x faster than float32 ones in PyTorch. False when unknown."""
    return not _BF16_FLAGS.isdisjoint(cpu_flags())
