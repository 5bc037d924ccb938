"""Voices: reference audio + transcript + language, prepared once and stored on disk.

A prepared :class:`Voice` holds everything synthesis needs from the reference: the prompt phone ids
and their BERT features, the prompt semantic tokens (HuBERT -> ssl_proj -> VQ), and the speaker
vector ge (mean over the main and auxiliary references).  A :class:`VoiceStore` keeps one folder
per voice (``voice.json`` + ``tensors.safetensors`` + the original reference files, so the voice
can be re-prepared for another bundle), written atomically (temporary folder + rename).  A voice
records the bundle it was prepared for and is refused for any other bundle.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsv import constants as C
from gsv.checkpoint.bundle import replace_dir
from gsv.errors import AudioError, VoiceError

log = logging.getLogger(__name__)

VOICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VOICE_FORMAT_VERSION = 1
SILENCE_RMS = 1e-4  # below this (about -80 dBFS) a reference is treated as silent
CLIP_LEVEL = 0.999
MAX_CLIPPED_FRACTION = 0.01


@dataclass
class Voice:
    voice_id: str
    language: str
    ref_text: str
    prompt_phones: list[int]
    prompt_bert: torch.Tensor  # [bert_dim, len(prompt_phones)]
    prompt_tokens: torch.Tensor  # [Ty] int64; empty when prepared without HuBERT (reference-free)
    ge: torch.Tensor  # [gin, 1]
    bundle_id: str
    owner: str = ""
    consent: str = ""
    created: float = field(default_factory=time.time)
    version: int = 1
    norm_text: str = ""
    n_aux_refs: int = 0
    sv_emb: torch.Tensor | None = None  # Pro bundles: [1 + n_aux_refs, sv_dim], one embedding per reference

    @property
    def reference_free(self) -> bool:
        return self.prompt_tokens.numel() == 0

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": VOICE_FORMAT_VERSION, "voice_id": self.voice_id, "language": self.language,
            "ref_text": self.ref_text, "norm_text": self.norm_text, "prompt_phones": list(self.prompt_phones),
            "bundle_id": self.bundle_id, "owner": self.owner, "consent": self.consent, "created": self.created,
            "version": self.version, "reference_free": self.reference_free, "n_aux_refs": self.n_aux_refs,
            "prompt_tokens": int(self.prompt_tokens.numel()),
            "speaker_verification": self.sv_emb is not None,
        }


def validate_voice_id(voice_id: str) -> str:
    if not isinstance(voice_id, str) or not VOICE_ID_RE.match(voice_id):
        raise VoiceError(f"invalid voice id {voice_id!r} (1-64 characters: letters, digits, '_', '.', '-')")
    return voice_id


# ---------------------------------------------------------------------------------------- audio checks
def check_reference(samples: np.ndarray, sr: int, name: str = "reference audio", *, check_length: bool = True) -> None:
    """Raise AudioError for audio upstream would refuse or that cannot give a usable voice."""
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name} contains NaN or infinite samples")
    seconds = samples.size / sr
    if check_length and not C.REF_MIN_SECONDS <= seconds <= C.REF_MAX_SECONDS:
        raise AudioError(f"{name} is {seconds:.2f} s long; it must be between {C.REF_MIN_SECONDS:g} and "
                         f"{C.REF_MAX_SECONDS:g} seconds")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{name} is silent (RMS {rms:.2g})")
    clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED_FRACTION:
        raise AudioError(f"{name} is clipped ({clipped:.1%} of samples at full scale)")


# ---------------------------------------------------------------------------------------- preparation
class VoicePreparer:
    """Turns references into a :class:`Voice` with the bundle's SoVITS, HuBERT and BERT."""

    def __init__(self, bundle, text, sovits=None, hubert=None, sv=None):
        self.bundle = bundle
        self.text = text  # gsv.pipeline.TextPreparer: prompt text -> (prepared, BERT features)
        self.sovits = sovits if sovits is not None else bundle.load_sovits()
        self.hubert = hubert
        self.sv = sv if sv is not None or not bundle.is_pro else bundle.load_sv()  # Pro: speaker verification

    @torch.no_grad()
    def prepare(self, voice_id: str, ref_audio: str | Path | bytes, ref_text: str, language: str,
                aux_refs: list[str | Path | bytes] = (), owner: str = "", consent: str = "") -> Voice:
        from gsv.audio import read_audio, resample_soxr, resample_torchaudio, spectrogram

        validate_voice_id(voice_id)
        wav, sr = read_audio(ref_audio)
        if not np.all(np.isfinite(wav)):
            raise AudioError("reference audio contains NaN or infinite samples")
        wav16 = resample_soxr(wav, sr, C.SSL_SAMPLE_RATE)
        check_reference(wav16, C.SSL_SAMPLE_RATE)
        prompt, prompt_bert = self.text.prompt(ref_text, language)  # also validates the transcript
        if self.hubert is not None:
            ssl = self.hubert(wav16)
            tokens = self.sovits.extract_latent(ssl.to(next(self.sovits.parameters()).dtype))[0, 0].cpu().long()
            prompt_ids, bert = list(prompt.ids), prompt_bert
        else:
            # upstream's reference-free mode: no prompt tokens and no prompt text; the reference
            # spectrogram still sets the timbre through ge
            log.warning("no HuBERT model: voice %s is prepared for reference-free synthesis", voice_id)
            tokens = torch.zeros(0, dtype=torch.long)
            prompt_ids, bert = [], torch.zeros(self.bundle.gpt_config.bert_dim, 0)
        ges, svs = [], []
        for i, src in enumerate([ref_audio, *aux_refs]):
            w, r = (wav, sr) if i == 0 else read_audio(src)
            if i:
                check_reference(w, r, f"auxiliary reference {i}", check_length=False)
            w32 = resample_torchaudio(torch.from_numpy(w).unsqueeze(0), r, C.SAMPLE_RATE)
            peak = float(w32.abs().max())
            if peak > 1:
                w32 = w32 / min(2.0, peak)
            sv = None
            if self.sv is not None:  # upstream: the same peak-limited 32 kHz audio, resampled to 16 kHz
                sv = self.sv(resample_torchaudio(w32, C.SAMPLE_RATE, C.SV_SAMPLE_RATE))  # [1, sv_dim]
                svs.append(sv[0])
            ges.append(self.sovits.speaker_embedding(spectrogram(w32), sv)[0])
        ge = torch.stack(ges).mean(0)
        return Voice(voice_id, language, ref_text, prompt_ids, bert, tokens, ge.cpu(), self.bundle.bundle_id,
                     owner=owner, consent=consent, norm_text=prompt.norm_text, n_aux_refs=len(aux_refs),
                     sv_emb=torch.stack(svs).cpu() if svs else None)


# ---------------------------------------------------------------------------------------- storage
class VoiceStore:
    """One folder per voice under ``root``; every write is atomic."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VoiceError(f"cannot use voices folder {self.root}: {e.strerror}") from None
        self._clean_temporaries()

    def _clean_temporaries(self) -> None:
        for p in self.root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)  # left by a process killed while writing

    def path(self, voice_id: str) -> Path:
        return self.root / validate_voice_id(voice_id)

    def exists(self, voice_id: str) -> bool:
        return (self.path(voice_id) / "voice.json").is_file()

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "voice.json").is_file() and VOICE_ID_RE.match(p.name))

    def save(self, voice: Voice, references: list[bytes] | None = None, overwrite: bool = False) -> Path:
        from safetensors.torch import save_file

        dest = self.path(voice.voice_id)
        if dest.exists() and not overwrite:
            raise VoiceError(f"voice {voice.voice_id!r} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{voice.voice_id}-", dir=self.root))
        try:
            tensors = {"prompt_bert": voice.prompt_bert.float().contiguous(),
                       "prompt_tokens": voice.prompt_tokens.long().contiguous(),
                       "ge": voice.ge.float().contiguous()}
            if voice.sv_emb is not None:
                tensors["sv_emb"] = voice.sv_emb.float().contiguous()
            save_file(tensors, str(tmp / "tensors.safetensors"))
            for i, data in enumerate(references or []):
                (tmp / f"reference_{i}.bin").write_bytes(data)
            meta = voice.metadata() | {"references": len(references or [])}
            (tmp / "voice.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            replace_dir(tmp, dest, old=self.root / f".tmp-old-{voice.voice_id}-{os.getpid()}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def metadata(self, voice_id: str) -> dict[str, Any]:
        p = self.path(voice_id) / "voice.json"
        if not p.is_file():
            raise VoiceError(f"unknown voice {voice_id!r}")
        try:
            return json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise VoiceError(f"voice {voice_id!r} is corrupt ({e})") from None

    def load(self, voice_id: str, bundle_id: str | None = None) -> Voice:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        meta = self.metadata(voice_id)
        if bundle_id is not None and meta.get("bundle_id") != bundle_id:
            raise VoiceError(f"voice {voice_id!r} was prepared for another bundle ({meta.get('bundle_id')}); "
                             "re-register it for this bundle")
        try:
            t = load_file(str(self.path(voice_id) / "tensors.safetensors"))
            return Voice(meta["voice_id"], meta["language"], meta["ref_text"], list(meta["prompt_phones"]),
                         t["prompt_bert"], t["prompt_tokens"], t["ge"], meta["bundle_id"], meta.get("owner", ""),
                         meta.get("consent", ""), meta.get("created", 0.0), meta.get("version", 1),
                         meta.get("norm_text", ""), meta.get("n_aux_refs", 0), t.get("sv_emb"))
        except (SafetensorError, OSError, KeyError, ValueError) as e:
            raise VoiceError(f"voice {voice_id!r} is corrupt ({e})") from None

    def references(self, voice_id: str) -> list[bytes]:
        """The original reference files given at registration (main first)."""
        p = self.path(voice_id)
        n = int(self.metadata(voice_id).get("references", 0))
        return [(p / f"reference_{i}.bin").read_bytes() for i in range(n)]

    def delete(self, voice_id: str) -> None:
        p = self.path(voice_id)
        if not (p / "voice.json").is_file():
            raise VoiceError(f"unknown voice {voice_id!r}")
        trash = self.root / f".tmp-del-{voice_id}-{os.getpid()}"
        os.replace(p, trash)  # atomic: the voice disappears at once
        shutil.rmtree(trash, ignore_errors=True)
