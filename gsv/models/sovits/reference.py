"""Reference (timbre) encoder: linear spectrogram -> speaker vector ge (upstream ``MelStyleEncoder``).

Spectral MLP (Linear, Mish) x2 -> two residual Conv1d-GLU -> 2-head self-attention whose scores
are divided by sqrt(d_model = 128) (not sqrt(d_k)), with a residual -> Linear -> masked mean over time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearNorm(nn.Module):
    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class ConvNorm(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Conv1dGLU(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.channels = channels
        self.conv1 = ConvNorm(channels, 2 * channels, kernel_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return x + self.dropout(y[:, : self.channels] * torch.sigmoid(y[:, self.channels :]))


class StyleAttention(nn.Module):
    """Self-attention with a residual; ``w_qs/w_ks/w_vs/fc`` as upstream (temperature sqrt(d_model))."""

    def __init__(self, n_head: int, d_model: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.d_k = d_model // n_head
        self.temperature = math.sqrt(d_model)
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_pad: torch.Tensor | None) -> torch.Tensor:
        """x: [B, T, D]; key_pad: [B, T] bool (True = padding)."""
        b, t, _ = x.shape
        h, dk = self.n_head, self.d_k
        q = self.w_qs(x).view(b, t, h, dk).transpose(1, 2)  # [B, H, T, dk]
        k = self.w_ks(x).view(b, t, h, dk).transpose(1, 2)
        v = self.w_vs(x).view(b, t, h, dk).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.temperature  # [B, H, T, T]
        if key_pad is not None:
            scores = scores.masked_fill(key_pad.view(b, 1, 1, t), float("-inf"))
        p = self.attn_dropout(torch.softmax(scores, dim=-1))
        out = torch.matmul(p, v).transpose(1, 2).reshape(b, t, h * dk)
        return self.dropout(self.fc(out)) + x


class MelStyleEncoder(nn.Module):
    def __init__(self, n_mel_channels: int, style_hidden: int = 128, style_vector_dim: int = 256,
                 style_kernel_size: int = 5, style_head: int = 2, dropout: float = 0.1):
        super().__init__()
        self.spectral = nn.Sequential(
            LinearNorm(n_mel_channels, style_hidden), Mish(), nn.Dropout(dropout),
            LinearNorm(style_hidden, style_hidden), Mish(), nn.Dropout(dropout),
        )
        self.temporal = nn.Sequential(
            Conv1dGLU(style_hidden, style_kernel_size, dropout), Conv1dGLU(style_hidden, style_kernel_size, dropout)
        )
        self.slf_attn = StyleAttention(style_head, style_hidden, dropout)
        self.fc = LinearNorm(style_hidden, style_vector_dim)

    def forward(self, spec: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """spec: [B, F, T] linear magnitudes; mask: [B, 1, T] (1 = valid) -> ge [B, gin, 1]."""
        x = spec.transpose(1, 2)  # [B, T, F]
        pad = (mask == 0).squeeze(1) if mask is not None else None  # [B, T]
        x = self.spectral(x)
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)  # [B, T, H]
        if pad is not None:
            x = x.masked_fill(pad.unsqueeze(-1), 0)
        x = self.fc(self.slf_attn(x, pad))
        if pad is None:
            w = x.mean(dim=1)
        else:
            n = (~pad).sum(dim=1, keepdim=True).unsqueeze(1)  # [B, 1, 1]
            w = (x.masked_fill(pad.unsqueeze(-1), 0).float() / n).sum(dim=1).to(x.dtype)
        return w.unsqueeze(-1)
