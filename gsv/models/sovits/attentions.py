"""Transformer encoder of VITS with relative positions (upstream ``module/attentions.py`` semantics).

Tensors are channel-first: x [B, C, T] with a mask [B, 1, T].  LayerNorm normalises over channels.
Attention scores at masked keys are filled with -1e4 (not -inf), as upstream, so a fully masked row
still gives finite values.  Relative positions use a window of 4 with embeddings shared over heads;
they are applied by gathering from a [2w+1] table instead of upstream's pad-and-reshape trick
(same numbers, and it exports to ONNX with dynamic lengths).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MASK_FILL = -1e4


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of [B, C, T] (parameters ``gamma``/``beta`` as upstream)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)
        # the normalised size comes from the parameters: x.shape[-1] is a traced value under ONNX export
        x = F.layer_norm(x, self.gamma.shape, self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with 1x1 convolutions; optional relative positions (self-attention only)."""

    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0, window_size: int | None = None):
        super().__init__()
        assert channels % n_heads == 0
        self.n_heads = n_heads
        self.k_channels = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        if window_size is not None:
            std = self.k_channels**-0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.k_channels) * std)
        nn.init.xavier_uniform_(self.conv_q.weight)
        nn.init.xavier_uniform_(self.conv_k.weight)
        nn.init.xavier_uniform_(self.conv_v.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: queries [B, C, Tq]; c: keys/values [B, C, Tk]; attn_mask: [B, 1, Tq, Tk] (0 = masked)."""
        b, _, tq = x.shape
        tk = c.shape[2]
        h, d = self.n_heads, self.k_channels
        q = self.conv_q(x).view(b, h, d, tq).transpose(2, 3) / math.sqrt(d)  # [B, H, Tq, d]
        k = self.conv_k(c).view(b, h, d, tk).transpose(2, 3)  # [B, H, Tk, d]
        v = self.conv_v(c).view(b, h, d, tk).transpose(2, 3)
        scores = torch.matmul(q, k.transpose(-2, -1))  # [B, H, Tq, Tk]
        if self.window_size is not None:
            offsets, valid = self._relative_index(tq)  # [T, T]
            rel = torch.matmul(q, self.emb_rel_k[0].transpose(0, 1))  # [B, H, T, 2w+1]
            scores = scores + torch.gather(rel, 3, offsets.expand(b, h, tq, tq)) * valid
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, MASK_FILL)
        p = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(p, v)  # [B, H, Tq, d]
        if self.window_size is not None:
            out = out + torch.matmul(self._relative_weights(p), self.emb_rel_v[0])
        out = out.transpose(2, 3).reshape(b, h * d, tq)  # [B, C, Tq]
        return self.conv_o(out)

    def _relative_index(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index into the [2w+1] table for key j of query i, and whether |j - i| <= w."""
        w = self.window_size
        pos = torch.arange(t, device=self.emb_rel_k.device)
        rel = pos.view(1, t) - pos.view(t, 1)  # [T, T]: j - i
        valid = (rel.abs() <= w).to(self.emb_rel_k.dtype)
        return (rel + w).clamp(0, 2 * w), valid

    def _relative_weights(self, p: torch.Tensor) -> torch.Tensor:
        """p: [B, H, T, T] -> [B, H, T, 2w+1], the probability of key i + r - w for offset r."""
        b, h, t, _ = p.shape
        w = self.window_size
        pos = torch.arange(t, device=p.device).view(t, 1)
        r = torch.arange(2 * w + 1, device=p.device).view(1, 2 * w + 1)
        key = pos + r - w  # [T, 2w+1]
        valid = ((key >= 0) & (key < t)).to(p.dtype)
        gathered = torch.gather(p, 3, key.clamp(0, t - 1).expand(b, h, t, 2 * w + 1))
        return gathered * valid


class FFN(nn.Module):
    """Two 'same'-padded convolutions with ReLU, masked before each convolution."""

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 1:
            return x
        return F.pad(x, ((self.kernel_size - 1) // 2, self.kernel_size // 2))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv_1(self._pad(x * x_mask)))
        x = self.conv_2(self._pad(self.drop(x) * x_mask))
        return x * x_mask


class Encoder(nn.Module):
    """Post-LN relative-position transformer encoder (attn -> LN, FFN -> LN) per layer."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int = 1, p_dropout: float = 0.0, window_size: int = 4):
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            MultiHeadAttention(hidden_channels, hidden_channels, n_heads, p_dropout, window_size) for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            FFN(hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # [B, 1, T, T]
        x = x * x_mask
        for attn, n1, ffn, n2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = n1(x + self.drop(attn(x, x, attn_mask)))
            x = n2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
