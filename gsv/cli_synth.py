"""``gsv synth`` and ``gsv voice add|blend|list|rm`` (registered into the main ``gsv`` command)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

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
    p.add_argument("--voices", help="voices folder (with --voice)")
    p.add_argument("--text", required=True)
    p.add_argument("--lang", required=True, help="zh, en, ja, ko, yue, auto, all_zh, ...")
    p.add_argument("-o", "--output", required=True, help="output WAV (32 kHz, 16-bit)")
    p.add_argument("--backend", default="torch", help="torch | onnx | onnx-int8 | onnx-fp16 | trt")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    _sampling_args(p)
    p.set_defaults(func=cmd_synth)

    v = sub.add_parser("voice", help="manage prepared voices")
    vs = v.add_subparsers(dest="voice_command", required=True)
    a = vs.add_parser("add", help="prepare a voice from reference audio and store it")
    a.add_argument("--bundle", required=True)
    a.add_argument("--voices", required=True)
    a.add_argument("--id", required=True, dest="voice_id")
    a.add_argument("--ref-audio", required=True)
    a.add_argument("--ref-text", required=True)
    a.add_argument("--ref-lang", required=True)
    a.add_argument("--aux-ref", action="append", default=[])
    a.add_argument("--owner", default="")
    a.add_argument("--consent", default="", help="the speaker's consent statement (recorded with the voice)")
    a.add_argument("--force", action="store_true", help="replace an existing voice")
    a.set_defaults(func=cmd_voice_add)
    b = vs.add_parser("blend", help="store a new voice blended from 2-4 voices (timbre interpolated by weight)")
    b.add_argument("--voices", required=True)
    b.add_argument("--id", required=True, dest="voice_id", help="id of the new voice")
    b.add_argument("--from", dest="sources", action="append", required=True, metavar="VOICE:WEIGHT",
                   help="a source voice and its weight (2-4 of them; weights are normalised)")
    b.add_argument("--bundle", help="blend as prepared for this bundle (sources prepared for another model of its "
                                    "family are carried to it from their reference audio); default: the bundle the "
                                    "heaviest source was prepared for")
    b.add_argument("--reference-free", action="store_true", help="no prompt: the blend sets only the timbre")
    b.add_argument("--owner", default="")
    b.add_argument("--consent", default="", help="consent statement (default: the sources' statements)")
    b.add_argument("--force", action="store_true", help="replace an existing voice")
    b.set_defaults(func=cmd_voice_blend)
    ls = vs.add_parser("list", help="list voices")
    ls.add_argument("--voices", required=True)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_voice_list)
    rm = vs.add_parser("rm", help="delete a voice")
    rm.add_argument("--voices", required=True)
    rm.add_argument("--id", required=True, dest="voice_id")
    rm.set_defaults(func=cmd_voice_rm)


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
    from gsv.pipeline import Synthesizer
    from gsv.voice import VoiceStore

    options, seed = _options(args)
    bundle = Bundle.open(args.bundle)
    synth = Synthesizer(bundle, backend=args.backend, device=args.device, threads=args.threads)
    if args.voice:
        if not args.voices:
            raise GsvError("--voice needs --voices")
        voice = VoiceStore(args.voices).load(args.voice, bundle.bundle_id)
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


def cmd_voice_add(args) -> int:
    from gsv.checkpoint.bundle import Bundle
    from gsv.pipeline import TextPreparer, make_voice_preparer
    from gsv.voice import VoiceStore, validate_voice_id

    validate_voice_id(args.voice_id)
    store = VoiceStore(args.voices)
    if store.exists(args.voice_id) and not args.force:
        raise GsvError(f"voice {args.voice_id!r} already exists (use --force to replace it)")
    bundle = Bundle.open(args.bundle)
    preparer = make_voice_preparer(bundle, TextPreparer.from_bundle(bundle))
    refs = [Path(p) for p in [args.ref_audio, *args.aux_ref]]
    for r in refs:
        if not r.is_file():
            raise GsvError(f"{r}: no such file")
    voice = preparer.prepare(args.voice_id, refs[0], args.ref_text, args.ref_lang, refs[1:], owner=args.owner,
                             consent=args.consent)
    store.save(voice, [r.read_bytes() for r in refs], overwrite=args.force)
    print(json.dumps(voice.metadata(), ensure_ascii=False))
    return 0


def _blend_source(text: str) -> tuple[str, float]:
    vid, sep, weight = text.rpartition(":")
    try:
        if not sep or not vid:
            raise ValueError
        return vid, float(weight)
    except ValueError:
        raise GsvError(f"--from {text!r}: expected VOICE:WEIGHT (e.g. alice:0.7)") from None


def cmd_voice_blend(args) -> int:
    from gsv.blend import blend_voices, recipe, rederive
    from gsv.voice import VoiceStore, validate_voice_id

    validate_voice_id(args.voice_id)
    store = VoiceStore(args.voices)
    if store.exists(args.voice_id) and not args.force:
        raise GsvError(f"voice {args.voice_id!r} already exists (use --force to replace it)")
    sources = [_blend_source(s) for s in args.sources]
    for vid, _ in sources:
        if not store.exists(vid):
            raise GsvError(f"unknown voice {vid!r} in {args.voices}")
    bases = [store.load(vid) for vid, _ in sources]
    families = {v.family for v in bases}
    if len(families) > 1:
        raise GsvError(f"cannot blend voices of incompatible versions ({', '.join(sorted(families))} phone sets)")
    preparer = None
    if args.bundle:
        from gsv.checkpoint.bundle import Bundle
        from gsv.pipeline import TextPreparer, make_voice_preparer

        bundle = Bundle.open(args.bundle)
        bundle_id = bundle.bundle_id
        if bundle.symbol_version not in families:
            raise GsvError(f"the voices belong to {families.pop()} models; {args.bundle} is a {bundle.model_version} "
                           "model of another phone set")
    else:
        bundle_id = bases[max(range(len(sources)), key=lambda i: (sources[i][1], -i))].bundle_id
    voices = []
    for base in bases:
        voice = base if base.bundle_id == bundle_id else store.model_parts(base, bundle_id)
        if voice is None and args.bundle:
            if preparer is None:
                preparer = make_voice_preparer(bundle, TextPreparer.from_bundle(bundle))
            keep = bool(base.prompt_space) and base.prompt_space == bundle.prompt_space()
            voice = rederive(preparer, base, store.metadata(base.voice_id), store.references(base.voice_id), keep)
            store.save_model_parts(voice, base)
        if voice is None:
            raise GsvError(f"voice {base.voice_id!r} was prepared for another model than the heaviest source "
                           f"({bundle_id}); give --bundle to carry the sources to one model")
        voices.append(voice)
    weighted = [(v, w) for v, (_, w) in zip(voices, sources)]
    consent = args.consent.strip() or "blend of " + "; ".join(f"{v.voice_id} (consent: {v.consent[:200]})"
                                                              for v in voices)
    voice = blend_voices(args.voice_id, weighted, reference_free=args.reference_free, owner=args.owner,
                         consent=consent)
    refs = [store.references(v.voice_id) for v in voices]
    meta = recipe([(v, w, len(r)) for (v, w), r in zip(weighted, refs)], args.reference_free)
    store.save(voice, [data for r in refs for data in r], overwrite=args.force, extra={"blend": meta})
    print(json.dumps(store.metadata(args.voice_id), ensure_ascii=False))
    return 0


def cmd_voice_list(args) -> int:
    from gsv.voice import VoiceStore

    store = VoiceStore(args.voices)
    metas = [store.metadata(v) for v in store.ids()]
    if args.json:
        print(json.dumps(metas, ensure_ascii=False, indent=2))
    else:
        for m in metas:
            print(f"{m['voice_id']}\t{m['language']}\t{'ref-free' if m.get('reference_free') else 'prompted'}\t"
                  f"{m.get('ref_text', '')}")
    return 0


def cmd_voice_rm(args) -> int:
    from gsv.voice import VoiceStore

    VoiceStore(args.voices).delete(args.voice_id)
    return 0
