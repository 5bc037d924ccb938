"""Rewrite rules for non-standard words in Chinese text: dates, times, numbers, units, phones, maths.

Each rule is a regular expression plus a function that builds the spoken form from the match.
:func:`verbalize` runs them in upstream's order (PaddleSpeech's ``TextNormalizer`` as modified by
GPT-SoVITS); the order matters because earlier rules consume text that later ones would read
differently (a date before a range, a subtraction before a phone number, a version string before a
decimal, ...).  Quirks of upstream that change what is said are kept and marked "quirk".
"""
from __future__ import annotations

import re

from gsv.text.zh.numbers import cardinal, digits, number

# --- dates and times ------------------------------------------------------------------------------

# 2024年3月15日 / 24年3月 / 2024年; a day needs 日 or 号 after it.
DATE = re.compile(r"(\d{4}|\d{2})年((0?[1-9]|1[0-2])月)?(((0?[1-9])|((1|2)[0-9])|30|31)([日号]))?")
# 2024-03-15, 2024/03/15, 2024.03.15, 2024 03 15 (same separator twice; two-digit month and day).
DATE_NUMERIC = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12][0-9]|3[01])")

_CLOCK = r"([0-1]?[0-9]|2[0-3]):([0-5][0-9])(:([0-5][0-9]))?"
CLOCK_RANGE = re.compile(_CLOCK + r"(~|-)" + _CLOCK)
CLOCK = re.compile(_CLOCK)


def _read_date(m: re.Match) -> str:
    year, month, day, day_word = m.group(1), m.group(3), m.group(5), m.group(9)
    out = digits(year) + "年"
    if month:
        out += cardinal(month) + "月"
    if day:
        out += cardinal(day) + day_word
    return out


def _read_numeric_date(m: re.Match) -> str:
    return f"{digits(m.group(1))}年{cardinal(m.group(3))}月{cardinal(m.group(4))}日"


def _clock_part(value: str) -> str:
    # Minutes and seconds keep a spoken leading zero: 9:05 -> 九点零五分.
    spoken = number(value.lstrip("0"))
    return ("零" + spoken) if value.startswith("0") else spoken


def _read_clock(hour: str, minute: str, second: str | None, half_if: str) -> str:
    out = number(hour) + "点"
    if minute.lstrip("0"):
        # quirk: in a range the second time says 半 when the *first* minute is 30 (half_if).
        out += "半" if int(half_if) == 30 else _clock_part(minute) + "分"
    if second and second.lstrip("0"):
        out += _clock_part(second) + "秒"
    return out


def _read_clock_match(m: re.Match) -> str:
    out = _read_clock(m.group(1), m.group(2), m.group(4), half_if=m.group(2))
    if m.re is CLOCK_RANGE:
        out += "至" + _read_clock(m.group(6), m.group(7), m.group(9), half_if=m.group(2))
    return out


# --- units ---------------------------------------------------------------------------------------

_UNIT_NAMES = "%|°C|℃|度|摄氏度|cm2|cm²|cm3|cm³|cm|db|ds|kg|km|m2|m²|m³|m3|ml|m|mm|s"
_NUM = r"((-?)((\d+)(\.\d+)?)|(\.(\d+)))"
# 10%~20%, 3km~5km: the tilde becomes 至 (otherwise it would be read as a range 到 or as "…").
UNIT_RANGE = re.compile(_NUM + "(" + _UNIT_NAMES + ")[~]" + _NUM + "(" + _UNIT_NAMES + ")")
TEMPERATURE = re.compile(r"(-?)(\d+(\.\d+)?)(°C|℃|度|摄氏度)")
# Unit spellings replaced anywhere in the text, in this order (so "cm2" wins over "cm", and a bare
# "m" or "s" inside a Latin word is replaced too: upstream does it that way).
MEASURE_WORDS = (
    ("cm2", "平方厘米"), ("cm²", "平方厘米"), ("cm3", "立方厘米"), ("cm³", "立方厘米"),
    ("cm", "厘米"), ("db", "分贝"), ("ds", "毫秒"), ("kg", "千克"), ("km", "千米"),
    ("m2", "平方米"), ("m²", "平方米"), ("m³", "立方米"), ("m3", "立方米"), ("ml", "毫升"),
    ("m", "米"), ("mm", "毫米"), ("s", "秒"),
)


def _read_unit_range(m: re.Match) -> str:
    return m.group(0).replace("~", "至")


def _read_temperature(m: re.Match) -> str:
    sign = "零下" if m.group(1) else ""
    # quirk: upstream meant to keep 摄氏度 but tests the wrong group, so every unit is read 度.
    return sign + number(m.group(2)) + "度"


def replace_measures(text: str) -> str:
    for spelling, word in MEASURE_WORDS:
        text = text.replace(spelling, word)
    return text


# --- arithmetic and powers ------------------------------------------------------------------------

_SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹ˣʸⁿ"
_OPERAND = rf"((-?)((\d+)(\.\d+)?[{_SUPERSCRIPTS}]*)|(\.\d+[{_SUPERSCRIPTS}]*)|([A-Za-z][{_SUPERSCRIPTS}]*))"
# a+b, 3×4, x=5, 2²-1 ...: operand (number or one Latin letter), operator, operand.
ARITHMETIC = re.compile(_OPERAND + r"([+\-×÷=])" + _OPERAND)
OPERATOR_WORDS = {"+": "加", "-": "减", "×": "乘", "÷": "除", "=": "等于"}
POWER = re.compile(f"[{_SUPERSCRIPTS}]+")
_SUPERSCRIPT_VALUES = dict(zip(_SUPERSCRIPTS, "0123456789xyn"))


def _read_arithmetic(m: re.Match) -> str:
    return m.group(1) + OPERATOR_WORDS[m.group(8)] + m.group(9)


def _read_power(m: re.Match) -> str:
    # The exponent stays in digits here; the number rules later read it (x² -> x的2次方 -> ...二次方).
    return "的" + "".join(_SUPERSCRIPT_VALUES[ch] for ch in m.group(0)) + "次方"


# --- fractions, percentages, phone numbers ----------------------------------------------------------

FRACTION = re.compile(r"(-?)(\d+)/(\d+)")
PERCENTAGE = re.compile(r"(-?)(\d+(\.\d+)?)%")
MOBILE_PHONE = re.compile(r"(?<!\d)((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
LANDLINE_PHONE = re.compile(r"(?<!\d)((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
SERVICE_NUMBER = re.compile(r"(400)(-)?\d{3}(-)?\d{4}")  # nationwide 400 numbers
PHONE_PART_JOINER = "，"  # groups of a phone number are separated by a pause


def _read_fraction(m: re.Match) -> str:
    sign = "负" if m.group(1) else ""
    return f"{sign}{number(m.group(3))}分之{number(m.group(2))}"


def _read_percentage(m: re.Match) -> str:
    sign = "负" if m.group(1) else ""
    return f"{sign}百分之{number(m.group(2))}"


def _read_mobile(m: re.Match) -> str:
    groups = m.group(0).strip("+").split()
    return PHONE_PART_JOINER.join(digits(g, phone_one=True) for g in groups)


def _read_landline(m: re.Match) -> str:
    return PHONE_PART_JOINER.join(digits(g, phone_one=True) for g in m.group(0).split("-"))


# --- plain numbers ---------------------------------------------------------------------------------

# 10~20, 3-5 (not when an operator or digit touches either end).
RANGE = re.compile(r"(?<![\d+\-×÷=])((-?)((\d+)(\.\d+)?))[-~]((-?)((\d+)(\.\d+)?))(?![\d+\-×÷=])")
NEGATIVE_INTEGER = re.compile(r"(-)(\d+)")
# 1.2.3 / v2.0.1: at least three dot-separated groups, read digit by digit with 点.
VERSION = re.compile(r"((\d+)(\.\d+)(\.\d+)?(\.\d+)+)")
DECIMAL = re.compile(r"(-?)((\d+)(\.\d+))|(\.(\d+))")
NUMBER = re.compile(r"(-?)((\d+)(\.\d+)?)|(\.(\d+))")
# Three digits or more with no measure word after them: a code, read digit by digit (1 as 幺).
DIGIT_STRING = re.compile(r"\d{3}\d*")

# Measure words after which a number is read as a cardinal (and 2 as 两). Upstream lists them as
# one big alternation; since the matched word is kept unchanged, only "does one of them start
# here" matters, so they are kept as a set of first characters plus the few longer words whose
# first character is not a measure word by itself.
_MEASURE_CHARS = (
    "处台架枚趟幅平方堵间床株批项例列篇栋注亩封艘把目套段人所朵匹张座回场尾条个首阙阵网炮顶丘棵只支袭"
    "辆挑担颗壳窠曲墙群腔砣客贯扎捆刀令打手罗坡山岭江溪钟队单双对出口头脚板跳枝件贴针线管名位身堂课本"
    "页家户层丝毫厘分钱两斤铢石钧锱忽寸尺丈里寻常铺程米撮勺合升斗盘碗碟叠桶笼盆盒杯斛锅簋篮罐瓶壶卮盏"
    "箩箱煲啖袋钵年月日季刻时周天秒旬纪岁世更夜春夏秋冬代伏辈丸泡粒幢堆根道面片块元亿千万百吨角毛"
)
_MEASURE_WORDS_LONG = ("微克", "微米", "公分", "小时", "美元", "十吨")
QUANTIFIED_NUMBER = re.compile(
    r"(\d+)([多余几+])?(?=[" + _MEASURE_CHARS + "]|" + "|".join(_MEASURE_WORDS_LONG) + ")"
)


def _read_range(m: re.Match) -> str:
    first = NUMBER.sub(_read_number, m.group(1))
    second = NUMBER.sub(_read_number, m.group(6))
    return f"{first}到{second}"


def _read_negative_integer(m: re.Match) -> str:
    return "负" + number(m.group(2))


def _read_version(m: re.Match) -> str:
    return "".join("点" if ch == "." else number(ch) for ch in m.group(1))


def _read_number(m: re.Match) -> str:
    if m.group(5):  # ".5" alone: read as 零点五 (a sign before it is dropped, as upstream does)
        return number(m.group(5))
    return ("负" if m.group(1) else "") + number(m.group(2))


def _read_quantified(m: re.Match) -> str:
    spoken = number(m.group(1))
    if spoken == "二":
        spoken = "两"
    approx = {"+": "多", None: ""}.get(m.group(2), m.group(2))
    return spoken + approx


def _read_digit_string(m: re.Match) -> str:
    return digits(m.group(0), phone_one=True)


def verbalize(sentence: str) -> str:
    """Apply every rule, in upstream's order, to one (already simplified, half-width) sentence."""
    s = DATE.sub(_read_date, sentence)
    s = DATE_NUMERIC.sub(_read_numeric_date, s)
    s = CLOCK_RANGE.sub(_read_clock_match, s)
    s = CLOCK.sub(_read_clock_match, s)
    s = UNIT_RANGE.sub(_read_unit_range, s)
    s = TEMPERATURE.sub(_read_temperature, s)
    s = replace_measures(s)
    # Replacing one operator can expose the next (1+2+3), so repeat until none is left.
    while ARITHMETIC.search(s):
        s = ARITHMETIC.sub(_read_arithmetic, s)
    s = POWER.sub(_read_power, s)
    s = FRACTION.sub(_read_fraction, s)
    s = PERCENTAGE.sub(_read_percentage, s)
    s = MOBILE_PHONE.sub(_read_mobile, s)
    s = LANDLINE_PHONE.sub(_read_landline, s)
    s = SERVICE_NUMBER.sub(_read_landline, s)
    s = RANGE.sub(_read_range, s)
    s = NEGATIVE_INTEGER.sub(_read_negative_integer, s)
    s = VERSION.sub(_read_version, s)
    s = DECIMAL.sub(_read_number, s)
    s = QUANTIFIED_NUMBER.sub(_read_quantified, s)
    s = DIGIT_STRING.sub(_read_digit_string, s)
    s = NUMBER.sub(_read_number, s)
    return s
