"""Mandarin frontend of GPT-SoVITS v1 checkpoints (upstream ``text/chinese.py``).

It is the v2 frontend without the erhua rule: a word-final 儿 keeps pypinyin's own tone (女儿,
小孩儿 -> er2 either way, but 哪儿 -> er2 instead of er3, and er1 is not raised to er2).
Normalisation is identical. Same interface as :mod:`gsv.text.zh`.
"""
from __future__ import annotations

from gsv.text.zh.g2p import phonemize
from gsv.text.zh.normalize import normalize

__all__ = ["normalize", "g2p"]


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Phones and word2ph of normalised Mandarin text for v1 models (pypinyin, no erhua rule)."""
    return phonemize(norm_text, erhua=False)
