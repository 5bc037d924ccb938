"""The gRPC servicer: a thin door over the shared request path (:mod:`server.frontdoor`).

Each handler converts the request (:mod:`server.convert`), hands it to the front door (auth,
admission, voice, text frontend, engine session; shared with the HTTP and WebSocket doors) and
converts the events it yields back to protobuf.  Handlers
only raise: :class:`server.interceptor.ErrorMappingInterceptor` turns every exception into the
status the client receives, through the one mapping in :mod:`server.errors`.

Nothing blocking runs on the event loop: the text frontend runs in the frontend pool, anything
that may read voice files or prepare a voice in the voice pool (a voice already in memory is
taken directly).
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from protos.tts.v1 import tts_pb2 as pb
from protos.tts.v1 import tts_pb2_grpc as pb_grpc
from server import convert
from server.audio_format import encode_pcm, wav_container
from server.errors import Code, RequestError, failure_of
from server.frontdoor import Audio, FrontDoor, Started

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
        self.door = FrontDoor(state)  # the request path shared with the HTTP and WebSocket doors

    # ------------------------------------------------------------------ shared steps
    def _owner(self, context) -> str:
        return self.door.owner(_authorization(context))

    async def _in_voice_pool(self, fn, *args):
        return await self.door.in_voice_pool(fn, *args)

    def _request(self, config: pb.SynthesisConfig, streaming: bool) -> convert.SynthesisRequest:
        return self.door.named(convert.synthesis_from_pb(config, self.s.config.max_audio_seconds, streaming))

    @staticmethod
    async def _stream(r: convert.SynthesisRequest, events, hold_start: bool = False):
        """The door's events as StreamStart, AudioData..., SynthesisSummary messages.

        ``hold_start``: StreamStart goes out together with the first audio (or the summary), so a
        stream that fails before any audio has sent nothing at all — a proxy in front (nginx) then
        answers UNAVAILABLE, which clients retry, instead of resetting a stream it already began."""
        held = None
        async with contextlib.aclosing(events):
            async for ev in events:
                if isinstance(ev, Started):
                    start = convert.stream_start_pb(r, ev)
                    if hold_start:
                        held = start
                    else:
                        yield start
                    continue
                if held is not None:
                    yield held
                    held = None
                if isinstance(ev, Audio):
                    yield pb.SynthesizeStreamResponse(audio=pb.AudioData(
                        data=encode_pcm(ev.samples, r.encoding), sequence=ev.sequence, start_sample=ev.start_sample,
                        num_samples=ev.samples.size))
                else:
                    yield pb.SynthesizeStreamResponse(summary=convert.summary_pb(ev))

    # ------------------------------------------------------------------ synthesis
    async def Synthesize(self, request, context):
        t0 = time.monotonic()
        owner = self._owner(context)
        convert.check_text(request.text, self.s.config.max_text_chars)
        r = self._request(request.config, streaming=False)
        parts, started, summary = [], None, None
        async with contextlib.aclosing(self.door.synthesize(r, request.text, owner, method="Synthesize", t0=t0,
                                                            deadline=_deadline(context))) as events:
            async for ev in events:
                if isinstance(ev, Audio):
                    parts.append(ev.samples)
                elif isinstance(ev, Started):
                    started = ev
                else:
                    summary = ev
        audio = encode_pcm(np.concatenate(parts) if parts else np.zeros(0, np.float32), r.encoding)
        if r.encoding == "wav":
            audio = wav_container(audio, started.sample_rate)
        return pb.SynthesizeResponse(request_id=r.request_id, audio=audio, format=r.format_pb(), seed=r.seed,
                                     summary=convert.summary_pb(summary))

    async def StreamingSynthesize(self, request, context):
        t0 = time.monotonic()
        owner = self._owner(context)
        convert.check_text(request.text, self.s.config.max_text_chars)
        r = self._request(request.config, streaming=True)
        events = self.door.synthesize(r, request.text, owner, method="StreamingSynthesize", t0=t0,
                                      deadline=_deadline(context))
        async for msg in self._stream(r, events, hold_start=True):
            yield msg

    async def BidiSynthesize(self, request_iterator, context):
        """Config first, then text pieces (see :meth:`server.frontdoor.FrontDoor.bidi`)."""
        t0 = time.monotonic()
        owner = self._owner(context)
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("request") != "config":
            raise RequestError(Code.INVALID_ARGUMENT, "the first message must carry the config")
        r = self._request(first.config, streaming=True)

        async def next_input():
            msg = await anext(requests, None)
            if msg is None:
                return None
            if msg.WhichOneof("request") != "input":
                raise RequestError(Code.INVALID_ARGUMENT, "config may only be sent once, first")
            return msg.input.text, msg.input.flush

        events = self.door.bidi(r, owner, next_input, method="BidiSynthesize", t0=t0, deadline=_deadline(context))
        async for msg in self._stream(r, events):
            yield msg

    # ------------------------------------------------------------------ voices
    async def RegisterVoice(self, request, context):
        owner = self._owner(context)
        self.s.admission.check_open()
        convert.voice_id_of(request.voice_id)
        convert.check_length("display_name", request.display_name, convert.MAX_DISPLAY_NAME_CHARS)
        convert.check_length("reference_text", request.reference_text, convert.MAX_REFERENCE_TEXT_CHARS)
        convert.check_length("reference_language", request.reference_language, convert.MAX_LANGUAGE_CHARS)
        convert.check_length("consent_statement", request.consent_statement, convert.MAX_CONSENT_CHARS)
        model = self.s.models.get(convert.model_id_of(request.model_id))
        total = len(request.reference_audio) + sum(len(a) for a in request.aux_reference_audio)
        if total > self.s.config.max_reference_bytes:
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"reference audio is {total} bytes; the limit is {self.s.config.max_reference_bytes}")
        reg = self.s.registry
        try:
            if request.blend:
                if total or request.reference_text:
                    raise RequestError(Code.INVALID_ARGUMENT, "a blend takes no reference audio or text: it is made "
                                                              "of the voices named in blend")
                sources = [(convert.voice_id_of(b.voice_id, "blend.voice_id"), b.weight) for b in request.blend]
                meta = await self._in_voice_pool(
                    lambda: reg.blend(request.voice_id, sources, owner, request.consent_statement, request.display_name,
                                      request.overwrite, model, request.reference_free))
            else:
                meta = await self._in_voice_pool(
                    lambda: reg.register(request.voice_id, request.reference_audio, request.reference_text,
                                         request.reference_language, list(request.aux_reference_audio), owner,
                                         request.consent_statement, request.display_name, request.overwrite, model,
                                         request.reference_free))
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

    async def ListModels(self, request, context):
        self._owner(context)
        return convert.list_models_pb(self.s)
