"""Voice quality you can measure: speaker similarity with a *pretrained* speaker encoder, and cheap
signal checks of synthesized audio.

Speaker similarity is the cosine between the embedding of an utterance and the **centroid** (the
normalised mean embedding) of the training speaker's real utterances.  A bare number is hard to
read, so :class:`SpeakerReference` carries two reference points measured with the same encoder:

* the **ceiling**: held-out real utterances of the speaker against the centroid (what a perfect
  clone scores; with a few seconds per utterance this is about 0.9, not 1);
* the **floor**: noise signals against the centroid (what audio without any speaker scores; the
  GE2E model's embeddings are non-negative, so unrelated audio is about 0.5, not 0).

Encoders (only ones with trained weights; a randomly initialised network is never used, and when
no pretrained encoder is installed :class:`SpeakerEncoderUnavailable` says so instead of a number):

* :class:`ResemblyzerEncoder` (the default): Resemblyzer's GE2E d-vector LSTM, whose weights ship
  inside its PyPI package (``pretrained.pt``), 16 kHz input, 40 mel bands, volume normalisation and
  VAD trimming of long pauses as the package does;
* :class:`EcapaEncoder`: speechbrain's ECAPA-TDNN from a local ``spkrec-ecapa-voxceleb`` folder
  (``embedding_model.ckpt``; an optional ``ecapa.json`` overrides the architecture), 16 kHz.

The trainer (validation), ``gsv-bench quality`` and the demo all measure with this module.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from gsv.errors import GsvError

log = logging.getLogger(__name__)

ENCODER_SAMPLE_RATE = 16000  # both encoders' input rate
MIN_EMBED_SECONDS = 0.3  # shorter audio gives no embedding (NaN similarity)
NOISE_SECONDS = 3.0
NOISE_KINDS = ("white", "pink", "brown")
NOISE_DBFS = -20.0
MAX_REFERENCE_UTTERANCES = 64  # centroid/ceiling from at most this many utterances (spread evenly)
# signal checks
CLIP_LEVEL = 0.999
SILENCE_FRAME_SECONDS = 0.02
SILENCE_BELOW_PEAK_DB = 40.0  # a 20 ms frame this far below the loudest frames counts as silence
SILENCE_FLOOR_DBFS = -60.0
RESEMBLYZER_INSTALL = "pip install librosa webrtcvad-wheels && pip install --no-deps resemblyzer==0.1.4"
ECAPA_DEFAULT = {"input_size": 80, "channels": [1024, 1024, 1024, 1024, 3072], "kernel_sizes": [5, 3, 3, 3, 1],
                 "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "lin_neurons": 192}


class SpeakerEncoderUnavailable(GsvError):
    """No pretrained speaker encoder can be loaded (so no similarity can be reported)."""


class SpeakerEncoder(Protocol):
    name: str

    def embed(self, samples: np.ndarray, sr: int) -> np.ndarray | None:
        """Unit-norm embedding of mono float audio at ``sr``; None when the audio is too short."""


def _to_encoder_rate(samples: np.ndarray, sr: int) -> np.ndarray:
    from gsv.audio import resample_soxr

    x = np.asarray(samples, np.float32).reshape(-1)
    return x if sr == ENCODER_SAMPLE_RATE else resample_soxr(x, sr, ENCODER_SAMPLE_RATE)


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return None if not np.isfinite(n) or n == 0.0 else (v / n).astype(np.float32)


class ResemblyzerEncoder:
    """Resemblyzer's pretrained GE2E speaker encoder (256-d, non-negative, unit norm)."""

    name = "resemblyzer-ge2e"

    def __init__(self, device: str = "cpu"):
        try:
            with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy namespace
                warnings.simplefilter("ignore", DeprecationWarning)
                from resemblyzer import VoiceEncoder
                from resemblyzer.audio import normalize_volume, trim_long_silences
        except ImportError as e:
            raise SpeakerEncoderUnavailable(
                f"the pretrained speaker encoder (Resemblyzer) is not installed ({e}); install it with "
                f"'{RESEMBLYZER_INSTALL}' (make setup does), or give a local speechbrain spkrec-ecapa-voxceleb "
                "folder") from None
        self._model = VoiceEncoder(device, verbose=False)
        self._normalize_volume, self._trim = normalize_volume, trim_long_silences

    def embed(self, samples: np.ndarray, sr: int) -> np.ndarray | None:
        x = _to_encoder_rate(samples, sr)
        if x.size < MIN_EMBED_SECONDS * ENCODER_SAMPLE_RATE or not np.any(x):
            return None
        x = self._normalize_volume(x.astype(np.float64), -30, increase_only=True).astype(np.float32)
        x = np.clip(x, -1.0, 1.0)  # the VAD converts to int16
        trimmed = self._trim(x)  # shortens pauses longer than ~0.2 s, as Resemblyzer's preprocessing
        if trimmed.size >= MIN_EMBED_SECONDS * ENCODER_SAMPLE_RATE:
            x = trimmed  # (audio the VAD finds no voice in at all, e.g. noise, is embedded untrimmed)
        return _unit(self._model.embed_utterance(x))


class EcapaEncoder:
    """speechbrain ECAPA-TDNN with pretrained weights from a local ``spkrec-ecapa-voxceleb`` folder."""

    def __init__(self, model_dir: str | Path):
        import torch

        try:
            from speechbrain.lobes.features import Fbank
            from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
        except ImportError as e:
            raise SpeakerEncoderUnavailable(f"speechbrain is not installed ({e}); pip install speechbrain") from None
        d = Path(model_dir)
        ckpt = d / "embedding_model.ckpt"
        if not ckpt.is_file():
            raise SpeakerEncoderUnavailable(f"speaker model folder {d} has no embedding_model.ckpt "
                                            "(speechbrain spkrec-ecapa-voxceleb layout)")
        arch = dict(ECAPA_DEFAULT)
        if (d / "ecapa.json").is_file():
            arch.update(json.loads((d / "ecapa.json").read_text("utf-8")))
        self._fbank = Fbank(n_mels=arch["input_size"])
        self._model = ECAPA_TDNN(**arch)
        try:
            self._model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        except (RuntimeError, OSError, ValueError) as e:
            raise SpeakerEncoderUnavailable(f"cannot load the ECAPA model from {ckpt}: {str(e)[:200]}") from None
        self._model.eval()
        self.name = f"ecapa:{d.name}"

    def embed(self, samples: np.ndarray, sr: int) -> np.ndarray | None:
        import torch

        x = _to_encoder_rate(samples, sr)
        if x.size < MIN_EMBED_SECONDS * ENCODER_SAMPLE_RATE:
            return None
        with torch.no_grad():
            feats = self._fbank(torch.from_numpy(x).unsqueeze(0))  # [1, frames, n_mels]
            feats = feats - feats.mean(dim=1, keepdim=True)  # sentence mean normalisation, as speechbrain's recipe
            return _unit(self._model(feats)[0, 0].numpy())


def open_speaker_encoder(ecapa_dir: str | Path | None = None, device: str = "cpu") -> SpeakerEncoder:
    """The ECAPA of a local folder when given, else Resemblyzer's GE2E; raises SpeakerEncoderUnavailable."""
    return EcapaEncoder(ecapa_dir) if ecapa_dir else ResemblyzerEncoder(device)


# ---------------------------------------------------------------------------------- similarity
def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return float("nan")
    return float(np.dot(a, b) / max(1e-12, float(np.linalg.norm(a) * np.linalg.norm(b))))


def centroid(embeddings: Sequence[np.ndarray | None]) -> np.ndarray | None:
    vs = [e for e in embeddings if e is not None]
    return _unit(np.mean(vs, axis=0)) if vs else None


def noise_signal(kind: str, seconds: float = NOISE_SECONDS, sr: int = ENCODER_SAMPLE_RATE, seed: int = 0,
                 dbfs: float = NOISE_DBFS) -> np.ndarray:
    """Seeded white / pink (1/f power) / brown (1/f^2 power) noise at ``dbfs`` RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(white)
        f = np.maximum(np.fft.rfftfreq(n, 1.0 / sr), 1.0)
        spec /= np.sqrt(f) if kind == "pink" else f  # amplitude ~ f^-1/2 (pink) or f^-1 (brown)
        x = np.fft.irfft(spec, n)
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    x = x - x.mean()
    x *= 10 ** (dbfs / 20) / max(1e-12, float(np.sqrt(np.mean(x * x))))
    return x.astype(np.float32)


@dataclass
class SpeakerReference:
    """The training speaker as the encoder sees it: centroid + ceiling + floor (computed once)."""

    encoder: str
    centroid: np.ndarray
    utterances: int  # in the centroid
    ceiling: float  # mean similarity of held-out real utterances to the centroid
    ceiling_utterances: int
    ceiling_method: str  # "held-out" | "leave-one-out"
    floor: float  # mean similarity of noise signals to the centroid
    floor_by_kind: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, encoder: SpeakerEncoder, train: Sequence[tuple[np.ndarray, int]],
              heldout: Sequence[tuple[np.ndarray, int]] = (), seed: int = 0) -> "SpeakerReference":
        """``train``/``heldout``: (samples, sr) of real utterances.  Without held-out utterances the
        ceiling is leave-one-out: each training utterance against the centroid of the others."""
        train_e = [encoder.embed(x, sr) for x, sr in _spread(train, MAX_REFERENCE_UTTERANCES)]
        train_e = [e for e in train_e if e is not None]
        c = centroid(train_e)
        if c is None:
            raise GsvError("no usable training utterance to build the speaker centroid from (all too short?)")
        held_e = [e for e in (encoder.embed(x, sr) for x, sr in _spread(heldout, MAX_REFERENCE_UTTERANCES))
                  if e is not None]
        if held_e:
            ceiling_sims, method = [cosine(e, c) for e in held_e], "held-out"
        elif len(train_e) >= 2:
            total = np.sum(train_e, axis=0)
            ceiling_sims = [cosine(e, _unit(total - e)) for e in train_e]
            method = "leave-one-out"
        else:
            ceiling_sims, method = [], "none"
        floors = {k: cosine(encoder.embed(noise_signal(k, seed=seed + i), ENCODER_SAMPLE_RATE), c)
                  for i, k in enumerate(NOISE_KINDS)}
        return cls(encoder.name, c, len(train_e), float(np.mean(ceiling_sims)) if ceiling_sims else float("nan"),
                   len(ceiling_sims), method, float(np.mean(list(floors.values()))), floors)

    def similarity(self, encoder: SpeakerEncoder, samples: np.ndarray, sr: int) -> float:
        return cosine(encoder.embed(samples, sr), self.centroid)

    def relative(self, similarity: float) -> float:
        """0 at the floor, 1 at the ceiling (NaN when either is unknown or they coincide)."""
        span = self.ceiling - self.floor
        return float((similarity - self.floor) / span) if np.isfinite(span) and span > 1e-6 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("centroid")
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()} | {
            "floor_by_kind": {k: round(v, 4) for k, v in self.floor_by_kind.items()}}


def _spread(items: Sequence, n: int) -> list:
    """At most ``n`` items spread evenly over the sequence (deterministic)."""
    items = list(items)
    if len(items) <= n:
        return items
    return [items[int(i * len(items) / n)] for i in range(n)]


# ---------------------------------------------------------------------------------- signal checks
def signal_checks(samples: np.ndarray, sr: int) -> dict[str, float]:
    """Cheap checks of synthesized audio: length, peak, clipping share, silence share, RMS level."""
    x = np.asarray(samples, np.float64).reshape(-1)
    n = x.size
    out = {"seconds": n / sr if sr else 0.0, "peak": float(np.abs(x).max()) if n else 0.0,
           "clipped_share": float(np.mean(np.abs(x) >= CLIP_LEVEL)) if n else 0.0,
           "rms_dbfs": float(20 * np.log10(max(1e-10, float(np.sqrt(np.mean(x * x)))))) if n else -200.0}
    hop = max(1, int(sr * SILENCE_FRAME_SECONDS))
    frames = n // hop
    if frames:
        levels = 20 * np.log10(np.maximum(1e-10, np.sqrt(np.mean(x[: frames * hop].reshape(frames, hop) ** 2, 1))))
        loud = float(np.percentile(levels, 95))
        out["silence_share"] = float(np.mean((levels < loud - SILENCE_BELOW_PEAK_DB) | (levels < SILENCE_FLOOR_DBFS)))
    else:
        out["silence_share"] = 1.0
    return out
