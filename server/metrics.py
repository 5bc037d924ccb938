"""Prometheus metrics of the server (names as in the serving reference §7; seconds as base unit).

Metrics are registered on a private registry per server, and emitted only at the engines' hook
points, at RPC boundaries and at model loads/unloads — never computed by scanning state.

The series without a ``model`` label are totals over every model (their names and labels are those
of a one-model server); the ``tts_model_*`` series split requests, tokens, audio seconds, batch
sizes and residency by ``model`` (a served model id: bounded by the models the server was started
with; requests that named no servable model count as ``model="none"``).
"""
from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gsv import constants as C
from gsv.engine import EngineObserver

LATENCY_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 60)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 4)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120)
NO_MODEL = "none"  # the model label of requests that did not get as far as a served model


OVERHEAD_WINDOW_S = 60.0  # tts_decoder_overhead_ratio looks at the last minute


class SlidingRatio:
    """numerator / denominator summed over the last ``window_s`` seconds (per-second buckets).

    Fed by the engine's decoder thread, read by the metrics scrape: one lock guards the buckets."""

    def __init__(self, window_s: float = OVERHEAD_WINDOW_S, clock=time.monotonic):
        self.window_s, self.clock = window_s, clock
        self.lock = threading.Lock()
        self.buckets: deque[list[float]] = deque()  # [second, numerator, denominator], oldest first

    def add(self, numerator: float = 0.0, denominator: float = 0.0) -> None:
        now = int(self.clock())
        with self.lock:
            if not self.buckets or self.buckets[-1][0] != now:
                self.buckets.append([now, 0.0, 0.0])
            self.buckets[-1][1] += numerator
            self.buckets[-1][2] += denominator
            self._expire(now)

    def value(self) -> float:
        """The ratio, or 0.0 when nothing was emitted in the window (Prometheus gauges have no None)."""
        with self.lock:
            self._expire(int(self.clock()))
            num = sum(b[1] for b in self.buckets)
            den = sum(b[2] for b in self.buckets)
        return num / den if den > 0 else 0.0

    def _expire(self, now: int) -> None:
        while self.buckets and self.buckets[0][0] <= now - self.window_s:
            self.buckets.popleft()


class ServerMetrics(EngineObserver):
    def __init__(self):
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. (leak watching, gsv-bench soak)
        self.ttfa = Histogram("tts_time_to_first_audio_seconds", "Request received -> first audio written",
                              ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("tts_request_duration_seconds", "Whole request duration", ["method"],
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("tts_queue_wait_seconds", "Admission -> first GPT prefill",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.frontend = Histogram("tts_frontend_seconds", "Text normalisation, G2P and BERT per request",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.prefill = Histogram("tts_prefill_seconds", "One batched GPT prefill", buckets=STEP_BUCKETS, registry=r)
        self.ar_step = Histogram("tts_ar_step_seconds", "One batched GPT decode step", buckets=STEP_BUCKETS, registry=r)
        self.ar_batch = Histogram("tts_ar_batch_size", "Live rows per GPT decode step", buckets=BATCH_BUCKETS, registry=r)
        self.decoder_batch = Histogram("tts_decoder_batch_size", "Windows per decoder+vocoder call",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.decode_chunk = Histogram("tts_decode_chunk_seconds", "One batched decoder+vocoder call",
                                      buckets=STEP_BUCKETS, registry=r)
        self.rtf = Histogram("tts_real_time_factor", "Request compute seconds / audio seconds (lower is faster)",
                             buckets=RTF_BUCKETS, registry=r)
        self.audio_seconds = Counter("tts_audio_seconds_total", "Audio seconds produced", registry=r)
        self.decoded_audio_seconds = Counter(
            "tts_decoded_audio_seconds_total", "Vocoder work in seconds of untrimmed rendering, the windows' context included",
            registry=r)
        self.decoder_overhead = SlidingRatio()
        self.decoder_overhead_ratio = Gauge(
            "tts_decoder_overhead_ratio", "Decoded / emitted audio seconds over the last minute (1.0 = no wasted "
            "decoder work; 0 when nothing was emitted)", registry=r)
        self.decoder_overhead_ratio.set_function(self.decoder_overhead.value)
        self.tokens = Counter("tts_semantic_tokens_total", "Semantic tokens generated", registry=r)
        self.chunks = Counter("tts_audio_chunks_total", "Audio chunks produced", registry=r)
        self.in_flight = Gauge("tts_requests_in_flight", "Requests admitted and not finished", registry=r)
        self.queue_depth = Gauge("tts_queue_depth", "Admitted requests waiting for a GPT row", registry=r)
        self.live_rows = Gauge("tts_ar_live_rows", "GPT rows in use", registry=r)
        self.requests = Counter("tts_requests_total", "Finished RPCs", ["method", "code"], registry=r)
        self.rejections = Counter("tts_admission_rejections_total", "Requests refused at admission", ["reason"],
                                  registry=r)
        self.underruns = Counter("tts_underruns_total", "Chunks produced after the audio sent before had finished "
                                 "playing", registry=r)
        self.cancellations = Counter("tts_cancellations_total", "Requests cancelled by the client or a deadline",
                                     ["reason"], registry=r)
        self.voice_registrations = Counter("tts_voice_registrations_total", "RegisterVoice results", ["code"], registry=r)
        self.build_info = Info("tts_build", "Server build", registry=r)
        self.model_info = Gauge("tts_model_info", "Models served (1 per model)",
                                ["model", "version", "backend", "precision", "native_sample_rate_hz"], registry=r)
        # ---- per model
        self.model_requests = Counter("tts_model_requests_total", "Finished requests per model",
                                      ["model", "method", "code"], registry=r)
        self.model_tokens = Counter("tts_model_semantic_tokens_total", "Semantic tokens generated per model", ["model"],
                                    registry=r)
        self.model_audio_seconds = Counter("tts_model_audio_seconds_total", "Audio seconds produced per model",
                                           ["model"], registry=r)
        self.model_ar_batch = Histogram("tts_model_ar_batch_size", "Live rows per GPT decode step, per model",
                                        ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.model_decoder_batch = Histogram("tts_model_decoder_batch_size", "Windows per decoder call, per model",
                                             ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.model_live_rows = Gauge("tts_model_ar_live_rows", "GPT rows in use per model", ["model"], registry=r)
        self.model_loads = Counter("tts_model_loads_total", "Model loads by result (ok | failed)", ["model", "result"],
                                   registry=r)
        self.model_unloads = Counter("tts_model_unloads_total", "Models unloaded to make room (least recently used)",
                                     ["model"], registry=r)
        self.model_load_seconds = Histogram("tts_model_load_seconds", "Time to load and warm up a model", ["model"],
                                            buckets=LOAD_BUCKETS, registry=r)
        self.model_resident = Gauge("tts_model_resident", "1 while the model is loaded", ["model"], registry=r)
        self._occupancy: dict[str, tuple[int, int]] = {}  # per model: (live rows, waiting); see on_occupancy

    def for_model(self, model_id: str) -> "ModelObserver":
        """The engine observer of one model: server totals plus the model's own series."""
        return ModelObserver(self, model_id)

    def count_request(self, method: str, code: str, model: str | None) -> None:
        """One finished request in ``tts_requests_total`` and, by model, ``tts_model_requests_total``."""
        self.requests.labels(method, code).inc()
        self.model_requests.labels(model or NO_MODEL, method, code).inc()

    def watch_voices(self, registry) -> None:
        """Export the voice store's figures (read from the registry at each scrape)."""
        self.registry.register(_VoiceStoreCollector(registry))

    # ---- engine hooks
    def on_admitted(self, session, queue_wait: float) -> None:
        pass

    def on_prefill(self, rows: int, seconds: float) -> None:
        self.prefill.observe(seconds)

    def on_ar_step(self, rows: int, seconds: float) -> None:
        self.ar_step.observe(seconds)
        self.ar_batch.observe(rows)

    def on_tokens(self, n: int) -> None:
        self.tokens.inc(n)

    def on_decode(self, rows: int, seconds: float, audio_seconds: float) -> None:
        self.decode_chunk.observe(seconds)
        self.decoder_batch.observe(rows)
        self.decoded_audio_seconds.inc(audio_seconds)
        self.decoder_overhead.add(numerator=audio_seconds)

    def on_chunk(self, session, samples: int, underrun: bool) -> None:
        self.chunks.inc()
        seconds = samples / C.SAMPLE_RATE
        self.audio_seconds.inc(seconds)
        self.decoder_overhead.add(denominator=seconds)
        if underrun:
            self.underruns.inc()

    def on_finished(self, session) -> None:
        if session.finish_reason in ("cancelled", "deadline"):
            self.cancellations.labels(session.finish_reason).inc()

    def on_occupancy(self, live_rows: int, waiting: int, model: str = "") -> None:
        # engines call this with their (shared) condition held: the per-model figures are summed safely
        self._occupancy[model] = (live_rows, waiting)
        self.live_rows.set(sum(v[0] for v in self._occupancy.values()))
        self.queue_depth.set(sum(v[1] for v in self._occupancy.values()))


class ModelObserver(EngineObserver):
    """An engine's hooks: the server totals (:class:`ServerMetrics`) plus its model's own series."""

    def __init__(self, metrics: ServerMetrics, model_id: str):
        self.m, self.model = metrics, model_id
        self._tokens = metrics.model_tokens.labels(model_id)
        self._audio = metrics.model_audio_seconds.labels(model_id)
        self._ar_batch = metrics.model_ar_batch.labels(model_id)
        self._decoder_batch = metrics.model_decoder_batch.labels(model_id)
        self._live = metrics.model_live_rows.labels(model_id)

    def on_admitted(self, session, queue_wait: float) -> None:
        self.m.on_admitted(session, queue_wait)

    def on_prefill(self, rows: int, seconds: float) -> None:
        self.m.on_prefill(rows, seconds)

    def on_ar_step(self, rows: int, seconds: float) -> None:
        self.m.on_ar_step(rows, seconds)
        self._ar_batch.observe(rows)

    def on_tokens(self, n: int) -> None:
        self.m.on_tokens(n)
        self._tokens.inc(n)

    def on_decode(self, rows: int, seconds: float, audio_seconds: float) -> None:
        self.m.on_decode(rows, seconds, audio_seconds)
        self._decoder_batch.observe(rows)

    def on_chunk(self, session, samples: int, underrun: bool) -> None:
        self.m.on_chunk(session, samples, underrun)
        self._audio.inc(samples / C.SAMPLE_RATE)

    def on_finished(self, session) -> None:
        self.m.on_finished(session)

    def on_occupancy(self, live_rows: int, waiting: int) -> None:
        self.m.on_occupancy(live_rows, waiting, self.model)
        self._live.set(live_rows)


class _VoiceStoreCollector:
    """``tts_voice_store_*`` / ``tts_voice_cache_*``: the registry's own counters, read at scrape time
    (the backend counts its statements; nothing is computed by scanning)."""

    def __init__(self, registry):
        self.voices = registry

    def collect(self):
        backend = self.voices.backend
        yield CounterMetricFamily("tts_voice_store_queries", "Statements sent to the voice database while handling "
                                  "requests (a cached voice costs none)", value=backend.queries)
        yield GaugeMetricFamily("tts_voice_store_up", "1 while the voice store is reachable", value=int(backend.up))
        yield GaugeMetricFamily("tts_voice_cache_entries", "Prepared voices held in this replica's memory",
                                value=self.voices.cache_size)
        yield CounterMetricFamily("tts_voice_cache_invalidations", "Cached voices dropped because another replica "
                                  "changed or deleted them", value=self.voices.invalidations)
