"""The HTTP doors under load and lifecycle, on a TLS server whose requests run long (60 s audio cap):
streaming really streams, a client that goes away frees its engine row, overload is a 429 on every
door, and a drain refuses new work with 503 while a running session finishes."""
from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import threading
import time

import httpx
import openai
import pytest
import websockets

from clients import TtsClient
from tests.conftest import speechlike, wav_bytes
from tests.server.harness import metric, start_server, wait_idle

LONG_TEXT = "你好，欢迎来到北京。今天天气很好。我们去散步吧。这把剑是你的了。"
TEXT = "你好。"


def make_cert(folder):
    """A self-signed certificate for localhost / 127.0.0.1 (openssl CLI)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def server(tiny_full_bundle, tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl (Debian package) is needed to make a test certificate")
    tmp = tmp_path_factory.mktemp("http_long")
    cert, key = make_cert(tmp)
    srv = start_server(tiny_full_bundle.path, tmp / "voices", max_live=2, max_queue=2, max_audio_seconds=60.0,
                       http_port=0, http_host="127.0.0.1", tls_cert=cert, tls_key=key)
    x, sr = speechlike()
    with TtsClient(srv.target, tls_root_cert=cert.read_bytes()) as c:
        c.register_voice("alice", wav_bytes(x, sr), "我们在北京。", "zh", consent="test speaker agreed")
    srv.cert = str(cert)
    srv.base = f"https://127.0.0.1:{srv.state.http_port}"
    srv.ws_url = f"wss://127.0.0.1:{srv.state.http_port}/v1/ws/synthesize"
    srv.ssl = ssl.create_default_context(cafile=srv.cert)
    yield srv
    if srv.thread.is_alive():
        srv.stop()


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.base, verify=server.ssl, timeout=120) as c:
        yield c


TTS_BODY = {"text": LONG_TEXT, "text_lang": "zh", "ref_audio_path": "alice", "media_type": "raw", "streaming_mode": 3,
            "seed": 2}
SPEECH_BODY = {"model": "tts-1", "input": LONG_TEXT, "voice": "alice", "response_format": "pcm", "seed": 2}


@pytest.mark.parametrize("path,body", [("/tts", TTS_BODY), ("/v1/audio/speech", SPEECH_BODY)])
def test_streaming_really_streams(http, path, body):
    """Over TLS: the first audio bytes arrive long before the synthesis of a multi-sentence text ends."""
    t0 = time.monotonic()
    arrivals, size = [], 0
    with http.stream("POST", path, json=body) as r:
        assert r.status_code == 200
        for data in r.iter_raw():
            arrivals.append(time.monotonic() - t0)
            size += len(data)
    total = time.monotonic() - t0
    assert size > 2 * 16000 * 4  # several seconds of audio
    assert len(arrivals) >= 3 and arrivals[0] < 0.5 * total, (arrivals[:3], total)


@pytest.mark.parametrize("path,body", [("/tts", TTS_BODY), ("/v1/audio/speech", SPEECH_BODY)])
def test_client_gone_mid_stream_frees_row(server, http, path, body):
    method = "UpstreamTts" if path == "/tts" else "OpenAISpeech"
    cancelled = metric(server, "tts_requests_total", {"method": method, "code": "CANCELLED"})
    rows_cancelled = metric(server, "tts_cancellations_total", {"reason": "cancelled"})
    with http.stream("POST", path, json=body) as r:
        next(r.iter_raw())  # the first audio, then the client goes away
    wait_idle(server)
    assert metric(server, "tts_requests_total", {"method": method, "code": "CANCELLED"}) == cancelled + 1
    assert metric(server, "tts_cancellations_total", {"reason": "cancelled"}) == rows_cancelled + 1
    assert metric(server, "tts_ar_live_rows") == 0 and metric(server, "tts_requests_in_flight") == 0


async def hold_session(server, text=TEXT):
    """A WebSocket session that spoke ``text`` and keeps its input open: it holds its admission slot."""
    ws = await websockets.connect(server.ws_url, ssl=server.ssl)
    await ws.send(json.dumps({"voice_id": "alice"}))
    await ws.send(json.dumps({"text": text, "flush": True}))
    return ws


async def finish_session(ws, text=None):
    if text:
        await ws.send(json.dumps({"text": text}))
    await ws.send(json.dumps({"close": True}))
    kinds = []
    async for msg in ws:
        kinds.append("audio" if isinstance(msg, bytes) else json.loads(msg)["type"])
    return kinds


def wait_held(server, n: int) -> None:
    """Until ``n`` requests are admitted and none is generating (all parked, waiting for text)."""
    deadline = time.time() + 60
    while (server.state.in_flight < n or server.state.engine.live) and time.time() < deadline:
        time.sleep(0.02)
    assert server.state.in_flight == n and server.state.engine.live == 0


def ws_error(server, config: dict) -> tuple[dict, int]:
    async def run():
        async with websockets.connect(server.ws_url, ssl=server.ssl) as ws:
            await ws.send(json.dumps(config))
            await ws.send(json.dumps({"text": TEXT, "close": True}))
            events = []
            try:
                async for msg in ws:
                    events.append(json.loads(msg))
            except websockets.ConnectionClosedError:
                pass
            return events[-1], ws.close_code

    return asyncio.run(run())


def test_admission_429_on_every_door(server, http):
    """Sessions with open input hold every slot (2 live + 2 queued); then each door refuses at once
    with its own 429 shape and a retry hint, and the held sessions still finish."""
    loop = asyncio.new_event_loop()
    capacity = server.state.admission.capacity
    sessions = [loop.run_until_complete(hold_session(server)) for _ in range(capacity)]
    try:
        wait_held(server, capacity)
        r = http.post("/tts", json=TTS_BODY)
        assert r.status_code == 429 and r.json()["Exception"] == "RESOURCE_EXHAUSTED"
        assert r.headers["retry-after"] == "1" and r.headers["retry-after-ms"] == "500"
        client = openai.OpenAI(base_url=server.base + "/v1", api_key="-", max_retries=0,
                               http_client=openai.DefaultHttpxClient(verify=server.ssl) if hasattr(
                                   openai, "DefaultHttpxClient") else None)
        with pytest.raises(openai.RateLimitError):
            client.audio.speech.create(model="tts-1", voice="alice", input=TEXT)
        event, close = ws_error(server, {"voice_id": "alice"})
        assert event["code"] == "RESOURCE_EXHAUSTED" and event["retry_after_ms"] == 500 and close == 4429
        for ws in sessions:
            kinds = loop.run_until_complete(finish_session(ws))
            assert kinds[0] == "start" and kinds[-1] == "summary" and "audio" in kinds
    finally:
        for ws in sessions:
            loop.run_until_complete(ws.close())
        loop.close()
    wait_idle(server)
    assert metric(server, "tts_admission_rejections_total", {"reason": "queue_full"}) >= 3


def test_drain_refuses_with_503_and_lets_a_session_finish(server, http):
    """Last test of the module: it stops the server."""
    loop = asyncio.new_event_loop()
    held = loop.run_until_complete(hold_session(server))
    try:
        wait_held(server, 1)
        stopper = threading.Thread(target=server.stop, daemon=True)
        stopper.start()
        deadline = time.time() + 30
        while http.get("/healthz").status_code != 503 and time.time() < deadline:
            time.sleep(0.02)
        assert http.get("/healthz").json() == {"status": "draining"}
        r = http.post("/tts", json=TTS_BODY)
        assert r.status_code == 503 and r.json() == {"message": "server is draining", "Exception": "UNAVAILABLE"}
        event, close = ws_error(server, {"voice_id": "alice"})
        assert event["code"] == "UNAVAILABLE" and close == 4503
        kinds = loop.run_until_complete(finish_session(held, "再见。"))  # the running session may still speak
        assert kinds[0] == "start" and kinds[-1] == "summary"
    finally:
        loop.run_until_complete(held.close())
        loop.close()
    stopper.join(60)
    assert not server.thread.is_alive()
