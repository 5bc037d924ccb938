"""``clean_text``: one language's text -> (phones, word2ph, norm_text), as upstream's v2 cleaner.

Each language lives in its own module exposing two functions:

* ``normalize(text: str) -> str``: the language's normalisation (its ``norm_text``);
* ``g2p(norm_text: str) -> tuple[list[str], list[int] | None]``: phones, and for zh/yue the
  number of phones per character of ``norm_text`` (``word2ph``; ``None`` for other languages).

Modules are imported lazily so that using one language never loads another's dictionaries.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from gsv.errors import UnknownLanguageError
from gsv.text.symbols import UNK, symbol_to_id

# Language code -> module; v1 checkpoints only know zh/ja/en.
LANGUAGE_MODULES = {
    "v1": {"zh": "gsv.text.zh.v1", "ja": "gsv.text.ja", "en": "gsv.text.en"},
    "v2": {"zh": "gsv.text.zh", "ja": "gsv.text.ja", "en": "gsv.text.en", "ko": "gsv.text.ko", "yue": "gsv.text.yue"},
}
# Upstream's "special" pause marks: in zh text, every comma-class pause becomes SP2 (with ￥) or SP3 (with ^).
SPECIAL_PAUSES = (("￥", "zh", "SP2"), ("^", "zh", "SP3"))
EN_MIN_PHONES = 4  # English with fewer phones gets "," prepended (upstream clean_text)


@dataclass(frozen=True)
class CleanedText:
    phones: list[str]
    word2ph: list[int] | None
    norm_text: str


def language_module(lang: str, version: str = "v2"):
    """The frontend module of ``lang``; UnknownLanguageError for a code this build cannot speak."""
    table = LANGUAGE_MODULES.get(version)
    if table is None:
        raise UnknownLanguageError(f"unknown symbol version {version!r}")
    name = table.get(lang)
    if name is None:
        raise UnknownLanguageError(
            f"unknown language {lang!r} for {version} (supported: {', '.join(sorted(table))})"
        )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(name):
            raise UnknownLanguageError(f"language {lang!r} is not built into this version of gsv") from None
        raise


def clean_text(text: str, lang: str, version: str = "v2", *, module=None) -> CleanedText:
    """Normalise and phonemise ``text`` of one language, mapping unknown phones to UNK.

    ``module`` replaces the language's default frontend module by any object with the same
    ``normalize``/``g2p`` functions (e.g. a :class:`gsv.text.ja.JapaneseG2P` with a user
    dictionary); the language code still decides the language-specific rules below.
    """
    if module is None:
        module = language_module(lang, version)
    elif lang not in LANGUAGE_MODULES.get(version, {}):
        language_module(lang, version)  # raises UnknownLanguageError with the usual message
    for mark, mark_lang, symbol in SPECIAL_PAUSES:
        if mark in text and lang == mark_lang:
            return _clean_special(module, text, mark, symbol, version)
    norm_text = module.normalize(text)
    phones, word2ph = module.g2p(norm_text)
    if word2ph is not None:
        if sum(word2ph) != len(phones) or len(word2ph) != len(norm_text):
            raise AssertionError(f"{lang} g2p broke the word2ph invariant for {norm_text!r}")
    if lang == "en" and len(phones) < EN_MIN_PHONES:
        phones = [","] + list(phones)
    table = symbol_to_id(version)
    phones = [p if p in table else UNK for p in phones]
    return CleanedText(phones, None if word2ph is None else list(word2ph), norm_text)


def _clean_special(module, text: str, mark: str, symbol: str, version: str) -> CleanedText:
    norm_text = module.normalize(text.replace(mark, ","))
    phones, word2ph = module.g2p(norm_text)
    table = symbol_to_id(version)
    out = []
    for p in phones:
        if p not in table:
            raise AssertionError(f"phone {p!r} not in the {version} symbols")
        out.append(symbol if p == "," else p)
    return CleanedText(out, None if word2ph is None else list(word2ph), norm_text)
