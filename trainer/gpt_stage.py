"""``gsv-train gpt``: GPT (text -> semantic tokens) fine-tuning as upstream ``s1_train.py`` does it.

Loss: teacher-forced cross entropy summed over every B x (T + 1) position, targets EOS-padded
(:meth:`Text2SemanticGPT.forward_train`, bit-exact with upstream's ``forward_old``); metric: top-3
accuracy ignoring EOS targets.  With ``dpo`` the reference-free DPO term of upstream's ``forward``
is added (rejected sequences repeat a random span), and the batch size is halved as upstream does.
Optimizer: ScaledAdam with upstream's effective learning rates and gradient accumulation over
``grad_accum`` micro-batches (see :mod:`trainer.optim`).
"""
from __future__ import annotations

import contextlib
import logging

import torch

from gsv import constants as C
from trainer import losses
from trainer.loop import Progress, Stage
from trainer.optim import ScaledAdam, gpt_lr
from trainer.precision import resolve_precision

log = logging.getLogger(__name__)


class _TeacherForced(torch.nn.Module):
    """``forward`` = :meth:`Text2SemanticGPT.forward_train` (what DDP wraps)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model.forward_train(*args)


class GPTStage(Stage):
    name = "gpt"
    metric = "val/loss"

    def __init__(self, cfg, exp, base, train_items: list, dist, device: torch.device):
        from trainer.data import GPTCollate, GPTDataset, gpt_keep, replicate

        self.cfg, self.exp, self.base, self.dist, self.device = cfg, exp, base, dist, device
        self.arch = base.gpt_config
        self.model = base.load_gpt().to(device).train()
        self.grad_accum = max(1, int(cfg.grad_accum))
        self.opt = ScaledAdam(self.model.parameters(), lr=gpt_lr(0, cfg.lr, cfg.first_step_lr), betas=tuple(cfg.betas),
                              clipping_scale=cfg.clipping_scale, clipping_update_period=cfg.clipping_update_period)
        self.precision = resolve_precision(device, cfg.fp16, cfg.cpu_precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision.needs_grad_scaler)
        self.ddp = _TeacherForced(self.model)
        if dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.ddp, device_ids=[device.index] if device.type == "cuda" else None)
        kept = [it for it in train_items if gpt_keep(it, cfg.max_sec, cfg.min_ps_ratio, cfg.max_ps_ratio)]
        if len(kept) < len(train_items):
            log.info("GPT data filters (length, 3-25 phones/s) dropped %d of %d items", len(train_items) - len(kept),
                     len(train_items))
        self.keep = lambda it: gpt_keep(it, cfg.max_sec, cfg.min_ps_ratio, cfg.max_ps_ratio)
        self.dataset = GPTDataset(exp, replicate(kept, cfg.min_epoch_items), prompt_pairs=cfg.prompt_pairs,
                                  seed=cfg.seed, max_tokens=cfg.max_sec * C.TOKENS_PER_SECOND)
        self.collate = GPTCollate(self.arch.bert_dim, self.arch.eos)
        self._synth = None

    # ------------------------------------------------------------------ loop interface
    def on_epoch_start(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)  # a new choice of prompted items each epoch

    def modules(self):
        return {"gpt": self.model}

    def optimizers(self):
        return {"gpt": self.opt}

    def extra_state(self):
        return {"scaler": self.scaler.state_dict(), "base_id": self.base.bundle_id}

    def load_extra_state(self, state):
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def make_val_dataset(self, items):
        from trainer.data import GPTDataset

        return GPTDataset(self.exp, [it for it in items if self.keep(it)])

    def _loss(self, model, batch, dpo: bool):
        b = {k: v.to(self.device) for k, v in batch.items()}
        with self.precision.autocast():
            logits, targets = model(b["phones"], b["phone_lens"], b["semantic"], b["semantic_lens"], b["bert"])
        ce = losses.gpt_cross_entropy(logits, targets)
        hits, count = losses.top_k_accuracy(logits.detach(), targets, self.arch.eos, k=3)
        loss = ce
        extra = {}
        if dpo:
            reject, reject_lens = losses.make_reject_tokens(b["semantic"])
            with self.precision.autocast():
                r_logits, r_targets = model(b["phones"], b["phone_lens"], reject, reject_lens, b["bert"])
            d = losses.dpo_loss(losses.sequence_logps(logits, targets), losses.sequence_logps(r_logits, r_targets),
                                self.cfg.dpo_beta)
            loss = ce + d
            extra["loss/dpo"] = d.detach().item()
        return loss, ce, hits, count, targets.numel(), extra

    def train_step(self, micro_batches, step: int) -> dict[str, float]:
        for group in self.opt.param_groups:
            group["lr"] = gpt_lr(step, self.cfg.lr, self.cfg.first_step_lr)
        tot = ce_sum = 0.0
        hits = count = positions = 0
        extra: dict[str, float] = {}
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not self.dist.distributed else self.ddp.no_sync()
            with sync:
                loss, ce, h, c, n, extra = self._loss(self.ddp, batch, self.cfg.dpo)
                self.scaler.scale(loss).backward()  # summed over micro-batches, as upstream accumulates
            tot += loss.detach().item()
            ce_sum += ce.detach().item()
            hits, count, positions = hits + h, count + c, positions + n
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        out = {"loss/total": tot / len(micro_batches), "loss/ce_per_token": ce_sum / max(1, positions),
               "top_3_acc": hits / max(1, count), "learning_rate": self.opt.param_groups[0]["lr"]}
        out.update(extra)
        return out

    @torch.no_grad()
    def validate(self, batches) -> dict[str, float]:
        self.model.eval()
        ce = hits = count = positions = 0.0
        for batch in batches:
            _, c, h, n_acc, n, _ = self._loss(self.model.forward_train, batch, False)
            ce, hits, count, positions = ce + float(c), hits + h, count + n_acc, positions + n
        self.model.train()
        return {"val/loss": ce / max(1, positions), "val/top_3_acc": hits / max(1, count)}

    # ------------------------------------------------------------------ weights
    def release_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def inference_model(self):
        from gsv.models.gpt import Text2SemanticGPT

        m = Text2SemanticGPT(self.arch)
        m.load_state_dict(self.release_state_dict())
        return m.eval()

    def write_release(self, kind: str, sd: dict[str, torch.Tensor], epoch: int, step: int, name: str) -> None:
        from trainer.checkpointing import write_gpt_release

        file = f"gpt-{kind}.ckpt" if kind in ("best", "last") else f"{name}-e{epoch}.ckpt"
        write_gpt_release(self.exp.weights_dir / file, self.arch, sd, epoch, self.cfg, name)

    def synthesize(self, progress: Progress, writer) -> dict[str, float]:
        from trainer.sovits_stage import load_stage_sovits
        from trainer.validate import log_sample

        if self._synth is None:
            return {}
        audio, metrics = self._synth.run(self.inference_model(), load_stage_sovits(self.exp, self.base))
        log_sample(writer, self.exp.logs_dir(self.name) / "samples", "gpt", audio, progress.global_step)
        return metrics

    def attach_synth(self, synth) -> None:
        self._synth = synth
