"""English grapheme-to-phoneme conversion, behaving like upstream GPT-SoVITS v2's ``english.g2p``.

Input is normalised text (:func:`gsv.text.en.normalizer.normalize`).  Per token of nltk's
``TweetTokenizer`` (pure regular expressions, no data files), compared lower-case:

1. a token without any letter a-z (punctuation) is its own "phone";
2. a single letter is read from the dictionary, except a capital ``A`` alone, which is ``EY1``
   (the dictionary's first reading of "a" is the unstressed article ``AH0``);
3. a homograph is read by part of speech (:mod:`gsv.text.en.homographs`, rule-based tagger);
4. anything else goes through :func:`word_phones`:
   a. a dictionary word (longer than one letter);
   b. (upstream then tries its Title-case name dictionary, which we do not have);
   c. a word of at most 3 characters is spelled letter by letter (``a`` -> ``EY1``; a non-letter
      such as ``'`` stays as it is);
   d. ``<letters>'s`` is the stem plus ``S`` after a voiceless consonant, ``AH0 Z`` after a
      sibilant and ``Z`` otherwise;
   e. ``wordsegment`` splits compounds ("snorkelwhatsit" -> snorkel + whatsit) and each part goes
      through :func:`word_phones` again;
   f. a word that does not split is predicted by the neural model (:mod:`gsv.text.en.oov`).

Finally, as upstream: the model's ``<pad> <s> </s>`` and the stress-less ``UW`` are dropped,
``<unk>`` becomes ``UNK``, an apostrophe becomes ``-`` and anything else that is not a v2 phone
symbol (for example a stray emoji token) is dropped.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache

from gsv.errors import TextError
from gsv.text.en import dictionary, homographs, oov
from gsv.text.symbols import symbol_to_id

logger = logging.getLogger(__name__)

SPELL_OUT_MAX_LETTERS = 3
VOICELESS_ENDINGS = frozenset({"P", "T", "K", "F", "TH", "HH"})
SIBILANT_ENDINGS = frozenset({"S", "Z", "SH", "ZH", "CH", "JH"})
# Model outputs and word separators upstream removes before mapping to symbols.
DROPPED_PHONES = frozenset({" ", "<pad>", "UW", "</s>", "<s>"})
PHONE_REPLACEMENTS = {"<unk>": "UNK", "'": "-"}

_HAS_LETTER_RE = re.compile("[a-z]")
_POSSESSIVE_RE = re.compile(r"^([a-z]+)('s)$")


@lru_cache(maxsize=1)
def _tokenizer():
    from gsv.text.lean_imports import import_nltk

    import_nltk()  # nltk is slow and heavy to import (see lean_imports); its tokenizers need no data
    from nltk.tokenize import TweetTokenizer

    return TweetTokenizer()


def tokenize(text: str) -> list[str]:
    """Upstream's tokenisation (nltk ``TweetTokenizer`` with default options)."""
    return _tokenizer().tokenize(text)


@lru_cache(maxsize=1)
def _segmenter():
    import wordsegment  # loads its unigram/bigram tables from the package's own data files

    wordsegment.load()
    return wordsegment.segment


def segment(word: str) -> list[str]:
    """wordsegment's most likely split of ``word`` into known words (lower-case, letters/digits only)."""
    return _segmenter()(word.lower())


def letter_phones(letter: str) -> tuple[str, ...]:
    """How a single letter (a-z) is read on its own; other characters give no phones."""
    pron = dictionary.lookup(letter)
    if pron is None:
        # Only reachable with text that did not go through normalize() (e.g. "é"); upstream crashes.
        logger.debug("no reading for the character %r; dropped", letter)
        return ()
    return pron


def _spell_out(word: str) -> list[str]:
    phones: list[str] = []
    for ch in word:
        if ch == "a":
            phones.append("EY1")  # the letter name, not the article
        elif not ch.isalpha():
            phones.append(ch)
        else:
            phones.extend(letter_phones(ch))
    return phones


def _possessive(stem_phones: list[str]) -> list[str]:
    last = stem_phones[-1] if stem_phones else ""
    if last in VOICELESS_ENDINGS:
        return stem_phones + ["S"]
    if last in SIBILANT_ENDINGS:
        return stem_phones + ["AH0", "Z"]
    return stem_phones + ["Z"]


def word_phones(original: str) -> list[str]:
    """Phones of one word that is not a single letter or homograph (steps a-f of the module doc)."""
    word = original.lower()
    if len(word) > 1:
        pron = dictionary.lookup(word)
        if pron is not None:
            return list(pron)
    # Upstream would now look a Title-case word up in its name dictionary (not reproducible here).
    if len(word) <= SPELL_OUT_MAX_LETTERS:
        return _spell_out(word)
    if _POSSESSIVE_RE.match(word):
        return _possessive(word_phones(word[:-2]))
    parts = segment(word)
    if len(parts) == 1:
        return list(oov.predict(word))
    return [phone for part in parts for phone in word_phones(part)]


def raw_phones(text: str) -> list[str]:
    """Phones per token joined by " " separators, before clean-up (upstream ``en_G2p.__call__``)."""
    tokens = tokenize(text)
    table = homographs.homographs()
    out: list[str] = []
    for index, token in enumerate(tokens):
        word = token.lower()
        if _HAS_LETTER_RE.search(word) is None:
            pron = [word]
        elif len(word) == 1:
            pron = ["EY1"] if token == "A" else list(letter_phones(word))
        elif word in table:
            pron = list(homographs.choose_reading(table[word], homographs.guess_tag(tokens, index)))
        else:
            pron = word_phones(token)
        out.extend(pron)
        out.append(" ")
    return out[:-1]


def clean_phones(phones: list[str]) -> list[str]:
    """Upstream's clean-up: drop markers, map ``<unk>``/apostrophe, keep only v2 phone symbols."""
    known = symbol_to_id("v2")
    cleaned: list[str] = []
    for phone in phones:
        if phone in DROPPED_PHONES:
            continue
        if phone == "<unk>":
            phone = PHONE_REPLACEMENTS[phone]
        if phone in known:
            cleaned.append(phone)
        elif phone in PHONE_REPLACEMENTS:
            cleaned.append(PHONE_REPLACEMENTS[phone])
        else:
            logger.debug("dropping %r: not a v2 phone symbol", phone)
    return cleaned


def g2p(norm_text: str) -> tuple[list[str], None]:
    """Phones of normalised English text; English has no word2ph (None)."""
    if not isinstance(norm_text, str):
        raise TextError(f"English text must be a str, not {type(norm_text).__name__}")
    return clean_phones(raw_phones(norm_text)), None
