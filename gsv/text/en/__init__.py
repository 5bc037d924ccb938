"""English text frontend (upstream GPT-SoVITS v2 ``text/english.py`` behaviour).

* :func:`normalize` -- upstream's ``text_normalize``: the ``norm_text`` of a sentence;
* :func:`g2p` -- ARPAbet phones of normalised text, and ``None`` (English has no word2ph).

Dictionaries, the word segmenter, the tokenizer and the OOV network are all loaded lazily on first
use and cached; nothing is downloaded.
"""
from __future__ import annotations

from gsv.text.en.phonemizer import g2p
from gsv.text.en.normalizer import normalize

__all__ = ["normalize", "g2p"]
