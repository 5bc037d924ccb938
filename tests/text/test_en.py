"""Unit tests of the English frontend (gsv.text.en): normaliser rules, G2P rules, OOV predictor.

Expected strings come from upstream GPT-SoVITS v2's behaviour (quirks included, e.g. ";" being
deleted rather than turned into ","), not from what would be linguistically ideal.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from gsv.errors import TextError
from gsv.text.cleaner import clean_text
from gsv.text.en import g2p, normalize
from gsv.text.en import dictionary, homographs, oov
from gsv.text.en.phonemizer import clean_phones, word_phones


def phones(text: str) -> str:
    return " ".join(g2p(normalize(text))[0])


# ---------------------------------------------------------------- normaliser

@pytest.mark.parametrize(
    "text, expected",
    [
        ("I have 3 cats.", "I have three cats."),
        ("In 1999 and 2005 and 1900 and 2000.", "In nineteen ninety-nine and two thousand five and nineteen hundred and two thousand."),
        ("It cost 1,234,567 won.", "It cost one million, two hundred thirty-four thousand, five hundred sixty-seven won."),
        ("She was 1st, he was 22nd and 3rd.", "She was first, he was twenty-second and third."),
        ("Pi is 3.14.", "Pi is three point one four."),
        ("Mix 3/4 and 1/2 and 3/2 and 6/1.", "Mix three fourths and one half and three halves and six."),
        ("Pay $2.50 or $1 or $0.01 or 5$.", "Pay two dollars and fifty cents or one dollar or one cent or five dollars."),
        ("It was £20 and £1.5.", "It was twenty pounds and one pound and fifty pence."),
        # "a.m.," collapses to "a.m." (runs of punctuation keep their first mark)
        ("At 9:15, 12:00 and 17:45.", "At nine fifteen a.m. twelve o'clock p.m. and five forty-five p.m."),
        ("Walk 1km, 1.5km, 12km/h.", "Walk one kilometer, one point five kilometers, twelve kilometersh."),
        ("Bake at 180°C for 2h 15min.", "Bake at one hundred eighty degrees celsius for two hours fifteen minutes."),
        ("Use 1tsp and 2tbsp, 6ft.", "Use one teaspoon and two tablespoons, six feet."),
        ("About 45% done.", "About forty-five percent done."),
        ("3 + 4 = 7", "three plus four Equals seven"),
        ("It was -5 outside.", "It wasnegative five outside."),  # upstream swallows the space
        ("1. Buy milk", "first, Buy milk"),
    ],
)
def test_numbers_and_units(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("e.g. this, i.e. that", "for example this, that is that"),
        ("NASA and the FBI", "N A S A and the F B I"),
        ("the U.S. team", "the U. S. team"),
        ("my iPhone", "my i Phone"),
        ("Dr. Smith", "Dr. Smith"),  # titles stay; the dictionary reads "dr" as "drive"
        ("Wait... what?! Really???", "Wait. what? Really?"),
        ("Hello , world", "Hello  world"),  # a mark after whitespace is dropped, as upstream
        ("Tuesday; don't: \"quote\" it’s", "Tuesday don't quote its"),  # ; : " ’ are deleted
        ("Yes。Really！Why？你好", "Yes. Really! Why?"),  # CJK .!? become ASCII; Hanzi dropped
        ("café naïve", "cafe naive"),
    ],
)
def test_text_rules(text, expected):
    assert normalize(text) == expected


def test_literal_bracket_keys_quirk():
    # Upstream escapes its replacement keys, so only these literal strings become "," and "'".
    assert normalize("a[;:：，；]b") == "a,b"
    assert normalize('a["’]b') == "a'b"


@pytest.mark.parametrize("text", ["😀🎉", "\x00\x07\x1b", "Привет", "مرحبا", "こんにちは", "\u200b\ufeff"])
def test_other_scripts_and_controls_are_dropped(text):
    assert normalize(text) == ""
    assert normalize(f"Hi {text} there.") == "Hi  there."
    assert g2p(normalize(text)) == ([], None)


def test_bad_input_raises_text_error():
    with pytest.raises(TextError):
        normalize("$,5")  # upstream crashes reading the amount
    with pytest.raises(TextError):
        normalize("1" * 80)  # beyond what inflect can spell
    with pytest.raises(TextError):
        normalize(None)  # type: ignore[arg-type]
    with pytest.raises(TextError):
        g2p(b"bytes")  # type: ignore[arg-type]


def test_normalize_is_idempotent_on_plain_text():
    text = "The quick brown fox jumps over the lazy dog."
    assert normalize(text) == text
    assert normalize(normalize(text)) == text


# ---------------------------------------------------------------- dictionary

def test_dictionary_overrides_and_removals():
    assert dictionary.lookup("chatgpt") == ("CH", "AE1", "T", "JH", "IY1", "P", "IY1", "T", "IY1")
    assert dictionary.lookup("json") == ("JH", "EY1", "S", "AH0", "N")
    assert dictionary.lookup("conda") == ("K", "AA1", "N", "D", "AH0")
    for word in ("ae", "ai", "ar", "ios", "hud", "os"):
        assert dictionary.lookup(word) is None
    # the first pronunciation wins; "(2)" variants are never keys
    assert dictionary.lookup("a") == ("AH0",)
    assert dictionary.lookup("a(2)") is None


@pytest.mark.parametrize(
    "word, pron",
    [
        # first readings of CMUdict 0.7b, which upstream reads before any later CMUdict
        ("office", "AO1 F AH0 S"),
        ("government", "G AH1 V ER0 N M AH0 N T"),
        ("zero", "Z IY1 R OW0"),
        ("chemical", "K EH1 M IH0 K AH0 L"),
        ("information", "IH2 N F AO2 R M EY1 SH AH0 N"),
    ],
)
def test_cmudict_07b_comes_first(word, pron):
    assert dictionary.lookup(word) == tuple(pron.split())


@pytest.mark.parametrize(
    "word, pron",
    [
        # pronouncing's earlier 0.7b reads "V OW1 T AH0 D" etc.; the r13083 patch gives upstream's reading
        ("voted", "V OW1 T IH0 D"),
        ("united", "Y UW0 N AY1 T IH0 D"),
        ("notice", "N OW1 T IH0 S"),
        ("solution", "S AA0 L UW1 SH AH0 N"),
        ("usa", "Y UW2 EH2 S EY1"),
        ("login", "L AO1 G IH2 N"),  # added in r13083
    ],
)
def test_cmudict_r13083_patch(word, pron):
    base = dictionary._load_cmudict_07b()
    assert base.get(word) != tuple(pron.split())
    assert dictionary.lookup(word) == tuple(pron.split())


def test_cmudict_r13083_patch_matches_installed_base():
    # The patch is a diff against pronouncing 0.1.5's file, whose sha256 its header records.
    import hashlib

    path = dictionary.resources.files("gsv.text.en").joinpath(dictionary.CMUDICT_R13083_PATCH)
    header = path.read_text(encoding="utf-8")
    assert "Copyright (C) 1993-2015 Carnegie Mellon University" in header
    assert "$Rev:: 13083" in header
    digest = hashlib.sha256(dictionary.cmudict_07b_path().read_bytes()).hexdigest()
    assert f"base   = pronouncing 0.1.5 cmudict-0.7b, sha256 {digest}" in header


def test_cmudict_patch_format():
    entries = {"-hyphen": ("X",), "gone": ("G",), "old": ("O",)}
    dictionary._apply_cmudict_patch(
        entries, ["# comment", "", "-HYPHEN\tHH AY1 F AH0 N", "#SHARP-SIGN\tSH AA1 R P", "OLD\tN EW1", "-GONE", "-ABSENT"]
    )
    assert entries == {"-hyphen": ("HH", "AY1", "F", "AH0", "N"), "#sharp-sign": ("SH", "AA1", "R", "P"), "old": ("N", "EW1")}


def test_later_cmudict_fills_words_07b_lacks():
    assert "bitcoin" not in dictionary._load_cmudict_07b()
    assert dictionary.lookup("bitcoin") == ("B", "IH1", "T", "K", "OY1", "N")
    # a word r13083 dropped is filled from the later CMUdict too, as upstream's cmudict-fast.rep does
    assert dictionary.lookup("u.s") == ("Y", "UW1", "Z")
    # 0.7b-only spellings stay; its Latin-1 "DÉJÀ" line is dropped (upstream's copy is mangled)
    assert dictionary.lookup("deja") == ("D", "IY1", "JH", "AH0")
    assert dictionary.lookup("déjà") is None


def test_missing_cmudict_07b_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dictionary.importlib.util, "find_spec", lambda name: None)
    dictionary.cmu_dictionary.cache_clear()
    try:
        with pytest.raises(TextError, match=r"pronouncing==0\.1\.5"):
            dictionary.lookup("office")
    finally:
        monkeypatch.undo()
        dictionary.cmu_dictionary.cache_clear()
    assert dictionary.lookup("office") == ("AO1", "F", "AH0", "S")


# ---------------------------------------------------------------- G2P rules

def test_capital_a_and_article_a():
    assert phones("A cat, a dog.") == "EY1 K AE1 T , AH0 D AO1 G ."
    assert phones("Plan A.") == "P L AE1 N EY1 ."


def test_short_unknown_words_are_spelled():
    assert phones("FBI") == "EH1 F B IY1 AY1"
    assert word_phones("qzx") == "K Y UW1 Z IY1 EH1 K S".split()
    assert word_phones("ai") == ["EY1", "AY1"]  # removed from the dictionary, so spelled
    assert word_phones("ios") == "AY1 OW1 EH1 S".split()


@pytest.mark.parametrize(
    "word, ending",
    [
        ("laptop's", ["S"]),  # voiceless P
        ("graph's", ["S"]),  # voiceless F
        ("badge's", ["AH0", "Z"]),  # sibilant JH
        ("photosynthesis's", ["AH0", "Z"]),  # sibilant S
        ("keyboard's", ["Z"]),  # voiced D
        ("tomato's", ["Z"]),  # vowel
    ],
)
def test_possessive_by_final_sound(word, ending):
    stem = list(dictionary.lookup(word[:-2]))
    assert dictionary.lookup(word) is None  # so the rule, not the dictionary, decides
    assert word_phones(word) == stem + ending


def test_dictionary_possessive_wins_over_rule():
    assert word_phones("boss's") == list(dictionary.lookup("boss's"))


def test_compound_words_are_segmented():
    assert word_phones("snorkelwhatsit") == word_phones("snorkel") + word_phones("whatsit")
    # "quixotic" + "a"; a one-letter part is spelled ("a" -> EY1)
    assert word_phones("Quixotica") == list(dictionary.lookup("quixotic")) + ["EY1"]


def test_phone_cleanup():
    assert clean_phones(["HH", " ", "<pad>", "UW", "<s>", "</s>", "<unk>", "'", "😀", "AY1"]) == ["HH", "UNK", "-", "AY1"]
    assert phones("it ' s") == "IH1 T - EH1 S"


def test_homograph_fallback_tagger():
    record = homographs.homographs()["record"]
    assert phones("to record") == "T UW1 " + " ".join(record.when_tagged)
    assert phones("the record") == "DH AH0 " + " ".join(record.otherwise)
    assert phones("I read") == "AY1 R IY1 D"
    assert phones("have read") == "HH AE1 V R EH1 D"


def test_g2p_returns_no_word2ph():
    result = g2p("Hello.")
    assert result == (["HH", "AH0", "L", "OW1", "."], None)


def test_cleaner_prepends_comma_to_short_english():
    assert clean_text("Hi.", "en").phones == [",", "HH", "AY1", "."]


# ---------------------------------------------------------------- OOV predictor

def test_oov_known_words_through_the_network():
    # Outputs of upstream (g2p_en) for words the golden cases send to the network.
    assert oov.predict("xanthippe") == ("Z", "AE1", "N", "TH", "AH0", "P")
    assert oov.predict("abcone") == ("AH0", "B", "K", "OW1", "N")
    # "-" is not a grapheme: it is encoded as <unk>
    assert oov.predict("thirty-four") == ("TH", "ER1", "T", "AY0", "F", "R", "UH0", "R")


def test_oov_is_deterministic_and_bounded():
    net = oov.predictor()
    first = net.predict("zorblaxian")
    assert all(net.predict("zorblaxian") == first for _ in range(3))
    assert len(net.predict("x" * 60)) <= oov.MAX_PHONEMES
    assert all(p in oov.PHONEMES for p in net.predict("qqqqzzzz"))


def test_vocabularies_match_checkpoint():
    assert len(oov.GRAPHEMES) == 29 and len(oov.PHONEMES) == 74
    assert oov.PHONEMES[:4] == ("<pad>", "<unk>", "<s>", "</s>")
    assert oov.PHONEMES.index("UW") == 4 + 61


def test_import_is_lazy():
    code = (
        "import sys, gsv.text.en\n"
        "from gsv.text.en import dictionary, oov, homographs\n"
        "assert dictionary.cmu_dictionary.cache_info().currsize == 0\n"
        "assert oov.predictor.cache_info().currsize == 0\n"
        "assert homographs.homographs.cache_info().currsize == 0\n"
        "assert 'nltk' not in sys.modules and 'wordsegment' not in sys.modules and 'inflect' not in sys.modules\n"
        "dictionary.lookup('office')\n"
        "assert 'pronouncing' not in sys.modules  # only its data file is read\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_english_frontend_leaves_scipy_and_sklearn_unimported_and_importable():
    """The tokenizer's nltk import skips nltk's optional scientific stack (87 MB in a server); a
    later import of those packages still works."""
    code = ("import sys; from gsv.text.en import phonemizer; print(phonemizer.tokenize(\"I'm here, aren't you?\")); "
            "print(sorted(m for m in ('scipy', 'sklearn') if m in sys.modules)); import scipy, sklearn; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines == ['["I\'m", \'here\', \',\', "aren\'t", \'you\', \'?\']', "[]", "ok"], out.stdout + out.stderr


def test_dictionary_phones_are_shared_strings():
    """~800,000 phone strings of the dictionary are ~70 shared (interned) objects."""
    entries = list(dictionary.cmu_dictionary().values())
    distinct_objects = {id(p) for phones in entries for p in phones}
    assert len(distinct_objects) < 200
