"""What this machine's CPU is and which 8-bit instructions it has: INT8 speedups (and whether the 8-bit kernels risk
saturating) depend on them, so exports and results record them. Light: reads /proc/cpuinfo only."""

from __future__ import annotations

from pathlib import Path

# The CPU features ONNX Runtime's 8-bit kernels use.
INT8_INSTRUCTIONS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo_field(text: str, key: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key)), "")


def int8_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Returns which of INT8_INSTRUCTIONS this CPU has (empty where /proc/cpuinfo is not readable)."""
    try:
        flags = _cpuinfo_field(cpuinfo.read_text(), "flags").split()
    except OSError:
        return []
    return [flag for flag in INT8_INSTRUCTIONS if flag in flags]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Returns the CPU's model name ('' where /proc/cpuinfo is not readable)."""
    try:
        return _cpuinfo_field(cpuinfo.read_text(), "model name")
    except OSError:
        return ""


# Instructions with 8-bit dot products: without them ONNX Runtime's U8S8 kernels can saturate (it warns), so weights
# are then quantized to 7 bits (reduce_range).
DOT_PRODUCTS = ("avx512_vnni", "avx_vnni", "amx_int8")


def has_int8_dot_products(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Returns whether the CPU has 8-bit dot-product instructions (VNNI or AMX)."""
    return any(flag in DOT_PRODUCTS for flag in int8_instructions(cpuinfo))
