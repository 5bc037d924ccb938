"""``gsv-bench components``: per-component speed of the backends on one bundle, in one run.

For each backend (through the same interface the engine uses, KV-cache writes included):

* ``gpt_decode_ms_per_token``: one decode step over B rows with ``--context`` positions already in
  the cache, divided by B (B = 1 and 8); ``gpt_decode_ms_per_step`` is the undivided step time;
* ``prefill_ms_200``: prefill of one row of 200 positions (100 phones + 100 prompt tokens);
* ``decoder_vocoder_ms_per_audio_second``: sovits decoder + vocoder of a 2 s window (50 tokens).

Also measured in the same run: the machine's memory read bandwidth (``memory_bandwidth_gbps``,
median of repeated full passes over a 1 GiB tensor with the benchmark's thread count) and the GPT's
parameter bytes, giving ``bandwidth_floor_ms``: a batch-1 decode step must read every weight
once, so it cannot beat parameter bytes / bandwidth.  Timings are medians after warm-up runs.
The machine's load average is recorded at start and end: on a shared machine, compare runs only
when it was low.
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

log = logging.getLogger(__name__)

GOALS = {  # from the export issue
    "ort_fp32_decode_b1_vs_floor_max": 1.3,
    "int8_vs_fp32_decode_speedup_min": 2.0,
    "ort_vs_torch_decoder_vocoder_speedup_min": 1.5,
}


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="bundle (with an ONNX export for the onnx backends)")
    p.add_argument("--backends", default="torch,onnx,onnx-int8", help="comma-separated backend names")
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and ORT (default: all cores)")
    p.add_argument("--batches", default="1,8", help="decode batch sizes")
    p.add_argument("--context", type=int, default=200, help="cache positions per row before the timed decode steps")
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per batch size")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of prefill and decoder+vocoder")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    p.add_argument("--audio-tokens", type=int, default=50, help="semantic tokens per decoder+vocoder call (25 = 1 s)")


def _times_ms(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def _median_ms(fn, repeats: int, warmup: int) -> float:
    return statistics.median(_times_ms(fn, repeats, warmup))


def measure_bandwidth(threads: int, gib: float = 1.0, repeats: int = 7) -> dict:
    """Read bandwidth (GB/s): a reduction over a tensor far larger than any cache, as a decode step
    streams its weights.  A copy (read + write) is reported too."""
    torch.set_num_threads(threads)
    x = torch.empty(int(gib * (1 << 30)) // 4, dtype=torch.float32).uniform_()
    nbytes = x.numel() * 4
    read = nbytes / (_median_ms(lambda: torch.dot(x, x), repeats, 1) / 1e3) / 1e9
    y = torch.empty_like(x)
    copy = 2 * nbytes / (_median_ms(lambda: y.copy_(x), repeats, 1) / 1e3) / 1e9
    return {"read_gbps": read, "copy_gbps": copy, "bytes": nbytes}


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
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def _prefill_inputs(cfg, batch: int, phones: int, prompt: int, gen):
    return (torch.randint(0, cfg.phoneme_vocab_size, (batch, phones), generator=gen), torch.full((batch,), phones),
            torch.randn(batch, cfg.bert_dim, phones, generator=gen), torch.randint(0, cfg.eos, (batch, prompt), generator=gen),
            torch.full((batch,), prompt))


@torch.inference_mode()
def bench_backend(bundle, name: str, args, threads: int) -> dict:
    from gsv.backends import open_backends

    gpt, audio = open_backends(bundle, name, threads=threads)
    cfg, scfg = bundle.gpt_config, bundle.sovits_config
    gen = torch.Generator().manual_seed(0)
    out: dict = {}
    inputs = _prefill_inputs(cfg, 1, 100, 100, gen)
    out["prefill_ms_200"] = _median_ms(lambda: gpt.prefill(*inputs), args.repeats, args.warmup)
    per_token, per_step, fastest = {}, {}, {}
    for b in (int(x) for x in args.batches.split(",")):
        half = args.context // 2
        logits, k, v, lens = gpt.prefill(*_prefill_inputs(cfg, b, args.context - half, half, gen))
        cache = gpt.new_cache()
        cache.add_rows(k, v, lens)
        tokens = torch.randint(0, cfg.eos, (b,), generator=gen)
        positions = torch.full((b,), half)

        def step():
            cache.ensure_step()
            _, nk, nv = gpt.decode_step(tokens, positions, cache.k, cache.v, cache.kv_lens())
            cache.append(nk, nv)
            positions.add_(1)

        times = _times_ms(step, args.steps, args.warmup)
        ms = statistics.median(times)
        per_step[str(b)], per_token[str(b)] = ms, ms / b
        fastest[str(b)] = min(times)  # the least disturbed step: context for medians on a shared machine
    out["gpt_decode_ms_per_token"] = per_token
    out["gpt_decode_ms_per_step"] = per_step
    out["gpt_decode_ms_per_step_min"] = fastest
    t = args.audio_tokens
    codes = torch.randint(0, scfg.codebook_size, (1, t), generator=gen)
    phones = torch.randint(0, scfg.n_symbols, (1, 40), generator=gen)
    ge = 0.1 * torch.randn(1, scfg.gin_channels, 1, generator=gen)
    noise = 0.5 * torch.randn(1, scfg.inter_channels, 2 * t, generator=gen)
    call = (codes, torch.tensor([t]), phones, torch.tensor([40]), ge, noise)
    ms = _median_ms(lambda: audio.decode_audio(*call), args.repeats, args.warmup)
    out["decoder_vocoder_ms_per_audio_second"] = ms / (t / 25.0)
    return out


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
    bw = measure_bandwidth(threads)
    result["memory_bandwidth_gbps"] = bw["read_gbps"]
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
    backends = {}
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        log.info("benchmarking %s", name)
        backends[name] = bench_backend(bundle, name, args, threads)
        gc.collect()  # the previous backend's sessions and weights go before the next one loads
    result["backends"] = backends
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
        ratio = b["onnx"]["gpt_decode_ms_per_step"]["1"] / r["bandwidth_floor_ms"]
        g["ort_fp32_decode_b1_vs_floor"] = {"value": ratio, "goal_max": GOALS["ort_fp32_decode_b1_vs_floor_max"],
                                            "met": ratio <= GOALS["ort_fp32_decode_b1_vs_floor_max"]}
    if "onnx" in b and "onnx-int8" in b:
        s = b["onnx"]["gpt_decode_ms_per_step"]["1"] / b["onnx-int8"]["gpt_decode_ms_per_step"]["1"]
        g["int8_vs_fp32_decode_speedup"] = {"value": s, "goal_min": GOALS["int8_vs_fp32_decode_speedup_min"],
                                            "met": s >= GOALS["int8_vs_fp32_decode_speedup_min"]}
    if "onnx" in b and "torch" in b:
        s = b["torch"]["decoder_vocoder_ms_per_audio_second"] / b["onnx"]["decoder_vocoder_ms_per_audio_second"]
        g["ort_vs_torch_decoder_vocoder_speedup"] = {"value": s, "goal_min": GOALS["ort_vs_torch_decoder_vocoder_speedup_min"],
                                                     "met": s >= GOALS["ort_vs_torch_decoder_vocoder_speedup_min"]}
    return g
