"""``python -m export.gpu_parity --bundle B --out R.json``: every GPU runtime of an exported bundle against
PyTorch on the same GPU (run by ``scripts/gpu_check.sh``).

Runtimes: ONNX Runtime with the CUDA provider (``onnx`` on ``cuda``), ONNX Runtime with the TensorRT provider
(``onnx`` on ``tensorrt``, engines cached under BUNDLE/trt/ort-ep-cache) and the native TensorRT engines
(``trt``, needs ``gsv-export --trt``).  For each: greedy tokens over 50 steps and the decoder+vocoder SNR
(export.verify's measures), judged with the FP16 tolerances for the TensorRT runtimes (FP16 engines) and
the FP32 ones for the CUDA provider.  Exit 2 without a CUDA GPU; 1 when a runtime misses its tolerance.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from export import verify as V

log = logging.getLogger(__name__)

RUNTIMES = (("onnx-cuda", "onnx", "cuda", "fp32"), ("onnx-tensorrt", "onnx", "tensorrt", "fp16"),
            ("trt", "trt", "cuda", "fp16"))


def check(bundle_path: str, seed: int = 0) -> dict:
    from gsv.backends import open_backends
    from gsv.checkpoint.bundle import Bundle

    bundle = Bundle.open(bundle_path)
    ref_gpt, ref_audio = open_backends(bundle, "torch", device="cuda")
    out = {"bundle": str(bundle.path), "model_version": bundle.model_version, "runtimes": {}}
    for label, backend, device, tol_name in RUNTIMES:
        tol = V.TOLERANCES[tol_name]
        try:
            gpt, audio = open_backends(bundle, backend, device=device)
        except Exception as e:  # noqa: BLE001 - a runtime that cannot open is reported, the others still run
            out["runtimes"][label] = {"error": f"{type(e).__name__}: {e}", "passed": False}
            continue
        greedy = V.greedy_check(ref_gpt, gpt, seed)
        sound = V.audio_snr(ref_audio, audio, seed)
        ok = sound["snr_db"] >= tol.snr_db and (greedy["greedy_tokens_match"] or not tol.greedy_must_match)
        out["runtimes"][label] = {**greedy, **sound, "tolerance": tol_name, "passed": bool(ok)}
        log.info("%s: greedy match %s, SNR %.1f dB", label, greedy["greedy_tokens_match"], sound["snr_db"])
    out["passed"] = all(r["passed"] for r in out["runtimes"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.gpu_parity", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if not torch.cuda.is_available():
        print("export.gpu_parity: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    from export.pipeline import json_safe

    report = check(args.bundle, args.seed)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(json_safe(report), f, indent=2)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
