"""``gsv-train``: prepare data, fine-tune SoVITS and GPT, write bundles.

    gsv-train synthetic --out DATA                   # espeak-ng speech + DATA/data.list (tests, demo)
    gsv-train init --out BASE --arch tiny            # random-weights base bundle (training from scratch)
    gsv-train prepare --list DATA/data.list --out EXP --base BASE [--workers 2]
    gsv-train sovits --exp EXP --epochs 8            # resumes automatically; --restart starts over
    gsv-train gpt --exp EXP --epochs 15
    gsv-train bundle --exp EXP --out VOICE_BUNDLE

Under ``torchrun --nproc_per_node N -m trainer sovits ...`` the stages run data-parallel.  Every
user error prints one line ``gsv-train: error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import logging

from gsv.errors import GsvError, run_command
from trainer.config import CPU_PRECISIONS

log = logging.getLogger("trainer")


def _common_train_args(p: argparse.ArgumentParser, epochs_default: int) -> None:
    p.add_argument("--exp", required=True, help="prepared experiment folder")
    p.add_argument("--epochs", type=int, default=epochs_default, help="epochs in total (also across resumes)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in total")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes of training (this invocation)")
    p.add_argument("--base", help="base bundle (default: the one the experiment was prepared with)")
    p.add_argument("--batch-size", type=int, help="items per batch (per process)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of items held out for validation (0: none)")
    p.add_argument("--patience", type=int, default=5, help="validations without improvement before stopping (0: never)")
    p.add_argument("--early-stop-on", choices=("loss", "similarity"), default="loss",
                   help="what picks the best weights and stops early: the validation loss or val/speaker_similarity")
    p.add_argument("--min-epoch-items", type=int, default=100,
                   help="repeat a smaller dataset to this many items per epoch (validation runs once per epoch)")
    p.add_argument("--save-every-steps", type=int, default=0, help="also save the resumable state every N steps")
    p.add_argument("--save-every-epoch", type=int, default=0, help="also write upstream-named weights every N epochs")
    p.add_argument("--log-every", type=int, default=10, help="steps between logged training scalars")
    p.add_argument("--restart", action="store_true", help="ignore a saved training state and start over")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-fp16", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--cpu-precision", default="auto", choices=CPU_PRECISIONS,
                   help="CPU training precision: auto = bf16 autocast where the CPU multiplies bf16 natively "
                   "(AMX/AVX512-BF16), fp32 elsewhere")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--no-synth", action="store_true", help="no validation synthesis / speaker similarity")
    p.add_argument("--synth-text", action="append",
                   help="validation sentence (repeat for several; default: 'This is a short test of the new voice.')")
    p.add_argument("--synth-lang", default="en")
    p.add_argument("--synth-max-tokens", type=int, default=250)
    p.add_argument("--speaker-model", help="local speechbrain spkrec-ecapa-voxceleb folder for val/speaker_similarity "
                   "(default: Resemblyzer's pretrained GE2E)")
    p.add_argument("--name", default="", help="prefix of the upstream-named weight files (default: EXP's name)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _common_cfg(args) -> dict:
    from trainer.config import CommonTrainConfig

    kw = dict(epochs=args.epochs, max_steps=args.max_steps, max_minutes=args.max_minutes, seed=args.seed,
              val_fraction=args.val_fraction, patience=args.patience, early_stop_on=args.early_stop_on,
              min_epoch_items=args.min_epoch_items, save_every_steps=args.save_every_steps,
              save_every_epoch=args.save_every_epoch, log_every=args.log_every, resume=not args.restart,
              device=args.device, fp16=not args.no_fp16, cpu_precision=args.cpu_precision,
              num_workers=args.num_workers, synth=not args.no_synth,
              synth_text=args.synth_text or CommonTrainConfig.synth_text, synth_lang=args.synth_lang,
              synth_max_tokens=args.synth_max_tokens, speaker_model=args.speaker_model,
              name=args.name, threads=args.threads)
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    return kw


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="gsv-train", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthetic", help="speak a small English dataset with espeak-ng", formatter_class=fmt)
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=16, help="training sentences")
    p.add_argument("--heldout", type=int, default=0, help="held-out sentences (OUT/heldout.list, OUT/heldout.txt)")
    p.add_argument("--voice", default="en-us")
    p.add_argument("--voices", help="comma-separated espeak-ng voices, one speaker each (multi-speaker data; "
                                    "'pretrain': trainer.synthetic.PRETRAIN_VOICES, without the demo's own "
                                    "voice); replaces --voice and --heldout")
    p.set_defaults(func=cmd_synthetic)

    p = sub.add_parser("init", help="write a random-weights base bundle", formatter_class=fmt)
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="tiny", choices=("tiny", "small", "v2"))
    p.add_argument("--version", default="v2", choices=("v2", "v2Pro", "v2ProPlus"),
                   help="model version: v2Pro/v2ProPlus add the speaker-verification conditioning")
    p.add_argument("--sv", help="Pro versions: upstream speaker-verification model (pretrained_eres2netv2w24s4ep4.ckpt) "
                                "instead of a random one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hubert", help="use this HuBERT folder instead of a random one")
    p.add_argument("--bert", help="use this BERT folder instead of a random one")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("prepare", help="turn a .list file into training features", formatter_class=fmt)
    p.add_argument("--list", required=True, help="upstream .list file: wav|speaker|lang|text")
    p.add_argument("--out", required=True, help="experiment folder (created; reruns skip finished items)")
    p.add_argument("--base", required=True, help="base bundle (its quantizer makes the semantic tokens)")
    p.add_argument("--hubert", help="HuBERT folder (default: the bundle's)")
    p.add_argument("--bert", help="BERT folder for Chinese text (default: the bundle's)")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--wav-dir", help="look up every wav by its file name in this folder (upstream inp_wav_dir)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("sovits", help="fine-tune SoVITS", formatter_class=fmt)
    _common_train_args(p, 8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--text-low-lr-rate", type=float, default=0.4)
    p.add_argument("--base-d", help="upstream discriminator (s2D*.pth) to start from")
    p.add_argument("--disc-divisor", type=int, help="divide the discriminator's channels (default: base hint or 1)")
    p.add_argument("--segment-frames", type=int, help="random slice length in 50 Hz frames (default 32)")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="first steps without the discriminator, mel + KL losses only (bases trained from scratch)")
    p.add_argument("--vocoder-steps", type=int, default=0,
                   help="before those, steps that train only the speaker encoder, posterior encoder and decoder "
                        "(bases trained from scratch: several times more audio per second for the decoder)")
    p.add_argument("--vocoder-segment-frames", type=int, default=64,
                   help="slice length of the vocoder steps in 50 Hz frames")
    p.add_argument("--prior-steps", type=int, default=0,
                   help="after the vocoder steps, steps that train only the text encoder and flow towards the "
                        "posterior (KL loss; decoder and posterior frozen), before the warm-up steps")
    p.set_defaults(func=cmd_sovits)

    p = sub.add_parser("gpt", help="fine-tune the GPT", formatter_class=fmt)
    _common_train_args(p, 15)
    p.add_argument("--lr", type=float, default=0.002, help="rate of every update after the first")
    p.add_argument("--first-step-lr", type=float, default=0.01, help="rate of the first update (upstream quirk)")
    p.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer update")
    p.add_argument("--dpo", action="store_true", help="add upstream's DPO loss (halves the batch size)")
    p.add_argument("--prompt-pairs", type=float, default=0.0,
                   help="share of items trained behind another utterance of the same speaker, as inference prompts "
                        "them (for small bases trained from scratch; upstream: 0)")
    p.set_defaults(func=cmd_gpt)

    p = sub.add_parser("bundle", help="write a bundle of the trained weights", formatter_class=fmt)
    p.add_argument("--exp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--which", default="best", choices=("best", "last"))
    p.add_argument("--base", help="base bundle (default: the experiment's)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_bundle)
    return parser


def cmd_synthetic(args) -> int:
    from trainer.synthetic import PRETRAIN_VOICES, make_dataset, make_multi_voice_dataset

    if args.voices:
        voices = PRETRAIN_VOICES if args.voices == "pretrain" else tuple(v for v in args.voices.split(",") if v)
        path = make_multi_voice_dataset(args.out, voices, args.count)
        print(f"wrote {args.count} utterances in each of {len(voices)} voices and {path}")
        return 0
    path = make_dataset(args.out, args.count, args.voice, heldout=args.heldout)
    print(f"wrote {args.count} utterances and {path}" + (f" ({args.heldout} held out)" if args.heldout else ""))
    return 0


def cmd_init(args) -> int:
    from trainer.init_base import init_bundle

    b = init_bundle(args.out, args.arch, args.seed, args.hubert, args.bert, args.force, args.version, args.sv)
    print(f"wrote random {args.arch} {args.version} base bundle {b.path} (id {b.bundle_id})")
    return 0


def cmd_prepare(args) -> int:
    from trainer.prepare import format_skipped, prepare

    s = prepare(args.list, args.out, args.base, args.hubert, args.bert, args.workers, args.device, args.wav_dir)
    print(s.quality_text)
    print(format_skipped(s.skipped))
    print(f"prepared {len(s.items)} items ({s.reused} already done) into {args.out}")
    if not s.items:
        raise GsvError("no usable items: every line was skipped")
    return 0


def cmd_sovits(args) -> int:
    from trainer.config import DiscriminatorConfig, SoVITSTrainConfig
    from trainer.run import train

    kw = _common_cfg(args)
    cfg = SoVITSTrainConfig(**kw, learning_rate=args.lr, text_low_lr_rate=args.text_low_lr_rate,
                            base_discriminator=args.base_d, segment_frames=args.segment_frames,
                            warmup_steps=args.warmup_steps, vocoder_steps=args.vocoder_steps,
                            vocoder_segment_frames=args.vocoder_segment_frames, prior_steps=args.prior_steps,
                            discriminator=DiscriminatorConfig(channel_divisor=args.disc_divisor or 1))
    r = train("sovits", args.exp, cfg, args.base)
    _report(r)
    return 0


def cmd_gpt(args) -> int:
    from trainer.config import GPTTrainConfig
    from trainer.run import train

    kw = _common_cfg(args)
    cfg = GPTTrainConfig(**kw, lr=args.lr, first_step_lr=args.first_step_lr, grad_accum=args.grad_accum, dpo=args.dpo,
                         prompt_pairs=args.prompt_pairs)
    if cfg.dpo:
        cfg.batch_size = max(1, cfg.batch_size // 2)  # upstream halves the batch with DPO
    r = train("gpt", args.exp, cfg, args.base)
    _report(r)
    return 0


def _report(r) -> None:
    from trainer.ddp import is_main_process

    if not is_main_process():
        return
    p = r.progress
    best = "n/a" if p.best == float("inf") else f"{p.best:.4g} (epoch {p.best_epoch})"
    print(f"done: {p.global_step} steps, next epoch {p.epoch}, best {p.metric} {best}"
          + (", stopped early" if r.stopped_early else ""))


def cmd_bundle(args) -> int:
    from trainer.run import make_bundle

    b = make_bundle(args.exp, args.out, args.which, args.base, args.force)
    print(f"wrote bundle {b.path} (id {b.bundle_id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "speechbrain", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_command("gsv-train", lambda: args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
