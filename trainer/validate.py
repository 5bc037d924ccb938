"""Validation synthesis and speaker similarity with a pretrained speaker encoder.

At every validation the trainer speaks a fixed sentence with the model being trained (and the
other stage's current best, or the base) through the same :class:`gsv.engine.Engine` the server
uses, with a reference utterance from the experiment as the voice, and measures
``val/speaker_similarity``: the cosine between the pretrained speaker encoder's embedding of the
result and the centroid of the training speaker's utterances (:mod:`gsv.quality`; Resemblyzer's
GE2E by default, speechbrain ECAPA from a local folder with ``--speaker-model``).

Two reference points are computed once per run with the same encoder (and cached in
``EXP/speaker_reference.json``) and logged next to it, so the number can be read in TensorBoard:
``val/speaker_similarity_ceiling`` (held-out real utterances of the speaker; leave-one-out over
the training utterances when nothing is held out) and ``val/speaker_similarity_floor`` (noise).
``val/speaker_similarity_relative`` maps floor..ceiling to 0..1.  Without a pretrained encoder
no similarity is reported at all (a warning says why); the sample audio is still written.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gsv import constants as C
from gsv.errors import GsvError

log = logging.getLogger(__name__)

REFERENCE_FILE = "speaker_reference.json"
SAMPLE_GAP_SECONDS = 0.3  # between the sentences of the logged sample
SIMILARITY_TAGS = ("val/speaker_similarity", "val/speaker_similarity_ceiling", "val/speaker_similarity_floor")


def _item_audio(exp, item: dict) -> tuple[np.ndarray, int]:
    from trainer.data import load_tensors

    return load_tensors(exp.file(item), ("wav",))["wav"].float().numpy() / 32768.0, C.SAMPLE_RATE


def speaker_reference(exp, encoder, train_items: list[dict], val_items: list[dict], seed: int = 0):
    """The training speaker's :class:`gsv.quality.SpeakerReference` (centroid of the training items,
    ceiling from the validation items, noise floor), cached in the experiment folder."""
    from gsv.quality import SpeakerReference
    from trainer.checkpointing import atomic_write

    names = json.dumps([encoder.name, seed, sorted(it["name"] for it in train_items),
                        sorted(it["name"] for it in val_items)])
    key = hashlib.sha256(names.encode()).hexdigest()
    cache = Path(exp.path) / REFERENCE_FILE
    if cache.is_file():
        try:
            d = json.loads(cache.read_text("utf-8"))
            if d.get("key") == key:
                d.pop("key")
                d["centroid"] = np.asarray(d["centroid"], np.float32)
                return SpeakerReference(**d)
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("ignoring unreadable %s (%s)", cache, e)
    ref = SpeakerReference.build(encoder, [_item_audio(exp, it) for it in train_items],
                                 [_item_audio(exp, it) for it in val_items], seed=seed)
    d = {"key": key, **ref.to_dict(), "centroid": [float(v) for v in ref.centroid],
         "floor_by_kind": ref.floor_by_kind, "ceiling": ref.ceiling, "floor": ref.floor}
    atomic_write(cache, lambda p: p.write_text(json.dumps(d), "utf-8"))
    log.info("speaker reference (%s): ceiling %.3f (%d %s utterances), floor %.3f (noise)", ref.encoder,
             ref.ceiling, ref.ceiling_utterances, ref.ceiling_method, ref.floor)
    return ref


@dataclass
class _Voice:
    prompt_phones: list
    prompt_bert: torch.Tensor
    prompt_tokens: torch.Tensor
    ge: torch.Tensor


class ValidationSynth:
    """Speaks ``text`` (one sentence or a list; each with its own seed) with a reference item of the
    experiment as the voice; the similarity is the mean over the sentences."""

    def __init__(self, exp, ref_item: dict, text: str | list[str], lang: str, version: str, max_tokens: int,
                 encoder=None, reference=None, seed: int = 0):
        """``encoder``/``reference``: a pretrained speaker encoder and the training speaker's
        :class:`gsv.quality.SpeakerReference` (both None: synthesis without a similarity)."""
        from gsv.text.cleaner import clean_text
        from gsv.text.symbols import cleaned_text_to_sequence
        from trainer.data import load_tensors

        self.ref_item = ref_item
        self.ref = load_tensors(exp.file(ref_item), ("phones", "semantic", "bert", "spec", "sv"))
        self.texts = [text] if isinstance(text, str) else list(text)
        if not self.texts:
            raise GsvError("no validation sentence")
        self.phones = [cleaned_text_to_sequence(clean_text(t, lang, version).phones, version) for t in self.texts]
        self.max_tokens = max_tokens
        self.seed = seed
        self.encoder, self.reference = encoder, reference

    @classmethod
    def for_run(cls, exp, train_items: list[dict], val_items: list[dict], cfg, version: str) -> "ValidationSynth":
        """The run's validation synthesis: reference utterance, text and the speaker reference of
        ``cfg.speaker_model`` (Resemblyzer when None)."""
        from gsv.quality import SpeakerEncoderUnavailable, open_speaker_encoder

        encoder = reference = None
        try:
            encoder = open_speaker_encoder(cfg.speaker_model)
            reference = speaker_reference(exp, encoder, train_items, val_items, cfg.seed)
        except SpeakerEncoderUnavailable as e:
            if cfg.speaker_model or getattr(cfg, "early_stop_on", "loss") == "similarity":
                raise
            log.warning("no val/speaker_similarity: %s", e)
        return cls(exp, pick_reference(train_items, val_items), cfg.synth_text, cfg.synth_lang, version,
                   cfg.synth_max_tokens, encoder, reference, cfg.seed)

    def reference_metrics(self) -> dict[str, float]:
        """The run's constant reference points (empty without an encoder)."""
        if self.reference is None:
            return {}
        return {"val/speaker_similarity_ceiling": self.reference.ceiling,
                "val/speaker_similarity_floor": self.reference.floor}

    def measure(self, audios: list[np.ndarray]) -> dict[str, float]:
        """Validation metrics of the syntheses (one per sentence): length, and the mean similarity
        with its references."""
        out = {"val/synth_seconds": sum(a.size for a in audios) / C.SAMPLE_RATE}
        if self.reference is not None:
            sims = [self.reference.similarity(self.encoder, a, C.SAMPLE_RATE) for a in audios]
            sims = [x for x in sims if np.isfinite(x)]
            sim = float(np.mean(sims)) if sims else float("nan")  # NaN: nothing long enough to embed
            out.update({"val/speaker_similarity": sim, "val/speaker_similarity_relative": self.reference.relative(sim)})
            out.update(self.reference_metrics())
        return out

    @torch.no_grad()
    def run(self, gpt, sovits) -> tuple[np.ndarray, dict[str, float]]:
        """gpt, sovits: inference models (eval) -> (32 kHz audio of every sentence, 0.3 s apart;
        validation metrics of :meth:`measure`)."""
        from gsv.backends.torch_backend import TorchAudioBackend, TorchGPTBackend
        from gsv.engine import Engine
        from gsv.sampling import SamplingOptions
        from gsv.session import Session, SynthesisOptions, TextSegment

        bert_dim = gpt.cfg.bert_dim
        ref_phones = self.ref["phones"].tolist()
        ref_bert = self.ref.get("bert")
        if ref_bert is None or ref_bert.shape[0] != bert_dim:
            ref_bert = torch.zeros(bert_dim, len(ref_phones))
        sv = self.ref.get("sv")  # Pro experiments: the reference item's speaker-verification embedding
        ge = sovits.speaker_embedding(self.ref["spec"].float().unsqueeze(0), None if sv is None else sv.float().view(1, -1))[0]
        voice = _Voice(ref_phones, ref_bert.float(), self.ref["semantic"].long(), ge)
        engine = Engine(TorchGPTBackend(gpt), TorchAudioBackend(sovits), max_live=1)
        audios = []
        for i, (text, phones) in enumerate(zip(self.texts, self.phones)):
            segment = TextSegment(text, list(phones), torch.zeros(bert_dim, len(phones)))
            opts = SynthesisOptions(sampling=SamplingOptions(seed=self.seed + i, max_tokens=self.max_tokens),
                                    streaming=False)
            chunks: list = []
            session = Session(f"validation-{i}", voice, [segment], opts, sink=chunks.append)
            engine.submit(session)
            engine.run(session)
            if session.finish_reason == "error":
                raise GsvError(f"validation synthesis failed: {session.error}")
            audios.append(np.concatenate([c.samples for c in chunks]).astype(np.float32) if chunks
                          else np.zeros(0, np.float32))
        gap = np.zeros(int(SAMPLE_GAP_SECONDS * C.SAMPLE_RATE), np.float32)
        joined = np.concatenate([x for a in audios for x in (a, gap)][:-1])
        return joined, self.measure(audios)


def pick_reference(train_items: list[dict], val_items: list[dict]) -> dict:
    """A validation item when there is one (the voice is then unseen text), else a training item;
    prefer 3-10 s utterances, as upstream's inference asks of a reference."""
    pool = val_items or train_items
    good = [it for it in pool if C.REF_MIN_SECONDS <= float(it["seconds"]) <= C.REF_MAX_SECONDS]
    return sorted(good or pool, key=lambda it: it["name"])[0]


def log_sample(writer, out_dir: Path, tag: str, audio: np.ndarray, step: int) -> Path:
    from gsv.audio import write_wav

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{tag}-step{step:07d}.wav"
    write_wav(path, audio, C.SAMPLE_RATE)
    if writer is not None and audio.size:
        writer.add_audio(f"synth/{tag}", torch.from_numpy(np.clip(audio, -1, 1)).unsqueeze(0), step,
                         sample_rate=C.SAMPLE_RATE)
    return path
