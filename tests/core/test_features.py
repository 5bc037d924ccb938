"""HuBERT/BERT feature extractors on tiny random models, and voice preparation/storage."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from gsv import constants as C
from gsv.errors import AudioError, GsvError, TextError, VoiceError
from gsv.features import BertExtractor, HubertExtractor
from gsv.voice import VoiceStore
from tests.conftest import speechlike


def test_hubert_shapes_padding_determinism(tiny_models_dir):
    hubert = HubertExtractor(tiny_models_dir[0])
    x, sr = speechlike(3.0)
    a = hubert(x)
    b = hubert(x)
    assert torch.equal(a, b)
    # 50 Hz frames of the waveform plus upstream's 9600-sample (0.6 s at 16 kHz) zero tail
    assert a.shape[:2] == (1, hubert.dim) and a.shape[2] == (x.size + C.REF_SSL_TAIL_PADDING) // 320 - 1
    assert hubert(x, tail_padding=0).shape[2] == x.size // 320 - 1


def test_bert_per_phone_expansion(tiny_models_dir):
    bert = BertExtractor(tiny_models_dir[1])
    feats = bert("你好,北京.", [2, 2, 1, 2, 2, 1])
    assert feats.shape == (bert.dim, 10)
    assert torch.equal(feats[:, 0], feats[:, 1]) and not torch.equal(feats[:, 1], feats[:, 2])
    assert torch.equal(feats, bert("你好,北京.", [2, 2, 1, 2, 2, 1]))
    with pytest.raises(GsvError):
        bert("你好", [2])


def test_non_chinese_pieces_get_zero_bert(tiny_full_bundle):
    from gsv.pipeline import TextPreparer

    text = TextPreparer.from_bundle(tiny_full_bundle)
    seg = text.segments("你好，Hello world。", "zh", "cut0")[0]
    pieces = text.frontend.prepare("你好，Hello world。", "zh", "cut0")[0].pieces
    start = 0
    for p in pieces:
        block = seg.bert[:, start : start + len(p.phones)]
        assert (block.abs().sum() == 0) == (p.lang != "zh"), p.lang
        start += len(p.phones)
    assert start == seg.bert.shape[1] == len(seg.phones)


def test_missing_model_folders(tmp_path):
    with pytest.raises(GsvError, match="does not exist"):
        HubertExtractor(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GsvError, match="config.json"):
        BertExtractor(tmp_path / "empty")


@pytest.fixture()
def preparer(tiny_full_bundle):
    from gsv.pipeline import TextPreparer, make_voice_preparer

    return make_voice_preparer(tiny_full_bundle, TextPreparer.from_bundle(tiny_full_bundle))


def _wav(tmp_path, x, sr, name="r.wav", subtype="PCM_16"):
    p = tmp_path / name
    sf.write(p, x, sr, subtype=subtype)
    return p


def test_voice_prepare_save_reload(preparer, tmp_path, tiny_full_bundle):
    x, sr = speechlike(4.0, sr=22050)
    v = preparer.prepare("v1", _wav(tmp_path, x, sr), "我们在北京。", "zh", owner="me", consent="yes")
    assert v.prompt_tokens.numel() > 50 and v.prompt_bert.shape == (32, len(v.prompt_phones))
    store = VoiceStore(tmp_path / "voices")
    store.save(v, [b"ref"])
    w = store.load("v1", tiny_full_bundle.bundle_id)
    assert torch.equal(w.prompt_tokens, v.prompt_tokens) and torch.equal(w.ge, v.ge) and w.owner == "me"
    with pytest.raises(VoiceError, match="another bundle"):
        store.load("v1", "some-other-bundle")
    aux = preparer.prepare("v2", _wav(tmp_path, x, sr), "我们在北京。", "zh",
                           aux_refs=[_wav(tmp_path, speechlike(5.0, seed=4)[0], 16000, "aux.wav")])
    assert torch.equal(aux.prompt_tokens, v.prompt_tokens) and not torch.equal(aux.ge, v.ge)


@pytest.mark.parametrize("case", ["short", "long", "silent", "clipped", "nan", "unreadable", "empty_text", "bad_lang"])
def test_voice_bad_input(preparer, tmp_path, case):
    x, sr = speechlike(4.0)
    text, lang = "我们在北京。", "zh"
    if case == "short":
        x = x[: 2 * sr]
    elif case == "long":
        x = np.tile(x, 3)
    elif case == "silent":
        x = np.zeros_like(x)
    elif case == "clipped":
        x = np.clip(x * 50, -1, 1)
    elif case == "nan":
        x = x.copy()
        x[10] = np.nan
    elif case == "empty_text":
        text = "😀"
    elif case == "bad_lang":
        lang = "xx"
    path = _wav(tmp_path, x, sr, subtype="FLOAT" if case == "nan" else "PCM_16")
    if case == "unreadable":
        path.write_bytes(b"RIFF....WAVEjunk")
    expected = TextError if case in ("empty_text", "bad_lang") else AudioError
    with pytest.raises(expected):
        preparer.prepare("bad", path, text, lang)
