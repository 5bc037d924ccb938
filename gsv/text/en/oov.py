"""Pronunciation of out-of-vocabulary English words by g2p_en's neural predictor, in numpy.

Upstream predicts words that are neither in its dictionary nor splittable into known words with
``g2p_en``'s grapheme-to-phoneme network.  The network's weights ship inside the ``g2p_en`` package
as ``checkpoint20.npz``.  Importing ``g2p_en`` itself is not possible offline (it downloads NLTK data
at import), so we locate the file through the package's import spec without importing it, and run
the network here.

The network (hidden size 256):

* encoder: a GRU over the embedded letters of the word followed by an end mark ``</s>``; letters
  outside a-z become ``<unk>``;
* decoder: a GRU started from the encoder's last state and the ``<s>`` embedding; at every step a
  linear layer gives phoneme logits, the arg-max phoneme is emitted and fed back, until ``</s>``
  or 20 phonemes (greedy decoding).

GRU cell, gates in the order (reset r, update z, candidate n) as in PyTorch:
``r = σ(W_ir x + b_ir + W_hr h + b_hr)``, ``z = σ(W_iz x + b_iz + W_hz h + b_hz)``,
``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``, ``h' = (1 - z) ⊙ n + z ⊙ h``.
Everything is computed in float32 with batch-of-one matrix products, as g2p_en does, so arg-max
ties are broken the same way.

The output may contain the markers ``<pad>``, ``<unk>``, ``<s>`` and the unstressed ``UW``; the
G2P's clean-up step handles those exactly as upstream.
"""
from __future__ import annotations

import importlib.util
import logging
import string
from functools import lru_cache
from pathlib import Path

import numpy as np

from gsv.errors import TextError

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint20.npz"
MAX_PHONEMES = 20

# Vocabularies in the order the checkpoint's embedding rows were trained with.
GRAPHEMES = ("<pad>", "<unk>", "</s>", *string.ascii_lowercase)
_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG",
               "P", "R", "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH")
# The 70 phonemes are sorted ARPAbet: stressed vowels, consonants, and one stress-less "UW".
PHONEMES = ("<pad>", "<unk>", "<s>", "</s>",
            *sorted([v + s for v in _VOWELS for s in "012"] + list(_CONSONANTS) + ["UW"]))
_UNK_GRAPHEME = GRAPHEMES.index("<unk>")
_END_GRAPHEME = GRAPHEMES.index("</s>")
_START_PHONEME = PHONEMES.index("<s>")
_END_PHONEME = PHONEMES.index("</s>")
_GRAPHEME_INDEX = {g: i for i, g in enumerate(GRAPHEMES)}


def checkpoint_path() -> Path:
    """Where the installed g2p_en package keeps its network weights (found without importing it)."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise TextError("the g2p-en package is not installed; it provides the English OOV model")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / CHECKPOINT_NAME
        if candidate.is_file():
            return candidate
    raise TextError(f"g2p-en is installed without {CHECKPOINT_NAME}")


class _GRU:
    """One GRU layer's weights; ``step`` advances a (1, hidden) state by one (1, input) vector."""

    def __init__(self, w_ih: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray):
        self.w_ih_t, self.w_hh_t = w_ih.T, w_hh.T
        self.b_ih, self.b_hh = b_ih, b_hh
        self.hidden_size = w_hh.shape[1]

    def step(self, x: np.ndarray, h: np.ndarray) -> np.ndarray:
        from_input = np.matmul(x, self.w_ih_t) + self.b_ih
        from_hidden = np.matmul(h, self.w_hh_t) + self.b_hh
        split = 2 * self.hidden_size
        gates = 1 / (1 + np.exp(-(from_input[:, :split] + from_hidden[:, :split])))
        reset, update = gates[:, : self.hidden_size], gates[:, self.hidden_size:]
        candidate = np.tanh(from_input[:, split:] + reset * from_hidden[:, split:])
        return (1 - update) * candidate + update * h


class OovPredictor:
    """The encoder-decoder network of g2p_en, greedy-decoded."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.encoder_embedding = weights["enc_emb"]
        self.encoder = _GRU(weights["enc_w_ih"], weights["enc_w_hh"], weights["enc_b_ih"], weights["enc_b_hh"])
        self.decoder_embedding = weights["dec_emb"]
        self.decoder = _GRU(weights["dec_w_ih"], weights["dec_w_hh"], weights["dec_b_ih"], weights["dec_b_hh"])
        self.output_weight_t = weights["fc_w"].T
        self.output_bias = weights["fc_b"]
        if self.encoder_embedding.shape[0] != len(GRAPHEMES) or self.decoder_embedding.shape[0] != len(PHONEMES):
            raise TextError("g2p-en checkpoint does not match the expected grapheme/phoneme vocabularies")

    @classmethod
    def from_checkpoint(cls, path: Path) -> "OovPredictor":
        with np.load(path) as npz:
            return cls({name: np.asarray(npz[name]) for name in npz.files})

    def encode(self, word: str) -> np.ndarray:
        ids = [_GRAPHEME_INDEX.get(ch, _UNK_GRAPHEME) for ch in word] + [_END_GRAPHEME]
        h = np.zeros((1, self.encoder.hidden_size), np.float32)
        for index in ids:
            h = self.encoder.step(self.encoder_embedding[index][None, :], h)
        return h

    def predict(self, word: str) -> tuple[str, ...]:
        h = self.encode(word)
        previous = _START_PHONEME
        phonemes: list[str] = []
        for _ in range(MAX_PHONEMES):
            h = self.decoder.step(self.decoder_embedding[previous][None, :], h)
            logits = np.matmul(h, self.output_weight_t) + self.output_bias
            previous = int(logits.argmax())
            if previous == _END_PHONEME:
                break
            phonemes.append(PHONEMES[previous])
        return tuple(phonemes)


@lru_cache(maxsize=1)
def predictor() -> OovPredictor:
    path = checkpoint_path()
    logger.debug("loading the English OOV predictor from %s", path)
    return OovPredictor.from_checkpoint(path)


@lru_cache(maxsize=4096)
def predict(word: str) -> tuple[str, ...]:
    """Predicted ARPAbet phonemes of ``word`` (expected lower-case; other characters are <unk>)."""
    return predictor().predict(word)
