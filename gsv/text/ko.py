"""Korean frontend: g2pk2 pronunciation, split into compatibility jamo, as upstream GPT-SoVITS v2.

Rules reproduced (upstream ``GPT_SoVITS/text/korean.py``; Korean has no normaliser there, so
``normalize`` returns the text unchanged):

1. Latin letters become the Hangul names of the letters (``a`` -> 에이, ``w`` -> 더블유, ...),
   case-insensitively (this includes the few non-ASCII characters Python's case-insensitive
   matching equates with ASCII letters: İ ı K ſ).
2. g2pk2 (with python-mecab-ko) applies the Korean pronunciation rules; it also spells out
   Arabic numbers (sino or native depending on the counter).
3. The result is decomposed into compatibility jamo, and compound vowels are split into two
   simple ones (ㅘ -> ㅗㅏ, ㅕ -> ㅣㅓ, ...).
4. A g2pk2 liquidisation error is undone: ``ㅇㅡㄹ ㄹ``/``ㄹㅡㄹ ㄹ`` -> ``... ㄴ``.
5. A text that ends in a jamo gets ``.`` appended.
6. Every character is one phone: CJK punctuation maps to ``, . ! ?``, a space is ``空`` and any
   character that is not a v2 symbol is ``停``.

g2pk2 is imported lazily.  Its import looks for NLTK's ``cmudict`` corpus and would try to
download it; the download is suppressed here (the corpus is only used for English words, and
step 1 removes every Latin letter before g2pk2 runs).  If g2pk2, mecab or jamo is missing, using
this module raises :class:`gsv.errors.UnknownLanguageError` ("ko is not built").
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading

from gsv.errors import UnknownLanguageError

logger = logging.getLogger(__name__)

_LETTER_NAMES = {
    "a": "에이", "b": "비", "c": "시", "d": "디", "e": "이", "f": "에프", "g": "지", "h": "에이치",
    "i": "아이", "j": "제이", "k": "케이", "l": "엘", "m": "엠", "n": "엔", "o": "오", "p": "피",
    "q": "큐", "r": "아르", "s": "에스", "t": "티", "u": "유", "v": "브이", "w": "더블유", "x": "엑스",
    "y": "와이", "z": "제트",
}
# Characters that match an ASCII letter under Python's case-insensitive regex matching.
_CASEFOLD_EXTRAS = {"\u0130": "i", "\u0131": "i", "\u212a": "k", "\u017f": "s"}
_LATIN_TABLE = {ord(c): name for c, name in _LETTER_NAMES.items()}
_LATIN_TABLE.update({ord(c.upper()): name for c, name in _LETTER_NAMES.items()})
_LATIN_TABLE.update({ord(c): _LETTER_NAMES[base] for c, base in _CASEFOLD_EXTRAS.items()})

# Compound vowels spoken as a glide + vowel: each becomes two simple vowels.
_VOWEL_SPLIT = str.maketrans({
    "ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
    "ㅑ": "ㅣㅏ", "ㅒ": "ㅣㅐ", "ㅕ": "ㅣㅓ", "ㅖ": "ㅣㅔ", "ㅛ": "ㅣㅗ", "ㅠ": "ㅣㅜ",
})
_MARK_TO_PHONE = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    " ": "空",
}
SPACE_PHONE = "空"
UNKNOWN_PHONE = "停"
# A trailing jamo gets a full stop (``$`` also matches before a final newline, as upstream).
_TRAILING_JAMO = re.compile(r"([\u3131-\u3163])$")

_g2p_instance = None
_g2p_lock = threading.Lock()


def latin_to_hangul(text: str) -> str:
    return text.translate(_LATIN_TABLE)


def undo_liquidisation_error(text: str) -> str:
    """``ㅇㅡㄹ ㄹ`` / ``ㄹㅡㄹ ㄹ`` -> ``ㅇㅡㄹ ㄴ`` / ``ㄹㅡㄹ ㄴ`` (a g2pk2 over-application)."""
    out = []
    i = 0
    n = len(text)
    while i < n - 4:
        if text[i:i + 3] in ("ㅇㅡㄹ", "ㄹㅡㄹ") and text[i + 3] == " " and text[i + 4] == "ㄹ":
            out.append(text[i:i + 3] + " ㄴ")
            i += 5
        else:
            out.append(text[i])
            i += 1
    out.append(text[i:])
    return "".join(out)


@contextlib.contextmanager
def _no_nltk_download():
    """Make ``nltk.download`` a logged no-op while g2pk2 is imported (no network at run time)."""
    from gsv.text.lean_imports import import_nltk

    nltk = import_nltk()

    original = nltk.download

    def _refuse(*args, **kwargs):
        logger.debug("suppressed nltk.download%r during g2pk2 import", args)
        return False

    nltk.download = _refuse
    try:
        yield
    finally:
        nltk.download = original


def _pronouncer():
    """A g2pk2 ``G2p`` set up without its side effects (pip installs, prints, corpus loads)."""
    global _g2p_instance
    if _g2p_instance is not None:
        return _g2p_instance
    with _g2p_lock:
        if _g2p_instance is not None:
            return _g2p_instance
        try:
            import jamo  # noqa: F401  (needed by g2pk2 and by the jamo split below)
            import mecab

            with _no_nltk_download():
                from g2pk2 import G2p
                from g2pk2.utils import get_rule_id2text, parse_table
                import g2pk2.g2pk2 as g2pk2_module
        except ImportError as e:
            raise UnknownLanguageError(f"ko is not built: missing dependency ({e})") from None
        # G2p.__init__ would probe/install packages, print, and load NLTK's cmudict; the
        # instance is assembled by hand instead.  An empty English dictionary is what the
        # golden cases were made with, and Latin letters never reach g2pk2 anyway.
        g = G2p.__new__(G2p)
        g.use_konlpy = False
        g.mecab_path = None
        try:
            g.mecab = mecab.MeCab()
        except Exception as e:  # a broken dictionary install, for instance
            raise UnknownLanguageError(f"ko is not built: mecab-ko could not start ({e})") from None
        g.table = parse_table()
        g.cmu = {}
        g.rule2text = get_rule_id2text()
        g.idioms_path = os.path.join(os.path.dirname(os.path.abspath(g2pk2_module.__file__)), "idioms.txt")
        _g2p_instance = g
        return g


def _symbols() -> dict[str, int]:
    from gsv.text.symbols import symbol_to_id

    return symbol_to_id("v2")


def normalize(text: str) -> str:
    """Korean has no normalisation step upstream: the text is returned unchanged."""
    return text


def g2p(norm_text: str) -> tuple[list[str], None]:
    from jamo import h2j, j2hcj

    pron = _pronouncer()(latin_to_hangul(norm_text))
    text = j2hcj(h2j(pron)).translate(_VOWEL_SPLIT)
    text = undo_liquidisation_error(text)
    text = _TRAILING_JAMO.sub(r"\1.", text)
    table = _symbols()
    phones = []
    for ch in text:
        ph = _MARK_TO_PHONE.get(ch, ch)
        phones.append(ph if ph in table else UNKNOWN_PHONE)
    return phones, None
