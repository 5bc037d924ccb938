"""HiFi-GAN generator of SoVITS (upstream ``Generator``): latent z [B, 192, T] at 50 Hz -> 32 kHz audio.

``lengths`` (optional, in frames) zeroes each row's padding before every convolution, so a row
decoded inside a right-padded batch gives the same samples as when decoded alone (convolutions
then see zeros past the end in both cases); ``valid_from`` does the same for left padding.  Without
them the code is upstream's exactly.

``trim`` (left, right frames) renders only the audio between them: a streaming window's vocoder
input carries context and lookahead frames whose own samples nobody plays.  The input is cut at
every rate down to what the rest of the network still reaches (its receptive radius, computed from
the layer shapes), so the expensive high-rate layers run over little more than the kept span; the
kept samples equal an untrimmed rendering's (up to float rounding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


EDGE_KERNEL = 7  # conv_pre and conv_post (upstream's shape; TrimPlan's radii depend on it)


def _crop(x: torch.Tensor, lo, hi) -> torch.Tensor:
    """x [B, C, T] -> x [B, C, lo : T - hi] (ints slice; tensors trace to an ONNX Range + Gather)."""
    if isinstance(lo, int) and isinstance(hi, int):
        return x if lo == hi == 0 else x[:, :, lo : x.shape[2] - hi]
    return x.index_select(2, torch.arange(lo, x.shape[2] - hi, device=x.device))


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def _conv_radius(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size - 1) * dilation // 2 + (kernel_size - 1) % 2  # odd kernels: exact; even: one more


def _block_radius(resblock: str, kernel_size: int, dilation) -> int:
    """Samples either side an output sample of a residual block depends on (its convolutions in series:
    ResBlock1 pairs each dilated conv with a plain one)."""
    if resblock == "1":
        return sum(_conv_radius(kernel_size, d) + _conv_radius(kernel_size) for d in dilation)
    return sum(_conv_radius(kernel_size, d) for d in dilation)


@dataclass(frozen=True)
class TrimPlan:
    """Where a trimmed rendering cuts, from the layer shapes alone: before upsampling layer i the signal
    runs at ``rates[i]`` samples per frame and everything after it reaches ``radii[i]`` samples (rounded
    up, plus one); ``input_radius`` frames for the input (conv_pre included); ``macs[i]``: multiply-adds
    per input frame of stage i (transposed conv + residual blocks), for :meth:`work`."""

    rates: tuple[int, ...]
    radii: tuple[int, ...]
    input_radius: int
    macs: tuple[int, ...]

    @classmethod
    def of(cls, cfg) -> "TrimPlan":
        """From a SoVITSConfig."""
        return cls.from_layers(cfg.resblock, cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, cfg.upsample_rates,
                               cfg.upsample_initial_channel, cfg.upsample_kernel_sizes)

    @classmethod
    def from_layers(cls, resblock: str, resblock_kernel_sizes, resblock_dilation_sizes, upsample_rates,
                    upsample_initial_channel: int, upsample_kernel_sizes) -> "TrimPlan":
        """From the Generator's layer arguments."""
        ups, kernels = tuple(upsample_rates), tuple(upsample_kernel_sizes)
        rates = [1]
        for u in ups[:-1]:
            rates.append(rates[-1] * u)
        blocks = list(zip(resblock_kernel_sizes, resblock_dilation_sizes))
        block = max(_block_radius(resblock, k, d) for k, d in blocks)
        taps = sum(k * len(d) * (2 if resblock == "1" else 1) for k, d in blocks)
        radius, radii, macs = _conv_radius(EDGE_KERNEL), [0] * len(ups), []  # conv_post
        for i in reversed(range(len(ups))):
            u, k = ups[i], kernels[i]
            # an output sample of the transposed conv reads inputs up to k - 1 - padding output samples away
            radii[i] = -(-(radius + block + k - 1 - (k - u) // 2) // u) + 1
            radius = radii[i]
        for i, (u, k) in enumerate(zip(ups, kernels)):
            c_in, c_out = upsample_initial_channel // 2**i, upsample_initial_channel // 2 ** (i + 1)
            macs.append(rates[i] * (c_in * c_out * k + c_out * c_out * taps * u))
        return cls(tuple(rates), tuple(radii), radii[0] + _conv_radius(EDGE_KERNEL), tuple(macs))  # + conv_pre

    def cut(self, stage: int, trim_frames):
        """Samples dropped before upsampling layer ``stage`` (-1: the input frames) when ``trim_frames``
        frames at that end are not rendered (an int, or an int64 tensor when traced for export)."""
        rate, radius = (1, self.input_radius) if stage < 0 else (self.rates[stage], self.radii[stage])
        if isinstance(trim_frames, int):
            return max(0, trim_frames * rate - radius)
        return torch.clamp(trim_frames * rate - radius, min=0)

    def work(self, frames: int, trim: tuple[int, int]) -> float:
        """The vocoder work of rendering ``frames`` input frames with ``trim``, counted as the frames an
        untrimmed rendering of the same work would have (each stage's span weighted by its multiply-adds)."""
        done = sum(m * max(0.0, frames - (self.cut(i, trim[0]) + self.cut(i, trim[1])) / self.rates[i])
                   for i, m in enumerate(self.macs))
        return done / sum(self.macs)


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
        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, EDGE_KERNEL, 1, padding=EDGE_KERNEL // 2)
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
        self.conv_post = nn.Conv1d(ch, 1, EDGE_KERNEL, 1, padding=EDGE_KERNEL // 2, bias=False)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)
        self.trim_plan = TrimPlan.from_layers(resblock, resblock_kernel_sizes, resblock_dilation_sizes, upsample_rates,
                                              upsample_initial_channel, upsample_kernel_sizes)
        self.hop = math.prod(self.upsample_rates)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                valid_from: torch.Tensor | None = None, trim=None) -> torch.Tensor:
        """x: [B, C, T] latent frames; g: [B, gin, 1]; rows valid over frames [valid_from, lengths) (both
        [B], optional); trim: (left, right) frames whose audio is not rendered (ints, or int64 tensors
        when traced for export) -> audio [B, 1, (T - left - right) * hop]."""
        mask = None
        if lengths is not None or valid_from is not None:
            t = torch.arange(x.shape[2], device=x.device).view(1, -1)
            valid = t < (x.shape[2] if lengths is None else lengths.view(-1, 1))
            if valid_from is not None:
                valid = valid & (t >= valid_from.view(-1, 1))
            mask = valid.unsqueeze(1).to(x.dtype)
        cut = (0, 0)  # samples already dropped at the current rate (left, right)
        if trim is not None:
            x, mask, cut = self._cut(x, mask, trim, -1, cut)
        x = self.conv_pre(_masked(x, mask))
        if g is not None:
            x = x + self.cond(g)
        for i, up in enumerate(self.ups):
            if trim is not None:
                x, mask, cut = self._cut(x, mask, trim, i, cut)
            x = up(_masked(F.leaky_relu(x, LRELU_SLOPE), mask))
            cut = (cut[0] * self.upsample_rates[i], cut[1] * self.upsample_rates[i])
            if mask is not None:
                mask = torch.repeat_interleave(mask, self.upsample_rates[i], dim=2)
                x = x * mask
            xs = None
            for j in range(self.num_kernels):
                y = self.resblocks[i * self.num_kernels + j](x, mask)
                xs = y if xs is None else xs + y
            x = xs / self.num_kernels
        # upstream's final activation uses F.leaky_relu's default slope 0.01, not LRELU_SLOPE
        x = torch.tanh(self.conv_post(_masked(F.leaky_relu(x), mask)))
        if trim is not None:
            x = _crop(x, trim[0] * self.hop - cut[0], trim[1] * self.hop - cut[1])
        return x

    def _cut(self, x, mask, trim, stage: int, cut):
        """Drop what the rest of the network does not reach from the kept span (TrimPlan.cut)."""
        lo, hi = self.trim_plan.cut(stage, trim[0]), self.trim_plan.cut(stage, trim[1])
        x = _crop(x, lo - cut[0], hi - cut[1])
        return x, None if mask is None else _crop(mask, lo - cut[0], hi - cut[1]), (lo, hi)
