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


def test_dc_offset_loss_sees_the_offset_the_mel_loss_misses():
    import math

    from gsv.audio import spec_to_mel, spectrogram
    from trainer.losses import dc_offset_loss

    t = torch.arange(32000) / 32000
    speech = (0.03 * torch.sin(2 * math.pi * 220 * t)).view(1, 1, -1)
    shifted = speech + 0.05
    assert float(dc_offset_loss(speech, speech)) == 0.0
    assert abs(float(dc_offset_loss(shifted, speech)) - 0.05) < 1e-6
    # the log-mel L1 of the same pair moves in at most the two lowest of 128 bands
    mel = lambda x: spec_to_mel(spectrogram(x[:, 0], 2048, 640, 2048), 32000, 128)  # noqa: E731
    per_band = (mel(shifted) - mel(speech)).abs().mean(dim=(0, 2))
    assert int((per_band > 0.05).sum()) <= 2
