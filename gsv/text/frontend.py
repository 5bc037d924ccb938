"""Text preparation for synthesis: upstream's ``TextPreprocessor`` without the BERT model.

:class:`TextFrontend` turns (text, language mode, cut method) into :class:`PreparedSegment`
objects, one per sentence group the models will synthesize.  Each segment carries its phones and
symbol ids and, per language piece, what the BERT stage needs (``lang``, ``norm_text``,
``word2ph``, phone count): only ``zh`` pieces get BERT features, every other piece gets zeros
of its phone count (upstream rule, yue included).

Pipeline (upstream GPT-SoVITS v2 ``TTS_infer_pack/TextPreprocessor.py`` and ``TTS.py``):

1. target text: collapse runs of ``! ? … , . -``, pre-segment (short first sentence gets a
   leading ``。``/``.``, cut method, blank and punctuation-only pieces dropped, pieces shorter
   than 5 characters merged, terminal ``。``/``.`` added, pieces over 510 characters re-split);
   prompt text: strip newlines and add ``。``/``.`` when it does not end with a sentence mark;
2. per segment: squeeze runs of spaces, split into language pieces (:mod:`gsv.text.langsplit`),
   ``clean_text`` each piece, map phones to ids;
3. a segment with fewer than 6 phones is redone once with ``.`` prepended;
4. a segment whose normalised text is empty is skipped.

Bad input (checked before any of the above):

* characters no frontend can speak are dropped and a warning is logged: control characters
  (``\\r`` and ``\\t`` are first turned into ``\\n`` and a space), invisible format characters,
  private-use/unassigned code points, emoji and pictographs (U+2600–U+27BF, U+2B00–U+2BFF,
  U+1F000–U+1FAFF, variation selectors, emoji tags), and letters, marks or digits of scripts
  other than Latin, Greek, CJK ideographs, kana, Bopomofo and, from v2 on, Hangul;
* text longer than ``max_chars`` characters, or with nothing left to say (empty after the above
  or after normalisation), raises :class:`gsv.errors.TextError`;
* an unknown language code raises :class:`gsv.errors.UnknownLanguageError` (a TextError), an
  unknown cut method :class:`gsv.errors.OptionError`.
"""
from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from gsv.errors import TextError, UnknownLanguageError
from gsv.text import langsplit, segment
from gsv.text.cleaner import clean_text
from gsv.text.symbols import cleaned_text_to_sequence

logger = logging.getLogger(__name__)

MIN_PHONES = 6  # fewer phones than this: the segment is redone with "." in front
DEFAULT_MAX_CHARS = 10_000
RETRY_PREFIX = "."

# Language modes per symbol version (upstream's UI lists: v1 has no Korean or Cantonese).
LANGUAGE_MODES = {
    "v1": ("zh", "ja", "en", "all_zh", "all_ja", "auto"),
    "v2": langsplit.MODES,
}

# Letters, marks and decimal digits are kept when their Unicode name starts with one of these.
_KEPT_SCRIPTS = ("LATIN", "GREEK", "CJK", "HIRAGANA", "KATAKANA", "BOPOMOFO", "FULLWIDTH", "HALFWIDTH",
                 "IDEOGRAPHIC", "COMBINING", "DIGIT", "MODIFIER LETTER", "SUPERSCRIPT", "SUBSCRIPT",
                 "MICRO SIGN", "FEMININE ORDINAL", "MASCULINE ORDINAL")
_EMOJI_RANGES = ((0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F000, 0x1FAFF), (0xFE00, 0xFE0F),
                 (0xE0000, 0xE007F), (0x20E3, 0x20E3))


@dataclass(frozen=True)
class LanguagePiece:
    """One language run of a segment, cleaned: what the BERT stage needs for it."""

    lang: str  # zh / ja / en / ko / yue
    text: str  # the piece as given to clean_text
    norm_text: str
    phones: tuple[str, ...]
    ids: tuple[int, ...]
    word2ph: tuple[int, ...] | None  # zh/yue only: phones per character of norm_text

    @property
    def phone_count(self) -> int:
        return len(self.phones)

    @property
    def needs_bert(self) -> bool:
        """True for Chinese pieces; all other pieces get zero BERT features."""
        return self.lang == "zh"


@dataclass(frozen=True)
class PreparedSegment:
    """One segment ready for the models: phones/ids of all its pieces, in order."""

    text: str  # the text that was phonemised (with the "." retry prefix when retried)
    lang: str  # the language mode asked for
    pieces: tuple[LanguagePiece, ...]
    phones: tuple[str, ...]
    ids: tuple[int, ...]
    norm_text: str  # the pieces' norm_text joined
    retried: bool  # fewer than MIN_PHONES phones at first, so "." was prepended

    @property
    def phone_count(self) -> int:
        return len(self.ids)


def _in_emoji_range(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _EMOJI_RANGES)


@lru_cache(maxsize=4096)
def _speakable(ch: str, hangul: bool) -> bool:
    if ch in "\n ":
        return True
    cp = ord(ch)
    if _in_emoji_range(cp):
        return False
    cat = unicodedata.category(ch)
    if cat[0] == "C":  # control, format, surrogate, private use, unassigned
        return False
    if cat[0] in "LM" or cat == "Nd":
        name = unicodedata.name(ch, "")
        if name.startswith("HANGUL"):
            return hangul
        return name.startswith(_KEPT_SCRIPTS)
    return True  # punctuation, symbols and spaces: the language modules decide


class TextFrontend:
    """Text -> prepared segments, for one symbol version (``"v1"`` or ``"v2"``).

    ``max_chars``: longest accepted input (TextError beyond).  ``ja_user_dict`` /
    ``ja_cache_dir``: an optional Japanese user dictionary CSV and where to compile it (see
    :class:`gsv.text.ja.JapaneseG2P`); by default the bundled dictionary alone is used.
    Instances hold no per-request state and may be shared between threads.
    """

    def __init__(self, version: str = "v2", *, max_chars: int = DEFAULT_MAX_CHARS,
                 ja_user_dict=None, ja_cache_dir=None):
        if version not in LANGUAGE_MODES:
            raise UnknownLanguageError(f"unknown symbol version {version!r} (expected v1 or v2)")
        self.version = version
        self.max_chars = max_chars
        self._modules = {}
        if ja_user_dict is not None:
            from gsv.text.ja import JapaneseG2P

            self._modules["ja"] = JapaneseG2P(user_dict=ja_user_dict, cache_dir=ja_cache_dir)

    # -- checks ---------------------------------------------------------------------------------
    def check_language(self, lang: str) -> None:
        modes = LANGUAGE_MODES[self.version]
        if lang not in modes:
            raise UnknownLanguageError(f"unknown language {lang!r} for {self.version} (expected one of {', '.join(modes)})")

    def sanitize(self, text: str) -> str:
        """Drop what cannot be spoken (logged), after the length check; see the module docstring."""
        if len(text) > self.max_chars:
            raise TextError(f"text too long: {len(text)} characters (the limit is {self.max_chars})")
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
        hangul = self.version != "v1"
        kept = []
        dropped: dict[str, int] = {}
        for ch in text:
            if _speakable(ch, hangul):
                kept.append(ch)
            else:
                dropped[ch] = dropped.get(ch, 0) + 1
        if dropped:
            shown = ", ".join(f"U+{ord(c):04X}" + (f" {c!r}" if c.isprintable() else "") for c in list(dropped)[:8])
            logger.warning("dropped %d character(s) that cannot be spoken: %s%s", sum(dropped.values()), shown,
                           " ..." if len(dropped) > 8 else "")
        out = "".join(kept)
        if not out.strip():
            raise TextError("no text to synthesize (nothing speakable in the input)")
        return out

    # -- target text ----------------------------------------------------------------------------
    def segments(self, text: str, lang: str, cut_method: str = "cut1") -> list[str]:
        """The segment texts of the target ``text`` (sanitised, then upstream's pre-segmentation)."""
        self.check_language(lang)
        segment.get_method(cut_method)
        return segment.preprocess_segments(self.sanitize(text), lang, cut_method)

    def prepare(self, text: str, lang: str, cut_method: str = "cut1") -> list[PreparedSegment]:
        """Target text -> prepared segments in reading order (upstream ``preprocess``)."""
        out = []
        for seg in self.segments(text, lang, cut_method):
            prepared = self.prepare_segment(seg, lang)
            if not prepared.norm_text:
                logger.info("skipping segment %r: nothing left after normalisation", seg)
                continue
            out.append(prepared)
        if not out:
            raise TextError("no text to synthesize (the text is empty after normalisation)")
        return out

    # -- prompt text ----------------------------------------------------------------------------
    def prepare_prompt(self, text: str, lang: str) -> PreparedSegment:
        """Prompt (reference) text -> one prepared segment, with upstream's terminal-mark rule."""
        self.check_language(lang)
        text = segment.prepare_prompt_text(self.sanitize(text), lang)
        prepared = self.prepare_segment(text, lang)
        if not prepared.norm_text:
            raise TextError("the prompt text is empty after normalisation")
        return prepared

    # -- one segment ----------------------------------------------------------------------------
    def prepare_segment(self, text: str, lang: str) -> PreparedSegment:
        """One segment's phones (upstream ``get_phones_and_bert`` minus BERT), with the retry rule."""
        self.check_language(lang)
        prepared = self._phonemise(text, lang, retried=False)
        if len(prepared.ids) < MIN_PHONES:
            # Very short inputs are said badly; upstream redoes them once with a leading pause.
            prepared = self._phonemise(RETRY_PREFIX + text, lang, retried=True)
        return prepared

    def clean_piece(self, text: str, lang: str) -> LanguagePiece:
        """``clean_text`` + ids for one piece of a single language (zh/ja/en/ko/yue)."""
        cleaned = clean_text(text, lang, self.version, module=self._modules.get(lang))
        ids = cleaned_text_to_sequence(cleaned.phones, self.version)
        word2ph = None if cleaned.word2ph is None else tuple(cleaned.word2ph)
        return LanguagePiece(lang, text, cleaned.norm_text, tuple(cleaned.phones), tuple(ids), word2ph)

    def _phonemise(self, text: str, lang: str, retried: bool) -> PreparedSegment:
        pieces = tuple(self.clean_piece(p.text, p.lang) for p in langsplit.split(text, lang))
        return PreparedSegment(
            text=text,
            lang=lang,
            pieces=pieces,
            phones=tuple(ph for p in pieces for ph in p.phones),
            ids=tuple(i for p in pieces for i in p.ids),
            norm_text="".join(p.norm_text for p in pieces),
            retried=retried,
        )
