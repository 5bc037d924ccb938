"""``gsv synth`` (registered into the main ``gsv`` command; ``gsv voice`` is :mod:`gsv.cli_voice`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from gsv.errors import GsvError

log = logging.getLogger(__name__)


def _sampling_args(p) -> None:
    # defaults (None here) are the option dataclasses' own, i.e. upstream's: defined once, in gsv.sampling
    # (SamplingOptions) and gsv.session (SynthesisOptions)
    g = p.add_argument_group("sampling (unset = upstream's default)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: random; printed)")
    g.add_argument("--max-tokens", type=int, default=None, help="semantic tokens per text segment (25 per second)")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--speed", type=float, default=None)
    g.add_argument("--noise-scale", type=float, default=None)
    g.add_argument("--split", default="cut5", help="text split method cut0..cut5")
    g.add_argument("--stream", action="store_true", help="decode in streaming chunks (as the server does)")


def register(sub) -> None:
    p = sub.add_parser("synth", help="synthesize one text to a WAV file (offline)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--ref-audio", help="reference audio (3-10 s)")
    p.add_argument("--ref-text", help="transcript of the reference audio")
    p.add_argument("--ref-lang", help="language of the reference transcript")
    p.add_argument("--aux-ref", action="append", default=[], help="extra timbre reference (repeatable)")
    p.add_argument("--voice", help="use a prepared voice from --voices instead of --ref-*")
    p.add_argument("--voices", help="voices folder or postgresql:// URL (with --voice)")
    p.add_argument("--voice-key-file", help="key file of encrypted voices (with --voice)")
    p.add_argument("--owner", default="", help="namespace of --voice (the owner name of a server with --tokens)")
    p.add_argument("--text", required=True)
    p.add_argument("--lang", required=True, help="zh, en, ja, ko, yue, auto, all_zh, ...")
    p.add_argument("-o", "--output", required=True, help="output WAV (32 kHz, 16-bit)")
    p.add_argument("--backend", default="torch", help="torch | onnx | onnx-int8 | onnx-fp16 | trt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    _sampling_args(p)
    p.set_defaults(func=cmd_synth)


def _options(args):
    from gsv.sampling import SamplingOptions
    from gsv.session import SynthesisOptions

    import dataclasses

    def given(*names):
        return {n: getattr(args, n) for n in names if getattr(args, n) is not None}

    sampling = dataclasses.replace(SamplingOptions(), **given("top_k", "top_p", "temperature", "repetition_penalty",
                                                             "seed", "max_tokens"))
    seed = sampling.resolved_seed()
    return SynthesisOptions(sampling=dataclasses.replace(sampling, seed=seed), streaming=args.stream,
                            **given("speed", "noise_scale")), seed


def cmd_synth(args) -> int:
    from gsv.audio import write_wav
    from gsv.checkpoint.bundle import Bundle
    from gsv.cli_voice import load_voice
    from gsv.pipeline import Synthesizer

    options, seed = _options(args)
    bundle = Bundle.open(args.bundle)
    synth = Synthesizer(bundle, backend=args.backend, device=args.device, threads=args.threads)
    if args.voice:
        if not args.voices:
            raise GsvError("--voice needs --voices")
        voice = load_voice(args.voices, args.voice, bundle.bundle_id, args.voice_key_file, args.owner)
    else:
        missing = [n for n in ("ref_audio", "ref_text", "ref_lang") if not getattr(args, n)]
        if missing:
            raise GsvError("give --voice, or all of --ref-audio, --ref-text and --ref-lang")
        if bundle.hubert_dir is None:
            print("gsv: note: the bundle has no HuBERT model, so the reference audio only sets the timbre "
                  "(upstream's reference-free mode: no prompt tokens, no prompt text)", file=sys.stderr)
        voice = synth.prepare_voice(args.ref_audio, args.ref_text, args.ref_lang, args.aux_ref)
    t0 = time.perf_counter()
    audio, session = synth.synthesize(args.text, args.lang, voice, options, split=args.split)
    elapsed = time.perf_counter() - t0
    write_wav(args.output, audio, bundle.sample_rate)
    seconds = audio.size / bundle.sample_rate
    print(json.dumps({"output": args.output, "audio_seconds": round(seconds, 3), "seed": seed,
                      "semantic_tokens": session.total_tokens, "segments": len(session.segments),
                      "synthesis_seconds": round(elapsed, 3), "rtf": round(elapsed / seconds, 3) if seconds else None,
                      "backend": args.backend}))
    return 0
