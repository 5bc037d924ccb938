"""Text segmentation: upstream's cut methods and the inference pipeline's pre-segmentation.

Reproduces, with the same outputs, upstream GPT-SoVITS v2
``GPT_SoVITS/TTS_infer_pack/text_segmentation_method.py`` (``cut0`` ... ``cut5``,
``split_big_text``) and the text half of ``TTS_infer_pack/TextPreprocessor.py``
(``replace_consecutive_punctuation``, ``pre_seg_text``, ``merge_short_text_in_array``), plus the
rule both inference front-ends apply to the prompt (reference) text.

Every cut method takes the whole text and returns one string in which segments are separated by
``"\\n"``; splitting that on ``"\\n"`` gives the segments (empty strings included).

* ``cut0``: no cut.  Quirk kept: a text made only of ``! ? … , . -`` and spaces (the empty
  text included) comes back as the two characters ``"/n"``.
* ``cut1``: groups of four sentences.
* ``cut2``: groups of sentences totalling more than 50 characters.
* ``cut3``: at every ``。``.
* ``cut4``: at every ``.`` that is not between two digits.
* ``cut5``: after every punctuation mark in ``, . ; ? ! 、 ， 。 ？ ！ ： …`` (a ``.`` between
  digits is not a cut).

"Sentences" (cut1/cut2) end after any character of :data:`SPLITS`; ``……`` counts as ``。`` and
``——`` as ``，`` there, and a missing final mark is supplied as ``。``.
"""
from __future__ import annotations

import re
from collections.abc import Callable

from gsv.errors import OptionError, TextError

# Sentence/clause-final marks: sentence splitting, the short-first-sentence rule, the prompt rule.
SPLITS = frozenset("，。？！,.?!~:：—…")
# What the cut methods treat as "nothing to say" when filtering their pieces.
_CUT_FILLER = frozenset("!?…,.- ")
# Marks after which cut5 cuts.
_CUT5_MARKS = frozenset(",.;?!、，。？！：…")
# Marks whose runs the pipeline collapses before cutting (no space here, unlike _CUT_FILLER).
_RUN_MARKS = "!?…,.-"
_RUN_RE = re.compile("([{0}])[{0}]+".format(re.escape(_RUN_MARKS)))
_SPLITS_CLASS = "[" + "".join(re.escape(c) for c in sorted(SPLITS)) + "]"
_SPLITS_RE = re.compile(_SPLITS_CLASS)
_SPLITS_KEEP_RE = re.compile("(" + _SPLITS_CLASS + ")")
_CUT4_RE = re.compile(r"(?<!\d)\.(?!\d)")
_WORDLESS_RE = re.compile(r"\W+")

MAX_SEGMENT_CHARS = 510  # BERT's input limit: longer pieces go through split_big_text
SHORT_MERGE_CHARS = 5  # pieces shorter than this are merged with the next
SHORT_FIRST_SENTENCE = 4  # a first sentence shorter than this gets a leading "。"/"."


def _is_filler(piece: str, filler: frozenset = _CUT_FILLER) -> bool:
    return set(piece) <= filler


def _keep(pieces: list[str]) -> str:
    return "\n".join(p for p in pieces if not _is_filler(p))


def sentences(text: str) -> list[str]:
    """Split after every mark of SPLITS (each piece keeps its mark); see the module docstring."""
    text = text.replace("……", "。").replace("——", "，")
    if not text:
        return []
    if text[-1] not in SPLITS:
        text += "。"
    out = []
    start = 0
    for i, ch in enumerate(text):
        if ch in SPLITS:
            out.append(text[start:i + 1])
            start = i + 1
    return out


def cut0(text: str) -> str:
    return text if not _is_filler(text) else "/n"


def cut1(text: str) -> str:
    text = text.strip("\n")
    parts = sentences(text)
    if len(parts) <= 4:
        # Fewer than two groups: the text is returned whole (not the re-joined sentences).
        return _keep([text])
    # Groups of four, the last group absorbing whatever follows the last full group start.
    starts = list(range(0, len(parts), 4))
    bounds = starts[:-1] + [len(parts)]
    groups = ["".join(parts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return _keep(groups)


def cut2(text: str, max_chars: int = 50) -> str:
    text = text.strip("\n")
    parts = sentences(text)
    if len(parts) < 2:
        return text
    groups = []
    size = 0
    current = ""
    for part in parts:
        size += len(part)
        current += part
        if size > max_chars:
            groups.append(current)
            size = 0
            current = ""
    if current:
        groups.append(current)
    if len(groups) > 1 and len(groups[-1]) < max_chars:  # a short tail joins the group before
        tail = groups.pop()
        groups[-1] += tail
    return _keep(groups)


def cut3(text: str) -> str:
    text = text.strip("\n")
    return _keep(text.strip("。").split("。"))


def cut4(text: str) -> str:
    text = text.strip("\n")
    return _keep(_CUT4_RE.split(text.strip(".")))


def cut5(text: str) -> str:
    text = text.strip("\n")
    pieces = []
    current: list[str] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        current.append(ch)
        if ch not in _CUT5_MARKS:
            continue
        if ch == "." and 0 < i < last and text[i - 1].isdigit() and text[i + 1].isdigit():
            continue  # decimal point
        pieces.append("".join(current))
        current = []
    if current:
        pieces.append("".join(current))
    return "\n".join(p for p in pieces if not _is_filler(p, _CUT5_MARKS))


METHODS: dict[str, Callable[[str], str]] = {
    "cut0": cut0, "cut1": cut1, "cut2": cut2, "cut3": cut3, "cut4": cut4, "cut5": cut5,
}


def get_method(name: str) -> Callable[[str], str]:
    """The cut method registered as ``name``; OptionError for an unknown name."""
    try:
        return METHODS[name]
    except KeyError:
        raise OptionError(f"unknown text split method {name!r} (expected one of {', '.join(METHODS)})") from None


def cut(text: str, method: str) -> list[str]:
    """The segments of ``method`` applied to ``text`` (its output split on newlines)."""
    return get_method(method)(text).split("\n")


def replace_consecutive_punctuation(text: str) -> str:
    """Collapse runs of ``! ? … , . -`` to their first character (full-width marks untouched)."""
    return _RUN_RE.sub(r"\1", text)


def first_sentence(text: str) -> str:
    """Text before the first SPLITS mark, stripped of surrounding whitespace."""
    return _SPLITS_RE.split(text, maxsplit=1)[0].strip()


def terminal_mark(lang: str) -> str:
    """The mark appended to unterminated text: ``.`` for English, ``。`` for anything else."""
    return "." if lang == "en" else "。"


def merge_short_text_in_array(texts: list[str], threshold: int) -> list[str]:
    """Concatenate consecutive pieces until each is at least ``threshold`` characters long.

    A short remainder is appended to the last merged piece.
    """
    if len(texts) < 2:
        return texts
    out: list[str] = []
    pending = ""
    for piece in texts:
        pending += piece
        if len(pending) >= threshold:
            out.append(pending)
            pending = ""
    if pending:
        if out:
            out[-1] += pending
        else:
            out.append(pending)
    return out


def split_big_text(text: str, max_len: int = MAX_SEGMENT_CHARS) -> list[str]:
    """Greedy re-split at SPLITS marks into pieces of at most ``max_len`` characters.

    A single run longer than ``max_len`` stays whole (an empty piece may then precede it).
    """
    out: list[str] = []
    current = ""
    for part in _SPLITS_KEEP_RE.split(text):
        if len(current) + len(part) > max_len:
            out.append(current)
            current = part
        else:
            current += part
    if current:
        out.append(current)
    return out


def _drop_blank_pieces(pieces: list[str]) -> list[str]:
    if all(p in ("", " ", "\n") for p in pieces):
        raise TextError("no text to synthesize (the input is empty or only line breaks)")
    return [p for p in pieces if p not in ("", " ")]


def pre_seg_text(text: str, lang: str, method: str) -> list[str]:
    """The segments upstream's pipeline synthesizes one by one (``TextPreprocessor.pre_seg_text``).

    Apply :func:`replace_consecutive_punctuation` first to get upstream's ``preprocess``.
    Raises TextError when the cut leaves nothing but blank pieces.
    """
    text = text.strip("\n")
    if not text:
        return []
    if text[0] not in SPLITS and len(first_sentence(text)) < SHORT_FIRST_SENTENCE:
        # A very short first sentence is said badly; a leading pause mark helps the model.
        text = terminal_mark(lang) + text
    text = get_method(method)(text)
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    pieces = merge_short_text_in_array(_drop_blank_pieces(text.split("\n")), SHORT_MERGE_CHARS)
    out: list[str] = []
    for piece in pieces:
        if not piece.strip() or not _WORDLESS_RE.sub("", piece):
            continue  # blank, or punctuation only
        if piece[-1] not in SPLITS:
            piece += terminal_mark(lang)
        if len(piece) > MAX_SEGMENT_CHARS:
            out.extend(split_big_text(piece))
        else:
            out.append(piece)
    return out


def preprocess_segments(text: str, lang: str, method: str) -> list[str]:
    """``pre_seg_text(replace_consecutive_punctuation(text), lang, method)``."""
    return pre_seg_text(replace_consecutive_punctuation(text), lang, method)


def prepare_prompt_text(text: str, lang: str) -> str:
    """Upstream's prompt-text rule: strip newlines, end with ``。``/``.`` if not already terminated."""
    text = text.strip("\n")
    if not text:
        raise TextError("the prompt text is empty")
    if text[-1] not in SPLITS:
        text += terminal_mark(lang)
    return text
