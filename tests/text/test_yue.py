"""Unit tests of the Cantonese frontend (gsv.text.yue), upstream cantonese.py behaviour."""
from __future__ import annotations

import pytest

from gsv.errors import TextError
from gsv.text import yue
from gsv.text.symbols import symbol_to_id


@pytest.mark.parametrize(
    "text, norm",
    [
        ("真係好犀利！！！", "真系好犀利!!!"),  # runs of punctuation are NOT collapsed
        ("咩話？！你再講多次……", "咩话?!你再讲多次……"),
        ("佢講：「聽日見！」", "佢讲,听日见!"),
        ("(括號)[方]", "括号方"),
        ("～~", "--"),
        ("嗯呣", "嗯呣"),  # kept, unlike zh
        ("今日係2024年3月15日。", "今日系二零二四年三月十五日."),
        ("我哋用緊iPhone同Android。", "我哋用紧同."),
    ],
)
def test_normalize(text, norm):
    assert yue.normalize(text) == norm


@pytest.mark.parametrize("junk", ["😀", "㗎", "\x07", "こんにちは", "안녕", "ABC"])
def test_characters_outside_the_cjk_block_are_removed(junk):
    assert yue.normalize(f"{junk}你好{junk}") == "你好"


def test_empty():
    assert yue.normalize("") == ""
    assert yue.normalize("iPhone😀") == ""
    assert yue.g2p("") == ([], [])


def test_g2p_prefixes_and_word2ph():
    phones, word2ph = yue.g2p("我屋企喺沙田.")
    assert phones == ["Yng", "Yo5", "Yuk", "Yk1", "Yk", "Yei2", "Yh", "Yai2", "Ys", "Yaa1", "Yt", "Yin4", "."]
    assert word2ph == [2, 2, 2, 2, 2, 2, 1]


def test_each_punctuation_mark_is_its_own_phone():
    assert yue.g2p("好!!!") == (["Yh", "You2", "!", "!", "!"], [2, 1, 1, 1])


@pytest.mark.parametrize(
    "syllable, parts",
    [("ngo5", ("ng", "o", "5")), ("ngaa4", ("ng", "aa", "4")), ("m4", ("m", "m", "4")), ("ng5", ("ng", "g", "5")),
     ("uk1", ("uk", "k", "1")), ("aa3", ("aa", "a", "3")), ("aai3", ("aa", "i", "3")), ("gwong2", ("gw", "ong", "2"))],
)
def test_split_jyutping_first_matching_prefix(syllable, parts):
    assert yue.split_jyutping(syllable) == parts


def test_phones_are_v2_symbols():
    norm = yue.normalize("呢度嘅嘢食好好味，你食咗飯未呀？")
    phones, word2ph = yue.g2p(norm)
    table = symbol_to_id("v2")
    assert all(p in table for p in phones)
    assert sum(word2ph) == len(phones) and len(word2ph) == len(norm)


def test_unreadable_character_raises_text_error():
    with pytest.raises(TextError):
        yue.g2p("你a")
