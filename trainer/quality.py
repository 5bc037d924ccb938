"""Recording checks: the things that make a one-minute fine-tune fail, per file and in total.

Measured on the original audio (mono mix, original rate) before any processing:

* clipping: share of samples at full scale (|x| >= 0.999) and in runs of 3+ such samples;
* DC offset: the mean sample value;
* noise floor and SNR: frame RMS (20 ms) levels; the floor is the 10th percentile, the speech
  level the 95th percentile, SNR their difference in dB (a rough estimate without a VAD);
* silence: share of frames more than 35 dB below the speech level or below -60 dBFS;
* original sample rate (reported for every file; below 32 kHz the output's top band is learnt from
  nothing, below 16 kHz, a warning, even HuBERT's input is band-limited).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

CLIP_LEVEL = 0.999
FRAME_SECONDS = 0.02
SILENCE_BELOW_SPEECH_DB = 35.0
SILENCE_FLOOR_DBFS = -60.0
# warning thresholds
MAX_CLIPPED = 0.001
MIN_SNR_DB = 20.0
MAX_SILENCE = 0.5
MAX_DC = 0.01
MIN_RATE = 16000  # HuBERT's input rate: below it the content features are band-limited
GOOD_MINUTES = 1.0


def _db(x: np.ndarray | float) -> np.ndarray | float:
    return 20.0 * np.log10(np.maximum(x, 1e-10))


@dataclass
class FileQuality:
    name: str
    sample_rate: int
    seconds: float
    peak: float
    clipped: float  # share of samples at full scale
    dc_offset: float
    rms_dbfs: float
    noise_floor_dbfs: float
    speech_dbfs: float
    snr_db: float
    silence: float  # share of silent frames
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def analyse(samples: np.ndarray, sr: int, name: str = "") -> FileQuality:
    """Measure one recording (mono float samples in [-1, 1] at ``sr``)."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.size
    peak = float(np.abs(x).max()) if n else 0.0
    clipped = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if n else 0.0
    dc = float(x.mean()) if n else 0.0
    rms = float(np.sqrt(np.mean(np.square(x)))) if n else 0.0
    hop = max(1, int(sr * FRAME_SECONDS))
    frames = n // hop
    if frames >= 1:
        fr = (x[: frames * hop] - dc).reshape(frames, hop)
        levels = _db(np.sqrt(np.mean(fr * fr, axis=1)))
        floor = float(np.percentile(levels, 10))
        speech = float(np.percentile(levels, 95))
        silent = (levels < speech - SILENCE_BELOW_SPEECH_DB) | (levels < SILENCE_FLOOR_DBFS)
        silence = float(np.mean(silent))
    else:
        floor = speech = float(_db(rms))
        silence = 1.0
    q = FileQuality(name, int(sr), n / sr if sr else 0.0, peak, clipped, dc, float(_db(rms)), floor, speech,
                    speech - floor, silence)
    if clipped > MAX_CLIPPED:
        q.warnings.append(f"clipped ({clipped:.2%} of samples at full scale)")
    if q.snr_db < MIN_SNR_DB:
        q.warnings.append(f"noisy (SNR about {q.snr_db:.0f} dB)")
    if silence > MAX_SILENCE:
        q.warnings.append(f"mostly silence ({silence:.0%})")
    if abs(dc) > MAX_DC:
        q.warnings.append(f"DC offset {dc:+.3f}")
    if sr < MIN_RATE:
        q.warnings.append(f"recorded at {sr} Hz (below {MIN_RATE} Hz: too little bandwidth)")
    return q


@dataclass
class QualityReport:
    files: list[FileQuality] = field(default_factory=list)
    usable_seconds: float = 0.0  # of the items that were prepared

    def summary(self) -> dict:
        if not self.files:
            return {"files": 0, "usable_minutes": 0.0, "warnings": ["no usable recordings"]}
        w = [f for f in self.files if f.warnings]
        out = {
            "files": len(self.files),
            "usable_minutes": round(self.usable_seconds / 60.0, 3),
            "files_with_warnings": len(w),
            "median_snr_db": round(float(np.median([f.snr_db for f in self.files])), 2),
            "mean_silence": round(float(np.mean([f.silence for f in self.files])), 4),
            "clipped_files": sum(1 for f in self.files if f.clipped > MAX_CLIPPED),
            "sample_rates": sorted({f.sample_rate for f in self.files}),
            "warnings": [],
        }
        if self.usable_seconds < GOOD_MINUTES * 60:
            out["warnings"].append(f"only {self.usable_seconds / 60:.2f} usable minutes (about {GOOD_MINUTES:g} "
                                   "minute or more of clean speech is recommended)")
        if len(w) > len(self.files) / 2:
            out["warnings"].append(f"{len(w)} of {len(self.files)} files have problems (see the per-file report)")
        return out

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "files": [f.to_dict() for f in self.files]}

    def format(self, max_files: int = 50) -> str:
        lines = [f"{'file':32s} {'rate':>6s} {'sec':>6s} {'clip%':>6s} {'SNRdB':>6s} {'sil%':>5s} {'DC':>7s}  warnings"]
        for f in self.files[:max_files]:
            lines.append(f"{f.name[:32]:32s} {f.sample_rate:6d} {f.seconds:6.2f} {100 * f.clipped:6.2f} "
                         f"{f.snr_db:6.1f} {100 * f.silence:5.0f} {f.dc_offset:+7.3f}  {'; '.join(f.warnings)}")
        if len(self.files) > max_files:
            lines.append(f"... and {len(self.files) - max_files} more (see quality.json)")
        s = self.summary()
        lines.append(f"total: {s['files']} files, {s['usable_minutes']:.2f} usable minutes"
                     + (f", median SNR {s['median_snr_db']:.1f} dB" if "median_snr_db" in s else ""))
        lines.extend(f"warning: {x}" for x in s["warnings"])
        return "\n".join(lines)
