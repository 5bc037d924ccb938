"""Homographs (words read differently by part of speech) and the tagger that picks a reading.

Upstream takes g2p_en's homograph table (``homographs.en`` inside the g2p_en package: word,
reading 1, reading 2, part-of-speech prefix), overrides ``read`` and ``complex``, and tags every
token with ``nltk.pos_tag``.  A homograph gets reading 1 when its Penn tag starts with the table's
prefix (or, for ``read`` whose prefix "VBP" is longer than a tag, when the tag is a prefix of it),
otherwise reading 2.

**No tagger data exists offline** (nltk's averaged perceptron model is downloaded at run time),
so this module uses a small, deterministic, rule-based stand-in.  It only ever matters for the 371
homograph words; the golden cases avoid them entirely.  Rules, from the previous token
(lower-cased):

* an infinitive marker, modal or do-support (``to``, ``will``, ``can``, ``don't`` ...) or a subject
  pronoun (``I``, ``we``, ``they`` ...) -> ``VB`` (a verb);
* a form of *have* or *be* (``has``, ``was``, ``been`` ...) -> ``VBN`` (a participle);
* anything else, including determiners and the sentence start -> ``NN`` (a noun).

So "to record" reads as the verb and "the record" as the noun; "I read" as "reed" (VB is a prefix
of the "VBP" rule), "have read" as "red".
"""
from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

from gsv.errors import TextError

logger = logging.getLogger(__name__)

TABLE_NAME = "homographs.en"


class Homograph(NamedTuple):
    when_tagged: tuple[str, ...]  # reading when the tag matches ``tag_prefix``
    otherwise: tuple[str, ...]
    tag_prefix: str


# Upstream's own corrections to g2p_en's table.
UPSTREAM_FIXES = {
    "read": Homograph(("R", "IY1", "D"), ("R", "EH1", "D"), "VBP"),
    "complex": Homograph(("K", "AH0", "M", "P", "L", "EH1", "K", "S"), ("K", "AA1", "M", "P", "L", "EH0", "K", "S"), "JJ"),
}

_VERB_CUES = frozenset(
    "to will would shall should can could may might must do does did don't doesn't didn't "
    "won't wouldn't can't cannot couldn't shouldn't mustn't let's please i we you they".split()
)
_PARTICIPLE_CUES = frozenset(
    "have has had having 've be is are was were been being 's 're 'm isn't aren't wasn't weren't "
    "hasn't haven't hadn't".split()
)


def _table_path() -> Path:
    spec = importlib.util.find_spec("g2p_en")  # the package itself cannot be imported offline
    if spec is None or not spec.submodule_search_locations:
        raise TextError("the g2p-en package is not installed; it provides the English homograph table")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / TABLE_NAME
        if candidate.is_file():
            return candidate
    raise TextError(f"g2p-en is installed without {TABLE_NAME}")


@lru_cache(maxsize=1)
def homographs() -> Mapping[str, Homograph]:
    """Lower-case word -> Homograph, g2p_en's table with upstream's fixes."""
    table: dict[str, Homograph] = {}
    for line in _table_path().read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        word, first, second, tag_prefix = line.strip().split("|")
        table[word.lower()] = Homograph(tuple(first.split()), tuple(second.split()), tag_prefix)
    table.update(UPSTREAM_FIXES)
    return table


def guess_tag(tokens: Sequence[str], index: int) -> str:
    """A Penn-style tag for ``tokens[index]`` from the token before it (see module docstring)."""
    previous = tokens[index - 1].lower() if index > 0 else ""
    if previous in _VERB_CUES:
        return "VB"
    if previous in _PARTICIPLE_CUES:
        return "VBN"
    return "NN"


def choose_reading(entry: Homograph, tag: str) -> tuple[str, ...]:
    """Upstream's rule for picking a homograph's reading given a tag."""
    if tag.startswith(entry.tag_prefix):
        return entry.when_tagged
    if len(tag) < len(entry.tag_prefix) and entry.tag_prefix.startswith(tag):
        return entry.when_tagged
    return entry.otherwise
