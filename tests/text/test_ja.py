"""Unit tests of the Japanese frontend (gsv.text.ja): upstream japanese.py rules and the user dictionary.

The expected phones come from upstream GPT-SoVITS v2 run with pyopenjtalk-plus 0.4.1.post10
(see the conformance kit), not from what would be linguistically ideal.
"""
from __future__ import annotations

import pytest

from gsv.text import ja
from gsv.text.cleaner import clean_text


def phones(text: str) -> str:
    return " ".join(ja.g2p(ja.normalize(text))[0])


@pytest.mark.parametrize("text, expected", [
    ("すごい!!!", "すごい!"),
    ("えっ?!…。", "えっ?。"),
    ("そう...ですか--", "そう.ですか-"),
    ("すごい！！！", "すごい！！！"),  # full-width marks are not collapsed
    ("ABC", "ABC"),  # no case folding in norm_text
])
def test_normalize_collapses_ascii_mark_runs_only(text, expected):
    assert ja.normalize(text) == expected


def test_g2p_returns_no_word2ph():
    ph, w2p = ja.g2p("はい")
    assert w2p is None and ph == ["h", "a", "]", "i"]


def test_prosody_marks_and_sentence_ends():
    # rise after the first mora, accent-phrase boundary '#', fall ']' (golden-case sentence)
    assert phones("こんにちは、今日はいい天気ですね。") == \
        "k o [ N n i ch i w a , ky o ] o w a # i [ i # t e ] N k i d e s u n e ."


def test_question_mark_kept_and_marks_mapped():
    assert phones("えっ？本当ですか？") == "e ] cl ? h o [ N t o o d e ] s u k a ?"
    # CJK marks map to ASCII ones; unknown marks stay as they are (clean_text makes them UNK)
    assert phones("はい：「いいえ」；") == "h a ] i , 「 i [ i e 」 ,"


def test_space_is_not_a_phone_but_other_marks_are():
    got = ja.g2p("はい いいえ")[0]
    assert " " not in got and "" not in got
    assert ja.g2p("はい\nいいえ")[0][4] == "."  # a newline is a full stop


def test_percent_lowercase_and_fullwidth_digits():
    assert phones("20％") == phones("20パーセント")
    assert phones("ＡＢＣ") == phones("ａｂｃ")
    assert phones("ABC") == phones("abc")
    # full-width zero is a Unicode digit: "１００" is read as one number, not cut at "０"
    assert phones("１００点") == "hy a [ k u t e ] N"


def test_decimal_point_cuts_the_run():
    assert phones("3.14") == "s a [ N . j u [ u y o ] N"  # "14" is read as a number of its own


def test_clean_text_maps_non_symbols_to_unk():
    got = clean_text("「はい」", "ja")
    assert got.phones == ["UNK", "h", "a", "]", "i", "UNK"]
    assert got.word2ph is None and got.norm_text == "「はい」"


def test_v1_has_no_pitch_marks():
    got = clean_text("こんにちは", "ja", "v1")
    assert "[" not in got.phones and got.phones.count("UNK") == 1


def test_prosody_from_synthetic_labels():
    # Two-mora accent phrase, accent type 1 ('a' high, 'i' low), statement end.
    def lab(p, a1, a2, a3, f1="2", e3="0"):
        return f"xx^xx-{p}+xx=xx/A:{a1}+{a2}+{a3}/B:xx/C:xx/D:xx/E:xx_xx!{e3}_xx-xx/F:{f1}_1#0_xx@1_1|1_2/G:xx"

    labels = [lab("sil", "xx", "xx", "xx", "xx"), lab("a", "0", "1", "2"), lab("i", "1", "2", "1"),
              lab("sil", "xx", "xx", "xx", "xx", e3="0")]
    assert ja._prosody_from_labels(labels) == ["^", "a", "]", "i", "$"]
    labels[-1] = lab("sil", "xx", "xx", "xx", "xx", e3="1")
    assert ja._prosody_from_labels(labels)[-1] == "?"


USER_DICT_ROW = "ａｉ,1345,1345,-5000,名詞,固有名詞,一般,*,*,*,ａｉ,アイ,アイ,1/2,*\n"


def test_user_dictionary_is_compiled_once_and_used(tmp_path):
    csv = tmp_path / "userdict.csv"
    csv.write_text(USER_DICT_ROW, encoding="utf-8")
    cache = tmp_path / "cache"
    with_dict = ja.JapaneseG2P(user_dict=csv, cache_dir=cache)
    text = "私はAIの研究をしています。"
    # This is the golden case that needs upstream's user dictionary: one entry fixes it.
    assert " ".join(clean_text(text, "ja", module=with_dict).phones) == \
        "w a [ t a sh i w a UNK a ] i n o UNK k e [ N ky u u o sh i t e i m a ] s u ."
    compiled = list(cache.glob("*.dic"))
    assert len(compiled) == 1
    mtime = compiled[0].stat().st_mtime_ns
    again = ja.JapaneseG2P(user_dict=csv, cache_dir=cache)
    assert again.compiled_user_dict() == compiled[0]
    assert compiled[0].stat().st_mtime_ns == mtime
    # the default frontend is untouched by another instance's dictionary
    assert "e ] i" in phones(text)


def test_missing_user_dictionary_is_a_gsv_error(tmp_path):
    from gsv.errors import GsvError

    g = ja.JapaneseG2P(user_dict=tmp_path / "nope.csv", cache_dir=tmp_path)
    with pytest.raises(GsvError, match="not found"):
        g.g2p("はい")


def test_configure_replaces_the_module_default(tmp_path):
    csv = tmp_path / "userdict.csv"
    csv.write_text(USER_DICT_ROW, encoding="utf-8")
    before = ja.default_frontend()
    try:
        ja.configure(user_dict=csv, cache_dir=tmp_path / "cache")
        assert "a ] i n o" in phones("AIの")
    finally:
        ja._default = before
    assert "a ] i n o" not in phones("AIの")
