"""Unit tests of gsv.text.segment: upstream's cut methods, pre-segmentation and prompt rule, quirks included."""
from __future__ import annotations

import pytest

from gsv.errors import OptionError, TextError
from gsv.text import segment as seg


def test_registry_and_unknown_method():
    assert sorted(seg.METHODS) == ["cut0", "cut1", "cut2", "cut3", "cut4", "cut5"]
    with pytest.raises(OptionError, match="cut9"):
        seg.get_method("cut9")


def test_cut0_returns_text_or_the_slash_n_quirk():
    assert seg.cut0("你好。\n再见") == "你好。\n再见"
    assert seg.cut0("...") == "/n"
    assert seg.cut0(" - ") == "/n"
    assert seg.cut0("") == "/n"
    assert seg.cut0("。") == "。"  # full-width marks are not "filler" for cut0


def test_sentences_rules():
    assert seg.sentences("甲……乙——丙") == ["甲。", "乙，", "丙。"]
    assert seg.sentences("a.b") == ["a.", "b。"]
    assert seg.sentences("") == []


def test_cut1_groups_of_four_with_the_last_group_absorbing():
    five = "一。二。三。四。五。"
    assert seg.cut1(five) == five  # 5..8 sentences: one group
    nine = "一。二。三。四。五。六。七。八。九。"
    assert seg.cut1(nine) == "一。二。三。四。\n五。六。七。八。九。"
    assert seg.cut1("没有标点") == "没有标点"  # fewer than 5 sentences: the text itself
    assert seg.cut1("他……说") == "他……说"


def test_cut2_groups_over_50_chars_and_merges_a_short_tail():
    a = "甲" * 30 + "，"
    b = "乙" * 30 + "。"
    c = "丙" * 10 + "。"
    assert seg.cut2(a + b + c) == a + b + c  # 62 > 50 then a short tail merged back
    assert seg.cut2("单句") == "单句"
    assert seg.cut2("一。二") == "一。二。"  # the supplied 。 shows up
    long = ("句" * 49 + "。") * 3
    assert seg.cut2(long).split("\n") == [("句" * 49 + "。") * 2, "句" * 49 + "。"]  # 50 is not "< 50"


def test_cut3_and_cut4():
    assert seg.cut3("一。二。。三。") == "一\n二\n三"
    assert seg.cut3("。。") == ""
    assert seg.cut4("It costs 3.14 now. Bye.") == "It costs 3.14 now\n Bye"
    assert seg.cut4("a. . b") == "a\n b"  # " " only pieces are dropped


def test_cut5_keeps_decimals_and_drops_mark_only_pieces():
    assert seg.cut5("价格3.14元，好！！再见") == "价格3.14元，\n好！\n再见"
    assert seg.cut5("a;b：c") == "a;\nb：\nc"
    assert seg.cut5("\n\n你好。\n再见。\n") == "你好。\n\n再见。"
    assert seg.cut5("3.") == "3."


def test_cut_splits_on_newlines():
    assert seg.cut("一。\n\n二", "cut0") == ["一。", "", "二"]


def test_replace_consecutive_punctuation():
    assert seg.replace_consecutive_punctuation("好!!?..…，，") == "好!，，"
    assert seg.replace_consecutive_punctuation("a - - b") == "a - - b"


def test_merge_short_text_in_array():
    assert seg.merge_short_text_in_array(["ab"], 5) == ["ab"]
    assert seg.merge_short_text_in_array(["ab", "cd", "efg", "h"], 5) == ["abcdefgh"]
    assert seg.merge_short_text_in_array(["abcde", "f"], 5) == ["abcdef"]
    assert seg.merge_short_text_in_array(["a", "b"], 5) == ["ab"]


def test_split_big_text():
    text = ("甲" * 300 + "，") * 3
    parts = seg.split_big_text(text)
    assert "".join(parts) == text and all(len(p) <= 510 for p in parts)
    assert seg.split_big_text("a" * 600) == ["", "a" * 600]  # an oversized run stays whole


def test_pre_seg_text_rules():
    assert seg.pre_seg_text("好。我们开始吧", "zh", "cut0") == ["。好。我们开始吧。"]
    assert seg.pre_seg_text("Hi. Nice to see you", "en", "cut0") == [".Hi. Nice to see you."]
    assert seg.pre_seg_text("Hi. Nice", "all_zh", "cut0") == ["。Hi. Nice。"]  # only "en" gets "."
    assert seg.pre_seg_text("\n\n", "zh", "cut0") == []
    assert seg.pre_seg_text("你好，世界！……", "zh", "cut5") == ["你好，世界！"]  # cut5 drops the lone "。"
    with pytest.raises(TextError):
        seg.pre_seg_text("。。。", "zh", "cut5")


def test_pre_seg_text_splits_long_segments():
    text = ("这是一个很长的句子" * 20 + "，") * 4 + "。"
    out = seg.pre_seg_text(text, "zh", "cut0")
    assert len(out) > 1 and all(len(p) <= 510 for p in out)
    assert "".join(out) == text


def test_prompt_text_rule():
    assert seg.prepare_prompt_text("你好\n", "zh") == "你好。"
    assert seg.prepare_prompt_text("Hello", "en") == "Hello."
    assert seg.prepare_prompt_text("Hello!", "en") == "Hello!"
    assert seg.prepare_prompt_text("はい;", "ja") == "はい;。"
    with pytest.raises(TextError):
        seg.prepare_prompt_text("\n", "zh")
