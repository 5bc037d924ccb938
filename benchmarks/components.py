"""``gsv-bench components``: per-component speed of the backends on one bundle, in one run.

For each backend (through the same interface the engine uses, KV-cache writes included):

* ``gpt_decode_ms_per_token``: one decode step over B rows with ``--context`` positions in the
  cache, divided by B (B = 1 and 8); ``gpt_decode_ms_per_step`` is the undivided step time.  Every
  timed step runs at the same context (the cache length is rolled back after each step);
* ``prefill_ms_200``: prefill of one row of 200 positions (100 phones + 100 prompt tokens);
* ``decoder_vocoder_ms_per_audio_second``: sovits decoder + vocoder of a 2 s window (50 tokens);
* ``compute_floor``: the FLOPs of prefill and decoder+vocoder over the matmul / Conv1d rates this
  machine reaches in the same run (benchmarks.compute_floor), and per backend ``*_vs_compute_floor``.

All backends are opened first and measured **interleaved** (round after round, each backend once
per round), so a slow phase of a shared machine hits every backend alike.  Between backends the
benchmark pauses ``SETTLE_S``: torch's OpenMP threads keep spinning for milliseconds after a parallel
op and would otherwise take the cores from the next backend's first step.

Memory bandwidth and the decode floor
-------------------------------------
A batch-1 decode step must read every weight once, so it cannot beat parameter bytes / read
bandwidth (``bandwidth_floor_ms``).  The read bandwidth is measured as it is achievable by code on
this machine, not as one allocator happens to give it:

* a 1 GiB float32 buffer (32x the largest cache here; ``machine.l3_bytes``) that is read once per
  sample by ``torch.sum`` with the benchmark's thread count; bytes = buffer bytes (each read once,
  nothing written);
* the buffer is 2 MiB-aligned and advised as transparent huge pages (Linux ``madvise``).  On a
  virtual machine 4 KiB pages cost nested page walks: measured here 45-50 GB/s on 4 KiB pages
  against ~80 GB/s on huge pages for the same read in the same minute.  The 4 KiB figure is still
  reported (``memory_bandwidth_4k_pages_gbps``); the floor uses the higher, huge-page figure;
* the bandwidth of this VM swings between ~45 and ~85 GB/s from one minute to the next (other
  tenants), so a floor measured before the decode timings is not comparable with them.  The goal
  ratio is therefore measured **paired**: each timed batch-1 step is followed by a bandwidth
  sample, and ``gpt_decode_b1_vs_floor.ratio`` is the median over pairs of
  step_ms / (param_bytes / sample_bandwidth);
* ``memory_copy_gbps`` (``y.copy_(x)``) counts read + write bytes (2x the buffer, STREAM's
  convention); with write-allocate the bus carries 3x, so it under-reports traffic and is
  reported for reference only.

The machine's load average is recorded at start and end.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import platform
import statistics
import time

import torch

from gsv import constants as C

log = logging.getLogger(__name__)

GOALS = {  # from the export issue
    "ort_fp32_decode_b1_vs_floor_max": 1.3,
    "int8_vs_fp32_decode_speedup_min": 2.0,
    "ort_vs_torch_decoder_vocoder_speedup_min": 1.5,
}
SETTLE_S = 0.02  # pause between backends / around bandwidth samples (spinning threads go idle)
HUGE_PAGE = 2 << 20


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle (with an ONNX export for the onnx backends)")
    p.add_argument("--backends", default="torch,onnx,onnx-int8", help="comma-separated backend names")
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and ORT (default: all cores)")
    p.add_argument("--device", default="cpu", help="device of the torch and ONNX backends: cpu, cuda[:N] "
                                                   "(ORT CUDA provider), tensorrt[:N] (ORT TensorRT provider)")
    p.add_argument("--batches", default="1,8", help="decode batch sizes")
    p.add_argument("--context", type=int, default=200, help="cache positions per row during the timed decode steps")
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per backend and batch size")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of prefill and decoder+vocoder")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--audio-tokens", type=int, default=50, help="semantic tokens per decoder+vocoder call (25 = 1 s)")
    p.add_argument("--probe-gib", type=float, default=1.0, help="size of the bandwidth probe buffer")


# ------------------------------------------------------------------------------------------ bandwidth
def _advise_huge_pages(t: torch.Tensor) -> bool:
    """Ask Linux for transparent huge pages under ``t`` (MADV_HUGEPAGE); False where unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = t.data_ptr()
        length = (t.numel() * t.element_size()) // HUGE_PAGE * HUGE_PAGE
        return libc.madvise(start, length, 14) == 0  # MADV_HUGEPAGE
    except (OSError, AttributeError):
        return False


def _aligned_buffer(numel: int) -> torch.Tensor:
    raw = torch.empty(numel + HUGE_PAGE // 4)
    offset = (-raw.data_ptr() % HUGE_PAGE) // 4
    return raw[offset: offset + numel]


class BandwidthProbe:
    """One-pass read bandwidth of a buffer far larger than the caches (see the module docstring)."""

    def __init__(self, threads: int, gib: float = 1.0):
        self.threads = threads
        numel = int(gib * (1 << 30)) // 4
        self.buf = _aligned_buffer(numel)
        self.huge_pages = _advise_huge_pages(self.buf)
        self.buf.fill_(1.0)  # first touch after the advice, so the pages are allocated huge
        self.small_pages = torch.empty(numel)  # torch's allocator, no advice: 4 KiB pages
        self.small_pages.fill_(1.0)
        self.nbytes = numel * 4

    def _timed(self, fn) -> float:
        torch.set_num_threads(self.threads)
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        time.sleep(SETTLE_S)
        return dt

    def read_gbps(self, buf: torch.Tensor | None = None) -> float:
        buf = self.buf if buf is None else buf
        return self.nbytes / self._timed(buf.sum) / 1e9

    def copy_gbps(self) -> float:
        return 2 * self.nbytes / self._timed(lambda: self.small_pages.copy_(self.buf)) / 1e9

    def summary(self, repeats: int = 7) -> dict:
        self.read_gbps()  # warm-up
        read, small, copy = [], [], []
        for _ in range(repeats):
            read.append(self.read_gbps())
            small.append(self.read_gbps(self.small_pages))
            copy.append(self.copy_gbps())
        return {"read_gbps": statistics.median(read), "read_gbps_max": max(read),
                "read_4k_pages_gbps": statistics.median(small), "copy_gbps": statistics.median(copy),
                "huge_pages_advised": self.huge_pages, "buffer_bytes": self.nbytes, "samples": repeats}


# ------------------------------------------------------------------------------------------ machine
def machine_info(threads: int) -> dict:
    import numpy

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        info["l3_bytes"] = os.sysconf("SC_LEVEL3_CACHE_SIZE") or None
    except (ValueError, OSError):
        info["l3_bytes"] = None
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


# ------------------------------------------------------------------------------------------ timing
def _settle() -> None:
    time.sleep(SETTLE_S)


def _interleaved_ms(fns: dict, repeats: int, warmup: int, wake: bool = False) -> dict[str, list[float]]:
    """Each round runs every backend's ``fn`` once (after a settle); returns name -> times in ms.

    ``wake``: run ``fn`` once untimed right before the timed call.  A decode step is one of a
    back-to-back loop in service; after the settle pause the runtime's threads are asleep, and the
    first step pays their wake-up (measured: ORT INT8 batch 1 went from 4.5 to 8-14 ms median).
    """
    times: dict[str, list[float]] = {n: [] for n in fns}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _settle()
            if wake:
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def _prefill_inputs(cfg, batch: int, phones: int, prompt: int, gen):
    return (torch.randint(0, cfg.phoneme_vocab_size, (batch, phones), generator=gen), torch.full((batch,), phones),
            torch.randn(batch, cfg.bert_dim, phones, generator=gen), torch.randint(0, cfg.eos, (batch, prompt), generator=gen),
            torch.full((batch,), prompt))


class _DecodeLoop:
    """One backend's decode step over ``b`` rows at a fixed context (the new position is written,
    then the lengths roll back, so every timed step sees the same cache)."""

    def __init__(self, gpt, cfg, b: int, context: int, gen):
        half = context // 2
        _, k, v, lens = gpt.prefill(*_prefill_inputs(cfg, b, context - half, half, gen))
        self.gpt, self.cache = gpt, gpt.new_cache()
        self.cache.add_rows(k, v, lens)
        self.cache.ensure_step()
        self.tokens = torch.randint(0, cfg.eos, (b,), generator=gen)
        self.positions = torch.full((b,), half)

    def __call__(self) -> None:
        c = self.cache
        _, nk, nv = self.gpt.decode_step(self.tokens, self.positions, c.k, c.v, c.kv_lens())
        c.append(nk, nv)
        c.lengths -= 1


@torch.inference_mode()
def _device_for(backend: str, device: str) -> str:
    """--device for torch and the ONNX backends; TensorRT always runs on a CUDA device."""
    if backend == "trt":
        return device if device.startswith("cuda") else "cuda"
    return device


def bench_all(bundle, names: list[str], args, threads: int, probe: BandwidthProbe, param_bytes: int) -> dict:
    from gsv.backends import open_backends

    cfg, scfg = bundle.gpt_config, bundle.sovits_config
    opened = {n: open_backends(bundle, n, device=_device_for(n, args.device), threads=threads) for n in names}
    out: dict = {n: {} for n in names}
    gen = torch.Generator().manual_seed(0)
    inputs = _prefill_inputs(cfg, 1, 100, 100, gen)
    t = _interleaved_ms({n: (lambda g=g: g.prefill(*inputs)) for n, (g, _) in opened.items()}, args.repeats, args.warmup)
    for n in names:
        out[n]["prefill_ms_200"] = statistics.median(t[n])
    for n in names:
        out[n].update(gpt_decode_ms_per_token={}, gpt_decode_ms_per_step={}, gpt_decode_ms_per_step_min={})
    for b in (int(x) for x in args.batches.split(",")):
        loops = {n: _DecodeLoop(g, cfg, b, args.context, gen) for n, (g, _) in opened.items()}
        t = _interleaved_ms(loops, args.steps, args.warmup, wake=True)
        for n in names:
            ms = statistics.median(t[n])
            out[n]["gpt_decode_ms_per_step"][str(b)] = ms
            out[n]["gpt_decode_ms_per_token"][str(b)] = ms / b
            out[n]["gpt_decode_ms_per_step_min"][str(b)] = min(t[n])  # the least disturbed step
        del loops
    # batch-1 steps paired with bandwidth samples: the floor of the same minute
    loops = {n: _DecodeLoop(g, cfg, 1, args.context, gen) for n, (g, _) in opened.items()}
    pairs: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for _ in range(args.warmup):
        for loop in loops.values():
            loop()
    for _ in range(args.steps):
        for n, loop in loops.items():
            _settle()
            loop()  # wakes the runtime's threads: the timed step is a step of a running decode loop
            t0 = time.perf_counter()
            loop()
            ms = 1e3 * (time.perf_counter() - t0)
            pairs[n].append((ms, probe.read_gbps()))
    for n, pr in pairs.items():
        bw = statistics.median(g for _, g in pr)
        out[n]["gpt_decode_b1_vs_floor"] = {
            "step_ms": statistics.median(ms for ms, _ in pr), "bandwidth_gbps": bw, "floor_ms": param_bytes / bw / 1e6,
            "ratio": statistics.median(ms / (param_bytes / g / 1e6) for ms, g in pr), "pairs": len(pr)}
    del loops
    tokens = args.audio_tokens
    codes = torch.randint(0, scfg.codebook_size, (1, tokens), generator=gen)
    phones = torch.randint(0, scfg.n_symbols, (1, 40), generator=gen)
    ge = 0.1 * torch.randn(1, scfg.gin_channels, 1, generator=gen)
    noise = 0.5 * torch.randn(1, scfg.inter_channels, 2 * tokens, generator=gen)
    call = (codes, torch.tensor([tokens]), phones, torch.tensor([40]), ge, noise)
    t = _interleaved_ms({n: (lambda a=a: a.decode_audio(*call)) for n, (_, a) in opened.items()}, args.repeats, args.warmup)
    for n in names:
        out[n]["decoder_vocoder_ms_per_audio_second"] = statistics.median(t[n]) / (tokens / 25.0)
    _streaming_window(opened, names, scfg, gen, args, out)
    out["_flops"] = _model_flops(opened, bundle, threads, inputs, call, tokens)
    del opened
    gc.collect()
    return out


def _streaming_window(opened: dict, names, scfg, gen, args, out: dict) -> None:
    """A mid-segment window of the default latency mode, decoded as the engine does (decoder context,
    vocoder context, new tokens, lookahead), with the vocoder rendering every frame and only the kept
    span: ms per emitted audio second each (``streaming_window``)."""
    from gsv.session import LATENCY_POLICIES

    p = LATENCY_POLICIES["balanced"]
    new = 15  # a dry stream's third window (chunk sizes 12, 10, 15, ...)
    w = p.steady_window(new)
    tokens = w.w1 - w.w0
    codes = torch.randint(0, scfg.codebook_size, (1, tokens), generator=gen)
    phones = torch.randint(0, scfg.n_symbols, (1, 40), generator=gen)
    ge = 0.1 * torch.randn(1, scfg.gin_channels, 1, generator=gen)
    noise = 0.5 * torch.randn(1, scfg.inter_channels, 2 * tokens, generator=gen)
    vocode_from = torch.tensor([w.vocode_start - w.w0])
    keep = torch.tensor([p.kept_tokens(w)])
    call = (codes, torch.tensor([tokens]), phones, torch.tensor([40]), ge, noise, 1.0, vocode_from)
    runs = {}
    for n, (_, a) in opened.items():
        runs[(n, "whole_rows")] = lambda a=a: a.decode_audio(*call)
        runs[(n, "trimmed")] = lambda a=a: a.decode_audio(*call, keep)
    t = _interleaved_ms(runs, args.repeats, args.warmup)
    for n in names:
        whole, trimmed = statistics.median(t[(n, "whole_rows")]), statistics.median(t[(n, "trimmed")])
        out[n]["streaming_window"] = {
            "new_tokens": new, "window_tokens": tokens, "vocoded_tokens": tokens - int(vocode_from),
            "trims_vocoder": opened[n][1].trims_vocoder,
            "whole_rows_ms_per_emitted_second": whole / (new / 25.0),
            "trimmed_ms_per_emitted_second": trimmed / (new / 25.0), "trimmed_vs_whole_rows": trimmed / whole}


def _model_flops(opened: dict, bundle, threads: int, prefill_inputs, decode_call, tokens: int) -> dict:
    """FLOPs of the timed prefill and decoder+vocoder calls, counted on the torch model."""
    from benchmarks.compute_floor import count_flops
    from gsv.backends import open_backends

    g, a = opened["torch"] if "torch" in opened else open_backends(bundle, "torch", device="cpu", threads=threads)
    per_second = {k: v / (tokens / 25.0) for k, v in count_flops(lambda: a.decode_audio(*decode_call)).items()}
    return {"prefill_200": count_flops(lambda: g.prefill(*prefill_inputs)), "decoder_vocoder_per_audio_second": per_second}


def _compute_floor(result: dict, rates: dict, flops: dict) -> None:
    from benchmarks.compute_floor import floor_ms

    floors = {"prefill_ms_200": floor_ms(flops["prefill_200"], rates),
              "decoder_vocoder_ms_per_audio_second": floor_ms(flops["decoder_vocoder_per_audio_second"], rates)}
    result["compute_floor"] = {"machine": rates, "flops": flops, "floor_ms": floors}
    for r in result["backends"].values():
        for key, floor in floors.items():
            r[f"{key.rsplit('_ms', 1)[0]}_vs_compute_floor"] = r[key] / floor


def run(args) -> int:
    from gsv.backends.onnx_backend import default_threads
    from gsv.checkpoint.bundle import Bundle

    bundle = Bundle.open(args.bundle)
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    result: dict = {"machine": machine_info(threads), "load_average_start": list(os.getloadavg())}
    cfg = bundle.gpt_config
    result["architecture"] = {"gpt": {"n_layer": cfg.n_layer, "hidden_dim": cfg.hidden_dim, "n_head": cfg.n_head},
                              "full_size": cfg.n_layer == 24 and cfg.hidden_dim == 512}
    probe = BandwidthProbe(threads, args.probe_gib)
    bw = probe.summary()
    result["bandwidth"] = bw
    result["memory_bandwidth_gbps"] = bw["read_gbps"]
    result["memory_bandwidth_4k_pages_gbps"] = bw["read_4k_pages_gbps"]
    result["memory_copy_gbps"] = bw["copy_gbps"]
    sd = bundle.gpt_state_dict()
    param_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    # a decode step gathers one row of the audio embedding and never touches the text side
    unused = ("ar_text_embedding.", "bert_proj.", "ar_audio_embedding.")
    decode_bytes = sum(t.numel() * t.element_size() for k, t in sd.items() if not k.startswith(unused))
    del sd
    result["gpt_param_bytes"] = param_bytes
    result["gpt_decode_weight_bytes"] = decode_bytes
    result["bandwidth_floor_ms"] = param_bytes / (bw["read_gbps"] * 1e9) * 1e3
    result["settings"] = {k: getattr(args, k) for k in ("context", "steps", "repeats", "warmup", "audio_tokens", "batches")}
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    log.info("benchmarking %s (interleaved)", ", ".join(names))
    from benchmarks.compute_floor import machine_gflops

    rates_before = machine_gflops()
    backends = bench_all(bundle, names, args, threads, probe, param_bytes)
    flops = backends.pop("_flops")
    rates_after = machine_gflops()
    # the better of the two (before and after the timings): the floor is what the machine can do
    rates = {k: max(rates_before[k], rates_after[k]) if k.endswith("gflops") else v for k, v in rates_before.items()}
    result["backends"] = backends
    _compute_floor(result, rates, flops)
    # the keys, per backend, at the top level too
    for key in ("gpt_decode_ms_per_token", "prefill_ms_200", "decoder_vocoder_ms_per_audio_second"):
        result[key] = {n: r[key] for n, r in backends.items()}
    result["goals"] = _goals(result)
    result["load_average_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    return 0


def _goals(r: dict) -> dict:
    b = r["backends"]
    g: dict = {}
    if "onnx" in b:
        ratio = b["onnx"]["gpt_decode_b1_vs_floor"]["ratio"]
        g["ort_fp32_decode_b1_vs_floor"] = {"value": ratio, "goal_max": GOALS["ort_fp32_decode_b1_vs_floor_max"],
                                            "met": ratio <= GOALS["ort_fp32_decode_b1_vs_floor_max"],
                                            "method": "median over pairs (step, bandwidth sample right after)",
                                            # the same step timed in the interleaved loop, over the floor of the run's start
                                            "interleaved_vs_start_floor": b["onnx"]["gpt_decode_ms_per_step"]["1"]
                                            / r["bandwidth_floor_ms"]}
    if "onnx" in b and "onnx-int8" in b:
        s = b["onnx"]["gpt_decode_ms_per_step"]["1"] / b["onnx-int8"]["gpt_decode_ms_per_step"]["1"]
        g["int8_vs_fp32_decode_speedup"] = {"value": s, "goal_min": GOALS["int8_vs_fp32_decode_speedup_min"],
                                            "met": s >= GOALS["int8_vs_fp32_decode_speedup_min"]}
    if "onnx" in b and "torch" in b:
        s = b["torch"]["decoder_vocoder_ms_per_audio_second"] / b["onnx"]["decoder_vocoder_ms_per_audio_second"]
        g["ort_vs_torch_decoder_vocoder_speedup"] = {"value": s, "goal_min": GOALS["ort_vs_torch_decoder_vocoder_speedup_min"],
                                                     "met": s >= GOALS["ort_vs_torch_decoder_vocoder_speedup_min"]}
    return g
