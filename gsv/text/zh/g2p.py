"""Mandarin grapheme-to-phoneme: norm_text -> (phones, word2ph), upstream ``chinese2.g2p``.

Steps for each piece of text between pause marks:

1. jieba (``jieba_fast.posseg``) cuts it into words with POS tags, then
   :func:`gsv.text.zh.tone_sandhi.merge_words` regroups them;
2. each word gets its pinyin initials and tone-numbered finals -- from pypinyin (default), or from
   a G2PW model when one is configured (:class:`gsv.text.zh.g2pw.G2PW`);
3. tone sandhi (:func:`gsv.text.zh.tone_sandhi.apply_sandhi`) and the erhua rule adjust the tones;
4. each syllable becomes two phones, ``initial`` and ``final+tone`` (see
   :mod:`gsv.text.zh.syllables`); a pause mark is one phone.

``word2ph`` holds the phone count of every character of the input: 2 for a Hanzi, 1 for a mark.
Erhua keeps 儿 as its own syllable (``EE er``) but gives it the tone of the syllable before it.
"""
from __future__ import annotations

import logging
import re

from gsv.errors import TextError
from gsv.text.zh.normalize import PAUSE_MARKS
from gsv.text.zh.syllables import split_syllable
from gsv.text.zh.tone_sandhi import apply_sandhi, jieba_module, merge_words

logger = logging.getLogger(__name__)

_AFTER_PAUSE = re.compile(r"(?<=[" + re.escape(PAUSE_MARKS) + r"])\s*")
_LATIN = re.compile("[a-zA-Z]+")
_PAUSE_SET = frozenset(PAUSE_MARKS)

# Words whose final 儿 is a real syllable (女儿, 婴儿, 花儿, ...): it keeps its own tone.
NOT_ERHUA = frozenset(
    "虐儿 为儿 护儿 瞒儿 救儿 替儿 有儿 一儿 我儿 俺儿 妻儿 拐儿 聋儿 乞儿 患儿 幼儿 孤儿 婴儿 婴幼儿 "
    "连体儿 脑瘫儿 流浪儿 体弱儿 混血儿 蜜雪儿 舫儿 祖儿 美儿 应采儿 可儿 侄儿 孙儿 侄孙儿 女儿 男儿 "
    "红孩儿 花儿 虫儿 马儿 鸟儿 猪儿 猫儿 狗儿 少儿".split()
)
# Words whose 儿 always takes the tone before it, even where the POS rule below would say no.
MUST_ERHUA = frozenset("小院儿 胡同儿 范儿 老汉儿 撒欢儿 寻老礼儿 妥妥儿 媳妇儿".split())
_NO_ERHUA_POS = {"a", "j", "nr"}  # adjectives, abbreviations, person names

# pypinyin's strict finals after an empty initial -> the spelling with y/w, as upstream respells
# them before looking the syllable up ("i" -> "yi", "uei" -> "wei", "ve" -> "yue", ...).
_WHOLE_ZERO_INITIAL = {"ing": "ying", "i": "yi", "in": "yin", "u": "wu"}
_ZERO_INITIAL_PREFIX = {"v": "yu", "e": "e", "i": "y", "u": "w"}
# Finals pypinyin writes in full that the syllable table knows in their contracted spelling.
_CONTRACTED_FINALS = {"uei": "ui", "iou": "iu", "uen": "un"}


def split_pieces(text: str) -> list[str]:
    """Cut after every pause mark (the mark stays with the text before it); blank pieces dropped."""
    return [p for p in _AFTER_PAUSE.split(text) if p.strip()]


def pypinyin_initials_finals(word: str) -> tuple[list[str], list[str]]:
    """Strict initials and FINALS_TONE3 finals (tone 5 = neutral) of ``word`` from pypinyin."""
    from pypinyin import Style, lazy_pinyin

    initials = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.INITIALS)
    finals = lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)
    return initials, finals


def merge_erhua(initials: list[str], finals: list[str], word: str, pos: str) -> tuple[list[str], list[str]]:
    """A word-final 儿 takes the tone of the syllable before it (小孩儿 -> hai2 er2), except in NOT_ERHUA."""
    if finals and len(finals) <= len(word) and word[len(finals) - 1] == "儿" and finals[-1] == "er1":
        finals[-1] = "er2"  # 儿 is never first tone
    if word not in MUST_ERHUA and (word in NOT_ERHUA or pos in _NO_ERHUA_POS):
        return initials, finals
    if len(finals) != len(word):  # pinyin did not come out one per character (e.g. "……")
        return initials, finals
    if (
        len(finals) >= 2
        and word[-1] == "儿"
        and finals[-1] in ("er2", "er5")
        and word[-2:] not in NOT_ERHUA
    ):
        finals = finals[:-1] + ["er" + finals[-2][-1]]
    return initials, finals


def syllable_phones(initial: str, final: str) -> list[str]:
    """The two phones of one pinyin syllable given as strict initial + final with tone digit."""
    body, tone = final[:-1], final[-1:]
    if tone not in ("1", "2", "3", "4", "5"):
        raise TextError(f"pinyin {initial + final!r} has no tone")
    if initial:
        syllable = initial + _CONTRACTED_FINALS.get(body, body)
    elif body in _WHOLE_ZERO_INITIAL:
        syllable = _WHOLE_ZERO_INITIAL[body]
    elif body[:1] in _ZERO_INITIAL_PREFIX:
        syllable = _ZERO_INITIAL_PREFIX[body[0]] + body[1:]
    else:
        syllable = body
    parts = split_syllable(syllable)
    if parts is None:
        raise TextError(f"pinyin syllable {syllable!r} (from {initial + final!r}) has no zh phones")
    return [parts[0], parts[1] + tone]


def _piece_initials_finals(piece: str, pinyin_source, erhua: bool) -> tuple[list[str], list[str]]:
    words = merge_words([(w, p) for w, p in jieba_module().posseg.lcut(piece)])
    logger.debug("words of %r: %s", piece, words)
    if pinyin_source is not None:
        sentence_pinyin = pinyin_source.sentence_pinyin(piece)
    initials: list[str] = []
    finals: list[str] = []
    offset = 0
    for word, pos in words:
        start, offset = offset, offset + len(word)
        if pos == "eng":
            continue
        if pinyin_source is None:
            word_initials, word_finals = pypinyin_initials_finals(word)
        else:
            word_initials, word_finals = pinyin_source.word_initials_finals(word, sentence_pinyin, start)
        if "" in word_finals:  # e.g. 噷 (hm): no final, upstream fails on it further down
            raise TextError(f"no Mandarin reading with a final for {word!r}")
        word_finals = apply_sandhi(word, pos, word_finals)
        if erhua:
            word_initials, word_finals = merge_erhua(word_initials, word_finals, word, pos)
        initials += word_initials
        finals += word_finals
    return initials, finals


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    """Phones and word2ph of normalised Mandarin text, pinyin from pypinyin (upstream's default here)."""
    return phonemize(norm_text)


def phonemize(norm_text: str, pinyin_source=None, erhua: bool = True) -> tuple[list[str], list[int]]:
    """Phones and word2ph of normalised Mandarin text (pypinyin unless ``pinyin_source`` is given).

    ``pinyin_source`` is an object with ``sentence_pinyin(piece)`` (one reading per character) and
    ``word_initials_finals(word, sentence_pinyin, start)``, such as :class:`gsv.text.zh.g2pw.G2PW`.
    ``erhua=False`` skips the erhua tone rule, as upstream's v1 frontend (``chinese.py``) does.
    """
    phones: list[str] = []
    word2ph: list[int] = []
    for piece in split_pieces(norm_text):
        piece = _LATIN.sub("", piece)
        initials, finals = _piece_initials_finals(piece, pinyin_source, erhua)
        for initial, final in zip(initials, finals):
            if initial == final:  # pypinyin hands non-Hanzi back unchanged as both parts
                if initial not in _PAUSE_SET:
                    raise TextError(f"cannot read {initial!r} in {piece!r} as Mandarin")
                phones.append(initial)
                word2ph.append(1)
            else:
                phones += syllable_phones(initial, final)
                word2ph.append(2)
    return phones, word2ph
