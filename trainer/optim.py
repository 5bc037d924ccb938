"""Optimizers and learning rates of the two stages, as upstream effectively runs them.

GPT (``s1_train.py``): icefall's ScaledAdam (``AR/modules/optim.py``) with lr 0.01, betas
(0.9, 0.95), clipping_scale 2.0, clipping_update_period 1000.  Its ``WarmupCosineLRSchedule``
overwrites the rate with a constant 0.002 on every ``step()``, and it never initialises itself as
a torch scheduler, so the first update runs at the constructor's 0.01 and every later one at
0.002.  :func:`gpt_lr` reproduces exactly that.  The trainer's ``gradient_clip`` of the yaml is not
applied (manual optimisation); ScaledAdam's own clipping is, but only from its 1000th update on.

:class:`ScaledAdam` is written from the algorithm's definition: per tensor, Adam on the update
direction scaled by the tensor's RMS (floored at 1e-5), momentum kept as a "delta", a learnt overall
scale (every ``size_update_period`` steps, limited to RMS in [1e-5, 3]), plain Adam at
``lr * scalar_lr_scale`` for one-element tensors, and clipping of the RMS-weighted global gradient
norm to ``clipping_scale`` times the median of the last ``clipping_update_period`` norms (which, in
upstream's copy, reaches only the scale update: see ``_update``).  Upstream
stacks tensors of equal shape to save kernel launches; the arithmetic is per tensor either way,
so this version keeps plain per-parameter state (parameters without a gradient get a zero one,
as upstream's stacking does).

SoVITS (``s2_train.py``): AdamW(1e-4, betas (0.8, 0.99), eps 1e-9, torch's default weight decay
0.01) for generator and discriminator; the text embedding, text encoder and MRTE at 0.4 x lr;
ExponentialLR(0.999875) per epoch, stepped once before the first epoch (see :func:`sovits_lr`).
"""
from __future__ import annotations

import logging

import torch
from torch.optim import Optimizer

log = logging.getLogger(__name__)


def gpt_lr(update: int, lr: float, first_step_lr: float | None) -> float:
    """Rate of the ``update``-th optimizer update (0-based) of the GPT stage."""
    return first_step_lr if update == 0 and first_step_lr is not None else lr


def sovits_lr(base_lr: float, decay: float, epoch: int) -> float:
    """Upstream steps ExponentialLR ``epoch_str`` times before epoch ``epoch_str`` (1-based) and once
    after each epoch, so epoch e trains at ``base_lr * decay ** e``."""
    return base_lr * decay**epoch


class ScaledAdam(Optimizer):
    def __init__(self, params, lr: float = 3e-2, clipping_scale: float | None = None, betas=(0.9, 0.98),
                 scalar_lr_scale: float = 0.1, eps: float = 1e-8, param_min_rms: float = 1e-5,
                 param_max_rms: float = 3.0, scalar_max: float = 10.0, size_update_period: int = 4,
                 clipping_update_period: int = 100):
        defaults = dict(lr=lr, clipping_scale=clipping_scale, betas=tuple(betas), scalar_lr_scale=scalar_lr_scale,
                        eps=eps, param_min_rms=param_min_rms, param_max_rms=param_max_rms, scalar_max=scalar_max,
                        size_update_period=size_update_period, clipping_update_period=clipping_update_period)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ state
    def _init(self, group: dict, p: torch.Tensor, state: dict) -> None:
        state["step"] = 0
        state["delta"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
        if p.numel() > 1:
            rms = p.detach().pow(2).mean().sqrt().reshape(1)
            state["param_rms"] = rms
            state["scale_exp_avg_sq"] = torch.zeros_like(rms)
            state["scale_grads"] = torch.zeros(group["size_update_period"], 1, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            params = group["params"]
            if not params:
                continue
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            if any(g.is_sparse for g in grads):
                raise RuntimeError("ScaledAdam does not support sparse gradients")
            fresh = any(len(self.state[p]) == 0 for p in params)
            scale = 1.0 if fresh else self._clipping_scale(gi, group, params, grads)
            for p, g in zip(params, grads):
                state = self.state[p]
                if len(state) == 0:
                    self._init(group, p, state)
                self._update(group, p, g, scale, state)
        return loss

    # ------------------------------------------------------------------ clipping
    def _clipping_scale(self, gi: int, group: dict, params, grads) -> float:
        clipping_scale = group["clipping_scale"]
        first = self.state[params[0]]
        step = first["step"]
        if clipping_scale is None or step == 0:
            return 1.0
        period = group["clipping_update_period"]
        tot = torch.zeros((), device=params[0].device)
        for p, g in zip(params, grads):
            st = self.state[p]
            tot += (g**2).sum() if p.numel() == 1 else ((g * st["param_rms"]) ** 2).sum()
        tot_norm = tot.sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=tot.device)
        first["model_norms"][step % period] = tot_norm
        if step % period == 0:
            norms = first["model_norms"].sort()[0].cpu()
            quartiles = [norms[min(period - 1, (period // 4) * n)].item() for n in range(5)]
            first["model_norm_threshold"] = clipping_scale * quartiles[2]
            clipped = first.get("num_clipped", 0) * 100.0 / period
            first["num_clipped"] = 0
            log.info("ScaledAdam group %d: grad-norm quartiles %s, threshold %.3e, %.1f%% clipped", gi,
                     " ".join(f"{q:.3e}" for q in quartiles), first["model_norm_threshold"], clipped)
        if step < period:
            return 1.0
        threshold = first.get("model_norm_threshold")
        if threshold is None:
            return 1.0
        ans = min(1.0, (threshold / (tot_norm + 1e-20)).item())
        if ans < 1.0:
            first["num_clipped"] = first.get("num_clipped", 0) + 1
        if ans < 0.1:
            log.warning("ScaledAdam: scaling gradients by %.3g (threshold %.3e)", ans, threshold)
        return ans

    # ------------------------------------------------------------------ one tensor
    def _update(self, group: dict, p: torch.Tensor, grad: torch.Tensor, clip: float, state: dict) -> None:
        # Upstream (and the icefall version it copies) applies the clipping factor only to the
        # gradient of the learnt scale; the Adam update reads the unclipped p.grad.  Kept as is.
        beta1, beta2 = group["betas"]
        step = state["step"]
        delta = state["delta"]
        delta.mul_(beta1)
        if p.numel() > 1:
            period = group["size_update_period"]
            state["scale_grads"][step % period] = (p * (grad * clip if clip != 1.0 else grad)).sum()
            if step % period == period - 1:
                state["param_rms"].copy_(p.pow(2).mean().sqrt().reshape(1))
                if step > 0:
                    self._size_update(group, p, state)
            self._step_tensor(group, p, grad, state)
        else:
            self._step_scalar(group, p, grad, state)
        state["step"] = step + 1

    def _size_update(self, group: dict, p: torch.Tensor, state: dict) -> None:
        """Learn the tensor's overall scale (as if p = underlying * exp(scale))."""
        beta1, beta2 = group["betas"]
        size_lr = group["lr"] * group["scalar_lr_scale"]
        scale_grads = state["scale_grads"]  # [period, 1]
        period = scale_grads.shape[0]
        beta2_corr = beta2**period
        sq = state["scale_exp_avg_sq"]
        sq.mul_(beta2_corr).add_((scale_grads**2).mean(dim=0), alpha=1 - beta2_corr)
        size_step = (state["step"] + 1) // period
        bias_correction2 = 1 - beta2_corr**size_step
        denom = sq.sqrt() + group["eps"]
        scale_step = -size_lr * (bias_correction2**0.5) * scale_grads.sum(dim=0) / denom  # [1]
        rms = state["param_rms"]
        scale_step = torch.where(rms < group["param_min_rms"], torch.zeros_like(scale_step), scale_step)
        scale_step = torch.where(rms > group["param_max_rms"], torch.full_like(scale_step, -size_lr * period), scale_step)
        state["delta"].add_(p * scale_step, alpha=1 - beta1)

    def _step_tensor(self, group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        beta1, beta2 = group["betas"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        if bias_correction2 < 0.99:
            exp_avg_sq = exp_avg_sq * (1.0 / bias_correction2)
        denom = exp_avg_sq.sqrt() + group["eps"]
        alpha = -group["lr"] * (1 - beta1) * state["param_rms"].clamp(min=group["param_min_rms"])
        state["delta"].add_(grad / denom * alpha)
        p.add_(state["delta"])

    def _step_scalar(self, group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        beta1, beta2 = group["betas"]
        lr = group["lr"] * group["scalar_lr_scale"]
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        denom = (exp_avg_sq / bias_correction2).sqrt() + group["eps"]
        state["delta"].add_(grad / denom, alpha=-lr * (1 - beta1))
        p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        p.add_(state["delta"])
