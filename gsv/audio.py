"""Audio I/O and features: loading, resampling, linear spectrogram and log-mel (upstream conventions).

* Linear spectrogram (``spectrogram``): reflect-pad (n_fft - hop) / 2 on both sides, STFT with a
  periodic Hann window, ``center=False``, magnitude ``sqrt(re^2 + im^2 + 1e-8)``; [B, 1025, F] with
  F = (N + 1408 - 2048) // 640 + 1.  No log: the reference encoder sees linear magnitudes.
* Log-mel (``spec_to_mel``): Slaney mel filters (librosa's default formula, computed here) applied
  to the linear spectrogram, then ``log(clamp(x, 1e-5))``; used by the SoVITS training loss.
"""
from __future__ import annotations

import io
import logging
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gsv import constants as C
from gsv.errors import AudioError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ spectrograms
@lru_cache(maxsize=8)
def _hann(win_length: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.hann_window(win_length, dtype=dtype, device=device)


def spectrogram(wav: torch.Tensor, n_fft: int = C.N_FFT, hop: int = C.HOP_LENGTH, win: int = C.WIN_LENGTH) -> torch.Tensor:
    """wav [B, N] in [-1, 1] -> linear magnitude spectrogram [B, n_fft // 2 + 1, F]."""
    pad = (n_fft - hop) // 2
    y = F.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = _hann(win, wav.dtype, str(wav.device))
    if torch.is_inference(window) and not torch.is_inference_mode_enabled():
        window = window.clone()  # cached under inference_mode; autograd (training) may not save it
    spec = torch.stft(y, n_fft, hop_length=hop, win_length=win, window=window,
                      center=False, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + C.SPEC_EPS)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


@lru_cache(maxsize=4)
def mel_filterbank(sr: int = C.SAMPLE_RATE, n_fft: int = C.N_FFT, n_mels: int = C.N_MELS,
                   fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft // 2 + 1] (float32)."""
    fmax = sr / 2.0 if fmax is None else fmax
    fftfreqs = np.linspace(0, sr / 2.0, 1 + n_fft // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


def spec_to_mel(spec: torch.Tensor, sr: int = C.SAMPLE_RATE, n_mels: int = C.N_MELS) -> torch.Tensor:
    """Linear spectrogram [B, 1025, F] -> log-mel [B, n_mels, F]."""
    n_fft = (spec.shape[1] - 1) * 2
    basis = torch.from_numpy(mel_filterbank(sr, n_fft, n_mels)).to(spec.device, spec.dtype)
    return torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))


def mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """wav [B, N] -> log-mel [B, 128, F] (upstream mel_spectrogram_torch)."""
    return spec_to_mel(spectrogram(wav))


def log_mel_distance(ref: torch.Tensor, got: torch.Tensor, floor_db: float = -60.0) -> float:
    """Mean |log mel(ref) - log mel(got)| of two equally long waveforms [B, N] at 32 kHz, each mel magnitude
    floored at ``floor_db`` below ref's loudest (a difference under that floor is inaudible next to the
    rest, and near-silence would otherwise dominate the log).  Natural log: 0.1 = 0.87 dB on average."""
    basis = torch.from_numpy(mel_filterbank()).to(ref.dtype)
    m_ref, m_got = basis @ spectrogram(ref), basis @ spectrogram(got.to(ref.dtype))  # [B, 128, F]
    floor = float(m_ref.max()) * 10 ** (floor_db / 20) + 1e-12
    return float((m_ref.clamp(min=floor).log() - m_got.clamp(min=floor).log()).abs().mean())


# ------------------------------------------------------------------------------------ I/O
def read_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Read an audio file (path or bytes) -> (mono float32 samples, sample rate).  AudioError when unreadable."""
    import soundfile as sf

    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        p = Path(source)
        if not p.exists():
            raise AudioError(f"{name}: no such file")
        if p.is_dir():
            raise AudioError(f"{name}: is a directory")
    elif len(source) == 0:
        raise AudioError("reference audio is empty (0 bytes)")
    try:
        data, sr = sf.read(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source),
                           dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError for unreadable input
        raise AudioError(f"{name}: unreadable or unsupported audio format ({e})") from None
    if data.size == 0:
        raise AudioError(f"{name}: contains no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(sr)


def resample_soxr(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality soxr resampling (what upstream's librosa.load(sr=...) uses: res_type 'soxr_hq')."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(x.astype(np.float32), sr_in, sr_out, quality="HQ").astype(np.float32)


def resample_torchaudio(x: torch.Tensor, sr_in: int, sr_out: int) -> torch.Tensor:
    """Windowed-sinc resampling as torchaudio.transforms.Resample (upstream's reference-spectrogram path)."""
    if sr_in == sr_out:
        return x
    import torchaudio.functional as AF

    return AF.resample(x, sr_in, sr_out)


def write_wav(path: str | Path, samples: np.ndarray, sr: int = C.SAMPLE_RATE) -> None:
    """Write mono PCM16 WAV (float input is clipped to [-1, 1] first)."""
    import soundfile as sf

    pcm = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    sf.write(str(path), pcm, sr, subtype="PCM_16")


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float [-1, 1] -> little-endian int16 bytes (clipped, scaled by 32767)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).round().astype("<i2").tobytes()
