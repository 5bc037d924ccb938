"""``gsv-bench models``: one server holding several models — memory, cold loads, throughput, fairness, blending.

    gsv-bench models --bundle DIR --ref-audio A.wav --ref-audio B.wav --ref-text "..." --ref-lang en --out R.json
                     [--copies 3] [--parts memory,load,throughput,fairness,blend] [--backend onnx]

"Different models" are ``--copies`` folders of one bundle (symbolic links to its files, so nothing is
copied on disk; each is loaded as a separate model with its own memory).  Every part launches its own
``gsv-serve --models`` subprocess and reports ratios measured in the same run:

* ``memory``: the server's RSS as the copies load one by one; each model's increment against its own
  weight bytes (the files its backend loads), i.e. the per-model overhead beyond the weights;
* ``load``: a model's cold load (the server's load seconds) and the time to first audio of a request
  that triggers a load against one that finds the model resident;
* ``throughput``: two models with 4 streams each against one model with 8 streams, same server,
  interleaved rounds: aggregate audio seconds per wall second and their ratio;
* ``fairness``: one model flooded with ``--flood`` long streams, a single stream on another model:
  its time to first audio beside the flood against alone (median of ``--probes``);
* ``blend``: voices A, B and their 50/50 blend synthesize the same sentences; speaker similarity
  (pretrained encoder, :mod:`gsv.quality`) between the blend and each source, and between the
  sources, plus the cosine of their timbre vectors.  With random weights the audio is noise-like:
  the figures show what blending does to the timbre the model conditions on, not voice quality.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import statistics
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

from benchmarks.serve import LaunchedServer, machine
from clients.tts_client import AsyncTtsClient, TtsClient

PARTS = ("memory", "load", "throughput", "fairness", "blend")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Welcome back, traveler. The gates open at dawn.",
         "Take this sword, and may it serve you well.", "The market is closed today, come back tomorrow morning."]


def add_arguments(p) -> None:
    p.add_argument("--bundle", required=True, help="the bundle whose copies are the models")
    p.add_argument("--copies", type=int, default=3, help="models (copies of --bundle) for the memory part")
    p.add_argument("--backend", default=None, help="server backend (default: onnx when the bundle has ONNX graphs)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--ref-audio", action="append", required=True, help="reference WAV (give two: voices A and B)")
    p.add_argument("--ref-text", required=True)
    p.add_argument("--ref-lang", default="en")
    p.add_argument("--lang", default="en")
    p.add_argument("--max-audio-seconds", type=float, default=4.0, help="audio per request")
    p.add_argument("--requests", type=int, default=16, help="requests per throughput round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds per configuration")
    p.add_argument("--flood", type=int, default=6, help="streams flooding one model (fairness)")
    p.add_argument("--probes", type=int, default=5, help="single-stream requests measured per condition")
    p.add_argument("--max-live", type=int, default=8)
    p.add_argument("--speaker-model", help="local speechbrain spkrec-ecapa-voxceleb folder instead of Resemblyzer")
    p.add_argument("--out", required=True)
    p.add_argument("--keep", action="store_true", help="keep the temporary model folders")


# ----------------------------------------------------------------------------------- helpers
def make_copies(bundle: Path, n: int, root: Path) -> list[Path]:
    """``n`` model folders m1..mn holding symbolic links to the bundle's files (manifest copied)."""
    out = []
    for i in range(1, n + 1):
        d = root / f"m{i}"
        d.mkdir(parents=True)
        for item in bundle.iterdir():
            if item.name == "manifest.json":
                shutil.copy(item, d / item.name)
            else:
                (d / item.name).symlink_to(item.resolve())
        out.append(d)
    return out


def weight_bytes(bundle: Path, backend: str | None) -> int:
    """Bytes of the weight files the server's backend loads for one model (its own weights)."""
    from gsv.checkpoint.bundle import Bundle
    from server.models import default_backend

    b = Bundle.open(bundle)
    backend = backend or default_backend(b)
    if backend.startswith("onnx"):
        from gsv.backends.onnx_backend import AUDIO_GRAPHS, GPT_GRAPHS, PRECISION_OF, find_artifact

        arts = [find_artifact(b, g, PRECISION_OF[backend]) for g in GPT_GRAPHS + AUDIO_GRAPHS]
        files = [f for a in arts for f in (a["file"], a.get("data_file")) if f]
    else:
        files = ["gpt.safetensors", "sovits.safetensors"]
    return sum((b.path / f).stat().st_size for f in files)


def rss_bytes(pid: int) -> int:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) * 1024


class Args:
    """What LaunchedServer reads from the command line (voice registration, token)."""

    def __init__(self, args, voice: str, ref: str):
        self.token, self.voice, self.ref_audio, self.ref_text, self.ref_lang = None, voice, ref, args.ref_text, \
            args.ref_lang


def launch(args, models_dir: Path, **opts) -> LaunchedServer:
    spec = {"models": str(models_dir), "max-live": str(args.max_live), "max-queue": str(4 * args.max_live),
            "max-audio-seconds": str(max(args.max_audio_seconds, 60.0))} | {k: str(v) for k, v in opts.items()}
    if args.backend:
        spec["backend"] = args.backend
    return LaunchedServer(",".join(f"{k}={v}" for k, v in spec.items()), Args(args, "a", args.ref_audio[0]))


def stream(target: str, args, model: str, seed: int, text: str | None = None, seconds: float | None = None,
           voice: str = "a"):
    with TtsClient(target, timeout=600) as c:
        return c.stream(text or TEXTS[seed % len(TEXTS)], voice, language=args.lang, seed=seed, model=model,
                        max_audio_seconds=seconds or args.max_audio_seconds)


def models_info(target: str) -> dict:
    with TtsClient(target) as c:
        return {m.model_id: m for m in c.list_models().models}


# ----------------------------------------------------------------------------------- parts
def part_memory_and_load(args, root: Path, weights: int) -> tuple[dict, dict]:
    models = make_copies(Path(args.bundle), args.copies, root / "memory")
    srv = launch(args, root / "memory")
    try:
        stream(srv.target, args, "m1", seed=1)  # warm: the default model (loaded at start) and its voice
        steps = [{"resident": 1, "rss_bytes": rss_bytes(srv.proc.pid)}]
        load_ttfa, warm_ttfa = [], []
        for i, m in enumerate(models[1:], start=2):
            cold = stream(srv.target, args, m.name, seed=i)  # triggers the load
            warm = stream(srv.target, args, m.name, seed=i)  # same request, model resident
            load_ttfa.append(cold.ttfa_ms)
            warm_ttfa.append(warm.ttfa_ms)
            steps.append({"resident": i, "rss_bytes": rss_bytes(srv.proc.pid), "cold_ttfa_ms": cold.ttfa_ms,
                          "warm_ttfa_ms": warm.ttfa_ms})
        info = models_info(srv.target)
    finally:
        srv.stop()
    increments = [b["rss_bytes"] - a["rss_bytes"] for a, b in zip(steps, steps[1:])]
    memory = {"model_weight_bytes": weights, "steps": steps, "increment_bytes": increments,
              "increment_over_weights": [x / weights for x in increments],
              "overhead_fraction_mean": statistics.mean(increments) / weights - 1 if increments else None,
              "first_model_rss_bytes": steps[0]["rss_bytes"],
              "note": "RSS of the server process after each model's first request (load + voice carried to it)"}
    loads = [info[m.name].load_seconds for m in models]
    load = {"load_seconds": {m.name: info[m.name].load_seconds for m in models},
            "cold_load_seconds_mean": statistics.mean(loads[1:]) if len(loads) > 1 else loads[0],
            "ttfa_ms_triggering_load": load_ttfa, "ttfa_ms_resident": warm_ttfa,
            "ttfa_load_over_resident": statistics.mean(load_ttfa) / statistics.mean(warm_ttfa) if warm_ttfa else None}
    return memory, load


async def _closed_loop(target: str, args, plan: list[str], requests: int) -> tuple[float, float, dict]:
    """``plan``: the model of each concurrent worker; ``requests`` in all. -> (audio s, wall s, ttfa by model)."""
    counter = iter(range(requests))
    audio, ttfa = [0.0], {}
    async with AsyncTtsClient(target, timeout=900) as client:
        async def worker(model: str):
            for i in counter:
                r = await client.stream(TEXTS[i % len(TEXTS)], "a", language=args.lang, seed=1000 + i, model=model,
                                        max_audio_seconds=args.max_audio_seconds)
                audio[0] += r.audio_seconds
                ttfa.setdefault(model, []).append(r.ttfa_ms)

        t0 = time.monotonic()
        await asyncio.gather(*(worker(m) for m in plan))
        return audio[0], time.monotonic() - t0, ttfa


def part_throughput(args, root: Path) -> dict:
    make_copies(Path(args.bundle), 2, root / "throughput")
    srv = launch(args, root / "throughput", preload="m2")
    configs = {"one_model_8_streams": ["m1"] * 8, "two_models_4_streams_each": ["m1"] * 4 + ["m2"] * 4}
    runs: dict[str, list] = {k: [] for k in configs}
    try:
        stream(srv.target, args, "m1", seed=1)
        stream(srv.target, args, "m2", seed=1)
        for r in range(args.rounds):
            order = list(configs) if r % 2 == 0 else list(configs)[::-1]
            for name in order:
                audio, wall, ttfa = asyncio.run(_closed_loop(srv.target, args, configs[name], args.requests))
                runs[name].append({"audio_seconds": audio, "wall_seconds": wall, "audio_seconds_per_second": audio / wall,
                                   "ttfa_ms_p50_by_model": {m: float(np.median(v)) for m, v in ttfa.items()}})
    finally:
        srv.stop()
    rate = {k: sum(x["audio_seconds"] for x in v) / sum(x["wall_seconds"] for x in v) for k, v in runs.items()}
    return {"runs": runs, "audio_seconds_per_second": rate,
            "two_models_over_one": rate["two_models_4_streams_each"] / rate["one_model_8_streams"], "goal": ">= 0.85"}


def part_fairness(args, root: Path) -> dict:
    make_copies(Path(args.bundle), 2, root / "fairness")
    srv = launch(args, root / "fairness", preload="m2")
    stop = threading.Event()
    try:
        stream(srv.target, args, "m1", seed=1)

        def probe(i) -> float:
            """Time to first audio of one request on m2 (the stream is closed after its first chunk)."""
            with TtsClient(srv.target, timeout=600) as c:
                t0 = time.monotonic()
                for _ in c.stream_chunks(TEXTS[i % len(TEXTS)], "a", language=args.lang, seed=i, model="m2",
                                         max_audio_seconds=args.max_audio_seconds):
                    return 1000 * (time.monotonic() - t0)
            raise RuntimeError("no audio")

        probe(0)
        alone = [probe(i) for i in range(1, args.probes + 1)]
        started = threading.Semaphore(0)

        def flood(i):
            with TtsClient(srv.target, timeout=900) as c:
                for n, _ in enumerate(c.stream_chunks(" ".join(TEXTS * 6), "a", language=args.lang, seed=500 + i,
                                                      model="m1", max_audio_seconds=60)):
                    if n == 0:
                        started.release()
                    if stop.is_set():
                        break

        threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(args.flood)]
        for t in threads:
            t.start()
        for _ in threads:
            started.acquire(timeout=900)
        flooded = [probe(i) for i in range(1, args.probes + 1)]
        still = sum(t.is_alive() for t in threads)
    finally:
        stop.set()
        srv.stop()
    ratio = statistics.median(flooded) / statistics.median(alone)
    return {"single_stream_ttfa_ms_alone": alone, "single_stream_ttfa_ms_beside_flood": flooded,
            "flood_streams": args.flood, "flood_streams_running_at_end": still,
            "ttfa_ratio_median": ratio, "goal": "<= 2"}


def part_blend(args, root: Path) -> dict:
    from gsv.audio import read_audio
    from gsv.quality import cosine, open_speaker_encoder

    make_copies(Path(args.bundle), 1, root / "blend")
    srv = launch(args, root / "blend")
    try:
        with TtsClient(srv.target, timeout=600) as c:
            c.register_voice("b", Path(args.ref_audio[1]).read_bytes(), args.ref_text, args.ref_lang,
                             consent="benchmark reference voice")
            c.blend_voice("ab", [("a", 0.5), ("b", 0.5)])
            audio = {v: np.concatenate([_pcm(c.synthesize(t, v, language=args.lang, seed=7, encoding="wav",
                                                          max_audio_seconds=args.max_audio_seconds).audio)
                                        for t in TEXTS]) for v in ("a", "b", "ab")}
    finally:
        srv.stop()
    voices = _stored_voices(srv.voices, ("a", "b", "ab"))
    encoder = open_speaker_encoder(args.speaker_model)
    emb = {v: encoder.embed(x, 32000) for v, x in audio.items()}
    refs = {v: encoder.embed(*read_audio(p)) for v, p in zip("ab", args.ref_audio)}
    ge = {v: voices[v].ge.flatten().numpy() for v in voices}
    return {"speaker_similarity": {"blend_vs_a": cosine(emb["ab"], emb["a"]), "blend_vs_b": cosine(emb["ab"], emb["b"]),
                                   "a_vs_b": cosine(emb["a"], emb["b"]),
                                   "a_vs_its_reference": cosine(emb["a"], refs["a"]),
                                   "b_vs_its_reference": cosine(emb["b"], refs["b"])},
            "timbre_vector_cosine": {"blend_vs_a": cosine(ge["ab"], ge["a"]), "blend_vs_b": cosine(ge["ab"], ge["b"]),
                                     "a_vs_b": cosine(ge["a"], ge["b"])},
            "caveat": "random-weight model: the audio is noise-like, so the encoder's similarities say little about "
                      "voices; the timbre-vector cosines show the blend halfway between its sources"}


def _pcm(wav_bytes: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(wav_bytes)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32767


def _stored_voices(voices_dir: str, ids) -> dict:
    from gsv.voice import VoiceStore

    store = VoiceStore(voices_dir)
    return {v: store.load(v) for v in ids}


# ----------------------------------------------------------------------------------- main
def run(args) -> int:
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown or len(args.ref_audio) < (2 if "blend" in parts else 1):
        print(f"gsv-bench: error: --parts takes {', '.join(PARTS)}; blend needs two --ref-audio")
        return 2
    root = Path(tempfile.mkdtemp(prefix="gsv-bench-models-"))
    report = {"benchmark": "models", "machine": machine(), "bundle": str(args.bundle), "backend": args.backend,
              "max_audio_seconds": args.max_audio_seconds, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "load_average_start": os.getloadavg()}
    try:
        if "memory" in parts or "load" in parts:
            report["memory"], report["load"] = part_memory_and_load(args, root, weight_bytes(Path(args.bundle),
                                                                                             args.backend))
        if "throughput" in parts:
            report["throughput"] = part_throughput(args, root)
        if "fairness" in parts:
            report["fairness"] = part_fairness(args, root)
        if "blend" in parts:
            report["blend"] = part_blend(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(report, indent=2))
    summary = {"out": args.out}
    for key, path in (("overhead_fraction_mean", ("memory", "overhead_fraction_mean")),
                      ("cold_load_seconds", ("load", "cold_load_seconds_mean")),
                      ("ttfa_load_over_resident", ("load", "ttfa_load_over_resident")),
                      ("two_models_over_one", ("throughput", "two_models_over_one")),
                      ("fairness_ttfa_ratio", ("fairness", "ttfa_ratio_median"))):
        if path[0] in report:
            summary[key] = report[path[0]][path[1]]
    print(json.dumps(summary))
    return 0
