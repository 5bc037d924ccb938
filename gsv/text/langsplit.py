"""Split mixed-language text into (language, text) pieces, like upstream's LangSegmenter.

Upstream (``GPT_SoVITS/text/LangSegmenter``) cuts the text with ``split_lang`` and labels the
pieces with a downloaded fastText model.  No model may be downloaded here, so the language of a
piece is decided from the scripts it is written in.  The rest of upstream's logic (how digits
are attached, how each mode relabels and merges pieces) is reproduced.

Detection rule (modes ``auto``/``auto_yue``; the other modes only need "English or not"):

* kana (hiragana, katakana incl. ``ー``, half-width katakana) -> ``ja``;
* Hangul (syllables and jamo) -> ``ko``;
* Latin letters (ASCII and accented Latin) -> ``en``;
* Han ideographs (and ``々 〇``) and full-width Latin letters -> ``ja`` when the *sentence* they
  are in also contains kana, otherwise ``zh``.  A sentence ends at ``。．！？!?…``, a newline, or
  a ``.`` that is not a decimal point.  So a Japanese sentence written only in kanji reads as
  Chinese in ``auto`` mode: choose ``ja`` for Japanese text;
* digits (``0-9``, full-width digits, with ``. , :`` between digits) are a separate piece whose
  language is then chosen by upstream's rules (:func:`_resolve_digits`): the neighbour's language
  when both neighbours agree, else the side a sentence mark points to, else the longer
  neighbour;
* everything else (spaces, punctuation, symbols) joins the piece before it (the first piece when
  it leads the text).

Modes (upstream ``TextPreprocessor.get_phones_and_bert``):

* ``en``: the whole text is English.
* ``zh``/``ja``/``ko``/``yue``: English pieces stay English; every run of non-English pieces is
  merged into one piece of the chosen language.
* ``all_zh``/``all_ja``/``all_ko``/``all_yue``: English pieces stay English, digits and all other
  pieces take the chosen language.
* ``auto``: the detected languages; ``auto_yue``: the same with ``zh`` read as ``yue``.

Runs of two or more spaces are first squeezed to one space (upstream does this too).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gsv.errors import UnknownLanguageError

MIXED_MODES = ("zh", "ja", "ko", "yue")
FORCED_MODES = ("all_zh", "all_ja", "all_ko", "all_yue")
AUTO_MODES = ("auto", "auto_yue")
MODES = ("en",) + MIXED_MODES + FORCED_MODES + AUTO_MODES

_SPACES = re.compile(r" {2,}")
_SENTENCE_END = frozenset("。．！？!?…\n")
_DIGIT_JOINERS = frozenset(".,:")
# Marks that, at the edge of a neighbour, tell which side a digit run belongs to.
_CLAUSE_MARKS = frozenset(",.!?，。！？")

_KANA, _HANGUL, _LATIN, _HAN, _DIGIT, _NEUTRAL = "kana", "hangul", "latin", "han", "digit", "neutral"


@dataclass(frozen=True)
class LangPiece:
    lang: str  # zh / ja / ko / yue / en
    text: str


def _char_class(ch: str) -> str:
    o = ord(ch)
    if "0" <= ch <= "9" or 0xFF10 <= o <= 0xFF19:
        return _DIGIT
    if ("a" <= ch <= "z") or ("A" <= ch <= "Z"):
        return _LATIN
    if o < 0x80:
        return _NEUTRAL
    if 0x3041 <= o <= 0x309F or 0x30A0 <= o <= 0x30FA or 0x30FC <= o <= 0x30FF \
            or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F:
        return _KANA
    if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F \
            or 0xA960 <= o <= 0xA97F or 0xD7B0 <= o <= 0xD7FF or 0xFFA0 <= o <= 0xFFDC:
        return _HANGUL
    if 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF \
            or 0x20000 <= o <= 0x323AF or ch in "々〇〻":
        return _HAN
    if 0xFF21 <= o <= 0xFF3A or 0xFF41 <= o <= 0xFF5A:
        return _HAN  # full-width Latin is CJK typography: it follows the surrounding CJK text
    if (0xC0 <= o <= 0x24F and o not in (0xD7, 0xF7)) or 0x1E00 <= o <= 0x1EFF:
        return _LATIN
    return _NEUTRAL


def _classes(text: str) -> list[str]:
    classes = [_char_class(ch) for ch in text]
    # A decimal point / thousands separator between two digits belongs to the number.
    for i in range(1, len(text) - 1):
        if text[i] in _DIGIT_JOINERS and classes[i - 1] == _DIGIT and classes[i + 1] == _DIGIT:
            classes[i] = _DIGIT
    return classes


def _sentence_ids(text: str, classes: list[str]) -> list[int]:
    ids = []
    current = 0
    for ch, cls in zip(text, classes):
        ids.append(current)
        if cls == _NEUTRAL and (ch in _SENTENCE_END or ch == "."):
            current += 1
    return ids


def _detect(text: str) -> list[dict]:
    """Script-labelled pieces (lang in zh/ja/ko/en/digit), neutrals attached, adjacent merged."""
    classes = _classes(text)
    sentence = _sentence_ids(text, classes)
    kana_sentences = {sentence[i] for i, c in enumerate(classes) if c == _KANA}
    labels = []
    for i, cls in enumerate(classes):
        if cls == _KANA:
            labels.append("ja")
        elif cls == _HANGUL:
            labels.append("ko")
        elif cls == _LATIN:
            labels.append("en")
        elif cls == _HAN:
            labels.append("ja" if sentence[i] in kana_sentences else "zh")
        elif cls == _DIGIT:
            labels.append("digit")
        else:
            labels.append(None)
    pieces: list[dict] = []
    leading = ""
    for ch, label in zip(text, labels):
        if label is None:  # punctuation/space: stays with the piece before it
            if pieces:
                pieces[-1]["text"] += ch
            else:
                leading += ch
        elif pieces and pieces[-1]["lang"] == label:
            pieces[-1]["text"] += ch
        else:
            pieces.append({"lang": label, "text": ch})
    if leading:
        if pieces:
            pieces[0]["text"] = leading + pieces[0]["text"]
        else:
            pieces.append({"lang": None, "text": leading})
    return pieces


def _merge(pieces: list[dict], item: dict) -> list[dict]:
    if pieces and pieces[-1]["lang"] == item["lang"]:
        pieces[-1]["text"] += item["text"]
    else:
        pieces.append(item)
    return pieces


def _resolve_digits(pieces: list[dict]) -> list[dict]:
    """Give each digit piece a language, with upstream's neighbour rules."""
    out: list[dict] = []
    last = len(pieces) - 1
    for i, item in enumerate(pieces):
        if item["lang"] == "digit":
            item = dict(item)
            if out and i == last:
                item["lang"] = out[-1]["lang"]
            elif not out and i < last:
                item["lang"] = pieces[1]["lang"]
            elif out and i < last:
                before, after = out[-1], pieces[i + 1]
                if before["lang"] == after["lang"]:
                    item["lang"] = before["lang"]
                elif before["text"][-1] in _CLAUSE_MARKS:
                    item["lang"] = after["lang"]
                elif after["text"][0] in _CLAUSE_MARKS:
                    item["lang"] = before["lang"]
                elif item["text"][-1] in "。.":
                    item["lang"] = before["lang"]
                elif len(before["text"]) >= len(after["text"]):
                    item["lang"] = before["lang"]
                else:
                    item["lang"] = after["lang"]
            else:
                item["lang"] = "zh"  # a text made of a number only
        _merge(out, item)
    return out


def split(text: str, mode: str) -> list[LangPiece]:
    """Split ``text`` for language mode ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise UnknownLanguageError(f"unknown language {mode!r} (expected one of {', '.join(MODES)})")
    text = _SPACES.sub(" ", text)
    if not text:
        return []
    if mode == "en":
        return [LangPiece("en", text)]
    pieces = _detect(text)
    if mode in FORCED_MODES:
        base = mode[len("all_"):]
        forced: list[dict] = []
        for item in pieces:
            _merge(forced, {"lang": "en" if item["lang"] == "en" else base, "text": item["text"]})
        pieces = forced
    else:
        if pieces and pieces[0]["lang"] is None:  # punctuation-only text
            pieces = [{"lang": "zh", "text": pieces[0]["text"]}]
        if any(p["lang"] == "digit" for p in pieces):
            pieces = _resolve_digits(pieces)
        if mode in MIXED_MODES:
            merged: list[dict] = []
            for item in pieces:
                _merge(merged, {"lang": "en" if item["lang"] == "en" else mode, "text": item["text"]})
            pieces = merged
    if mode.endswith("yue"):
        pieces = [{"lang": "yue" if p["lang"] == "zh" else p["lang"], "text": p["text"]} for p in pieces]
    return [LangPiece(p["lang"], p["text"]) for p in pieces]
