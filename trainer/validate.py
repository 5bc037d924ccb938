"""Validation synthesis and speaker similarity.

At every validation the trainer speaks a fixed sentence with the model being trained (and the
other stage's current best, or the base) through the same :class:`gsv.engine.Engine` the server
uses, with a reference utterance from the experiment as the voice, and measures the cosine
similarity of speechbrain ECAPA-TDNN speaker embeddings of the result and of the reference.

The ECAPA model comes from a local folder (speechbrain's ``spkrec-ecapa-voxceleb`` layout:
``embedding_model.ckpt``; an optional ``ecapa.json`` overrides the architecture); without one a
randomly initialised (seeded) ECAPA is used, which still tells a changing voice from a stable one
but is no absolute measure.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gsv import constants as C
from gsv.errors import GsvError

log = logging.getLogger(__name__)

ECAPA_DEFAULT = {"input_size": 80, "channels": [1024, 1024, 1024, 1024, 3072], "kernel_sizes": [5, 3, 3, 3, 1],
                 "dilations": [1, 2, 3, 4, 1], "attention_channels": 128, "lin_neurons": 192}
ECAPA_RANDOM = {"input_size": 80, "channels": [128, 128, 128, 128, 384], "lin_neurons": 96}


class SpeakerSimilarity:
    """ECAPA-TDNN speaker embeddings of 16 kHz audio; ``similarity(a, sr_a, b, sr_b)`` in [-1, 1]."""

    def __init__(self, model_dir: str | Path | None = None, seed: int = 0):
        from speechbrain.lobes.features import Fbank
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        self.fbank = Fbank(n_mels=80)
        if model_dir is None:
            with torch.random.fork_rng(devices=[]):  # a fixed random model without moving the caller's RNG
                torch.manual_seed(seed)
                self.model = ECAPA_TDNN(**ECAPA_RANDOM)
            self.source = "random"
        else:
            d = Path(model_dir)
            ckpt = d / "embedding_model.ckpt"
            if not ckpt.is_file():
                raise GsvError(f"speaker model folder {d} has no embedding_model.ckpt (speechbrain ECAPA layout)")
            arch = dict(ECAPA_DEFAULT)
            if (d / "ecapa.json").is_file():
                arch.update(json.loads((d / "ecapa.json").read_text("utf-8")))
            self.model = ECAPA_TDNN(**arch)
            try:
                self.model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
            except (RuntimeError, OSError, ValueError) as e:
                raise GsvError(f"cannot load the ECAPA model from {ckpt}: {str(e)[:200]}") from None
            self.source = str(d)
        self.model.eval()

    @torch.no_grad()
    def embed(self, samples: np.ndarray, sr: int) -> torch.Tensor:
        from gsv.audio import resample_soxr

        x = torch.from_numpy(resample_soxr(np.asarray(samples, np.float32), sr, 16000)).unsqueeze(0)
        feats = self.fbank(x)
        feats = feats - feats.mean(dim=1, keepdim=True)  # sentence-level mean normalisation, as speechbrain's recipe
        return self.model(feats)[0, 0]

    def similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        if a.size < sr_a // 10 or b.size < sr_b // 10:
            return float("nan")
        ea, eb = self.embed(a, sr_a), self.embed(b, sr_b)
        return float(torch.nn.functional.cosine_similarity(ea, eb, dim=0))


@dataclass
class _Voice:
    prompt_phones: list
    prompt_bert: torch.Tensor
    prompt_tokens: torch.Tensor
    ge: torch.Tensor


class ValidationSynth:
    """Speaks ``text`` with a reference item of the experiment as the voice."""

    def __init__(self, exp, ref_item: dict, text: str, lang: str, version: str, max_tokens: int,
                 speaker_model: str | None = None, seed: int = 0):
        from gsv.text.cleaner import clean_text
        from gsv.text.symbols import cleaned_text_to_sequence
        from trainer.data import load_tensors

        self.ref_item = ref_item
        t = load_tensors(exp.file(ref_item), ("phones", "semantic", "bert", "spec", "wav", "sv"))
        self.ref = t
        self.ref_wav = t["wav"].float().numpy() / 32768.0
        cleaned = clean_text(text, lang, version)
        self.text = text
        self.phones = cleaned_text_to_sequence(cleaned.phones, version)
        self.max_tokens = max_tokens
        self.seed = seed
        self.similarity = SpeakerSimilarity(speaker_model, seed)

    @torch.no_grad()
    def run(self, gpt, sovits) -> tuple[np.ndarray, float]:
        """gpt, sovits: inference models (eval) -> (32 kHz audio, speaker similarity to the reference)."""
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
        segment = TextSegment(self.text, list(self.phones), torch.zeros(bert_dim, len(self.phones)))
        opts = SynthesisOptions(sampling=SamplingOptions(seed=self.seed, max_tokens=self.max_tokens), streaming=False)
        chunks: list = []
        session = Session("validation", voice, [segment], opts, sink=chunks.append)
        engine = Engine(TorchGPTBackend(gpt), TorchAudioBackend(sovits), max_live=1)
        engine.submit(session)
        engine.run(session)
        if session.finish_reason == "error":
            raise GsvError(f"validation synthesis failed: {session.error}")
        audio = np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.float32)
        sim = self.similarity.similarity(audio, C.SAMPLE_RATE, self.ref_wav, C.SAMPLE_RATE)
        return audio.astype(np.float32), sim


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
