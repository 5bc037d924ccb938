"""Exporting a bundle atomically: graphs -> precisions -> verification -> (TensorRT) -> install.

Everything is written under a temporary directory inside the bundle (same filesystem, so the final
moves are renames).  Only when every file is written and verification passed is the new ``onnx/``
(and ``trt/``) directory swapped in and the manifest rewritten; a failure, a failed verification
or an interruption (Ctrl-C) removes the temporary directory and leaves the bundle as it was.
Artifacts of earlier exports that this run does not replace are carried over (hard links).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gsv.checkpoint.bundle import Bundle, replace_dir, sha256_file, update_manifest
from gsv.errors import BundleError, GsvError

from export import verify as V
from export.graphs import GRAPHS, OPSET, PRECISIONS, applies, constants, io_manifest
from export.onnx_export import convert_fp16, export_fp32, externalize, quantize_int8, quantize_int8_static
from export.wrappers import ExportModels

log = logging.getLogger(__name__)

SUPPORTED_MODEL_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
TMP_PREFIX = ".export.tmp-"
VERIFY_FILE = "verify.json"


class VerificationFailed(GsvError):
    """An exported graph exceeded a documented tolerance (CLI exit code 1); nothing was installed."""

    exit_code = 1

    def __init__(self, report: dict):
        self.report = report
        fails = [f for p in report["precisions"].values() for f in p.get("failures", [])]
        super().__init__("verification failed: " + "; ".join(fails))


@dataclass(frozen=True)
class ExportOptions:
    precisions: tuple[str, ...] = ("fp32", "int8")
    graphs: tuple[str, ...] = tuple(GRAPHS)
    trt: bool = False
    verify: bool = True
    threads: int | None = None
    seed: int = 0
    greedy_steps: int = V.GREEDY_STEPS
    progress: bool = True
    calibration_audio: tuple[str, ...] = ()  # references for the INT8 audio graphs' calibration

    def __post_init__(self):
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise GsvError(f"unknown precision {bad[0]!r} (choose from {', '.join(PRECISIONS)})")
        bad = [g for g in self.graphs if g not in GRAPHS]
        if bad:
            raise GsvError(f"unknown graph {bad[0]!r} (choose from {', '.join(GRAPHS)})")


@dataclass
class _Plan:
    """Files this run writes: (graph, precision) -> path inside the temporary directory."""

    onnx: dict[tuple[str, str], Path] = field(default_factory=dict)
    trt: dict[str, tuple[Path, dict]] = field(default_factory=dict)
    # verified but outside their tolerance: not installed, and earlier exports of them are removed
    withdrawn: set[tuple[str, str]] = field(default_factory=set)


def open_checked(path: str | Path) -> Bundle:
    bundle = Bundle.open(path)
    if bundle.model_version not in SUPPORTED_MODEL_VERSIONS:
        raise BundleError(f"bundle {bundle.path} holds a GPT-SoVITS {bundle.model_version} model; "
                          f"gsv-export supports {', '.join(SUPPORTED_MODEL_VERSIONS)}")
    return bundle


def _make_tmp(bundle_path: Path) -> Path:
    for stale in bundle_path.glob(TMP_PREFIX + "*"):  # left by a killed export (SIGKILL skips cleanup)
        log.warning("removing stale export directory %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if not os.access(bundle_path, os.W_OK):
        raise GsvError(f"cannot write into bundle {bundle_path} (permission denied)")
    for sub in ("onnx", "trt"):
        if (bundle_path / sub).exists() and not (bundle_path / sub).is_dir():
            raise GsvError(f"cannot write {bundle_path / sub}: a file of that name is in the way")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=bundle_path))
        (tmp / "onnx").mkdir()
        (tmp / "trt").mkdir()
    except OSError as e:
        raise GsvError(f"cannot write into bundle {bundle_path}: {e.strerror}") from None
    return tmp


def export_bundle(path: str | Path, opts: ExportOptions = ExportOptions()) -> dict:
    """Export, verify and install; returns the verification report (also in BUNDLE/onnx/verify.json)."""
    bundle = open_checked(path)
    trt_env = None
    if opts.trt:
        from export.trt import check_environment

        trt_env = check_environment()  # before anything is written
    tmp = _make_tmp(bundle.path)
    try:
        report, plan = _export_into(bundle, tmp, opts, trt_env)
        _install(bundle, tmp, plan, report, trt_env)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_into(bundle: Bundle, tmp: Path, opts: ExportOptions, trt_env) -> tuple[dict, _Plan]:
    from tqdm import tqdm

    models = ExportModels.from_bundle(bundle)
    consts = constants(bundle.gpt_config, bundle.sovits_config)
    precisions = ["fp32"] + [p for p in opts.precisions if p != "fp32"]  # fp32 is the base of the others
    graphs = [g for g in opts.graphs if applies(GRAPHS[g], consts)]
    skipped = [g for g in opts.graphs if g not in graphs]
    if skipped:
        log.info("not exporting %s: only for v2Pro/v2ProPlus bundles", ", ".join(skipped))
    steps = [("export", g, "fp32") for g in graphs]
    steps += [("int8", g, "int8") for g in graphs if "int8" in precisions and GRAPHS[g].quantize]
    steps += [("int8s", g, "int8") for g in graphs if "int8" in precisions and GRAPHS[g].quantize_static]
    steps += [("fp16", g, "fp16") for g in graphs if "fp16" in precisions]
    steps += [("verify", "", p) for p in precisions if opts.verify]
    steps += [("trt", g, "fp16") for g in graphs if trt_env is not None]
    plan = _Plan()
    report = {"format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "torch_version": torch.__version__, "onnxruntime_version": _ort_version(), "opset": OPSET,
              "seed": opts.seed, "tolerances": {p: vars(V.TOLERANCES[p]) for p in precisions},
              "precisions": {}, "verified": opts.verify}
    bar = tqdm(steps, desc="gsv-export", unit="step", disable=not opts.progress or not sys.stderr.isatty())
    calibration = None
    for kind, graph, precision in bar:
        bar.set_postfix_str(f"{kind} {graph or precision}")
        out = tmp / "onnx" / f"{graph}.{precision}.onnx"
        if kind == "export":
            export_fp32(graph, out, consts, models)
        elif kind == "int8":
            quantize_int8(plan.onnx[(graph, "fp32")], out)
        elif kind == "int8s":
            if calibration is None:
                from export.calibration import audio_calibration

                calibration = audio_calibration(models, seed=opts.seed, audio_files=[Path(p) for p in opts.calibration_audio])
            quantize_int8_static(plan.onnx[(graph, "fp32")], out, calibration[graph])
        elif kind == "fp16":
            convert_fp16(plan.onnx[(graph, "fp32")], out)
        elif kind == "verify":
            report["precisions"][precision] = _verify_precision(precision, plan, models, consts, opts)
            continue
        elif kind == "trt":
            from export.trt import build_engine

            plan_path = tmp / "trt" / trt_env.engine_name(graph)
            info = build_engine(plan.onnx[(graph, "fp32")], plan_path, graph, consts, _timing_cache(bundle, tmp))
            plan.trt[graph] = (plan_path, info)
            continue
        plan.onnx[(graph, precision)] = out
    if opts.verify:
        report["passed"] = all(p["passed"] for p in report["precisions"].values())
        if not report["passed"]:
            raise VerificationFailed(report)
    if trt_env is not None and opts.verify:
        from export.trt_verify import verify_engines

        report["trt"] = verify_engines(bundle, plan.trt, models, consts, opts.seed)
        if not report["trt"]["passed"]:
            report["passed"] = False
            raise VerificationFailed(report)
    return report, plan


def _timing_cache(bundle: Bundle, tmp: Path) -> Path:
    """The timing cache lives in BUNDLE/trt/ across builds; this run works on a copy."""
    dst = tmp / "trt" / "timing.cache"
    src = bundle.path / "trt" / "timing.cache"
    if src.is_file() and not dst.exists():
        shutil.copyfile(src, dst)
    return dst


def _verify_precision(precision: str, plan: _Plan, models: ExportModels, consts: dict, opts: ExportOptions) -> dict:
    from gsv.backends.onnx_backend import OnnxAudioBackend, OnnxGPTBackend, OrtGraph
    from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend

    tol = V.TOLERANCES[precision]
    cases = V.size_cases(opts.seed)
    files = {g: p for (g, p_), p in plan.onnx.items() if p_ == precision}
    sessions = {g: OrtGraph(p, "cpu", opts.threads) for g, p in files.items()}
    # statically quantised audio graphs are judged on their audio together (below), not per graph
    static = [g for g in sessions if precision == "int8" and GRAPHS[g].quantize_static]
    graphs = {}
    for g, sess in sessions.items():
        if g in static:
            continue
        graphs[g] = V.compare_graph(g, sess, models, consts, cases, tol, opts.seed)
        log.info("%s %s: max abs %.3g, max rel %.3g", precision, g, graphs[g]["max_abs_error"], graphs[g]["max_rel_error"])
    greedy = audio = None
    gpt, sovits = models.gpt, models.sovits
    if "gpt_prefill" in sessions and "gpt_decode" in sessions:
        ort_gpt = OnnxGPTBackend(gpt.cfg, sessions["gpt_prefill"], sessions["gpt_decode"])
        greedy = V.greedy_check(TorchGPTBackend(gpt), ort_gpt, opts.seed, opts.greedy_steps)
    window = sessions.get("sovits_window") or _fp32_session(plan, "sovits_window", opts)
    vocoder = sessions.get("vocoder") or _fp32_session(plan, "vocoder", opts)
    audio_int8 = None
    if window is not None and vocoder is not None:
        measured = V.audio_snr(TorchAudioBackend(sovits), OnnxAudioBackend(sovits.cfg, window, vocoder), opts.seed)
        if static:
            audio_int8 = V.judge_int8_audio(measured)
            audio_int8["graphs"] = static
            log.info("int8 decoder+vocoder: SNR %.1f dB, log-mel L1 %.3f: %s", measured["snr_db"], measured["log_mel_l1"],
                     "installed" if audio_int8["passed"] else "outside tolerance, onnx-int8 keeps the FP32 audio graphs")
            if not audio_int8["passed"]:
                for g in static:
                    plan.withdrawn.add((g, precision))
        elif precision != "int8":
            audio = measured
    out = V.summarize(precision, graphs, greedy, audio)
    if audio_int8 is not None:
        out["audio_int8"] = audio_int8
    return out


def _fp32_session(plan: _Plan, graph: str, opts: ExportOptions):
    from gsv.backends.onnx_backend import OrtGraph

    p = plan.onnx.get((graph, "fp32"))
    return OrtGraph(p, "cpu", opts.threads) if p is not None else None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# ------------------------------------------------------------------------------------------ install
def _artifact_key(a: dict) -> tuple:
    return a.get("kind"), a.get("graph"), a.get("precision"), a.get("gpu_arch"), a.get("trt_version")


def _install(bundle: Bundle, tmp: Path, plan: _Plan, report: dict, trt_env) -> None:
    consts = constants(bundle.gpt_config, bundle.sovits_config)
    new_artifacts = []
    for key in plan.withdrawn:
        plan.onnx.pop(key).unlink()
    for (graph, precision), p in plan.onnx.items():
        verified = report["precisions"].get(precision, {}).get("passed") if report["verified"] else None
        data = externalize(p)  # after verification: the graph's meaning is unchanged, only where its weights live
        new_artifacts.append({
            "kind": "onnx", "graph": graph, "precision": precision, "file": f"onnx/{p.name}", "opset": OPSET,
            "bytes": p.stat().st_size, "sha256": sha256_file(p), "io": io_manifest(GRAPHS[graph], consts),
            "verified": verified, "onnxruntime_version": report["onnxruntime_version"],
            **({"data_file": f"onnx/{data.name}", "data_bytes": data.stat().st_size, "data_sha256": sha256_file(data)}
               if data else {}),
        })
    for graph, (p, info) in plan.trt.items():
        new_artifacts.append({
            "kind": "trt", "graph": graph, "precision": "fp16", "file": f"trt/{p.name}", "gpu_arch": trt_env.gpu_arch,
            "gpu_name": trt_env.gpu_name, "trt_version": trt_env.trt_version, "bytes": p.stat().st_size,
            "sha256": sha256_file(p), "io": io_manifest(GRAPHS[graph], consts), "profile": info["profile"],
            "fp32_layers": info["fp32_layers"],
        })
    _merge_verify(bundle.path / "onnx" / VERIFY_FILE, tmp / "onnx" / VERIFY_FILE, report)
    withdrawn = {f"{g}.{p}.onnx" for g, p in plan.withdrawn}
    # a graph written again takes its weights file along: a live .data whose graph is new is stale
    stale = {f"{p.name}.data" for p in plan.onnx.values()} | {f"{w}.data" for w in withdrawn}
    _swap_dir(bundle.path / "onnx", tmp / "onnx", skip=withdrawn | stale)
    if plan.trt:
        _swap_dir(bundle.path / "trt", tmp / "trt")
    replaced = {_artifact_key(a) for a in new_artifacts}
    replaced |= {("onnx", g, p, None, None) for g, p in plan.withdrawn}

    def update(manifest):
        kept = [a for a in manifest.get("artifacts", []) if _artifact_key(a) not in replaced]
        manifest["artifacts"] = kept + new_artifacts

    update_manifest(bundle.path, update)
    log.info("installed %d artifacts into %s", len(new_artifacts), bundle.path)


def _merge_verify(old: Path, new: Path, report: dict) -> None:
    """verify.json keeps the results of precisions this run did not redo."""
    merged = dict(report)
    if old.is_file():
        try:
            prev = json.loads(old.read_text("utf-8"))
            merged["precisions"] = {**prev.get("precisions", {}), **report["precisions"]}
            merged["tolerances"] = {**prev.get("tolerances", {}), **report["tolerances"]}
        except (OSError, ValueError):
            log.warning("%s is unreadable; replacing it", old)
    new.write_text(json.dumps(json_safe(merged), indent=2) + "\n", "utf-8")


def json_safe(x):
    """Strict JSON: non-finite floats (an exact match's SNR is inf) become strings."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _swap_dir(live: Path, staged: Path, skip: set[str] = frozenset()) -> None:
    """Make ``staged`` (plus the live files it does not replace or ``skip``, hard-linked) the live directory."""
    if live.is_dir():
        for item in live.iterdir():
            target = staged / item.name
            if target.exists() or item.name in skip:
                continue
            if item.is_dir():
                shutil.copytree(item, target, copy_function=_link_or_copy)
            else:
                _link_or_copy(item, target)
    replace_dir(staged, live)


def _link_or_copy(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
