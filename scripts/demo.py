#!/usr/bin/env python3
"""The demo (``make demo``): from nothing to a served, streamed, benchmarked voice on this machine.

1. a synthetic English dataset spoken by espeak-ng (training sentences + held-out ones);
2. a base model: upstream pretrained files placed in ``pretrained/`` (fine-tuning), otherwise a small
   random architecture trained from scratch (no pretrained weights can ship with the project);
3. prepare, the untrained base's voice similarity, GPT + SoVITS training, then a bundle;
4. ONNX export (verified), and an attempt at FP16 TensorRT engines (reported, not fatal, without a GPU);
5. the gRPC server, a registered voice, one sentence streamed to ``out/demo.wav`` through the client;
6. a short serving benchmark; everything is shut down at the end;
7. voice quality (``gsv-bench quality``): speaker similarity of ``out/demo.wav`` and of held-out
   sentences to the training speaker, measured by a pretrained speaker encoder, against the
   untrained base, the ceiling (held-out real utterances) and the floor (noise), for FP32 vs INT8
   and streamed vs whole decoding -> ``out/quality.json`` and a panel of ``out/bench.png``.

Run from the repository root with the project's virtualenv:  ``.venv/bin/python scripts/demo.py``.
``--steps N`` shortens training (CI smoke test).  ``--minutes M`` trains the SoVITS stage for up to
M minutes, stopping when the validation similarity stops improving, and records the similarity
curve (``make demo-quality``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENTENCE = "Welcome to the village, traveler. The gates open at dawn."


def log(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run(*cmd, check=True, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=check, **kw)


def tool(name: str) -> str:
    p = BIN / name
    return str(p) if p.exists() else name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def find_pretrained(root: Path) -> dict | None:
    """Upstream files in pretrained/: one GPT .ckpt, one SoVITS .pth, optional HuBERT/BERT folders, and
    for a v2Pro/v2ProPlus SoVITS the speaker-verification model (pretrained_eres2netv2w24s4ep4.ckpt)."""
    if not root.is_dir():
        return None
    sv = sorted(root.rglob("*eres2net*.ckpt"))
    ckpts = sorted(p for p in root.rglob("*.ckpt") if p not in sv)
    pths = sorted(p for p in root.rglob("*.pth") if "s2D" not in p.name)
    if not ckpts or not pths:
        return None
    found = {"gpt": ckpts[0], "sovits": pths[0]}
    if sv and pths[0].read_bytes()[:2] in (b"05", b"06"):  # upstream's v2Pro / v2ProPlus file header
        found["sv"] = sv[0]
    for key, names in (("hubert", ("chinese-hubert-base",)), ("bert", ("chinese-roberta-wwm-ext-large",))):
        for n in names:
            hits = [d for d in root.rglob(n) if (d / "config.json").exists()]
            if hits:
                found[key] = hits[0]
    return found


# The from-scratch recipe of the demo (no pretrained base): how it was chosen is in the README
# ("What the demo voice learns") and in benchmarks/results/*/demo_*report.json.  The vocoder phase is sized to
# the 15-minute budget: where training runs under bf16 autocast (trainer.precision: CPUs that multiply bf16
# natively) its steps take about 0.75x the time, so 100 more of them fit.
VOCODER_STEPS = {"bf16": 330, "fp32": 230}
PRIOR_STEPS = 150
# share of the GPT's training items behind another utterance of the speaker (the inference layout): with
# 0.5 the from-scratch GPT still ended some held-out sentences early; 0.8 gave 0.80 on the same SoVITS over
# three seeds (0.5: 0.74, 1.0: 0.76; benchmarks/results/2026-12-07-epyc-avx512/gpt_prompt_pairs.json)
PROMPT_PAIRS = 0.8


EPOCH_ITEMS = 400  # items per SoVITS epoch (the demo validates only at its end)


def scratch_recipe(native_bf16: bool, phase_scale: float = 1.0, epoch_items: int = EPOCH_ITEMS) -> dict:
    """The demo's recipe; ``phase_scale`` multiplies the vocoder and prior phases (make demo-quality)."""
    precision = "bf16" if native_bf16 else "fp32"
    vocoder, prior = round(VOCODER_STEPS[precision] * phase_scale), round(PRIOR_STEPS * phase_scale)
    return {"arch": "small", "sentences": 60, "heldout": 4, "gpt_steps": 1000,
            "sovits_steps": vocoder + prior, "precision": precision,
            "sovits_args": ["--lr", 2e-3, "--batch-size", 16, "--vocoder-steps", vocoder, "--prior-steps",
                            prior, "--warmup-steps", 100000, "--min-epoch-items", epoch_items],
            "gpt_args": ["--prompt-pairs", PROMPT_PAIRS]}


# make demo-quality (--minutes M): the same phases, longer.  The vocoder phase (where most of the voice was lost)
# and the prior phase grow in proportion to the budget, sized so that at the standard recipe's pace they fill
# QUALITY_PHASE_SHARE of it (half: a machine twice as slow still finishes them); warm-up steps fill the rest
# until the similarity stops improving.
DEMO_SOVITS_MINUTES = 5.7  # the standard recipe's SoVITS stage (benchmarks/results/2026-12-07-xeon-avx512)
QUALITY_PHASE_SHARE = 0.5
QUALITY_EPOCH_ITEMS = 1600  # a validation (4 held-out sentences synthesized) every 100 steps


def quality_recipe(native_bf16: bool, minutes: float) -> dict:
    scale = max(1.0, minutes * QUALITY_PHASE_SHARE / DEMO_SOVITS_MINUTES)
    return scratch_recipe(native_bf16, phase_scale=scale, epoch_items=QUALITY_EPOCH_ITEMS)


PRETRAINED_STEPS = 40  # full-size steps take seconds each on a CPU
GOAL_SIMILARITY = 0.65  # the goal for the default demo (pretrained speaker encoder)
MAX_DIFFERENCE = 0.02  # INT8 vs FP32 and streamed vs whole-utterance decoding


def make_reference(data: Path, out: Path) -> tuple[Path, str]:
    """One 3-9 s reference from the synthetic utterances (the server refuses shorter than 3 s)."""
    from benchmarks.quality import load_utterances, reference_clip

    path, text, _lang = reference_clip(load_utterances([str(data / "data.list")]), out)
    return path, text


def quality_args(work: Path, ref: Path, ref_text: str) -> list:
    data = work / "data"
    return ["--voice-audio", data / "data.list", "--heldout-audio", data / "heldout.list", "--sentences",
            data / "heldout.txt", "--ref-audio", ref, "--ref-text", ref_text, "--ref-lang", "en"]


def main(argv=None) -> int:
    from trainer.config import CPU_PRECISIONS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "out"))
    ap.add_argument("--steps", type=int, help="training steps per stage (default: the recipe's)")
    ap.add_argument("--minutes", type=float, help="train SoVITS up to this long, until the similarity stops "
                                                  "improving, and record the curve (make demo-quality)")
    ap.add_argument("--curve", help="with --minutes: also write the curve JSON here (benchmarks/results/...)")
    ap.add_argument("--pretrained", default=str(REPO / "pretrained"))
    ap.add_argument("--bench-requests", type=int, default=6)
    ap.add_argument("--sentences", type=int, help="training sentences (default: the recipe's)")
    ap.add_argument("--cpu-precision", default="auto", choices=CPU_PRECISIONS,
                    help="training precision on a CPU and the recipe sized for it (auto: bf16 where the CPU "
                         "multiplies bf16 natively; fp32 runs here what an AVX2-only machine runs)")
    ap.add_argument("--version", default="v2", choices=("v2", "v2Pro", "v2ProPlus"),
                    help="model version of the tiny base trained from scratch (make demo: GSV_DEMO_VERSION)")
    args = ap.parse_args(argv)
    t_start = time.time()
    phases: dict[str, float] = {}
    out = Path(args.out).resolve()
    work = out / "demo"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pre = find_pretrained(Path(args.pretrained))
    from trainer.precision import cpu_has_native_bf16

    native_bf16 = cpu_has_native_bf16() if args.cpu_precision == "auto" else args.cpu_precision == "bf16"
    recipe = quality_recipe(native_bf16, args.minutes) if args.minutes else scratch_recipe(native_bf16)
    base_kind = "pretrained" if pre else recipe["arch"]
    if args.sentences:
        recipe["sentences"] = args.sentences

    log("1/7 synthetic dataset (espeak-ng): training sentences and held-out ones")
    t = time.time()
    run(tool("gsv-train"), "synthetic", "--out", work / "data", "--count", recipe["sentences"], "--heldout",
        recipe["heldout"])
    ref, ref_text = make_reference(work / "data", work / "reference.wav")

    if pre:
        log(f"2/7 base: upstream pretrained files {pre['gpt'].name} + {pre['sovits'].name} (fine-tuning)")
        cmd = [tool("gsv"), "import", "--gpt", pre["gpt"], "--sovits", pre["sovits"], "--out", work / "base"]
        for key in ("hubert", "bert", "sv"):
            if key in pre:
                cmd += [f"--{key}", pre[key]]
        run(*cmd)
        recipe.update(gpt_steps=PRETRAINED_STEPS, sovits_steps=PRETRAINED_STEPS, sovits_args=[],
                      gpt_args=["--prompt-pairs", 0.5])
    else:
        log(f"2/7 base: no upstream weights in pretrained/, so a {recipe['arch']} {args.version} architecture is "
            "trained from scratch")
        run(tool("gsv-train"), "init", "--out", work / "base", "--arch", recipe["arch"], "--version", args.version)
    if args.steps:
        recipe.update(gpt_steps=args.steps, sovits_steps=args.steps)
    run(tool("gsv-train"), "prepare", "--list", work / "data" / "data.list", "--out", work / "exp", "--base",
        work / "base", "--workers", 1)
    phases["data_base_prepare"] = time.time() - t

    log("3/7 the untrained base's voice (speaker similarity before fine-tuning)")
    t = time.time()
    run(tool("gsv-bench"), "quality", "--bundle", work / "base", "--backend", "torch", "--out",
        work / "quality_base.json", *quality_args(work, ref, ref_text))
    phases["quality_base"] = time.time() - t

    log(f"4/7 train: GPT ({recipe['gpt_steps']} steps), SoVITS "
        f"({f'up to {args.minutes:g} min' if args.minutes else str(recipe['sovits_steps']) + ' steps'}), bundle")
    t = time.time()
    run(tool("gsv-train"), "gpt", "--exp", work / "exp", "--epochs", 100000, "--max-steps", recipe["gpt_steps"],
        "--grad-accum", 1, "--no-synth", "--cpu-precision", recipe["precision"], *recipe.get("gpt_args", []))
    phases["train_gpt"] = time.time() - t
    t = sovits_start = time.time()
    sovits = [tool("gsv-train"), "sovits", "--exp", work / "exp", "--epochs", 100000, "--cpu-precision",
              recipe["precision"], *recipe["sovits_args"]]
    if args.minutes:
        heldout = (work / "data" / "heldout.txt").read_text("utf-8").split("\n")
        # patience counts from the end of the vocoder and prior phases (trainer.loop)
        sovits += ["--max-minutes", args.minutes, "--early-stop-on", "similarity", "--patience", 6,
                   *[a for x in heldout if x.strip() for a in ("--synth-text", x)]]
    else:
        sovits += ["--max-steps", recipe["sovits_steps"], "--no-synth"]
    run(*sovits)
    phases["train_sovits"] = time.time() - t
    # the last weights: the phases of the recipe change what the validation loss weighs, so "best" by loss
    # would pick an earlier phase (--minutes runs pick by similarity)
    run(tool("gsv-train"), "bundle", "--exp", work / "exp", "--out", work / "voice",
        "--which", "best" if args.minutes else "last")

    log("5/7 export: ONNX (verified against PyTorch), then FP16 TensorRT")
    t = time.time()
    run(tool("gsv-export"), "--bundle", work / "voice", "--precision", "fp32,int8")
    trt = run(tool("gsv-export"), "--bundle", work / "voice", "--trt", check=False, capture_output=True, text=True)
    trt_note = (trt.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"TensorRT: {'built' if trt.returncode == 0 else 'not built'}: {trt_note}")
    phases["export"] = time.time() - t

    log("6/7 server, voice registration, one streamed sentence, serving benchmark")
    t = time.time()
    port, mport = free_port(), free_port()
    target = f"localhost:{port}"
    server_log = open(work / "server.log", "w")
    server = subprocess.Popen([tool("gsv-serve"), "--bundle", work / "voice", "--voices", work / "voices", "--port",
                               str(port), "--host", "localhost", "--metrics-port", str(mport)],
                              stdout=server_log, stderr=subprocess.STDOUT)
    try:
        wait_serving(target, server)
        run(tool("gsv-voices"), "--server", target, "add", "--voice", "demo", "--ref-audio", ref, "--ref-text", ref_text,
            "--ref-lang", "en", "--consent", "synthetic espeak-ng voice generated by the demo")
        say = run(tool("gsv-say"), "--server", target, "--voice", "demo", "--text", SENTENCE, "-o", out / "demo.wav",
                  "--seed", 7, "--max-audio-seconds", 12, capture_output=True, text=True)
        print(say.stdout.strip())
        run(tool("gsv-bench"), "serve", "--server", target, "--voice", "demo", "--concurrency", "1,2,4", "--requests",
            args.bench_requests, "--out", out / "bench.json", "--plot", out / "bench.png", "--max-audio-seconds", 4,
            "--metrics", f"http://localhost:{mport}/metrics")
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        server_log.close()
    phases["serve_bench"] = time.time() - t

    log("7/7 voice quality: held-out sentences and demo.wav vs the training speaker (pretrained speaker encoder)")
    t = time.time()
    run(tool("gsv-bench"), "quality", "--bundle", work / "voice", "--compare-backends", "onnx,onnx-int8", "--stream",
        "--score-audio", out / "demo.wav", "--out", work / "quality_voice.json", "--max-difference", MAX_DIFFERENCE,
        "--stages", *quality_args(work, ref, ref_text))
    phases["quality_voice"] = time.time() - t
    minutes = (time.time() - t_start) / 60
    from trainer.checkpointing import trained_steps

    training = {"base": base_kind, "gpt_steps": recipe["gpt_steps"],
                "sovits_steps": trained_steps(work / "exp", "sovits"),
                "sovits_args": [str(a) for a in recipe["sovits_args"]],
                "minutes_budget": args.minutes, "sentences": recipe["sentences"],
                "cpu_precision": recipe["precision"]}
    quality = write_quality(out, work, training, minutes, phases)
    if args.minutes:
        write_curve(work, quality, phases["train_gpt"] / 60, sovits_start, args.curve)
    log(f"done in {minutes:.1f} min: {out / 'demo.wav'}, {out / 'bench.png'}, {out / 'bench.json'}, "
        f"{out / 'quality.json'}; server log {work / 'server.log'}")
    print(json.dumps({"demo_wav": str(out / "demo.wav"), "bench_png": str(out / "bench.png"),
                      "quality_json": str(out / "quality.json"), "minutes": round(minutes, 2), "tensorrt": trt_note,
                      "base": base_kind,
                      "model_version": json.loads((work / "voice" / "manifest.json").read_text())["model_version"],
                      "speaker_similarity": quality["trained"]["speaker_similarity"]}))
    return 0


def write_quality(out: Path, work: Path, training: dict, minutes: float, phases: dict) -> dict:
    """out/quality.json from the two gsv-bench quality reports, and the quality panel of out/bench.png."""
    from functools import partial

    from benchmarks.quality import draw_similarity_panel
    from benchmarks.serve import plot

    base = json.loads((work / "quality_base.json").read_text())
    voice = json.loads((work / "quality_voice.json").read_text())
    main_run = voice["runs"][0]  # onnx, whole-utterance decoding: what the server streams, decoded whole
    demo_wav = voice["scored_audio"][0] if voice["scored_audio"] else {}
    diffs = {(c["a"], c["b"]): c["speaker_similarity_difference"] for c in voice["comparisons"]}
    trained = main_run["speaker_similarity"]
    q = {
        "what": "cosine similarity of pretrained speaker-encoder embeddings to the centroid of the training "
                "speaker's utterances (see README: What the demo voice learns)",
        "encoder": voice["encoder"],
        "trained": {"speaker_similarity": trained, "relative": main_run["relative"], "backend": main_run["backend"],
                    "sentences": [{"text": s["text"], "speaker_similarity": s["speaker_similarity"]}
                                  for s in main_run["sentences"]], "warnings": main_run["warnings"]},
        "demo_wav": {"speaker_similarity": demo_wav.get("speaker_similarity"), "relative": demo_wav.get("relative"),
                     "note": "streamed by the server (gsv-say), one sentence"},
        "untrained_base": {"speaker_similarity": base["speaker_similarity"], "relative": base["relative"]},
        "ceiling": voice["ceiling"], "floor": voice["floor"], "reference": voice["reference"],
        "int8_vs_fp32": diffs.get(("onnx", "onnx-int8")), "stream_vs_whole": diffs.get(("onnx", "onnx+stream")),
        "stages": voice.get("stages"),  # where the speaker is lost: reconstruction / prior / synthesis
        "goals": {"trained_min": GOAL_SIMILARITY, "above_untrained_base": True, "max_difference": MAX_DIFFERENCE},
        "training": training, "demo_minutes": round(minutes, 2),
        "phase_minutes": {k: round(v / 60, 2) for k, v in phases.items()},
    }
    q["met"] = {"trained_min": trained is not None and trained >= GOAL_SIMILARITY,
                "above_untrained_base": trained is not None and base["speaker_similarity"] is not None
                and trained > base["speaker_similarity"],
                "int8_vs_fp32": q["int8_vs_fp32"] is not None and abs(q["int8_vs_fp32"]) <= MAX_DIFFERENCE,
                "stream_vs_whole": q["stream_vs_whole"] is not None and abs(q["stream_vs_whole"]) <= MAX_DIFFERENCE}
    (out / "quality.json").write_text(json.dumps(q, indent=1) + "\n")
    bars = [("noise\n(floor)", voice["floor"]), ("untrained\nbase", base["speaker_similarity"]),
            ("trained\nheld-out", trained), ("demo.wav", demo_wav.get("speaker_similarity")),
            ("real held-out\n(ceiling)", voice["ceiling"])]
    bench = json.loads((out / "bench.json").read_text())
    plot(bench, str(out / "bench.png"), extra_panels=[partial(draw_similarity_panel, bars=bars, ceiling=voice["ceiling"],
                                                              floor=voice["floor"], goal=GOAL_SIMILARITY)])
    print(f"speaker similarity: trained {trained:.3f} (demo.wav {demo_wav.get('speaker_similarity')}), untrained base "
          f"{base['speaker_similarity']:.3f}, ceiling {voice['ceiling']:.3f}, floor {voice['floor']:.3f}; "
          f"INT8-FP32 {q['int8_vs_fp32']}, stream-whole {q['stream_vs_whole']}")
    return q


def write_curve(work: Path, quality: dict, gpt_minutes: float, sovits_start: float, extra_path: str | None) -> None:
    """The similarity-vs-training-minutes curve of a --minutes run: the SoVITS stage's validation
    records (each held-out sentence synthesized with the trained GPT), minutes counted from the
    start of training (the GPT stage comes first)."""
    from trainer.checkpointing import load_state

    hist = load_state(work / "exp" / "train" / "sovits" / "state-last.pt")["progress"]["history"]
    curve = [{"step": h["step"], "training_minutes": round(gpt_minutes + (h["time"] - sovits_start) / 60, 2),
              "speaker_similarity": h.get("val/speaker_similarity")} for h in hist]
    report = {"what": "val/speaker_similarity of the SoVITS stage (mean over the held-out sentences) vs minutes "
                      "of training; final = gsv-bench quality of the best weights",
              "curve": curve, "ceiling": quality["ceiling"], "floor": quality["floor"], "final": quality["trained"],
              "untrained_base": quality["untrained_base"], "int8_vs_fp32": quality["int8_vs_fp32"],
              "stream_vs_whole": quality["stream_vs_whole"], "training": quality["training"],
              "phase_minutes": quality["phase_minutes"], "machine": _machine()}
    for path in [work.parent / "quality_curve.json"] + ([Path(extra_path)] if extra_path else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        plot_curve(report, path.with_suffix(".png"))


def plot_curve(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(c["training_minutes"], c["speaker_similarity"]) for c in report["curve"]
           if c["speaker_similarity"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if pts:
        ax.plot(*zip(*pts), "o-", label="validation (held-out sentences)")
    final = report["final"]["speaker_similarity"]
    if pts and final is not None:
        ax.plot([pts[-1][0]], [final], "s", color="tab:blue", label=f"final, gsv-bench quality {final:.3f}")
    ax.axhline(report["ceiling"], color="tab:green", ls="--", label=f"ceiling (held-out real) {report['ceiling']:.2f}")
    ax.axhline(report["floor"], color="tab:red", ls="--", label=f"floor (noise) {report['floor']:.2f}")
    base = report["untrained_base"]["speaker_similarity"]
    ax.axhline(base, color="tab:gray", ls=":", label=f"untrained base {base:.2f}")
    ax.set(xlabel="training minutes (GPT, then SoVITS)", ylabel="speaker similarity", ylim=(0.3, 1.0),
           title="demo voice: speaker similarity while training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _machine() -> dict:
    import os
    import platform

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_average": list(os.getloadavg())}


def wait_serving(target: str, server: subprocess.Popen, timeout: float = 600) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.time() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"demo: the server exited with code {server.returncode} (see server.log)")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit("demo: the server did not become ready")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except subprocess.CalledProcessError as e:
        print(f"demo: error: step failed ({' '.join(map(str, e.cmd))}: exit {e.returncode})", file=sys.stderr)
        raise SystemExit(1)
