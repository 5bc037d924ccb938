"""Pinyin syllable -> the two zh phones (initial, final) of the GPT-SoVITS symbol table.

The split follows upstream's ``opencpop-strict`` convention, derived here by rule:

* a syllable without a consonant gets a dummy initial by its first vowel: ``AA`` (a-), ``EE`` (e-),
  ``OO`` (o-); y- and w- syllables keep ``y``/``w`` as their initial;
* ``i`` after zh/ch/sh/r is ``ir``, after z/c/s it is ``i0``;
* ``u`` after j/q/x/y is the umlaut ``v`` (ju -> j v, yuan -> y van); the ``v`` spellings are
  accepted too;
* ``yan`` -> ``y En`` and ``ye`` -> ``y E``;
* everything else is split after the initial as written (gui -> g ui, niu -> n iu, dun -> d un).

Only syllables of upstream's inventory (``data/pinyin_syllables.txt``, 429 entries) are accepted:
upstream refuses any other syllable (e.g. the interjections hm, ng, m), and so do we.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

_TWO_LETTER_INITIALS = ("zh", "ch", "sh")
_ONE_LETTER_INITIALS = frozenset("bpmfdtnlgkhjqxrzcsyw")
_DUMMY_INITIALS = {"a": "AA", "e": "EE", "o": "OO"}


@lru_cache(maxsize=1)
def inventory() -> frozenset[str]:
    """The toneless syllables the frontend can turn into phones."""
    text = resources.files("gsv.text.zh").joinpath("data/pinyin_syllables.txt").read_text("utf-8")
    return frozenset(
        word for line in text.splitlines() if not line.startswith("#") for word in line.split()
    )


def _split_initial(syllable: str) -> tuple[str, str]:
    if syllable[:2] in _TWO_LETTER_INITIALS:
        return syllable[:2], syllable[2:]
    if syllable[0] in _ONE_LETTER_INITIALS:
        return syllable[0], syllable[1:]
    return _DUMMY_INITIALS[syllable[0]], syllable


def split_syllable(syllable: str) -> tuple[str, str] | None:
    """(initial, final) of a toneless pinyin syllable, or None if it is not in the inventory."""
    if syllable not in inventory():
        return None
    initial, final = _split_initial(syllable)
    if final == "i" and initial in ("zh", "ch", "sh", "r"):
        final = "ir"
    elif final == "i" and initial in ("z", "c", "s"):
        final = "i0"
    elif initial in ("j", "q", "x", "y") and final.startswith("u"):
        final = "v" + final[1:]
    elif initial == "y" and final == "an":
        final = "En"
    elif initial == "y" and final == "e":
        final = "E"
    return initial, final
