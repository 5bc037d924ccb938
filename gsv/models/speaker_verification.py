"""Speaker verification for v2Pro/v2ProPlus: Kaldi filterbanks and the ERes2NetV2 trunk.

A Pro SoVITS adds ``sv_emb(embedding)`` to the reference-encoder vector ge.  The embedding is what
upstream's ``SV.compute_embedding3`` returns for a 16 kHz waveform:

1. :func:`kaldi_fbank`: 25 ms frames every 10 ms (no edge padding), DC offset removed, pre-emphasis,
   Povey window, 512-point power spectrum, 80 triangular filters on the Kaldi mel scale (20 Hz to
   Nyquist), natural log floored at float32 epsilon.  No dither, no energy, no mean normalisation and
   no int16 scaling (upstream passes [-1, 1] audio).
2. :class:`ERes2NetV2` (``forward3``): a 2-D ResNet over (mel, time) whose blocks split their channels
   into ``scale`` branches processed hierarchically (Res2Net), the last two stages fusing branches with
   attention (AFF); stage 3 is downsampled and fused with stage 4; the fused map [B, C, F/8, T/8] is
   flattened over (C, F) and averaged over time -> [B, C * F/8] (20480 at full size).  Upstream's
   pooling layer and ``seg_1`` projection are not part of this path and are not kept.

Parameter names follow upstream's state dict so its checkpoint loads as is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from gsv import constants as C
from gsv.models.config import SVConfig

# ---------------------------------------------------------------------------------------- fbank
_MEL_BANKS: dict[tuple, torch.Tensor] = {}


def _kaldi_mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(hz / 700.0)


def kaldi_mel_banks(n_mels: int = C.SV_N_MELS, n_fft: int = C.SV_N_FFT, sr: int = C.SV_SAMPLE_RATE,
                    low_hz: float = C.SV_MEL_LOW_HZ) -> torch.Tensor:
    """Triangular filters [n_mels, n_fft // 2 + 1] on the Kaldi mel scale from ``low_hz`` to Nyquist.

    Each filter rises from its left edge to its centre and falls to its right edge, all equally spaced
    in mel; bin i sits at i * sr / n_fft Hz.  The Nyquist bin always gets weight 0 (Kaldi evaluates
    the filters on bins 0 .. n_fft/2 - 1 only).
    """
    key = (n_mels, n_fft, sr, low_hz)
    if key not in _MEL_BANKS:
        mel_lo, mel_hi = _kaldi_mel(torch.tensor(low_hz)), _kaldi_mel(torch.tensor(sr / 2))
        step = (mel_hi - mel_lo) / (n_mels + 1)
        left = mel_lo + step * torch.arange(n_mels).unsqueeze(1)  # [n_mels, 1]
        centre, right = left + step, left + 2 * step
        mel = _kaldi_mel(sr / n_fft * torch.arange(n_fft // 2)).unsqueeze(0)  # [1, n_fft/2]
        rise, fall = (mel - left) / (centre - left), (right - mel) / (right - centre)
        banks = torch.clamp(torch.minimum(rise, fall), min=0.0)
        _MEL_BANKS[key] = F.pad(banks, (0, 1))  # [n_mels, n_fft/2 + 1], zero weight at Nyquist
    return _MEL_BANKS[key]


def kaldi_fbank(wav: torch.Tensor) -> torch.Tensor:
    """Log-mel filterbank features of 16 kHz audio: wav [B, N] in [-1, 1] -> [B, T, 80],
    T = 1 + (N - 400) // 160 (frames that fit entirely; N >= 400)."""
    if wav.shape[-1] < C.SV_FRAME_LENGTH:
        raise ValueError(f"speaker-verification audio is too short ({wav.shape[-1]} samples at 16 kHz, "
                         f"need at least {C.SV_FRAME_LENGTH})")
    frames = wav.unfold(-1, C.SV_FRAME_LENGTH, C.SV_FRAME_SHIFT)  # [B, T, 400]
    frames = frames - frames.mean(-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # the first sample is its own predecessor
    frames = frames - C.SV_PREEMPHASIS * previous
    window = torch.hann_window(C.SV_FRAME_LENGTH, periodic=False, dtype=wav.dtype, device=wav.device)
    frames = frames * window.pow(C.SV_POVEY_POWER)
    power = torch.fft.rfft(frames, n=C.SV_N_FFT).abs().pow(2)  # [B, T, 257]
    mel = power @ kaldi_mel_banks().to(wav.device, wav.dtype).T  # [B, T, 80]
    return torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()


# ---------------------------------------------------------------------------------------- network
class ClippedReLU(nn.Hardtanh):
    """ReLU capped at 20, the activation of every ERes2NetV2 block."""

    def __init__(self):
        super().__init__(0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion of two maps of ``channels``: ``x * (1 + a) + y * (1 - a)`` with
    ``a = tanh(local_att([x; y]))``, a per-position gate from a 1x1 bottleneck (reduction ``r``)."""

    def __init__(self, channels: int, r: int = 4):
        super().__init__()
        inner = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inner, 1), nn.BatchNorm2d(inner), nn.SiLU(),
            nn.Conv2d(inner, channels, 1), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gate = torch.tanh(self.local_att(torch.cat([x, y], dim=1)))
        return x * (1.0 + gate) + y * (1.0 - gate)

    def fuse_batchnorm(self) -> None:
        conv_a, bn_a, act, conv_b, bn_b = self.local_att
        self.local_att = nn.Sequential(fuse_conv_bn_eval(conv_a, bn_a), act, fuse_conv_bn_eval(conv_b, bn_b))


class Res2Block(nn.Module):
    """One ERes2NetV2 block: 1x1 conv (carries the stride) -> ``scale`` branches of ``width`` channels,
    branch i convolving (branch i-1's output combined with split i) -> concat -> 1x1 conv -> + shortcut.
    The combination is a sum (stages 1-2) or an AFF (stages 3-4, ``fuse=True``)."""

    def __init__(self, in_ch: int, width: int, scale: int, out_ch: int, stride: int, fuse: bool):
        super().__init__()
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(in_ch, width * scale, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        self.fuse_models = nn.ModuleList(AFF(width) for _ in range(scale - 1)) if fuse else None
        self.conv3 = nn.Conv2d(width * scale, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        self.act = ClippedReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = self.act(self.bn1(self.conv1(x))).split(self.width, dim=1)  # scale x [B, width, F, T]
        outs, branch = [], None
        for i, part in enumerate(splits):
            if i == 0:
                branch = part
            elif self.fuse_models is None:
                branch = branch + part
            else:
                branch = self.fuse_models[i - 1](branch, part)
            branch = self.act(self.bns[i](self.convs[i](branch)))
            outs.append(branch)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return self.act(out + self.shortcut(x))

    def fuse_batchnorm(self) -> None:
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        for i in range(self.scale):
            self.convs[i], self.bns[i] = fuse_conv_bn_eval(self.convs[i], self.bns[i]), nn.Identity()
        self.conv3, self.bn3 = fuse_conv_bn_eval(self.conv3, self.bn3), nn.Identity()
        if len(self.shortcut):
            self.shortcut = nn.Sequential(fuse_conv_bn_eval(self.shortcut[0], self.shortcut[1]))


class ERes2NetV2(nn.Module):
    """fbank [B, T, F] -> embedding [B, cfg.embedding_dim] (upstream ``ERes2NetV2.forward3``)."""

    def __init__(self, cfg: SVConfig):
        super().__init__()
        self.cfg = cfg
        m = cfg.m_channels
        self.conv1 = nn.Conv2d(1, m, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m)
        in_ch = m
        for stage, n_blocks in enumerate(cfg.num_blocks):
            out_ch = m * 2**stage * cfg.expansion
            blocks = []
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(Res2Block(in_ch, cfg.stage_width(stage), cfg.scale, out_ch, stride, fuse=stage >= 2))
                in_ch = out_ch
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        top = m * 8 * cfg.expansion
        self.layer3_ds = nn.Conv2d(m * 4 * cfg.expansion, top, 3, stride=2, padding=1, bias=False)
        self.fuse34 = AFF(top)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = fbank.transpose(1, 2).unsqueeze(1)  # [B, T, F] -> [B, 1, F, T]
        x = F.relu(self.bn1(self.conv1(x)))  # a plain ReLU here, unlike the blocks
        x = self.layer2(self.layer1(x))  # [B, 2m*e, F/2, T/2]
        out3 = self.layer3(x)  # [B, 4m*e, F/4, T/4]
        out4 = self.layer4(out3)  # [B, 8m*e, F/8, T/8]
        fused = self.fuse34(out4, self.layer3_ds(out3))  # [B, 8m*e, F/8, T/8]
        return fused.flatten(1, 2).mean(-1)  # [B, 8m*e * F/8]

    @torch.no_grad()
    def fuse_batchnorm(self) -> "ERes2NetV2":
        """Fold every (eval-mode) BatchNorm into the convolution before it, in place: the same function
        with ~25% less time on a CPU (measured on the full-size trunk).  The state dict then no longer
        has upstream's layout, so load weights first."""
        self.eval()
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1, self.bn1), nn.Identity()
        for m in self.modules():
            if isinstance(m, (Res2Block, AFF)):
                m.fuse_batchnorm()
        return self


class SpeakerVerifier(nn.Module):
    """16 kHz audio [B, N] -> speaker-verification embedding [B, embedding_dim] (fbank + ERes2NetV2)."""

    def __init__(self, cfg: SVConfig):
        super().__init__()
        self.cfg = cfg
        self.model = ERes2NetV2(cfg)

    @torch.no_grad()
    def forward(self, wav16k: torch.Tensor) -> torch.Tensor:
        return self.model(kaldi_fbank(wav16k.to(torch.float32)))

    def load_trunk(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load an ERes2NetV2 state dict (upstream names, no prefix); keys outside the trunk are ignored."""
        own = self.model.state_dict()
        self.model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=True)

    def for_inference(self) -> "SpeakerVerifier":
        """Fold the BatchNorms (see :meth:`ERes2NetV2.fuse_batchnorm`); call after loading weights."""
        self.model.fuse_batchnorm()
        return self.eval()

