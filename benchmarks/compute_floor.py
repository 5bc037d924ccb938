"""The compute floor of prefill and decoder+vocoder: the model's FLOPs over the rate this machine reaches.

Prefill and the decoder+vocoder are compute-bound, so the figure to beat is FLOPs / achievable FLOP/s:

* the machine's rate is measured in the same run, with the benchmark's thread count, on the two op
  kinds these stages are made of: a large float32 matmul (``MATMUL``) and a Conv1d with the vocoder's
  shape at its widest stage (``CONV1D``); the best of a few repeats (a floor, not a typical figure);
* the model's FLOPs are counted by torch's ``FlopCounterMode`` on the torch model of the bundle, on
  the same inputs the timings use, split into convolutions and everything else (matmuls, attention);
* floor_ms = conv FLOPs / conv rate + other FLOPs / matmul rate.
"""
from __future__ import annotations

import time

import torch

MATMUL = (2048, 2048, 2048)  # M, K, N
CONV1D = (1, 256, 256, 7, 8192)  # batch, in channels, out channels, kernel, frames (vocoder's first upsampled stage)
CONV_OPS = ("convolution", "conv1d", "conv_transpose1d", "_convolution")


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocation, kernel choice, thread wake-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def machine_gflops(repeats: int = 5) -> dict:
    m, k, n = MATMUL
    a, b = torch.randn(m, k), torch.randn(k, n)
    matmul = 2 * m * k * n / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9
    bs, cin, cout, kernel, frames = CONV1D
    conv = torch.nn.Conv1d(cin, cout, kernel, padding=kernel // 2)
    x = torch.randn(bs, cin, frames)
    conv_rate = 2 * bs * cin * cout * kernel * frames / _best_seconds(lambda: conv(x), repeats) / 1e9
    return {"matmul_gflops": matmul, "conv1d_gflops": conv_rate, "matmul_shape": list(MATMUL),
            "conv1d_shape": {"batch": bs, "in": cin, "out": cout, "kernel": kernel, "frames": frames}}


def count_flops(fn) -> dict:
    """FLOPs of one call of ``fn`` as torch counts them: {"conv": ..., "other": ..., "total": ...}."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn()
    conv = other = 0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        if any(name in str(op) for name in CONV_OPS):
            conv += flops
        else:
            other += flops
    return {"conv": conv, "other": other, "total": conv + other}


def floor_ms(flops: dict, rates: dict) -> float:
    return 1e3 * (flops["conv"] / (rates["conv1d_gflops"] * 1e9) + flops["other"] / (rates["matmul_gflops"] * 1e9))
