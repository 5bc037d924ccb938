"""``gsv-bench versions``: bundles of different model versions (v2 / v2Pro / v2ProPlus) side by side.

All bundles are opened at once and every measurement is interleaved over them (one round runs each
bundle once), so a change of machine speed during the run affects them alike and the ratios are
fair.  Per bundle:

* ``prefill_ms_200`` and ``gpt_decode_ms_per_step`` (batch 1 and 8): the GPT, identical across the
  v2 variants, so these must agree within noise;
* ``decoder_vocoder_ms_per_audio_second``: the SoVITS window + vocoder of one ``--audio-tokens`` window;
* ``speaker_verification``: for Pro bundles, the cost of the speaker-verification embedding of one
  reference (3 s and 10 s), paid once at voice registration and never per request;
* ``estimated_realtime_streams``: streams one machine keeps in real time if decoder and GPT shared it
  perfectly (1000 ms / (decoder ms + 25 x decode ms per token at batch 8) per audio second); an
  upper bound, the measured figure comes from ``gsv-bench serve`` / ``capacity``.

Ratios against the first bundle are reported under ``vs_first``.
"""
from __future__ import annotations

import json
import logging
import os
import statistics

import torch

from benchmarks.components import _DecodeLoop, _interleaved_ms, _prefill_inputs, machine_info

log = logging.getLogger(__name__)

REFERENCE_SECONDS = (3.0, 10.0)


def add_arguments(p) -> None:
    p.add_argument("--bundles", required=True, help="comma-separated bundles (the first is the baseline)")
    p.add_argument("--backend", default="onnx", help="backend for the GPT and decoder figures")
    p.add_argument("--out", required=True, help="JSON results file")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and ORT (default: all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of each measurement")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per batch size")
    p.add_argument("--context", type=int, default=200)
    p.add_argument("--audio-tokens", type=int, default=50, help="tokens per decoder+vocoder call (25 = 1 s)")


def _median(xs) -> float:
    return float(statistics.median(xs))


def run(args) -> int:
    from gsv.backends import open_backends
    from gsv.backends.onnx_backend import default_threads
    from gsv.checkpoint.bundle import Bundle

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    paths = [p.strip() for p in args.bundles.split(",") if p.strip()]
    bundles = {}
    for p in paths:
        b = Bundle.open(p)
        key = b.model_version if b.model_version not in bundles else f"{b.model_version}:{p}"
        bundles[key] = b
    opened = {k: open_backends(b, args.backend, threads=threads) for k, b in bundles.items()}
    gen = torch.Generator().manual_seed(0)
    out: dict = {k: {"bundle": str(b.path), "model_version": b.model_version,
                     "vocoder_params": sum(t.numel() for n, t in b.sovits_state_dict().items() if n.startswith("dec."))}
                 for k, b in bundles.items()}
    result = {"machine": machine_info(threads), "backend": args.backend, "load_average_start": list(os.getloadavg())}

    inputs = _prefill_inputs(next(iter(bundles.values())).gpt_config, 1, 100, 100, gen)
    t = _interleaved_ms({k: (lambda g=g: g.prefill(*inputs)) for k, (g, _) in opened.items()}, args.repeats, args.warmup)
    for k in bundles:
        out[k]["prefill_ms_200"] = _median(t[k])
    for batch in (1, 8):
        loops = {k: _DecodeLoop(g, bundles[k].gpt_config, batch, args.context, gen) for k, (g, _) in opened.items()}
        t = _interleaved_ms(loops, args.steps, args.warmup, wake=True)
        for k in bundles:
            out[k].setdefault("gpt_decode_ms_per_step", {})[str(batch)] = _median(t[k])
        del loops

    tokens = args.audio_tokens
    calls = {}
    for k, b in bundles.items():
        s = b.sovits_config
        calls[k] = (torch.randint(0, s.codebook_size, (1, tokens), generator=gen), torch.tensor([tokens]),
                    torch.randint(0, s.n_symbols, (1, 40), generator=gen), torch.tensor([40]),
                    0.1 * torch.randn(1, s.gin_channels, 1, generator=gen),
                    0.5 * torch.randn(1, s.inter_channels, 2 * tokens, generator=gen))
    t = _interleaved_ms({k: (lambda a=a, c=calls[k]: a.decode_audio(*c)) for k, (_, a) in opened.items()},
                        args.repeats, args.warmup)
    for k in bundles:
        out[k]["decoder_vocoder_ms_per_audio_second"] = _median(t[k]) / (tokens / 25.0)
    del opened

    pro = {k: b.load_sv() for k, b in bundles.items() if b.is_pro}
    for secs in REFERENCE_SECONDS:
        wav = 0.3 * torch.randn(1, int(secs * 16000), generator=gen)
        t = _interleaved_ms({k: (lambda m=m: m(wav)) for k, m in pro.items()}, max(1, args.repeats // 2), 1)
        for k in pro:
            out[k].setdefault("speaker_verification", {"backend": "torch", "when": "voice registration only"})[
                f"ms_per_{secs:g}s_reference"] = _median(t[k])

    for k, r in out.items():
        per_audio_s = r["decoder_vocoder_ms_per_audio_second"] + 25 * r["gpt_decode_ms_per_step"]["8"] / 8
        r["estimated_realtime_streams"] = 1000.0 / per_audio_s
    first = next(iter(out))
    for k, r in out.items():
        r["vs_first"] = {
            "prefill": r["prefill_ms_200"] / out[first]["prefill_ms_200"],
            "gpt_decode_b1": r["gpt_decode_ms_per_step"]["1"] / out[first]["gpt_decode_ms_per_step"]["1"],
            "decoder_vocoder": r["decoder_vocoder_ms_per_audio_second"] / out[first]["decoder_vocoder_ms_per_audio_second"],
            "vocoder_params": r["vocoder_params"] / out[first]["vocoder_params"],
            "estimated_realtime_streams": r["estimated_realtime_streams"] / out[first]["estimated_realtime_streams"],
        }
    result["bundles"] = out
    result["settings"] = {k: getattr(args, k) for k in ("repeats", "warmup", "steps", "context", "audio_tokens")}
    result["load_average_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=2)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    return 0
