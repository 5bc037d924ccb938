"""Voice blending (tiny bundles): weight 1.0 reproduces a voice exactly, a 50/50 blend's timbre is the
midpoint (also when carried to another model), the prompt is the heaviest source's, refusals (unknown,
incompatible versions, bad weights), ownership, and the offline ``gsv voice blend`` (Pro: speaker-
verification embeddings too)."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import torch

from clients import TtsClient, TtsError
from clients.tts_client import _register_request
from tests.conftest import make_tiny_bundle, speechlike, wav_bytes
from tests.server.harness import start_server
from tests.server.test_models import make_v1_bundle

REF_TEXT = "我们在北京。"
TEXT = "你好，欢迎来到北京。"
ANN, BOB = "token-ann", "token-bob"


@pytest.fixture(scope="module")
def blend_server(tmp_path_factory, tiny_models_dir):
    hubert, bert = tiny_models_dir
    root = tmp_path_factory.mktemp("blend")
    alpha = make_tiny_bundle(root / "alpha", seed=0, hubert_dir=hubert, bert_dir=bert)
    beta = make_tiny_bundle(root / "beta", seed=1, hubert_dir=hubert, bert_dir=bert)
    v1 = make_v1_bundle(root / "old-v1", hubert, bert)
    srv = start_server(None, root / "voices", bundles=((None, alpha.path), (None, beta.path), (None, v1.path)),
                       max_live=4, max_queue=4, deadline_chunks=False, tokens={ANN: "ann", BOB: "bob"})
    with TtsClient(srv.target, token=ANN) as c:
        for vid, seed in (("a", 1), ("b", 2)):
            c.register_voice(vid, wav_bytes(*speechlike(seed=seed)), REF_TEXT, "zh", consent="agreed")
        c.register_voice("old", wav_bytes(*speechlike(seed=3)), REF_TEXT, "zh", consent="agreed", model="old-v1")
    yield srv
    srv.stop()


@pytest.fixture()
def ann(blend_server):
    with TtsClient(blend_server.target, token=ANN, timeout=120) as c:
        yield c


def voice(srv, vid, model=None, owner="ann"):
    return srv.state.registry.get(vid, owner, srv.state.models.get(model) if model else None)


def audio(client, vid, model=""):
    return client.stream(TEXT, vid, seed=4, max_audio_seconds=2, encoding="pcm_f32le", model=model).audio


def test_weight_one_reproduces_the_voice_exactly(blend_server, ann):
    v = ann.blend_voice("all-a", [("a", 1.0), ("b", 0.0)])
    assert {s.voice_id: s.weight for s in v.blend} == {"a": 1.0, "b": 0.0}
    expected = audio(ann, "a")
    assert expected.size > 0
    np.testing.assert_array_equal(audio(ann, "all-a"), expected)


def test_a_50_50_blend_is_the_midpoint_and_takes_the_heaviest_prompt(blend_server, ann):
    ann.blend_voice("mid", ["a:1", "b:1"])  # weights are normalised
    a, b, mid = (voice(blend_server, v) for v in ("a", "b", "mid"))
    torch.testing.assert_close(mid.ge, (a.ge + b.ge) / 2, rtol=0, atol=1e-6)
    assert not torch.allclose(a.ge, b.ge)
    assert torch.equal(mid.prompt_tokens, a.prompt_tokens) and mid.ref_text == a.ref_text  # tie: first listed
    ann.blend_voice("mostly-b", [("a", 0.2), ("b", 0.8)])
    mostly_b = voice(blend_server, "mostly-b")
    assert torch.equal(mostly_b.prompt_tokens, b.prompt_tokens)
    torch.testing.assert_close(mostly_b.ge, 0.2 * a.ge + 0.8 * b.ge, rtol=0, atol=1e-6)
    # carried to another model, the blend is the midpoint of its sources carried there
    a2, b2, mid2 = (voice(blend_server, v, "beta") for v in ("a", "b", "mid"))
    torch.testing.assert_close(mid2.ge, (a2.ge + b2.ge) / 2, rtol=0, atol=1e-6)
    assert audio(ann, "mid", model="beta").size > 0
    free = ann.blend_voice("free", [("a", 0.5), ("b", 0.5)], reference_free=True)
    assert free.reference_free and audio(ann, "free").size > 0


def test_a_blend_stands_alone_when_a_source_is_deleted(blend_server, ann):
    ann.register_voice("tmp", wav_bytes(*speechlike(seed=7)), REF_TEXT, "zh", consent="agreed")
    ann.blend_voice("keeps", [("a", 0.5), ("tmp", 0.5)])
    before = audio(ann, "keeps")
    ann.delete_voice("tmp")
    np.testing.assert_array_equal(audio(ann, "keeps"), before)
    assert audio(ann, "keeps", model="beta").size > 0  # re-derived from its own copy of the references


@pytest.mark.parametrize("sources,code", [
    ([("a", 0.5), ("nobody", 0.5)], grpc.StatusCode.NOT_FOUND),
    ([("a", 1.0)], grpc.StatusCode.INVALID_ARGUMENT),
    ([("a", 1.0), ("b", 1.0), ("a", 1.0)], grpc.StatusCode.INVALID_ARGUMENT),
    ([("a", 1), ("b", 1), ("all-a", 1), ("mid", 1), ("free", 1)], grpc.StatusCode.INVALID_ARGUMENT),
    ([("a", -0.5), ("b", 1.5)], grpc.StatusCode.INVALID_ARGUMENT),
    ([("a", 0.0), ("b", 0.0)], grpc.StatusCode.INVALID_ARGUMENT),
    ([("a", float("nan")), ("b", 1.0)], grpc.StatusCode.INVALID_ARGUMENT),
    ([("a", 0.5), ("old", 0.5)], grpc.StatusCode.INVALID_ARGUMENT),  # a v1-family voice: incompatible
])
def test_bad_blends_are_refused(blend_server, ann, sources, code):
    with pytest.raises(TtsError) as e:
        ann.blend_voice("bad", sources)
    assert e.value.code == code, e.value.details
    with pytest.raises(TtsError):
        ann.get_voice("bad")


def test_incompatible_versions_are_refused_clearly(blend_server, ann):
    with pytest.raises(TtsError) as e:
        ann.blend_voice("bad", [("a", 0.5), ("old", 0.5)])
    assert "family" in e.value.details or "incompatible" in e.value.details, e.value.details
    with pytest.raises(TtsError) as e:  # a blend is audio-free
        ann._call(ann.stub.RegisterVoice, _register_request("bad", wav_bytes(*speechlike()), REF_TEXT, "zh", "ok",
                                                            blend=[("a", 1), ("b", 1)]))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_blending_respects_ownership(blend_server):
    with TtsClient(blend_server.target, token=BOB) as bob:
        bob.register_voice("mine", wav_bytes(*speechlike(seed=5)), REF_TEXT, "zh", consent="agreed")
        with pytest.raises(TtsError) as e:
            bob.blend_voice("stolen", [("mine", 0.5), ("a", 0.5)])  # ann's voice: not bob's to use
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(TtsError):
            bob.get_voice("stolen")
        bob.register_voice("mine2", wav_bytes(*speechlike(seed=6)), REF_TEXT, "zh", consent="agreed")
        assert bob.blend_voice("own", [("mine", 0.7), ("mine2", 0.3)]).voice_id == "own"  # his own: fine
    with TtsClient(blend_server.target, token=ANN) as ann:
        with pytest.raises(TtsError) as e:
            ann.blend_voice("stolen", [("a", 0.5), ("mine", 0.5)])
        assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_voices_cli_blend(blend_server, capsys):
    from clients.voices_cli import main

    assert main(["--server", blend_server.target, "--token", ANN, "blend", "--voice", "cli", "--from", "a:0.25",
                 "--from", "b:0.75"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["voice_id"] == "cli" and out["blend"] == {"a": 0.25, "b": 0.75}
    assert main(["--server", blend_server.target, "--token", ANN, "blend", "--voice", "x", "--from", "a"]) == 1


def test_offline_blend_of_pro_voices_interpolates_both_embeddings(tiny_pro_bundle, tmp_path):
    from gsv.cli import main
    from gsv.pipeline import TextPreparer, make_voice_preparer
    from gsv.voice import VoiceStore

    prep = make_voice_preparer(tiny_pro_bundle, TextPreparer.from_bundle(tiny_pro_bundle))
    store = VoiceStore(tmp_path)
    refs = {}
    for vid, seed in (("a", 1), ("b", 2)):
        refs[vid] = [wav_bytes(*speechlike(seed=seed)), wav_bytes(*speechlike(3.0, seed=seed + 10))]
        store.save(prep.prepare(vid, refs[vid][0], REF_TEXT, "zh", refs[vid][1:]), refs[vid])
    assert main(["voice", "blend", "--voices", str(tmp_path), "--id", "c", "--from", "a:0.5", "--from", "b:0.5"]) == 0
    a, b, c = (store.load(v) for v in "abc")
    torch.testing.assert_close(c.ge, (a.ge + b.ge) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(c.sv_emb, (a.sv_emb.mean(0, keepdim=True) + b.sv_emb.mean(0, keepdim=True)) / 2,
                               rtol=0, atol=1e-6)
    assert store.metadata("c")["blend"]["prompt"] == "a" and len(store.references("c")) == 4
    assert main(["voice", "blend", "--voices", str(tmp_path), "--id", "d", "--from", "a:1", "--from", "zz:1"]) != 0
