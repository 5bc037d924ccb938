"""The scheduler: one AR thread and one decoder thread drive the engines of every resident model.

Each resident model has its own :class:`~gsv.engine.Engine` (its own GPT batch, KV cache and
decoder queue): requests are batched only with requests of the same model.  The two stage threads
share the machine between the engines:

* **GPT stage — round-robin rounds.**  A round visits every engine with work once, starting one
  engine further each round; a visit is one ``Engine.ar_step`` (retire finished rows, prefill newly
  admitted requests, one batched decode step over all of its live rows).  Every live stream so gets
  one token per round whatever its model, and a model's share of the GPT time follows its live rows
  (its step costs more with more rows): no model waits more than one round, however flooded another is.
  An engine with a *starting* request (one still waiting for its first audio window) gets
  :data:`STARTUP_VISITS` visits per round until that window is out: a new stream's first chunk does
  not queue behind a flooded model's playing streams, which have audio buffered.
* **GPT rows — one budget, shared max-min fairly.**  ``--max-live`` bounds the rows of all models
  together; at the start of a round the free rows go one at a time to the waiting model that has the
  fewest rows (so a model with no row is served before a flooded one gets more).  Rows are never taken
  back from a running request.
* **Decoder stage — one global order.**  Every call decodes the most urgent pending window over all
  engines — first chunks first, then the nearest playback deadline, then age (the order one engine
  already used) — batched with that model's other ready windows.  A late stream is late whatever its
  model, and a new stream's first chunk overtakes a flooded model's backlog.

The decoder thread runs concurrently with the AR thread (chunks decode while the next GPT steps
run), exactly as with one model, except when a listener waits for a window (a first chunk, or a
stream about to run dry) of any model: then the GPT round yields the cores to the decoder
(``stage_priority``; bounded wait, see :meth:`gsv.engine.Engine.yield_to_decoder`).  A backend fault fails that engine's requests (INTERNAL), not the
server.  All engines share one condition (:attr:`EngineRunner.cv`), which guards their queues and
the engine list here, so either thread can sleep until any engine has work.
"""
from __future__ import annotations

import logging
import threading
import time

from gsv.engine import Engine

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # longest sleep without work (stop is checked this often)
# Visits per round of an engine with a starting request (one waiting for its first audio window): its
# first chunk's tokens come that much faster, at the expense of streams already playing (which have
# audio buffered).  Every engine still gets a visit every round: nobody starves.
STARTUP_VISITS = 3
# While a request's first window is being generated, the decoder does not start a window that is not
# needed yet — its listener keeps at least this much audio beyond the window's estimated decode time —
# so the first chunk does not queue behind a long call of buffered work (on a CPU a call cannot be
# interrupted; a flooded model's relaxed windows take hundreds of milliseconds).
DEFER_MARGIN_S = 0.3  # (with several engines; one engine keeps the single-model behaviour)


class EngineRunner:
    YIELD_TIMEOUT_S = 0.5  # the longest the GPT round waits for urgent decoding (GPT rows need tokens too)

    def __init__(self, max_live: int, cv: threading.Condition | None = None, stage_priority: bool = True):
        self.stage_priority = stage_priority
        self.cv = cv or threading.Condition()  # shared by every engine (Engine(cv=...))
        self.max_live = max_live  # GPT rows of all engines together
        self._engines: list[Engine] = []  # guarded by cv
        self._stepping: dict[str, Engine | None] = {"ar": None, "decoder": None}  # guarded by cv
        self._removing = 0  # remove() calls waiting for a thread to leave an engine (guarded by cv)
        self._turn = 0  # AR thread only
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ engines
    def add(self, engine: Engine) -> None:
        if engine.cv is not self.cv:
            raise ValueError("an engine driven by this runner must use its condition (Engine(cv=runner.cv))")
        with self.cv:
            self._engines.append(engine)
            self.cv.notify_all()

    def remove(self, engine: Engine) -> None:
        """Stop driving ``engine``; returns once neither thread is inside it."""
        with self.cv:
            if engine in self._engines:
                self._engines.remove(engine)
            self._removing += 1
            try:
                while engine in self._stepping.values():
                    self.cv.wait()
            finally:
                self._removing -= 1

    def stepping(self, engine: Engine) -> bool:
        with self.cv:
            return engine in self._stepping.values()

    @property
    def engines(self) -> list[Engine]:
        with self.cv:
            return list(self._engines)

    # ------------------------------------------------------------------ threads
    def start(self) -> None:
        self._threads = [threading.Thread(target=self._ar_loop, name="gsv-ar", daemon=True),
                         threading.Thread(target=self._decoder_loop, name="gsv-decoder", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self.cv:
            self.cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _enter(self, stage: str, engine: Engine) -> bool:
        """Mark ``engine`` as being stepped by ``stage`` (False if it was removed meanwhile)."""
        with self.cv:
            if engine not in self._engines:
                return False
            self._stepping[stage] = engine
            return True

    def _leave(self, stage: str) -> None:
        with self.cv:
            self._stepping[stage] = None
            if self._removing:
                self.cv.notify_all()

    # ------------------------------------------------------------------ GPT stage
    def row_shares(self, engines: list[Engine]) -> dict[Engine, int]:
        """Free rows (of ``max_live`` over all engines) given one at a time to the waiting engine with the
        fewest rows, ties in ``engines`` order (call with ``cv`` held)."""
        free = self.max_live - sum(e.live for e in self._engines)
        want = {e: len(e.waiting) for e in engines}
        share = {e: 0 for e in engines}
        while free > 0:
            candidates = [e for e in engines if want[e] > share[e]]
            if not candidates:
                break
            e = min(candidates, key=lambda e: e.live + share[e])
            share[e] += 1
            free -= 1
        return share

    @staticmethod
    def round_of(busy: list[Engine]) -> list[tuple[Engine, bool]]:
        """The visits of one round, (engine, first visit of the round): every engine once, an engine with
        a starting request :data:`STARTUP_VISITS` times (when another engine shares the round)."""
        if len(busy) == 1:
            return [(busy[0], True)]
        starting = {e for e in busy if any(e.starting())}
        return [(e, k == 0) for k in range(STARTUP_VISITS) for e in busy if k == 0 or e in starting]

    def _yield_to_decoder(self, timeout: float) -> None:
        """Before a round: while any engine's decoder renders (or has queued) a window a listener waits
        for, let it have the cores (at most ``timeout`` s; deadlines move with time: look again soon)."""
        end = time.monotonic() + timeout
        with self.cv:
            while any(e.urgent_decode_pending() for e in self._engines) and (left := end - time.monotonic()) > 0:
                self.cv.wait(min(left, 0.02))

    def _ar_loop(self) -> None:
        while not self._stop.is_set():
            if self.stage_priority:
                self._yield_to_decoder(self.YIELD_TIMEOUT_S)
            with self.cv:
                busy = [e for e in self._engines if e.has_work()]
                if not busy:
                    self.cv.wait(IDLE_WAIT_S)
                    continue
                start = self._turn % len(busy)
                busy = busy[start:] + busy[:start]
                shares = self.row_shares(busy)
            self._turn += 1
            progressed = False
            for engine, first_visit in self.round_of(busy):
                if not self._enter("ar", engine):
                    continue
                try:
                    progressed = engine.ar_step(shares[engine] if first_visit else 0) or progressed
                except Exception as e:  # noqa: BLE001 - a backend fault must not kill the loop
                    log.exception("GPT step failed; failing the live requests of this model")
                    engine.fail_all(e)
                finally:
                    self._leave("ar")
            if not progressed:  # requests wait for a row that another engine holds
                with self.cv:
                    self.cv.wait(IDLE_WAIT_S)

    # ------------------------------------------------------------------ decoder stage
    def _decoder_pass(self) -> float:
        """Apply every engine's pending markers, then decode one batch of the engine with the most
        urgent window; returns how long to sleep before the next pass (0: go on at once)."""
        best, best_key, did = None, None, False
        engines = self.engines
        for engine in engines:
            markers, key = engine.decode_urgency()
            if markers and self._enter("decoder", engine):
                try:
                    did = engine.decode_step(decode=False) or did
                finally:
                    self._leave("decoder")
            if key is not None and (best_key is None or key < best_key):
                best, best_key = engine, key
        if best is None:
            return 0.0 if did else IDLE_WAIT_S
        not_first, deadline, _, tokens = best_key
        if not_first and len(engines) > 1 and self._start_pending(engines):
            spare = deadline - time.monotonic() - best.decode_cost.predict(tokens) - DEFER_MARGIN_S
            if spare > 0:  # a first chunk is coming and this window can wait
                return 0.0 if did else min(spare, IDLE_WAIT_S)
        if not self._enter("decoder", best):
            return 0.0
        try:
            best.decode_step()
        finally:
            self._leave("decoder")
        return 0.0

    def _start_pending(self, engines: list[Engine]) -> bool:
        """A request is about to need its first window: one generating its first chunk, or a new one
        waiting for its prefill while a GPT row is free."""
        starting = [e.starting() for e in engines]
        if any(rows for rows, _ in starting):
            return True
        with self.cv:
            free = self.max_live - sum(e.live for e in self._engines)
        return free > 0 and any(waiting for _, waiting in starting)

    def _decoder_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sleep = self._decoder_pass()
            except Exception:  # noqa: BLE001 - decode_step already fails the affected requests
                log.exception("decoder stage error")
                sleep = IDLE_WAIT_S
            if sleep > 0:
                with self.cv:  # woken early when any engine queues work
                    self.cv.wait(sleep)
