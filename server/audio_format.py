"""Output audio formats: PCM16/F32 little-endian, optional resampling (streaming-safe), WAV for unary."""
from __future__ import annotations

import struct

import numpy as np

from gsv import constants as C
from gsv.errors import OptionError

SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


class FormatError(OptionError):
    """An output format the server cannot produce (the request's fault: INVALID_ARGUMENT)."""


class OutputConverter:
    """Per-request converter from float32 model audio to the requested encoding and rate."""

    def __init__(self, encoding: str, sample_rate: int):
        if encoding not in ("pcm_s16le", "pcm_f32le", "wav"):
            raise FormatError(f"unsupported encoding {encoding}")
        rate = sample_rate or C.SAMPLE_RATE
        if rate not in SAMPLE_RATES:
            raise FormatError(f"sample_rate_hz {sample_rate} not supported (choose 0 or one of {list(SAMPLE_RATES)})")
        self.encoding, self.rate = encoding, rate
        self._resampler = None
        if rate != C.SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(C.SAMPLE_RATE, rate, 1, dtype="float32", quality="HQ")

    def samples(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        return x

    def encode(self, x: np.ndarray) -> bytes:
        return encode_pcm(x, self.encoding)

    def wav(self, pcm16: bytes) -> bytes:
        return wav_container(pcm16, self.rate)


def encode_pcm(x: np.ndarray, encoding: str) -> bytes:
    """Float samples as little-endian PCM: float32 for ``pcm_f32le``, else 16-bit."""
    x = np.clip(x, -1.0, 1.0)
    if encoding == "pcm_f32le":
        return x.astype("<f4").tobytes()
    return (x * 32767.0).round().astype("<i2").tobytes()


def wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte RIFF/WAVE header of mono PCM16; ``data_bytes=None``: length unknown (a stream),
    written as 0xFFFFFFFF as streaming servers do, which readers take as "until the end"."""
    riff, data = (0xFFFFFFFF, 0xFFFFFFFF) if data_bytes is None else (36 + data_bytes, data_bytes)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data))


def wav_container(pcm16: bytes, rate: int) -> bytes:
    """RIFF/WAVE header + PCM16 data."""
    return wav_header(rate, len(pcm16)) + pcm16
