"""Normalising flow and WaveNet-style blocks of VITS (upstream ``modules.WN``, ``ResidualCouplingBlock``).

Inference modules hold plain convolution weights (weight norm folded at load).  Training applies
weight-norm parametrizations to the same modules (see :mod:`gsv.models.weightnorm`).
"""
from __future__ import annotations

import torch
from torch import nn


def gated_activation(x_in: torch.Tensor, g_l: torch.Tensor, n_channels: int) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of (x_in + g_l) split in halves along channels."""
    z = x_in + g_l
    return torch.tanh(z[:, :n_channels]) * torch.sigmoid(z[:, n_channels:])


class WN(nn.Module):
    """Non-causal WaveNet: dilated gated convolutions, residual and skip 1x1 convolutions, optional global condition."""

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0):
        super().__init__()
        assert kernel_size % 2 == 1
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        if gin_channels:
            self.cond_layer = nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(nn.Conv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding))
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(nn.Conv1d(hidden_channels, out, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, H, T], x_mask: [B, 1, T], g: [B, gin, 1] -> [B, H, T]."""
        h = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None else None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            x_in = in_layer(x)
            g_l = cond[:, i * 2 * h : (i + 1) * 2 * h] if cond is not None else torch.zeros_like(x_in)
            acts = self.drop(gated_activation(x_in, g_l, h))
            rs = res_skip(acts)
            if i < self.n_layers - 1:
                x = (x + rs[:, :h]) * x_mask
                output = output + rs[:, h:]
            else:
                output = output + rs
        return output * x_mask


class ResidualCouplingLayer(nn.Module):
    """Affine coupling on half the channels; ``mean_only`` (log-scale 0) as used by SoVITS."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, mean_only: bool = True):
        super().__init__()
        self.half = channels // 2
        self.mean_only = mean_only
        self.pre = nn.Conv1d(self.half, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half * (2 - mean_only), 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False):
        x0, x1 = x[:, : self.half], x[:, self.half :]
        stats = self.post(self.enc(self.pre(x0) * x_mask, x_mask, g=g)) * x_mask
        if self.mean_only:
            m, logs = stats, torch.zeros_like(stats)
        else:
            m, logs = stats[:, : self.half], stats[:, self.half :]
        if reverse:
            x1 = (x1 - m) * torch.exp(-logs) * x_mask
            return torch.cat([x0, x1], 1)
        x1 = m + x1 * torch.exp(logs) * x_mask
        return torch.cat([x0, x1], 1), torch.sum(logs, [1, 2])


class Flip(nn.Module):
    """Reverse the channel order (parameter-free, keeps upstream's module indices)."""

    def forward(self, x: torch.Tensor, *args, reverse: bool = False, **kwargs):
        x = torch.flip(x, [1])
        return x if reverse else (x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))


class ResidualCouplingBlock(nn.Module):
    """``n_flows`` x (coupling layer, flip); indices 0, 2, 4, 6 hold weights."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 n_flows: int = 4, gin_channels: int = 0):
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers,
                                                    gin_channels=gin_channels, mean_only=True))
            self.flows.append(Flip())

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False):
        if reverse:
            for flow in reversed(self.flows):
                x = flow(x, x_mask, g=g, reverse=True)
            return x
        for flow in self.flows:
            x, _ = flow(x, x_mask, g=g)
        return x


class PosteriorEncoder(nn.Module):
    """q(z | linear spectrogram): training only (``enc_q``; stripped from released fine-tunes)."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None):
        """x: spec [B, 1025, T] -> z, m, logs [B, C, T], mask [B, 1, T]."""
        if g is not None:
            g = g.detach()
        x_mask = sequence_mask(x_lengths, x.shape[2]).unsqueeze(1).to(x.dtype)
        x = self.pre(x) * x_mask
        stats = self.proj(self.enc(x, x_mask, g=g)) * x_mask
        m, logs = stats[:, : self.out_channels], stats[:, self.out_channels :]
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """[B] lengths -> [B, T] bool, True inside each sequence."""
    if max_length is None:
        max_length = int(lengths.max())
    return torch.arange(max_length, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
