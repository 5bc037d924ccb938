"""Plumbing tests of the optional G2PW pinyin source with a tiny generated ONNX model.

No real G2PW model is available here, so a fake one is built: it scores each polyphonic
character's readings from a constant table (masked by ``phoneme_mask`` as the real model's input
contract requires). This checks file loading, the model inputs, label decoding, the monophonic
and pypinyin fallbacks, word-level fixes and the phone output; it says nothing about accuracy.
"""
from __future__ import annotations

import json

import pytest

from gsv.errors import TextError
from gsv.text import zh

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gsv.text.zh.g2pw import G2PW, read_config, read_polyphonic_words  # noqa: E402

POLYPHONIC = [("长", "ㄔㄤ2"), ("长", "ㄓㄤ3"), ("重", "ㄓㄨㄥ4"), ("重", "ㄔㄨㄥ2")]
PREFERRED = {"长": "ㄓㄤ3", "重": "ㄔㄨㄥ2"}  # what the fake model "predicts"
PINYIN = {"ㄔㄤ": "chang", "ㄓㄤ": "zhang", "ㄓㄨㄥ": "zhong", "ㄔㄨㄥ": "chong", "ㄔㄥ": "cheng", "ㄏㄣ": "hen"}


def _fake_model(path, labels, chars):
    import numpy as np

    table = np.ones((len(chars), len(labels)), dtype=np.float32)
    for char, label in PREFERRED.items():
        table[chars.index(char), labels.index(label)] = 2.0
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "T"])
              for n in ("input_ids", "token_type_ids", "attention_mask")]
    inputs += [
        helper.make_tensor_value_info("phoneme_mask", TensorProto.FLOAT, ["B", len(labels)]),
        helper.make_tensor_value_info("char_ids", TensorProto.INT64, ["B"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B"]),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "char_ids"], ["row"], axis=0),
        helper.make_node("Mul", ["phoneme_mask", "row"], ["probs"]),
    ]
    graph = helper.make_graph(
        nodes, "fake_g2pw", inputs,
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["B", len(labels)])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("g2pw")
    model_dir, tokenizer_dir = root / "G2PWModel", root / "tokenizer"
    model_dir.mkdir()
    tokenizer_dir.mkdir()
    (model_dir / "POLYPHONIC_CHARS.txt").write_text("\n".join(f"{c}\t{p}" for c, p in POLYPHONIC), "utf-8")
    (model_dir / "MONOPHONIC_CHARS.txt").write_text("城\tㄔㄥ2\n很\tㄏㄣ3", "utf-8")
    (model_dir / "bopomofo_to_pinyin_wo_tune_dict.json").write_text(json.dumps(PINYIN, ensure_ascii=False), "utf-8")
    (model_dir / "char_bopomofo_dict.json").write_text("{}", "utf-8")
    (model_dir / "config.py").write_text("use_mask = True\nuse_char_phoneme = False\nimport os  # never run\n", "utf-8")
    (model_dir / "polyphonic.rep").write_text("长城: ['chang2', 'cheng2']\n", "utf-8")
    labels = sorted({p for _, p in POLYPHONIC})
    chars = sorted({c for c, _ in POLYPHONIC})
    _fake_model(model_dir / "g2pW.onnx", labels, chars)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"你好很长的城重要"]
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", "utf-8")
    (tokenizer_dir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}), "utf-8"
    )
    return model_dir, tokenizer_dir


@pytest.fixture(scope="module")
def g2pw(model_dirs):
    return G2PW(model_dirs[0], model_dirs[1], opencc_config=None)


def test_predict_uses_model_monophonic_table_and_pypinyin(g2pw):
    # 很: monophonic table; 长 and 重: model; 的/要: pypinyin
    assert g2pw.predict("很长的") == ["hen3", "zhang3", "de5"]
    assert g2pw.predict("重要") == ["chong2", "yao4"]


def test_g2p_with_model_differs_from_pypinyin_path(g2pw):
    norm = zh.normalize("重要。")
    assert g2pw.g2p(norm) == (["ch", "ong2", "y", "ao4", "."], [2, 2, 1])
    assert zh.g2p(norm) == (["zh", "ong4", "y", "ao4", "."], [2, 2, 1])


def test_word_level_fix_overrides_the_model(g2pw):
    phones, word2ph = g2pw.g2p(zh.normalize("很长的长城"))
    assert phones == ["h", "en2", "zh", "ang3", "d", "e5", "ch", "ang2", "ch", "eng2"]
    assert word2ph == [2, 2, 2, 2, 2]


def test_config_is_read_as_data(model_dirs):
    config = read_config(model_dirs[0] / "config.py")
    assert config["use_mask"] is True and config["use_char_phoneme"] is False
    assert config["model_source"] == "bert-base-chinese"  # default for a missing key


def test_polyphonic_word_file_format(tmp_path):
    path = tmp_path / "p.rep"
    path.write_text("湖泊: ['hu2','po1']\n", "utf-8")
    assert read_polyphonic_words(path) == {"湖泊": ["hu2", "po1"]}
    path.write_text("湖泊: __import__('os')\n", "utf-8")
    with pytest.raises(TextError):
        read_polyphonic_words(path)


def test_missing_files_are_reported_lazily(tmp_path, model_dirs):
    g = G2PW(tmp_path / "nope", model_dirs[1], opencc_config=None)  # constructing loads nothing
    with pytest.raises(TextError, match="does not exist"):
        g.g2p("你好")
    with pytest.raises(TextError, match="tokenizer"):
        G2PW(model_dirs[0], None, opencc_config=None).predict("长")
