"""Feature extractors around pretrained encoders loaded from local directories.

* :class:`HubertExtractor` (chinese-hubert-base layout, ``transformers.HubertModel``): 16 kHz waveform
  -> SSL features [1, 768, T50].  Inference feeds the *raw* waveform (upstream bypasses the
  Wav2Vec2 feature extractor's normalisation) with 9600 zero samples appended (upstream quirk).
* :class:`BertExtractor` (chinese-roberta-wwm-ext-large layout): zh ``norm_text`` + ``word2ph`` ->
  per-phone features [1024, n_phones] from the third-from-last hidden layer, one vector per
  character (CLS/SEP dropped) repeated ``word2ph[i]`` times.  Non-zh text gets zeros (caller).

Nothing is downloaded: a directory that does not hold a model is a clear error.  Models are loaded
in float32 whatever their ``config.json`` says: the published folders declare
``torch_dtype: float16``, which transformers 5 honours, and fp16 weights fail on float32 input.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from gsv import constants as C
from gsv.errors import GsvError

log = logging.getLogger(__name__)


def _check_model_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise GsvError(f"{what} model directory {p} does not exist")
    if not (p / "config.json").exists():
        raise GsvError(f"{what} model directory {p} has no config.json (expected a transformers model folder)")
    return p


class HubertExtractor:
    """chinese-hubert-base from a local folder; thread-safe for inference (no per-call state)."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from transformers import HubertModel

        self.model_dir = _check_model_dir(model_dir, "HuBERT")
        try:
            self.model = HubertModel.from_pretrained(str(self.model_dir), local_files_only=True,
                                                     dtype=torch.float32).eval().to(device)
        except (OSError, ValueError) as e:
            raise GsvError(f"cannot load HuBERT from {self.model_dir}: {e}") from None
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, wav16k: np.ndarray | torch.Tensor, tail_padding: int = C.REF_SSL_TAIL_PADDING) -> torch.Tensor:
        """wav16k: [N] float waveform at 16 kHz -> features [1, dim, T50]."""
        x = torch.as_tensor(wav16k, dtype=torch.float32).flatten()
        if tail_padding:
            x = torch.cat([x, torch.zeros(tail_padding)])
        hidden = self.model(x.unsqueeze(0).to(self.device))["last_hidden_state"]  # [1, T, dim]
        return hidden.transpose(1, 2).float().cpu()


class BertExtractor:
    """chinese-roberta-wwm-ext-large (or any BERT-layout model) from a local folder."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.model_dir = _check_model_dir(model_dir, "BERT")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            self.model = AutoModelForMaskedLM.from_pretrained(str(self.model_dir), local_files_only=True,
                                                              dtype=torch.float32).eval().to(device)
        except (OSError, ValueError) as e:
            raise GsvError(f"cannot load BERT from {self.model_dir}: {e}") from None
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)
        # characters per forward pass: the position table less CLS and SEP (510 for the real model)
        self.window = int(getattr(self.model.config, "max_position_embeddings", 512)) - 2

    @torch.no_grad()
    def __call__(self, norm_text: str, word2ph: list[int]) -> torch.Tensor:
        """-> per-phone features [dim, sum(word2ph)].

        Text longer than the model's positions (510 characters) is encoded in consecutive windows
        of at most that many characters (upstream's segmenter only splits at punctuation, so a long
        unpunctuated run, or digits that normalise to many characters, would otherwise overflow)."""
        if len(word2ph) != len(norm_text):
            raise GsvError(f"word2ph has {len(word2ph)} entries for {len(norm_text)} characters")
        per_char = torch.cat([self._encode(norm_text[i : i + self.window])
                              for i in range(0, max(len(norm_text), 1), self.window)])  # [n_chars, dim]
        if per_char.shape[0] != len(word2ph):
            raise GsvError(f"BERT tokenised {norm_text[:40]!r}… into {per_char.shape[0]} tokens, expected one per "
                           f"character ({len(word2ph)})")
        reps = torch.tensor(word2ph, dtype=torch.long)
        return torch.repeat_interleave(per_char, reps, dim=0).T.contiguous()  # [dim, n_phones]

    def _encode(self, text: str) -> torch.Tensor:
        """text (at most ``window`` characters) -> third-from-last hidden layer per character [n, dim]."""
        inputs = self.tokenizer(text, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs, output_hidden_states=True)
        return out.hidden_states[-3][0, 1:-1].float().cpu()  # CLS/SEP dropped
