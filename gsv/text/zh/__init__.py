"""Mandarin (zh) text frontend, matching upstream GPT-SoVITS v2 ``text/chinese2.py``.

* :func:`normalize` -- raw text -> ``norm_text`` (numbers, dates, units, ... read out; punctuation
  mapped to ``! ? … , . -``; everything that is not a CJK ideograph or one of those marks removed);
* :func:`g2p` -- ``norm_text`` -> (phones, word2ph) with 2 phones per Hanzi and 1 per mark.

Pinyin comes from pypinyin (upstream's non-G2PW path). A local G2PW model can be used instead
through :class:`gsv.text.zh.g2pw.G2PW`. Dictionaries (jieba, pypinyin, character tables) are
loaded on first use, not at import.
"""
from __future__ import annotations

from gsv.text.zh.g2p import g2p
from gsv.text.zh.normalize import normalize

__all__ = ["normalize", "g2p"]
