"""``gsv-bench quality``: does the voice sound like its speaker?  Measured by a pretrained speaker encoder.

    gsv-bench quality --bundle B --voice-audio DIR_OR_WAVS --sentences FILE --out R.json \
        [--backend torch] [--compare-backends onnx,onnx-int8] [--stream] [--ref-audio W --ref-text T]

* ``--voice-audio``: the training speaker's real recordings: folders (their ``*.wav``, and the
  transcripts of a ``*.list`` file inside), upstream ``.list`` files (``wav|speaker|lang|text``) or
  WAV files.  Their embeddings' centroid is "the speaker".
* ``--heldout-audio``: real recordings of the speaker that training never saw; their similarity to
  the centroid is the **ceiling** (without them: leave-one-out over ``--voice-audio``).  Noise
  signals give the **floor**.  ``relative`` = (similarity - floor) / (ceiling - floor).
* ``--sentences``: held-out text, one sentence per line, each synthesized with seed ``--seed + i``
  with the voice of ``--ref-audio``/``--ref-text`` (default: transcribed ``--voice-audio``
  utterances joined to 3-10 s).
* Per sentence and per run: ``speaker_similarity`` and cheap signal checks (seconds per phone
  against the training recordings, silence share, clipping share, peak).
* ``--compare-backends onnx,onnx-int8`` synthesizes with each backend; ``--stream`` adds a
  streamed run per backend.  ``comparisons`` gives the similarity differences (each other backend
  against the first, streamed against whole), and ``passed`` whether each stays within
  ``--max-difference`` (0.02), so INT8 and streaming are judged by a speaker model, not only by SNR.
* ``--score-audio``: also score existing recordings (e.g. a served ``demo.wav``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gsv.errors import GsvError

log = logging.getLogger(__name__)

MAX_DIFFERENCE = 0.02  # the goal for INT8 vs FP32 and streamed vs whole
REF_MIN_SECONDS, REF_MAX_SECONDS = 3.5, 9.0  # a joined reference (the server takes 3-10 s)
REF_GAP_SECONDS = 0.25
REF_SINGLE_MIN_SECONDS = 3.1  # a single recording used as it is (a margin over the server's 3 s)
# signal-check warnings
MAX_CLIPPED_SHARE = 0.001
MAX_SILENCE_SHARE = 0.5
PHONE_RATE_RANGE = (0.5, 2.0)  # seconds per phone of the synthesis / of the training data


@dataclass
class Utterance:
    path: Path
    samples: np.ndarray
    sr: int
    text: str | None = None
    lang: str | None = None

    @property
    def seconds(self) -> float:
        return self.samples.size / self.sr


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True)
    p.add_argument("--voice-audio", required=True, nargs="+",
                   help="the speaker's recordings: folders, .list or WAV files")
    p.add_argument("--heldout-audio", nargs="+", default=[], help="recordings training never saw (the ceiling)")
    p.add_argument("--sentences", required=True, help="held-out sentences, one per line")
    p.add_argument("--lang", default="en", help="language of the sentences")
    p.add_argument("--out", required=True, help="JSON report")
    p.add_argument("--backend", default="torch", help="torch | onnx | onnx-int8 | onnx-fp16 | trt")
    p.add_argument("--compare-backends", help="comma-separated backends to compare (the first is the baseline)")
    p.add_argument("--stream", action="store_true", help="also decode streamed and compare with whole-utterance")
    p.add_argument("--ref-audio", help="reference audio of the voice (default: the longest 3.1-9 s --voice-audio "
                   "recording, else several joined)")
    p.add_argument("--ref-text", help="its transcript")
    p.add_argument("--ref-lang", default="en")
    p.add_argument("--score-audio", nargs="+", default=[], help="also score these recordings")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-seconds-per-phone", type=float, default=0.25,
                   help="audio budget per sentence: 1 s + this per phone (a model that never says EOS stops there)")
    p.add_argument("--max-difference", type=float, default=MAX_DIFFERENCE)
    p.add_argument("--speaker-model", help="local speechbrain spkrec-ecapa-voxceleb folder instead of Resemblyzer")
    p.add_argument("--threads", type=int, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-audio", help="write each synthesis as a WAV into this folder")
    p.add_argument("--stages", action="store_true",
                   help="also score the speaker after each stage (reconstruction, prior from the real tokens) on "
                        "training utterances: where the voice loses its speaker (benchmarks/quality_stages.py)")


# ---------------------------------------------------------------------------------- inputs
def load_utterances(paths: list[str]) -> list[Utterance]:
    """Recordings from folders, ``.list`` files and WAV files (transcripts from ``.list`` lines)."""
    from gsv.audio import read_audio

    found: list[tuple[Path, str | None, str | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            lists = sorted(p.glob("*.list"))
            if lists:
                for lst in lists:
                    found += _read_list(lst)
            else:
                found += [(w, None, None) for w in sorted(p.rglob("*.wav"))]
        elif p.suffix == ".list" and p.is_file():
            found += _read_list(p)
        elif p.is_file():
            found.append((p, None, None))
        else:
            raise GsvError(f"{p}: no such file or folder")
    if not found:
        raise GsvError(f"no recordings found in {' '.join(paths)}")
    out, seen = [], set()
    for path, text, lang in found:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        samples, sr = read_audio(path)
        out.append(Utterance(path, samples, sr, text, lang))
    return out


def _read_list(lst: Path) -> list[tuple[Path, str | None, str | None]]:
    rows = []
    for n, line in enumerate(lst.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 4:
            raise GsvError(f"{lst}:{n}: expected wav|speaker|lang|text")
        wav = Path(parts[0])
        rows.append((wav if wav.is_absolute() else lst.parent / wav, "|".join(parts[3:]).strip(), parts[2].strip()))
    return rows


def read_sentences(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise GsvError(f"{p}: no such file")
    lines = [l.strip() for l in p.read_text("utf-8").splitlines()]
    sentences = [l for l in lines if l and not l.startswith("#")]
    if not sentences:
        raise GsvError(f"{p} has no sentences")
    return sentences


def reference_clip(utts: list[Utterance], out: Path) -> tuple[Path, str, str]:
    """A 3-9 s reference WAV from the transcribed recordings: the longest single recording in that range
    when there is one, else recordings joined with short pauses.  One recording is the layout the GPT
    trains on (one utterance as the prompt, `--prompt-pairs`); measured with the demo's voice, a prompt of
    two joined utterances made it end three of four sentences after a quarter of their tokens."""
    from gsv.audio import resample_soxr, write_wav

    transcribed = [u for u in utts if u.text]
    if not transcribed:
        raise GsvError("no transcripts for --voice-audio (give a .list file, or --ref-audio and --ref-text)")
    single = [u for u in transcribed if REF_SINGLE_MIN_SECONDS <= u.seconds <= REF_MAX_SECONDS]
    if single:
        best = max(single, key=lambda u: u.seconds)
        write_wav(out, best.samples, best.sr)
        return out, best.text, best.lang or "en"
    sr = transcribed[0].sr
    parts, texts, total = [], [], 0
    for u in transcribed:
        x = resample_soxr(u.samples, u.sr, sr)
        if total + x.size > REF_MAX_SECONDS * sr:
            if total:
                break
            continue  # a single utterance too long for a reference
        parts += [x, np.zeros(int(REF_GAP_SECONDS * sr), np.float32)]
        texts.append(u.text)
        total += x.size + int(REF_GAP_SECONDS * sr)
        if total >= REF_MIN_SECONDS * sr:
            break
    if total < 3.0 * sr:
        raise GsvError("the transcribed recordings are too short to make a 3 s reference; give --ref-audio")
    write_wav(out, np.concatenate(parts), sr)
    return out, " ".join(texts), transcribed[0].lang or "en"


# ---------------------------------------------------------------------------------- measuring
def _phone_count(preparer, text: str, lang: str) -> int:
    return sum(len(s.phones) for s in preparer.segments(text, lang))


def speech_seconds(samples: np.ndarray, sr: int) -> float:
    """Seconds from the first to the last non-silent 20 ms frame (pauses inside count)."""
    from gsv.quality import SILENCE_BELOW_PEAK_DB, SILENCE_FLOOR_DBFS, SILENCE_FRAME_SECONDS

    hop = max(1, int(sr * SILENCE_FRAME_SECONDS))
    frames = samples.size // hop
    if frames == 0:
        return 0.0
    x = samples[: frames * hop].astype(np.float64).reshape(frames, hop)
    levels = 20 * np.log10(np.maximum(1e-10, np.sqrt(np.mean(x * x, axis=1))))
    loud = (levels >= np.percentile(levels, 95) - SILENCE_BELOW_PEAK_DB) & (levels >= SILENCE_FLOOR_DBFS)
    idx = np.flatnonzero(loud)
    return float((idx[-1] - idx[0] + 1) * hop / sr) if idx.size else 0.0


def training_phone_rate(utts: list[Utterance], preparer) -> float | None:
    """Seconds of speech per phone over the transcribed recordings (None without transcripts)."""
    secs = phones = 0.0
    for u in utts:
        if u.text:
            n = _phone_count(preparer, u.text, u.lang or "en")
            if n:
                secs += speech_seconds(u.samples, u.sr)
                phones += n
    return secs / phones if phones else None


def _run(synth, voice, sentences, phone_counts, lang, backend, stream, args, reference, encoder, train_rate) -> dict:
    from gsv import constants as C
    from gsv.audio import write_wav
    from gsv.quality import signal_checks
    from gsv.sampling import SamplingOptions
    from gsv.session import SynthesisOptions

    rows = []
    t0 = time.perf_counter()
    for i, (text, phones) in enumerate(zip(sentences, phone_counts)):
        # a request budget: a model that never says EOS stops at a slow speaking rate, not at 60 s
        budget_s = 1.0 + args.max_seconds_per_phone * phones
        opts = SynthesisOptions(sampling=SamplingOptions(seed=args.seed + i), streaming=stream,
                                max_audio_seconds=budget_s)
        audio, session = synth.synthesize(text, lang, voice, opts)
        sr = C.SAMPLE_RATE
        if args.save_audio:
            d = Path(args.save_audio)
            d.mkdir(parents=True, exist_ok=True)
            write_wav(d / f"{backend}{'-stream' if stream else ''}-{i:02d}.wav", audio, sr)
        checks = signal_checks(audio, sr)
        sps = speech_seconds(audio, sr) / phones if phones else float("nan")
        sim = reference.similarity(encoder, audio, sr)
        rows.append({"text": text, "speaker_similarity": sim, "relative": reference.relative(sim),
                     "phones": phones, "tokens": session.total_tokens, "max_seconds": budget_s,
                     "hit_token_limit": session.finish_reason == "max_audio",
                     "seconds_per_phone": sps,
                     "phone_rate_vs_training": sps / train_rate if train_rate else None, **checks})
    elapsed = time.perf_counter() - t0
    sims = [r["speaker_similarity"] for r in rows if math.isfinite(r["speaker_similarity"])]
    mean_sim = float(np.mean(sims)) if sims else float("nan")
    rates = [r["phone_rate_vs_training"] for r in rows if r["phone_rate_vs_training"] is not None]
    run = {"backend": backend, "stream": stream, "speaker_similarity": mean_sim,
           "speaker_similarity_min": float(min(sims)) if sims else float("nan"),
           "relative": reference.relative(mean_sim),
           "seconds_per_phone": float(np.nanmean([r["seconds_per_phone"] for r in rows])),
           "phone_rate_vs_training": float(np.mean(rates)) if rates else None,
           "silence_share": float(np.mean([r["silence_share"] for r in rows])),
           "clipped_share": float(np.max([r["clipped_share"] for r in rows])),
           "peak": float(np.max([r["peak"] for r in rows])),
           "synthesis_seconds": round(elapsed, 3), "sentences": rows}
    run["warnings"] = _warnings(run)
    log.info("%s%s: speaker similarity %.4f (relative %.3f)", backend, " streamed" if stream else "", mean_sim,
             run["relative"])
    return run


def _warnings(run: dict) -> list[str]:
    w = []
    if run["clipped_share"] > MAX_CLIPPED_SHARE:
        w.append(f"clipping ({run['clipped_share']:.2%} of samples at full scale)")
    if run["silence_share"] > MAX_SILENCE_SHARE:
        w.append(f"mostly silence ({run['silence_share']:.0%})")
    r = run["phone_rate_vs_training"]
    if r is not None and not PHONE_RATE_RANGE[0] <= r <= PHONE_RATE_RANGE[1]:
        w.append(f"speech is {r:.2f}x as long per phone as the training recordings")
    unfinished = sum(1 for s in run["sentences"] if s["hit_token_limit"])
    if unfinished:
        w.append(f"{unfinished} sentence(s) ran into the token budget (no EOS)")
    return w


def _compare(a: dict, b: dict, limit: float) -> dict:
    diffs = [y["speaker_similarity"] - x["speaker_similarity"] for x, y in zip(a["sentences"], b["sentences"])]
    diffs = [d for d in diffs if math.isfinite(d)]
    d = b["speaker_similarity"] - a["speaker_similarity"]
    return {"a": _label(a), "b": _label(b), "speaker_similarity_difference": d,
            "max_abs_sentence_difference": float(max(map(abs, diffs))) if diffs else float("nan"),
            "max_difference": limit, "passed": bool(math.isfinite(d) and abs(d) <= limit)}


def _label(run: dict) -> str:
    return run["backend"] + ("+stream" if run["stream"] else "")


def _round(v):
    if isinstance(v, float):
        return round(v, 5) if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _round(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


# ---------------------------------------------------------------------------------- plot
def draw_similarity_panel(ax, bars: list[tuple[str, float | None]], ceiling: float, floor: float,
                          goal: float | None = None, title: str = "voice: speaker similarity") -> None:
    """Bars of similarities between the floor (noise) and the ceiling (held-out real speech)."""
    labels = [b[0] for b in bars]
    values = [b[1] if b[1] is not None and math.isfinite(b[1]) else 0.0 for b in bars]
    colors = ["tab:blue" if "trained" in lab or "demo" in lab else "tab:gray" for lab in labels]
    ax.bar(range(len(bars)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
    ax.axhline(ceiling, color="tab:green", ls="--", label=f"ceiling (held-out real) {ceiling:.2f}")
    ax.axhline(floor, color="tab:red", ls="--", label=f"floor (noise) {floor:.2f}")
    if goal is not None:
        ax.axhline(goal, color="tab:orange", ls=":", label=f"goal {goal:.2f}")
    ax.set_xticks(range(len(bars)), labels, rotation=20, fontsize=8)
    ax.set(title=title, ylabel="cosine to the speaker centroid", ylim=(min(0.3, floor - 0.05), 1.0))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower right")


# ---------------------------------------------------------------------------------- entry
def measure(args) -> dict:
    import tempfile

    import torch

    from gsv.checkpoint.bundle import Bundle
    from gsv.pipeline import Synthesizer
    from gsv.quality import SpeakerReference, open_speaker_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in (args.compare_backends or args.backend).split(",") if b.strip()]
    if not backends:
        raise GsvError("--compare-backends names no backend")
    sentences = read_sentences(args.sentences)
    encoder = open_speaker_encoder(args.speaker_model)  # fails before any synthesis when none is installed
    bundle = Bundle.open(args.bundle)
    voice_utts = load_utterances(args.voice_audio)
    heldout = load_utterances(args.heldout_audio) if args.heldout_audio else []
    t0 = time.perf_counter()
    reference = SpeakerReference.build(encoder, [(u.samples, u.sr) for u in voice_utts],
                                       [(u.samples, u.sr) for u in heldout], seed=args.seed)
    ref_seconds = time.perf_counter() - t0
    synths = {b: Synthesizer(bundle, backend=b, device=args.device, threads=args.threads) for b in backends}
    first = synths[backends[0]]
    with tempfile.TemporaryDirectory() as td:
        if args.ref_audio:
            if not args.ref_text:
                raise GsvError("--ref-audio needs --ref-text")
            ref_audio, ref_text, ref_lang = Path(args.ref_audio), args.ref_text, args.ref_lang
        else:
            ref_audio, ref_text, ref_lang = reference_clip(voice_utts, Path(td) / "reference.wav")
        voice = first.prepare_voice(ref_audio, ref_text, ref_lang)
    phone_counts = [_phone_count(first.text, s, args.lang) for s in sentences]
    train_rate = training_phone_rate(voice_utts, first.text)
    runs = []
    for b in backends:
        runs.append(_run(synths[b], voice, sentences, phone_counts, args.lang, b, False, args, reference, encoder,
                         train_rate))
        if args.stream:
            runs.append(_run(synths[b], voice, sentences, phone_counts, args.lang, b, True, args, reference, encoder,
                             train_rate))
    whole = [r for r in runs if not r["stream"]]
    comparisons = [_compare(whole[0], r, args.max_difference) for r in whole[1:]]
    comparisons += [_compare(next(w for w in whole if w["backend"] == r["backend"]), r, args.max_difference)
                    for r in runs if r["stream"]]
    scored = [{"path": str(u.path), "speaker_similarity": reference.similarity(encoder, u.samples, u.sr),
               "relative": reference.relative(reference.similarity(encoder, u.samples, u.sr)), "seconds": u.seconds}
              for u in (load_utterances(args.score_audio) if args.score_audio else [])]
    primary = runs[0]
    stages = None
    if args.stages:
        from benchmarks.quality_stages import measure_stages, weakest_stage

        torch_synth = synths.get("torch") or Synthesizer(bundle, backend="torch", device=args.device,
                                                         threads=args.threads)
        stages = measure_stages(torch_synth, voice_utts, reference, encoder, seed=args.seed)
        stages["weakest_stage"] = weakest_stage(stages, primary["speaker_similarity"], reference.ceiling)
    report = {
        "benchmark": "quality", "bundle": str(bundle.path), "bundle_id": bundle.bundle_id,
        "encoder": encoder.name, "speaker_similarity": primary["speaker_similarity"],
        "relative": primary["relative"], "ceiling": reference.ceiling, "floor": reference.floor,
        "reference": reference.to_dict(), "reference_seconds": round(ref_seconds, 2),
        "voice": {"ref_audio": str(args.ref_audio or "picked from --voice-audio"), "ref_text": ref_text,
                  "ref_lang": ref_lang},
        "training_data": {"utterances": len(voice_utts), "seconds_per_phone": train_rate,
                          "heldout_utterances": len(heldout)},
        "sentences": len(sentences), "seed": args.seed, "runs": runs, "comparisons": comparisons,
        "passed": all(c["passed"] for c in comparisons), "scored_audio": scored,
        **({"stages": stages} if stages is not None else {}),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    return _round(report)


def run(args) -> int:
    report = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", "utf-8")
    for r in report["runs"]:
        print(f"{_label(r):>16s}: speaker similarity {r['speaker_similarity']:.4f} "
              f"(relative {r['relative'] if r['relative'] is not None else float('nan'):.3f})"
              + (f"  warnings: {'; '.join(r['warnings'])}" if r["warnings"] else ""))
    print(f"ceiling {report['ceiling']}, floor {report['floor']} ({report['encoder']})")
    st = report.get("stages")
    if st:
        parts = [f"{k} {st[k]['speaker_similarity']:.4f}" if "speaker_similarity" in st.get(k, {})
                 else f"{k} skipped ({st.get(k, {}).get('skipped', 'n/a')})"
                 for k in ("reconstruction", "prior_from_real_tokens")]
        print(f"stages on {st['utterances']} training utterances: {', '.join(parts)}; weakest: {st.get('weakest_stage')}")
    for c in report["comparisons"]:
        print(f"{c['b']} - {c['a']}: {c['speaker_similarity_difference']:+.4f} "
              f"({'ok' if c['passed'] else 'over'} {c['max_difference']})")
    print(f"wrote {out}")
    return 0
