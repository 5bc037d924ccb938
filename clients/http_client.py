"""asyncio client of the server's HTTP and WebSocket doors (``gsv-serve --http-port``), with the
same :class:`~clients.tts_client.StreamResult` as the gRPC client, so benchmarks and tools treat
every door alike.

    async with AsyncHttpTtsClient("http://localhost:9880") as c:
        r = await c.stream("Hello there.", "alice", door="ws", seed=7)   # or door="tts" | "openai"
        print(r.ttfa_ms, r.audio_seconds)

* ``tts``: upstream-compatible ``POST /tts`` streaming raw PCM16 at 32 kHz;
* ``openai``: ``POST /v1/audio/speech`` with ``response_format=pcm`` (24 kHz s16le);
* ``ws``: the ``/v1/ws/synthesize`` session (PCM16 at the requested rate).

Failures raise :class:`HttpTtsError` with the server's code name (``INVALID_ARGUMENT``, ...).
Imports httpx, websockets and numpy only.
"""
from __future__ import annotations

import json
import ssl
import time

import httpx
import numpy as np

from clients.tts_client import AudioChunk, StreamResult

DOORS = ("tts", "openai", "ws")
LATENCY_STREAMING_MODE = {"balanced": 2, "quality": 1, "lowest": 3}  # /tts streaming_mode of each latency mode
OPENAI_PCM_RATE = 24000


class HttpTtsError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after_ms: int | None = None):
        super().__init__(f"{code} ({status}): {message}")
        self.status, self.code_name, self.message, self.retry_after_ms = status, code, message, retry_after_ms


_STATUS_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE",
                504: "DEADLINE_EXCEEDED"}


async def _error_of(response: httpx.Response) -> HttpTtsError:
    body = await response.aread()
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    err = data.get("error") if isinstance(data.get("error"), dict) else data
    message = err.get("message") or body[:200].decode(errors="replace")
    retry = response.headers.get("retry-after-ms")
    return HttpTtsError(response.status_code, _STATUS_CODE.get(response.status_code, "INTERNAL"), message,
                        int(retry) if retry and retry.isdigit() else None)


class _PcmCollector:
    """Raw PCM16 byte stream -> AudioChunks (a sample split across two reads is kept for the next)."""

    def __init__(self, result: StreamResult, rate: int):
        self.result, self.rate, self._rest, self._pos, self._seq = result, rate, b"", 0, 0
        result.sample_rate = rate

    def feed(self, data: bytes) -> None:
        data = self._rest + data
        n = len(data) // 2 * 2
        self._rest = data[n:]
        if not n:
            return
        now = time.monotonic()
        if self.result.t_first_audio is None:
            self.result.t_first_audio = now
        x = np.frombuffer(data[:n], "<i2").astype(np.float32) / 32767.0
        self.result.chunks.append(AudioChunk(x, self.rate, self._seq, self._pos, now))
        self._seq, self._pos = self._seq + 1, self._pos + x.size


class AsyncHttpTtsClient:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 300.0, max_connections: int = 64,
                 verify: ssl.SSLContext | bool = True):
        """``verify``: for https, an SSLContext trusting the server's certificate (or True: the system's)."""
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.ssl = (verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()) \
            if self.base_url.startswith("https") else None
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout, verify=verify,
                                      limits=httpx.Limits(max_connections=max_connections,
                                                          max_keepalive_connections=max_connections))

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def stream(self, text: str, voice: str, *, door: str = "tts", language: str = "", seed: int | None = None,
                     latency: str = "balanced", max_audio_seconds: float | None = None, model: str = "") -> StreamResult:
        """One streamed request through ``door``; ``model``: a model id of the server ("" = its default)."""
        if door == "tts":
            body = {"text": text, "text_lang": language or "auto", "ref_audio_path": voice,
                    "prompt_lang": language or "auto", "media_type": "raw",
                    "streaming_mode": LATENCY_STREAMING_MODE[latency], "seed": -1 if seed is None else seed}
            if model:
                body["model"] = model  # (an extension of this server)
            return await self._post_pcm("/tts", body, 32000)
        if door == "openai":
            body = {"model": model or "gsv", "input": text, "voice": voice, "response_format": "pcm"}
            if seed is not None:
                body["seed"] = seed  # (extensions of this server: seed, language)
            if language:
                body["language"] = language
            return await self._post_pcm("/v1/audio/speech", body, OPENAI_PCM_RATE)
        if door == "ws":
            config = {"voice_id": voice, "language": language, "latency_mode": latency, "seed": seed,
                      "max_audio_seconds": max_audio_seconds, "model_id": model}
            return await self.websocket([(text, True)], {k: v for k, v in config.items() if v not in (None, "")})
        raise ValueError(f"door must be one of {DOORS}")

    async def _post_pcm(self, path: str, body: dict, rate: int) -> StreamResult:
        result = StreamResult(t_start=time.monotonic())
        collector = _PcmCollector(result, rate)
        async with self.http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                raise await _error_of(response)
            result.request_id = response.headers.get("x-request-id", "")
            result.seed = int(response.headers.get("x-seed", 0))
            async for data in response.aiter_raw():
                collector.feed(data)
        result.t_end = time.monotonic()
        return result

    async def websocket(self, pieces, config: dict) -> StreamResult:
        """One WebSocket session: ``config``, then ``pieces`` (``(text, flush)``), then close."""
        import websockets

        url = "ws" + self.base_url[4:] + "/v1/ws/synthesize"
        result = StreamResult(t_start=time.monotonic())
        async with websockets.connect(url, additional_headers=self.headers, max_size=None, ssl=self.ssl,
                                      open_timeout=self.timeout) as ws:
            await ws.send(json.dumps(config))
            for text, flush in pieces:
                await ws.send(json.dumps({"text": text, "flush": flush}))
            await ws.send(json.dumps({"close": True}))
            pending = None
            async for msg in ws:
                if isinstance(msg, bytes):
                    now = time.monotonic()
                    if result.t_first_audio is None:
                        result.t_first_audio = now
                    x = (np.frombuffer(msg, "<f4").astype(np.float32) if config.get("encoding") == "pcm_f32le"
                         else np.frombuffer(msg, "<i2").astype(np.float32) / 32767.0)
                    result.chunks.append(AudioChunk(x, result.sample_rate, pending["sequence"], pending["start_sample"],
                                                    now))
                    continue
                event = json.loads(msg)
                if event["type"] == "start":
                    result.request_id, result.seed = event["request_id"], event["seed"]
                    result.sample_rate = event["sample_rate_hz"]
                elif event["type"] == "chunk":
                    pending = event
                elif event["type"] == "summary":
                    result.summary = event
                elif event["type"] == "error":
                    raise HttpTtsError(event["status"], event["code"], event["message"], event.get("retry_after_ms"))
        result.t_end = time.monotonic()
        return result
