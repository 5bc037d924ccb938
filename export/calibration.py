"""Calibration inputs for the statically quantised (INT8) decoder and vocoder graphs, made from the bundle.

Static quantisation fixes every activation's int8 range from sample inputs, so the samples must look like
what serving feeds the graphs.  They come from the bundle's own models:

* semantic tokens sampled by the bundle's GPT (top-k 15, temperature 1, as upstream's defaults) from
  random phone sequences, cut into streaming-sized windows (what ``sovits_window`` decodes);
* the speaker vector ge of a reference: ``--calibration-audio`` files when given (a voice's own
  reference audio is the best choice), else a synthetic voiced signal (harmonics with a moving pitch and a
  syllable envelope); Pro bundles add the reference's speaker-verification embedding;
* the z_p noise of serving (0.5 x standard normal) and z for the vocoder from PyTorch's decoder.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from gsv import constants as C

log = logging.getLogger(__name__)

NOISE_SCALE = 0.5  # SynthesisOptions' default noise_scale (upstream's inference value)


def voiced_signal(seconds: float, sr: int, seed: int) -> np.ndarray:
    """A deterministic speech-like signal: 11 harmonics of a 110-170 Hz moving pitch, 3.5 Hz syllables."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * (0.5 + 0.4 * rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.5 * (1 + np.sin(2 * np.pi * 3.5 * t)) ** 2
    x = 0.25 * x * env / np.abs(x).max() + 0.003 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _speaker_vectors(models, audio_files: list[Path], seed: int) -> list[torch.Tensor]:
    """ge [1, gin, 1] of each reference (the given files, else two synthetic voices)."""
    from gsv.audio import read_audio, resample_torchaudio, spectrogram

    refs = []
    for f in audio_files:
        wav, sr = read_audio(f)
        refs.append(resample_torchaudio(torch.from_numpy(wav).unsqueeze(0), sr, C.SAMPLE_RATE))
    if not refs:
        refs = [torch.from_numpy(voiced_signal(4.0, C.SAMPLE_RATE, seed + i)).unsqueeze(0) for i in range(2)]
    out = []
    for w32 in refs:
        w32 = w32 / max(1.0, float(w32.abs().max()))
        sv = None
        if models.sv is not None:
            sv = models.sv(resample_torchaudio(w32, C.SAMPLE_RATE, C.SV_SAMPLE_RATE))
        out.append(models.sovits.speaker_embedding(spectrogram(w32), sv))
    return out


@torch.no_grad()
def _sampled_tokens(gpt, n_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """One token sequence sampled by the GPT (top-k 15) from random phones, without a prompt."""
    from gsv.sampling import SamplingOptions, make_generator, RowSampler

    cfg = gpt.cfg
    tx = int(torch.randint(12, 40, (1,), generator=gen))
    phones = torch.randint(0, cfg.phoneme_vocab_size, (1, tx), generator=gen)
    bert = torch.zeros(1, cfg.bert_dim, tx)
    empty = torch.zeros(1, 0, dtype=torch.long)
    logits, k, v, lens = gpt.prefill(phones, torch.tensor([tx]), bert, empty, torch.tensor([0]))
    cache_k = torch.zeros(*k.shape[:3], int(lens[0]) + n_tokens + 1, k.shape[4])
    cache_v = torch.zeros_like(cache_k)
    cache_k[:, :, :, : k.shape[3]], cache_v[:, :, :, : v.shape[3]] = k, v
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    sampler = RowSampler.start(SamplingOptions(top_k=15, max_tokens=n_tokens, seed=seed), make_generator(seed),
                               torch.zeros(0, dtype=torch.long), cfg.vocab_size, cfg.eos)
    tokens, n = [], int(lens[0])
    token = sampler.step(logits[0])
    while token is not None:
        tokens.append(token)
        if sampler.finished or len(tokens) >= n_tokens:
            break
        lg, nk, nv = gpt.decode_step(torch.tensor([token]), torch.tensor([len(tokens) - 1]), cache_k, cache_v,
                                     torch.tensor([n]))
        cache_k[:, 0, :, n], cache_v[:, 0, :, n] = nk[:, 0], nv[:, 0]
        n += 1
        token = sampler.step(lg[0])
    return torch.tensor(tokens or [0], dtype=torch.long)


@torch.no_grad()
def audio_calibration(models, n_windows: int = 8, seed: int = 0,
                      audio_files: list[Path] = ()) -> dict[str, list[dict[str, np.ndarray]]]:
    """Feeds for ``sovits_window`` and ``vocoder`` (graph input name -> array), ``n_windows`` each."""
    gen = torch.Generator().manual_seed(seed)
    ges = _speaker_vectors(models, list(audio_files), seed)
    s = models.sovits
    feeds: dict[str, list[dict[str, np.ndarray]]] = {"sovits_window": [], "vocoder": []}
    while len(feeds["vocoder"]) < n_windows:
        tokens = _sampled_tokens(models.gpt, 40, gen)
        w = int(torch.randint(16, 41, (1,), generator=gen))
        start = int(torch.randint(0, max(1, tokens.numel() - w + 1), (1,), generator=gen))
        codes = tokens[start : start + w].unsqueeze(0)  # [1, W]
        tp = int(torch.randint(16, 64, (1,), generator=gen))
        phones = torch.randint(0, s.cfg.n_symbols, (1, tp), generator=gen)
        ge = ges[len(feeds["vocoder"]) % len(ges)]
        noise = NOISE_SCALE * torch.randn(1, s.cfg.inter_channels, 2 * codes.shape[1], generator=gen)
        code_lens, phone_lens = torch.tensor([codes.shape[1]]), torch.tensor([tp])
        z, mask = s.decode_latent(codes, phones, ge, noise, code_lens, phone_lens)
        frame_lens = mask.sum(dim=(1, 2)).long()
        feeds["sovits_window"].append({"codes": codes.numpy(), "code_lens": code_lens.numpy(), "phones": phones.numpy(),
                                       "phone_lens": phone_lens.numpy(), "ge": ge.numpy(), "noise": noise.numpy(),
                                       "speed": np.array(1.0, dtype=np.float32)})
        # untrimmed: every layer calibrated over the whole window
        feeds["vocoder"].append({"z": z.numpy(), "ge": ge.numpy(), "frame_lens": frame_lens.numpy(),
                                 "frame_from": np.zeros(1, dtype=np.int64), "trim": np.zeros(2, dtype=np.int64)})
    log.info("calibration: %d decoder and vocoder windows from the bundle's GPT and %d reference(s)",
             n_windows, len(ges))
    return feeds
