"""``gsv``: import upstream checkpoints into a bundle, synthesize offline, manage voices, inspect text.

Every user error prints one line ``gsv: error: ...`` on stderr and exits with code 2.
"""
from __future__ import annotations

import argparse
import logging

from gsv.errors import GsvError, run_command

log = logging.getLogger("gsv")


def _add_import(sub) -> None:
    p = sub.add_parser("import", help="turn upstream GPT (.ckpt) + SoVITS (.pth) files into a bundle",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gpt", required=True, help="upstream GPT checkpoint (*.ckpt)")
    p.add_argument("--sovits", required=True, help="upstream SoVITS checkpoint (*.pth): v1, v2, v2Pro or v2ProPlus")
    p.add_argument("--sv", help="speaker-verification model pretrained_eres2netv2w24s4ep4.ckpt (required for "
                                "v2Pro/v2ProPlus SoVITS files, refused for v1/v2)")
    p.add_argument("--sovits-version", choices=("v2Pro", "v2ProPlus"),
                   help="read a Pro SoVITS file whose version header was lost (it starts with 'PK'); "
                        "upstream itself would refuse such a file")
    p.add_argument("--out", required=True, help="bundle directory to create")
    p.add_argument("--hubert", help="local chinese-hubert-base folder (prompt tokens from reference audio)")
    p.add_argument("--bert", help="local chinese-roberta-wwm-ext-large folder (Chinese BERT features)")
    p.add_argument("--reference-models", action="store_true",
                   help="record the HuBERT/BERT folders by absolute path instead of copying them into the bundle")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from gsv.checkpoint.bundle import write_bundle
    from gsv.checkpoint.upstream import load_gpt, load_sovits, load_sv

    gpt = load_gpt(args.gpt)
    sovits = load_sovits(args.sovits, version_override=args.sovits_version)
    if gpt.version != sovits.config.symbol_version:
        raise GsvError(f"the GPT is {gpt.version} but the SoVITS is {sovits.version}; use files of one version")
    if sovits.config.is_pro and not args.sv:
        raise GsvError(f"{args.sovits} is a {sovits.version} model: it needs the speaker-verification model too "
                       "(--sv pretrained_eres2netv2w24s4ep4.ckpt, from upstream's pretrained_models/sv/)")
    if args.sv and not sovits.config.is_pro:
        raise GsvError(f"--sv is only for v2Pro/v2ProPlus models; {args.sovits} is {sovits.version}, which does not "
                       "use a speaker-verification model")
    sv = load_sv(args.sv) if args.sv else None
    sources = {
        "gpt": {"file": str(args.gpt), "sha256": gpt.sha256, "info": gpt.info, "version": gpt.version},
        "sovits": {"file": str(args.sovits), "sha256": sovits.sha256, "info": sovits.info, "version": sovits.version,
                   "header": sovits.header},
    }
    if sv is not None:
        sources["sv"] = {"file": str(args.sv), "sha256": sv.sha256}
    bundle = write_bundle(args.out, gpt.config, gpt.state_dict, sovits.config, sovits.state_dict, sources=sources,
                          hubert_dir=args.hubert, bert_dir=args.bert, copy_models=not args.reference_models,
                          sv_config=sv.config if sv else None, sv_state=sv.state_dict if sv else None,
                          force=args.force)
    print(f"wrote bundle {bundle.path} ({sovits.version}, id {bundle.bundle_id})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gsv", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_import(sub)
    from gsv import cli_synth, cli_voice

    cli_synth.register(sub)
    cli_voice.register(sub)
    try:
        from gsv import cli_text
    except ImportError:  # the text commands are optional while the frontend is being built
        cli_text = None
    if cli_text is not None:
        cli_text.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return run_command("gsv", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
