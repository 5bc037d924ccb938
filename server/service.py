"""The gRPC servicer: a thin door over the shared layers.

Each handler authenticates (:mod:`server.admission`), converts the request (:mod:`server.convert`),
admits it, runs it on the engine (:mod:`server.synthesis`) and converts the result back.  Handlers
only raise: :class:`server.interceptor.ErrorMappingInterceptor` turns every exception into the
status the client receives, through the one mapping in :mod:`server.errors`.

Nothing blocking runs on the event loop: the text frontend runs in the frontend pool, anything
that may read voice files or prepare a voice in the voice pool (a voice already in memory is
taken directly).
"""
from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from gsv import constants as C
from gsv.errors import GsvError
from protos.tts.v1 import tts_pb2 as pb
from protos.tts.v1 import tts_pb2_grpc as pb_grpc
from server import convert
from server.errors import Code, RequestError, failure_of, set_request_id
from server.synthesis import BidiText, SynthesisCall

log = logging.getLogger(__name__)


def _authorization(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


def _deadline(context) -> float | None:
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None else None


class TtsService(pb_grpc.TextToSpeechServicer):
    def __init__(self, state):
        self.s = state  # server.app.ServerState: engine, registry, admission, text preparer, metrics, config

    # ------------------------------------------------------------------ shared steps
    def _owner(self, context) -> str:
        return self.s.auth.owner(_authorization(context))

    async def _in_voice_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.s.voice_pool, fn, *args)

    async def _voice(self, voice_id: str, owner: str):
        voice = self.s.registry.cached(voice_id, owner)
        return voice if voice is not None else await self._in_voice_pool(self.s.registry.get, voice_id, owner)

    async def _segments(self, text: str, language: str, split: str) -> tuple[list, float]:
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        segments = await loop.run_in_executor(self.s.frontend_pool, self.s.text.segments, text, language, split)
        seconds = time.monotonic() - t0
        self.s.metrics.frontend.observe(seconds)
        return segments, seconds

    def _request(self, config: pb.SynthesisConfig, streaming: bool) -> convert.SynthesisRequest:
        r = convert.synthesis_from_pb(config, self.s.config.max_audio_seconds, streaming)
        set_request_id(r.request_id)
        return r

    async def _stream(self, call: SynthesisCall, r: convert.SynthesisRequest, voice, frontend_s):
        """StreamStart, AudioData..., SynthesisSummary of one call (``frontend_s()`` read at the end)."""
        yield convert.stream_start_pb(r, voice, self.s.model_id)
        model_samples, sent, sequence = 0, 0, 0  # model-rate samples (summary); output-rate positions
        async for x, n in call.audio():
            yield pb.SynthesizeStreamResponse(audio=pb.AudioData(
                data=call.converter.encode(x), sequence=sequence, start_sample=sent, num_samples=x.size))
            sequence, sent, model_samples = sequence + 1, sent + x.size, model_samples + n
        call.observe_done(model_samples)
        yield pb.SynthesizeStreamResponse(summary=convert.summary_pb(call.session, call.t0, frontend_s(),
                                                                     model_samples / C.SAMPLE_RATE))

    # ------------------------------------------------------------------ synthesis
    async def Synthesize(self, request, context):
        t0 = time.monotonic()
        owner = self._owner(context)
        convert.check_text(request.text, self.s.config.max_text_chars)
        r = self._request(request.config, streaming=False)
        with self.s.admission.admit():
            voice = await self._voice(r.voice_id, owner)
            segments, frontend_s = await self._segments(request.text, r.language or voice.language, r.split)
            call = SynthesisCall(self.s, r, voice, segments, method="Synthesize", t0=t0, deadline=_deadline(context))
            try:
                parts, samples = [], 0
                async for x, n in call.audio():
                    parts.append(x)
                    samples += n
            finally:
                call.cancel()
        audio = call.converter.encode(np.concatenate(parts) if parts else np.zeros(0, np.float32))
        if r.encoding == "wav":
            audio = call.converter.wav(audio)
        call.observe_done(samples)
        return pb.SynthesizeResponse(request_id=r.request_id, audio=audio, format=r.format_pb(), seed=r.seed,
                                     summary=convert.summary_pb(call.session, t0, frontend_s, samples / C.SAMPLE_RATE))

    async def StreamingSynthesize(self, request, context):
        t0 = time.monotonic()
        owner = self._owner(context)
        convert.check_text(request.text, self.s.config.max_text_chars)
        r = self._request(request.config, streaming=True)
        with self.s.admission.admit():
            voice = await self._voice(r.voice_id, owner)
            segments, frontend_s = await self._segments(request.text, r.language or voice.language, r.split)
            call = SynthesisCall(self.s, r, voice, segments, method="StreamingSynthesize", t0=t0,
                                 deadline=_deadline(context))
            try:
                async for msg in self._stream(call, r, voice, lambda: frontend_s):
                    yield msg
            finally:
                call.cancel()

    async def BidiSynthesize(self, request_iterator, context):
        """Config first, then text pieces.  Waiting for text holds no admission slot: the request is
        admitted when its first speakable text arrives, and an idle stream is closed after
        ``--bidi-idle-timeout`` seconds."""
        t0 = time.monotonic()
        owner = self._owner(context)
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "config":
            raise RequestError(Code.INVALID_ARGUMENT, "the first message must carry the config")
        r = self._request(first.config, streaming=True)
        self.s.admission.check_open()
        voice = await self._voice(r.voice_id, owner)
        language = r.language or voice.language
        call = SynthesisCall(self.s, r, voice, [], method="BidiSynthesize", t0=t0, deadline=_deadline(context),
                             input_open=True)
        tickets, frontend_s, failures = [], [0.0], []

        async def next_input():
            msg = await anext(requests, None)
            if msg is None:
                return None
            if msg.WhichOneof("request") != "input":
                raise RequestError(Code.INVALID_ARGUMENT, "config may only be sent once, first")
            return msg.input.text, msg.input.flush

        async def speak(text: str) -> bool:
            try:
                segments, seconds = await self._segments(text, language, r.split)
            except GsvError as e:  # an unspeakable piece is skipped; the stream goes on
                log.info("request %s: skipping a text piece that cannot be spoken (%s)", r.request_id, e)
                return False
            frontend_s[0] += seconds
            if not tickets:
                tickets.append(self.s.admission.admit())  # the first speakable text admits the request
            call.append(segments)
            return True

        async def finish(spoken: bool) -> None:
            if not spoken:
                raise RequestError(Code.INVALID_ARGUMENT, "no speakable text was sent before the input ended")
            call.append([], close=True)

        async def read_input():
            try:
                await BidiText(call, next_input, speak, finish, max_chars=self.s.config.max_text_chars,
                               max_delay=self.s.config.bidi_max_buffer_seconds,
                               idle_timeout=self.s.config.bidi_idle_timeout).run()
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - reported by the output side
                failures.append(e)
                call.cancel()

        reader = asyncio.ensure_future(read_input())
        try:
            try:
                async for msg in self._stream(call, r, voice, lambda: frontend_s[0]):
                    if failures:
                        break
                    yield msg
            except RequestError:
                if not failures:
                    raise
            if failures:  # the input side failed (and cancelled the request): report that
                raise failures[0]
        finally:
            reader.cancel()
            call.cancel()
            for t in tickets:
                t.release()

    # ------------------------------------------------------------------ voices
    async def RegisterVoice(self, request, context):
        owner = self._owner(context)
        self.s.admission.check_open()
        convert.voice_id_of(request.voice_id)
        convert.check_length("display_name", request.display_name, convert.MAX_DISPLAY_NAME_CHARS)
        convert.check_length("reference_text", request.reference_text, convert.MAX_REFERENCE_TEXT_CHARS)
        convert.check_length("reference_language", request.reference_language, convert.MAX_LANGUAGE_CHARS)
        convert.check_length("consent_statement", request.consent_statement, convert.MAX_CONSENT_CHARS)
        total = len(request.reference_audio) + sum(len(a) for a in request.aux_reference_audio)
        if total > self.s.config.max_reference_bytes:
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"reference audio is {total} bytes; the limit is {self.s.config.max_reference_bytes}")
        try:
            meta = await self._in_voice_pool(
                self.s.registry.register, request.voice_id, request.reference_audio, request.reference_text,
                request.reference_language, list(request.aux_reference_audio), owner, request.consent_statement,
                request.display_name, request.overwrite)
        except Exception as e:
            self.s.metrics.voice_registrations.labels(failure_of(e).code.name).inc()
            raise
        self.s.metrics.voice_registrations.labels("OK").inc()
        return convert.voice_pb(meta)

    async def GetVoice(self, request, context):
        owner = self._owner(context)
        convert.voice_id_of(request.voice_id)
        return convert.voice_pb(await self._in_voice_pool(self.s.registry.describe, request.voice_id, owner))

    async def ListVoices(self, request, context):
        owner = self._owner(context)
        convert.check_length("language", request.language, convert.MAX_LANGUAGE_CHARS)
        start, size = convert.page_bounds(request.page_size, request.page_token)
        metas = await self._in_voice_pool(self.s.registry.list, owner, request.language)
        return convert.voice_page_pb(metas, start, size)

    async def DeleteVoice(self, request, context):
        owner = self._owner(context)
        convert.voice_id_of(request.voice_id)
        await self._in_voice_pool(self.s.registry.delete, request.voice_id, owner)
        return pb.DeleteVoiceResponse()

    async def GetServerConfig(self, request, context):
        self._owner(context)
        return convert.server_config_pb(self.s)
