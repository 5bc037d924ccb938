"""Library entry points behind the CLI: train one stage, build a bundle from an experiment."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from gsv.errors import GsvError
from trainer.config import GPTTrainConfig, SoVITSTrainConfig
from trainer.data import Experiment
from trainer.ddp import init_distributed, local_rank_hint, pick_device

log = logging.getLogger(__name__)


def open_base(exp: Experiment, base: str | Path | None):
    """The base bundle: the one given, else the one the experiment was prepared with."""
    from gsv.checkpoint.bundle import Bundle

    bundle = Bundle.open(base or exp.base)
    if bundle.bundle_id != exp.index.get("base_id"):
        # the prepared semantic tokens come from the preparing base's quantizer: another one makes them meaningless
        if Path(exp.base).is_dir() and _quantizer_digest(bundle) != _quantizer_digest(Bundle.open(exp.base)):
            raise GsvError(f"the base {bundle.path} has another quantizer than the one {exp.path} was prepared with; "
                           "prepare the data again with this base")
        log.warning("training from %s, which is not the bundle the data was prepared with", bundle.path)
    return bundle


def _quantizer_digest(bundle) -> str:
    import hashlib

    sd = bundle.sovits_state_dict()
    h = hashlib.sha256()
    for k in sorted(sd):
        if k.startswith(("quantizer.", "ssl_proj.")):
            h.update(k.encode())
            h.update(sd[k].float().numpy().tobytes())
    return h.hexdigest()


def train(stage: str, exp_path: str | Path, cfg: SoVITSTrainConfig | GPTTrainConfig, base: str | Path | None = None):
    """Train ``stage`` ('sovits' or 'gpt') on a prepared experiment; returns the loop's RunResult."""
    from trainer import loop
    from trainer.init_base import train_hints
    from trainer.validate import ValidationSynth

    device = pick_device(cfg.device, local_rank_hint())
    dist = init_distributed(device)
    try:
        exp = Experiment.open(exp_path)
        bundle = open_base(exp, base)
        threads = cfg.threads or train_hints(bundle).get("cpu_threads")
        if threads and device.type == "cpu":
            torch.set_num_threads(int(threads))
        train_items, val_items = exp.split(cfg.val_fraction)
        torch.manual_seed(cfg.seed + dist.rank)  # fresh modules (discriminator, a missing enc_q) start alike every run
        if stage == "sovits":
            from trainer.sovits_stage import SoVITSStage

            st = SoVITSStage(cfg, exp, bundle, train_items, dist, device, hints=train_hints(bundle))
        elif stage == "gpt":
            from trainer.gpt_stage import GPTStage

            st = GPTStage(cfg, exp, bundle, train_items, dist, device)
        else:
            raise GsvError(f"unknown stage {stage!r}")
        if len(st.dataset) == 0:
            raise GsvError(f"no {stage} training items left after filtering ({len(train_items)} before)")
        if cfg.early_stop_on == "similarity" and not cfg.synth:
            raise GsvError("early stopping on similarity needs the validation synthesis (drop --no-synth)")
        if cfg.synth and dist.is_main:
            st.attach_synth(ValidationSynth.for_run(exp, train_items, val_items, cfg, bundle.symbol_version))
        if not cfg.resume:
            state = exp.stage_dir(stage) / "state-last.pt"
            if state.exists() and dist.is_main:
                state.unlink()
            dist.barrier()
        result = loop.run(st, cfg, exp, dist, val_items)
        return result
    finally:
        dist.shutdown()


def make_bundle(exp_path: str | Path, out: str | Path, which: str = "best", base: str | Path | None = None,
                force: bool = False):
    """A bundle of the experiment's trained weights (a stage never trained keeps the base's)."""
    from gsv.checkpoint.bundle import write_bundle
    from trainer.checkpointing import load_weights

    exp = Experiment.open(exp_path)
    bundle = open_base(exp, base)
    parts, sources = {}, {"kind": "gsv-train", "experiment": str(Path(exp_path).resolve()), "base": str(bundle.path),
                          "base_id": bundle.bundle_id}
    for stage, loader in (("gpt", bundle.gpt_state_dict), ("sovits", bundle.sovits_state_dict)):
        f = exp.stage_dir(stage) / f"{which}.safetensors"
        if not f.is_file() and which == "best":
            f = exp.stage_dir(stage) / "last.safetensors"
        if f.is_file():
            parts[stage] = load_weights(f)
            sources[stage] = str(f)
        else:
            parts[stage] = loader()
            sources[stage] = "base"
            log.warning("no trained %s weights in %s: the bundle keeps the base's", stage, exp_path)
    hub, brt = bundle.hubert_dir, bundle.bert_dir
    sv = dict(sv_config=bundle.sv_config, sv_state=bundle.sv_state_dict()) if bundle.is_pro else {}
    return write_bundle(out, bundle.gpt_config, parts["gpt"], bundle.sovits_config, parts["sovits"], sources=sources,
                        hubert_dir=hub, bert_dir=brt, force=force, **sv)
