"""The scheduler: one AR thread and one decoder thread drive the engines of every resident model.

Each resident model has its own :class:`~gsv.engine.Engine` (its own GPT batch, KV cache and
decoder queue): requests are batched only with requests of the same model.  The two stage threads
share the machine between the engines:

* **GPT stage — round-robin rounds.**  A round visits every engine with work once, starting one
  engine further each round; a visit is one ``Engine.ar_step`` (retire finished rows, prefill newly
  admitted requests, one batched decode step over all of its live rows).  Every live stream so gets
  one token per round whatever its model, and a model's share of the GPT time follows its live rows
  (its step costs more with more rows): no model waits more than one round, however flooded another is.
* **GPT rows — one budget, shared max-min fairly.**  ``--max-live`` bounds the rows of all models
  together; at the start of a round the free rows go one at a time to the waiting model that has the
  fewest rows (so a model with no row is served before a flooded one gets more).  Rows are never taken
  back from a running request.
* **Decoder stage — one global order.**  Every call decodes the most urgent pending window over all
  engines — first chunks first, then the nearest playback deadline, then age (the order one engine
  already used) — batched with that model's other ready windows.  A late stream is late whatever its
  model, and a new stream's first chunk overtakes a flooded model's backlog.

The decoder thread runs concurrently with the AR thread (chunks decode while the next GPT steps
run), exactly as with one model.  A backend fault fails that engine's requests (INTERNAL), not the
server.  All engines share one condition (:attr:`EngineRunner.cv`), which guards their queues and
the engine list here, so either thread can sleep until any engine has work.
"""
from __future__ import annotations

import logging
import threading

from gsv.engine import Engine

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05  # longest sleep without work (stop is checked this often)


class EngineRunner:
    def __init__(self, max_live: int, cv: threading.Condition | None = None):
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

    def _ar_loop(self) -> None:
        while not self._stop.is_set():
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
            for engine in busy:
                if not self._enter("ar", engine):
                    continue
                try:
                    progressed = engine.ar_step(shares[engine]) or progressed
                except Exception as e:  # noqa: BLE001 - a backend fault must not kill the loop
                    log.exception("GPT step failed; failing the live requests of this model")
                    engine.fail_all(e)
                finally:
                    self._leave("ar")
            if not progressed:  # requests wait for a row that another engine holds
                with self.cv:
                    self.cv.wait(IDLE_WAIT_S)

    # ------------------------------------------------------------------ decoder stage
    def _most_urgent(self) -> Engine | None:
        best, best_key = None, None
        for engine in self.engines:
            key = engine.decode_urgency()
            if key is not None and (best_key is None or key < best_key):
                best, best_key = engine, key
        return best

    def _decoder_loop(self) -> None:
        while not self._stop.is_set():
            engine = self._most_urgent()
            if engine is None:
                with self.cv:
                    if not any(e.decode_urgency() is not None for e in self._engines):
                        self.cv.wait(IDLE_WAIT_S)
                continue
            if not self._enter("decoder", engine):
                continue
            try:
                engine.decode_step()
            except Exception:  # noqa: BLE001 - decode_step already fails the affected requests
                log.exception("decoder stage error")
            finally:
                self._leave("decoder")
