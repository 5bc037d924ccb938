"""Mandarin tone sandhi on jieba words, as upstream GPT-SoVITS (PaddleSpeech's ``ToneSandhi``) does it.

Two stages:

* :func:`merge_words` regroups the jieba segmentation so that the rules see whole units: 不 joins the
  next word, 一 joins its neighbours (听一听) or the next word, reduplications and short runs of
  third tones are merged, and 儿 joins the word before it;
* :func:`apply_sandhi` rewrites the tone digits of one word's finals (``["i1", "an4"]``-style, tone
  5 = neutral): 不 before a fourth tone -> bu2, 一 -> yi2/yi4/yi5 by context, neutral tones of
  particles, suffixes, reduplicated nouns/verbs and a fixed word list, and third-tone chains
  (3-3 -> 2-3, split by the word's internal structure).

The logic deliberately reproduces upstream's behaviour, including the places where it is odd
(index arithmetic in the 一 merge, a failed merge silently keeping the previous segmentation),
because the phones must match upstream's exactly.
"""
from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from importlib import resources

logger = logging.getLogger(__name__)

Word = list  # [word, jieba POS flag]; a list so that merges can extend it in place

# Sentence-final particles read in the neutral tone.
_NEUTRAL_PARTICLES = "吧呢哈啊呐噻嘛吖嗨呐哦哒额滴哩哟喽啰耶喔诶"
_STRUCTURAL_PARTICLES = "的地得"
_ASPECT_PARTICLES = "了着过"
_ASPECT_POS = {"ul", "uz", "ug"}
_PLURAL_SUFFIXES = "们子"
_PLACE_SUFFIXES = "上下里"
_PLACE_POS = {"s", "l", "f"}
_DIRECTION_ENDINGS = "来去"
_DIRECTION_VERBS = "上下进出回过起开"
_MEASURE_GE_BEFORE = "几有两半多各整每做是"  # 个 after these (or a numeral) is a measure word
# After 一, these marks keep it in the first tone ("一，").
_PUNCTUATION = "：，；。？！“”‘’':,;.?!"


def _word_list(name: str) -> frozenset[str]:
    text = resources.files("gsv.text.zh").joinpath(f"data/{name}").read_text("utf-8")
    return frozenset(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


@lru_cache(maxsize=1)
def neutral_tone_words() -> frozenset[str]:
    """Words (or word endings) whose last syllable is neutral: 东西, 喜欢, 朋友, ..."""
    return _word_list("neutral_tone_words.txt")


@lru_cache(maxsize=1)
def not_neutral_tone_words() -> frozenset[str]:
    """Words exempt from the reduplication and 们/子 neutral-tone rules: 人人, 男子, 想想, ..."""
    return _word_list("not_neutral_tone_words.txt")


@lru_cache(maxsize=1)
def jieba_module():
    """jieba_fast (upstream's segmenter), imported on first use and kept quiet."""
    with warnings.catch_warnings():
        # jieba_fast imports the deprecated pkg_resources; nothing for our users to act on.
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        import jieba_fast
        import jieba_fast.posseg

    jieba_fast.setLogLevel(logging.WARNING)  # its dictionary-loading chatter is DEBUG on stderr
    return jieba_fast


def _finals_tone3(word: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(word, neutral_tone_with_five=True, style=Style.FINALS_TONE3)


def _retone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_third(finals: list[str]) -> bool:
    return all(f[-1] == "3" for f in finals)


def split_word(word: str) -> list[str]:
    """Split a word in two at its shortest search-mode sub-word (upstream ``_split_word``)."""
    parts = sorted(jieba_module().cut_for_search(word), key=len)  # stable: ties keep jieba's order
    shortest = parts[0]
    if word.find(shortest) == 0:
        return [shortest, word[len(shortest):]]
    # Otherwise it is taken to be the end of the word, whether or not it really is.
    return [word[: -len(shortest)], shortest]


# --- per-word rules ---------------------------------------------------------------------------------


def _bu_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 3 and word[1] == "不":  # 看不懂: the middle 不 is neutral
        finals[1] = _retone(finals[1], "5")
        return finals
    for i, ch in enumerate(word):
        if ch == "不" and i + 1 < len(word) and finals[i + 1][-1] == "4":
            finals[i] = _retone(finals[i], "2")  # 不怕
    return finals


def _yi_sandhi(word: str, finals: list[str]) -> list[str]:
    if "一" in word and all(ch.isnumeric() for ch in word if ch != "一"):
        return finals  # a number: 一零一, 十一
    if len(word) == 3 and word[1] == "一" and word[0] == word[-1]:
        finals[1] = _retone(finals[1], "5")  # 看一看
    elif word.startswith("第一"):
        finals[1] = _retone(finals[1], "1")  # ordinal
    else:
        for i, ch in enumerate(word):
            if ch == "一" and i + 1 < len(word):
                if finals[i + 1][-1] == "4":
                    finals[i] = _retone(finals[i], "2")  # 一段
                elif word[i + 1] not in _PUNCTUATION:
                    finals[i] = _retone(finals[i], "4")  # 一天
    return finals


def _is_measure_ge(word: str, ge_idx: int) -> bool:
    if word == "个":
        return True
    return ge_idx >= 1 and (word[ge_idx - 1].isnumeric() or word[ge_idx - 1] in _MEASURE_GE_BEFORE)


def _neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    exempt = word in not_neutral_tone_words()
    # Reduplicated nouns, verbs and adjectives: 奶奶, 试试, 看看.
    if pos[0] in "nva" and not exempt:
        for j in range(1, len(word)):
            if word[j] == word[j - 1]:
                finals[j] = _retone(finals[j], "5")
    neutral_list = neutral_tone_words()
    ge_idx = word.find("个")
    last = word[-1:]
    if last and last in _NEUTRAL_PARTICLES:
        finals[-1] = _retone(finals[-1], "5")
    elif last and last in _STRUCTURAL_PARTICLES:
        finals[-1] = _retone(finals[-1], "5")
    elif len(word) == 1 and word in _ASPECT_PARTICLES and pos in _ASPECT_POS:
        finals[-1] = _retone(finals[-1], "5")  # 走了, 看着, 去过
    elif len(word) > 1 and last in _PLURAL_SUFFIXES and pos in {"r", "n"} and not exempt:
        finals[-1] = _retone(finals[-1], "5")  # 我们, 桌子
    elif len(word) > 1 and last in _PLACE_SUFFIXES and pos in _PLACE_POS:
        finals[-1] = _retone(finals[-1], "5")  # 桌上, 家里
    elif len(word) > 1 and last in _DIRECTION_ENDINGS and word[-2] in _DIRECTION_VERBS:
        finals[-1] = _retone(finals[-1], "5")  # 上来, 出去
    elif _is_measure_ge(word, ge_idx):
        finals[ge_idx] = _retone(finals[ge_idx], "5")  # 一个, 这个 (as a measure word)
    elif word in neutral_list or word[-2:] in neutral_list:
        finals[-1] = _retone(finals[-1], "5")
    # The word-list rule again, on each half of the word (东西 inside 买东西).
    halves = split_word(word)
    cut = len(halves[0])
    pieces = [finals[:cut], finals[cut:]]
    for half, piece in zip(halves, pieces):
        if half in neutral_list or half[-2:] in neutral_list:
            piece[-1] = _retone(piece[-1], "5")
    return pieces[0] + pieces[1]


def _three_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 2 and _all_third(finals):
        finals[0] = _retone(finals[0], "2")
    elif len(word) == 3:
        halves = split_word(word)
        if _all_third(finals):
            if len(halves[0]) == 2:  # 蒙古/包: 2 2 3
                finals[0] = _retone(finals[0], "2")
                finals[1] = _retone(finals[1], "2")
            elif len(halves[0]) == 1:  # 纸/老虎: 3 2 3
                finals[1] = _retone(finals[1], "2")
        else:
            cut = len(halves[0])
            first, second = finals[:cut], finals[cut:]
            if _all_third(first) and len(first) == 2:  # 所有/人
                first[0] = _retone(first[0], "2")
            if _all_third(second) and len(second) == 2:
                second[0] = _retone(second[0], "2")
            elif not _all_third(second) and second[0][-1] == "3" and first[-1][-1] == "3":
                first[-1] = _retone(first[-1], "2")  # 好/喜欢
            finals = first + second
    elif len(word) == 4:  # idioms: two halves of two syllables each
        first, second = finals[:2], finals[2:]
        for half in (first, second):
            if _all_third(half):
                half[0] = _retone(half[0], "2")
        finals = first + second
    return finals


def apply_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    """Tone-sandhi'd finals of ``word`` (POS ``pos``); ``finals`` is FINALS_TONE3 with tone 5 = neutral."""
    finals = _bu_sandhi(word, finals)
    finals = _yi_sandhi(word, finals)
    finals = _neutral_sandhi(word, pos, finals)
    return _three_sandhi(word, finals)


# --- regrouping jieba words ------------------------------------------------------------------------


def _merge_bu(seg: list[Word]) -> list[Word]:
    merged: list[Word] = []
    previous = ""
    for word, pos in seg:
        if previous == "不":
            word = previous + word
        if word != "不":
            merged.append([word, pos])
        previous = word
    if previous == "不":  # a final 不 on its own
        merged.append(["不", "d"])
    return merged


def _merge_yi(seg: list[Word]) -> list[Word]:
    # 1. verb 一 verb -> one word (听一听). Upstream indexes the output by the input position,
    #    which drifts after a merge; reproduce that, IndexError included (handled by the caller).
    out: list[Word] = []
    for i, (word, pos) in enumerate(seg):
        around = 0 < i < len(seg) - 1
        if around and word == "一" and seg[i - 1][0] == seg[i + 1][0] and seg[i - 1][1] == "v" == seg[i + 1][1]:
            out[i - 1][0] = out[i - 1][0] + "一" + out[i - 1][0]
        elif i >= 2 and seg[i - 1][0] == "一" and seg[i - 2][0] == word and pos == "v" == seg[i - 2][1]:
            continue  # the second verb, already merged
        else:
            out.append([word, pos])
    # 2. a lone 一 joins the word after it.
    merged: list[Word] = []
    for word, pos in out:
        if merged and merged[-1][0] == "一":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _merge_reduplication(seg: list[Word]) -> list[Word]:
    merged: list[Word] = []
    for word, pos in seg:
        if merged and word == merged[-1][0]:
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _merge_third_tones(seg: list[Word], whole_words: bool) -> list[Word]:
    """Join neighbours that meet on third tones (whole words all third, or just at the seam)."""
    finals = [_finals_tone3(word) for word, _ in seg]
    merged: list[Word] = []
    joined_previous = False
    for i, (word, pos) in enumerate(seg):
        if whole_words:
            meets = i > 0 and _all_third(finals[i - 1]) and _all_third(finals[i])
        else:
            meets = i > 0 and finals[i - 1][-1][-1] == "3" and finals[i][0][-1] == "3"
        joined = False
        if meets and not joined_previous:
            before = seg[i - 1][0]
            # A reduplication stays separate: it needs its own neutral-tone rule.
            if not (len(before) == 2 and before[0] == before[1]) and len(before) + len(word) <= 3:
                merged[-1][0] += word
                joined = True
        if not joined:
            merged.append([word, pos])
        joined_previous = joined
    return merged


def _merge_er(seg: list[Word]) -> list[Word]:
    merged: list[Word] = []
    for i, (word, pos) in enumerate(seg):
        if i > 0 and word == "儿" and seg[i - 1][0] != "#":
            merged[-1][0] += word
        else:
            merged.append([word, pos])
    return merged


def _try_merge(step, seg: list[Word]) -> list[Word]:
    # Upstream wraps these merges in a bare try/except and keeps the old segmentation on failure.
    try:
        return step(seg)
    except (IndexError, KeyError, TypeError) as e:
        logger.debug("%s failed (%s); keeping the previous segmentation", step.__name__, e)
        return seg


def merge_words(seg: list[tuple[str, str]]) -> list[Word]:
    """Regroup jieba's (word, POS) list before sandhi (upstream ``pre_merge_for_modify``)."""
    words = _merge_bu([[w, p] for w, p in seg])
    words = _try_merge(_merge_yi, words)
    words = _merge_reduplication(words)
    words = _try_merge(lambda s: _merge_third_tones(s, whole_words=True), words)
    words = _try_merge(lambda s: _merge_third_tones(s, whole_words=False), words)
    return _merge_er(words)
