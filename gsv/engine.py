"""The synthesis engine: iteration-level batching of the GPT plus a batched, chunked audio decoder.

One :class:`Engine` serves any number of :class:`~gsv.session.Session` objects:

* :meth:`Engine.ar_step` is one scheduler iteration: retire cancelled/expired rows, prefill newly
  admitted requests (one batch), run **one batched decode step over every live row**, sample each
  row with its own options and generator, hand ready windows to the decoder queue, and retire rows
  whose segment ended at once.
* :meth:`Engine.decode_step` is one decoder iteration: it takes the oldest pending job of each
  session (first chunks and chunks nearest their playback deadline first), batches them through
  the audio backend, cross-fades and emits.  It may run on another thread, concurrently with the
  AR loop (the server does so); offline synthesis alternates both on one thread.

Backends are used only through their narrow interface, so nothing here depends on which one runs.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from gsv import constants as C
from gsv.backends.base import AudioBackend, GPTBackend
from gsv.models.sovits.model import latent_frames
from gsv.models.sovits.vocoder import TrimPlan
from gsv.pacing import DecodeCost, break_even_tokens
from gsv.session import DecodeJob, Session

log = logging.getLogger(__name__)

# A prefill of several requests takes them in one batch only up to this many positions (phones +
# prompt tokens summed over rows): a prefill stalls every live row's next step, and its cost grows
# with the positions (full size on 2 cores: ~0.5 ms per position), so bigger batches are split
# over iterations.  A single request is always admitted, however long.
PREFILL_POSITION_BUDGET = 768
# An early (shorter) chunk is cut when a stream's listener would otherwise run out of audio within
# the estimated decode time of the next window plus this margin (seconds).  It covers what the
# estimate leaves out: the GPT step in flight when the cut is decided, a decoder call ahead in the
# queue, encoding and delivery.  Measured (full-size INT8, one and two streams): with 0.15 s windows
# still arrived 7-22 ms after the listener's audio ran out (1 and 9 underruns); 0.25 s: none, at the
# same throughput (benchmarks/results/2026-12-06-xeon-avx512-late/).
DEADLINE_MARGIN_S = 0.25
# Minimum useful fraction (real frames / padded frames) of a batched decoder call.
DECODE_BATCH_FILL = 0.8


class EngineObserver:
    """Hooks where metrics and logs are emitted (no-ops by default)."""

    def on_admitted(self, session: Session, queue_wait: float) -> None: ...
    def on_started(self, session: Session, queue_wait: float) -> None: ...
    def on_prefill(self, rows: int, seconds: float) -> None: ...
    def on_ar_step(self, rows: int, seconds: float) -> None: ...
    def on_tokens(self, n: int) -> None: ...
    def on_decode(self, rows: int, seconds: float, audio_seconds: float) -> None: ...
    def on_chunk(self, session: Session, samples: int, underrun: bool) -> None: ...
    def on_finished(self, session: Session) -> None: ...
    def on_occupancy(self, live_rows: int, waiting: int) -> None: ...


@dataclass
class _Marker:
    """A non-decoding entry of a session's job queue: flush a tail, insert silence, or end."""

    kind: str  # "flush" | "silence" | "end"
    segment: int


class Engine:
    def __init__(self, gpt: GPTBackend, audio: AudioBackend, *, max_live: int = 8, max_decode_batch: int = 4,
                 observer: EngineObserver | None = None, deadline_chunks: bool = False,
                 cv: threading.Condition | None = None, decode_call_budget_s: float | None = None):
        """``deadline_chunks``: cut a shorter chunk when a stream's listener (playing since its first
        audio) would run dry before the planned chunk is decoded.  For live serving; off by default
        because it makes chunk boundaries depend on timing (offline output stays reproducible).
        ``cv``: the condition guarding this engine's queues, shared by engines that one scheduler
        drives (a server with several models), so it can wait for work on any of them.
        ``decode_call_budget_s``: windows join a decoder batch only while its estimated time stays
        within this (the head window always goes): a call cannot be interrupted, so it bounds how long
        a new stream's first chunk can wait behind it (None: no bound)."""
        if gpt.config.vocab_size != audio.config.codebook_size + 1:
            raise ValueError("GPT vocabulary and SoVITS codebook do not match")
        self.gpt, self.audio = gpt, audio
        self.max_live, self.max_decode_batch = max_live, max_decode_batch
        self.decode_call_budget_s = decode_call_budget_s
        self.observer = observer or EngineObserver()
        self.cache = gpt.new_cache()
        self.rows: list[Session] = []  # live GPT rows, in KV-cache row order
        self.waiting: deque[Session] = deque()  # need a prefill (new request or next segment)
        self.cv = cv if cv is not None else threading.Condition()
        self.queues: dict[Session, deque] = {}  # per-session FIFO of DecodeJob/_Marker
        self.noise_channels = audio.config.inter_channels
        self.deadline_chunks = deadline_chunks
        self.decode_cost = DecodeCost()  # fixed + per-token seconds of a decoder call (work tokens, padding included)
        # the vocoder renders only the audio a window's caller keeps, when the backend can (work_tokens)
        self.trim_plan = TrimPlan.of(audio.config) if audio.trims_vocoder else None
        self.step_s = 0.0  # moving average of a GPT step's wall time
        self.decoding_urgent = False  # the decoder is rendering a window a listener waits for (guarded by cv)

    # ------------------------------------------------------------------ admission
    def submit(self, session: Session) -> None:
        with self.cv:
            session.t_admitted = time.monotonic()
            self.observer.on_admitted(session, session.t_admitted - session.t_created)
            self.queues[session] = deque()
            if session.segments:
                self.waiting.append(session)
            else:  # bidirectional request without text yet
                session.parked = True
            self._occupancy()
            self.cv.notify_all()

    def append_segments(self, session: Session, segments: list, close: bool = False) -> None:
        """Add text segments to an open (bidirectional) session; ``close`` ends its input."""
        with self.cv:
            if session.done.is_set() or session not in self.queues:
                return
            session.segments.extend(segments)
            if close:
                session.input_open = False
            if session.parked:  # no GPT row: not started yet, or its last segment is done
                q = self.queues[session]
                if session.sampler is None and session.segments:
                    session.parked = False
                    self.waiting.append(session)
                elif session.sampler is not None and session.more_segments():
                    q.append(_Marker("silence", session.seg_index))  # pause between segments, as usual
                    session.seg_index += 1
                    session.parked = False
                    self.waiting.append(session)
                elif not session.may_get_more():
                    q.append(_Marker("end", session.seg_index))
            self._occupancy()
            self.cv.notify_all()

    @property
    def live(self) -> int:
        return len(self.rows)

    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    def starting(self) -> tuple[bool, bool]:
        """(a row is generating its request's first chunk, a new request waits for its prefill): such
        requests' time to first audio depends on how soon this engine steps and decodes (a scheduler
        of several engines favours them)."""
        with self.cv:
            return (any(s.jobs_scheduled == 0 for s in self.rows),
                    any(s.t_started is None for s in self.waiting))

    def idle(self) -> bool:
        with self.cv:
            return not self.rows and not self.waiting and not any(self.queues.values())

    # ------------------------------------------------------------------ AR loop
    def _occupancy(self) -> None:
        """Report rows in use and requests waiting for one (call with ``cv`` held)."""
        self.observer.on_occupancy(len(self.rows), len(self.waiting))

    def ar_step(self, max_new_rows: int | None = None) -> bool:
        """One scheduler iteration; False when there was nothing to do.  ``max_new_rows`` caps the
        requests given a GPT row in this iteration (a scheduler sharing rows between engines)."""
        self._retire_dead()
        admitted = self._admit(self.max_live if max_new_rows is None else max_new_rows)
        with self.cv:
            self._occupancy()
        if not self.rows:
            return admitted
        t0 = time.perf_counter()
        rows = list(self.rows)
        tokens = torch.tensor([s.sampler.tokens[-1] for s in rows], dtype=torch.long)
        positions = torch.tensor([s.audio_pos - 1 for s in rows], dtype=torch.long)
        self.cache.ensure_step()
        logits, new_k, new_v = self.gpt.decode_step(tokens, positions, self.cache.k, self.cache.v, self.cache.kv_lens())
        self.cache.append(new_k, new_v)
        logits = logits.float().cpu()
        ended = [i for i, s in enumerate(rows) if not self._consume(s, logits[i])]
        step_s = time.perf_counter() - t0
        self.step_s = step_s if not self.step_s else 0.8 * self.step_s + 0.2 * step_s
        self.observer.on_ar_step(len(rows), step_s)
        self.observer.on_tokens(len(rows) - len(ended))
        self._end_rows(ended)
        return True

    def _admit(self, max_new: int) -> bool:
        with self.cv:
            batch = []
            positions = 0
            while self.waiting and len(self.rows) + len(batch) < self.max_live and len(batch) < max_new:
                s = self.waiting[0]
                if s.cancelled or s.expired(time.monotonic()):
                    self.waiting.popleft()
                    self._finish_now(s, "cancelled" if s.cancelled else "deadline")
                    continue
                n = s.prefill_positions()
                if batch and positions + n > PREFILL_POSITION_BUDGET:
                    break  # the rest are admitted next iteration, after one decode step of the live rows
                self.waiting.popleft()
                batch.append(s)
                positions += n
        if not batch:
            return False
        t0 = time.perf_counter()
        cfg = self.gpt.config
        now = time.monotonic()
        for s in batch:
            if s.t_started is None:
                s.t_started = now
                self.observer.on_started(s, now - (s.t_admitted or now))
            s.start_segment(cfg.vocab_size, cfg.eos)
        inputs = [s.gpt_inputs() for s in batch]
        n, tx, ty = len(batch), max(p.numel() for p, _, _ in inputs), max(y.numel() for _, _, y in inputs)
        phones = torch.zeros(n, tx, dtype=torch.long)
        bert = torch.zeros(n, cfg.bert_dim, tx)
        prompt = torch.zeros(n, ty, dtype=torch.long)
        for i, (p, b, y) in enumerate(inputs):
            phones[i, : p.numel()], bert[i, :, : p.numel()], prompt[i, : y.numel()] = p, b, y
        phone_lens = torch.tensor([p.numel() for p, _, _ in inputs])
        prompt_lens = torch.tensor([y.numel() for _, _, y in inputs])
        logits, k, v, seq_lens = self.gpt.prefill(phones, phone_lens, bert, prompt, prompt_lens)
        self.cache.add_rows(k, v, seq_lens)
        self.rows.extend(batch)
        logits = logits.float().cpu()
        first = len(self.rows) - n
        ended = [first + i for i, s in enumerate(batch) if not self._consume(s, logits[i])]
        self.observer.on_prefill(n, time.perf_counter() - t0)
        self._end_rows(ended)
        return True

    def _consume(self, s: Session, logits: torch.Tensor) -> bool:
        """Sample one token for session ``s``; schedule ready windows. False when its segment ended."""
        token = s.sampler.step(logits)
        if token is not None:
            s.push_token(token, self.noise_channels)
        if s.sampler.finished:
            s.seg_finished = True
        self._schedule(s)
        return not s.seg_finished

    def _schedule(self, s: Session) -> None:
        tokens = s.sampler.tokens
        jobs = []
        listener = self._listener(s)
        floor = self._break_even(s) if listener in ("urgent", "dry") else 0
        if floor is None:  # overload: no early cut pays for itself; planned sizes
            floor, listener = 0, "dry"
        urgent, relaxed = listener == "urgent", listener in ("buffered", "urgent")
        while (w := s.assembler.next_window(len(tokens), s.seg_finished, urgent, relaxed, floor)) is not None:
            keep = s.assembler.policy.kept_tokens(w)
            if s.options.speed != 1.0:  # the vocoder context cut is exact at speed 1 only: vocode it all
                w, keep = dataclasses.replace(w, v0=-1), None
            frames = latent_frames(w.w1 - w.w0, s.options.speed)
            jobs.append(DecodeJob(s, s.seg_index, w, torch.tensor(tokens[w.w0 : w.w1], dtype=torch.long),
                                  s.window_noise(w, frames, self.noise_channels), time.monotonic(),
                                  first=s.sequence == 0 and s.inflight == 0 and not jobs, deadline=s.playback_deadline(),
                                  keep=keep, work=self.work_tokens(w.w1 - w.vocode_start, keep)))
        if s.seg_finished:
            if not jobs or not jobs[-1].window.final:
                jobs.append(_Marker("flush", s.seg_index))
            if s.more_segments():
                jobs.append(_Marker("silence", s.seg_index))
            elif not s.may_get_more():
                jobs.append(_Marker("end", s.seg_index))
            # else: the request waits for more text; append_segments() continues it
        if jobs:
            with self.cv:
                q = self.queues.get(s)
                # a cancel between this step's retire and now has already dropped the queued windows:
                # queueing later ones would leave a gap the assembler cannot accept
                if q is None or s.cancelled:
                    return
                s.jobs_scheduled += sum(isinstance(j, DecodeJob) for j in jobs)
                q.extend(jobs)
                self.cv.notify_all()

    def _listener(self, s: Session) -> str:
        """Where the request's listener (playing since its first audio) stands, for window cutting:

        * ``none``: no listener tracking (offline, or before the first audio): planned chunk sizes;
        * ``buffered``: audio is queued ahead of the listener: wait, windows grow (relaxed);
        * ``urgent``: the listener would run dry before a window of what is pending could be decoded:
          cut it now;
        * ``dry``: the listener already ran out: planned sizes again; a shorter window no longer saves it
          and only adds decoder work (under overload every stream would be cut to the least efficient size).
        A window already in flight makes the request ``buffered`` (its audio is on the way).
        """
        if not self.deadline_chunks or s.t_first_audio is None:
            return "none"
        if s.inflight:
            return "buffered"
        pending = len(s.sampler.tokens) - s.assembler.scheduled
        remaining = s.playback_deadline() - time.monotonic()
        if remaining <= 0.0:
            return "dry"
        return "urgent" if remaining < self.decode_cost.predict(self._window_work(s, pending)) + DEADLINE_MARGIN_S else "buffered"

    def work_tokens(self, vocoded: int, keep: tuple[int, int] | None) -> float:
        """Vocoder work of a window of ``vocoded`` tokens whose ``keep`` span is used, in tokens of an
        untrimmed rendering (the unit of decode_cost and of the decoded-audio metric)."""
        if keep is None or self.trim_plan is None:
            return float(vocoded)
        f = C.FRAMES_PER_TOKEN
        frames = f * vocoded
        return self.trim_plan.work(frames, (f * keep[0], frames - f * keep[1])) / f

    def _window_work(self, s: Session, new_tokens: int) -> float:
        """Work tokens of a mid-segment window of ``new_tokens`` for ``s`` (context and lookahead around them)."""
        p = s.assembler.policy
        w = p.steady_window(new_tokens)
        return self.work_tokens(w.w1 - w.vocode_start, p.kept_tokens(w))

    def _break_even(self, s: Session) -> int | None:
        """Smallest window worth cutting for ``s`` before its planned size (gsv.pacing); None: overload."""
        if not self.decode_cost.known or not self.step_s:
            return 0  # nothing measured yet
        fixed, per_token = self.decode_cost.coefficients()
        p = s.assembler.policy
        overhead = self._window_work(s, p.chunk_tokens) - p.chunk_tokens  # context and lookahead work per window
        n = break_even_tokens(fixed, per_token, overhead, self.step_s, max(len(self.rows), 1), s.options.speed)
        return None if n is None else min(n, p.max_relaxed_chunk_tokens)

    def _end_rows(self, ended: list[int]) -> None:
        if not ended:
            return
        sessions = [self.rows[i] for i in ended]
        self.cache.remove_rows(ended)
        self.rows = [s for i, s in enumerate(self.rows) if i not in set(ended)]
        with self.cv:
            for s in sessions:
                if s.cancelled:  # cancelled while its row was still live: end it now
                    self._finish_now(s, "cancelled")
                    continue
                if s.more_segments():
                    s.seg_index += 1
                    self.waiting.appendleft(s)  # next segment of a running request goes first
                elif s.may_get_more():
                    s.parked = True
            self._occupancy()  # (a scheduler steps an engine only while it has work: report the change now)

    def _retire_dead(self) -> None:
        now = time.monotonic()
        dead = [i for i, s in enumerate(self.rows) if s.cancelled or s.expired(now) or s.done.is_set()]
        if dead:
            sessions = [self.rows[i] for i in dead]
            self.cache.remove_rows(dead)
            self.rows = [s for i, s in enumerate(self.rows) if i not in set(dead)]
            for s in sessions:
                self._finish_now(s, "cancelled" if s.cancelled else ("deadline" if s.expired(now) else s.finish_reason))
            with self.cv:
                self._occupancy()

    def _finish_now(self, s: Session, reason: str) -> None:
        with self.cv:
            self.queues.pop(s, None)
            if s in self.waiting:
                self.waiting.remove(s)
            self.cv.notify_all()
        if not s.done.is_set():
            s.finish(reason)
            self.observer.on_finished(s)

    def cancel(self, s: Session) -> None:
        """Cancel from any thread: a row is freed (and the request ended) at the next AR iteration; a
        request without a row — queued, waiting for more input, or with only decoding left — ends
        now; queued decode jobs are dropped now."""
        s.cancel()
        with self.cv:
            # rows is rebound by the AR thread; either binding is fine: a session seen with a row is
            # ended by that thread (_retire_dead/_end_rows), one seen without a row ends here, and
            # ending twice is a no-op
            has_row = s in self.rows
            if s in self.waiting:
                self.waiting.remove(s)
            if has_row:
                if s in self.queues:
                    self.queues[s].clear()
            else:
                self.queues.pop(s, None)
            self._occupancy()
            self.cv.notify_all()
        if not has_row and not s.done.is_set():
            s.finish("cancelled")
            self.observer.on_finished(s)

    def wait_for_requests(self, timeout: float) -> None:
        with self.cv:
            if not self.rows and not self.waiting:
                self.cv.wait(timeout)

    def fail_all(self, error: BaseException) -> None:
        """A GPT backend fault: end every live and waiting request with the error and reset the cache."""
        with self.cv:
            victims = list(self.rows) + list(self.waiting)
            self.rows.clear()
            self.waiting.clear()
            self.cache = self.gpt.new_cache()
            for s in victims:
                self.queues.pop(s, None)
            self.cv.notify_all()
        for s in victims:
            if not s.done.is_set():
                s.finish("error", error)
                self.observer.on_finished(s)

    # ------------------------------------------------------------------ decoder stage
    def pending_decodes(self) -> bool:
        with self.cv:
            return any(self.queues.values())

    def decode_urgency(self) -> tuple[bool, tuple | None]:
        """(markers to apply?, key of the most urgent pending window or None): (not a first chunk,
        playback deadline, creation time, tokens), sorting in the order :meth:`decode_step` serves
        windows: first chunks, then the nearest playback deadline, then age.
        Keys of engines sharing a clock compare, so a scheduler can serve several engines' decoder
        work in one global order (applying markers, which need no compute, as they come)."""
        markers, best = False, None
        with self.cv:
            for q in self.queues.values():
                for j in q:
                    if isinstance(j, _Marker):
                        markers = True
                        continue
                    key = (not j.first, j.deadline, j.created, j.codes.numel())
                    if best is None or key < best:
                        best = key
                    break
        return markers, best

    def wait_for_work(self, timeout: float) -> None:
        with self.cv:
            if not any(self.queues.values()):
                self.cv.wait(timeout)

    def decode_step(self, decode: bool = True) -> bool:
        """Decode one batch of pending windows and emit their audio; False when nothing was pending.
        Markers at the head of a queue are applied first; ``decode=False`` applies only them."""
        with self.cv:
            heads = []
            for s, q in self.queues.items():
                while q and isinstance(q[0], _Marker):  # markers need no compute: handle in order
                    heads.append((s, q.popleft()))
                if q:
                    heads.append((s, q[0]))
            decodes = [(s, j) for s, j in heads if isinstance(j, DecodeJob)]
            decodes.sort(key=lambda sj: (not sj[1].first, sj[1].deadline, sj[1].created))
            batch = self._pick_decode_batch(decodes) if decode else []
            for s, j in batch:
                self.queues[s].popleft()
            now = time.monotonic()
            self.decoding_urgent = any(self._urgent(j, now) for _, j in batch)
            markers_before = [(s, j) for s, j in heads if isinstance(j, _Marker)]
        for s, m in markers_before:
            self._apply_marker(s, m)
        if not batch:
            return bool(markers_before)
        try:
            return self._decode_batch(batch)
        finally:
            with self.cv:
                self.decoding_urgent = False
                self.cv.notify_all()

    def _urgent(self, j: DecodeJob, now: float) -> bool:
        """A window the GPT stage should make room for: a stream's first audio, or a listener that runs dry
        before the window could be decoded at the current rate (not one already dry: see _listener)."""
        if j.first:
            return True
        if not self.deadline_chunks or j.session.t_first_audio is None:
            return False
        remaining = j.session.playback_deadline() - now
        return 0.0 < remaining < self.decode_cost.predict(j.work) + DEADLINE_MARGIN_S

    def urgent_decode_pending(self) -> bool:
        """The decoder is rendering, or has queued, a window a listener is waiting for."""
        now = time.monotonic()
        with self.cv:
            return self.decoding_urgent or any(q and isinstance(q[0], DecodeJob) and self._urgent(q[0], now)
                                               for q in self.queues.values())

    def yield_to_decoder(self, timeout: float) -> bool:
        """For the GPT loop, before a step: on a CPU both stages use every core, so when a listener is
        waiting for a window the GPT step pauses (at most ``timeout`` s) while the decoder renders it,
        instead of splitting the cores with it.  Returns whether it waited."""
        end = time.monotonic() + timeout
        waited = False
        with self.cv:
            while self.urgent_decode_pending() and (left := end - time.monotonic()) > 0:
                waited = True
                self.cv.wait(min(left, 0.02))  # deadlines move with time: look again soon
        return waited

    def _decode_batch(self, batch: list) -> bool:
        t0 = time.perf_counter()
        try:
            audios = self._run_decoder([j for _, j in batch])
        except Exception as e:  # a backend failure ends the affected requests, not the engine
            log.exception("decoder failed for %d windows", len(batch))
            for s, _ in batch:
                self.cancel(s)
                s.finish("error", e)
            return True
        seconds = time.perf_counter() - t0
        padded = len(batch) * max(j.work for _, j in batch)
        self.decode_cost.add(padded, seconds)
        work = 0.0
        for (s, j), audio in zip(batch, audios):
            with s.lock:
                s.jobs_decoded += 1
                if s.cancelled:
                    continue  # cancelled while decoding: nobody waits for this audio
                try:
                    samples = s.assemblers[j.segment].accept(j.window, audio)
                except Exception as e:  # a bug in one request must not cost the others in the batch
                    log.exception("request %s: decoded window rejected; failing the request", s.request_id)
                    self.cancel(s)
                    s.finish("error", e)
                    continue
                work += j.work if j.keep is not None else audio.size / C.SAMPLES_PER_TOKEN
                s.samples_decoded += audio.size
                self._emit(s, samples, j.segment)
        # decoded audio = the vocoder's work, in seconds of untrimmed rendering (context and lookahead included)
        self.observer.on_decode(len(batch), seconds, work * C.SAMPLES_PER_TOKEN / C.SAMPLE_RATE)
        # markers that became heads behind the decoded jobs are handled on the next call
        return True

    def _pick_decode_batch(self, decodes: list) -> list:
        """The most urgent window plus others that batch with it without much padding.

        Windows are padded to the longest in the batch, and on a CPU the vocoder is compute-bound
        (a batch costs its padded length); so a window joins only while the batch stays at least
        DECODE_BATCH_FILL useful.  Speed != 1 windows are decoded alone (their frame count differs).
        """
        if not decodes:
            return []
        head = decodes[0]
        batch, useful, longest = [head], head[1].codes.numel(), head[1].codes.numel()
        if head[1].session.options.speed != 1.0:
            return batch
        budget = self.decode_call_budget_s
        for sj in decodes[1:]:
            if len(batch) >= self.max_decode_batch:
                break
            n = sj[1].codes.numel()
            if sj[1].session.options.speed != 1.0:
                continue
            if budget is not None and self.decode_cost.predict((len(batch) + 1) * max(longest, n)) > budget:
                continue
            if (useful + n) / ((len(batch) + 1) * max(longest, n)) >= DECODE_BATCH_FILL:
                batch.append(sj)
                useful, longest = useful + n, max(longest, n)
        return batch

    def _run_decoder(self, jobs: list[DecodeJob]) -> list[np.ndarray]:
        b = len(jobs)
        tc = max(j.codes.numel() for j in jobs)
        phones_list = [j.session.segments[j.segment].phones for j in jobs]
        tp = max(len(p) for p in phones_list)
        codes = torch.zeros(b, tc, dtype=torch.long)
        phones = torch.zeros(b, tp, dtype=torch.long)
        for i, (j, p) in enumerate(zip(jobs, phones_list)):
            codes[i, : j.codes.numel()] = j.codes
            phones[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        code_lens = torch.tensor([j.codes.numel() for j in jobs])
        phone_lens = torch.tensor([len(p) for p in phones_list])
        ge = torch.stack([j.session.voice.ge for j in jobs])
        speed = jobs[0].session.options.speed
        # tokens of each window the vocoder skips (decoder-only left context)
        vocode_from = torch.tensor([j.window.vocode_start - j.window.w0 for j in jobs])
        noise = None
        if any(j.noise is not None for j in jobs):
            frames = max(j.noise.shape[1] if j.noise is not None else 0 for j in jobs)
            noise = torch.zeros(b, self.noise_channels, frames)
            for i, j in enumerate(jobs):
                if j.noise is not None:
                    noise[i, :, : j.noise.shape[1]] = j.noise
        keep = None
        if all(j.keep is not None for j in jobs):
            keep = torch.tensor([j.keep for j in jobs], dtype=torch.long)
        audio = self.audio.decode_audio(codes, code_lens, phones, phone_lens, ge, noise, speed,
                                        vocode_from if bool(vocode_from.any()) else None, keep).float().cpu().numpy()
        out = []
        for i, j in enumerate(jobs):
            n = (j.window.w1 - j.window.vocode_start) * C.SAMPLES_PER_TOKEN if speed == 1.0 else audio.shape[1]
            out.append(np.ascontiguousarray(audio[i, :n]))
        return out

    def _apply_marker(self, s: Session, m: _Marker) -> None:
        with s.lock:
            if m.kind == "flush":
                self._emit(s, s.assemblers[m.segment].finish(), m.segment)
            elif m.kind == "silence":
                n = int(round(s.options.fragment_interval * C.SAMPLE_RATE))
                self._emit(s, np.zeros(n, dtype=np.float32), m.segment)
            else:  # end of the request
                s.emit(np.zeros(0, dtype=np.float32), m.segment, final=True)
                with self.cv:
                    self.queues.pop(s, None)
                s.finish(s.end_reason())
                self.observer.on_finished(s)

    def _emit(self, s: Session, samples: np.ndarray, segment: int) -> None:
        if samples.size == 0:
            return
        before = s.underruns
        try:
            s.emit(samples, segment)
        except Exception as e:  # the sink (a client stream) failed: stop this request only
            log.info("request %s: output failed (%s); cancelling", s.request_id, e)
            self.cancel(s)
            s.finish("cancelled", e)
            return
        self.observer.on_chunk(s, samples.size, s.underruns > before)

    # ------------------------------------------------------------------ offline driver
    def run(self, session: Session) -> Session:
        """Drive one (or more) submitted sessions to completion on this thread."""
        while not session.done.is_set():
            progressed = self.ar_step()
            progressed = self.decode_step() or progressed
            if not progressed and not session.done.is_set():
                raise RuntimeError(f"engine stalled on request {session.request_id}")
        return session
