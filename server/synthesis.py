"""The engine-facing layer every door shares: one request as a Session whose audio arrives on the
event loop, plus the bidirectional text buffer.

Threads: the engine's decoder thread calls the session's sink and the engine's threads call its
finish hook; both only *post* to the event loop (``call_soon_threadsafe``).  Everything else here
— the chunk queue, the count of audio waiting to be sent, the slow-reader decision — is owned by the
event loop, so none of it needs a lock.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import AsyncIterator, Awaitable, Callable

import numpy as np

from gsv import constants as C
from gsv.session import Session
from server.convert import SynthesisRequest
from server.errors import Code, RequestError

log = logging.getLogger(__name__)

# Where buffered bidirectional text is cut: sentence ends, and clause marks once 40+ characters follow.
SENTENCE_END = re.compile(r"[。！？!?…\n]|[.;](?=\s)|[，,、；：:](?=\s*\S{40,})")


class SynthesisCall:
    """A submitted Session and the audio it produces, as an async iterator on the event loop."""

    def __init__(self, state, engine, r: SynthesisRequest, voice, segments: list, *, method: str, t0: float,
                 deadline: float | None, input_open: bool = False):
        self.engine, self.metrics = engine, state.metrics  # the engine of the request's model
        self.method, self.t0 = method, t0
        self.request = r
        self.converter = r.converter()
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._buffered = 0  # model samples delivered to the loop and not yet sent (event loop only)
        self._limit = int(state.config.max_buffered_audio_seconds * C.SAMPLE_RATE)
        self.slow = False
        self.last_output = time.monotonic()  # when audio last arrived (idle detection)
        self.session = Session(r.request_id, voice, list(segments), r.options, sink=self._sink, deadline=deadline,
                               input_open=input_open, on_finish=self._finished)
        self.engine.submit(self.session)

    # ---- engine threads: post only
    def _sink(self, chunk) -> None:
        self._post(self._arrive, chunk)

    def _finished(self, _session) -> None:
        self._post(self._queue.put_nowait, None)

    def _post(self, fn, arg) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # the loop is closed: the server is gone and nobody is listening
            pass

    # ---- event loop
    def _arrive(self, chunk) -> None:
        self._buffered += chunk.samples.size
        self.last_output = time.monotonic()
        if self._buffered > self._limit and not self.slow:
            self.slow = True  # the client stopped reading: free the row instead of buffering forever
            self.engine.cancel(self.session)
        self._queue.put_nowait(chunk)

    def append(self, segments: list, close: bool = False) -> None:
        self.engine.append_segments(self.session, segments, close=close)

    def cancel(self) -> None:
        if not self.session.done.is_set():
            self.engine.cancel(self.session)

    @property
    def idle(self) -> bool:
        """Nothing generating and no audio waiting to be sent (a bidi stream waiting for text)."""
        return self.session.parked and self._queue.empty()

    async def audio(self) -> AsyncIterator[tuple[np.ndarray, int]]:
        """(samples at the output rate, model-rate samples) per chunk until the session ends; then
        raises RequestError if it did not complete."""
        first = True
        while True:
            chunk = await self._queue.get()
            if chunk is None:
                break
            self._buffered -= chunk.samples.size
            x = self.converter.samples(chunk.samples, last=chunk.final)
            if x.size == 0:
                continue
            if first:
                self.metrics.ttfa.labels(self.method).observe(time.monotonic() - self.t0)
                first = False
            yield x, chunk.samples.size
        self._raise_unless_completed()

    def _raise_unless_completed(self) -> None:
        reason = self.session.finish_reason
        if self.slow:
            raise RequestError(Code.RESOURCE_EXHAUSTED, "client is not reading the audio stream")
        if reason == "deadline":
            raise RequestError(Code.DEADLINE_EXCEEDED, "deadline exceeded")
        if reason == "error":
            raise RequestError(Code.INTERNAL, f"synthesis failed (request id {self.request.request_id})")
        if reason == "cancelled":
            raise RequestError(Code.CANCELLED, "request cancelled")

    def observe_done(self, samples: int) -> None:
        elapsed = time.monotonic() - self.t0
        self.metrics.duration.labels(self.method).observe(elapsed)
        if samples:
            self.metrics.rtf.observe(elapsed / (samples / C.SAMPLE_RATE))
        s = self.session
        if s.t_started and s.t_admitted:
            self.metrics.queue_wait.observe(s.t_started - s.t_admitted)


class BidiText:
    """Text pieces of a bidirectional request -> pieces to synthesize: complete sentences, on flush,
    after ``max_delay`` seconds without a sentence end, and at the end of input.

    ``next_input()`` returns ``(text, flush)`` or None at the end of input and raises RequestError
    for a protocol violation; ``speak(text)`` prepares and appends a piece (returns False when it
    was unspeakable); ``finish()`` ends the input.  A stream with no input and no output for
    ``idle_timeout`` seconds is ended (DEADLINE_EXCEEDED) so it cannot hold a connection forever.
    """

    def __init__(self, call: SynthesisCall, next_input: Callable[[], Awaitable], speak: Callable[[str], Awaitable],
                 finish: Callable[[bool], Awaitable], *, max_chars: int, max_delay: float, idle_timeout: float):
        self.call, self.next_input, self.speak, self.finish = call, next_input, speak, finish
        self.max_chars, self.max_delay, self.idle_timeout = max_chars, max_delay, idle_timeout

    async def run(self) -> None:
        buf, received, spoken = "", 0, False
        last_input = time.monotonic()
        pending = asyncio.ensure_future(self.next_input())
        try:
            while True:
                if buf.strip():
                    timeout = self.max_delay
                else:
                    left = self._idle_left(last_input)
                    timeout = min(self.idle_timeout, 1.0) if left is None else max(left, 0.0)
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:
                    if buf.strip():
                        piece, buf = buf, ""
                        spoken = await self.speak(piece) or spoken
                    elif (left := self._idle_left(last_input)) is not None and left <= 0:
                        raise RequestError(Code.DEADLINE_EXCEEDED,
                                           f"no text for {self.idle_timeout:g} s: closing the idle stream")
                    continue
                item = pending.result()
                if item is None:  # end of input
                    if buf.strip():
                        spoken = await self.speak(buf) or spoken
                    await self.finish(spoken)
                    return
                pending = asyncio.ensure_future(self.next_input())
                last_input = time.monotonic()
                text, flush = item
                received += len(text)
                if received > self.max_chars:
                    raise RequestError(Code.INVALID_ARGUMENT,
                                       f"more than {self.max_chars} characters of text in one request")
                buf += text
                cut = len(buf) if flush else 0
                for m in SENTENCE_END.finditer(buf) if not flush else ():
                    cut = m.end()
                if cut:
                    piece, buf = buf[:cut], buf[cut:]
                    if piece.strip():
                        spoken = await self.speak(piece) or spoken
        finally:
            pending.cancel()

    def _idle_left(self, last_input: float) -> float | None:
        """Seconds until the stream counts as idle; None while it is still speaking (the input may
        legitimately pause then)."""
        if not self.call.idle:
            return None
        return self.idle_timeout - (time.monotonic() - max(last_input, self.call.last_output))
