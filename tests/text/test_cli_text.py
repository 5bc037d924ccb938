"""Tests of ``gsv phonemize`` and ``gsv split`` (gsv.cli_text): handlers in-process, plus the real CLI."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gsv import cli_text
from gsv.errors import GsvError, OptionError, UnknownLanguageError
from gsv.text.cleaner import clean_text
from gsv.text.symbols import cleaned_text_to_sequence

REPO = Path(__file__).resolve().parents[2]


def run(handler, stdin: str | bytes, **args) -> str:
    out = io.BytesIO()
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    assert handler(argparse.Namespace(**args), stdin=io.BytesIO(data), stdout=out) == 0
    return out.getvalue().decode("utf-8")


def test_register_adds_both_subcommands():
    parser = argparse.ArgumentParser(prog="gsv")
    cli_text.register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["phonemize", "--lang", "ja"])
    assert a.func is cli_text.cmd_phonemize and a.version == "v2"
    b = parser.parse_args(["split"])
    assert b.func is cli_text.cmd_split and (b.method, b.lang, b.pipeline) == ("cut5", "zh", False)


def test_phonemize_one_json_object_per_line_like_clean_text():
    lines = ["こんにちは、今日はいい天気ですね。", "", "「ありがとう」"]
    out = run(cli_text.cmd_phonemize, "\n".join(lines) + "\n", lang="ja", version="v2")
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == 3
    for text, row in zip(lines, rows):
        ref = clean_text(text, "ja")
        assert row == {"norm_text": ref.norm_text, "phones": ref.phones, "word2ph": None,
                       "ids": cleaned_text_to_sequence(ref.phones)}
    assert "「ありがとう」" in out  # not ASCII-escaped


def test_phonemize_handles_crlf_and_a_missing_final_newline():
    out = run(cli_text.cmd_phonemize, "はい\r\nいいえ", lang="ja", version="v2")
    rows = [json.loads(x) for x in out.splitlines()]
    assert [r["norm_text"] for r in rows] == ["はい", "いいえ"]


def test_phonemize_mixed_mode_reports_pieces():
    row = json.loads(run(cli_text.cmd_phonemize, "これはPythonです\n", lang="auto", version="v2"))
    assert [p["lang"] for p in row["pieces"]] == ["ja", "en", "ja"]
    assert row["phones"] == [ph for p in row["pieces"] for ph in p["phones"]]
    assert row["norm_text"] == "".join(p["norm_text"] for p in row["pieces"])
    assert row["word2ph"] is None and len(row["ids"]) == len(row["phones"])


def test_phonemize_errors():
    with pytest.raises(UnknownLanguageError):
        run(cli_text.cmd_phonemize, "x\n", lang="xx", version="v2")
    with pytest.raises(UnknownLanguageError):
        run(cli_text.cmd_phonemize, "x\n", lang="ja", version="v9")
    with pytest.raises(GsvError, match="UTF-8"):
        run(cli_text.cmd_phonemize, b"\xff\xfe\n", lang="ja", version="v2")


def test_split_raw_and_pipeline():
    text = "第一行文字。\n第二行文字！\n\n第三行文字？\n"  # the final line break is the terminator
    raw = json.loads(run(cli_text.cmd_split, text, method="cut5", lang="zh", pipeline=False))
    assert raw == ["第一行文字。", "", "第二行文字！", "", "", "第三行文字？"]
    pipe = json.loads(run(cli_text.cmd_split, "Hi. Nice to meet you, my friend.", method="cut5", lang="en",
                          pipeline=True))
    assert pipe == ["Hi. Nice to meet you,", " my friend."]
    assert json.loads(run(cli_text.cmd_split, "", method="cut0", lang="zh", pipeline=False)) == ["/n"]


def test_split_errors():
    with pytest.raises(OptionError):
        run(cli_text.cmd_split, "x", method="cut9", lang="zh", pipeline=False)
    with pytest.raises(UnknownLanguageError):
        run(cli_text.cmd_split, "x", method="cut5", lang="fr", pipeline=False)


def _gsv(*args, stdin: str):
    return subprocess.run([sys.executable, "-m", "gsv", *args], input=stdin.encode("utf-8"), capture_output=True,
                          cwd=REPO, timeout=300)


def test_real_cli_output_and_error_exit_code():
    ok = _gsv("phonemize", "--lang", "ko", stdin="안녕하세요.\n")
    assert ok.returncode == 0, ok.stderr.decode()
    row = json.loads(ok.stdout.decode("utf-8"))  # stdout holds nothing but the JSON line
    assert row["phones"][-1] == "." and row["norm_text"] == "안녕하세요."
    bad = _gsv("split", "--method", "cut9", stdin="x")
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().strip().count("\n") == 0 and "cut9" in bad.stderr.decode()
