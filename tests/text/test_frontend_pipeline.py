"""Tests of gsv.text.frontend.TextFrontend: upstream's text preparation (minus BERT) and bad input."""
from __future__ import annotations

import logging

import pytest

from gsv.errors import OptionError, TextError, UnknownLanguageError
from gsv.text import segment
from gsv.text.cleaner import clean_text
from gsv.text.frontend import MIN_PHONES, TextFrontend
from gsv.text.symbols import cleaned_text_to_sequence


@pytest.fixture(scope="module")
def fe():
    return TextFrontend("v2")


def test_prepare_follows_pre_seg_text_and_clean_text(fe):
    text = "こんにちは。今日はいい天気ですね！散歩に行きませんか？はい、行きましょう。"
    got = fe.prepare(text, "ja", "cut5")
    assert [s.text for s in got] == segment.preprocess_segments(text, "ja", "cut5")
    for s in got:
        ref = clean_text(s.text, "ja")
        assert list(s.phones) == ref.phones and s.norm_text == ref.norm_text
        assert list(s.ids) == cleaned_text_to_sequence(ref.phones)
        assert s.phone_count == len(s.ids) and not s.retried
        assert [p.lang for p in s.pieces] == ["ja"] and not s.pieces[0].needs_bert


def test_short_segment_is_retried_with_a_leading_full_stop(fe):
    s = fe.prepare_segment("はい。", "ja")
    assert s.retried and s.text == ".はい。"
    assert s.phones[0] == "." and len(s.phones) >= MIN_PHONES
    long = fe.prepare_segment("こんにちは。", "ja")
    assert not long.retried and long.text == "こんにちは。"


def test_prompt_gets_terminal_mark_and_retry(fe):
    p = fe.prepare_prompt("こんにちは、今日はいい天気ですね\n", "ja")
    assert p.text == "こんにちは、今日はいい天気ですね。" and not p.retried
    short = fe.prepare_prompt("はい", "ja")
    assert short.text == ".はい。" and short.retried
    en = fe.prepare_prompt("Good morning, everybody", "en")
    assert en.text == "Good morning, everybody."


def test_mixed_language_pieces_carry_bert_bookkeeping(fe):
    s = fe.prepare_segment("これはPythonです。", "ja")
    assert [p.lang for p in s.pieces] == ["ja", "en", "ja"]
    assert s.ids == tuple(i for p in s.pieces for i in p.ids)
    assert s.phone_count == sum(p.phone_count for p in s.pieces)
    assert all(p.word2ph is None and not p.needs_bert for p in s.pieces)


def test_chinese_piece_needs_bert_and_has_word2ph(fe):
    pytest.importorskip("gsv.text.zh")
    s = fe.prepare_segment("我们去公园散步吧。", "zh")
    (piece,) = s.pieces
    assert piece.needs_bert and piece.word2ph is not None
    assert sum(piece.word2ph) == piece.phone_count and len(piece.word2ph) == len(piece.norm_text)


def test_unspeakable_characters_are_dropped_with_a_warning(fe, caplog):
    with caplog.at_level(logging.WARNING, logger="gsv.text.frontend"):
        got = fe.sanitize("はい😀\u0007、Привет\u200dいいえ\U0001F44D\uFE0F")
    assert got == "はい、いいえ"
    assert "cannot be spoken" in caplog.text and "U+1F600" in caplog.text
    assert fe.sanitize("a\tb\r\nc\rd") == "a b\nc\nd"
    assert fe.sanitize("½ µm ① ℃ 20％") == "½ µm ① ℃ 20％"  # number forms and symbols stay


def test_hangul_is_unspeakable_in_v1():
    v1 = TextFrontend("v1")
    assert v1.sanitize("안녕 hello") == " hello"
    with pytest.raises(UnknownLanguageError):
        v1.prepare("안녕하세요", "ko")


def test_empty_and_unspeakable_inputs_raise_text_error(fe):
    for bad in ("", "\n\n", "😀😀", "Привет"):
        with pytest.raises(TextError):
            fe.prepare(bad, "ja")
    with pytest.raises(TextError):
        fe.prepare("。。。", "ja", "cut5")  # nothing but marks
    with pytest.raises(TextError, match="empty after normalisation"):
        fe.prepare("「」", "ja", "cut0")
    with pytest.raises(TextError):
        fe.prepare_prompt("😀", "ja")


def test_too_long_text_raises_text_error():
    small = TextFrontend("v2", max_chars=20)
    with pytest.raises(TextError, match="too long"):
        small.prepare("あ" * 21, "ja")
    assert small.prepare("あ" * 20, "ja")


def test_unknown_language_and_method(fe):
    with pytest.raises(UnknownLanguageError):
        fe.prepare("hello", "fr")
    with pytest.raises(UnknownLanguageError):
        TextFrontend("v3")
    with pytest.raises(OptionError):
        fe.prepare("hello", "en", "cut7")


def test_ja_user_dictionary_is_per_frontend(tmp_path):
    csv = tmp_path / "u.csv"
    csv.write_text("ａｉ,1345,1345,-5000,名詞,固有名詞,一般,*,*,*,ａｉ,アイ,アイ,1/2,*\n", encoding="utf-8")
    custom = TextFrontend("v2", ja_user_dict=csv, ja_cache_dir=tmp_path / "cache")
    s = custom.prepare_segment("私はＡＩの研究をしています。", "ja")  # full-width: stays Japanese
    assert "a ] i n o" in " ".join(s.phones)
    plain = TextFrontend("v2").prepare_segment("私はＡＩの研究をしています。", "ja")  # full-width: stays Japanese
    assert "a ] i n o" not in " ".join(plain.phones)
