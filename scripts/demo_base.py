#!/usr/bin/env python3
"""The demo's pre-trained tiny base (``make demo-base``): what upstream's pretrained weights are to a
real voice, on a scale two CPU cores can train.

A HiFi-GAN-style decoder trained from scratch does not learn to render a speaker in the demo's
15 minutes (measured: the reconstruction of the training utterances stays at the noise floor of the
speaker encoder, benchmarks/results/2026-12-06-xeon-avx512-late/).  Real fine-tuning starts from a base
that has already learnt speech from many speakers; this script makes such a base once:

1. multi-speaker data: the training sentences spoken by several espeak-ng voices
   (``trainer.synthetic.PRETRAIN_VOICES``), none of them the demo's own speaker;
2. the tiny v2 architecture with the demo's seed (``gsv-train init``), prepared;
3. the GPT on all voices (prompt+target pairs of one speaker, the inference layout);
4. SoVITS: the vocoder phase (posterior encoder + decoder alone, long slices) for most of the time,
   then the full model without discriminator (the prior learns to meet the posterior);
5. ``gsv-train bundle`` (last weights, with the posterior encoder, which fine-tuning needs) into
   ``--out`` with ``recipe.json`` beside it.

``make demo`` fine-tunes this base when ``assets/demo-base/`` holds it (the repository ships the one
this recipe made; rebuilding it takes about an hour on two cores).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_OUT = REPO / "assets" / "demo-base"
# the recipe the shipped base was made with (recipe.json records what a run really did)
RECIPE = {"arch": "tiny", "version": "v2", "seed": 0, "sentences": 60, "gpt_steps": 3000, "gpt_args": ["--prompt-pairs", 0.5],
          "sovits_minutes": 50, "sovits_args": ["--lr", 2e-3, "--batch-size", 16, "--vocoder-steps", 2100,
                                                "--vocoder-segment-frames", 64, "--warmup-steps", 100000]}


def run(*cmd) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def tool(name: str) -> str:
    p = BIN / name
    return str(p) if p.exists() else name


def git_commit() -> str | None:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="the base bundle's folder (replaced)")
    ap.add_argument("--work", help="working folder (data, experiment); default OUT.work, removed at the end")
    ap.add_argument("--gpt-steps", type=int, default=RECIPE["gpt_steps"])
    ap.add_argument("--sovits-minutes", type=float, default=RECIPE["sovits_minutes"])
    ap.add_argument("--sovits-steps", type=int, help="stop SoVITS after this many steps (smoke tests)")
    ap.add_argument("--sentences", type=int, default=RECIPE["sentences"], help="sentences per voice")
    ap.add_argument("--keep-work", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out.with_name(out.name + ".work")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.time()
    minutes: dict[str, float] = {}

    t = time.time()
    run(tool("gsv-train"), "synthetic", "--out", work / "data", "--count", args.sentences, "--voices", "pretrain")
    run(tool("gsv-train"), "init", "--out", work / "init", "--arch", RECIPE["arch"], "--version", RECIPE["version"],
        "--seed", RECIPE["seed"])
    run(tool("gsv-train"), "prepare", "--list", work / "data" / "data.list", "--out", work / "exp", "--base",
        work / "init", "--workers", 2)
    minutes["data_prepare"] = (time.time() - t) / 60

    t = time.time()
    run(tool("gsv-train"), "gpt", "--exp", work / "exp", "--epochs", 100000, "--max-steps", args.gpt_steps,
        "--grad-accum", 1, "--no-synth", "--patience", 0, "--val-fraction", 0.02, *RECIPE["gpt_args"])
    minutes["gpt"] = (time.time() - t) / 60

    t = time.time()
    sovits = [tool("gsv-train"), "sovits", "--exp", work / "exp", "--epochs", 100000, "--max-minutes",
              args.sovits_minutes, "--no-synth", "--patience", 0, "--val-fraction", 0.02, *RECIPE["sovits_args"]]
    if args.sovits_steps:
        sovits += ["--max-steps", args.sovits_steps]
    run(*sovits)
    minutes["sovits"] = (time.time() - t) / 60

    run(tool("gsv-train"), "bundle", "--exp", work / "exp", "--out", out, "--which", "last", "--force")
    from trainer.checkpointing import trained_steps
    from trainer.synthetic import PRETRAIN_VOICES

    recipe = {"what": "the demo's pre-trained tiny base (scripts/demo_base.py, make demo-base)",
              "recipe": {k: [str(a) for a in v] if isinstance(v, list) else v for k, v in RECIPE.items()},
              "gpt_steps": args.gpt_steps, "sovits_minutes_budget": args.sovits_minutes,
              "sovits_steps": trained_steps(work / "exp", "sovits"), "voices": list(PRETRAIN_VOICES),
              "sentences_per_voice": args.sentences, "minutes": {k: round(v, 2) for k, v in minutes.items()},
              "total_minutes": round((time.time() - t0) / 60, 2), "commit": git_commit(),
              "machine": platform.processor() or platform.machine(),
              "date": time.strftime("%Y-%m-%d", time.gmtime())}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n", "utf-8")
    if not args.keep_work:
        shutil.rmtree(work)
    print(f"wrote the demo base {out} in {recipe['total_minutes']} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
