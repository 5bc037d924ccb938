"""The HTTP and WebSocket doors (``gsv-serve --http-port``) driven by real third-party clients: the
``openai`` SDK, ``httpx`` and the ``websockets`` client, on one shared server (tiny bundle, tokens
on, 3 s audio cap) with reference files under ``--ref-audio-dir``."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
import struct

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import websockets

from clients import TtsClient
from tests.conftest import speechlike, wav_bytes
from tests.server.browser import Browser, chromium_path
from tests.server.harness import metric, start_server, wait_idle

TOKEN = "tok-http-doors"
REF_TEXT = "我们在北京。"
TEXT = "你好，欢迎来到北京。"
CAP = 3.0  # the server's --max-audio-seconds: every request here makes at most this much audio


@pytest.fixture(scope="module")
def server(tiny_full_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    refs = tmp / "refs"
    (refs / "参考音频").mkdir(parents=True)
    x, sr = speechlike()
    wav = wav_bytes(x, sr)
    (refs / "参考音频" / f"{REF_TEXT}.wav").write_bytes(wav)  # SillyTavern's convention: name = transcript
    (refs / "a.wav").write_bytes(wav)
    (tmp / "secret.wav").write_bytes(wav)
    (refs / "link.wav").symlink_to(tmp / "secret.wav")  # a symbolic link leading out of the folder
    srv = start_server(tiny_full_bundle.path, tmp / "voices", max_live=2, max_queue=2, max_audio_seconds=CAP,
                       deadline_chunks=False, http_port=0, http_host="127.0.0.1", ref_audio_dir=refs,
                       tokens={TOKEN: "tester"})
    with TtsClient(srv.target, token=TOKEN) as c:
        c.register_voice("alice", wav, REF_TEXT, "zh", consent="test speaker agreed")
    srv.base = f"http://127.0.0.1:{srv.state.http_port}"
    srv.ws_url = f"ws://127.0.0.1:{srv.state.http_port}/v1/ws/synthesize"
    yield srv
    srv.stop()


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        yield c


@pytest.fixture()
def oai(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=TOKEN, max_retries=0, timeout=120)


def audible(x: np.ndarray) -> bool:
    return x.size > 0 and float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) > 1e-3 and np.ptp(x) > 1e-3


def plausible(seconds: float) -> bool:
    """Speech of a request capped at CAP seconds (MP3 adds its encoder delay and a silent first frame)."""
    return 0.5 <= seconds <= CAP + 0.12


def pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.float32) / 32767.0


def ws_session(server, config: dict, messages, headers=None):
    """One WebSocket session with the ``websockets`` client: (events, pcm bytes, close code)."""

    async def run():
        events, audio = [], bytearray()
        hdrs = {"Authorization": f"Bearer {TOKEN}"} if headers is None else headers
        async with websockets.connect(server.ws_url, additional_headers=hdrs, max_size=None) as ws:
            try:
                await ws.send(config if isinstance(config, (str, bytes)) else json.dumps(config))
                for m in messages:
                    await ws.send(m if isinstance(m, (str, bytes)) else json.dumps(m))
                async for msg in ws:
                    if isinstance(msg, bytes):
                        audio.extend(msg)
                    else:
                        events.append(json.loads(msg))
            except websockets.ConnectionClosedError:  # closed with an error code: the events say why
                pass
            return events, bytes(audio), ws.close_code

    return asyncio.run(run())


# ----------------------------------------------------------------------------------- OpenAI SDK
@pytest.mark.parametrize("fmt,rate", [("mp3", 32000), ("opus", 48000), ("flac", 32000), ("wav", 32000),
                                      ("pcm", 24000)])
def test_openai_sdk_streams_each_format(oai, fmt, rate):
    with oai.audio.speech.with_streaming_response.create(model="tts-1", voice="alice", input=TEXT,
                                                         response_format=fmt, extra_body={"seed": 5}) as response:
        assert response.headers["x-seed"] == "5"
        data = b"".join(response.iter_bytes())
    if fmt == "pcm":
        x, sr = pcm16(data), 24000
    else:
        x, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == rate
    assert plausible(x.size / sr), x.size / sr
    assert audible(x)


def test_openai_sdk_sse_events(oai):
    with oai.audio.speech.with_streaming_response.create(model="tts-1", voice={"id": "alice"}, input=TEXT,
                                                         response_format="pcm", stream_format="sse",
                                                         extra_body={"seed": 5}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in response.iter_lines() if ln.startswith("data: ")]
    events = [json.loads(ln[6:]) for ln in lines]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) > 2
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    x = pcm16(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]))
    assert plausible(x.size / 24000) and audible(x)


def test_openai_sdk_errors_and_listing(server, oai):
    def status(exc_type, **kw):
        args = dict(model="tts-1", voice="alice", input=TEXT) | kw
        with pytest.raises(exc_type) as e:
            oai.audio.speech.create(**args)
        assert set(e.value.body) >= {"message", "type", "param", "code"}, e.value.body  # OpenAI's error shape
        return e.value

    assert status(openai.BadRequestError, response_format="aac").body["param"] == "response_format"
    assert status(openai.NotFoundError, voice="nobody").status_code == 404
    assert status(openai.BadRequestError, input="").body["param"] == "input"
    assert status(openai.BadRequestError, input="好" * 4097).body["param"] == "input"
    assert status(openai.BadRequestError, speed=5.0).body["param"] == "speed"
    assert status(openai.BadRequestError, voice="../x").body["param"] == "voice"
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.audio.speech.create(model="tts-1", voice="alice", input=TEXT)
    assert [m.id for m in oai.models.list()] == [server.state.model_id]
    voices = httpx.get(server.base + "/v1/audio/voices", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert voices["voices"] == ["alice"] and voices["data"][0]["language"] == "zh"


# ----------------------------------------------------------------------------------- upstream /tts
def sillytavern_body(voice_id: str) -> dict:
    """What SillyTavern's GPT-SoVITS provider POSTs to the endpoint (its defaults; speaker from /speakers)."""
    return {"text": TEXT, "prompt_text": voice_id, "ref_audio_path": "./参考音频/" + voice_id + ".wav",
            "text_lang": "zh", "prompt_lang": "zh", "text_split_method": "cut5", "batch_size": 1,
            "media_type": "ogg", "streaming_mode": "true", "fragment_interval": 0.3, "speed_factor": 1.0,
            "top_k": 5, "top_p": 1, "temperature": 1, "repetition_penalty": 1.35}


def test_tts_sillytavern_request_streams_ogg(http):
    speakers = [s["voice_id"] for s in http.get("/speakers").json()]
    assert speakers == ["alice", REF_TEXT]  # registered voices, then the files in 参考音频
    for speaker in speakers:  # a registered voice, and a reference file named by its transcript
        for path in ("/", "/tts"):
            with http.stream("POST", path, json=sillytavern_body(speaker)) as r:
                assert r.status_code == 200 and r.headers["content-type"] == "audio/ogg"
                reads = [bytes(b) for b in r.iter_bytes()]
            x, sr = sf.read(io.BytesIO(b"".join(reads)), dtype="float32")  # Ogg/Opus
            assert sr == 48000 and plausible(x.size / sr) and audible(x)


def test_tts_get_returns_whole_wav(http):
    r = http.get("/tts", params={"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "prompt_lang": "zh",
                                 "seed": 9})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav" and r.headers["x-seed"] == "9"
    assert struct.unpack("<I", r.content[40:44])[0] == len(r.content) - 44  # exact sizes when not streamed
    x, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 32000 and plausible(x.size / sr) and audible(x)


def test_tts_streamed_wav_is_header_then_pcm(http):
    body = {"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "streaming_mode": True, "seed": 9}
    with http.stream("POST", "/tts", json=body) as r:
        data = b"".join(r.iter_bytes())
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF  # length unknown up front
    x, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == 32000 and x.size == (len(data) - 44) // 2 and plausible(x.size / sr)


def test_tts_reference_file_prepared_once(server, http):
    refs = server.state.ref_files
    body = {"text": TEXT, "text_lang": "zh", "ref_audio_path": "a.wav", "prompt_text": REF_TEXT, "prompt_lang": "zh",
            "media_type": "raw"}
    before = len(refs._cache)
    assert http.post("/tts", json=body).status_code == 200
    assert http.post("/tts", json=body).status_code == 200
    assert len(refs._cache) == before + 1  # the second request used the prepared voice
    path = refs.root / "a.wav"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file changed
    assert http.post("/tts", json=body).status_code == 200
    assert len(refs._cache) == before + 2


def test_upstream_switches_refused_and_exit_never_stops(server, http):
    for path in ("/set_gpt_weights?weights_path=x.ckpt", "/set_sovits_weights?weights_path=x.pth",
                 "/set_refer_audio?refer_audio_path=a.wav"):
        r = http.get(path)
        assert r.status_code == 400 and set(r.json()) == {"message", "Exception"}
    for method in ("GET", "POST"):
        r = http.request(method, "/control", params={"command": "exit"})
        assert r.status_code == 403 and "SIGTERM" in r.json()["message"]
    assert httpx.get(server.base + "/control", params={"command": "exit"}).status_code == 401  # no token
    assert server.thread.is_alive() and httpx.get(server.base + "/healthz").json() == {"status": "serving"}
    assert http.post("/tts", json={"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice",
                                   "media_type": "raw"}).status_code == 200


BAD_TTS = [
    ({"text_lang": "zh", "ref_audio_path": "alice"}, 400, "text"),
    ({"text": "", "text_lang": "zh", "ref_audio_path": "alice"}, 400, "text"),
    ({"text": "   ", "text_lang": "zh", "ref_audio_path": "alice"}, 400, "empty"),
    ({"text": TEXT * 300, "text_lang": "zh", "ref_audio_path": "alice"}, 400, "limit"),
    ({"text": TEXT, "text_lang": "xx", "ref_audio_path": "alice"}, 400, "text_lang"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "nobody"}, 404, "nobody"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "media_type": "mp4"}, 400, "media_type"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "media_type": "aac"}, 400, "aac"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "../secret.wav", "prompt_text": REF_TEXT,
      "prompt_lang": "zh"}, 400, "outside"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "/etc/passwd", "prompt_text": REF_TEXT,
      "prompt_lang": "zh"}, 400, "outside"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "link.wav", "prompt_text": REF_TEXT,
      "prompt_lang": "zh"}, 400, "outside"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "a.wav"}, 400, "prompt_text"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "seed": -5}, 400, "seed"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "streaming_mode": 7}, 400, "streaming_mode"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "top_k": 0}, 400, "top_k"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "temperature": "hot"}, 400, "temperature"),
    ({"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "speed_factor": 9}, 400, "speed"),
]


@pytest.mark.parametrize("body,status,word", BAD_TTS)
def test_tts_bad_input(http, body, status, word):
    r = http.post("/tts", json=body)
    assert r.status_code == status and set(r.json()) == {"message", "Exception"}
    assert word in r.json()["message"]


def test_bad_requests_never_500_and_server_keeps_serving(server, http):
    cases = [http.post("/tts", content=b"{not json"), http.post("/tts", content=b"[1, 2]"),
             http.post("/tts", content=b"x" * (2 * 1024 * 1024)),
             http.post("/v1/audio/speech", content=b"{not json"), http.post("/v1/audio/speech", json={"input": TEXT}),
             http.post("/tts", json={"text": TEXT}, headers={"x-request-timeout": "soon"}),
             http.get("/no/such/route"), http.put("/tts"), http.get("/v1/models/other")]
    assert [r.status_code for r in cases] == [400, 400, 400, 400, 400, 400, 404, 405, 404]
    assert "error" in cases[3].json() and "message" in cases[0].json()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + TOKEN}):
        for method, path in (("POST", "/tts"), ("POST", "/v1/audio/speech"), ("GET", "/v1/audio/voices"),
                             ("GET", "/speakers"), ("GET", "/v1/models")):
            r = httpx.request(method, server.base + path, headers=headers, json={"text": TEXT})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
    assert httpx.get(server.base + "/healthz").status_code == 200  # no token needed
    faults = sum(metric(server, "tts_requests_total", {"method": m, "code": "INTERNAL"})
                 for m in ("UpstreamTts", "UpstreamControl", "OpenAISpeech", "OpenAIModels", "OpenAIVoices",
                           "WebSocketSynthesize"))
    assert faults == 0
    assert http.post("/tts", json={"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice"}).status_code == 200


def test_request_timeout_header_is_the_deadline(server, http):
    r = http.post("/tts", json={"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice"},
                  headers={"X-Request-Timeout": "0.001"})
    assert r.status_code == 504 and r.json()["Exception"] == "DEADLINE_EXCEEDED"
    with pytest.raises(openai.APIStatusError) as e:
        openai.OpenAI(base_url=server.base + "/v1", api_key=TOKEN, max_retries=0).audio.speech.create(
            model="tts-1", voice="alice", input=TEXT, extra_headers={"X-Request-Timeout": "0.001"})
    assert e.value.status_code == 504 and e.value.body["code"] == "deadline_exceeded"
    wait_idle(server)


# ----------------------------------------------------------------------------------- WebSocket
def test_websocket_session(server):
    events, audio, code = ws_session(server, {"voice_id": "alice", "seed": 4, "latency_mode": "lowest"},
                                     [{"text": "你好，"}, {"text": "欢迎来到北京。", "flush": True}, {"close": True}])
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "summary" and set(kinds[1:-1]) == {"chunk"}
    assert code == 1000 and events[0]["seed"] == 4 and events[0]["sample_rate_hz"] == 32000
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [c["sequence"] for c in chunks] == list(range(len(chunks)))
    assert sum(c["bytes"] for c in chunks) == len(audio) and chunks[-1]["start_sample"] + chunks[-1]["num_samples"] \
        == len(audio) // 2
    x = pcm16(audio)
    assert audible(x) and abs(events[-1]["audio_seconds"] - x.size / 32000) < 1e-3


@pytest.mark.parametrize("config,messages,code,status", [
    ("not json", [], "INVALID_ARGUMENT", 4400),
    (b"\x00binary", [], "INVALID_ARGUMENT", 4400),
    ({"voice_id": "alice", "colour": "red"}, [], "INVALID_ARGUMENT", 4400),
    ({"voice_id": "alice", "latency_mode": "warp"}, [], "INVALID_ARGUMENT", 4400),
    ({"voice_id": "alice", "seed": "x"}, [], "INVALID_ARGUMENT", 4400),
    ({"voice_id": "nobody"}, [{"text": TEXT, "close": True}], "NOT_FOUND", 4404),
    ({"voice_id": "alice"}, ["{oops", {"close": True}], "INVALID_ARGUMENT", 4400),
    ({"voice_id": "alice"}, [{"text": 5}], "INVALID_ARGUMENT", 4400),
    ({"voice_id": "alice"}, [{"close": True}], "INVALID_ARGUMENT", 4400),
])
def test_websocket_bad_input(server, config, messages, code, status):
    events, audio, close = ws_session(server, config, messages)
    assert events[-1]["type"] == "error" and events[-1]["code"] == code and close == status, events


def test_websocket_auth(server):
    cfg = {"voice_id": "alice"}
    for headers, config in (({}, cfg), ({"Authorization": "Bearer wrong"}, cfg), ({}, cfg | {"token": "wrong"})):
        events, _, close = ws_session(server, config, [{"text": TEXT, "close": True}], headers=headers)
        assert events == [{"type": "error", "code": "UNAUTHENTICATED", "status": 401,
                           "message": "missing or invalid bearer token"}] and close == 4401
    events, audio, close = ws_session(server, cfg | {"token": TOKEN}, [{"text": TEXT, "close": True}], headers={})
    assert close == 1000 and audio  # the browser way: the token in the config


def test_websocket_disconnect_mid_stream_frees_row(server):
    cancelled = metric(server, "tts_requests_total", {"method": "WebSocketSynthesize", "code": "CANCELLED"})

    async def run():
        async with websockets.connect(server.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send(json.dumps({"voice_id": "alice"}))
            await ws.send(json.dumps({"text": TEXT, "flush": True}))  # input stays open: the request lives on
            while not isinstance(await ws.recv(), bytes):
                pass
            assert server.state.in_flight == 1
        # leaving the block closes the connection mid-stream

    asyncio.run(run())
    wait_idle(server)
    assert metric(server, "tts_requests_total", {"method": "WebSocketSynthesize", "code": "CANCELLED"}) == cancelled + 1
    assert metric(server, "tts_requests_in_flight") == 0 and metric(server, "tts_ar_live_rows") == 0


# ----------------------------------------------------------------------------------- across doors
def test_same_seed_same_pcm_through_every_door(server, http, oai):
    with TtsClient(server.target, token=TOKEN) as c:
        grpc32 = c.stream(TEXT, "alice", seed=11)
        grpc24 = c.stream(TEXT, "alice", seed=11, sample_rate=24000)
    ref32 = (np.clip(grpc32.audio, -1, 1) * 32767).round().astype("<i2").tobytes()
    ref24 = (np.clip(grpc24.audio, -1, 1) * 32767).round().astype("<i2").tobytes()
    raw = http.post("/tts", json={"text": TEXT, "text_lang": "zh", "ref_audio_path": "alice", "media_type": "raw",
                                  "streaming_mode": 2, "seed": 11}).content
    _, ws_pcm, _ = ws_session(server, {"voice_id": "alice", "seed": 11}, [{"text": TEXT, "close": True}])
    openai_pcm = oai.audio.speech.create(model="tts-1", voice="alice", input=TEXT, response_format="pcm",
                                         extra_body={"seed": 11}).content
    assert len(ref32) > 32000
    assert raw == ref32 and ws_pcm == ref32 and openai_pcm == ref24


def test_metrics_tell_doors_apart(server):
    for method in ("UpstreamTts", "OpenAISpeech", "WebSocketSynthesize"):
        assert metric(server, "tts_requests_total", {"method": method, "code": "OK"}) > 0
        assert metric(server, "tts_time_to_first_audio_seconds_count", {"method": method}) > 0
    assert metric(server, "tts_requests_total", {"method": "UpstreamTts", "code": "INVALID_ARGUMENT"}) > 0


# ----------------------------------------------------------------------------------- playground
@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (make setup installs it)")
def test_playground_plays_in_headless_chromium(server, tmp_path):
    """The page at / in a real browser: lists the caller's voices (with the token typed in), streams a
    sentence over the WebSocket into Web Audio, and shows time to first audio and the real-time factor;
    every request it makes goes to the server itself (it works offline)."""

    async def run():
        browser = Browser(tmp_path / "profile")
        try:
            async with browser as b:
                await b.call("Page.navigate", url=server.base + "/")
                await b.wait_for("document.readyState === 'complete' && !!document.getElementById('play')")
                await b.js(f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                           "document.getElementById('reload').click()")
                await b.wait_for("[...document.getElementById('voice').options].some(o => o.value === 'alice')")
                await b.js(f"document.getElementById('text').value = {json.dumps(TEXT)};"
                           "document.getElementById('latency').value = 'lowest';"
                           "document.getElementById('play').click()")
                status = await b.wait_for("(s => /^(done|error)/.test(s) && s)"
                                          "(document.getElementById('status').textContent)")
                figures = await b.js("['ttfa', 'rtf', 'audio'].map(id => document.getElementById(id).textContent)")
                return status, figures, list(b.requests)
        finally:
            browser.close()

    status, (ttfa, rtf, received), requests = asyncio.run(run())
    m = re.fullmatch(r"done: ([0-9.]+) s of audio in (\d+) chunk\(s\), first audio after (\d+) ms, "
                     r"real-time factor ([0-9.]+)", status)
    assert m, status
    assert plausible(float(m.group(1))) and int(m.group(2)) >= 1 and float(m.group(4)) > 0
    assert ttfa == f"{m.group(3)} ms" and rtf.startswith(m.group(4)) and received.startswith(m.group(1))
    assert requests and all(u.startswith(server.base) for u in requests), requests


# ----------------------------------------------------------------------------------- gsv-say --http
@pytest.mark.parametrize("door,rate", [("ws", 32000), ("tts", 32000), ("openai", 24000)])
def test_gsv_say_through_http_doors(server, tmp_path, capsys, door, rate):
    from clients.say import main

    out = tmp_path / f"{door}.wav"
    args = ["--http", server.base, "--door", door, "--voice", "alice", "--text", TEXT, "--lang", "zh", "--seed", "3",
            "--token", TOKEN, "-o", str(out)]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    x, sr = sf.read(out, dtype="float32")
    assert sr == rate and plausible(x.size / sr) and audible(x) and report["seed"] == 3 and report["ttfa_ms"] > 0
    assert main(args[:5] + ["nobody"] + args[6:]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_http_listener_is_tcp_so_responses_skip_nagle():
    """asyncio turns Nagle's algorithm off only on sockets created as IPPROTO_TCP; on a socket made
    with proto 0 every response waited ~40 ms for the client's delayed ACK (found by gsv-bench)."""
    from server.web import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
