"""Which arithmetic an engine runs in: ``auto`` (bf16 where the CPU computes it
natively, :mod:`service.machine`; INT8 where the version's INT8 graph passed its gate
and was measured faster on this CPU: :mod:`service.engines.openvino`), ``fp32``,
``bf16`` or ``int8``."""

from __future__ import annotations

from service.errors import InputError
from service.machine import CpuInfo

PRECISIONS = ("auto", "fp32", "bf16", "int8")


def choose_precision(requested: str, cpu: CpuInfo) -> str:
    """``auto``: bf16 where the CPU has it natively, fp32 elsewhere. Forcing bf16 on a
    CPU without it is refused: the engine would emulate it, slower than fp32."""
    if requested not in PRECISIONS:
        raise InputError(f"unknown precision '{requested}'; known: {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if cpu.bf16 else "fp32"
    if requested == "bf16" and not cpu.bf16:
        raise InputError(
            f"bf16 needs a CPU with AVX512-BF16 or AMX, and this one ({cpu.model}) has neither; use --precision fp32 (or auto)"
        )
    return requested
