"""Reading Arabic numerals aloud in Mandarin, the way upstream's zh normaliser does.

Three readings exist:

* :func:`cardinal` -- a whole number with place units (``1205`` -> 一千二百零五);
* :func:`digits` -- digit by digit (``2024`` -> 二零二四), optionally with 幺 for 1 as in phone numbers;
* :func:`number` -- a cardinal with an optional decimal part read digit by digit (``3.14`` -> 三点一四).

The rules copy upstream's quirks on purpose because the golden cases depend on them: a leading
"一十" is shortened to "十" (``12`` -> 十二, but ``112`` -> 一百一十二), zeros inside a number are read
once per gap that the recursive split produces, and trailing zeros of a decimal part collapse to a
single 零 (``3.20`` -> 三点二零, ``2.0`` -> 二点零).
"""
from __future__ import annotations

import unicodedata

from gsv.errors import TextError

DIGIT_WORDS = "零一二三四五六七八九"
ZERO, ONE = DIGIT_WORDS[0], DIGIT_WORDS[1]
TEN = "十"
# Place units by the number of digits they stand for, largest first: the split point of a number
# is the largest unit that is still shorter than the number.
PLACE_UNITS = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, TEN))


def _digit_value(ch: str) -> int:
    # Regexes use \d, which also matches non-ASCII decimal digits (e.g. Arabic-Indic); upstream
    # crashes on them, we read them by their value instead.
    value = unicodedata.decimal(ch, None)
    if value is None:
        raise TextError(f"not a decimal digit: {ch!r}")
    return value


def _digit_word(ch: str) -> str:
    return DIGIT_WORDS[_digit_value(ch)]


def _strip_zeros(text: str) -> str:
    # Only ASCII "0" counts as a leading zero, exactly like str.lstrip("0") upstream.
    return text.lstrip("0")


def _place_words(value: str) -> list[str]:
    """Words of a digit string split recursively at place units (zero handling as upstream)."""
    significant = _strip_zeros(value)
    if not significant:
        return []
    if len(significant) == 1:
        # A lone digit after stripped zeros is read with one 零 in front (the gap), e.g. "05".
        word = _digit_word(significant)
        return [ZERO, word] if len(significant) < len(value) else [word]
    span, unit = next((n, u) for n, u in PLACE_UNITS if n < len(significant))
    # The split is taken on the unstripped string, as upstream does; zeros that were stripped can
    # therefore show up again as the 零 of a lower part.
    return _place_words(value[:-span]) + [unit] + _place_words(value[-span:])


def cardinal(value: str) -> str:
    """``value`` (a digit string) as a cardinal number: "105" -> 一百零五, "0" -> 零, "" -> ""."""
    if not value:
        return ""
    significant = _strip_zeros(value)
    if not significant:
        return ZERO
    words = _place_words(significant)
    if len(words) >= 2 and words[0] == ONE and words[1] == TEN:
        words = words[1:]  # 一十二 is said 十二
    return "".join(words)


def digits(value: str, phone_one: bool = False) -> str:
    """``value`` read digit by digit; ``phone_one`` reads 1 as 幺 (phone numbers, serials)."""
    text = "".join(_digit_word(ch) for ch in value)
    return text.replace(ONE, "幺") if phone_one else text


def number(value: str) -> str:
    """A number with at most one decimal point: cardinal part, then 点 and the decimals digit by digit."""
    parts = value.split(".")
    if len(parts) > 2:
        raise TextError(f"number {value!r} has more than one decimal point")
    integer, decimals = parts[0], (parts[1] if len(parts) == 2 else "")
    result = cardinal(integer)
    # Trailing zeros collapse to one zero rather than vanishing: "2.0" -> 二点零, "3.200" -> 三点二零.
    if decimals.endswith("0"):
        decimals = decimals.rstrip("0") + "0"
    if decimals:
        result = (result or ZERO) + "点" + digits(decimals)
    return result
