"""Runs the engine: the AR scheduler loop and the decoder stage on two threads.

The decoder thread runs concurrently with the AR loop, so audio decoding of ready chunks overlaps
the next GPT steps, except when a listener waits for a window (a first chunk, or a stream about to run
dry): then the GPT step yields the cores to the decoder (``stage_priority``; bounded wait).  A backend fault fails the affected requests (INTERNAL), not the server.
"""
from __future__ import annotations

import logging
import threading

from gsv.engine import Engine

log = logging.getLogger(__name__)


class EngineRunner:
    YIELD_TIMEOUT_S = 0.5  # the longest the GPT step waits for urgent decoding (GPT rows need tokens too)

    def __init__(self, engine: Engine, stage_priority: bool = True):
        self.engine = engine
        self.stage_priority = stage_priority
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._ar_loop, name="gsv-ar", daemon=True),
                         threading.Thread(target=self._decoder_loop, name="gsv-decoder", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self.engine.cv:
            self.engine.cv.notify_all()
        for t in self._threads:
            t.join(timeout)

    def _ar_loop(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            try:
                if self.stage_priority:
                    eng.yield_to_decoder(self.YIELD_TIMEOUT_S)
                if not eng.ar_step():
                    eng.wait_for_requests(0.05)
            except Exception as e:  # noqa: BLE001 - a backend fault must not kill the loop
                log.exception("GPT step failed; failing the live requests")
                eng.fail_all(e)

    def _decoder_loop(self) -> None:
        eng = self.engine
        while not self._stop.is_set():
            try:
                if not eng.decode_step():
                    eng.wait_for_work(0.05)
            except Exception:  # noqa: BLE001 - decode_step already fails the affected requests
                log.exception("decoder stage error")
