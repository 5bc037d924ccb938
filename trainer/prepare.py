"""``gsv-train prepare``: an upstream ``.list`` file -> per-utterance training features in EXP.

For every line ``wav|speaker|lang|text`` (upstream's format and language spellings):

1. text: ``%`` -> ``-`` and ``￥`` -> ``,`` as upstream's 1-get-text.py, then ``clean_text`` ->
   phones, word2ph, norm_text; BERT features only for zh (others are zeros at training time);
2. audio: read, mixed to mono, resampled to 32 kHz (soxr), and mixed as upstream's
   2-get-hubert-wav32k.py does (``x / peak * 0.95 * 0.5 + 0.5 * x``); stored as int16;
3. HuBERT features of the same mix at upstream's 1145.14 scale, resampled to 16 kHz, no tail
   padding; semantic tokens through the base SoVITS ``ssl_proj`` + quantizer (3-get-semantic.py);
4. the linear spectrogram of the stored 32 kHz audio (what the SoVITS stage trains on).

Each item is one atomically written ``EXP/data/<name>.safetensors`` (tensors + JSON metadata), so a
rerun skips finished items.  ``EXP/dataset.json`` indexes the items, the skipped lines with their
reasons and the recording-quality report; upstream's ``2-name2text.txt`` and
``6-name2semantic.tsv`` are written too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsv import constants as C
from gsv.errors import AudioError, GsvError, UnknownLanguageError

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
DATA_DIR = "data"
FORMAT = "gsv-train-exp"
FORMAT_VERSION = 1
# upstream 1-get-text.py language spellings -> language code
LANGUAGES = {"zh": "zh", "jp": "ja", "ja": "ja", "en": "en", "ko": "ko", "yue": "yue"}
MIN_SECONDS = 0.6  # upstream's SoVITS dataset keeps 0.6 s < duration < 54 s
MAX_SECONDS = 54.0
MAX_PEAK = 2.2  # upstream drops files whose peak exceeds this (only possible in float formats)
MIX_PEAK = 0.95
MIX_ALPHA = 0.5


class PrepareError(GsvError):
    """The list file or the experiment folder cannot be used."""


@dataclass
class Entry:
    line: int
    wav: str
    speaker: str
    lang: str
    text: str


@dataclass
class Skipped:
    line: int
    wav: str
    reason: str

    def to_dict(self) -> dict:
        return {"line": self.line, "wav": self.wav, "reason": self.reason}


@dataclass
class Result:
    entry: Entry
    name: str
    item: dict[str, Any] | None = None  # index record when prepared
    reason: str = ""  # why skipped
    quality: dict[str, Any] | None = None
    reused: bool = False


@dataclass
class PrepareSummary:
    items: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    reused: int = 0
    quality: dict = field(default_factory=dict)
    quality_text: str = ""


# ---------------------------------------------------------------------------------------- list file
def parse_list(path: Path) -> tuple[list[Entry], list[Skipped]]:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise PrepareError(f"list file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"cannot read list file {path}: {e}") from None
    entries, skipped = [], []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.strip("\r\n")
        if not line.strip():
            continue
        parts = line.split("|", 3)
        if len(parts) != 4:
            skipped.append(Skipped(i, parts[0] if parts else "", "malformed line (expected wav|speaker|lang|text)"))
            continue
        wav, spk, lang, txt = parts
        entries.append(Entry(i, wav.strip(), spk.strip(), lang.strip(), txt.strip()))
    return entries, skipped


def normalise_language(lang: str) -> str | None:
    return LANGUAGES.get(lang.strip().lower())


def resolve_wav(wav: str, list_dir: Path, wav_dir: Path | None) -> Path:
    """Upstream: the path as written, or ``wav_dir/basename`` when a wav folder is given.  Relative
    paths are also tried next to the list file."""
    if wav_dir is not None:
        return wav_dir / os.path.basename(wav)
    p = Path(wav).expanduser()
    if not p.is_absolute() and not p.exists() and (list_dir / p).exists():
        return list_dir / p
    return p


# ---------------------------------------------------------------------------------------- one item
def mix_for_training(wav32: np.ndarray, scale: float) -> np.ndarray:
    """Upstream's loudness mix: half peak-normalised to 0.95, half as recorded, times ``scale``."""
    peak = float(np.abs(wav32).max())
    if peak == 0:
        return wav32 * 0.0
    return wav32 / peak * (MIX_PEAK * MIX_ALPHA * scale) + ((1 - MIX_ALPHA) * scale) * wav32


class ItemProcessor:
    """Computes one item's features; models are loaded once per process, BERT only when needed."""

    def __init__(self, base_dir: str, hubert_dir: str, bert_dir: str | None, out_dir: str, fingerprint: str,
                 device: str = "cpu", list_dir: str = ".", wav_dir: str | None = None):
        from gsv.checkpoint.bundle import Bundle
        from gsv.features import HubertExtractor

        self.bundle = Bundle.open(base_dir)
        self.version = self.bundle.symbol_version
        self.sovits = self.bundle.load_sovits(device)
        self.hubert = HubertExtractor(hubert_dir, device)
        if self.hubert.dim != self.bundle.sovits_config.ssl_dim:
            raise PrepareError(f"HuBERT {hubert_dir} gives {self.hubert.dim}-d features but the base SoVITS expects "
                               f"{self.bundle.sovits_config.ssl_dim}")
        # Pro bases: speaker-verification embedding per utterance (upstream's 2-get-sv.py step)
        self.sv = self.bundle.load_sv(device) if self.bundle.is_pro else None
        self.bert_dir = bert_dir
        self._bert = None
        self.out = Path(out_dir)
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.list_dir = Path(list_dir)
        self.wav_dir = Path(wav_dir) if wav_dir else None

    def bert(self):
        if self._bert is None and self.bert_dir:
            from gsv.features import BertExtractor

            self._bert = BertExtractor(self.bert_dir, self.device)
        return self._bert

    def item_fingerprint(self, e: Entry, lang: str) -> str:
        return hashlib.sha256(f"{self.fingerprint}|{lang}|{e.text}|{e.speaker}".encode()).hexdigest()[:24]

    def __call__(self, e: Entry) -> Result:
        from gsv.audio import read_audio, resample_soxr, resample_torchaudio, spectrogram
        from gsv.text.cleaner import clean_text
        from gsv.text.symbols import cleaned_text_to_sequence
        from trainer.quality import analyse

        name = os.path.basename(e.wav)
        r = Result(e, name)
        lang = normalise_language(e.lang)
        if lang is None:
            r.reason = f"unknown language {e.lang!r}"
            return r
        if not e.text.strip():
            r.reason = "empty text"
            return r
        target = self.out / DATA_DIR / f"{name}.safetensors"
        fp = self.item_fingerprint(e, lang)
        done = read_item_meta(target)
        if done is not None and done.get("fingerprint") == fp:
            r.item, r.quality, r.reused = done["item"], done.get("quality"), True
            return r
        path = resolve_wav(e.wav, self.list_dir, self.wav_dir)
        if not path.exists():
            r.reason = f"missing file {path}"
            return r
        try:
            samples, sr = read_audio(path)
        except AudioError as err:
            r.reason = f"unreadable audio ({err})"
            return r
        if not np.all(np.isfinite(samples)):
            r.reason = "unreadable audio (NaN or infinite samples)"
            return r
        quality = analyse(samples, sr, name)
        r.quality = quality.to_dict()
        seconds = samples.size / sr
        if seconds <= MIN_SECONDS:
            r.reason = f"too short ({seconds:.2f} s, needs more than {MIN_SECONDS} s)"
            return r
        if seconds >= MAX_SECONDS:
            r.reason = f"too long ({seconds:.1f} s, needs less than {MAX_SECONDS:g} s)"
            return r
        try:
            cleaned = clean_text(e.text.replace("%", "-").replace("￥", ","), lang, self.version)
            phone_ids = cleaned_text_to_sequence(cleaned.phones, self.version)
        except UnknownLanguageError as err:
            r.reason = f"unknown/unsupported language ({err})"
            return r
        except GsvError as err:
            r.reason = f"bad text ({err})"
            return r
        if not phone_ids:
            r.reason = "empty text (no phones after normalisation)"
            return r
        wav32 = resample_soxr(samples, sr, C.SAMPLE_RATE)
        if float(np.abs(wav32).max()) > MAX_PEAK:
            r.reason = f"peak above {MAX_PEAK} (corrupt float audio)"
            return r
        if float(np.abs(wav32).max()) == 0:
            r.reason = "silent audio"
            return r
        pcm = np.clip(mix_for_training(wav32, C.MAX_WAV_VALUE), -32768, 32767).astype(np.int16)
        hub_in = resample_soxr(mix_for_training(wav32, C.HUBERT_INPUT_SCALE).astype(np.float32), C.SAMPLE_RATE,
                               C.SSL_SAMPLE_RATE)
        with torch.inference_mode():
            ssl = self.hubert(hub_in, tail_padding=0)  # [1, dim, T50]
            if not torch.isfinite(ssl).all():
                r.reason = "HuBERT features are NaN"
                return r
            codes = self.sovits.extract_latent(ssl.to(self.device))[0, 0].cpu().long()  # [T25]
            wav_train = torch.from_numpy(pcm.astype(np.float32) / C.MAX_WAV_VALUE).unsqueeze(0)  # [1, N] at 32 kHz
            spec = spectrogram(wav_train)[0]
            sv = None
            if self.sv is not None:  # 2-get-sv.py: the stored 32 kHz training wav, resampled to 16 kHz
                sv = self.sv(resample_torchaudio(wav_train, C.SAMPLE_RATE, C.SV_SAMPLE_RATE))[0]  # [sv_dim]
        tensors = {
            "phones": torch.tensor(phone_ids, dtype=torch.long),
            "semantic": codes.contiguous(),
            "ssl": ssl[0].float().contiguous(),
            "wav": torch.from_numpy(pcm),
            "spec": spec.float().contiguous(),
        }
        if sv is not None:
            tensors["sv"] = sv.float().contiguous()
        if lang == "zh" and cleaned.word2ph is not None:
            bert = self.bert()
            if bert is not None:
                tensors["bert"] = bert(cleaned.norm_text, cleaned.word2ph).float().contiguous()
        item = {
            "name": name, "speaker": e.speaker, "lang": lang, "text": e.text, "norm_text": cleaned.norm_text,
            "phones": " ".join(cleaned.phones), "word2ph": cleaned.word2ph, "n_phones": len(phone_ids),
            "n_tokens": int(codes.numel()), "frames": int(spec.shape[-1]), "seconds": round(pcm.size / C.SAMPLE_RATE, 4),
            "has_bert": "bert" in tensors, "has_sv": "sv" in tensors, "file": f"{DATA_DIR}/{name}.safetensors",
        }
        write_item(target, tensors, {"fingerprint": fp, "item": item, "quality": r.quality})
        r.item = item
        return r


def write_item(target: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"gsv": json.dumps(meta, ensure_ascii=False)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def read_item_meta(path: Path) -> dict | None:
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {}).get("gsv", "null"))
    except Exception:  # a truncated or foreign file is simply recomputed
        return None


# ---------------------------------------------------------------------------------------- parallel driver
_WORKER: ItemProcessor | None = None


def _init_worker(kwargs: dict, threads: int) -> None:
    global _WORKER
    torch.set_num_threads(threads)
    _WORKER = ItemProcessor(**kwargs)


def _work(e: Entry) -> Result:
    assert _WORKER is not None
    try:
        return _WORKER(e)
    except Exception as err:  # one bad file must not stop the run; the reason is reported
        log.exception("failed on %s", e.wav)
        return Result(e, os.path.basename(e.wav), reason=f"failed ({type(err).__name__}: {err})")


def prepare(list_file: str | Path, out: str | Path, base: str | Path, hubert: str | Path | None = None,
            bert: str | Path | None = None, workers: int = 1, device: str = "cpu",
            wav_dir: str | Path | None = None, progress: bool = True) -> PrepareSummary:
    """Prepare every line of ``list_file`` into ``out``; returns what was done and skipped."""
    from tqdm import tqdm

    from gsv.checkpoint.bundle import Bundle
    from trainer.quality import FileQuality, QualityReport

    list_file, out = Path(list_file), Path(out)
    bundle = Bundle.open(base)
    hubert_dir = Path(hubert) if hubert else bundle.hubert_dir
    if hubert_dir is None:
        raise PrepareError(f"no HuBERT model: the base bundle {base} has none, give --hubert DIR")
    bert_dir = Path(bert) if bert else bundle.bert_dir
    entries, skipped = parse_list(list_file)
    if not entries and not skipped:
        raise PrepareError(f"list file {list_file} has no lines")
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    fingerprint = f"{bundle.bundle_id}|{Path(hubert_dir).resolve()}|{bert_dir and Path(bert_dir).resolve()}"
    kwargs = dict(base_dir=str(Path(base).resolve()), hubert_dir=str(hubert_dir), bert_dir=str(bert_dir) if bert_dir else None,
                  out_dir=str(out), fingerprint=fingerprint, device=device, list_dir=str(list_file.parent.resolve()),
                  wav_dir=str(wav_dir) if wav_dir else None)
    names_seen: dict[str, int] = {}
    todo = []
    for e in entries:
        name = os.path.basename(e.wav)
        if not name:
            skipped.append(Skipped(e.line, e.wav, "no file name"))
        elif name in names_seen:
            skipped.append(Skipped(e.line, e.wav, f"duplicate file name (also on line {names_seen[name]})"))
        else:
            names_seen[name] = e.line
            todo.append(e)
    workers = max(1, min(int(workers), len(todo) or 1))
    results: list[Result] = []
    bar = tqdm(total=len(todo), desc="prepare", unit="file", disable=not progress)
    t0 = time.monotonic()
    if workers == 1:
        proc = ItemProcessor(**kwargs)
        global _WORKER
        _WORKER = proc
        try:
            for e in todo:
                results.append(_work(e))
                bar.update(1)
        finally:
            _WORKER = None
    else:
        import multiprocessing as mp

        threads = max(1, torch.get_num_threads() // workers)
        # spawn: forked children of a process that already ran torch ops can deadlock in OpenMP
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(kwargs, threads)) as pool:
            for res in pool.imap_unordered(_work, todo):
                results.append(res)
                bar.update(1)
            pool.close()
            pool.join()
    bar.close()
    summary = PrepareSummary(skipped=skipped)
    report = QualityReport()
    for r in sorted(results, key=lambda r: r.entry.line):
        if r.quality is not None:
            report.files.append(FileQuality(**r.quality))
        if r.item is not None:
            summary.items.append(r.item)
            summary.reused += int(r.reused)
            report.usable_seconds += float(r.item["seconds"])
        else:
            summary.skipped.append(Skipped(r.entry.line, r.entry.wav, r.reason))
    summary.skipped.sort(key=lambda s: s.line)
    summary.quality = report.to_dict()
    write_dataset_index(out, bundle, hubert_dir, bert_dir, list_file, summary)
    (out / "quality.json").write_text(json.dumps(summary.quality, indent=2) + "\n", "utf-8")
    log.info("prepared %d items (%d reused) in %.1f s", len(summary.items), summary.reused, time.monotonic() - t0)
    summary.quality_text = report.format()
    return summary


def write_dataset_index(out: Path, bundle, hubert_dir, bert_dir, list_file: Path, s: PrepareSummary) -> None:
    index = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "list": str(list_file.resolve()), "base": str(Path(bundle.path).resolve()), "base_id": bundle.bundle_id,
        "symbol_version": bundle.symbol_version, "hubert": str(Path(hubert_dir).resolve()),
        "bert": str(Path(bert_dir).resolve()) if bert_dir else None, "items": s.items,
        "skipped": [k.to_dict() for k in s.skipped], "quality_summary": s.quality.get("summary", {}),
    }
    _atomic_text(out / DATASET_FILE, json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    # upstream's text files, so the prepared set can also be read with upstream's tools
    _atomic_text(out / "2-name2text.txt", "".join(
        f"{it['name']}\t{it['phones']}\t{it['word2ph']}\t{it['norm_text']}\n" for it in s.items))
    from safetensors import safe_open

    rows = ["item_name\tsemantic_audio\n"]
    for it in s.items:
        with safe_open(str(out / it["file"]), "pt") as f:
            codes = f.get_tensor("semantic").tolist()
        rows.append(f"{it['name']}\t{' '.join(map(str, codes))}\n")
    _atomic_text(out / "6-name2semantic.tsv", "".join(rows))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


def format_skipped(skipped: list[Skipped]) -> str:
    if not skipped:
        return "skipped: none"
    lines = [f"skipped {len(skipped)} line(s):"]
    lines += [f"  line {s.line}: {s.wav or '-'}: {s.reason}" for s in skipped]
    return "\n".join(lines)
