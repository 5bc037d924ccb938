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
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsv import constants as C
from gsv.checkpoint.bundle import replace_dir
from gsv.errors import AudioError, VoiceError

log = logging.getLogger(__name__)

VOICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # always used with fullmatch
VOICE_FORMAT_VERSION = 1
SILENCE_RMS = 1e-4  # below this (about -80 dBFS) a reference is treated as silent
CLIP_LEVEL = 0.999
MAX_CLIPPED_FRACTION = 0.01
AUX_MIN_SECONDS = 0.5  # shortest auxiliary reference (its spectrogram must span the reference encoder's frames)


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
    model_version: str = ""  # of the bundle it was prepared for (v1, v2, v2Pro, v2ProPlus; "" = unknown, old voice)
    symbol_version: str = ""  # phone table of the prompt ("" = an old voice: v2)
    prompt_space: str = ""  # Bundle.prompt_space() of the models whose prompt tokens it holds ("" = unknown)

    @property
    def reference_free(self) -> bool:
        return self.prompt_tokens.numel() == 0

    @property
    def family(self) -> str:
        """Voices carry over between models of one family: the same phone table (v1, or v2 for v2, v2Pro
        and v2ProPlus, which also share upstream's semantic tokens)."""
        return self.symbol_version or "v2"

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": VOICE_FORMAT_VERSION, "voice_id": self.voice_id, "language": self.language,
            "ref_text": self.ref_text, "norm_text": self.norm_text, "prompt_phones": list(self.prompt_phones),
            "bundle_id": self.bundle_id, "owner": self.owner, "consent": self.consent, "created": self.created,
            "version": self.version, "reference_free": self.reference_free, "n_aux_refs": self.n_aux_refs,
            "prompt_tokens": int(self.prompt_tokens.numel()),
            "speaker_verification": self.sv_emb is not None, "model_version": self.model_version,
            "symbol_version": self.family, "prompt_space": self.prompt_space,
        }


def validate_voice_id(voice_id: str) -> str:
    """The id itself, if it is 1-64 of [A-Za-z0-9_.-] starting with a letter or digit (whole string:
    "nl\\n" is not "nl")."""
    if not isinstance(voice_id, str) or not VOICE_ID_RE.fullmatch(voice_id):
        preview = repr(voice_id[:40]) + ("…" if len(voice_id) > 40 else "") if isinstance(voice_id, str) else repr(voice_id)
        raise VoiceError(f"invalid voice id {preview} (1-64 characters: letters, digits, '_', '.', '-')")
    return voice_id


def validate_consent(statement: str) -> str:
    """A consent statement must say something: invisible format characters (zero-width spaces,
    joiners, ...), control characters and white space alone are not consent."""
    visible = [ch for ch in statement if unicodedata.category(ch)[0] not in "CZ"]
    if not any(unicodedata.category(ch)[0] in "LN" for ch in visible):
        raise VoiceError("consent_statement is required: record the speaker's consent to clone this voice")
    return statement


# ---------------------------------------------------------------------------------------- audio checks
def check_reference(samples: np.ndarray, sr: int, name: str = "reference audio", *, check_length: bool = True) -> None:
    """Raise AudioError for audio upstream would refuse or that cannot give a usable voice.

    ``check_length=False`` (auxiliary references, used only for the speaker vector): any length from
    AUX_MIN_SECONDS up (the reference spectrogram needs a few frames; upstream crashes below that)."""
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name} contains NaN or infinite samples")
    seconds = samples.size / sr
    if check_length and not C.REF_MIN_SECONDS <= seconds <= C.REF_MAX_SECONDS:
        raise AudioError(f"{name} is {seconds:.2f} s long; it must be between {C.REF_MIN_SECONDS:g} and "
                         f"{C.REF_MAX_SECONDS:g} seconds")
    if not check_length and seconds < AUX_MIN_SECONDS:
        raise AudioError(f"{name} is {seconds:.2f} s long; it must be at least {AUX_MIN_SECONDS:g} seconds")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise AudioError(f"{name} is silent (RMS {rms:.2g})")
    clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
    if clipped > MAX_CLIPPED_FRACTION:
        raise AudioError(f"{name} is clipped ({clipped:.1%} of samples at full scale)")


# ---------------------------------------------------------------------------------------- preparation
class VoicePreparer:
    """Turns references into a :class:`Voice` with the bundle's voice layers (SoVITS reference encoder,
    SSL projection and quantizer: ``Bundle.load_sovits(reference_only=True)`` unless given), HuBERT
    and BERT (shared objects a server may pass in) and, for Pro bundles, the speaker-verification network.

    A voice has two parts: the **prompt** (transcript phones + BERT features, and the reference's
    semantic tokens: HuBERT -> SSL projection -> quantizer) and the **timbre** (ge from the reference
    encoder, for Pro models combined with the speaker-verification embedding of each reference).
    :meth:`timbre` and :meth:`prompt_tokens` compute each part alone, so a voice can be carried to
    another model by recomputing only what depends on it."""

    def __init__(self, bundle, text, sovits=None, hubert=None, sv=None):
        self.bundle = bundle
        self.text = text  # gsv.pipeline.TextPreparer: prompt text -> (prepared, BERT features)
        self.sovits = sovits if sovits is not None else bundle.load_sovits(reference_only=True)
        self.hubert = hubert
        self.sv = sv if sv is not None or not bundle.is_pro else bundle.load_sv()  # Pro: speaker verification

    @torch.no_grad()
    def prepare(self, voice_id: str, ref_audio: str | Path | bytes, ref_text: str, language: str,
                aux_refs: list[str | Path | bytes] = (), owner: str = "", consent: str = "") -> Voice:
        validate_voice_id(voice_id)
        wav, sr = _read_main_reference(ref_audio)
        prompt, prompt_bert = self.text.prompt(ref_text, language)  # also validates the transcript
        if self.hubert is not None:
            tokens, prompt_ids, bert = self._tokens(wav, sr), list(prompt.ids), prompt_bert
        else:
            # upstream's reference-free mode: no prompt tokens and no prompt text; the reference
            # spectrogram still sets the timbre through ge
            log.warning("no HuBERT model: voice %s is prepared for reference-free synthesis", voice_id)
            tokens = torch.zeros(0, dtype=torch.long)
            prompt_ids, bert = [], torch.zeros(self.bundle.gpt_config.bert_dim, 0)
        ge, sv = self._timbre([(wav, sr)] + [_read_aux_reference(a, i + 1) for i, a in enumerate(aux_refs)])
        return Voice(voice_id, language, ref_text, prompt_ids, bert, tokens, ge, self.bundle.bundle_id,
                     owner=owner, consent=consent, norm_text=prompt.norm_text, n_aux_refs=len(aux_refs), sv_emb=sv,
                     model_version=self.bundle.model_version, symbol_version=self.bundle.symbol_version,
                     prompt_space=self.bundle.prompt_space())

    @torch.no_grad()
    def timbre(self, references: list[str | Path | bytes]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(ge [gin, 1], speaker-verification embeddings [n, sv_dim] or None) of references (main first),
        as :meth:`prepare` computes them: ge is the mean over the references."""
        refs = [_read_main_reference(references[0])] + [_read_aux_reference(a, i + 1)
                                                        for i, a in enumerate(references[1:])]
        return self._timbre(refs)

    @torch.no_grad()
    def prompt_tokens(self, ref_audio: str | Path | bytes) -> torch.Tensor:
        """The prompt's semantic tokens [Ty] of a main reference with this bundle's quantizer (empty
        without HuBERT: reference-free)."""
        if self.hubert is None:
            return torch.zeros(0, dtype=torch.long)
        return self._tokens(*_read_main_reference(ref_audio))

    @torch.no_grad()
    def audio_timbre(self, samples: np.ndarray, sr: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`timbre` of one audio array of any length (the reference-length rule is for voices;
        this is for measuring, e.g. a training utterance)."""
        return self._timbre([(samples, sr)])

    @torch.no_grad()
    def audio_tokens(self, samples: np.ndarray, sr: int) -> torch.Tensor:
        """:meth:`prompt_tokens` of one audio array of any length."""
        if self.hubert is None:
            return torch.zeros(0, dtype=torch.long)
        return self._tokens(samples, sr)

    def _tokens(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        from gsv.audio import resample_soxr

        ssl = self.hubert(resample_soxr(wav, sr, C.SSL_SAMPLE_RATE))
        return self.sovits.extract_latent(ssl.to(next(self.sovits.parameters()).dtype))[0, 0].cpu().long()

    def _timbre(self, refs: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from gsv.audio import resample_torchaudio, spectrogram

        ges, svs = [], []
        for w, r in refs:
            w32 = resample_torchaudio(torch.from_numpy(w).unsqueeze(0), r, C.SAMPLE_RATE)
            peak = float(w32.abs().max())
            if peak > 1:
                w32 = w32 / min(2.0, peak)
            sv = None
            if self.sv is not None:  # upstream: the same peak-limited 32 kHz audio, resampled to 16 kHz
                sv = self.sv(resample_torchaudio(w32, C.SAMPLE_RATE, C.SV_SAMPLE_RATE))  # [1, sv_dim]
                svs.append(sv[0])
            ges.append(self.sovits.speaker_embedding(spectrogram(w32), sv)[0])
        return torch.stack(ges).mean(0).cpu(), (torch.stack(svs).cpu() if svs else None)


def _read_main_reference(ref_audio) -> tuple[np.ndarray, int]:
    """The main reference (read and checked: 3-10 s of usable audio at 16 kHz)."""
    from gsv.audio import read_audio, resample_soxr

    wav, sr = read_audio(ref_audio)
    if not np.all(np.isfinite(wav)):
        raise AudioError("reference audio contains NaN or infinite samples")
    check_reference(resample_soxr(wav, sr, C.SSL_SAMPLE_RATE), C.SSL_SAMPLE_RATE)
    return wav, sr


def _read_aux_reference(ref_audio, i: int) -> tuple[np.ndarray, int]:
    from gsv.audio import read_audio

    w, r = read_audio(ref_audio)
    check_reference(w, r, f"auxiliary reference {i}", check_length=False)
    return w, r


# ---------------------------------------------------------------------------------------- storage
class VoiceStore:
    """One folder per voice under ``root``; every write is atomic."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VoiceError(f"cannot use voices folder {self.root}: {e.strerror}") from None
        self._recover()

    def _recover(self) -> None:
        """Finish what a process killed while writing left behind (every temporary starts ``.tmp-``).

        A save stages a complete copy (``voice.json`` written last), then swaps it in with two renames
        (live -> ``.tmp-old-*``, staged -> live).  Killed between them, the voice has no live folder
        but an old copy and (normally) the staged one: the newest complete copy (version, creation
        time; the staged one on a tie) becomes the live folder again.  A stage that never began its
        swap was never committed and is dropped, like everything else left (old copies of finished
        swaps, half-written stages, folders of deletions).
        """
        copies: dict[str, list[tuple[tuple, Path]]] = {}
        swapping: set[str] = set()  # voices whose live folder was renamed away (an old copy exists)
        for p in self.root.glob(".tmp-*"):
            if p.name.startswith(".tmp-del-") or not p.is_dir():
                continue
            meta = _complete_copy(p)
            vid = meta.get("voice_id") if meta else None
            if not isinstance(vid, str) or not VOICE_ID_RE.fullmatch(vid) or (self.root / vid / "voice.json").is_file():
                continue
            old = p.name.startswith(".tmp-old-")
            if old:
                swapping.add(vid)
            rank = (int(meta.get("version", 0)), float(meta.get("created", 0.0)), not old)
            copies.setdefault(vid, []).append((rank, p))
        for vid in swapping:
            _, p = max(copies[vid], key=lambda c: c[0])
            live = self.root / vid
            if live.exists():
                shutil.rmtree(live)  # a folder without voice.json is not a voice
            os.replace(p, live)
            log.warning("voice %s restored from a write that was interrupted", vid)
        for p in self.root.glob(".tmp-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def path(self, voice_id: str) -> Path:
        return self.root / validate_voice_id(voice_id)

    def exists(self, voice_id: str) -> bool:
        return (self.path(voice_id) / "voice.json").is_file()

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if VOICE_ID_RE.fullmatch(p.name) and (p / "voice.json").is_file())

    def save(self, voice: Voice, references: list[bytes] | None = None, overwrite: bool = False,
             extra: dict[str, Any] | None = None) -> Path:
        """Write the voice atomically; ``extra`` adds keys to its voice.json (e.g. a display name)."""
        meta = (extra or {}) | voice.metadata()
        return self.write(voice.voice_id, meta, features_bytes(voice), references or [], overwrite=overwrite)

    def write(self, voice_id: str, meta: dict[str, Any], features: bytes, references: list[bytes],
              overwrite: bool = False) -> Path:
        """Write one voice folder atomically from its parts: ``voice.json`` (``meta`` plus the number
        of references), ``tensors.safetensors`` (``features``: safetensors bytes, or their encryption)
        and ``reference_<i>.bin``."""
        dest = self.path(voice_id)
        if dest.exists() and not overwrite:
            raise VoiceError(f"voice {voice_id!r} already exists")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{voice_id}-", dir=self.root))
        try:
            (tmp / "tensors.safetensors").write_bytes(features)
            for i, data in enumerate(references):
                (tmp / f"reference_{i}.bin").write_bytes(data)
            meta = dict(meta) | {"voice_id": voice_id, "references": len(references)}
            (tmp / "voice.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", "utf-8")  # last
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            replace_dir(tmp, dest, old=self.root / f".tmp-old-{voice_id}-{os.getpid()}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def read_features(self, voice_id: str) -> bytes:
        """The stored ``tensors.safetensors`` bytes (encrypted when the voice.json has a ``key_id``)."""
        try:
            return (self.path(voice_id) / "tensors.safetensors").read_bytes()
        except OSError as e:
            raise VoiceError(f"voice {voice_id!r} is corrupt ({e.strerror})") from None

    def metadata(self, voice_id: str) -> dict[str, Any]:
        p = self.path(voice_id) / "voice.json"
        if not p.is_file():
            raise VoiceError(f"unknown voice {voice_id!r}")
        try:
            return json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise VoiceError(f"voice {voice_id!r} is corrupt ({e})") from None

    def load(self, voice_id: str, bundle_id: str | None = None) -> Voice:
        meta = self.metadata(voice_id)
        if meta.get("key_id"):
            raise VoiceError(f"voice {voice_id!r} is encrypted (key {meta['key_id']!r}): read it through "
                             "gsv.voicestore with the key file")
        if bundle_id is not None and meta.get("bundle_id") != bundle_id:
            raise VoiceError(f"voice {voice_id!r} was prepared for another bundle ({meta.get('bundle_id')}); "
                             "re-register it for this bundle")
        return voice_from_parts(meta, self.read_features(voice_id))

    def references(self, voice_id: str) -> list[bytes]:
        """The original reference files given at registration (main first)."""
        p = self.path(voice_id)
        n = int(self.metadata(voice_id).get("references", 0))
        return [(p / f"reference_{i}.bin").read_bytes() for i in range(n)]

    def delete(self, voice_id: str) -> None:  # (a kill after the rename leaves .tmp-del-*: removed at start)
        p = self.path(voice_id)
        if not (p / "voice.json").is_file():
            raise VoiceError(f"unknown voice {voice_id!r}")
        trash = self.root / f".tmp-del-{voice_id}-{os.getpid()}"
        os.replace(p, trash)  # atomic: the voice disappears at once
        shutil.rmtree(trash, ignore_errors=True)


def features_bytes(voice: Voice) -> bytes:
    """A voice's tensors (prompt BERT features, prompt tokens, speaker vector(s)) as safetensors bytes."""
    from safetensors.torch import save

    tensors = {"prompt_bert": voice.prompt_bert.float().contiguous(),
               "prompt_tokens": voice.prompt_tokens.long().contiguous(),
               "ge": voice.ge.float().contiguous()}
    if voice.sv_emb is not None:
        tensors["sv_emb"] = voice.sv_emb.float().contiguous()
    return save(tensors)


def voice_from_parts(meta: dict[str, Any], features: bytes) -> Voice:
    """The :class:`Voice` of a stored ``voice.json``-shaped description and its safetensors bytes."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    vid = meta.get("voice_id", "?")
    try:
        t = load(features)
        return Voice(voice_id=meta["voice_id"], language=meta["language"], ref_text=meta["ref_text"],
                     prompt_phones=list(meta["prompt_phones"]), prompt_bert=t["prompt_bert"],
                     prompt_tokens=t["prompt_tokens"], ge=t["ge"], bundle_id=meta["bundle_id"],
                     owner=meta.get("owner", ""), consent=meta.get("consent", ""),
                     created=meta.get("created", 0.0), version=meta.get("version", 1),
                     norm_text=meta.get("norm_text", ""), n_aux_refs=meta.get("n_aux_refs", 0),
                     sv_emb=t.get("sv_emb"), model_version=meta.get("model_version", ""),
                     symbol_version=meta.get("symbol_version", ""), prompt_space=meta.get("prompt_space", ""))
    except (SafetensorError, KeyError, ValueError, TypeError) as e:
        raise VoiceError(f"voice {vid!r} is corrupt ({e})") from None


def _complete_copy(folder: Path) -> dict[str, Any] | None:
    """The metadata of a complete voice folder (voice.json, written last, parses; its files exist)."""
    try:
        meta = json.loads((folder / "voice.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not (folder / "tensors.safetensors").is_file():
        return None
    if not all((folder / f"reference_{i}.bin").is_file() for i in range(int(meta.get("references", 0)))):
        return None
    return meta
