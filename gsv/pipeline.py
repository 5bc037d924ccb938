"""Text preparation with BERT features, voice preparation and the offline synthesizer.

:class:`TextPreparer` turns (text, language, split method) into :class:`~gsv.session.TextSegment`
objects (phone ids + per-phone BERT features) using the text frontend; only zh pieces get BERT
features (third-from-last layer of the bundle's BERT), every other piece gets zeros, as upstream.
:class:`Synthesizer` runs one request at a time through the same :class:`~gsv.engine.Engine` the
server uses, with any backend.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import numpy as np
import torch

from gsv import constants as C
from gsv.errors import GsvError
from gsv.session import Session, SynthesisOptions, TextSegment

log = logging.getLogger(__name__)


class TextPreparer:
    """Frontend + BERT for one symbol version; stateless per call (safe from several threads)."""

    def __init__(self, version: str = "v2", bert=None, bert_dim: int = C.BERT_DIM, frontend=None):
        from gsv.text.frontend import TextFrontend

        self.version = version
        self.frontend = frontend or TextFrontend(version=version)
        self.bert = bert
        self.bert_dim = bert_dim
        self._warned = False

    @classmethod
    def from_bundle(cls, bundle, device: str = "cpu", bert=None, frontend=None) -> "TextPreparer":
        """The bundle's frontend and BERT; ``bert``/``frontend``: already loaded ones to share (a server
        holding several models of one BERT and phone table loads them once)."""
        if bert is None and bundle.bert_dir is not None:
            from gsv.features import BertExtractor

            bert = BertExtractor(bundle.bert_dir, device)
        if bert is not None:
            if bert.dim != bundle.gpt_config.bert_dim:
                raise GsvError(f"the bundle's BERT has {bert.dim}-d features but the GPT expects {bundle.gpt_config.bert_dim}")
        return cls(bundle.symbol_version, bert, bundle.gpt_config.bert_dim, frontend)

    @property
    def languages(self) -> tuple[str, ...]:
        from gsv.text.frontend import LANGUAGE_MODES

        return tuple(LANGUAGE_MODES[self.version])

    def features(self, prepared) -> torch.Tensor:
        """Per-phone BERT features [bert_dim, n_phones] of a prepared segment."""
        parts = []
        for piece in prepared.pieces:
            n = len(piece.phones)
            if piece.lang == "zh" and self.bert is not None:
                parts.append(self.bert(piece.norm_text, list(piece.word2ph)))
            else:
                if piece.lang == "zh" and not self._warned:
                    log.warning("no BERT model in the bundle: Chinese text uses zero BERT features (lower quality)")
                    self._warned = True
                parts.append(torch.zeros(self.bert_dim, n))
        return torch.cat(parts, dim=1) if parts else torch.zeros(self.bert_dim, 0)

    def segments(self, text: str, language: str, split: str = "cut5") -> list[TextSegment]:
        prepared = self.frontend.prepare(text, language, split)
        return [TextSegment(p.text, list(p.ids), self.features(p)) for p in prepared]

    def prompt(self, text: str, language: str):
        """(prepared prompt, its BERT features) for a reference transcript (upstream's prompt rules)."""
        prepared = self.frontend.prepare_prompt(text, language)
        return prepared, self.features(prepared)


def make_voice_preparer(bundle, text: TextPreparer, device: str = "cpu", hubert=None, sv=None):
    """A VoicePreparer with the bundle's voice layers (reference encoder, SSL projection, quantizer), HuBERT
    (when present) and, for Pro bundles, the speaker-verification network; ``hubert``/``sv``: already
    loaded ones to share."""
    from gsv.voice import VoicePreparer

    if hubert is None and bundle.hubert_dir is not None:
        from gsv.features import HubertExtractor

        hubert = HubertExtractor(bundle.hubert_dir, device)
    if hubert is not None and hubert.dim != bundle.sovits_config.ssl_dim:
        raise GsvError(f"the bundle's HuBERT has {hubert.dim}-d features but SoVITS expects {bundle.sovits_config.ssl_dim}")
    if sv is None and bundle.is_pro:
        sv = bundle.load_sv(device)
    return VoicePreparer(bundle, text, sovits=bundle.load_sovits(device, reference_only=True), hubert=hubert, sv=sv)


class Synthesizer:
    """Offline synthesis (one request at a time, on the calling thread) over any backend."""

    def __init__(self, bundle, backend: str = "torch", device: str = "cpu", threads: int | None = None):
        from gsv.backends import open_backends
        from gsv.engine import Engine

        self.bundle = bundle
        self.gpt, self.audio = open_backends(bundle, backend, device=device, threads=threads)
        self.engine = Engine(self.gpt, self.audio, max_live=1)
        self.text = TextPreparer.from_bundle(bundle, device)
        self._device = device
        self._voice_preparer = None

    @property
    def voice_preparer(self):
        if self._voice_preparer is None:
            self._voice_preparer = make_voice_preparer(self.bundle, self.text, self._device)
        return self._voice_preparer

    def prepare_voice(self, ref_audio: str | Path | bytes, ref_text: str, language: str,
                      aux_refs: list = (), voice_id: str = "adhoc"):
        return self.voice_preparer.prepare(voice_id, ref_audio, ref_text, language, list(aux_refs))

    def synthesize(self, text: str, language: str, voice, options: SynthesisOptions | None = None,
                   split: str = "cut5", on_chunk=None) -> tuple[np.ndarray, Session]:
        """-> (float32 audio at 32 kHz, the finished session)."""
        options = options or SynthesisOptions(streaming=False)
        segments = self.text.segments(text, language, split)
        chunks = []

        def sink(chunk):
            chunks.append(chunk.samples)
            if on_chunk is not None:
                on_chunk(chunk)

        session = Session(uuid.uuid4().hex, voice, segments, options, sink=sink)
        self.engine.submit(session)
        self.engine.run(session)
        if session.finish_reason == "error":
            raise GsvError(f"synthesis failed: {session.error}")
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return audio, session
