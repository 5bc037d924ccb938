"""SoVITS v1/v2/v2Pro/v2ProPlus generator (upstream ``SynthesizerTrn``) with upstream's parameter names.

Inference is split in two parts that run and export separately:

* the **decoder** (:meth:`SoVITS.decode_latent`): semantic codes [B, Tc] (25 Hz) + target phones +
  speaker vector ge -> latent z [B, 192, 2*Tc] (50 Hz).  Codes are looked up in the VQ codebook and
  repeated x2 (nearest), encoded with the phones (TextEncoder + MRTE cross-attention), sampled
  ``z_p = m_p + noise * exp(logs_p)`` and sent through the reverse flow;
* the **vocoder** (``self.dec``, :class:`~gsv.models.sovits.vocoder.Generator`): (z, ge) -> 32 kHz audio,
  exactly 640 samples per latent frame.

ge comes from the reference spectrogram (:meth:`speaker_embedding`) and is computed once per voice.
v2Pro/v2ProPlus (``cfg.is_pro``) add three layers: ge = PReLU(ref_enc(spec) + sv_emb(e)) with e the
speaker-verification embedding of the same reference (gin 1024), and the text encoder's MRTE gets
``ge_to512(ge)`` (:meth:`text_condition`) while the flow and the vocoder get ge itself.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gsv import constants as C
from gsv.models.config import SoVITSConfig
from gsv.models.sovits.attentions import Encoder, MultiHeadAttention
from gsv.models.sovits.flow import PosteriorEncoder, ResidualCouplingBlock, sequence_mask
from gsv.models.sovits.quantizer import ResidualVectorQuantizer
from gsv.models.sovits.reference import MelStyleEncoder
from gsv.models.sovits.vocoder import Generator


def resized_frames(frames: int, speed: float) -> int:
    """Latent frames after a speed change: upstream's ``int(T / speed) + 1`` (T at speed 1 unchanged).

    The one definition every caller uses (the engine sizing noise, every backend).  Computed in
    float32, as the exported graphs compute it from their float32 speed input, so all backends agree
    on the length (double maths differs by one frame for some speeds)."""
    if speed == 1:
        return frames
    return int(np.float32(frames) / np.float32(speed)) + 1


def latent_frames(tokens: int, speed: float) -> int:
    """Frames of z for ``tokens`` semantic codes (two 50 Hz frames per 25 Hz token) at ``speed``."""
    return resized_frames(C.FRAMES_PER_TOKEN * tokens, speed)


def speed_frames(y: torch.Tensor, speed: float | torch.Tensor):
    """Latent frames after a speed change of y [B, C, T] (:func:`resized_frames`).

    A Python ``speed`` gives an int; a 0-d tensor gives a 0-d int64 tensor computed inside the graph
    (same float32 maths), so the length follows the speed input of an exported graph.
    """
    if not isinstance(speed, torch.Tensor):
        return resized_frames(y.shape[-1], speed)
    t = torch._shape_as_tensor(y)[2]  # a traced shape value, not a constant, under ONNX export
    resized = torch.floor(t.to(torch.float32) / speed).to(torch.int64) + 1
    return torch.where(speed == 1, t, resized)


def resample_linear(y: torch.Tensor, frames) -> torch.Tensor:
    """``F.interpolate(y, size=frames, mode="linear")`` (align_corners=False) written with gathers so
    ``frames`` may be a tensor; same float32 arithmetic as PyTorch's kernel.  y: [B, C, T] -> [B, C, frames]."""
    last = torch._shape_as_tensor(y)[2] - 1  # a tensor, so exported graphs do not bake in the example length
    scale = (last + 1).to(torch.float32) / torch.as_tensor(frames, device=y.device).to(torch.float32)
    dst = torch.arange(frames, device=y.device).to(torch.float32)
    src = (scale * (dst + 0.5) - 0.5).clamp(min=0.0)
    i0 = torch.minimum(src.to(torch.int64), last)  # src >= 0, so truncation is floor
    w = (src - i0.to(torch.float32)).to(y.dtype)
    i1 = torch.where(i0 < last, i0 + 1, i0)
    return y.index_select(2, i0) * (1.0 - w) + y.index_select(2, i1) * w


def resample_nearest(y: torch.Tensor, frames) -> torch.Tensor:
    """``F.interpolate(y, size=frames, mode="nearest")`` with a possibly tensor ``frames``: y [B, C, T] -> [B, C, frames]."""
    last = torch._shape_as_tensor(y)[2] - 1
    scale = (last + 1).to(torch.float32) / torch.as_tensor(frames, device=y.device).to(torch.float32)
    src = torch.floor(torch.arange(frames, device=y.device).to(torch.float32) * scale).to(torch.int64)
    return y.index_select(2, torch.minimum(src, last))

class MRTE(nn.Module):
    """Multi-reference timbre encoder: content attends to the phones; ge added as a global bias."""

    def __init__(self, content_channels: int = 192, hidden_size: int = 512, out_channels: int = 192, n_heads: int = 4):
        # ge (gin channels) is added to the hidden_size features, so gin_channels == hidden_size
        super().__init__()
        self.cross_attention = MultiHeadAttention(hidden_size, hidden_size, n_heads)
        self.c_pre = nn.Conv1d(content_channels, hidden_size, 1)
        self.text_pre = nn.Conv1d(content_channels, hidden_size, 1)
        self.c_post = nn.Conv1d(hidden_size, out_channels, 1)

    def forward(self, ssl_enc, ssl_mask, text, text_mask, ge):
        attn_mask = text_mask.unsqueeze(2) * ssl_mask.unsqueeze(-1)  # [B, 1, Ts, Tt]
        ssl_enc = self.c_pre(ssl_enc * ssl_mask)
        text_enc = self.text_pre(text * text_mask)
        x = self.cross_attention(ssl_enc * ssl_mask, text_enc * text_mask, attn_mask) + ssl_enc + ge
        return self.c_post(x * ssl_mask)


class TextEncoder(nn.Module):
    """enc_p: SSL/codebook features and phones -> prior statistics (m_p, logs_p) at 50 Hz."""

    def __init__(self, cfg: SoVITSConfig):
        super().__init__()
        hc, fc, nh, nl, ks, p = (cfg.hidden_channels, cfg.filter_channels, cfg.n_heads, cfg.n_layers,
                                 cfg.kernel_size, cfg.p_dropout)
        self.out_channels = cfg.inter_channels
        self.ssl_proj = nn.Conv1d(cfg.ssl_dim, hc, 1)
        self.encoder_ssl = Encoder(hc, fc, nh, nl // 2, ks, p)
        self.encoder_text = Encoder(hc, fc, nh, nl, ks, p)
        self.text_embedding = nn.Embedding(cfg.n_symbols, hc)
        self.mrte = MRTE(hc, cfg.mrte_hidden, hc, cfg.mrte_heads)
        self.encoder2 = Encoder(hc, fc, nh, nl // 2, ks, p)
        self.proj = nn.Conv1d(hc, cfg.inter_channels * 2, 1)

    def forward(self, y, y_lengths, text, text_lengths, ge, speed: float | torch.Tensor = 1.0):
        """y: [B, 768, T] 50 Hz features; text: [B, Tt] phone ids; ge: [B, gin, 1]; speed a float or a
        0-d float32 tensor.  Returns (h, m, logs, mask) with m/logs [B, inter, T'], T' = speed_frames(T, speed)."""
        y_mask = sequence_mask(y_lengths, y.shape[2]).unsqueeze(1).to(y.dtype)
        y = self.ssl_proj(y * y_mask) * y_mask
        y = self.encoder_ssl(y * y_mask, y_mask)
        text_mask = sequence_mask(text_lengths, text.shape[1]).unsqueeze(1).to(y.dtype)
        t = self.text_embedding(text).transpose(1, 2)  # [B, hidden, Tt]
        t = self.encoder_text(t * text_mask, text_mask)
        y = self.mrte(y, y_mask, t, text_mask, ge)
        y = self.encoder2(y * y_mask, y_mask)
        if isinstance(speed, torch.Tensor) or speed != 1:
            # upstream: linear resampling to int(T / speed) + 1 frames (note the +1), nearest for the mask.
            # A tensor speed (an ONNX graph input) takes the same path with the length computed in-graph.
            frames = speed_frames(y, speed)
            y = resample_linear(y, frames)
            y_mask = resample_nearest(y_mask, frames)
        stats = self.proj(y) * y_mask
        m, logs = stats[:, : self.out_channels], stats[:, self.out_channels :]
        return y, m, logs, y_mask


# the submodules a reference passes through (extract_latent, speaker_embedding, text_condition)
REFERENCE_PARTS = ("ssl_proj", "quantizer", "ref_enc", "sv_emb", "ge_to512", "prelu")


class SoVITS(nn.Module):
    """``reference_only``: only :data:`REFERENCE_PARTS` (what turns a reference into a voice); the text
    encoder, flow and vocoder, about 90% of the weights, are never built."""

    def __init__(self, cfg: SoVITSConfig, with_posterior: bool = False, reference_only: bool = False):
        super().__init__()
        self.cfg = cfg
        if not reference_only:
            self.enc_p = TextEncoder(cfg)
            self.dec = Generator(cfg.inter_channels, cfg.resblock, cfg.resblock_kernel_sizes,
                                 cfg.resblock_dilation_sizes, cfg.upsample_rates, cfg.upsample_initial_channel,
                                 cfg.upsample_kernel_sizes, gin_channels=cfg.gin_channels)
            if with_posterior:
                self.enc_q = PosteriorEncoder(cfg.spec_channels, cfg.inter_channels, cfg.hidden_channels, 5, 1, 16,
                                              gin_channels=cfg.gin_channels)
            self.flow = ResidualCouplingBlock(cfg.inter_channels, cfg.hidden_channels, 5, 1, 4,
                                              gin_channels=cfg.gin_channels)
        self.ref_enc = MelStyleEncoder(cfg.ref_enc_bins, style_vector_dim=cfg.gin_channels)
        if cfg.semantic_frame_rate == "25hz":
            self.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, 2, stride=2)
        else:
            self.ssl_proj = nn.Conv1d(cfg.ssl_dim, cfg.ssl_dim, 1, stride=1)
        self.quantizer = ResidualVectorQuantizer(dimension=cfg.ssl_dim, n_q=1, bins=cfg.codebook_size)
        if cfg.is_pro:
            self.sv_emb = nn.Linear(cfg.sv_dim, cfg.gin_channels)
            self.ge_to512 = nn.Linear(cfg.gin_channels, cfg.mrte_hidden)
            self.prelu = nn.PReLU(num_parameters=cfg.gin_channels)

    @property
    def frames_per_code(self) -> int:
        return 2 if self.cfg.semantic_frame_rate == "25hz" else 1

    # ------------------------------------------------------------------ pieces
    def speaker_embedding(self, refer: torch.Tensor, sv: torch.Tensor | None = None,
                          refer_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """refer: linear spectrogram [B, 1025, T] -> ge [B, gin, 1] (only the first ref_enc_bins are used).

        Pro models also need ``sv`` [B, sv_dim], the speaker-verification embedding of the same reference
        audio (upstream has no Pro path without it)."""
        if refer_lengths is None:
            refer_lengths = torch.full((refer.shape[0],), refer.shape[2], dtype=torch.long, device=refer.device)
        mask = sequence_mask(refer_lengths, refer.shape[2]).unsqueeze(1).to(refer.dtype)
        ge = self.ref_enc(refer[:, : self.cfg.ref_enc_bins] * mask, mask)  # [B, gin, 1]
        if not self.cfg.is_pro:
            return ge
        if sv is None:
            raise ValueError(f"a {self.cfg.version} model needs the speaker-verification embedding of each reference")
        return self.prelu(ge + self.sv_emb(sv).unsqueeze(-1))

    def text_condition(self, ge: torch.Tensor) -> torch.Tensor:
        """The speaker vector the text encoder's MRTE adds: ge [B, gin, 1] itself, or for Pro models
        its projection to the MRTE width [B, mrte_hidden, 1]."""
        if not self.cfg.is_pro:
            return ge
        return self.ge_to512(ge.transpose(1, 2)).transpose(1, 2)

    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """HuBERT features [B, 768, T50] -> semantic codes [B, 1, T50 // 2] (an odd last frame is dropped)."""
        return self.quantizer.encode(self.ssl_proj(ssl)).transpose(0, 1)

    def codes_to_features(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, Tc] -> codebook vectors repeated to the latent rate [B, 768, Tc * frames_per_code]."""
        q = self.quantizer.decode(codes.unsqueeze(0))  # [B, 768, Tc]
        if self.frames_per_code != 1:
            q = F.interpolate(q, size=q.shape[-1] * self.frames_per_code, mode="nearest")
        return q

    def prior(self, codes, phones, ge, code_lengths=None, phone_lengths=None, speed: float = 1.0):
        """Prior statistics of the latent: m_p, logs_p [B, inter, T] and mask [B, 1, T]."""
        b, tc = codes.shape
        if code_lengths is None:
            code_lengths = torch.full((b,), tc, dtype=torch.long, device=codes.device)
        if phone_lengths is None:
            phone_lengths = torch.full((b,), phones.shape[1], dtype=torch.long, device=phones.device)
        q = self.codes_to_features(codes)
        _, m_p, logs_p, y_mask = self.enc_p(q, code_lengths * self.frames_per_code, phones, phone_lengths,
                                            self.text_condition(ge), speed)
        return m_p, logs_p, y_mask

    def decode_latent(self, codes, phones, ge, noise: torch.Tensor | None = None, code_lengths=None,
                      phone_lengths=None, speed: float = 1.0):
        """The decoder: codes [B, Tc], phones [B, Tp], ge [B, gin, 1] -> (z [B, inter, T], mask [B, 1, T]).

        ``noise`` is the already-scaled standard normal noise of z_p (shape of m_p; None = 0, i.e.
        noise_scale 0).  Upstream's inference default is noise = 0.5 * randn.
        """
        m_p, logs_p, y_mask = self.prior(codes, phones, ge, code_lengths, phone_lengths, speed)
        z_p = m_p if noise is None else m_p + noise * torch.exp(logs_p)
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        return z * y_mask, y_mask

    def vocode(self, z: torch.Tensor, ge: torch.Tensor, frame_lengths: torch.Tensor | None = None,
               frame_from: torch.Tensor | None = None, trim=None) -> torch.Tensor:
        """The vocoder: z [B, inter, T] (rows valid over [frame_from, frame_lengths)) -> audio
        [B, (T - trim[0] - trim[1]) * 640] (gsv.models.sovits.vocoder.Generator)."""
        return self.dec(z, g=ge, lengths=frame_lengths, valid_from=frame_from, trim=trim)[:, 0]

    # ------------------------------------------------------------------ upstream-shaped entry point
    @torch.no_grad()
    def decode(self, codes: torch.Tensor, text: torch.Tensor, refer, noise_scale: float = 0.5, speed: float = 1.0,
               generator: torch.Generator | None = None, sv_emb=None) -> torch.Tensor:
        """Upstream ``SynthesizerTrn.decode``: codes [1, B, Tc] (n_q first), text [B, Tp], refer a
        spectrogram [B, 1025, T] or a list of them (ge averaged), and for Pro models ``sv_emb`` the
        speaker-verification embedding [B, sv_dim] of each reference (a list paired with ``refer``)
        -> audio [B, 1, samples]."""
        refs = refer if isinstance(refer, (list, tuple)) else [refer]
        svs = sv_emb if isinstance(sv_emb, (list, tuple)) else [sv_emb] * len(refs)
        if len(svs) != len(refs):
            raise ValueError("sv_emb must hold one embedding per reference")
        ge = torch.stack([self.speaker_embedding(r, s) for r, s in zip(refs, svs)], 0).mean(0)
        codes = codes[0]
        m_p, logs_p, y_mask = self.prior(codes, text, ge, speed=speed)
        noise = None
        if noise_scale:
            noise = torch.randn(m_p.shape, generator=generator, dtype=m_p.dtype, device=m_p.device) * noise_scale
        z_p = m_p if noise is None else m_p + noise * torch.exp(logs_p)
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        return self.dec(z * y_mask, g=ge)
