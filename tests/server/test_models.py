"""Several models in one server (tiny bundles): the same audio as one-model servers, concurrent models,
LRU swapping that never unloads a model in use, unknown and broken models, the `model` field of every
door, voices carried across models, and fairness between a flooded model and a single stream."""
from __future__ import annotations

import json
import shutil
import statistics
import threading
import time

import grpc
import httpx
import numpy as np
import pytest

from clients import StreamResult, TtsClient, TtsError
from protos.tts.v1 import tts_pb2 as pb
from tests.conftest import make_tiny_bundle, speechlike, tiny_gpt, tiny_sovits, wav_bytes
from tests.server.harness import start_server

REF_TEXT = "我们在北京。"
TEXT = "你好，欢迎来到北京。今天天气很好。"
MODELS = ("alpha", "beta", "gamma")


def make_v1_bundle(path, hubert, bert, seed: int = 3):
    """A tiny model of the v1 family (its own phone table): voices of v2 models do not carry to it."""
    from gsv.checkpoint.bundle import write_bundle

    g = tiny_gpt(seed, phoneme_vocab_size=512)
    s = tiny_sovits(seed, version="v1", n_symbols=322, ref_enc_bins=1025)
    return write_bundle(path, g.cfg, g.state_dict(), s.cfg, s.state_dict(), sources={"kind": "tiny-random"},
                        hubert_dir=hubert, bert_dir=bert)


def make_fine_tune(base, path):
    """``base`` with its reference encoder and vocoder changed, quantizer kept: as a fine-tune of it."""
    import torch

    from gsv.checkpoint.bundle import write_bundle

    torch.manual_seed(11)
    sd = {k: (v + 0.05 * torch.randn_like(v) if k.startswith(("ref_enc.", "dec.")) and v.is_floating_point() else v)
          for k, v in base.sovits_state_dict().items()}
    return write_bundle(path, base.gpt_config, base.gpt_state_dict(), base.sovits_config, sd,
                        sources={"kind": "tiny-fine-tune"}, hubert_dir=base.hubert_dir, bert_dir=base.bert_dir)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_models_dir):
    hubert, bert = tiny_models_dir
    root = tmp_path_factory.mktemp("models")
    return {name: make_tiny_bundle(root / name, seed=i, hubert_dir=hubert, bert_dir=bert)
            for i, name in enumerate(MODELS)}


def register(target, voice="alice", seed=0, token=None, **kw):
    with TtsClient(target, token=token) as c:
        return c.register_voice(voice, wav_bytes(*speechlike(seed=seed)), REF_TEXT, "zh", consent="agreed", **kw)


@pytest.fixture(scope="module")
def multi(bundles, tmp_path_factory):
    """alpha, beta, gamma in one server (fixed window cuts: audio comparable exactly), HTTP doors on."""
    srv = start_server(None, tmp_path_factory.mktemp("voices"), bundles=tuple((None, b.path) for b in bundles.values()),
                       max_live=8, max_queue=8, deadline_chunks=False, http_port=0, max_audio_seconds=4.0)
    register(srv.target)
    yield srv
    srv.stop()


def stream(target, model, seed, text=TEXT, seconds=2.0, **kw):
    with TtsClient(target, timeout=120) as c:
        return c.stream(text, "alice", seed=seed, max_audio_seconds=seconds, model=model, encoding="pcm_f32le", **kw)


def metric(srv, name, labels=None) -> float:
    return srv.state.metrics.registry.get_sample_value(name, labels or {}) or 0.0


# ------------------------------------------------------------------------------ same audio, concurrency
def test_three_bundles_give_the_audio_of_single_bundle_servers(multi, bundles, tmp_path):
    got = {m: stream(multi.target, m, seed=7) for m in MODELS}
    assert {m: r.model_id for m, r in got.items()} == {m: m for m in MODELS}
    assert stream(multi.target, "", seed=7).model_id == "alpha"  # the first --bundle is the default
    for m, b in bundles.items():
        single = start_server(b.path, tmp_path / m, max_live=8, max_queue=8, deadline_chunks=False)
        try:
            register(single.target)  # prepared for this model directly; the multi server carried it from alpha
            alone = stream(single.target, "", seed=7)
        finally:
            single.stop()
        assert got[m].audio.size > 0
        np.testing.assert_array_equal(got[m].audio, alone.audio)
    assert not np.array_equal(got["alpha"].audio[:3200], got["beta"].audio[:3200])  # three different models


def test_concurrent_requests_of_different_models_all_complete(multi):
    jobs = [(m, seed) for m in MODELS for seed in (21, 22)]
    alone = {j: stream(multi.target, *j).audio for j in jobs}
    before = {m: metric(multi, "tts_model_requests_total", {"model": m, "method": "StreamingSynthesize", "code": "OK"})
              for m in MODELS}
    results, errors = {}, []

    def run(job):
        try:
            results[job] = stream(multi.target, *job)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == len(jobs)
    for job, r in results.items():
        assert r.model_id == job[0] and r.summary is not None
        # batched per model, each stream as alone (up to the float rounding of batched maths)
        np.testing.assert_allclose(r.audio, alone[job], atol=1e-5)
    for m in MODELS:
        assert metric(multi, "tts_model_requests_total",
                      {"model": m, "method": "StreamingSynthesize", "code": "OK"}) == before[m] + 2
        assert metric(multi, "tts_model_semantic_tokens_total", {"model": m}) > 0
        assert metric(multi, "tts_model_ar_batch_size_count", {"model": m}) > 0


def test_gsv_say_and_voices_cli_take_a_model(multi, tmp_path, capsys):
    from clients.say import main as say
    from clients.voices_cli import main as voices

    assert say(["--server", multi.target, "--model", "gamma", "--voice", "alice", "--text", TEXT, "--seed", "1",
                "--max-audio-seconds", "1", "-o", str(tmp_path / "out.wav")]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == "gamma"
    assert say(["--server", multi.target, "--model", "nope", "--voice", "alice", "--text", TEXT,
                "-o", str(tmp_path / "x.wav")]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert voices(["--server", multi.target, "models"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [m["model_id"] for m in listed] == list(MODELS) and listed[0]["default"]


def test_models_are_listed(multi):
    for m in MODELS:  # every model loaded (on first use)
        stream(multi.target, m, seed=1, seconds=0.5)
    with TtsClient(multi.target) as c:
        listed = c.list_models()
        config = c.server_config()
    assert listed.default_model_id == "alpha" == config.default_model_id
    assert [m.model_id for m in listed.models] == list(MODELS)
    assert all(m.state == pb.MODEL_READY and m.resident and m.load_seconds > 0 and m.version == "v2"
               for m in listed.models)
    assert [m.model_id for m in config.models][0] == "alpha" and len(config.models) == 3


# ------------------------------------------------------------------------------ unknown model, every door
def test_unknown_model_is_not_found_and_every_door_takes_a_model(multi):
    with pytest.raises(TtsError) as e:
        stream(multi.target, "nope", seed=1)
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "unknown model" in e.value.details
    with pytest.raises(TtsError) as e:
        stream(multi.target, "bad id!", seed=1)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    base = f"http://127.0.0.1:{multi.state.http_port}"
    tts = {"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "media_type": "raw", "seed": 3}
    speech = {"input": TEXT, "voice": "alice", "response_format": "pcm", "seed": 3}
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.post("/tts", json=tts | {"model": "nope"}).status_code == 404
        r = http.post("/tts", json=tts | {"model": "beta"})
        assert r.status_code == 200 and r.headers["x-model-id"] == "beta"
        r = http.post("/v1/audio/speech", json=speech | {"model": "nope"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = http.post("/v1/audio/speech", json=speech | {"model": "gamma"})
        assert r.status_code == 200 and r.headers["x-model-id"] == "gamma"
        assert http.post("/v1/audio/speech", json=speech | {"model": "tts-1"}).headers["x-model-id"] == "alpha"
        models = http.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == list(MODELS) and models[0]["default"]
        assert http.get("/v1/models/nope").status_code == 404
    from websockets.sync.client import connect

    with connect(base.replace("http", "ws") + "/v1/ws/synthesize") as ws:
        ws.send(json.dumps({"voice_id": "alice", "model_id": "gamma", "max_audio_seconds": 1}))
        ws.send(json.dumps({"text": TEXT, "close": True}))
        assert json.loads(ws.recv())["model_id"] == "gamma"
    with connect(base.replace("http", "ws") + "/v1/ws/synthesize") as ws:
        # the configuration message alone is refused (the server then closes with 4404: sending text
        # after it would race that close)
        ws.send(json.dumps({"voice_id": "alice", "model": "nope"}))
        event = json.loads(ws.recv())
        assert event["type"] == "error" and event["code"] == "NOT_FOUND"


# ------------------------------------------------------------------------------ LRU residency
def test_max_resident_one_swaps_models_and_never_unloads_one_in_use(bundles, tmp_path):
    srv = start_server(None, tmp_path / "voices", bundles=((None, bundles["alpha"].path), (None, bundles["beta"].path)),
                       max_live=4, max_queue=4, deadline_chunks=False, max_resident_models=1)
    try:
        register(srv.target)
        ref = {m: stream(srv.target, m, seed=5).audio for m in ("alpha", "beta")}
        for m in ("alpha", "beta", "alpha", "beta"):  # every request swaps the one resident model
            np.testing.assert_array_equal(stream(srv.target, m, seed=5).audio, ref[m])
        assert metric(srv, "tts_model_unloads_total", {"model": "alpha"}) >= 2
        assert metric(srv, "tts_model_loads_total", {"model": "beta", "result": "ok"}) >= 3
        assert len(srv.state.models.resident) == 1

        long_text, long_seconds = TEXT * 6, 15.0
        long_alone = stream(srv.target, "alpha", seed=9, text=long_text, seconds=long_seconds).audio
        first_audio, finished, out = threading.Event(), {}, {}

        def long_alpha():
            with TtsClient(srv.target, timeout=120) as c:
                r = StreamResult()
                for _ in c.stream_chunks(long_text, "alice", seed=9, max_audio_seconds=long_seconds, model="alpha",
                                         encoding="pcm_f32le", result=r):
                    first_audio.set()
                out["alpha"] = r
                finished["alpha"] = time.monotonic()

        t = threading.Thread(target=long_alpha)
        t.start()
        assert first_audio.wait(60)
        with TtsClient(srv.target, timeout=0.3) as c:  # beta must wait for alpha: its deadline passes meanwhile
            with pytest.raises(TtsError) as e:
                c.stream(TEXT, "alice", seed=5, model="beta", max_audio_seconds=1.0)
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert t.is_alive(), "the long alpha stream should still be running"
        beta = stream(srv.target, "beta", seed=5)  # waits until alpha is done, then swaps
        t.join(120)
        assert beta.t_first_audio is not None and finished["alpha"] < beta.t_first_audio
        np.testing.assert_array_equal(out["alpha"].audio, long_alone)  # never disturbed while in use
        np.testing.assert_array_equal(beta.audio, ref["beta"])
    finally:
        srv.stop()


# ------------------------------------------------------------------------------ broken models
def test_broken_bundles_in_models_dir_are_reported_and_the_rest_serve(bundles, tmp_path, caplog):
    models = tmp_path / "models"
    models.mkdir()
    for m in ("alpha", "beta"):
        shutil.copytree(bundles[m].path, models / m)
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{not json")
    shutil.copytree(bundles["gamma"].path, models / "corrupt")
    (models / "corrupt" / "gpt.safetensors").write_bytes(b"\x00" * 64)  # opens; fails when loaded
    (models / "notes").mkdir()  # no manifest: not a bundle
    with caplog.at_level("ERROR"):
        srv = start_server(None, tmp_path / "voices", models_dir=models, max_live=4, max_queue=4)
    try:
        assert any("broken" in r.getMessage() and "cannot be served" in r.getMessage() for r in caplog.records)
        register(srv.target)
        with TtsClient(srv.target) as c:
            states = {m.model_id: m for m in c.list_models().models}
            assert set(states) == {"alpha", "beta", "broken", "corrupt"}
            assert states["broken"].state == pb.MODEL_FAILED and "manifest" in states["broken"].error
            assert states["alpha"].is_default and states["alpha"].resident
        for model, reason in (("broken", "manifest"), ("corrupt", "corrupt")):
            with pytest.raises(TtsError) as e:
                stream(srv.target, model, seed=1)
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and reason in e.value.details, e.value.details
        with pytest.raises(TtsError) as e:  # a failed load is remembered (no retry storm)
            stream(srv.target, "corrupt", seed=1)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        for model in ("alpha", "beta"):
            assert stream(srv.target, model, seed=1).audio.size > 0
        with TtsClient(srv.target) as c:
            assert {m.model_id: m.state for m in c.list_models().models}["corrupt"] == pb.MODEL_FAILED
    finally:
        srv.stop()


# ------------------------------------------------------------------------------ voices across models
def test_voices_carry_to_models_of_their_family_and_are_refused_by_others(bundles, tiny_models_dir, tmp_path):
    hubert, bert = tiny_models_dir
    ft = make_fine_tune(bundles["alpha"], tmp_path / "alpha-ft")
    v1 = make_v1_bundle(tmp_path / "old-v1", hubert, bert)
    voices = tmp_path / "voices"
    srv = start_server(None, voices, bundles=((None, bundles["alpha"].path), (None, ft.path),
                                              (None, bundles["beta"].path), (None, v1.path)),
                       max_live=4, max_queue=4, deadline_chunks=False)
    try:
        register(srv.target)
        models = srv.state.models
        calls = {"hubert": 0, "timbre": 0}
        hub = models.default.preparer().hubert
        real_hubert = hub.__call__
        monkey = pytest.MonkeyPatch()
        monkey.setattr(type(hub), "__call__", lambda self, *a, **k: calls.__setitem__("hubert", calls["hubert"] + 1)
                       or real_hubert(*a, **k))
        from gsv.voice import VoicePreparer

        real_timbre = VoicePreparer.timbre
        monkey.setattr(VoicePreparer, "timbre", lambda self, refs: calls.__setitem__("timbre", calls["timbre"] + 1)
                       or real_timbre(self, refs))
        try:
            assert stream(srv.target, "alpha-ft", seed=2).audio.size > 0
            assert calls == {"hubert": 0, "timbre": 1}  # a fine-tune: only the timbre is recomputed
            stream(srv.target, "alpha-ft", seed=3)
            assert calls == {"hubert": 0, "timbre": 1}  # ... once (cached)
            stream(srv.target, "beta", seed=2)
            assert calls == {"hubert": 1, "timbre": 2}  # another base: the prompt tokens too
        finally:
            monkey.undo()
        base = srv.state.registry.get("alice", "")
        carried = srv.state.registry.get("alice", "", models.get("alpha-ft"))
        direct = models.get("alpha-ft").preparer().prepare("x", wav_bytes(*speechlike(seed=0)), REF_TEXT, "zh")
        assert carried.bundle_id == ft.bundle_id and base.bundle_id == bundles["alpha"].bundle_id
        assert np.array_equal(carried.prompt_tokens, base.prompt_tokens) and not np.allclose(carried.ge, base.ge)
        np.testing.assert_allclose(carried.ge, direct.ge, atol=1e-6)  # = prepared for the fine-tune itself
        with pytest.raises(TtsError) as e:
            stream(srv.target, "old-v1", seed=2)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "family" in e.value.details
        register(srv.target, "old", model="old-v1")  # registered for the v1 model: it speaks there
        with TtsClient(srv.target) as c:
            assert c.stream(TEXT, "old", seed=1, max_audio_seconds=1, model="old-v1").audio.size > 0
            with pytest.raises(TtsError) as e:
                c.stream(TEXT, "old", seed=1, max_audio_seconds=1, model="beta")
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        srv.stop()


# ------------------------------------------------------------------------------ fairness
def test_free_rows_go_first_to_the_model_with_fewest_rows():
    from server.runner import STARTUP_VISITS, EngineRunner

    class Fake:
        def __init__(self, live, waiting, starting=False):
            self.live, self.waiting, self._starting = live, [None] * waiting, starting

        def starting(self):
            return self._starting, False

    runner = EngineRunner(max_live=8)
    flooded, single, other = Fake(6, 5), Fake(0, 1), Fake(1, 3)
    runner._engines = [flooded, single, other]
    shares = runner.row_shares([flooded, single, other])
    assert shares[single] == 1 and shares[flooded] == 0 and shares[other] == 0  # 1 free row: the model without one
    runner._engines = [flooded, single]
    flooded.live = 2
    assert runner.row_shares([flooded, single]) == {flooded: 5, single: 1}  # everyone waiting is served
    starting = Fake(1, 0, starting=True)
    visits = [e for e, _ in EngineRunner.round_of([flooded, starting])]
    assert visits.count(starting) == STARTUP_VISITS and visits.count(flooded) == 1


def test_a_flooded_model_does_not_starve_a_single_stream(bundles, tmp_path):
    """One model flooded with 6 streams, another with one: the single stream's time to first audio stays
    within a generous bound of its time alone (the benchmark reports the exact ratio); a scheduler that
    served the flooded model first would keep it waiting for the whole flood (seconds)."""
    srv = start_server(None, tmp_path / "voices", bundles=((None, bundles["alpha"].path), (None, bundles["beta"].path)),
                       max_live=8, max_queue=8)
    stop = threading.Event()
    try:
        register(srv.target)

        def probe() -> float:
            return stream(srv.target, "beta", seed=1).ttfa_ms

        probe()
        alone = statistics.median(probe() for _ in range(5))
        started = threading.Semaphore(0)

        def flood(i):
            with TtsClient(srv.target, timeout=120) as c:
                for n, _ in enumerate(c.stream_chunks(TEXT * 40, "alice", seed=100 + i, max_audio_seconds=120,
                                                      model="alpha")):
                    if n == 0:
                        started.release()
                    if stop.is_set():
                        break  # (leaving the iterator cancels the stream)

        threads = [threading.Thread(target=flood, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for _ in threads:
            assert started.acquire(timeout=60)
        flooded = statistics.median(probe() for _ in range(5))
        assert srv.state.models.get("alpha").engine.live == 6, "the flood's GPT work ended before the measurement"
        print(f"single stream TTFA alone {alone:.0f} ms, beside a flooded model {flooded:.0f} ms")
        assert flooded <= 4 * alone + 250, (alone, flooded)
    finally:
        stop.set()
        srv.stop()
