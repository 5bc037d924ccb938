"""Mixed precision of a training run: which autocast dtype (if any) the stages train under.

On CUDA, ``--no-fp16`` off means upstream's fp16 autocast with a gradient scaler (bf16 where the GPU
supports it, which needs no scaler).  On a CPU, bf16 autocast pays only where the cores multiply bf16
natively (AMX-BF16 or AVX512-BF16): measured on a 2-core Xeon with AMX, the ``small`` decoder's
forward+backward took 0.67x the fp32 time and the posterior encoder 0.69x; on an AVX2-only CPU bf16
is emulated and slower than fp32, so ``auto`` keeps fp32 there.  Weights, optimizer state and the
losses stay fp32 either way (autocast casts the operands of matmuls and convolutions only).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import CPU_PRECISIONS

log = logging.getLogger(__name__)

# /proc/cpuinfo flags (x86) and Features (aarch64) that mean native bf16 arithmetic
_NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 natively; ``cpuinfo`` is /proc/cpuinfo's text (read when None;
    False where it cannot be read, e.g. not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(_NATIVE_BF16_FLAGS & set(value.split()))
    return False


@dataclass(frozen=True)
class Precision:
    """The autocast of one run: ``dtype`` None trains in fp32."""

    device_type: str
    dtype: torch.dtype | None

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def resolve_precision(device: torch.device, cuda_fp16: bool, cpu_precision: str, cuda_bf16: bool = True,
                      cpuinfo: str | None = None) -> Precision:
    """The run's precision from the config's ``fp16`` (CUDA) and ``cpu_precision`` (CPU) switches;
    ``cuda_bf16`` False keeps fp16 on GPUs with bf16 too (the SoVITS stage, as upstream)."""
    if cpu_precision not in CPU_PRECISIONS:
        raise ValueError(f"cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, not {cpu_precision!r}")
    if device.type == "cuda":
        if not cuda_fp16:
            return Precision("cuda", None)
        bf16 = cuda_bf16 and torch.cuda.is_bf16_supported()
        return Precision("cuda", torch.bfloat16 if bf16 else torch.float16)
    if device.type != "cpu":
        return Precision(device.type, None)
    if cpu_precision == "bf16":
        return Precision("cpu", torch.bfloat16)
    if cpu_precision == "auto" and cpu_has_native_bf16(cpuinfo):
        log.info("training under bf16 autocast: this CPU multiplies bf16 natively (--cpu-precision fp32 to turn off)")
        return Precision("cpu", torch.bfloat16)
    return Precision("cpu", None)
