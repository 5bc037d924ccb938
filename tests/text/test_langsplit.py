"""Unit tests of gsv.text.langsplit: script-based language pieces and upstream's mode rules."""
from __future__ import annotations

import pytest

from gsv.errors import UnknownLanguageError
from gsv.text.langsplit import LangPiece, split


def pieces(text, mode):
    return [(p.lang, p.text) for p in split(text, mode)]


def test_unknown_mode():
    with pytest.raises(UnknownLanguageError):
        split("你好", "fr")


def test_en_mode_is_whole_text_with_spaces_squeezed():
    assert split("你好  world   ok", "en") == [LangPiece("en", "你好 world ok")]
    assert split("", "en") == []


def test_mixed_mode_keeps_english_and_relabels_the_rest():
    text = "我喜欢用Python编程。It is fun! 你呢？"
    expected = [("zh", "我喜欢用"), ("en", "Python"), ("zh", "编程。"), ("en", "It is fun! "), ("zh", "你呢？")]
    assert pieces(text, "zh") == expected
    assert pieces(text, "ja") == [(("ja" if lang == "zh" else lang), t) for lang, t in expected]
    # consecutive non-English pieces (kana, Han, Hangul) become one piece of the chosen language
    assert pieces("日本語と한국어", "ko") == [("ko", "日本語と한국어")]


def test_auto_detects_scripts():
    assert pieces("저는 AI를 연구해요. 你好。こんにちは", "auto") == [
        ("ko", "저는 "), ("en", "AI"), ("ko", "를 연구해요. "), ("zh", "你好。"), ("ja", "こんにちは")]


def test_auto_han_follows_kana_in_the_same_sentence():
    assert pieces("今日は、晴れ。明日は、雨。本日晴天。", "auto") == [
        ("ja", "今日は、晴れ。明日は、雨。"), ("zh", "本日晴天。")]
    assert pieces("東京タワー", "auto") == [("ja", "東京タワー")]


def test_auto_yue_and_all_yue_read_zh_as_yue():
    assert pieces("我哋去饮茶 OK", "auto_yue") == [("yue", "我哋去饮茶 "), ("en", "OK")]
    assert pieces("我哋去饮茶 OK 3", "all_yue") == [("yue", "我哋去饮茶 "), ("en", "OK "), ("yue", "3")]


def test_forced_modes_keep_english_and_force_digits():
    assert pieces("Hello 世界 123", "all_ja") == [("en", "Hello "), ("ja", "世界 123")]
    assert pieces("こんにちは", "all_zh") == [("zh", "こんにちは")]


def test_digits_follow_upstream_neighbour_rules():
    assert pieces("衬衫的价格是9.15便士", "auto") == [("zh", "衬衫的价格是9.15便士")]
    assert pieces("Version 2.5 released", "auto") == [("en", "Version 2.5 released")]
    assert pieces("100", "auto") == [("zh", "100")]  # a number alone
    assert pieces("100个", "auto") == [("zh", "100个")]  # leading number: the next piece's language
    assert pieces("ok 100", "auto") == [("en", "ok 100")]  # trailing number: the previous piece's
    # different neighbours: a mark at the end of the previous piece sends the number forward
    assert pieces("Hello,3个", "auto") == [("en", "Hello,"), ("zh", "3个")]
    # (only the very last character counts, as upstream: a space after the mark hides it)
    assert pieces("Hello, 3个", "auto") == [("en", "Hello, 3"), ("zh", "个")]
    # otherwise the longer neighbour wins
    assert pieces("Hello world 3个", "auto") == [("en", "Hello world 3"), ("zh", "个")]


def test_neutral_characters_attach_to_the_previous_piece():
    assert pieces("「こんにちは」と、Hello!", "auto") == [("ja", "「こんにちは」と、"), ("en", "Hello!")]
    assert pieces("...", "auto") == [("zh", "...")]
    assert pieces("...", "ja") == [("ja", "...")]


def test_fullwidth_latin_follows_cjk():
    assert pieces("ＡＢＣのテスト", "auto") == [("ja", "ＡＢＣのテスト")]


def test_accented_latin_is_english():
    assert pieces("café 很好", "auto") == [("en", "café "), ("zh", "很好")]
