"""The gRPC servicer: validate -> text frontend (thread pool) -> engine -> stream audio.

Handlers are thin: they convert protobuf messages to core dataclasses, admit or refuse, hand the
request to the shared :class:`~gsv.engine.Engine` as a :class:`~gsv.session.Session` and turn the
session's audio chunks into messages.  All request state lives in the session and in the handler's
local variables.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid
from dataclasses import dataclass

import grpc
import numpy as np

from gsv import __version__
from gsv import constants as C
from gsv.errors import AudioError, GsvError, OptionError, TextError, VoiceError
from gsv.sampling import SamplingOptions
from gsv.session import Session, SynthesisOptions
from protos.tts.v1 import tts_pb2 as pb
from protos.tts.v1 import tts_pb2_grpc as pb_grpc
from server.audio_format import SAMPLE_RATES, FormatError, OutputConverter
from server.voices import VoiceExists, VoiceNotFound

log = logging.getLogger(__name__)

LATENCY = {pb.LATENCY_MODE_UNSPECIFIED: "balanced", pb.BALANCED: "balanced", pb.LOWEST_LATENCY: "lowest",
           pb.HIGHEST_QUALITY: "quality"}
SPLITS = {pb.TEXT_SPLIT_UNSPECIFIED: "cut5", pb.CUT0: "cut0", pb.CUT1: "cut1", pb.CUT2: "cut2", pb.CUT3: "cut3",
          pb.CUT4: "cut4", pb.CUT5: "cut5"}
ENCODINGS = {pb.AUDIO_ENCODING_UNSPECIFIED: "pcm_s16le", pb.PCM_S16LE: "pcm_s16le", pb.PCM_F32LE: "pcm_f32le",
             pb.WAV: "wav"}
FINISH = {"completed": pb.COMPLETED, "max_audio": pb.MAX_AUDIO_LENGTH}
SENTENCE_END = re.compile(r"[。！？!?…\n]|[.;](?=\s)|[，,、；：:](?=\s*\S{40,})")


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple = ()):
        super().__init__(message)
        self.code, self.message, self.trailers = code, message, trailers


@dataclass
class Resolved:
    request_id: str
    voice: object
    options: SynthesisOptions
    language: str
    split: str
    converter: OutputConverter
    encoding: int
    seed: int


def _error_code(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, VoiceNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(e, VoiceExists):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(e, (TextError, OptionError, AudioError, VoiceError, FormatError, GsvError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class TtsService(pb_grpc.TextToSpeechServicer):
    def __init__(self, state):
        self.s = state  # server.app.ServerState: engine, registry, text preparer, metrics, config

    # ------------------------------------------------------------------ helpers
    def _owner(self, context) -> str:
        tokens = self.s.config.tokens
        if not tokens:
            return ""
        md = dict(context.invocation_metadata() or ())
        auth = md.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if token not in tokens:
            raise Abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        return tokens[token]

    def _admit(self) -> None:
        cfg = self.s.config
        if self.s.draining:
            self.s.metrics.rejections.labels("draining").inc()
            raise Abort(grpc.StatusCode.UNAVAILABLE, "server is draining")
        if self.s.in_flight >= cfg.max_live + cfg.max_queue:
            self.s.metrics.rejections.labels("queue_full").inc()
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"server busy ({self.s.in_flight} requests in flight); retry after {cfg.retry_after_ms} ms",
                        (("grpc-retry-pushback-ms", str(cfg.retry_after_ms)),))
        self.s.in_flight += 1
        self.s.metrics.in_flight.set(self.s.in_flight)

    def _release(self) -> None:
        self.s.in_flight -= 1
        self.s.metrics.in_flight.set(self.s.in_flight)

    def _resolve(self, config: pb.SynthesisConfig, owner: str, streaming: bool) -> Resolved:
        if not config.voice_id:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "config.voice_id is required")
        for value, table, name in ((config.latency_mode, LATENCY, "latency_mode"), (config.text_split, SPLITS, "text_split"),
                                   (config.output.encoding, ENCODINGS, "output.encoding")):
            if value not in table:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown {name} value {value}")
        encoding = ENCODINGS[config.output.encoding]
        if streaming and encoding == "wav":
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "WAV is only available from Synthesize; stream PCM")
        voice = self.s.registry.get(config.voice_id, owner)
        sp = config.sampling
        try:
            sampling = SamplingOptions(
                top_k=sp.top_k if sp.HasField("top_k") else 15,
                top_p=sp.top_p if sp.HasField("top_p") else 1.0,
                temperature=sp.temperature if sp.HasField("temperature") else 1.0,
                repetition_penalty=sp.repetition_penalty if sp.HasField("repetition_penalty") else 1.35,
                seed=sp.seed if sp.HasField("seed") else None,
            )
            max_audio = config.max_audio_seconds if config.HasField("max_audio_seconds") else self.s.config.max_audio_seconds
            if max_audio > self.s.config.max_audio_seconds:
                raise OptionError(f"max_audio_seconds is limited to {self.s.config.max_audio_seconds:g}")
            options = SynthesisOptions(sampling=sampling, speed=config.speed if config.HasField("speed") else 1.0,
                                       max_audio_seconds=max_audio, streaming=streaming,
                                       latency_mode=LATENCY[config.latency_mode])
            converter = OutputConverter(encoding, config.output.sample_rate_hz)
        except (OptionError, FormatError) as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        seed = sampling.resolved_seed()
        options = dataclasses.replace(options, sampling=dataclasses.replace(sampling, seed=seed))
        language = config.language or voice.language
        return Resolved(config.request_id or uuid.uuid4().hex, voice, options, language, SPLITS[config.text_split],
                        converter, pb.PCM_F32LE if encoding == "pcm_f32le" else (pb.WAV if encoding == "wav" else pb.PCM_S16LE),
                        seed)

    def _check_text(self, text: str) -> None:
        if not text or not text.strip():
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "text is empty")
        if len(text) > self.s.config.max_text_chars:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"text has {len(text)} characters; the limit is {self.s.config.max_text_chars}")

    async def _segments(self, text: str, language: str, split: str):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.s.frontend_pool, self.s.text.segments, text, language, split)
        except GsvError as e:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    def _format(self, r: Resolved) -> pb.AudioFormat:
        return pb.AudioFormat(encoding=r.encoding, sample_rate_hz=r.converter.rate)

    def _summary(self, session: Session, t0: float, frontend_s: float, audio_seconds: float) -> pb.SynthesisSummary:
        now = time.monotonic()
        timings = pb.Timings(
            queue_ms=1000 * ((session.t_started or now) - (session.t_admitted or now)),
            frontend_ms=1000 * frontend_s,
            first_audio_ms=1000 * ((session.t_first_audio or now) - t0),
            total_ms=1000 * (now - t0),
        )
        rtf = (now - t0) / audio_seconds if audio_seconds > 0 else 0.0
        return pb.SynthesisSummary(finish_reason=FINISH.get(session.finish_reason, pb.COMPLETED),
                                   audio_seconds=audio_seconds, semantic_tokens=session.total_tokens, timings=timings,
                                   real_time_factor=rtf, chunks=session.sequence)

    async def _guard(self, method: str, context, body):
        """Run an RPC body, mapping errors to status codes and recording the outcome."""
        code = grpc.StatusCode.OK
        try:
            return await body()
        except Abort as e:
            code = e.code
            if e.trailers:
                context.set_trailing_metadata(e.trailers)
            await context.abort(e.code, e.message)
        except (VoiceNotFound, VoiceExists, GsvError) as e:
            code = _error_code(e)
            await context.abort(code, str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as e:  # noqa: BLE001
            if isinstance(e, grpc.aio.AbortError) or type(e).__name__ == "AbortError":
                raise
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            await context.abort(code, f"internal error: {type(e).__name__}")
        finally:
            self.s.metrics.requests.labels(method, code.name).inc()

    # ------------------------------------------------------------------ synthesis
    def _open_session(self, r: Resolved, segments, context, input_open: bool = False):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        buffered = [0]
        limit = int(self.s.config.max_buffered_audio_seconds * C.SAMPLE_RATE)
        slow = [False]

        def sink(chunk):  # engine decoder thread
            buffered[0] += chunk.samples.size
            if buffered[0] > limit and not slow[0]:
                slow[0] = True
                self.s.engine.cancel(session)
            loop.call_soon_threadsafe(q.put_nowait, chunk)

        def on_finish(_s):
            loop.call_soon_threadsafe(q.put_nowait, None)

        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        session = Session(r.request_id, r.voice, segments, r.options, sink=sink, deadline=deadline,
                          input_open=input_open, on_finish=on_finish)
        session.seed = r.seed
        return session, q, buffered, slow

    async def _drain_chunks(self, r: Resolved, session: Session, q, buffered, slow, t0: float, method: str):
        """Async iterator of (pb.AudioData, chunk) until the session ends; raises Abort on failure."""
        first = True
        while True:
            chunk = await q.get()
            if chunk is None:
                break
            buffered[0] -= chunk.samples.size
            x = r.converter.samples(chunk.samples, last=chunk.final)
            if x.size == 0:
                continue
            if first:
                self.s.metrics.ttfa.labels(method).observe(time.monotonic() - t0)
                first = False
            yield x, chunk
        reason = session.finish_reason
        if slow[0]:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "client is not reading the audio stream")
        if reason == "deadline":
            raise Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        if reason == "error":
            raise Abort(grpc.StatusCode.INTERNAL, f"synthesis failed: {type(session.error).__name__}")
        if reason == "cancelled":
            raise Abort(grpc.StatusCode.CANCELLED, "request cancelled")

    async def Synthesize(self, request, context):
        async def body():
            t0 = time.monotonic()
            owner = self._owner(context)
            self._check_text(request.text)
            r = self._resolve(request.config, owner, streaming=False)
            self._admit()
            session = None
            try:
                tf = time.monotonic()
                segments = await self._segments(request.text, r.language, r.split)
                frontend_s = time.monotonic() - tf
                self.s.metrics.frontend.observe(frontend_s)
                session, q, buffered, slow = self._open_session(r, segments, context)
                self.s.engine.submit(session)
                parts, total = [], 0
                async for x, chunk in self._drain_chunks(r, session, q, buffered, slow, t0, "Synthesize"):
                    parts.append(x)
                    total += chunk.samples.size
                audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
                data = r.converter.encode(audio)
                if r.encoding == pb.WAV:
                    data = r.converter.wav(data)
                summary = self._summary(session, t0, frontend_s, total / C.SAMPLE_RATE)
                self._observe_done("Synthesize", session, t0, total)
                return pb.SynthesizeResponse(request_id=r.request_id, audio=data, format=self._format(r), seed=r.seed,
                                             summary=summary)
            finally:
                if session is not None and not session.done.is_set():
                    self.s.engine.cancel(session)
                self._release()

        return await self._guard("Synthesize", context, body)

    def _observe_done(self, method: str, session: Session, t0: float, samples: int) -> None:
        elapsed = time.monotonic() - t0
        self.s.metrics.duration.labels(method).observe(elapsed)
        if samples:
            self.s.metrics.rtf.observe(elapsed / (samples / C.SAMPLE_RATE))
        if session.t_started and session.t_admitted:
            self.s.metrics.queue_wait.observe(session.t_started - session.t_admitted)

    async def _stream_body(self, method: str, r: Resolved, session_factory, context, t0: float, frontend_s_ref):
        """Shared streaming loop of StreamingSynthesize and BidiSynthesize (an async generator)."""
        session, q, buffered, slow = session_factory()
        yield pb.SynthesizeStreamResponse(start=pb.StreamStart(
            request_id=r.request_id, format=self._format(r), seed=r.seed, voice_id=r.voice.voice_id,
            voice_version=int(getattr(r.voice, "version", 1)), model_id=self.s.model_id))
        total = 0  # model-rate samples (for the summary)
        sent, sequence = 0, 0  # output-rate samples and messages (positions the client sees)
        try:
            async for x, chunk in self._drain_chunks(r, session, q, buffered, slow, t0, method):
                yield pb.SynthesizeStreamResponse(audio=pb.AudioData(
                    data=r.converter.encode(x), sequence=sequence, start_sample=sent, num_samples=x.size))
                sequence += 1
                sent += x.size
                total += chunk.samples.size
            self._observe_done(method, session, t0, total)
            yield pb.SynthesizeStreamResponse(summary=self._summary(session, t0, frontend_s_ref[0], total / C.SAMPLE_RATE))
        finally:
            if not session.done.is_set():
                self.s.engine.cancel(session)

    async def _guard_stream(self, method: str, context, stream):
        """Relay a response stream, mapping errors to status codes and recording the outcome."""
        code = grpc.StatusCode.OK
        try:
            async for msg in stream:
                yield msg
        except Abort as e:
            code = e.code
            if e.trailers:
                context.set_trailing_metadata(e.trailers)
            await context.abort(e.code, e.message)
        except GsvError as e:
            code = _error_code(e)
            await context.abort(code, str(e))
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            self.s.metrics.requests.labels(method, code.name).inc()

    async def StreamingSynthesize(self, request, context):
        async for msg in self._guard_stream("StreamingSynthesize", context, self._streaming(request, context)):
            yield msg

    async def _streaming(self, request, context):
        t0 = time.monotonic()
        owner = self._owner(context)
        self._check_text(request.text)
        r = self._resolve(request.config, owner, streaming=True)
        self._admit()
        try:
            tf = time.monotonic()
            segments = await self._segments(request.text, r.language, r.split)
            frontend_s = [time.monotonic() - tf]
            self.s.metrics.frontend.observe(frontend_s[0])

            def factory():
                opened = self._open_session(r, segments, context)
                self.s.engine.submit(opened[0])
                return opened

            async for msg in self._stream_body("StreamingSynthesize", r, factory, context, t0, frontend_s):
                yield msg
        finally:
            self._release()

    async def BidiSynthesize(self, request_iterator, context):
        async for msg in self._guard_stream("BidiSynthesize", context, self._bidi(request_iterator, context)):
            yield msg

    async def _bidi(self, request_iterator, context):
        t0 = time.monotonic()
        owner = self._owner(context)
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the config") from None
        if first.WhichOneof("request") != "config":
            raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the config")
        r = self._resolve(first.config, owner, streaming=True)
        self._admit()
        reader = None
        try:
            frontend_s = [0.0]
            errors: list[Abort] = []
            holder = {}

            def factory():
                opened = self._open_session(r, [], context, input_open=True)
                holder["session"] = opened[0]
                self.s.engine.submit(opened[0])
                return opened

            body = self._stream_body("BidiSynthesize", r, factory, context, t0, frontend_s)
            yield await body.__anext__()  # StreamStart; the session now exists
            reader = asyncio.ensure_future(self._bidi_reader(it, r, holder["session"], frontend_s, errors))
            try:
                async for msg in body:
                    if errors:
                        raise errors[0]
                    yield msg
            except Abort:
                if errors:  # the input side failed first (and cancelled the request): report that
                    raise errors[0] from None
                raise
            if errors:
                raise errors[0]
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
            self._release()

    async def _bidi_reader(self, it, r: Resolved, session: Session, frontend_s, errors: list) -> None:
        """Consume text pieces: synthesize complete sentences, on flush, after a pause, and at half-close."""
        buf, received, spoken = "", 0, 0
        max_wait = self.s.config.bidi_max_buffer_seconds

        async def submit(text: str, close: bool = False):
            nonlocal spoken
            segs = []
            if text.strip():
                tf = time.monotonic()
                try:
                    segs = await self._segments(text, r.language, r.split)
                    spoken += 1
                except Abort as e:
                    log.info("request %s: skipping unspeakable text piece (%s)", r.request_id, e.message)
                frontend_s[0] += time.monotonic() - tf
            if close and spoken == 0:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "no speakable text was sent before the input ended")
            self.s.engine.append_segments(session, segs, close=close)

        try:
            while True:
                try:
                    msg = await asyncio.wait_for(it.__anext__(), timeout=max_wait if buf.strip() else None)
                except asyncio.TimeoutError:
                    piece, buf = buf, ""
                    await submit(piece)
                    continue
                except StopAsyncIteration:
                    await submit(buf, close=True)
                    return
                if msg.WhichOneof("request") == "config":
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "config may only be sent once, first")
                received += len(msg.input.text)
                if received > self.s.config.max_text_chars:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"more than {self.s.config.max_text_chars} characters of text in one request")
                buf += msg.input.text
                if msg.input.flush:
                    piece, buf = buf, ""
                    await submit(piece)
                    continue
                cut = 0
                for m in SENTENCE_END.finditer(buf):
                    cut = m.end()
                if cut:
                    piece, buf = buf[:cut], buf[cut:]
                    await submit(piece)
        except Abort as e:
            errors.append(e)
            self.s.engine.cancel(session)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. the client vanished mid-read
            log.info("request %s: input stream ended with %s", r.request_id, type(e).__name__)
            self.s.engine.cancel(session)

    # ------------------------------------------------------------------ voices
    def _voice_pb(self, meta: dict) -> pb.Voice:
        return pb.Voice(voice_id=meta["voice_id"], display_name=meta.get("display_name", ""),
                        language=meta.get("language", ""), reference_text=meta.get("ref_text", ""),
                        native_sample_rate_hz=C.SAMPLE_RATE, model_id=meta.get("bundle_id", ""),
                        version=int(meta.get("version", 1)), create_time_unix=int(meta.get("created", 0)),
                        reference_free=bool(meta.get("reference_free", False)),
                        consent_statement=meta.get("consent", ""))

    async def RegisterVoice(self, request, context):
        async def body():
            owner = self._owner(context)
            if self.s.draining:
                raise Abort(grpc.StatusCode.UNAVAILABLE, "server is draining")
            total = len(request.reference_audio) + sum(len(a) for a in request.aux_reference_audio)
            if total > self.s.config.max_reference_bytes:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"reference audio is {total} bytes; the limit is {self.s.config.max_reference_bytes}")
            loop = asyncio.get_running_loop()
            try:
                voice = await loop.run_in_executor(
                    self.s.voice_pool, lambda: self.s.registry.register(
                        request.voice_id, request.reference_audio, request.reference_text, request.reference_language,
                        list(request.aux_reference_audio), owner, request.consent_statement, request.display_name,
                        request.overwrite))
            except GsvError as e:
                self.s.metrics.voice_registrations.labels(_error_code(e).name).inc()
                raise
            self.s.metrics.voice_registrations.labels("OK").inc()
            return self._voice_pb(voice.metadata() | {"display_name": request.display_name})

        return await self._guard("RegisterVoice", context, body)

    async def GetVoice(self, request, context):
        async def body():
            voice = self.s.registry.get(request.voice_id, self._owner(context))
            return self._voice_pb(voice.metadata())

        return await self._guard("GetVoice", context, body)

    async def ListVoices(self, request, context):
        async def body():
            metas = self.s.registry.list(self._owner(context), request.language)
            size = request.page_size or 100
            if size < 0 or size > 1000:
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be in [0, 1000]")
            start = 0
            if request.page_token:
                try:
                    start = int(request.page_token)
                except ValueError:
                    raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token") from None
            page = metas[start : start + size]
            nxt = str(start + size) if start + size < len(metas) else ""
            return pb.ListVoicesResponse(voices=[self._voice_pb(m) for m in page], next_page_token=nxt)

        return await self._guard("ListVoices", context, body)

    async def DeleteVoice(self, request, context):
        async def body():
            self.s.registry.delete(request.voice_id, self._owner(context))
            return pb.DeleteVoiceResponse()

        return await self._guard("DeleteVoice", context, body)

    async def GetServerConfig(self, request, context):
        async def body():
            self._owner(context)
            cfg = self.s.config
            limits = pb.Limits(max_text_chars=cfg.max_text_chars, max_live_requests=cfg.max_live,
                               max_queued_requests=cfg.max_queue, max_audio_seconds=cfg.max_audio_seconds,
                               reference_seconds_min=C.REF_MIN_SECONDS, reference_seconds_max=C.REF_MAX_SECONDS,
                               max_reference_bytes=cfg.max_reference_bytes)
            model = pb.ModelInfo(model_id=self.s.model_id, version=self.s.bundle.model_version,
                                 backend=self.s.backend_name, precision=self.s.precision,
                                 native_sample_rate_hz=C.SAMPLE_RATE)
            return pb.ServerConfig(models=[model], encodings=[pb.PCM_S16LE, pb.PCM_F32LE, pb.WAV],
                                   sample_rates_hz=list(SAMPLE_RATES), languages=list(self.s.text.languages),
                                   text_splits=sorted(set(SPLITS.values())), limits=limits,
                                   default_sampling=pb.SamplingParams(temperature=1.0, top_k=15, top_p=1.0,
                                                                      repetition_penalty=1.35),
                                   server_version=__version__)

        return await self._guard("GetServerConfig", context, body)
