"""HiFi-GAN generator of SoVITS (upstream ``Generator``): latent z [B, 192, T] at 50 Hz -> 32 kHz audio.

``lengths`` (optional, in frames) zeroes each row's padding before every convolution, so a row
decoded inside a right-padded batch gives the same samples as when decoded alone (convolutions
then see zeros past the end in both cases).  Without it the code is upstream's exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


class ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3, dilation=(1, 3, 5)):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)) for d in dilation
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=1, padding=get_padding(kernel_size, 1)) for _ in dilation
        )

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = c1(_masked(F.leaky_relu(x, LRELU_SLOPE), x_mask))
            xt = c2(_masked(F.leaky_relu(xt, LRELU_SLOPE), x_mask))
            x = xt + x
        return _masked(x, x_mask)


class ResBlock2(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 3, dilation=(1, 3)):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, 1, dilation=d, padding=get_padding(kernel_size, d)) for d in dilation
        )

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        for c in self.convs:
            x = c(_masked(F.leaky_relu(x, LRELU_SLOPE), x_mask)) + x
        return _masked(x, x_mask)


class Generator(nn.Module):
    def __init__(self, initial_channel: int, resblock: str, resblock_kernel_sizes, resblock_dilation_sizes,
                 upsample_rates, upsample_initial_channel: int, upsample_kernel_sizes, gin_channels: int = 0):
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.upsample_rates = tuple(upsample_rates)
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        block = ResBlock1 if resblock == "1" else ResBlock2
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes)):
            self.ups.append(nn.ConvTranspose1d(upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1),
                                               k, u, padding=(k - u) // 2))
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for i in range(len(self.ups)):
            ch = upsample_initial_channel // 2 ** (i + 1)
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(block(ch, k, d))
        self.conv_post = nn.Conv1d(ch, 1, 7, 1, padding=3, bias=False)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, T] latent frames; g: [B, gin, 1]; lengths: [B] valid frames -> audio [B, 1, T * hop]."""
        mask = None
        if lengths is not None:
            mask = (torch.arange(x.shape[2], device=x.device).view(1, -1) < lengths.view(-1, 1)).unsqueeze(1).to(x.dtype)
        x = self.conv_pre(_masked(x, mask))
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            x = up(_masked(F.leaky_relu(x, LRELU_SLOPE), mask))
            if mask is not None:
                mask = torch.repeat_interleave(mask, self.upsample_rates[i], dim=2)
                x = x * mask
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x, mask)
                xs = y if xs is None else xs + y
            x = xs / self.num_kernels
        # upstream's final activation uses F.leaky_relu's default slope 0.01, not LRELU_SLOPE
        x = self.conv_post(_masked(F.leaky_relu(x), mask))
        return torch.tanh(x)
