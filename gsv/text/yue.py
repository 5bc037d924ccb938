"""Cantonese (yue) text frontend, matching upstream GPT-SoVITS v2 ``text/cantonese.py``.

* :func:`normalize` -- the Mandarin sentence normaliser (numbers, dates, units, traditional ->
  simplified characters, ...; :func:`gsv.text.zh.normalize.normalize_sentences`), then Cantonese
  punctuation mapping. Unlike zh, 嗯/呣 are kept and **runs of punctuation are not collapsed**
  ("!!!" stays three marks); everything outside U+4E00..U+9FA5 and ``! ? … , . -`` is removed.
* :func:`g2p` -- Jyutping from ToJyutping, one syllable per character, split into an initial and
  a final+tone, each prefixed with "Y" so that they do not collide with Mandarin phones
  (我 ngo5 -> ``Yng Yo5``); a punctuation mark is one phone without prefix.

Note that the split is upstream's: initials are tried in a fixed order and the first prefix that
matches wins, so e.g. 屋 uk1 becomes ``Yuk Yk1`` and 五 ng5 becomes ``Yng Yg5``.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache

from gsv.errors import TextError
from gsv.text.zh.normalize import PAUSE_MARKS, alternation, normalize_sentences

logger = logging.getLogger(__name__)

_PAUSE_SET = frozenset(PAUSE_MARKS)
# Punctuation -> pause marks; quotes and brackets become "'" (and so disappear with the filter).
_PAUSE_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…", "$": ".",
    "“": "'", "”": "'", '"': "'", "‘": "'", "’": "'", "（": "'", "）": "'", "(": "'", ")": "'",
    "《": "'", "》": "'", "【": "'", "】": "'", "[": "'", "]": "'",
    "—": "-", "～": "-", "~": "-", "「": "'", "」": "'",
}
_PAUSE_PATTERN = alternation(_PAUSE_MAP)
_KEEP_ONLY = re.compile(r"[^\u4e00-\u9fa5" + re.escape(PAUSE_MARKS) + r"]+")

# Jyutping onsets (and a few whole rimes) in the order upstream tries them as prefixes.
_ONSETS = (
    "aa", "aai", "aak", "aap", "aat", "aau", "ai", "au", "ap", "at", "ak", "a", "p", "b", "e",
    "ts", "t", "dz", "d", "kw", "k", "gw", "g", "f", "h", "l", "m", "ng", "n", "s", "y", "w",
    "c", "z", "j", "ong", "on", "ou", "oi", "ok", "o", "uk", "ung", "sp", "spl", "spn", "sil",
)
_JYUTPING = re.compile(r"^([a-z]+[1-6]+[ ]?)+$")
PREFIX = "Y"


def normalize(text: str) -> str:
    """Upstream ``cantonese.text_normalize``: raw text -> norm_text (may be empty)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    out = []
    for sentence in normalize_sentences(text):
        sentence = _PAUSE_PATTERN.sub(lambda m: _PAUSE_MAP[m.group()], sentence)
        out.append(_KEEP_ONLY.sub("", sentence))
    return "".join(out)


@lru_cache(maxsize=1)
def _tojyutping():
    import ToJyutping

    return ToJyutping


def jyutping_syllables(norm_text: str) -> list[str]:
    """One Jyutping syllable (with tone digit) per character; pause marks are passed through."""
    syllables = []
    for char, jyutping in _tojyutping().get_jyutping_list(norm_text):
        if char and all(ch in _PAUSE_SET for ch in char):
            syllables.extend(char)
        elif jyutping is None or not _JYUTPING.search(jyutping):
            raise TextError(f"no Cantonese reading for {char!r} (jyutping: {jyutping!r})")
        else:
            syllables.append(jyutping)
    return syllables


def split_jyutping(syllable: str) -> tuple[str, str, str]:
    """(onset, rime, tone) of one Jyutping syllable by upstream's first-matching-prefix rule."""
    body, tone = syllable[:-1], syllable[-1]
    for onset in _ONSETS:
        if body.startswith(onset):
            if body.startswith("nga"):
                return body[:2], body[2:] or body[-1], tone
            # A syllable that is all onset (m4, ng5, uk1) repeats the onset's last letter as rime.
            return onset, body[len(onset):] or onset[-1], tone
    raise TextError(f"cannot split Jyutping syllable {syllable!r}")


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Phones (Y-prefixed) and word2ph (2 per character, 1 per mark) of normalised Cantonese."""
    phones: list[str] = []
    word2ph: list[int] = []
    for syllable in jyutping_syllables(norm_text):
        if syllable in _PAUSE_SET:
            phones.append(syllable)
            word2ph.append(1)
            continue
        onset, rime, tone = split_jyutping(syllable)
        phones += [PREFIX + onset, PREFIX + rime + tone]  # the tone goes on the rime only
        word2ph.append(2)
    return phones, word2ph
