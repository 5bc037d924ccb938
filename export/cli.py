"""``gsv-export``: ONNX graphs (FP32 / INT8 / FP16) and FP16 TensorRT engines of a bundle, verified.

Exit codes: 0 exported and verified; 1 verification failed (a documented tolerance was exceeded;
the report names which, nothing is installed); 2 user error (missing bundle, unsupported version,
unwritable bundle, --trt without a GPU or tensorrt); 130 interrupted (nothing is installed).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from gsv.errors import GsvError

from export.graphs import GRAPHS, PRECISIONS

log = logging.getLogger("export")


def _csv(allowed):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gsv-export", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", required=True, help="bundle directory (written in place, atomically)")
    p.add_argument("--precision", type=_csv(PRECISIONS), default=("fp32", "int8"),
                   help="comma-separated ONNX precisions; fp32 is always written (the base of the others)")
    p.add_argument("--graphs", type=_csv(tuple(GRAPHS)), default=tuple(GRAPHS), help="comma-separated graphs")
    p.add_argument("--trt", action="store_true", help="also build FP16 TensorRT engines (needs a CUDA GPU + tensorrt)")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--verify", dest="verify", action="store_true", default=True,
                   help="verify against PyTorch before installing (the default)")
    v.add_argument("--no-verify", dest="verify", action="store_false", help="skip verification")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    p.add_argument("--report", help="also write the verification report to this file (kept on failure)")
    p.add_argument("--calibration-audio", nargs="+", default=(), metavar="WAV",
                   help="reference audio for the INT8 decoder/vocoder calibration (a voice's own reference is best; "
                        "default: a synthetic voiced signal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from export.pipeline import ExportOptions, VerificationFailed, export_bundle, json_safe

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        opts = ExportOptions(precisions=args.precision, graphs=args.graphs, trt=args.trt, verify=args.verify,
                             threads=args.threads, seed=args.seed, progress=not args.no_progress,
                             calibration_audio=tuple(args.calibration_audio))
        report = export_bundle(args.bundle, opts)
    except VerificationFailed as e:
        _write_report(args.report, json_safe(e.report))
        print(f"gsv-export: {e}", file=sys.stderr)
        return e.exit_code
    except GsvError as e:
        print(f"gsv-export: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("gsv-export: interrupted; the bundle is unchanged", file=sys.stderr)
        return 130
    _write_report(args.report, json_safe(report))
    summary = {p: {"passed": r.get("passed"), "greedy_tokens_match": r.get("greedy_tokens_match"),
                   "snr_db": r.get("snr_db")} for p, r in report.get("precisions", {}).items()}
    a8 = report.get("precisions", {}).get("int8", {}).get("audio_int8")
    if a8:
        summary["int8"]["audio_int8"] = {k: a8[k] for k in ("passed", "snr_db", "log_mel_l1", "fallback")}
    print(json.dumps(json_safe({"bundle": args.bundle, "verified": report["verified"], "precisions": summary})))
    return 0


def _write_report(path: str | None, report: dict) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
