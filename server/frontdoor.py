"""What every door (gRPC, HTTP ``/tts``, OpenAI, WebSocket) does with a synthesis request.

A door only parses its protocol into a :class:`server.convert.SynthesisRequest` and encodes the
events it gets back; everything between is here, written once: authentication, admission (the
ticket is held for the whole request, whatever the model: admission counts all models together),
the model (a :class:`server.models.Lease` held for the whole request; a model that is not resident
starts loading at once, while the voice and the text frontend are prepared, and the request waits
for it on the event loop, its deadline still running), voice lookup (the voice as carried to that
model), the text frontend (in its thread pool), the engine Session
(:class:`server.synthesis.SynthesisCall`), the bidirectional text buffer,
cancellation (leaving the event generator cancels the Session, so a client that goes away frees its
GPT row at the next engine iteration), and the request metrics.

A request yields door-neutral events: one :class:`Started`, :class:`Audio` chunks, one
:class:`Summary`; a request that does not complete raises (a :class:`server.errors.RequestError`
or an exception that :func:`server.errors.failure_of` maps).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import numpy as np

from gsv import constants as C
from gsv.errors import GsvError
from server.convert import SynthesisRequest
from server.errors import Code, RequestError, set_model, set_request_id
from server.synthesis import BidiText, SynthesisCall

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    request_id: str
    seed: int
    voice_id: str
    voice_version: int
    model_id: str
    sample_rate: int  # of every Audio event


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 mono at Started.sample_rate
    sequence: int  # 0, 1, 2, ... without gaps
    start_sample: int  # offset of samples[0] in the whole stream (output rate)


@dataclass(frozen=True)
class Summary:
    finish_reason: str  # "completed" | "max_audio"
    audio_seconds: float
    semantic_tokens: int
    queue_ms: float  # admission -> first GPT prefill
    frontend_ms: float  # text normalisation, G2P, BERT
    first_audio_ms: float  # request received -> first audio produced
    total_ms: float
    real_time_factor: float  # compute seconds / audio seconds (lower is faster)
    chunks: int

    @classmethod
    def of(cls, call: SynthesisCall, frontend_s: float, audio_seconds: float) -> "Summary":
        s, now = call.session, time.monotonic()
        total = now - call.t0
        return cls(finish_reason="max_audio" if s.finish_reason == "max_audio" else "completed",
                   audio_seconds=audio_seconds, semantic_tokens=s.total_tokens,
                   queue_ms=1000 * ((s.t_started or now) - (s.t_admitted or now)), frontend_ms=1000 * frontend_s,
                   first_audio_ms=1000 * ((s.t_first_audio or now) - call.t0), total_ms=1000 * total,
                   real_time_factor=total / audio_seconds if audio_seconds > 0 else 0.0, chunks=s.sequence)


Event = Started | Audio | Summary
VoiceSource = Callable[[object], Awaitable[object]]  # (server.models.Model) -> the request's gsv.voice.Voice


class FrontDoor:
    """The shared request path over one :class:`server.app.ServerState`."""

    def __init__(self, state):
        self.s = state

    # ------------------------------------------------------------------ steps
    def owner(self, authorization: str | None) -> str:
        """The caller's owner name from an ``Authorization`` value (UNAUTHENTICATED if wrong)."""
        return self.s.auth.owner(authorization)

    async def in_voice_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.s.voice_pool, fn, *args)

    def model(self, model_id: str):
        """A lease on the request's model ("" = the default): NOT_FOUND for an unknown one,
        FAILED_PRECONDITION for one that cannot be served; loading starts now if it is not resident."""
        lease = self.s.models.lease(model_id)
        set_model(lease.model.model_id)
        return lease

    async def voice(self, voice_id: str, owner: str, model=None):
        """A registered voice ready for ``model`` (default: the default model): from memory when
        cached, else read/derived in the voice pool."""
        voice = self.s.registry.cached(voice_id, owner, model)
        return voice if voice is not None else await self.in_voice_pool(self.s.registry.get, voice_id, owner, model)

    async def segments(self, text: str, language: str, split: str, model=None) -> tuple[list, float]:
        model = model or self.s.models.default
        t0 = time.monotonic()
        segments = await asyncio.get_running_loop().run_in_executor(
            self.s.frontend_pool, lambda: model.text.segments(text, language, split))
        seconds = time.monotonic() - t0
        self.s.metrics.frontend.observe(seconds)
        return segments, seconds

    def named(self, r: SynthesisRequest) -> SynthesisRequest:
        """Name the current call after the request, so its logs and fault messages carry the id."""
        set_request_id(r.request_id)
        return r

    # ------------------------------------------------------------------ requests
    async def synthesize(self, r: SynthesisRequest, text: str, owner: str, *, method: str, t0: float,
                         deadline: float | None, voice: VoiceSource | None = None) -> AsyncIterator[Event]:
        """A request whose text is known up front: admitted now, run, and released at the end."""
        with self.s.admission.admit():
            async with self.model(r.model_id) as lease:
                model = lease.model
                v = await (voice(model) if voice is not None else self.voice(r.voice_id, owner, model))
                segments, frontend_s = await self.segments(text, r.language or v.language, r.split, model)
                engine = await lease.engine(deadline)
                call = SynthesisCall(self.s, engine, r, v, segments, method=method, t0=t0, deadline=deadline)
                try:
                    async for ev in self._events(call, r, v, model, lambda: frontend_s):
                        yield ev
                finally:
                    call.cancel()

    async def bidi(self, r: SynthesisRequest, owner: str, next_input: Callable[[], Awaitable], *, method: str,
                   t0: float, deadline: float | None) -> AsyncIterator[Event]:
        """Text arriving in pieces: ``next_input()`` returns ``(text, flush)``, or None at the end of
        input, and raises RequestError for a protocol violation.  Waiting for text holds no
        admission slot: the request is admitted when its first speakable text arrives, and an idle
        stream is closed after ``bidi_idle_timeout`` seconds."""
        self.s.admission.check_open()
        async with self.model(r.model_id) as lease, contextlib.aclosing(
                self._bidi(lease, r, owner, next_input, method=method, t0=t0, deadline=deadline)) as events:
            async for ev in events:
                yield ev

    async def _bidi(self, lease, r: SynthesisRequest, owner: str, next_input, *, method: str, t0: float,
                    deadline: float | None) -> AsyncIterator[Event]:
        model = lease.model
        voice = await self.voice(r.voice_id, owner, model)
        language = r.language or voice.language
        engine = await lease.engine(deadline)
        call = SynthesisCall(self.s, engine, r, voice, [], method=method, t0=t0, deadline=deadline, input_open=True)
        tickets, frontend_s, failures = [], [0.0], []

        async def speak(text: str) -> bool:
            try:
                segments, seconds = await self.segments(text, language, r.split, model)
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
            cfg = self.s.config
            try:
                await BidiText(call, next_input, speak, finish, max_chars=cfg.max_text_chars,
                               max_delay=cfg.bidi_max_buffer_seconds, idle_timeout=cfg.bidi_idle_timeout).run()
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - reported by the output side
                failures.append(e)
                call.cancel()

        reader = asyncio.ensure_future(read_input())
        try:
            try:
                async for ev in self._events(call, r, voice, model, lambda: frontend_s[0]):
                    if failures:
                        break
                    yield ev
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

    async def _events(self, call: SynthesisCall, r: SynthesisRequest, voice, model,
                      frontend_s) -> AsyncIterator[Event]:
        """Started, Audio..., Summary of one call (``frontend_s()`` is read at the end)."""
        yield Started(r.request_id, r.seed, voice.voice_id, int(getattr(voice, "version", 1)), model.model_id,
                      call.converter.rate)
        model_samples, sent, sequence = 0, 0, 0  # model-rate samples (summary); output-rate positions
        async for x, n in call.audio():
            yield Audio(x, sequence, sent)
            sequence, sent, model_samples = sequence + 1, sent + x.size, model_samples + n
        call.observe_done(model_samples)
        yield Summary.of(call, frontend_s(), model_samples / C.SAMPLE_RATE)
