"""Client library for the ``gsv.tts.v1.TextToSpeech`` service.

    from clients import TtsClient
    with TtsClient("localhost:50051") as tts:
        for chunk in tts.stream_chunks("Hello there.", voice="alice"):
            play(chunk.samples)            # float32 numpy at chunk.sample_rate
        result = tts.stream("Hello again.", voice="alice")   # a StreamResult: all chunks + timings

:class:`TtsClient` is synchronous; one instance may be shared by threads (one channel, no
per-call state on the client: every call's results are returned to its caller).
:class:`AsyncTtsClient` is the asyncio twin.  Both raise :class:`TtsError` (with the gRPC status
code) on failure.

Both retry a synthesis (and the read-only voice calls) that failed with UNAVAILABLE (a replica
draining, dying or not ready; a load balancer with no healthy backend) or RESOURCE_EXHAUSTED (a
full server) *before any audio was delivered* — bounded attempts, exponential backoff with
jitter, and the server's ``grpc-retry-pushback-ms`` hint when it gives one — never after audio
reached the caller (that would repeat speech).  ``retry=None`` turns it off.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable, Iterator

import grpc
import numpy as np

from protos.tts.v1 import tts_pb2 as pb
from protos.tts.v1 import tts_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ENCODINGS = {"pcm_s16le": pb.PCM_S16LE, "pcm_f32le": pb.PCM_F32LE, "wav": pb.WAV}
LATENCY = {"balanced": pb.BALANCED, "lowest": pb.LOWEST_LATENCY, "quality": pb.HIGHEST_QUALITY}
SPLITS = {f"cut{i}": getattr(pb, f"CUT{i}") for i in range(6)}


class TtsError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, retry_after_ms: int | None = None):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.retry_after_ms = code, details, retry_after_ms

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> "TtsError":
        retry = None
        try:
            for k, v in (e.trailing_metadata() or ()):
                if k == "grpc-retry-pushback-ms":
                    retry = int(v)
        except Exception:  # noqa: BLE001 - some error objects carry no metadata
            pass
        return cls(e.code(), e.details() or "", retry)


RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a call that failed with a RETRYABLE code before any audio was delivered."""

    max_attempts: int = 4  # including the first
    initial_backoff: float = 0.05  # seconds; attempt n waits up to initial * multiplier**n (full jitter)
    multiplier: float = 2.0
    max_backoff: float = 2.0
    max_pushback: float = 5.0  # the server's retry hint is followed up to this many seconds

    def __post_init__(self):
        if self.max_attempts < 1 or self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("RetryPolicy: max_attempts >= 1, backoffs >= 0, multiplier >= 1")

    def delay(self, attempt: int, err: "TtsError") -> float | None:
        """Seconds to wait before attempt ``attempt + 1`` (0-based ``attempt`` failed), or None: give up."""
        if err.code not in RETRYABLE or attempt + 1 >= self.max_attempts:
            return None
        if err.retry_after_ms is not None and err.retry_after_ms >= 0:
            return min(err.retry_after_ms / 1000.0, self.max_pushback)
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * self.multiplier ** attempt))


DEFAULT_RETRY = RetryPolicy()


def _retry_delay(policy: RetryPolicy | None, attempt: int, err: TtsError, t_start: float,
                 timeout: float | None) -> float | None:
    if policy is None:
        return None
    delay = policy.delay(attempt, err)
    if delay is not None and timeout is not None and time.monotonic() + delay - t_start >= timeout:
        return None  # no time left for another attempt
    if delay is not None:
        log.info("retrying after %s (attempt %d, waiting %.0f ms)", err.code.name, attempt + 2, 1000 * delay)
    return delay


class _Replay:
    """The text pieces of a bidi call, replayable from the start by a retry (thread-safe: grpcio
    reads a request iterator on its own thread, and a failed call's reader may still be pulling)."""

    _END = object()

    def __init__(self, pieces):
        self._source, self._sent, self._lock = iter(pieces), [], threading.Lock()

    def _next(self, i: int):
        with self._lock:
            if i < len(self._sent):
                return self._sent[i]
            p = next(self._source, self._END)
            if p is not self._END:
                self._sent.append(p)
            return p

    def __iter__(self):
        i = 0
        while (p := self._next(i)) is not self._END:
            i += 1
            yield p


@dataclass
class AudioChunk:
    samples: np.ndarray  # float32 mono
    sample_rate: int
    sequence: int
    start_sample: int
    arrival: float  # time.monotonic() when received


@dataclass
class StreamResult:
    """Everything a stream produced, plus client-side timings."""

    request_id: str = ""
    seed: int = 0
    sample_rate: int = 32000
    model_id: str = ""  # the model that spoke (StreamStart)
    chunks: list[AudioChunk] = field(default_factory=list)
    summary: pb.SynthesisSummary | None = None
    t_start: float = 0.0
    t_first_audio: float | None = None
    t_end: float = 0.0
    attempts: int = 1  # calls made (more than one: retried before any audio arrived)

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate([c.samples for c in self.chunks]) if self.chunks else np.zeros(0, np.float32)

    @property
    def audio_seconds(self) -> float:
        return sum(c.samples.size for c in self.chunks) / self.sample_rate

    @property
    def ttfa_ms(self) -> float | None:
        return None if self.t_first_audio is None else 1000 * (self.t_first_audio - self.t_start)

    @property
    def total_ms(self) -> float:
        return 1000 * (self.t_end - self.t_start)

    def underruns(self) -> int:
        """Chunks that arrived after the audio received before them had finished playing."""
        if not self.chunks:
            return 0
        count, t0, played = 0, self.chunks[0].arrival, 0.0
        for c in self.chunks:
            if c.arrival > t0 + played + 1e-3 and c is not self.chunks[0]:
                count += 1
                t0, played = c.arrival, 0.0  # playback restarts when the late chunk arrives
            played += c.samples.size / c.sample_rate
        return count


def config(voice: str, language: str = "", *, encoding: str = "pcm_s16le", sample_rate: int = 0,
           seed: int | None = None, temperature: float | None = None, top_k: int | None = None,
           top_p: float | None = None, repetition_penalty: float | None = None, speed: float | None = None,
           max_audio_seconds: float | None = None, latency: str = "balanced", split: str = "cut5",
           request_id: str = "", model: str = "") -> pb.SynthesisConfig:
    """A SynthesisConfig; ``model``: a model id of the server (ListModels; "" = its default model)."""
    sampling = pb.SamplingParams()
    for name, value in (("seed", seed), ("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                        ("repetition_penalty", repetition_penalty)):
        if value is not None:
            setattr(sampling, name, value)
    c = pb.SynthesisConfig(voice_id=voice, language=language,
                           output=pb.AudioFormat(encoding=ENCODINGS[encoding], sample_rate_hz=sample_rate),
                           sampling=sampling, latency_mode=LATENCY[latency], text_split=SPLITS[split],
                           request_id=request_id, model_id=model)
    if speed is not None:
        c.speed = speed
    if max_audio_seconds is not None:
        c.max_audio_seconds = max_audio_seconds
    return c


def parse_blend(sources) -> list[pb.BlendSource]:
    """``[("A", 0.7), ...]`` or ``["A:0.7", ...]`` -> BlendSource messages."""
    out = []
    for s in sources:
        if isinstance(s, str):
            vid, sep, weight = s.rpartition(":")
            if not sep or not vid:
                raise ValueError(f"blend source {s!r} is not VOICE:WEIGHT")
            try:
                s = (vid, float(weight))
            except ValueError:
                raise ValueError(f"blend source {s!r}: the weight is not a number") from None
        out.append(pb.BlendSource(voice_id=s[0], weight=float(s[1])))
    return out


def _register_request(voice_id: str, reference_audio: bytes, reference_text: str, reference_language: str,
                      consent: str, aux=(), display_name: str = "", overwrite: bool = False, model: str = "",
                      reference_free: bool = False, blend=()) -> pb.RegisterVoiceRequest:
    return pb.RegisterVoiceRequest(voice_id=voice_id, reference_audio=reference_audio, reference_text=reference_text,
                                   reference_language=reference_language, aux_reference_audio=list(aux),
                                   display_name=display_name, consent_statement=consent, overwrite=overwrite,
                                   model_id=model, reference_free=reference_free, blend=parse_blend(blend))


def decode_pcm(data: bytes, encoding: int) -> np.ndarray:
    if encoding == pb.PCM_F32LE:
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def _channel_args(tls_root: bytes | None):
    opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.max_send_message_length", 16 * 1024 * 1024)]
    return opts


def _metadata(token: str | None):
    return (("authorization", f"Bearer {token}"),) if token else None


def _piece(p) -> pb.BidiSynthesizeRequest:
    text, flush = p if isinstance(p, tuple) else (p, False)
    return pb.BidiSynthesizeRequest(input=pb.TextInput(text=text, flush=flush))


class _Consumer:
    """Turns StreamingSynthesize/BidiSynthesize messages into a StreamResult."""

    def __init__(self, result: StreamResult | None = None):
        self.result = result if result is not None else StreamResult(t_start=time.monotonic())
        self.encoding = pb.PCM_S16LE

    @property
    def delivered(self) -> bool:
        return bool(self.result.chunks)

    def feed(self, msg) -> AudioChunk | None:
        kind = msg.WhichOneof("event")
        r = self.result
        if kind == "start":
            r.request_id, r.seed, r.model_id = msg.start.request_id, msg.start.seed, msg.start.model_id
            r.sample_rate = msg.start.format.sample_rate_hz or 32000
            self.encoding = msg.start.format.encoding or pb.PCM_S16LE
        elif kind == "audio":
            now = time.monotonic()
            if r.t_first_audio is None:
                r.t_first_audio = now
            chunk = AudioChunk(decode_pcm(msg.audio.data, self.encoding), r.sample_rate, msg.audio.sequence,
                               msg.audio.start_sample, now)
            r.chunks.append(chunk)
            return chunk
        elif kind == "summary":
            r.summary = msg.summary
        return None

    def finish(self) -> StreamResult:
        self.result.t_end = time.monotonic()
        return self.result


class TtsClient:
    def __init__(self, target: str, *, token: str | None = None, tls_root_cert: bytes | None = None,
                 timeout: float | None = 300.0, retry: RetryPolicy | None = DEFAULT_RETRY):
        creds = grpc.ssl_channel_credentials(tls_root_cert) if tls_root_cert is not None else None
        opts = _channel_args(tls_root_cert)
        self.channel = grpc.secure_channel(target, creds, opts) if creds else grpc.insecure_channel(target, opts)
        self.stub = pb_grpc.TextToSpeechStub(self.channel)
        self.metadata, self.timeout, self.retry = _metadata(token), timeout, retry

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise TtsError(grpc.StatusCode.UNAVAILABLE, f"server not reachable within {timeout:g} s") from None

    def _call(self, fn, request, retry: bool = False):
        t0, attempt = time.monotonic(), 0
        while True:
            try:
                return fn(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                err = TtsError.from_rpc(e)
            delay = _retry_delay(self.retry if retry else None, attempt, err, t0, self.timeout)
            if delay is None:
                raise err
            time.sleep(delay)
            attempt += 1

    # ---- synthesis
    def synthesize(self, text: str, voice: str, **kw) -> pb.SynthesizeResponse:
        """The whole utterance in one response (retried: no audio is delivered before it succeeds)."""
        return self._call(self.stub.Synthesize, pb.SynthesizeRequest(config=config(voice, **kw), text=text), retry=True)

    def stream_chunks(self, text: str, voice: str, result: StreamResult | None = None,
                      **kw) -> Iterator[AudioChunk]:
        """Yield audio chunks as they arrive; pass a ``result`` to collect them, the start message and
        the summary into it (it is the caller's, so concurrent calls never share one)."""
        request = pb.SynthesizeRequest(config=config(voice, **kw), text=text)
        consumer = _Consumer(result)
        consumer.result.t_start = t0 = time.monotonic()
        attempt = 0
        while True:
            call = self.stub.StreamingSynthesize(request, timeout=self.timeout, metadata=self.metadata)
            consumer.result.attempts = attempt + 1
            try:
                for msg in call:
                    chunk = consumer.feed(msg)
                    if chunk is not None:
                        yield chunk
                return
            except grpc.RpcError as e:
                err = TtsError.from_rpc(e)
                delay = None if consumer.delivered else _retry_delay(self.retry, attempt, err, t0, self.timeout)
                if delay is None:
                    raise err from None
            finally:
                call.cancel()
                consumer.finish()
            time.sleep(delay)
            attempt += 1

    def stream(self, text: str, voice: str, **kw) -> StreamResult:
        result = StreamResult()
        for _ in self.stream_chunks(text, voice, result=result, **kw):
            pass
        return result

    def bidi(self, pieces: Iterable[str | tuple[str, bool]], voice: str, **kw) -> StreamResult:
        """Send text pieces (``(text, flush)`` tuples or plain strings) and collect the audio."""
        first = pb.BidiSynthesizeRequest(config=config(voice, **kw))
        replay = _Replay(pieces)

        def requests():
            yield first
            for p in replay:
                yield _piece(p)

        consumer = _Consumer()
        t0, attempt = consumer.result.t_start, 0
        while True:
            consumer.result.attempts = attempt + 1
            try:
                for msg in self.stub.BidiSynthesize(requests(), timeout=self.timeout, metadata=self.metadata):
                    consumer.feed(msg)
                return consumer.finish()
            except grpc.RpcError as e:
                err = TtsError.from_rpc(e)
            delay = None if consumer.delivered else _retry_delay(self.retry, attempt, err, t0, self.timeout)
            if delay is None:
                raise err
            time.sleep(delay)
            attempt += 1

    # ---- voices (reads are retried like synthesis; writes are not: a lost answer would repeat them)
    def register_voice(self, voice_id: str, reference_audio: bytes, reference_text: str, reference_language: str,
                       consent: str, aux: list[bytes] = (), display_name: str = "", overwrite: bool = False,
                       model: str = "", reference_free: bool = False) -> pb.Voice:
        """Register a voice (prepared for ``model``, default the server's default model; usable with
        every model of its family)."""
        return self._call(self.stub.RegisterVoice, _register_request(
            voice_id, reference_audio, reference_text, reference_language, consent, aux, display_name, overwrite,
            model, reference_free))

    def blend_voice(self, voice_id: str, sources, consent: str = "", display_name: str = "",
                    overwrite: bool = False, model: str = "", reference_free: bool = False) -> pb.Voice:
        """A new voice blended from 2-4 of your voices: ``sources`` = ``[("A", 0.7), ("B", 0.3)]`` or
        ``["A:0.7", "B:0.3"]`` (weights normalised)."""
        return self._call(self.stub.RegisterVoice, _register_request(
            voice_id, b"", "", "", consent, (), display_name, overwrite, model, reference_free, sources))

    def list_models(self) -> pb.ListModelsResponse:
        return self._call(self.stub.ListModels, pb.ListModelsRequest())

    def get_voice(self, voice_id: str) -> pb.Voice:
        return self._call(self.stub.GetVoice, pb.GetVoiceRequest(voice_id=voice_id), retry=True)

    def list_voices(self, language: str = "") -> list[pb.Voice]:
        out, token = [], ""
        while True:
            resp = self._call(self.stub.ListVoices, pb.ListVoicesRequest(page_token=token, language=language),
                              retry=True)
            out.extend(resp.voices)
            token = resp.next_page_token
            if not token:
                return out

    def delete_voice(self, voice_id: str) -> None:
        self._call(self.stub.DeleteVoice, pb.DeleteVoiceRequest(voice_id=voice_id))

    def server_config(self) -> pb.ServerConfig:
        return self._call(self.stub.GetServerConfig, pb.GetServerConfigRequest(), retry=True)


class AsyncTtsClient:
    """asyncio client (grpc.aio); create it inside a running event loop."""

    def __init__(self, target: str, *, token: str | None = None, tls_root_cert: bytes | None = None,
                 timeout: float | None = 300.0, retry: RetryPolicy | None = DEFAULT_RETRY):
        creds = grpc.ssl_channel_credentials(tls_root_cert) if tls_root_cert is not None else None
        opts = _channel_args(tls_root_cert)
        self.channel = grpc.aio.secure_channel(target, creds, opts) if creds else grpc.aio.insecure_channel(target, opts)
        self.stub = pb_grpc.TextToSpeechStub(self.channel)
        self.metadata, self.timeout, self.retry = _metadata(token), timeout, retry

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def _call(self, fn, request, retry: bool = False):
        t0, attempt = time.monotonic(), 0
        while True:
            try:
                return await fn(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as e:
                err = TtsError.from_rpc(e)
            delay = _retry_delay(self.retry if retry else None, attempt, err, t0, self.timeout)
            if delay is None:
                raise err
            await asyncio.sleep(delay)
            attempt += 1

    async def synthesize(self, text: str, voice: str, **kw) -> pb.SynthesizeResponse:
        return await self._call(self.stub.Synthesize, pb.SynthesizeRequest(config=config(voice, **kw), text=text),
                                retry=True)

    async def stream_chunks(self, text: str, voice: str, result: StreamResult | None = None,
                            **kw) -> AsyncIterator[AudioChunk]:
        request = pb.SynthesizeRequest(config=config(voice, **kw), text=text)
        consumer = _Consumer(result)
        consumer.result.t_start = t0 = time.monotonic()
        attempt = 0
        while True:
            call = self.stub.StreamingSynthesize(request, timeout=self.timeout, metadata=self.metadata)
            consumer.result.attempts = attempt + 1
            try:
                async for msg in call:
                    chunk = consumer.feed(msg)
                    if chunk is not None:
                        yield chunk
                return
            except grpc.RpcError as e:
                err = TtsError.from_rpc(e)
                delay = None if consumer.delivered else _retry_delay(self.retry, attempt, err, t0, self.timeout)
                if delay is None:
                    raise err from None
            finally:
                call.cancel()
                consumer.finish()
            await asyncio.sleep(delay)
            attempt += 1

    async def stream(self, text: str, voice: str, **kw) -> StreamResult:
        result = StreamResult()
        async for _ in self.stream_chunks(text, voice, result=result, **kw):
            pass
        return result

    async def bidi(self, pieces: Iterable[str | tuple[str, bool]], voice: str, *, pause: float = 0.0,
                   **kw) -> StreamResult:
        """Send text pieces (``(text, flush)`` tuples or plain strings; ``pause`` seconds apart) and
        collect the audio; the result's timings start when the first piece is sent.  A retry sends
        the pieces already sent again at once, then goes on."""
        consumer = _Consumer()
        pieces = list(pieces)

        async def requests():
            yield pb.BidiSynthesizeRequest(config=config(voice, **kw))
            for i, p in enumerate(pieces):
                if i and pause and consumer.result.attempts == 1:
                    await asyncio.sleep(pause)
                if i == 0 and consumer.result.attempts == 1:
                    consumer.result.t_start = time.monotonic()
                yield _piece(p)

        t0, attempt = time.monotonic(), 0
        while True:
            consumer.result.attempts = attempt + 1
            try:
                async for msg in self.stub.BidiSynthesize(requests(), timeout=self.timeout, metadata=self.metadata):
                    consumer.feed(msg)
                return consumer.finish()
            except grpc.RpcError as e:
                err = TtsError.from_rpc(e)
            delay = None if consumer.delivered else _retry_delay(self.retry, attempt, err, t0, self.timeout)
            if delay is None:
                raise err
            await asyncio.sleep(delay)
            attempt += 1

    async def register_voice(self, voice_id: str, reference_audio: bytes, reference_text: str,
                             reference_language: str, consent: str, aux: list[bytes] = (), display_name: str = "",
                             overwrite: bool = False, model: str = "", reference_free: bool = False) -> pb.Voice:
        return await self._call(self.stub.RegisterVoice, _register_request(
            voice_id, reference_audio, reference_text, reference_language, consent, aux, display_name, overwrite,
            model, reference_free))

    async def blend_voice(self, voice_id: str, sources, consent: str = "", display_name: str = "",
                          overwrite: bool = False, model: str = "", reference_free: bool = False) -> pb.Voice:
        return await self._call(self.stub.RegisterVoice, _register_request(
            voice_id, b"", "", "", consent, (), display_name, overwrite, model, reference_free, sources))

    async def list_models(self) -> pb.ListModelsResponse:
        return await self._call(self.stub.ListModels, pb.ListModelsRequest())

    async def server_config(self) -> pb.ServerConfig:
        return await self._call(self.stub.GetServerConfig, pb.GetServerConfigRequest())

    async def get_voice(self, voice_id: str) -> pb.Voice:
        return await self._call(self.stub.GetVoice, pb.GetVoiceRequest(voice_id=voice_id), retry=True)

    async def delete_voice(self, voice_id: str) -> None:
        await self._call(self.stub.DeleteVoice, pb.DeleteVoiceRequest(voice_id=voice_id))

    async def list_voices(self, language: str = "") -> list[pb.Voice]:
        out, token = [], ""
        while True:
            resp = await self._call(self.stub.ListVoices, pb.ListVoicesRequest(page_token=token, language=language),
                                    retry=True)
            out.extend(resp.voices)
            token = resp.next_page_token
            if not token:
                return out
