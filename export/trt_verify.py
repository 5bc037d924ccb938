"""Verification of TensorRT engines against PyTorch (runs only where ``--trt`` can: a CUDA GPU).

Same measures and FP16 tolerances as the ONNX verification (:mod:`export.verify`): per-engine
errors on random sizes inside each engine's profile (the decode engine at its static cache
length), 50 greedy steps through the native TensorRT GPT backend, and decoder+vocoder SNR.
"""
from __future__ import annotations

import logging

import torch

from export import verify as V
from export.graphs import TRT_CACHE_LEN

log = logging.getLogger(__name__)


class _EngineSession:
    """Adapts a TrtEngine to the ``run(dict) -> list`` shape compare_graph expects."""

    def __init__(self, engine):
        self.engine = engine

    def run(self, feeds):
        return [t.float().cpu() if t.is_floating_point() else t.cpu() for t in self.engine.run(feeds)]


def verify_engines(bundle, engines: dict, models, consts: dict, seed: int) -> dict:
    """engines: graph -> (plan path, build info).  Returns the ``trt`` section of verify.json."""
    from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
    from gsv.backends.trt_backend import TrtAudioBackend, TrtEngine, TrtGPTBackend

    device = torch.device("cuda")
    tol = V.TOLERANCES["fp16"]
    loaded = {g: TrtEngine(p, device) for g, (p, _) in engines.items()}
    cases = [dict(c, cache=TRT_CACHE_LEN) for c in V.size_cases(seed)]
    graphs = {g: V.compare_graph(g, _EngineSession(e), models, consts, cases, tol, seed) for g, e in loaded.items()}
    gpt, sovits = models.gpt, models.sovits
    greedy = audio = None
    if {"gpt_prefill", "gpt_decode"} <= loaded.keys():
        greedy = V.greedy_check(TorchGPTBackend(gpt), TrtGPTBackend(gpt.cfg, loaded["gpt_prefill"], loaded["gpt_decode"]), seed)
    if {"sovits_window", "vocoder"} <= loaded.keys():
        audio = V.audio_snr(TorchAudioBackend(sovits), TrtAudioBackend(sovits.cfg, loaded["sovits_window"], loaded["vocoder"]), seed)
    out = V.summarize("fp16", graphs, greedy, audio)
    log.info("TensorRT verification: %s", "passed" if out["passed"] else "; ".join(out["failures"]))
    return out



