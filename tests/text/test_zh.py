"""Unit tests of the Mandarin frontend (gsv.text.zh): number reading, normaliser rules, sandhi, erhua.

Expected values follow upstream GPT-SoVITS v2 (chinese2.py, pypinyin path), quirks included.
The golden end-to-end cases live in test_frontend_cases.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from gsv.errors import TextError
from gsv.text import zh
from gsv.text.symbols import symbol_to_id
from gsv.text.zh import numbers
from gsv.text.zh.g2p import syllable_phones
from gsv.text.zh.syllables import inventory, split_syllable


def pinyin_of(text: str) -> list[str]:
    """Phones of ``text`` regrouped per syllable ("n i3") for readable assertions."""
    phones, word2ph = zh.g2p(zh.normalize(text))
    out, i = [], 0
    for n in word2ph:
        out.append(" ".join(phones[i : i + n]))
        i += n
    return out


# --- number reading -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, spoken",
    [("0", "零"), ("000", "零"), ("7", "七"), ("10", "十"), ("12", "十二"), ("20", "二十"), ("112", "一百一十二"),
     ("1205", "一千二百零五"), ("100010", "十万零一十"), ("100000000", "一亿"), ("", "")],
)
def test_cardinal(value, spoken):
    assert numbers.cardinal(value) == spoken


@pytest.mark.parametrize(
    "value, spoken",
    [("3.14", "三点一四"), ("3.20", "三点二零"), ("2.0", "二点零"), ("0.50", "零点五零"), (".5", "零点五"), ("199.5", "一百九十九点五")],
)
def test_number_with_decimals(value, spoken):
    assert numbers.number(value) == spoken


def test_digits_and_phone_one():
    assert numbers.digits("2024") == "二零二四"
    assert numbers.digits("110", phone_one=True) == "幺幺零"


def test_number_with_two_points_is_an_error():
    with pytest.raises(TextError):
        numbers.number("1.2.3")


# --- normaliser rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, norm",
    [
        ("2024年3月15日", "二零二四年三月十五日"),
        ("24年5月", "二四年五月"),
        ("2023-12-01", "二零二三年十二月一日"),
        ("2023/01/05", "二零二三年一月五日"),
        ("9:05", "九点零五分"),
        ("12:00:05", "十二点零五秒"),
        # quirk: the second time of a range says 半 when the *first* minute is 30
        ("8:30-9:15", "八点半至九点半"),
        ("8:15-9:30", "八点十五分至九点三十分"),
        # quirk: 摄氏度 is read 度 as well
        ("25摄氏度", "二十五度"),
        ("-3.5°C", "零下三点五度"),
        ("20%~30%", "百分之二十至百分之三十"),
        ("3km~5km", "三千米至五千米"),
        ("12.5%", "百分之十二点五"),
        ("-3%", "负百分之三"),
        ("3/4", "四分之三"),
        ("-1/2", "负二分之一"),
        ("10~20", "十到二十"),
        ("-10", "负十"),
        ("1+2+3=6", "一加二加三等于六"),
        ("x=5", "等于五"),
        ("3m²", "三平方米"),
        ("60km/h", "六十千米每"),
        ("5kg", "五千克"),
        ("v2.0.1", "二点零点一"),
        ("1205", "幺二零五"),
        ("007", "零零七"),
        ("2个", "两个"),
        ("第2名", "第两名"),
        ("13812345678", "幺三八幺二三四五六七八"),
        ("010-12345678", "零幺零减幺二三四五六七八"),
        ("400-123-4567", "四零零减幺二三减四五六七"),
        ("1,000,000元", "一,零零零,零元"),
    ],
)
def test_numeric_rules(text, norm):
    assert zh.normalize(text) == norm


@pytest.mark.parametrize(
    "text, norm",
    [
        ("αβ π Ω", "阿尔法贝塔派欧米伽"),
        ("①②", "一二"),
        ("ＡＢ１２", "十二"),  # full-width digits read, Latin letters dropped
        ("長風破浪會有時", "长风破浪会有时"),
        ("“你好”《书》【标】（注）", "你好书标注"),
        ("嗯，呣～", "恩,母…"),
        ("你好！！？？", "你好!"),
        ("什么？！你再说一遍……", "什么?你再说一遍…"),
        ("银行、学校；医院：到了。", "银行,学校,医院,到了."),
        ("你好\n世界", "你好世界"),
        ("我们用的是Python和GPT模型", "我们用的是和模型"),
    ],
)
def test_text_rules(text, norm):
    assert zh.normalize(text) == norm


@pytest.mark.parametrize("junk", ["😀", "\u200b", "\x07", "\t", "こんにちは", "안녕", "Привет", "ไทย", "〇", "\u3000"])
def test_other_scripts_and_control_characters_are_dropped(junk):
    assert zh.normalize(f"{junk}你好{junk}") == "你好"


@pytest.mark.parametrize("text", ["", " ", "hello world", "😀😀", "——", "《》"])
def test_nothing_left_gives_empty_output(text):
    assert zh.normalize(text) == ""
    assert zh.g2p(zh.normalize(text)) == ([], [])


def test_normalize_rejects_non_strings():
    with pytest.raises(TypeError):
        zh.normalize(b"bytes")


# --- G2P -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["你好，欢迎来到北京。", "一一列举出来，一五一十地说清楚。", "小孩儿在门口玩儿呢。", "3+5=8，10-4=6。", "……", "好"],
)
def test_word2ph_invariants(text):
    norm = zh.normalize(text)
    phones, word2ph = zh.g2p(norm)
    assert len(word2ph) == len(norm)
    assert sum(word2ph) == len(phones)
    table = symbol_to_id("v2")
    assert all(p in table for p in phones)
    for ch, n in zip(norm, word2ph):
        assert n == (1 if ch in "!?…,.-" else 2)


def test_pause_marks_are_single_phones():
    assert zh.g2p("好,好.") == (["h", "ao3", ",", "h", "ao3", "."], [2, 1, 2, 1])


def test_yi_sandhi():
    assert pinyin_of("一天")[0] == "y i4"  # before a non-fourth tone
    assert pinyin_of("一个")[0] == "y i2"  # before a fourth tone
    assert pinyin_of("第一次")[1] == "y i1"  # ordinal
    assert pinyin_of("看一看")[1] == "y i5"  # between a reduplicated verb
    assert pinyin_of("一一列举")[:2] == ["y i4", "y i2"]


def test_bu_sandhi():
    assert pinyin_of("不要")[0] == "b u2"
    assert pinyin_of("不知道")[0] == "b u4"
    assert pinyin_of("听不懂")[1] == "b u5"


def test_third_tone_chains():
    assert pinyin_of("你好") == ["n i2", "h ao3"]
    assert pinyin_of("展览馆") == ["zh an2", "l an2", "g uan3"]
    assert pinyin_of("老古董") == ["l ao3", "g u2", "d ong3"]


def test_neutral_tones():
    assert pinyin_of("桌子上的东西") == ["zh uo1", "z i05", "sh ang4", "d e5", "d ong1", "x i5"]
    assert pinyin_of("我们")[1] == "m en5"
    assert pinyin_of("奶奶") == ["n ai3", "n ai5"]  # reduplicated noun
    assert pinyin_of("想想") == ["x iang2", "x iang3"]  # listed as not neutral


def test_erhua_takes_previous_tone():
    assert pinyin_of("小孩儿") == ["x iao3", "h ai2", "EE er2"]
    assert pinyin_of("哪儿") == ["n a3", "EE er3"]
    assert pinyin_of("一会儿")[-1] == "EE er4"


def test_not_erhua_words_keep_er2():
    assert pinyin_of("女儿") == ["n v3", "EE er2"]
    assert pinyin_of("花儿")[-1] == "EE er2"


def test_zero_initial_syllables():
    assert pinyin_of("二") == ["EE er4"]
    assert pinyin_of("安") == ["AA an1"]
    assert pinyin_of("欧") == ["OO ou1"]
    assert pinyin_of("鱼") == ["y v2"]
    assert pinyin_of("月") == ["y ve4"]
    assert pinyin_of("烟") == ["y En1"]
    assert pinyin_of("问") == ["w en4"]


def test_unreadable_input_raises_text_error():
    with pytest.raises(TextError):
        zh.g2p("嗯")  # pypinyin gives no final for it; normalize respells it 恩 for that reason
    with pytest.raises(TextError):
        zh.g2p("你;好")  # not a pause mark the symbol table knows
    with pytest.raises(TextError):
        zh.g2p(zh.normalize("噷儿"))  # hm: a reading without a final


def test_syllable_phone_mapping():
    assert syllable_phones("zh", "i1") == ["zh", "ir1"]
    assert syllable_phones("s", "i4") == ["s", "i04"]
    assert syllable_phones("g", "uei4") == ["g", "ui4"]
    assert syllable_phones("", "iou3") == ["y", "ou3"]
    assert syllable_phones("", "van2") == ["y", "van2"]
    assert syllable_phones("", "ueng1") == ["w", "eng1"]
    with pytest.raises(TextError):
        syllable_phones("", "m2")


def test_every_syllable_maps_to_v2_symbols():
    table = symbol_to_id("v2")
    assert len(inventory()) == 429
    for syllable in inventory():
        initial, final = split_syllable(syllable)
        assert initial in table
        for tone in "12345":
            assert final + tone in table, syllable
    assert split_syllable("hm") is None


def test_import_is_lazy():
    code = (
        "import sys, gsv.text.zh, gsv.text.yue\n"
        "heavy = {'jieba_fast', 'jieba', 'pypinyin', 'ToJyutping', 'onnxruntime', 'transformers'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_v1_frontend_has_no_erhua_rule():
    from gsv.text.zh import v1

    norm = v1.normalize("你去哪儿了？")
    assert norm == zh.normalize("你去哪儿了？")
    assert v1.g2p(norm)[0][4:8] == ["n", "a3", "EE", "er2"]  # v2: er3, the tone of 哪
    assert zh.g2p(norm)[0][4:8] == ["n", "a3", "EE", "er3"]
