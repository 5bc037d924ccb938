"""CPU mixed precision: bf16 autocast only where the CPU multiplies bf16 natively (or when asked),
the stages' matmuls/convolutions run in bf16 under it, and weights and losses stay fp32."""
from __future__ import annotations

import math

import pytest
import torch

from tests.trainer.conftest import tiny_cfg

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
NEOVERSE = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    from trainer.precision import cpu_has_native_bf16

    assert cpu_has_native_bf16(SAPPHIRE) and cpu_has_native_bf16(NEOVERSE)
    assert not cpu_has_native_bf16(AVX2_ONLY) and not cpu_has_native_bf16("")
    assert not cpu_has_native_bf16("flags\t: avx512f avx512bw avx512vl\n")  # AVX-512 alone emulates bf16


def test_auto_picks_bf16_on_cpus_with_native_bf16_only():
    from trainer.precision import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision(cpu, True, "auto", cpuinfo=SAPPHIRE).dtype == torch.bfloat16
    assert resolve_precision(cpu, True, "auto", cpuinfo=AVX2_ONLY).dtype is None
    assert resolve_precision(cpu, True, "bf16", cpuinfo=AVX2_ONLY).dtype == torch.bfloat16  # asked for
    assert resolve_precision(cpu, True, "fp32", cpuinfo=SAPPHIRE).dtype is None
    assert not resolve_precision(cpu, True, "bf16").needs_grad_scaler
    with pytest.raises(ValueError, match="cpu_precision"):
        resolve_precision(cpu, True, "fp16")


def test_cuda_keeps_upstream_fp16_for_sovits_and_bf16_where_supported_for_gpt(monkeypatch):
    from trainer.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    gpu = torch.device("cuda", 0)
    gpt, sovits = resolve_precision(gpu, True, "auto"), resolve_precision(gpu, True, "auto", cuda_bf16=False)
    assert gpt.dtype == torch.bfloat16 and not gpt.needs_grad_scaler
    assert sovits.dtype == torch.float16 and sovits.needs_grad_scaler
    assert resolve_precision(gpu, False, "bf16").dtype is None  # --no-fp16; the CPU switch is not the GPU's


def _output_dtypes(run):
    """dtypes of every Conv1d/Linear output while ``run()`` trains."""
    seen = set()

    def hook(module, args, out):
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Linear)) and isinstance(out, torch.Tensor):
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


@pytest.mark.parametrize("stage", ["gpt", "sovits"])
def test_bf16_cpu_training_runs_the_layers_in_bf16_and_keeps_fp32_weights(exp_copy, stage):
    from trainer.checkpointing import load_weights
    from trainer.run import train

    extra = {"grad_accum": 1} if stage == "gpt" else {"vocoder_steps": 1, "vocoder_segment_frames": 24}
    seen, r = _output_dtypes(lambda: train(stage, exp_copy, tiny_cfg(stage, max_steps=2, cpu_precision="bf16",
                                                                     **extra)))
    assert torch.bfloat16 in seen
    assert all(math.isfinite(v) for row in r.train_log for v in row.values())
    weights = load_weights(exp_copy / f"train/{stage}/last.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_fp32_cpu_training_stays_fp32(exp_copy):
    from trainer.run import train

    seen, _ = _output_dtypes(lambda: train("sovits", exp_copy, tiny_cfg("sovits", max_steps=1, cpu_precision="fp32")))
    assert seen == {torch.float32}
