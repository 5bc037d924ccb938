"""Phone symbol tables of upstream GPT-SoVITS (v1: 322 symbols, v2: 732), with their exact ids.

The id of a symbol is its index in the table.  The tables are data files shipped with the package
(``data/symbols_v1.json``, ``data/symbols_v2.json``); v2 is v1 followed by the Japanese pitch marks,
Korean jamo and Cantonese jyutping symbols, in upstream's order.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from gsv.errors import GsvError

SYMBOL_VERSIONS = ("v1", "v2")
PAD = "_"  # id 95 in both tables; upstream's pause/pad phone
UNK = "UNK"


@lru_cache(maxsize=None)
def symbols(version: str = "v2") -> tuple[str, ...]:
    """The symbol table of ``version`` ('v1' or 'v2') as a tuple; index = id."""
    if version not in SYMBOL_VERSIONS:
        raise GsvError(f"unknown symbol version {version!r} (expected one of {', '.join(SYMBOL_VERSIONS)})")
    text = resources.files("gsv.text").joinpath(f"data/symbols_{version}.json").read_text("utf-8")
    return tuple(json.loads(text))


@lru_cache(maxsize=None)
def symbol_to_id(version: str = "v2") -> dict[str, int]:
    return {s: i for i, s in enumerate(symbols(version))}


def cleaned_text_to_sequence(phones: list[str], version: str = "v2") -> list[int]:
    """Map phones to ids; an unknown phone is an error (upstream raises KeyError)."""
    table = symbol_to_id(version)
    try:
        return [table[p] for p in phones]
    except KeyError as e:
        raise GsvError(f"phone {e.args[0]!r} is not in the {version} symbol table") from None
