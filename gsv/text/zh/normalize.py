"""Mandarin text normalisation: raw text -> the ``norm_text`` that zh G2P reads.

Order of operations (upstream ``chinese2.text_normalize``):

1. :func:`split_sentences` -- drop ASCII spaces and bracket/quote characters, cut after
   sentence punctuation;
2. per sentence (:func:`normalize_sentence`): traditional -> simplified characters, full-width
   Latin letters and digits -> ASCII, the number/unit/date rules of :mod:`gsv.text.zh.rules`, then
   symbol words (Greek letters, circled numbers, maths operators) and removal of leftover symbols;
3. per sentence: 嗯 -> 恩 and 呣 -> 母 (their pinyin has no final), Chinese punctuation -> the six
   pause marks ``! ? … , . -``, and **deletion of every other character** that is not a CJK
   ideograph in U+4E00..U+9FA5 (Latin words, emoji, kana, control characters, ...);
4. the sentences are joined and a run of pause marks is collapsed to its first mark.

The Cantonese frontend shares steps 1-2 (:func:`normalize_sentences`) and does its own 3-4.
"""
from __future__ import annotations

import logging
import re
import string
from functools import lru_cache
from importlib import resources

from gsv.text.zh.rules import verbalize

logger = logging.getLogger(__name__)

# The pause marks the zh/yue symbol tables know (upstream ``symbols.punctuation``).
PAUSE_MARKS = "!?…,.-"

_SENTENCE_END = re.compile(r"([：、，；。？！,;?!][”’]?)")
# Removed before splitting (note: the ASCII hyphen survives here; it may be a minus sign).
_SPLIT_DROPPED = re.compile(r"[—《》【】<>{}()（）#&@“”^_|\\]")
# Removed after the rules ran; by then "-" and "=" had their chance to be read as maths.
_SENTENCE_DROPPED = re.compile(r"[-—《》【】<=>{}()（）#&@“”^_|\\]")

_FULLWIDTH_TO_ASCII = {ord(ch) + 0xFEE0: ord(ch) for ch in string.ascii_letters + string.digits}

# Symbols read as words once the numeric rules are done.
_SYMBOL_WORDS = {
    "/": "每",
    **dict(zip("①②③④⑤⑥⑦⑧⑨⑩", "一二三四五六七八九十")),
    "α": "阿尔法", "β": "贝塔", "γ": "伽玛", "Γ": "伽玛", "δ": "德尔塔", "Δ": "德尔塔",
    "ε": "艾普西龙", "ζ": "捷塔", "η": "依塔", "θ": "西塔", "Θ": "西塔", "ι": "艾欧塔",
    "κ": "喀帕", "λ": "拉姆达", "Λ": "拉姆达", "μ": "缪", "ν": "拗", "ξ": "克西", "Ξ": "克西",
    "ο": "欧米克伦", "π": "派", "Π": "派", "ρ": "肉", "ς": "西格玛", "Σ": "西格玛", "σ": "西格玛",
    "τ": "套", "υ": "宇普西龙", "φ": "服艾", "Φ": "服艾", "χ": "器", "ψ": "普赛", "Ψ": "普赛",
    "ω": "欧米伽", "Ω": "欧米伽",
    # Operators the arithmetic rule did not catch (e.g. "A+" or "=" alone) are still read.
    "+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等",
}
_SYMBOL_TABLE = str.maketrans(_SYMBOL_WORDS)

# Chinese (and a few ASCII) punctuation -> pause marks, for the Mandarin frontend.
_PAUSE_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
    "、": ",", "...": "…", "$": ".", "/": ",", "—": "-", "~": "…", "～": "…",
}
_KEEP_ONLY = re.compile(r"[^\u4e00-\u9fa5" + re.escape(PAUSE_MARKS) + r"]+")
_REPEATED_PAUSES = re.compile("([" + re.escape(PAUSE_MARKS) + "])[" + re.escape(PAUSE_MARKS) + "]+")


def alternation(table: dict[str, str]) -> re.Pattern:
    """One regex matching any key of ``table`` (keys tried in the table's order)."""
    return re.compile("|".join(re.escape(k) for k in table))


_PAUSE_PATTERN = alternation(_PAUSE_MAP)


@lru_cache(maxsize=1)
def _traditional_to_simplified() -> dict[int, str]:
    text = resources.files("gsv.text.zh").joinpath("data/trad_to_simp.txt").read_text("utf-8")
    table = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            trad, simp = line.split("\t")
            table[ord(trad)] = simp
    logger.debug("loaded %d traditional->simplified characters", len(table))
    return table


def to_simplified(text: str) -> str:
    """Traditional characters -> simplified, character by character (upstream's table)."""
    return text.translate(_traditional_to_simplified())


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` after sentence punctuation; ASCII spaces and brackets/quotes are dropped first."""
    text = _SPLIT_DROPPED.sub("", text.replace(" ", ""))
    text = _SENTENCE_END.sub("\\1\n", text).strip()
    return [s.strip() for s in re.split(r"\n+", text)]


def normalize_sentence(sentence: str) -> str:
    """Character conversions, the number/unit rules and symbol words for one sentence."""
    sentence = to_simplified(sentence).translate(_FULLWIDTH_TO_ASCII)
    sentence = verbalize(sentence)
    return _SENTENCE_DROPPED.sub("", sentence.translate(_SYMBOL_TABLE))


def normalize_sentences(text: str) -> list[str]:
    """Steps 1-2 (shared with Cantonese): the normalised sentences of ``text``, pauses not mapped yet."""
    return [normalize_sentence(s) for s in split_sentences(text)]


def map_pauses(sentence: str) -> str:
    """嗯/呣 respelled, punctuation mapped to pause marks, everything else outside CJK deleted."""
    sentence = sentence.replace("嗯", "恩").replace("呣", "母")
    sentence = _PAUSE_PATTERN.sub(lambda m: _PAUSE_MAP[m.group()], sentence)
    return _KEEP_ONLY.sub("", sentence)


def collapse_pauses(text: str) -> str:
    """A run of pause marks keeps only its first one ("?!" -> "?", "……" -> "…")."""
    return _REPEATED_PAUSES.sub("\\1", text)


def normalize(text: str) -> str:
    """Upstream ``chinese2.text_normalize``: raw Mandarin text -> norm_text (may be empty)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    return collapse_pauses("".join(map_pauses(s) for s in normalize_sentences(text)))
