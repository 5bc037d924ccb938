"""ScaledAdam, learning rates, losses and the weight-norm switch (small, exact checks)."""
from __future__ import annotations

import math

import torch
from torch import nn


def test_scaled_adam_first_update_is_rms_scaled_sign():
    from trainer.optim import ScaledAdam

    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4))
    a = nn.Parameter(torch.tensor([0.5]))
    w0, a0 = w.detach().clone(), a.detach().clone()
    opt = ScaledAdam([w, a], lr=0.01, betas=(0.9, 0.95), clipping_scale=2.0, clipping_update_period=1000)
    (w * torch.randn(8, 4)).sum().add(a.sum() * 3).backward()
    g = w.grad.clone()
    opt.step()
    rms = w0.pow(2).mean().sqrt()
    # step 0: bias-corrected second moment = g^2 -> update = -lr * (1 - beta1) * rms * g / (|g| + eps)
    torch.testing.assert_close(w.detach() - w0, -0.01 * 0.1 * rms * g / (g.abs() + 1e-8), rtol=1e-4, atol=1e-7)
    # one-element tensors: plain Adam at lr * scalar_lr_scale
    torch.testing.assert_close(a.detach() - a0, torch.tensor([-0.01 * 0.1 * 0.1]), rtol=1e-4, atol=1e-8)


def test_scaled_adam_state_round_trips():
    from trainer.optim import ScaledAdam

    torch.manual_seed(1)
    m = nn.Linear(4, 3)
    opt = ScaledAdam(m.parameters(), lr=0.002, clipping_scale=2.0)
    for _ in range(6):
        m(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    opt2 = ScaledAdam(m.parameters(), lr=0.002, clipping_scale=2.0)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.state_dict()["state"][0]["step"] == 6


def test_learning_rates_as_upstream():
    from trainer.optim import gpt_lr, sovits_lr

    assert [gpt_lr(i, 0.002, 0.01) for i in range(3)] == [0.01, 0.002, 0.002]
    assert sovits_lr(1e-4, 0.999875, 1) == 1e-4 * 0.999875


def test_losses():
    from trainer import losses

    z_p, logs_q, m_p, logs_p = (torch.randn(2, 3, 5) for _ in range(4))
    mask = torch.ones(2, 1, 5)
    mask[1, :, 3:] = 0
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2 * logs_p)
    torch.testing.assert_close(losses.kl_loss(z_p, logs_q, m_p, logs_p, mask), (kl * mask).sum() / mask.sum())
    r, f = [torch.ones(2, 4)], [torch.zeros(2, 4)]
    assert float(losses.discriminator_loss(r, f)) == 0.0 and float(losses.generator_loss(f)) == 1.0
    logits = torch.tensor([[[5.0, 4.0, 3.0, -1.0], [0.0, 0.0, 9.0, 1.0]]])
    assert losses.top_k_accuracy(logits, torch.tensor([[3, 3]]), ignore_index=3) == (0, 0)
    assert losses.top_k_accuracy(logits, torch.tensor([[0, 2]]), ignore_index=3, k=3) == (2, 2)
    sem = torch.tensor([[1, 2, 3, 4, 1024]])
    rej, lens = losses.make_reject_tokens(sem, torch.Generator().manual_seed(0))
    assert int(lens[0]) >= 5 and rej.shape[1] == int(lens[0])
    assert math.isfinite(float(losses.dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), 0.2)))


def test_weight_norm_switch_folds_back_exactly():
    from gsv.checkpoint.upstream import unfold_weight_norm
    from gsv.models.weightnorm import apply_weight_norm, folded_state_dict, load_unfolded

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ConvTranspose1d(4, 2, 4, 2))
    plain = {k: v.clone() for k, v in m.state_dict().items()}
    apply_weight_norm(m, ["0", "1"])
    for k, v in folded_state_dict(m).items():
        torch.testing.assert_close(v, plain[k])
    up = unfold_weight_norm(plain, {"0", "1"})  # upstream's weight_g / weight_v
    up["0.weight_v"] = up["0.weight_v"] * 3.0  # a different (g, v) split of the same weight
    load_unfolded(m, up)
    torch.testing.assert_close(m[0].parametrizations.weight.original1, up["0.weight_v"])
    torch.testing.assert_close(folded_state_dict(m)["0.weight"], plain["0.weight"])
