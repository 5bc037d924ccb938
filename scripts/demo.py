#!/usr/bin/env python3
"""The demo (``make demo``): from nothing to a served, streamed, benchmarked voice on this machine.

1. a synthetic English dataset spoken by espeak-ng;
2. a base model: upstream pretrained files placed in ``pretrained/`` (fine-tuning), otherwise a tiny
   random architecture trained from scratch (no pretrained weights can ship with the project);
3. prepare + SoVITS + GPT training, then a bundle;
4. ONNX export (verified), and an attempt at FP16 TensorRT engines (reported, not fatal, without a GPU);
5. the gRPC server, a registered voice, one sentence streamed to ``out/demo.wav`` through the client;
6. a short serving benchmark with its plot ``out/bench.png``; everything is shut down at the end.

Run from the repository root with the project's virtualenv:  ``.venv/bin/python scripts/demo.py``.
``--steps N`` shortens training (CI smoke test).  Voice quality needs the pretrained base: a tiny
model trained for minutes on synthetic speech only proves the machinery.
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


def make_reference(data: Path, out: Path) -> tuple[Path, str]:
    """Join synthetic utterances into one 3-10 s reference (the server refuses shorter ones)."""
    import numpy as np
    import soundfile as sf

    lines = [l.split("|") for l in (data / "data.list").read_text().splitlines() if l.strip()]
    audio, texts, sr = [], [], None
    for wav, _spk, _lang, text in lines:
        x, sr = sf.read(wav, dtype="float32")
        if sum(a.size for a in audio) + x.size > 9 * sr:
            break
        audio += [x, np.zeros(int(0.25 * sr), np.float32)]
        texts.append(text)
        if sum(a.size for a in audio) > 4.5 * sr:
            break
    sf.write(out, np.concatenate(audio), sr)
    return out, " ".join(texts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "out"))
    ap.add_argument("--steps", type=int, default=400, help="training steps per stage (tiny model)")
    ap.add_argument("--pretrained", default=str(REPO / "pretrained"))
    ap.add_argument("--bench-requests", type=int, default=6)
    ap.add_argument("--version", default="v2", choices=("v2", "v2Pro", "v2ProPlus"),
                    help="model version of the tiny base trained from scratch (make demo: GSV_DEMO_VERSION)")
    args = ap.parse_args(argv)
    t_start = time.time()
    out = Path(args.out).resolve()
    work = out / "demo"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)

    log("1/6 synthetic dataset (espeak-ng)")
    run(tool("gsv-train"), "synthetic", "--out", work / "data", "--count", 24)

    pre = find_pretrained(Path(args.pretrained))
    steps = args.steps
    if pre:
        log(f"2/6 base: upstream pretrained files {pre['gpt'].name} + {pre['sovits'].name} (fine-tuning)")
        cmd = [tool("gsv"), "import", "--gpt", pre["gpt"], "--sovits", pre["sovits"], "--out", work / "base"]
        for key in ("hubert", "bert", "sv"):
            if key in pre:
                cmd += [f"--{key}", pre[key]]
        run(*cmd)
        steps = min(steps, 40)  # full-size steps take seconds each on a CPU
    else:
        log("2/6 base: no upstream weights in pretrained/, so a tiny architecture is trained from scratch")
        run(tool("gsv-train"), "init", "--out", work / "base", "--arch", "tiny", "--version", args.version)

    log(f"3/6 prepare + train ({steps} steps per stage) + bundle")
    run(tool("gsv-train"), "prepare", "--list", work / "data" / "data.list", "--out", work / "exp", "--base",
        work / "base", "--workers", 1)
    run(tool("gsv-train"), "sovits", "--exp", work / "exp", "--epochs", 1000, "--max-steps", steps, "--no-synth")
    run(tool("gsv-train"), "gpt", "--exp", work / "exp", "--epochs", 1000, "--max-steps", steps, "--grad-accum", 1,
        "--no-synth")
    run(tool("gsv-train"), "bundle", "--exp", work / "exp", "--out", work / "voice")

    log("4/6 export: ONNX (verified against PyTorch), then FP16 TensorRT")
    run(tool("gsv-export"), "--bundle", work / "voice", "--precision", "fp32,int8")
    trt = run(tool("gsv-export"), "--bundle", work / "voice", "--trt", check=False, capture_output=True, text=True)
    trt_note = (trt.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"TensorRT: {'built' if trt.returncode == 0 else 'not built'}: {trt_note}")

    log("5/6 server, voice registration, one streamed sentence")
    port, mport = free_port(), free_port()
    target = f"localhost:{port}"
    server_log = open(work / "server.log", "w")
    server = subprocess.Popen([tool("gsv-serve"), "--bundle", work / "voice", "--voices", work / "voices", "--port",
                               str(port), "--host", "localhost", "--metrics-port", str(mport)],
                              stdout=server_log, stderr=subprocess.STDOUT)
    try:
        wait_serving(target, server)
        ref, ref_text = make_reference(work / "data", work / "reference.wav")
        run(tool("gsv-voices"), "--server", target, "add", "--voice", "demo", "--ref-audio", ref, "--ref-text", ref_text,
            "--ref-lang", "en", "--consent", "synthetic espeak-ng voice generated by the demo")
        say = run(tool("gsv-say"), "--server", target, "--voice", "demo", "--text", SENTENCE, "-o", out / "demo.wav",
                  "--seed", 7, "--max-audio-seconds", 12, capture_output=True, text=True)
        print(say.stdout.strip())
        log("6/6 serving benchmark")
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
    minutes = (time.time() - t_start) / 60
    log(f"done in {minutes:.1f} min: {out / 'demo.wav'}, {out / 'bench.png'}, {out / 'bench.json'}; "
        f"server log {work / 'server.log'}")
    print(json.dumps({"demo_wav": str(out / "demo.wav"), "bench_png": str(out / "bench.png"),
                      "minutes": round(minutes, 2), "tensorrt": trt_note, "base": "pretrained" if pre else "tiny",
                      "model_version": json.loads((work / "voice" / "manifest.json").read_text())["model_version"]}))
    return 0


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
