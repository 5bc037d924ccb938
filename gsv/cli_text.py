"""``gsv phonemize`` and ``gsv split``: the text frontend on the command line.

``gsv phonemize --lang LANG [--version v2]`` reads one text per line from stdin (UTF-8) and
writes one JSON object per line (UTF-8, not ASCII-escaped) with the keys ``norm_text``,
``phones``, ``word2ph`` and ``ids``:

* for a single language (``zh``, ``ja``, ``en``, ``ko``, ``yue``) these are exactly
  ``clean_text(line, LANG, version)`` and the phones' symbol ids, as in the golden cases (no
  splitting into languages, no segmentation, no retry rule);
* for a mode that mixes languages (``auto``, ``auto_yue``, ``all_zh``, ``all_ja``, ``all_ko``,
  ``all_yue``) the line is split into language pieces first (:mod:`gsv.text.langsplit`) and each
  piece is cleaned; ``norm_text``, ``phones`` and ``ids`` are the pieces' values concatenated,
  ``word2ph`` is their concatenation when every piece has one (zh/yue only) and ``null``
  otherwise, and an extra key ``pieces`` lists ``{"lang", "norm_text", "phones", "word2ph"}``
  per piece.

``gsv split --method cut5 [--lang zh] [--pipeline]`` reads all of stdin (one final line break,
as added by ``echo`` or a here-document, is removed) and writes a JSON list of strings: the cut
method's output split on line breaks (empty strings included), or with ``--pipeline`` the
segments upstream's pipeline synthesizes (``pre_seg_text`` after collapsing punctuation runs;
``--lang`` only chooses ``。`` or ``.`` there).

Errors print one line on stderr and exit with code 2 (handled by :func:`gsv.cli.main`).
"""
from __future__ import annotations

import argparse
import json
import sys

from gsv.errors import GsvError

SINGLE_LANGUAGES = ("zh", "ja", "en", "ko", "yue")


def register(subparsers) -> None:
    """Add the ``phonemize`` and ``split`` subcommands to the main ``gsv`` parser."""
    from gsv.text.segment import METHODS

    p = subparsers.add_parser("phonemize", help="text lines on stdin -> JSON phones/ids per line",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--lang", required=True,
                   help="zh, ja, en, ko, yue (one language) or auto, auto_yue, all_zh, all_ja, all_ko, all_yue")
    p.add_argument("--version", default="v2", help="symbol table version: v1 or v2")
    p.set_defaults(func=cmd_phonemize)

    s = subparsers.add_parser("split", help="text on stdin -> JSON list of segments",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--method", default="cut5", help="cut method: " + ", ".join(METHODS))
    s.add_argument("--lang", default="zh", help="language mode (for --pipeline: '.' for en, '。' otherwise)")
    s.add_argument("--pipeline", action="store_true",
                   help="output the segments the synthesis pipeline uses (pre_seg_text) instead of the raw cut")
    s.set_defaults(func=cmd_split)


def _read_stdin(stdin) -> str:
    stream = stdin if stdin is not None else sys.stdin.buffer
    data = stream.read()
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GsvError(f"stdin is not valid UTF-8 (byte offset {e.start})") from None


def _writer(stdout):
    stream = stdout if stdout is not None else sys.stdout.buffer

    def write(text: str) -> None:
        try:
            stream.write(text)
        except TypeError:  # a binary stream
            stream.write(text.encode("utf-8"))
        stream.flush()

    return write


def phonemize_line(text: str, lang: str, version: str = "v2") -> dict:
    """The JSON object ``gsv phonemize`` prints for one line (see the module docstring)."""
    from gsv.text.cleaner import clean_text
    from gsv.text.symbols import cleaned_text_to_sequence

    if lang in SINGLE_LANGUAGES:
        cleaned = clean_text(text, lang, version)
        return {"norm_text": cleaned.norm_text, "phones": list(cleaned.phones), "word2ph": cleaned.word2ph,
                "ids": cleaned_text_to_sequence(cleaned.phones, version)}
    from gsv.text.frontend import TextFrontend
    from gsv.text.langsplit import split

    frontend = TextFrontend(version)
    frontend.check_language(lang)
    pieces = [frontend.clean_piece(p.text, p.lang) for p in split(text, lang)]
    word2ph = None
    if pieces and all(p.word2ph is not None for p in pieces):
        word2ph = [n for p in pieces for n in p.word2ph]
    return {
        "norm_text": "".join(p.norm_text for p in pieces),
        "phones": [ph for p in pieces for ph in p.phones],
        "word2ph": word2ph,
        "ids": [i for p in pieces for i in p.ids],
        "pieces": [{"lang": p.lang, "norm_text": p.norm_text, "phones": list(p.phones),
                    "word2ph": None if p.word2ph is None else list(p.word2ph)} for p in pieces],
    }


def _lines(stdin):
    """Input lines without their line breaks, read as they arrive (so pipes stream)."""
    stream = stdin if stdin is not None else sys.stdin.buffer
    for n, raw in enumerate(stream, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise GsvError(f"stdin line {n} is not valid UTF-8") from None
        yield raw.rstrip("\r\n") if raw.endswith("\n") else raw


def cmd_phonemize(args, stdin=None, stdout=None) -> int:
    from gsv.text.frontend import TextFrontend

    TextFrontend(args.version).check_language(args.lang)  # fail before reading any input
    write = _writer(stdout)
    for line in _lines(stdin):
        obj = phonemize_line(line, args.lang, args.version)
        write(json.dumps(obj, ensure_ascii=False) + "\n")
    return 0


def cmd_split(args, stdin=None, stdout=None) -> int:
    from gsv.text import segment
    from gsv.text.langsplit import MODES
    from gsv.errors import UnknownLanguageError

    if args.lang not in MODES:
        raise UnknownLanguageError(f"unknown language {args.lang!r} (expected one of {', '.join(MODES)})")
    segment.get_method(args.method)  # OptionError for an unknown method
    text = _read_stdin(stdin)
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if args.pipeline:
        out = segment.preprocess_segments(text, args.lang, args.method)
    else:
        out = segment.cut(text, args.method)
    _writer(stdout)(json.dumps(out, ensure_ascii=False) + "\n")
    return 0
