"""One-codebook residual vector quantizer of SoVITS (upstream ``ResidualVectorQuantizer(768, n_q=1, bins=1024)``).

Buffers keep upstream's names (``vq.layers.0._codebook.{inited, cluster_size, embed, embed_avg}``).
Inference is a nearest-codebook search; the EMA statistics are only carried along (the quantizer
is frozen during fine-tuning, as upstream).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Codebook(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed", torch.randn(size, dim))
        self.register_buffer("embed_avg", torch.zeros(size, dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] -> nearest code [N] by squared euclidean distance."""
        e = self.embed.t()  # [D, K]
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ e + e.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)


class VectorQuantization(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self._codebook = Codebook(dim, size)


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, size: int, n_q: int):
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, size) for _ in range(n_q))


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, dimension: int = 768, n_q: int = 1, bins: int = 1024):
        super().__init__()
        self.vq = ResidualVQ(dimension, bins, n_q)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, D, T] -> codes [n_q, B, T] (residual over layers)."""
        b, d, t = x.shape
        residual = x.transpose(1, 2).reshape(b * t, d)  # [B*T, D]
        out = []
        for layer in self.vq.layers:
            idx = layer._codebook.encode(residual)
            residual = residual - layer._codebook.decode(idx)
            out.append(idx.view(b, t))
        return torch.stack(out)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [n_q, B, T] -> quantized [B, D, T] (sum over the layers given)."""
        q = None
        for i, layer in enumerate(self.vq.layers[: codes.shape[0]]):
            e = layer._codebook.decode(codes[i])  # [B, T, D]
            q = e if q is None else q + e
        return q.transpose(1, 2)
