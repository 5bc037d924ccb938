"""Load-time server configuration (the only place command-line values become settings)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


MULTI_MODEL_DECODE_BUDGET_S = 0.25  # measured: tests/server/test_models.py fairness, gsv-bench models


@dataclass(frozen=True)
class ServerConfig:
    bundle: Path | None  # a model (None: only ``bundles`` / ``models_dir``)
    voices: Path | str  # a folder, or a postgresql:// URL shared by replicas
    port: int = 50051
    host: str = "[::]"
    metrics_port: int | None = None
    metrics_host: str | None = None  # None: the same host as the gRPC port
    backend: str | None = None  # None: ONNX Runtime when the bundle has ONNX graphs, else torch
    device: str = "cpu"
    threads: int | None = None  # both stages, unless ar_threads / decoder_threads say otherwise
    ar_threads: int | None = None  # None: all cores
    decoder_threads: int | None = None  # None: all cores (idle decoder threads sleep, see thread_plan)
    max_live: int = 8
    max_queue: int = 16
    max_decode_batch: int = 4
    # a decoder call batches windows only up to this estimated time, so a new stream's first chunk never
    # waits behind a long call of another model's work; None: 0.25 s when the server holds several
    # models, unbounded with one (see README "Many models in one server")
    decode_call_budget_s: float | None = None
    deadline_chunks: bool = True  # cut shorter chunks when a listener would otherwise run dry
    stage_priority: bool = True  # the GPT step waits while the decoder renders a window a listener waits for
    max_text_chars: int = 2000
    max_audio_seconds: float = 120.0
    max_reference_bytes: int = 4 * 1024 * 1024
    max_buffered_audio_seconds: float = 30.0  # a client this far behind is cut off (it stopped reading)
    bidi_max_buffer_seconds: float = 1.0  # buffered bidi text is synthesized after this long without a sentence end
    bidi_idle_timeout: float = 30.0  # a bidi stream with no text and no audio for this long is closed
    drain_grace_seconds: float = 30.0
    # after SIGTERM, health says NOT_SERVING and new calls get UNAVAILABLE for this long before the
    # gRPC port stops accepting connections (load balancers then send new calls elsewhere)
    drain_notice_seconds: float = 1.0
    voice_key_file: Path | None = None  # AES-GCM keys: voices are encrypted at rest when given
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # bearer token -> owner name; empty = no auth
    reflection: bool = True
    retry_after_ms: int = 500
    http_port: int | None = None  # HTTP/WebSocket doors (off when None)
    http_host: str | None = None  # None: the same host as the gRPC port
    ref_audio_dir: Path | None = None  # upstream /tts may name reference files inside this folder
    playground: bool = True  # the browser playground at / (when the HTTP doors are on)
    bundles: tuple[tuple[str | None, Path], ...] = ()  # more models: (id or None = from the bundle, folder)
    models_dir: Path | None = None  # every bundle folder inside is a model
    default_model: str | None = None  # None: the first --bundle, else the first model of --models
    max_resident_models: int | None = None  # None: no limit (LRU unloading of idle models beyond it)
    preload: tuple[str, ...] = ()  # loaded at start besides the default model
    # ONNX Runtime's pre-packed weight copies: None = on for one model, off when the server holds several
    # (they cost ~18% of a full-size model's weights; measured in README "Many models in one server")
    onnx_prepack: bool | None = None

    @property
    def model_paths(self) -> list[tuple[str | None, Path]]:
        """(explicit id or None, folder) of every model named on the command line, in order."""
        return ([(None, Path(self.bundle))] if self.bundle is not None else []) + [(i, Path(p)) for i, p in self.bundles]

    @property
    def metrics_bind_host(self) -> str:
        """The Prometheus endpoint's address in the form its HTTP server takes ("[::]" -> "::")."""
        host = self.metrics_host if self.metrics_host is not None else self.host
        return host[1:-1] if host.startswith("[") and host.endswith("]") else host

    @property
    def http_bind_host(self) -> str:
        return self.http_host if self.http_host is not None else self.host

    def memory_plan(self, models: int):
        """Sessions of a server holding ``models`` models: with several, one shared activation arena (models
        never need their peaks at once) and no pre-packed weight copies unless told otherwise; with one,
        ONNX Runtime's defaults (its per-session arenas measured as fast or faster)."""
        from gsv.backends.base import MemoryPlan

        prepack = self.onnx_prepack if self.onnx_prepack is not None else models <= 1
        return MemoryPlan(shared_arena=models > 1, prepack=prepack)

    def decode_budget(self, models: int) -> float | None:
        """Seconds a decoder call may batch (see ``decode_call_budget_s``)."""
        if self.decode_call_budget_s is not None:
            return self.decode_call_budget_s
        return MULTI_MODEL_DECODE_BUDGET_S if models > 1 else None

    def thread_plan(self):
        """Threads of the two concurrent stages; the decoder's idle threads sleep instead of spinning.

        Measured with the full-size model on 2 cores (gsv-bench serve, 4 s requests): the AR stage on
        all cores gave time to first audio 448 ms at one stream against ~545 ms on one core, with the
        same throughput at 8 streams (2.3 audio s/s); one thread per stage lost 16% throughput.
        In isolation, a spinning decoder slowed a concurrent GPT step from 13 to 19 ms."""
        from gsv.backends.base import ThreadPlan

        return ThreadPlan(gpt=self.ar_threads or self.threads, audio=self.decoder_threads or self.threads,
                          audio_spinning=False)

    def __post_init__(self):
        if self.bundle is None and not self.bundles and self.models_dir is None:
            raise ValueError("give --bundle (repeatable) and/or --models DIR")
        if self.max_resident_models is not None and self.max_resident_models < 1:
            raise ValueError("--max-resident-models must be >= 1")
        if self.max_resident_models is not None and len(set(self.preload)) > self.max_resident_models:
            raise ValueError("--preload names more models than --max-resident-models allows")
        if self.max_live < 1 or self.max_queue < 0:
            raise ValueError("max_live must be >= 1 and max_queue >= 0")
        for n in (self.threads, self.ar_threads, self.decoder_threads):
            if n is not None and n < 1:
                raise ValueError("thread counts must be >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise ValueError("--http-port must be in [0, 65535]")
        if self.drain_notice_seconds < 0 or self.drain_grace_seconds < 0:
            raise ValueError("--grace and --drain-notice must be >= 0 seconds")
        if not self.bidi_idle_timeout > 0:
            raise ValueError("--bidi-idle-timeout must be > 0 seconds")
        for token, owner in self.tokens.items():
            if not token.strip() or not owner.strip():
                raise ValueError("bearer tokens and owner names must not be empty")
