"""Where a voice loses its speaker: ``gsv-bench quality --stages``.

The synthesized voice passes three stages, each of which can lose the speaker; scoring the audio
after each one on the speaker's own training utterances (whose real tokens and spectrograms exist)
tells which stage to train:

* ``reconstruction``: the utterance's spectrogram -> posterior encoder -> vocoder (the path the
  SoVITS reconstruction loss trains).  Low here = the vocoder cannot yet render the speaker at all.
* ``prior_from_real_tokens``: the utterance's own semantic tokens (HuBERT -> quantizer) and phones ->
  text encoder -> flow -> vocoder, noise 0.5 as at inference.  A drop from ``reconstruction`` = the
  prior (text encoder, flow) renders content worse than the posterior.
* the main run of the report (GPT tokens of held-out sentences) completes the chain; a drop from
  ``prior_from_real_tokens`` = the GPT.

``spectrum_db``: long-term power of the reconstruction over that of the real utterances per
frequency band (dB; 0 = same balance), the cheapest view of what a young vocoder gets wrong.
Torch only (the posterior encoder is not exported); a bundle without the posterior encoder or
without HuBERT skips the stage it cannot run and says why.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

STAGE_UTTERANCES = 6  # training utterances scored per stage
STAGE_NOISE_SCALE = 0.5  # the prior's noise, as at inference (SynthesisOptions' default)
# bands of spectrum_db (Hz); the speaker encoders see up to 8 kHz (16 kHz audio)
SPECTRUM_BANDS = ((0, 100), (100, 300), (300, 700), (700, 1500), (1500, 3000), (3000, 5000), (5000, 8000),
                  (8000, 12000), (12000, 16000))


def band_power_ratio_db(synth: np.ndarray, real: np.ndarray, sr: int, n_fft: int = 2048) -> dict[str, float]:
    """Long-term power of ``synth`` over ``real`` per band of :data:`SPECTRUM_BANDS` (dB), both mono at ``sr``
    (bands above sr/2 are left out)."""
    def power(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(-1)
        hop = n_fft // 4
        frames = max(1, 1 + (x.size - n_fft) // hop)
        x = np.pad(x, (0, max(0, n_fft + (frames - 1) * hop - x.size)))
        idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]  # [frames, n_fft]
        spec = np.fft.rfft(x[idx] * np.hanning(n_fft), axis=1)
        return np.mean(np.abs(spec) ** 2, axis=0)  # [n_fft // 2 + 1]

    ps, pr = power(synth), power(real)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    out = {}
    for lo, hi in SPECTRUM_BANDS:
        m = (freqs >= lo) & (freqs < hi)
        if lo < sr / 2 and m.any():
            out[f"{lo}-{hi}"] = float(10 * np.log10((ps[m].sum() + 1e-20) / (pr[m].sum() + 1e-20)))
    return out


def measure_stages(synth, utterances, reference, encoder, seed: int = 0) -> dict:
    """Scores of :mod:`this module's <benchmarks.quality_stages>` stages on up to :data:`STAGE_UTTERANCES`
    transcribed training utterances (``benchmarks.quality.Utterance``); ``synth`` a torch Synthesizer."""
    import torch

    from gsv.audio import resample_torchaudio, spectrogram
    from gsv.constants import SAMPLE_RATE

    utts = [u for u in utterances if u.text][:STAGE_UTTERANCES]
    out: dict = {"utterances": len(utts), "noise_scale": STAGE_NOISE_SCALE}
    if not utts:
        return out | {"skipped": "no training utterance has a transcript (give a .list file)"}
    bundle = synth.bundle
    has_posterior = bundle.has_posterior_encoder
    net = bundle.load_sovits(with_posterior=has_posterior)
    preparer = synth.voice_preparer
    has_tokens = preparer.hubert is not None
    gen = torch.Generator().manual_seed(seed)  # the prior's noise
    gen_q = torch.Generator().manual_seed(seed + 1)  # the posterior's sample
    recon, prior, spectra = [], [], []
    with torch.no_grad():
        for u in utts:
            wav32 = resample_torchaudio(torch.from_numpy(u.samples).float().unsqueeze(0), u.sr, SAMPLE_RATE)
            ge = preparer.audio_timbre(u.samples, u.sr)[0].unsqueeze(0)  # [1, gin, 1] (Pro: with the SV embedding)
            if has_posterior:
                spec = spectrogram(wav32)  # [1, 1025, T]
                _, m_q, logs_q, mask = net.enc_q(spec, torch.tensor([spec.shape[-1]]), g=ge)
                # z sampled as the posterior encoder does, from a seeded generator: a reproducible number
                z = (m_q + torch.randn(m_q.shape, generator=gen_q) * torch.exp(logs_q)) * mask
                audio = net.vocode(z, ge)[0].numpy()
                recon.append(reference.similarity(encoder, audio, SAMPLE_RATE))
                spectra.append(band_power_ratio_db(audio, wav32[0].numpy(), SAMPLE_RATE))
            if has_tokens:
                codes = preparer.audio_tokens(u.samples, u.sr).unsqueeze(0)  # [1, Tc]
                phones = torch.tensor([list(synth.text.prompt(u.text, u.lang or "en")[0].ids)])
                frames = codes.shape[1] * net.frames_per_code  # the prior's length (speed 1): z_p's shape
                noise = torch.randn(1, net.cfg.inter_channels, frames, generator=gen) * STAGE_NOISE_SCALE
                z, _ = net.decode_latent(codes, phones, ge, noise=noise)
                prior.append(reference.similarity(encoder, net.vocode(z, ge)[0].numpy(), SAMPLE_RATE))
    if has_posterior:
        out["reconstruction"] = _summary(recon)
        out["spectrum_db"] = {k: float(np.mean([s[k] for s in spectra])) for k in spectra[0]}
    else:
        out["reconstruction"] = {"skipped": "the bundle has no posterior encoder (enc_q)"}
    out["prior_from_real_tokens"] = (_summary(prior) if has_tokens
                                     else {"skipped": "the bundle has no HuBERT (no semantic tokens)"})
    return out


def _summary(values: list[float]) -> dict:
    return {"speaker_similarity": float(np.mean(values)), "per_utterance": [float(v) for v in values]}


def weakest_stage(stages: dict, synthesis: float | None, ceiling: float) -> str | None:
    """The stage with the largest drop of similarity from the one before it (real audio = the ceiling
    -> reconstruction -> prior from real tokens -> synthesis with GPT tokens)."""
    chain = [("real", ceiling)]
    for key in ("reconstruction", "prior_from_real_tokens"):
        v = stages.get(key, {}).get("speaker_similarity")
        if v is not None:
            chain.append((key, v))
    if synthesis is not None:
        chain.append(("synthesis", synthesis))
    drops = [(a[1] - b[1], b[0]) for a, b in zip(chain, chain[1:])]
    return max(drops)[1] if drops else None
