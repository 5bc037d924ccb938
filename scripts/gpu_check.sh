#!/usr/bin/env bash
# The GPU measurement in one command:  scripts/gpu_check.sh BUNDLE OUT   (or: make gpu-check BUNDLE=... OUT=...)
#
# On a CUDA machine (after `make setup` on a fresh clone):
#   1. installs tensorrt and onnxruntime-gpu into the project's virtualenv;
#   2. exports a copy of BUNDLE (weights hard-linked; BUNDLE itself is not modified) with gsv-export --trt:
#      FP32/FP16 ONNX graphs and FP16 TensorRT engines, verified against PyTorch (OUT/verify.json);
#   3. checks the ORT CUDA and TensorRT providers and the native engines against PyTorch on the GPU
#      (OUT/provider_parity.json);
#   4. gsv-bench components with torch, onnx (CUDA provider) and trt (OUT/components.json);
#   5. a gsv-bench serve sweep at 1, 4, 16 and 64 concurrent streams, native TensorRT vs the ORT CUDA
#      provider, interleaved in one run (OUT/serve.json, OUT/serve.png);
#   6. OUT/summary.json with the headline figures.
# Budget: about 8 minutes on one H100-class GPU with a full-size bundle.
# Without a GPU it exits 2 at once with one line and writes nothing.
set -euo pipefail

die() { echo "gpu_check: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: scripts/gpu_check.sh BUNDLE OUT"
BUNDLE=$1
OUT=$2
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    die "no CUDA GPU on this machine (nvidia-smi lists none); run this on a GPU host"
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || die "no project virtualenv at $REPO/.venv: run 'make setup' first"
[ -f "$BUNDLE/manifest.json" ] || die "$BUNDLE is not a bundle (no manifest.json)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
step() { echo "== $* ($(date +%T))" | tee -a "$LOG"; }
START=$(date +%s)

step "1/6 GPU packages (tensorrt, onnxruntime-gpu)"
if ! "$PY" -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
    "$PY" -m pip uninstall -y -q onnxruntime >>"$LOG" 2>&1 || true  # the CPU build shadows the GPU one
    "$PY" -m pip install -q onnxruntime-gpu >>"$LOG" 2>&1
fi
"$PY" -c "import tensorrt" 2>/dev/null || "$PY" -m pip install -q tensorrt >>"$LOG" 2>&1
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
    || die "torch in $REPO/.venv has no CUDA support on this machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"

step "2/6 export: ONNX FP32/FP16 + TensorRT FP16 engines, verified"
WORK="$OUT/bundle"
rm -rf "$WORK"
cp -al "$BUNDLE" "$WORK" 2>/dev/null || cp -a "$BUNDLE" "$WORK"
rm -rf "$WORK/onnx" "$WORK/trt"  # hard links of an earlier export must not be written through
"$PY" -m export --bundle "$WORK" --precision fp32,fp16 --trt --no-progress --report "$OUT/export_report.json" \
    2>>"$LOG" | tee -a "$LOG"
cp "$WORK/onnx/verify.json" "$OUT/verify.json"

step "3/6 ORT CUDA / TensorRT providers and native engines vs PyTorch"
"$PY" -m export.gpu_parity --bundle "$WORK" --out "$OUT/provider_parity.json" 2>>"$LOG" \
    || echo "provider parity: a runtime missed its tolerance (see provider_parity.json)" | tee -a "$LOG"

step "4/6 components: torch, onnx (CUDA provider), trt"
"$PY" -m benchmarks components --bundle "$WORK" --backends torch,onnx,trt --device cuda \
    --out "$OUT/components.json" >/dev/null 2>>"$LOG"

step "5/6 serving sweep at 1, 4, 16, 64 streams: trt vs onnx on cuda"
"$PY" - "$OUT/reference.wav" <<'EOF'
import sys

import soundfile as sf

from export.calibration import voiced_signal

sf.write(sys.argv[1], voiced_signal(5.0, 32000, seed=7), 32000)
EOF
SPEC="bundle=$WORK,device=cuda,max-live=64,max-queue=64"
"$PY" -m benchmarks serve --compare "$SPEC,backend=trt" "$SPEC,backend=onnx" \
    --ref-audio "$OUT/reference.wav" --ref-text "The reference voice speaks slowly and clearly." --ref-lang en \
    --concurrency 1,4,16,64 --requests 64 --max-audio-seconds 4 --out "$OUT/serve.json" --plot "$OUT/serve.png" \
    >/dev/null 2>>"$LOG"

step "6/6 summary"
"$PY" - "$OUT" "$START" <<'EOF'
import json
import sys
import time
from pathlib import Path

out, start = Path(sys.argv[1]), float(sys.argv[2])
load = lambda name: json.loads((out / name).read_text())
verify, parity, comp, serve = load("verify.json"), load("provider_parity.json"), load("components.json"), load("serve.json")
summary = {
    "gpu": (out / "gpu.txt").read_text().strip(),
    "export_verified": verify.get("passed"),
    "trt_engines": {k: verify.get("trt", {}).get(k) for k in ("passed", "greedy_tokens_match", "snr_db")},
    "provider_parity": {k: {m: r.get(m) for m in ("passed", "greedy_tokens_match", "snr_db", "error")}
                        for k, r in parity["runtimes"].items()},
    "gpt_decode_ms_per_token": comp["gpt_decode_ms_per_token"],
    "decoder_vocoder_ms_per_audio_second": comp["decoder_vocoder_ms_per_audio_second"],
    "serve_trt": [{k: lv.get(k) for k in ("concurrency", "ttfa_ms_p50", "ttfa_ms_p95", "audio_seconds_per_second",
                                          "underruns", "errors")} for lv in serve["A"]["levels"]],
    "serve_onnx_cuda": [{k: lv.get(k) for k in ("concurrency", "ttfa_ms_p50", "ttfa_ms_p95",
                                                "audio_seconds_per_second", "underruns", "errors")}
                        for lv in serve["B"]["levels"]],
    "minutes": round((time.time() - start) / 60, 2),
}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
