"""SoVITS and GPT training losses (formulas of upstream ``module/losses.py`` and ``AR/models``).

SoVITS (VITS-style GAN): least-squares adversarial losses over every discriminator, feature
matching (x2), the KL between the flowed posterior sample and the text prior, and the L1 between
log-mels.  GPT: summed cross entropy over all B x (T+1) positions (EOS-padded), top-3 accuracy that
ignores EOS targets, and upstream's reference-free DPO term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(real_outputs, fake_outputs) -> torch.Tensor:
    """sum over discriminators of mean((1 - D(y))^2) + mean(D(y_hat)^2) (fp32)."""
    loss = 0.0
    for dr, dg in zip(real_outputs, fake_outputs):
        loss = loss + torch.mean((1 - dr.float()) ** 2) + torch.mean(dg.float() ** 2)
    return loss


def generator_loss(fake_outputs) -> torch.Tensor:
    """sum over discriminators of mean((1 - D(y_hat))^2)."""
    loss = 0.0
    for dg in fake_outputs:
        loss = loss + torch.mean((1 - dg.float()) ** 2)
    return loss


def feature_loss(fmap_real, fmap_fake) -> torch.Tensor:
    """2 * sum over every feature map of mean|f_real - f_fake| (real features detached)."""
    loss = 0.0
    for dr, dg in zip(fmap_real, fmap_fake):
        for rl, gl in zip(dr, dg):
            loss = loss + torch.mean(torch.abs(rl.float().detach() - gl.float()))
    return loss * 2


def kl_loss(z_p, logs_q, m_p, logs_p, z_mask) -> torch.Tensor:
    """KL of the posterior sample z_p (after the flow) against the prior N(m_p, exp(logs_p)),
    averaged over valid frames x channels as upstream.  All [B, C, T]; z_mask [B, 1, T]."""
    z_p, logs_q, m_p, logs_p, z_mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, z_mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * z_mask) / torch.sum(z_mask)


def dc_offset_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|mean(y_hat) - mean(y)| per slice, averaged; y_hat, y [B, 1, N].  Not upstream (the phases of
    bases trained from scratch use it): the mel loss is blind to a constant offset (it falls into the
    lowest one or two of 128 bands), and a decoder trained from scratch drifts into one -- measured: an
    offset of 0.049 under speech of RMS 0.032, which swamps the level a speaker encoder normalises."""
    return (y_hat.float().mean(dim=-1) - y.float().mean(dim=-1)).abs().mean()


# ------------------------------------------------------------------------------------------- GPT
def gpt_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [B, T, V], targets [B, T] -> summed cross entropy (upstream reduction='sum')."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="sum")


@torch.no_grad()
def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, k: int = 3) -> tuple[int, int]:
    """(hits, counted): targets equal to ``ignore_index`` are not counted (torchmetrics micro top-k)."""
    valid = targets != ignore_index
    topk = logits.topk(min(k, logits.shape[-1]), dim=-1).indices  # [B, T, k]
    hit = (topk == targets.unsqueeze(-1)).any(-1) & valid
    return int(hit.sum()), int(valid.sum())


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(target) per row: [B] (upstream get_batch_logps)."""
    return torch.gather(logits.float().log_softmax(-1), 2, targets.unsqueeze(2)).squeeze(2).sum(-1)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Reference-free DPO: mean of -log sigmoid(beta * (log p(chosen) - log p(rejected)))."""
    return -F.logsigmoid(beta * (chosen_logps - rejected_logps)).mean()


def make_reject_tokens(semantic: torch.Tensor, generator: torch.Generator | None = None):
    """Upstream's rejected sequences for DPO: a random span of each *padded* row repeated once
    (``repeat_P``; upstream's random choice between repeating and dropping always picks repeating).
    semantic [B, T] -> (reject [B, T'] zero-padded, reject_lens [B] including the row's padding, as upstream)."""
    rows = []
    for b in range(semantic.shape[0]):
        y = semantic[b]
        lo, hi = torch.randint(0, y.numel(), (2,), generator=generator).sort().values.tolist()
        rows.append(torch.cat([y[:lo], y[lo:hi], y[lo:hi], y[hi:]]))
    lens = torch.tensor([r.numel() for r in rows], device=semantic.device)
    out = torch.zeros(len(rows), int(lens.max()), dtype=semantic.dtype, device=semantic.device)
    for b, r in enumerate(rows):
        out[b, : r.numel()] = r
    return out, lens
