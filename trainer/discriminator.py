"""Multi-period discriminator of SoVITS training (upstream ``MultiPeriodDiscriminator``, HiFi-GAN).

One scale discriminator on the raw waveform plus one period discriminator per period (2, 3, 5, 7,
11 for v2) that folds the waveform into [T / p, p] and runs (k, 1) 2-D convolutions.  All
convolutions are weight-normed (``weight_g``/``weight_v`` in upstream's files; parametrizations
here).  Parameter names match upstream, so an ``s2D*.pth`` loads (with ``channel_divisor`` 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import DiscriminatorConfig

LRELU_SLOPE = 0.1


def _padding(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


def _scores_and_features(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor):
    """Leaky-ReLU conv stack then the score conv: (flattened scores [B, N], every layer's output)."""
    fmap = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class DiscriminatorP(nn.Module):
    def __init__(self, period: int, divisor: int = 1, kernel_size: int = 5, stride: int = 3):
        super().__init__()
        self.period = period
        ch = [1] + [max(1, c // divisor) for c in (32, 128, 512, 1024, 1024)]
        pad = (_padding(kernel_size), 0)
        self.convs = nn.ModuleList(
            nn.Conv2d(ch[i], ch[i + 1], (kernel_size, 1), (stride if i < 4 else 1, 1), padding=pad) for i in range(5)
        )
        self.conv_post = nn.Conv2d(ch[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, x: torch.Tensor):
        """x: [B, 1, T] -> (scores [B, N], feature maps)."""
        b, c, t = x.shape
        if t % self.period:
            n_pad = self.period - t % self.period
            x = F.pad(x, (0, n_pad), "reflect")
            t += n_pad
        x = x.view(b, c, t // self.period, self.period)
        return _scores_and_features(self.convs, self.conv_post, x)


class DiscriminatorS(nn.Module):
    def __init__(self, divisor: int = 1):
        super().__init__()
        ch = [1] + [max(1, c // divisor) for c in (16, 64, 256, 1024, 1024, 1024)]
        groups = [1] + [max(1, g // divisor) for g in (4, 16, 64, 256)] + [1]
        kernels, strides = (15, 41, 41, 41, 41, 5), (1, 4, 4, 4, 4, 1)
        self.convs = nn.ModuleList(
            nn.Conv1d(ch[i], ch[i + 1], kernels[i], strides[i], groups=groups[i], padding=kernels[i] // 2)
            for i in range(6)
        )
        self.conv_post = nn.Conv1d(ch[-1], 1, 3, 1, padding=1)

    def forward(self, x: torch.Tensor):
        """x: [B, 1, T] -> (scores [B, N], feature maps)."""
        return _scores_and_features(self.convs, self.conv_post, x)


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.cfg = cfg
        d = cfg.channel_divisor
        self.discriminators = nn.ModuleList([DiscriminatorS(d)] + [DiscriminatorP(p, d) for p in cfg.periods])

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor):
        """y, y_hat: [B, 1, T] -> (real scores, fake scores, real fmaps, fake fmaps), one entry per discriminator."""
        rs, gs, frs, fgs = [], [], [], []
        for d in self.discriminators:
            r, fr = d(y)
            g, fg = d(y_hat)
            rs.append(r)
            gs.append(g)
            frs.append(fr)
            fgs.append(fg)
        return rs, gs, frs, fgs

    def weight_norm_names(self) -> list[str]:
        """Every convolution (upstream wraps all of them in weight norm)."""
        return [n for n, m in self.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def build_discriminator(cfg: DiscriminatorConfig, state_dict: dict[str, torch.Tensor] | None = None):
    """A weight-normed discriminator, fresh or from an (upstream-layout) state dict."""
    from gsv.models.weightnorm import apply_weight_norm, load_unfolded

    d = MultiPeriodDiscriminator(cfg)
    apply_weight_norm(d, d.weight_norm_names())
    if state_dict is not None:
        load_unfolded(d, state_dict, strict=True)
    return d


def load_upstream_discriminator(path, cfg: DiscriminatorConfig):
    """An upstream ``s2D*.pth`` (``{"weight": ...}``) or a ``D_*.pth`` training file (``{"model": ...}``)."""
    from gsv.checkpoint.upstream import read_checkpoint
    from gsv.errors import CheckpointError

    _, obj, _ = read_checkpoint(path)
    sd = obj.get("weight", obj.get("model")) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith("discriminators.") for k in sd):
        raise CheckpointError(f"{path}: not a SoVITS discriminator checkpoint (no 'discriminators.*' weights)")
    sd = {k[len("module."):] if k.startswith("module.") else k: v.float() for k, v in sd.items()}
    try:
        return build_discriminator(cfg, sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: discriminator weights do not match (periods {cfg.periods}, "
                              f"channel divisor {cfg.channel_divisor}): {str(e)[:200]}") from None
