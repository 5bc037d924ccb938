"""Seconds per training step of each stage, tiny and full-size, on this machine (JSON on stdout).

    python -m trainer.bench [--steps 3] [--out bench.json] [--only tiny|v2] [--threads N]

Random-weight models of the ``tiny`` and ``v2`` (upstream size) presets train on a temporary
experiment of random features (4 s utterances), through the same stage code as ``gsv-train``;
one warm-up step is not timed.  A GPT step is one optimizer update over one micro-batch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gsv import constants as C

UTTERANCE_SECONDS = 4.0
N_ITEMS = 8


def make_experiment(root: Path, arch: str) -> tuple[Path, object]:
    """A base bundle of random ``arch`` weights and an experiment of random features."""
    from gsv.audio import spectrogram
    from gsv.checkpoint.bundle import write_bundle
    from gsv.models.gpt import Text2SemanticGPT
    from gsv.models.sovits.model import SoVITS
    from trainer.init_base import presets
    from trainer.prepare import DATA_DIR, PrepareSummary, write_dataset_index, write_item

    p = presets()[arch]
    torch.manual_seed(0)
    bundle = write_bundle(root / "base", p.gpt, Text2SemanticGPT(p.gpt).state_dict(), p.sovits,
                          SoVITS(p.sovits, with_posterior=True).state_dict(),
                          sources={"kind": "bench", "train_hints": {"disc_channel_divisor": p.disc_channel_divisor,
                                                                    "segment_frames": p.segment_frames,
                                                                    **({"cpu_threads": 1} if arch == "tiny" else {})}})
    exp = root / "exp"
    (exp / DATA_DIR).mkdir(parents=True)
    summary = PrepareSummary()
    n = int(UTTERANCE_SECONDS * C.SAMPLE_RATE)
    for i in range(N_ITEMS):
        wav = (torch.randn(n) * 3000).clamp(-32768, 32767).to(torch.int16)
        spec = spectrogram(wav.float().unsqueeze(0) / 32768.0)[0].contiguous()
        frames = spec.shape[-1]
        n_phones = int(UTTERANCE_SECONDS * 12)
        tensors = {"phones": torch.randint(0, p.gpt.phoneme_vocab_size, (n_phones,)),
                   "semantic": torch.randint(0, 1024, (frames // 2,)), "ssl": torch.randn(p.sovits.ssl_dim, frames),
                   "wav": wav, "spec": spec}
        name = f"b{i}.wav"
        item = {"name": name, "speaker": "bench", "lang": "en", "text": "bench", "norm_text": "bench", "phones": "",
                "word2ph": None, "n_phones": n_phones, "n_tokens": frames // 2, "frames": frames,
                "seconds": UTTERANCE_SECONDS, "has_bert": False, "file": f"{DATA_DIR}/{name}.safetensors"}
        write_item(exp / item["file"], tensors, {"fingerprint": "bench", "item": item})
        summary.items.append(item)
    write_dataset_index(exp, bundle, root, None, root / "bench.list", summary)
    return exp, bundle


def time_stage(stage_name: str, exp_path: Path, bundle, batch_size: int, steps: int) -> dict:
    from trainer.config import GPTTrainConfig, SoVITSTrainConfig
    from trainer.data import Experiment
    from trainer.ddp import DistEnv
    from trainer.init_base import train_hints

    exp = Experiment.open(exp_path)
    dev = torch.device("cpu")
    torch.manual_seed(0)
    if stage_name == "sovits":
        from trainer.sovits_stage import SoVITSStage

        cfg = SoVITSTrainConfig(batch_size=batch_size, min_epoch_items=0, synth=False, device="cpu")
        st = SoVITSStage(cfg, exp, bundle, exp.items, DistEnv(), dev, hints=train_hints(bundle))
        params = sum(p.numel() for p in st.g.parameters()) + sum(p.numel() for p in st.d.parameters())
    else:
        from trainer.gpt_stage import GPTStage

        cfg = GPTTrainConfig(batch_size=batch_size, min_epoch_items=0, synth=False, device="cpu", grad_accum=1)
        st = GPTStage(cfg, exp, bundle, exp.items, DistEnv(), dev)
        params = sum(p.numel() for p in st.model.parameters())
    batch = st.collate([st.dataset[i % len(st.dataset)] for i in range(batch_size)])
    st.train_step([batch], 0)  # warm-up
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        st.train_step([batch], i + 1)
        times.append(time.perf_counter() - t0)
    return {"stage": stage_name, "batch_size": batch_size, "utterance_seconds": UTTERANCE_SECONDS,
            "trainable_parameters": int(params), "steps_timed": steps,
            "seconds_per_step": round(statistics.median(times), 4), "min_seconds": round(min(times), 4),
            "max_seconds": round(max(times), 4)}


def run(steps: int = 3, only: str | None = None, explicit_threads: bool = False) -> dict:
    from trainer.init_base import train_hints

    plan = [("tiny", "sovits", 4), ("tiny", "gpt", 4), ("v2", "sovits", 2), ("v2", "gpt", 4)]
    results = []
    with tempfile.TemporaryDirectory(prefix="gsv-bench-") as td:
        built: dict[str, tuple] = {}
        for arch, stage, bs in plan:
            if only and arch != only:
                continue
            if arch not in built:
                built[arch] = make_experiment(Path(td) / arch, arch)
            exp, bundle = built[arch]
            default_threads = torch.get_num_threads()
            hint = train_hints(bundle).get("cpu_threads")
            if hint and not explicit_threads:
                torch.set_num_threads(int(hint))  # what gsv-train uses for this base by default
            r = time_stage(stage, exp, bundle, bs, steps)
            r["arch"], r["torch_threads"] = arch, torch.get_num_threads()
            torch.set_num_threads(default_threads)
            results.append(r)
            print(f"{arch:5s} {stage:7s} batch {bs}: {r['seconds_per_step']:.3f} s/step", file=sys.stderr)
    return {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "device": "cpu", "cuda_available": torch.cuda.is_available(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "note": "random weights and features; mixed precision not used (CPU)",
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", choices=("tiny", "v2"))
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.steps, args.only, explicit_threads=bool(args.threads))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
