"""Regression tests of the server faults of issue 12 (each failed before its fix)."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import grpc
import pytest

from clients import TtsClient, TtsError
from protos.tts.v1 import tts_pb2 as pb
from tests.reliability.conftest import (OTHER_TOKEN, REF_TEXT, TOKEN, free_port, raw_bidi, raw_stream, raw_unary,
                                        reference_wav, wait_idle)

LONG_ZH = "我们在北京今天天气很好" * 60  # 660 characters without punctuation: one segment past BERT's 512 positions
MD = (("authorization", f"Bearer {TOKEN}"),)


def code_of(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except TtsError as e:
        return e.code, e.details
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def bidi(client, *texts, config=None, flush=True):
    msgs = [pb.BidiSynthesizeRequest(config=config or pb.SynthesisConfig(voice_id="alice", max_audio_seconds=0.5))]
    msgs += [pb.BidiSynthesizeRequest(input=pb.TextInput(text=t, flush=flush)) for t in texts]
    return list(client.stub.BidiSynthesize(iter(msgs), metadata=MD, timeout=60))


def metric(server, name, labels=None) -> float:
    return server.state.metrics.registry.get_sample_value(name, labels or {}) or 0.0


# ------------------------------------------------------------------------------ 2: long Chinese segments
def test_long_chinese_segment_in_every_rpc(client):
    assert client.synthesize(LONG_ZH, "alice", max_audio_seconds=0.5).summary.audio_seconds > 0
    assert client.stream(LONG_ZH, "alice", max_audio_seconds=0.5).chunks
    assert any(m.WhichOneof("event") == "audio" for m in bidi(client, LONG_ZH))


# ------------------------------------------------------------------------------ 3: one mapping for faults
def test_unexpected_exception_is_internal_with_request_id_logged_once_and_counted(rel_server, client, error_log,
                                                                                  monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(rel_server.state.text, "segments", broken)
    calls = {
        "Synthesize": lambda c: client.stub.Synthesize(pb.SynthesizeRequest(config=c, text="好的。"), metadata=MD),
        "StreamingSynthesize": lambda c: list(client.stub.StreamingSynthesize(pb.SynthesizeRequest(config=c,
                                                                                                  text="好的。"),
                                                                              metadata=MD)),
        "BidiSynthesize": lambda c: bidi(client, "好的。", config=c),
    }
    for method, call in calls.items():
        before = metric(rel_server, "tts_requests_total", {"method": method, "code": "INTERNAL"})
        n_logged = len(error_log.records)
        rid = f"rid-{method}"
        code, details = code_of(lambda: call(pb.SynthesisConfig(voice_id="alice", request_id=rid)))
        assert code == grpc.StatusCode.INTERNAL, (method, code, details)
        assert rid in details and "secret" not in details and "RuntimeError" not in details, details
        assert metric(rel_server, "tts_requests_total", {"method": method, "code": "INTERNAL"}) == before + 1
        assert metric(rel_server, "tts_requests_total", {"method": method, "code": "OK"}) >= 0
        new = error_log.records[n_logged:]
        assert len(new) == 1 and new[0].exc_info and rid in new[0].getMessage(), [r.getMessage() for r in new]
    error_log.records.clear()
    wait_idle(rel_server)


# ------------------------------------------------------------------------------ 4: invalid UTF-8
BAD_UTF8 = b"\xff\xfe"


@pytest.mark.parametrize("method", ["Synthesize", "StreamingSynthesize", "BidiSynthesize", "RegisterVoice",
                                    "GetVoice", "ListVoices", "DeleteVoice"])
def test_invalid_utf8_is_invalid_argument(client, method):
    ch = client.channel
    text = "好的".encode()
    if method in ("Synthesize", "StreamingSynthesize"):
        data = pb.SynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice"), text="好的").SerializeToString()
    elif method == "BidiSynthesize":
        data = pb.BidiSynthesizeRequest(input=pb.TextInput(text="好的")).SerializeToString()
    elif method == "RegisterVoice":
        data = pb.RegisterVoiceRequest(voice_id="v", reference_text="好的").SerializeToString()
    elif method == "ListVoices":
        data = pb.ListVoicesRequest(language="好的").SerializeToString()
    else:
        data = getattr(pb, f"{method}Request")(voice_id="好的").SerializeToString()
    data = data.replace(text, BAD_UTF8 + text[2:])
    if method == "StreamingSynthesize":
        fn = lambda: list(raw_stream(ch, method)(data, metadata=MD, timeout=30))  # noqa: E731
    elif method == "BidiSynthesize":
        first = pb.BidiSynthesizeRequest(config=pb.SynthesisConfig(voice_id="alice")).SerializeToString()
        fn = lambda: list(raw_bidi(ch)(iter([first, data]), metadata=MD, timeout=30))  # noqa: E731
    else:
        fn = lambda: raw_unary(ch, method)(data, metadata=MD, timeout=30)  # noqa: E731
    code, details = code_of(fn)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)


# ------------------------------------------------------------------------------ 5: oversized user strings
@pytest.mark.parametrize("size", [70, 16_000, 100_000])
def test_oversized_values_are_refused_without_echo(client, size):
    huge = "a" * size
    cases = [lambda: client.get_voice(huge), lambda: client.delete_voice(huge), lambda: client.stream("好的。", huge),
             lambda: client.synthesize("好的。", huge), lambda: client.stream("好的。", "alice", language=huge),
             lambda: client.register_voice(huge, reference_wav(), REF_TEXT, "zh", consent="ok"),
             lambda: client.stub.ListVoices(pb.ListVoicesRequest(page_token=huge), metadata=MD),
             lambda: client.stub.ListVoices(pb.ListVoicesRequest(language=huge), metadata=MD)]
    if size > 1000:
        cases.append(lambda: client.stream("好的。", "alice", request_id=huge))
    for fn in cases:
        code, details = code_of(fn)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details[:100])
        assert len(details) < 600 and huge[:200] not in details


# ------------------------------------------------------------------------------ 6 / 7 / 8: validation
def test_voice_id_with_a_trailing_newline_is_refused(client):
    code, _ = code_of(lambda: client.register_voice("nl\n", reference_wav(), REF_TEXT, "zh", consent="ok"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: client.get_voice("alice\n"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", ["-3", "-0", "abc", "1e3", " 1", "1 ", "01", "+1", "1.0", "9" * 12])
def test_malformed_page_tokens_are_refused(client, token):
    code, _ = code_of(lambda: client.stub.ListVoices(pb.ListVoicesRequest(page_token=token), metadata=MD))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_pages_walk_every_voice_once(client):
    for vid in ("page-a", "page-b"):
        client.register_voice(vid, reference_wav(), REF_TEXT, "zh", consent="ok", overwrite=True)
    seen, token = [], ""
    while True:
        resp = client.stub.ListVoices(pb.ListVoicesRequest(page_size=1, page_token=token), metadata=MD)
        seen += [v.voice_id for v in resp.voices]
        token = resp.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(v.voice_id for v in client.list_voices()) and len(seen) == len(set(seen)) >= 3


@pytest.mark.parametrize("consent", ["\u200b", "\u200b\u2060", " \n", "\ufeff"])
def test_invisible_consent_is_not_consent(client, consent):
    code, _ = code_of(lambda: client.register_voice("zw", reference_wav(), REF_TEXT, "zh", consent=consent))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.get_voice("zw"))[0] == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------------------ 9 / 10: startup config
@pytest.mark.parametrize("content", ["{}", '{"": "ann"}', '{"tok": ""}', "[]", "not json"])
def test_token_file_without_usable_tokens_refuses_to_start(tmp_path, capsys, content):
    from server.cli import main

    f = tmp_path / "tokens.json"
    f.write_text(content)
    assert main(["--bundle", str(tmp_path / "no-bundle"), "--voices", str(tmp_path / "v"), "--tokens", str(f)]) == 2
    assert "tokens" in capsys.readouterr().err


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* show them) of sockets listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":
                out.append(addr)
    return out


def test_metrics_endpoint_binds_the_server_host(tiny_full_bundle, tmp_path):
    from server.config import ServerConfig
    from tests.server.harness import RunningServer

    port = free_port()
    srv = RunningServer(ServerConfig(bundle=tiny_full_bundle.path, voices=tmp_path, port=0, host="127.0.0.1",
                                     metrics_port=port)).start()
    try:
        assert _listening(port) == ["0100007F"]  # 127.0.0.1 only, not 0.0.0.0
    finally:
        srv.stop()
    assert ServerConfig(bundle=Path("b"), voices=Path("v"), host="[::]").metrics_bind_host == "::"
    assert ServerConfig(bundle=Path("b"), voices=Path("v"), metrics_host="0.0.0.0").metrics_bind_host == "0.0.0.0"


# ------------------------------------------------------------------------------ 13: one owner per counter
def test_counters_have_one_writer_thread(rel_server, client, monkeypatch):
    from gsv.session import Session
    from server.synthesis import SynthesisCall

    writers: dict[str, set[str]] = {}
    for cls, names in ((Session, {"jobs_scheduled", "jobs_decoded"}), (SynthesisCall, {"_buffered"})):
        def setattr_(self, name, value, _names=names, _base=cls.__mro__[1].__setattr__):
            if name in _names and name in self.__dict__:  # changes, not the initial assignment
                writers.setdefault(name, set()).add(threading.current_thread().name)
            _base(self, name, value)

        monkeypatch.setattr(cls, "__setattr__", setattr_, raising=False)
    client.stream("你好，欢迎来到北京。今天天气很好。", "alice", max_audio_seconds=1.0, seed=1)
    bidi(client, "你好。", "今天天气很好。")
    loop_thread = rel_server.thread.name
    assert writers == {"jobs_scheduled": {"gsv-ar"}, "jobs_decoded": {"gsv-decoder"}, "_buffered": {loop_thread}}


def test_warm_up_happens_before_anything_is_served(tiny_full_bundle, tmp_path, monkeypatch):
    import server.app as app
    from server.config import ServerConfig
    from tests.server.harness import RunningServer

    started, release, seen = threading.Event(), threading.Event(), {}
    real = app.warm_up

    def slow_warm_up(state):
        seen["engine threads"] = [t.is_alive() for t in state.runner._threads]
        seen["admitting"] = state.admission.ready
        started.set()
        release.wait(30)
        real(state)

    monkeypatch.setattr(app, "warm_up", slow_warm_up)
    srv = RunningServer(ServerConfig(bundle=tiny_full_bundle.path, voices=tmp_path, port=0, host="127.0.0.1"))
    srv.thread.start()
    try:
        assert started.wait(60)
        with TtsClient(srv.target, retry=None) as c:
            code, details = code_of(lambda: c.synthesize("好的。", "alice"))
            assert code == grpc.StatusCode.UNAVAILABLE and "starting" in details
            code, _ = code_of(lambda: c.register_voice("v", reference_wav(), REF_TEXT, "zh", consent="ok"))
            assert code == grpc.StatusCode.UNAVAILABLE
        assert seen == {"engine threads": [], "admitting": False}
        release.set()
        assert srv.ready.wait(60) and srv.error is None
    finally:
        release.set()
        srv.stop()


# ------------------------------------------------------------------------------ 14: nothing blocking on the loop
def test_voice_files_are_read_off_the_event_loop(rel_server, client, monkeypatch):
    reg = rel_server.state.registry
    threads: list[str] = []
    for name in ("get", "describe", "list", "delete", "register"):
        real = getattr(reg, name)

        def wrapped(*a, _real=real, **k):
            threads.append(threading.current_thread().name)
            return _real(*a, **k)

        monkeypatch.setattr(reg, name, wrapped)
    with reg._lock:
        reg._cache.clear()  # the next synthesis must load "alice" from disk
    client.synthesize("好的。", "alice", max_audio_seconds=0.3)
    with reg._lock:
        reg._cache.clear()
    client.stream("好的。", "alice", max_audio_seconds=0.3)
    with reg._lock:
        reg._cache.clear()
    bidi(client, "好的。")
    client.get_voice("alice")
    client.list_voices()
    code_of(lambda: client.delete_voice("nobody"))
    assert len(threads) >= 6 and all(t.startswith("gsv-voices") for t in threads), threads


# ------------------------------------------------------------------------------ 15: metrics and fields
def test_queue_depth_and_live_rows_are_reported(rel_server):
    gauges: set[tuple[float, float]] = set()
    results = []

    def run(seed):
        with TtsClient(rel_server.target, token=TOKEN, timeout=60) as c:
            results.append(c.stream("你好，欢迎来到北京。今天天气很好。" * 3, "alice", max_audio_seconds=1.0, seed=seed))

    threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]  # max_live 2: two must wait
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        gauges.add((metric(rel_server, "tts_ar_live_rows"), metric(rel_server, "tts_queue_depth")))
        time.sleep(0.002)
    for t in threads:
        t.join()
    assert len(results) == 4
    assert max(live for live, _ in gauges) == 2 and max(q for _, q in gauges) >= 1, gauges
    wait_idle(rel_server)
    time.sleep(0.2)  # the AR loop reports an idle engine within one wait (50 ms)
    assert (metric(rel_server, "tts_ar_live_rows"), metric(rel_server, "tts_queue_depth")) == (0.0, 0.0)


def test_display_name_is_kept(rel_server, client):
    client.register_voice("named", reference_wav(), REF_TEXT, "zh", consent="ok", display_name="Dee Dee",
                          overwrite=True)
    assert client.get_voice("named").display_name == "Dee Dee"
    assert {v.voice_id: v.display_name for v in client.list_voices()}["named"] == "Dee Dee"
    from server.voices import VoiceRegistry

    again = VoiceRegistry(rel_server.config.voices, None, rel_server.state.bundle.bundle_id, scoped=True)
    assert again.describe("named", "tester")["display_name"] == "Dee Dee"  # stored, not only echoed


# ------------------------------------------------------------------------------ 16: smaller ones
def test_voice_ids_are_per_owner_with_no_existence_oracle(rel_server):
    with TtsClient(rel_server.target, token=TOKEN) as owner, TtsClient(rel_server.target, token=OTHER_TOKEN) as other:
        assert code_of(lambda: other.get_voice("alice"))[0] == grpc.StatusCode.NOT_FOUND
        mine = other.register_voice("alice", reference_wav(seed=2), "Hello there, friend.", "en", consent="ok",
                                    display_name="other's alice")
        assert mine.language == "en" and mine.display_name == "other's alice"
        assert owner.get_voice("alice").language == "zh"  # untouched
        assert [v.voice_id for v in other.list_voices()] == ["alice"]
        other.delete_voice("alice")
        assert owner.get_voice("alice").language == "zh"
        assert owner.stream("好的。", "alice", max_audio_seconds=0.3).chunks


@pytest.mark.parametrize("size", [10_000, 40_000])
def test_oversized_bearer_token_is_unauthenticated(rel_server, size):
    with TtsClient(rel_server.target, token="t" * size) as c:
        for _ in range(10):  # grpcio's soft metadata limit refused these at random
            assert code_of(c.list_voices)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_compare_runs_the_two_servers_interleaved(monkeypatch):
    import argparse

    from benchmarks import serve

    calls = []
    monkeypatch.setattr(serve, "run_level", lambda target, args, kind, value, m: calls.append((target, value)) or {
        "ttfa_ms_p50": 1, "audio_seconds_per_second": 1.0, "underruns": 0, "errors": {}})
    monkeypatch.setattr(serve, "closed_loop", None)
    args = argparse.Namespace(warmup=0, concurrency="1,2,4", rates="0.5")
    serve.sweep([("A", "a", None), ("B", "b", None)], args)
    assert calls == [("a", 1), ("b", 1), ("b", 2), ("a", 2), ("a", 4), ("b", 4), ("b", 0.5), ("a", 0.5)]


def test_client_docstring_example_runs_and_client_keeps_no_call_state(rel_server):
    import clients.tts_client as mod

    example = mod.__doc__.split("\n\n")[1]
    code = "\n".join(line[4:] for line in example.splitlines())
    code = code.replace('TtsClient("localhost:50051")', f'TtsClient("{rel_server.target}", token="{TOKEN}")')
    played = []
    scope = {"play": played.append}
    exec(code.replace('"Hello there."', '"好的。", max_audio_seconds=0.3').replace(
        '"Hello again."', '"好的。", max_audio_seconds=0.3'), scope)
    assert played and scope["result"].chunks
    with TtsClient(rel_server.target, token=TOKEN) as c:
        results = {}

        def run(seed):
            results[seed] = c.stream("今天天气很好。", "alice", seed=seed, max_audio_seconds=0.5)

        threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {s: r.seed for s, r in results.items()} == {1: 1, 2: 2, 3: 3}
        assert not hasattr(c, "last")


def test_async_client_streams_concurrently(rel_server):
    from clients import AsyncTtsClient

    async def go():
        async with AsyncTtsClient(rel_server.target, token=TOKEN) as c:
            return await asyncio.gather(*(c.stream("好的。", "alice", seed=s, max_audio_seconds=0.3) for s in (4, 5)))

    a, b = asyncio.run(go())
    assert (a.seed, b.seed) == (4, 5) and a.chunks and b.chunks
