"""English text normalisation, behaving like upstream GPT-SoVITS v2's ``english.text_normalize``.

The result is the ``norm_text`` that upstream returns and feeds to its English G2P.  Steps, in
upstream's order (the order matters: e.g. commas inside numbers are removed before currency is
read, and measurements are read before plain decimals):

1. A fixed replacement table.  Upstream escapes its keys before joining them into a regex, so two
   of its keys only match the *literal* strings ``[;:：，；]`` and ``["’]``; only ``。！？`` are
   really mapped (to ``.!?``).  ``;``, ``:``, ``"``, ``’``, ``，`` ... are therefore *not* turned
   into commas or quotes: the character filter below deletes them.  We reproduce that.
2. Numbers and symbols (upstream ``en_normalization/expend.normalize``): "1. " list ordinals,
   ``a + b`` style arithmetic, negative integers, thousands separators, 24-hour times, measurement
   suffixes, £ and $ amounts, decimals, fractions, ordinals (``22nd``), cardinals (1001-2999 read
   as years), then accent stripping, ``%``, deletion of every character outside
   ``[ A-Za-z'.,?!-]``, ``i.e.``/``e.g.``, and a space before every capital letter that does not
   start a word (``NASA`` -> ``N A S A``, ``iPhone`` -> ``i Phone``).
3. Runs of punctuation collapse to their first character (a punctuation mark after whitespace is
   dropped altogether, as upstream).

Numbers are spelled by ``inflect`` (the version the golden cases were made with).  Inputs on which
upstream itself crashes (an amount like ``$,5``, numbers too large for inflect) raise
:class:`gsv.errors.TextError`.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache

from gsv.errors import TextError

logger = logging.getLogger(__name__)

# Step 1: upstream's replacement table as it really behaves (literal keys, see module docstring).
LITERAL_REPLACEMENTS = {
    "[;:：，；]": ",",
    '["’]': "'",
    "。": ".",
    "！": "!",
    "？": "?",
}
_LITERAL_RE = re.compile("|".join(re.escape(key) for key in LITERAL_REPLACEMENTS))

# Punctuation marks that survive into the phone sequence (upstream ``symbols.punctuation``).
PUNCTUATION = "!?…,.-"
_PUNCT_CLASS = "".join(re.escape(p) for p in PUNCTUATION)
# A punctuation mark or whitespace followed by one or more marks keeps only the first character.
_PUNCT_RUN_RE = re.compile(rf"([{_PUNCT_CLASS}\s])([{_PUNCT_CLASS}])+")

# Measurement suffix -> (singular, plural).  The alternation order of the regex below matters and
# is upstream's: "km" is tried before "km/h", so "12km/h" reads "twelve kilometers" + "h".
MEASUREMENT_UNITS = {
    "m": ("meter", "meters"),
    "km": ("kilometer", "kilometers"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "ft": ("feet", "feet"),
    "L": ("liter", "liters"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "h": ("hour", "hours"),
    "min": ("minute", "minutes"),
    "s": ("second", "seconds"),
    "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
}
_UNIT_ALTERNATION = "|".join(re.escape(unit) for unit in MEASUREMENT_UNITS)

# Superscripts allowed after an operand of an arithmetic expression.
_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
# One operand: a (signed) number, a bare ".5" decimal, or a single Latin letter; 7 groups.
_OPERAND = rf"((-?)((\d+)(\.\d+)?[{_SUPERSCRIPTS}]*)|(\.\d+[{_SUPERSCRIPTS}]*)|([A-Za-z][{_SUPERSCRIPTS}]*))"
# Operators need whitespace on both sides, so "555-1234" and "well-known" are left alone.
_ARITHMETIC_RE = re.compile(rf"{_OPERAND}\s+([+\-×÷=])\s+{_OPERAND}")
_OPERATOR_WORDS = {"+": " plus ", "-": " minus ", "×": " times ", "÷": " divided by ", "=": " Equals "}
_LEFT_OPERAND_GROUP, _OPERATOR_GROUP, _RIGHT_OPERAND_GROUP = 1, 8, 9

# Note: upstream's pattern swallows the whitespace before the minus ("at -5" -> "atnegative 5").
_NEGATIVE_INTEGER_RE = re.compile(r"(?:^|\s+)(-)(\d+)")
_LIST_ORDINAL_RE = re.compile(r"\b([0-9]+)\. ")
_THOUSANDS_RE = re.compile(r"([0-9][0-9,]+[0-9])")
_TIME_RE = re.compile(r"\b([01]?[0-9]|2[0-3]):([0-5][0-9])\b")
_MEASUREMENT_RE = re.compile(rf"\b([0-9]+(\.[0-9]+)?({_UNIT_ALTERNATION}))\b")
_POUNDS_BEFORE_RE = re.compile(r"£([0-9.,]*[0-9]+)")
_POUNDS_AFTER_RE = re.compile(r"([0-9.,]*[0-9]+)£")
_DOLLARS_BEFORE_RE = re.compile(r"\$([0-9.,]*[0-9]+)")
# Upstream's class for a trailing "$" also admits "(" (so "(5$" fails to parse, as upstream).
_DOLLARS_AFTER_RE = re.compile(r"([(0-9.,]*[0-9]+)\$")
_DECIMAL_RE = re.compile(r"([0-9]+\.\s*[0-9]+)")
_FRACTION_RE = re.compile(r"([0-9]+/[0-9]+)")
_ORDINAL_RE = re.compile(r"[0-9]+(st|nd|rd|th)")
_CARDINAL_RE = re.compile(r"[0-9]+")

_NOT_KEPT_RE = re.compile(r"[^ A-Za-z'.,?!\-]")
_THAT_IS_RE = re.compile(r"(?i)i\.e\.")
_FOR_EXAMPLE_RE = re.compile(r"(?i)e\.g\.")
# A capital that neither starts the text nor follows whitespace gets a space before it.
_INNER_CAPITAL_RE = re.compile(r"(?<!^)(?<!\s)([A-Z])")


@lru_cache(maxsize=1)
def _inflect_engine():
    import inflect  # imported lazily: it is slow to import and only English needs it

    return inflect.engine()


def _to_int(digits: str) -> int:
    try:
        return int(digits)
    except ValueError:
        # Upstream raises here too (e.g. "$,5" or "(5$"); say what could not be read.
        raise TextError(f"cannot read the number {digits!r} in English text") from None


def _words(number, **options) -> str:
    """inflect's spelling of ``number`` (an int, or a digit string such as "22nd")."""
    try:
        return _inflect_engine().number_to_words(number, **options)
    except Exception as e:  # inflect raises NumOutOfRangeError for astronomically large numbers
        raise TextError(f"cannot spell the number {number!r} in English: {e}") from None


def _list_ordinal(m: re.Match) -> str:
    # "1. " at a list position becomes "1st, " (read as "first," later on).
    return _inflect_engine().ordinal(m.group(1)) + ", "


def _arithmetic(m: re.Match) -> str:
    return m.group(_LEFT_OPERAND_GROUP) + _OPERATOR_WORDS[m.group(_OPERATOR_GROUP)] + m.group(_RIGHT_OPERAND_GROUP)


def _negative_integer(m: re.Match) -> str:
    return "negative " + m.group(2)


def _drop_thousands_commas(m: re.Match) -> str:
    return m.group(1).replace(",", "")


def _time(m: re.Match) -> str:
    """24-hour clock to a 12-hour reading: "17:45" -> "five forty-five p.m."."""
    hours, minutes = int(m.group(1)), int(m.group(2))
    period = "a.m." if hours < 12 else "p.m."
    if hours > 12:
        hours -= 12
    if minutes == 0:
        return f"{_words(hours)} o'clock {period}"
    return f"{_words(hours)} {_words(minutes)} {period}"


def _measurement(m: re.Match) -> str:
    quantity, fraction, unit = m.group(1), m.group(2), m.group(3)
    # Upstream drops the decimal point before comparing with 1, so only a plain "1" is singular.
    digits = quantity.replace(unit, "").replace(".", "")
    singular = fraction is None and int(digits) == 1
    return quantity.replace(unit, " " + MEASUREMENT_UNITS[unit][0 if singular else 1])


def _money(amount: str, units: tuple[str, str, str, str], zero: str) -> str:
    """"2.50" with ("dollar", "dollars", "cent", "cents") -> "2 dollars and 50 cents"."""
    major_one, major_many, minor_one, minor_many = units
    parts = amount.split(".")
    if len(parts) > 2:
        return amount + " " + major_many  # e.g. "1.2.3": upstream gives up and appends the unit
    major = _to_int(parts[0]) if parts[0] else 0
    # The fractional part is hundredths: ".5" means 50, but ".505" is read as 505.
    minor = _to_int(parts[1].ljust(2, "0")) if len(parts) > 1 and parts[1] else 0
    major_text = f"{major} {major_one if major == 1 else major_many}"
    minor_text = f"{minor} {minor_one if minor == 1 else minor_many}"
    if major and minor:
        return f"{major_text} and {minor_text}"
    if major:
        return major_text
    if minor:
        return minor_text
    return zero


def _pounds(m: re.Match) -> str:
    return _money(m.group(1), ("pound", "pounds", "penny", "pence"), "zero pounds")


def _dollars(m: re.Match) -> str:
    return _money(m.group(1), ("dollar", "dollars", "cent", "cents"), "zero dollars")


def _decimal(m: re.Match) -> str:
    """"0.75" -> "0 point 7 5": the digits after the point are read one by one."""
    whole, after_point = m.group(1).split(".")
    return whole + " point " + " ".join(after_point)


def _fraction(m: re.Match) -> str:
    numerator, denominator = (_to_int(part) for part in m.group(0).split("/"))
    numerator_words = _words(numerator)
    if denominator == 1:
        return numerator_words
    if denominator == 2:
        return f"{numerator_words} {'half' if numerator == 1 else 'halves'}"
    denominator_words = _inflect_engine().ordinal(_words(denominator))
    if numerator > 1:
        denominator_words += "s"
    return f"{numerator_words} {denominator_words}"


def _ordinal(m: re.Match) -> str:
    return _words(m.group(0))  # inflect reads "22nd" as "twenty-second"


def _cardinal(m: re.Match) -> str:
    number = _to_int(m.group(0))
    if 1000 < number < 3000:  # read like a year
        if number == 2000:
            return "two thousand"
        if 2000 < number < 2010:
            return "two thousand " + _words(number % 100)
        if number % 100 == 0:
            return _words(number // 100) + " hundred"
        return _words(number, andword="", zero="oh", group=2).replace(", ", " ")
    return _words(number, andword="")


def _strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def expand(text: str) -> str:
    """Numbers, symbols and abbreviations to words (upstream ``en_normalization.expend.normalize``)."""
    text = _LIST_ORDINAL_RE.sub(_list_ordinal, text)
    # Each pass rewrites at least one operator into words, so this terminates.
    while _ARITHMETIC_RE.search(text):
        text = _ARITHMETIC_RE.sub(_arithmetic, text)
    text = _NEGATIVE_INTEGER_RE.sub(_negative_integer, text)
    text = _THOUSANDS_RE.sub(_drop_thousands_commas, text)
    text = _TIME_RE.sub(_time, text)
    text = _MEASUREMENT_RE.sub(_measurement, text)
    text = _POUNDS_BEFORE_RE.sub(_pounds, text)
    text = _POUNDS_AFTER_RE.sub(_pounds, text)
    text = _DOLLARS_BEFORE_RE.sub(_dollars, text)
    text = _DOLLARS_AFTER_RE.sub(_dollars, text)
    text = _DECIMAL_RE.sub(_decimal, text)
    text = _FRACTION_RE.sub(_fraction, text)
    text = _ORDINAL_RE.sub(_ordinal, text)
    text = _CARDINAL_RE.sub(_cardinal, text)

    text = _strip_accents(text)
    text = text.replace("%", " percent")
    text = _NOT_KEPT_RE.sub("", text)
    text = _THAT_IS_RE.sub("that is", text)
    text = _FOR_EXAMPLE_RE.sub("for example", text)
    return _INNER_CAPITAL_RE.sub(r" \1", text)


def collapse_punctuation(text: str) -> str:
    """Keep only the first of a run of punctuation ("what?!" -> "what?"), as upstream."""
    return _PUNCT_RUN_RE.sub(r"\1", text)


def normalize(text: str) -> str:
    """Upstream's English ``text_normalize``: the ``norm_text`` of an English sentence."""
    if not isinstance(text, str):
        raise TextError(f"English text must be a str, not {type(text).__name__}")
    text = _LITERAL_RE.sub(lambda m: LITERAL_REPLACEMENTS[m.group(0)], text)
    text = expand(text)
    return collapse_punctuation(text)
