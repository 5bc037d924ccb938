"""Assembling and running the server: the models (engines + scheduler), voices, gRPC (health,
reflection, optional TLS), Prometheus endpoint, graceful drain on SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gsv import __version__
from gsv.backends import open_backends
from gsv.checkpoint.bundle import Bundle
from gsv.engine import Engine
from gsv.errors import GsvError
from protos.tts.v1 import tts_pb2, tts_pb2_grpc
from server.admission import Admission, Authenticator
from server.config import ServerConfig
from server.errors import RequestError
from server.interceptor import ErrorMappingInterceptor
from server.metrics import ServerMetrics
from server.models import Model, ModelHost, SharedParts, discover
from server.ref_files import ReferenceFiles
from server.runner import EngineRunner
from server.service import TtsService
from server.voices import VoiceRegistry

log = logging.getLogger(__name__)
SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name
# Request headers up to this size reach the handlers (grpcio's default soft limit of 8 KiB refuses
# bigger ones at random with RESOURCE_EXHAUSTED); an oversized token is then UNAUTHENTICATED.
MAX_METADATA_BYTES = 64 * 1024
GRPC_OPTIONS = [("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES)]


@dataclass
class ServerState:
    config: ServerConfig
    models: ModelHost  # the served models (resident or not) and their engines
    runner: EngineRunner  # the scheduler driving every resident model's engine
    registry: VoiceRegistry
    metrics: ServerMetrics
    auth: Authenticator
    admission: Admission
    frontend_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "gsv-frontend"))
    # voice lookups that miss the cache, file reads and preparation; two threads, so one long
    # registration does not hold up every lookup behind it
    voice_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "gsv-voices"))
    # audio codecs of the HTTP doors (Opus, MP3, FLAC), one call at a time per request
    encode_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(2, "gsv-encode"))
    ref_files: ReferenceFiles | None = None  # files /tts may name (--ref-audio-dir)
    started_at: float = field(default_factory=time.time)
    port: int = 0
    http_port: int = 0

    # ---- the default model (what a request that names no model gets)
    @property
    def model_id(self) -> str:
        return self.models.default_id

    @property
    def engine(self) -> Engine | None:
        """The default model's engine (None while it is not resident)."""
        return self.models.default.engine

    @property
    def bundle(self) -> Bundle:
        return self.models.default.bundle

    @property
    def text(self):
        """The default model's text preparer (gsv.pipeline.TextPreparer)."""
        return self.models.default.text

    @property
    def backend_name(self) -> str:
        return self.models.default.backend

    @property
    def precision(self) -> str:
        return self.models.default.precision

    @property
    def in_flight(self) -> int:
        return self.admission.in_flight

    @property
    def draining(self) -> bool:
        return self.admission.draining


def build_engine(config: ServerConfig, metrics: ServerMetrics, runner: EngineRunner, model: Model,
                 warm: bool, memory=None, decode_budget: float | None = None) -> Engine:
    """A model's backends and engine (on the runner's condition), warmed up unless told otherwise."""
    gpt, audio = open_backends(model.bundle, model.backend, device=config.device, threads=config.thread_plan(),
                               memory=memory)
    engine = Engine(gpt, audio, max_live=config.max_live, max_decode_batch=config.max_decode_batch,
                    observer=metrics.for_model(model.model_id), deadline_chunks=config.deadline_chunks, cv=runner.cv,
                    decode_call_budget_s=decode_budget)
    if warm:
        warm_up_engine(engine)
    return engine


def build_state(config: ServerConfig) -> ServerState:
    """Open every model, load the default one and the ``--preload`` ones (warmed up later, in
    :func:`serve`), the voice registry and the rest of the server state."""
    metrics = ServerMetrics()
    metrics.build_info.info({"version": __version__})
    runner = EngineRunner(config.max_live, stage_priority=config.stage_priority)
    models, default = discover(config)
    memory, budget = config.memory_plan(len(models)), config.decode_budget(len(models))
    loading = [default] + [m for m in dict.fromkeys(config.preload) if m != default]
    if config.max_resident_models is not None and len(loading) > config.max_resident_models:
        raise GsvError(f"the default model and --preload are {len(loading)} models; --max-resident-models is "
                       f"{config.max_resident_models}")
    shared = SharedParts(config.device)
    host = ModelHost(models, default, max_resident=config.max_resident_models, metrics=metrics, runner=runner,
                     shared=shared, build_engine=lambda m, warm: build_engine(config, metrics, runner, m, warm, memory,
                                                                             budget))
    for m in models:
        if m.bundle is not None:
            metrics.model_info.labels(m.model_id, m.version, m.backend, m.precision, str(m.bundle.sample_rate)).set(1)
    for mid in loading:  # warmed up in serve() (warm_up), before the engine threads start
        try:
            host.load_now(mid, warm=False)
        except RequestError as e:
            if mid == default:
                raise GsvError(f"the default model {mid} cannot be loaded: {e.message}") from None
            log.error("--preload %s: %s", mid, e.message)
    default_model = host.default
    preparer = default_model.preparer()
    registry = open_registry(config, preparer, default_model.bundle_id, default=default_model)
    metrics.watch_voices(registry)
    admission = Admission(config.max_live, config.max_queue, config.retry_after_ms, metrics)
    if config.ref_audio_dir is not None and not Path(config.ref_audio_dir).is_dir():
        raise GsvError(f"--ref-audio-dir {config.ref_audio_dir} is not a folder")
    return ServerState(config, host, runner, registry, metrics, Authenticator(config.tokens), admission,
                       ref_files=ReferenceFiles(config.ref_audio_dir, preparer, config.max_reference_bytes))


def open_registry(config: ServerConfig, preparer, bundle_id: str, default=None) -> VoiceRegistry:
    """The voice registry over ``--voices`` (folder or PostgreSQL), encrypted with ``--voice-key-file``;
    ``default``: the default model (what voices are prepared for when a request names no model)."""
    from gsv.voicestore.crypto import KeyRing

    keyring = KeyRing.load(config.voice_key_file) if config.voice_key_file is not None else None
    actor = f"gsv-serve {socket.gethostname()} pid {os.getpid()}"
    registry = VoiceRegistry(config.voices, preparer, bundle_id, scoped=bool(config.tokens), keyring=keyring,
                             actor=actor, default=default)
    where = registry.backend.location
    if keyring is None:
        log.warning("voices in %s are stored UNENCRYPTED (reference audio and prepared features): give "
                    "--voice-key-file to encrypt them at rest", where)
    else:
        log.info("voices in %s are encrypted at rest (AES-256-GCM, active key %s)", where, keyring.active)
    return registry


def warm_up(state: ServerState) -> None:
    """Warm up the engines loaded at start (before the engine threads start and before any request
    is admitted: a backend's IO binding or execution context must not be used by two threads at once)."""
    for engine in state.runner.engines:
        warm_up_engine(engine)


def warm_up_engine(engine: Engine) -> None:
    """One prefill + decode step + decoder call with dummy inputs, so the first request is not slow.
    Runs before the engine is driven by the scheduler threads."""
    import torch

    cfg = engine.gpt.config
    phones = torch.zeros(1, 8, dtype=torch.long)
    bert = torch.zeros(1, cfg.bert_dim, 8)
    prompt = torch.zeros(1, 4, dtype=torch.long)
    _, k, v, lens = engine.gpt.prefill(phones, torch.tensor([8]), bert, prompt, torch.tensor([4]))
    engine.gpt.decode_step(torch.zeros(1, dtype=torch.long), torch.tensor([4]), k, v, lens)
    scfg = engine.audio.config
    engine.audio.decode_audio(torch.zeros(1, 8, dtype=torch.long), torch.tensor([8]), phones, torch.tensor([8]),
                              torch.zeros(1, scfg.gin_channels, 1), None, 1.0)


# grpc's asyncio server logs a failed core write with a traceback at ERROR ("ExecuteBatchError raised in
# core by servicer method ..."); on a stream that is what a client disconnecting between two audio
# chunks looks like (grpc/grpc#32551).  The request is cancelled and accounted for by our own code.
_CLIENT_GONE_WRITE = "ExecuteBatchError raised in core"


class _ClientGoneWriteFilter(logging.Filter):
    """Demotes grpc's failed-write record to DEBUG (handlers at INFO and above then drop it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(_CLIENT_GONE_WRITE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_client_gone_writes() -> None:
    """Install the filter once on grpc's asyncio logger (idempotent)."""
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _ClientGoneWriteFilter) for f in grpc_log.filters):
        grpc_log.addFilter(_ClientGoneWriteFilter())


async def serve(config: ServerConfig, ready: asyncio.Event | None = None, state: ServerState | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set), then drain."""
    quiet_client_gone_writes()
    state = state or build_state(config)
    interceptor = ErrorMappingInterceptor(state.metrics, SERVICE_NAME)
    server = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[interceptor])
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(TtsService(state), server)
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if config.reflection:
        from grpc_reflection.v1alpha import reflection

        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    if config.tls_cert is not None:
        creds = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"cannot listen on {address}")
    state.port = bound
    if config.metrics_port is not None:
        from prometheus_client import start_http_server

        # the same interface as the gRPC port unless told otherwise (the endpoint has no auth)
        start_http_server(config.metrics_port, addr=config.metrics_bind_host, registry=state.metrics.registry)
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.NOT_SERVING)
    http = None
    if config.http_port is not None:
        from server.web import HttpServer

        http = HttpServer(state)
        state.http_port = await http.start()
    await server.start()  # requests are refused (UNAVAILABLE) until the warm-up is done
    await asyncio.get_running_loop().run_in_executor(None, warm_up, state)
    state.runner.start()
    state.admission.ready = True
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving on port %d: %d model(s), default %s (backend %s)", bound, len(state.models.models),
             state.model_id, state.backend_name)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    if ready is not None:
        ready.set()
    await stop.wait()
    await drain(state, server, health_servicer, interceptor, http)


async def _set_health(servicer, name: str, status) -> None:
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


async def drain(state: ServerState, server, health_servicer, interceptor, http=None) -> None:
    """Refuse new work (UNAVAILABLE), let in-flight streams finish up to the grace period, stop.

    Health turns NOT_SERVING first and, for ``drain_notice_seconds`` (or until nothing is in
    flight), new calls still reach this server and get UNAVAILABLE with a retry hint that points
    past the notice period; then the gRPC port stops
    accepting connections while the streams in flight go on, so a load balancer in front sends new
    calls to other replicas (a refused connection is retried there; an UNAVAILABLE is not).
    Requests still running at the end of the grace period are cancelled (their clients see
    CANCELLED or UNAVAILABLE); that is expected and logged as one line, not as errors."""
    t0 = time.monotonic()
    deadline = t0 + state.config.drain_grace_seconds
    notice_end = t0 + min(state.config.drain_notice_seconds, state.config.drain_grace_seconds)
    state.admission.port_closes_at = notice_end  # refusals tell clients to retry after it
    state.admission.draining = True
    for name in ("", SERVICE_NAME):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.NOT_SERVING)
    while state.in_flight > 0 and time.monotonic() < notice_end:
        await asyncio.sleep(0.05)
    # grpcio stops listening and refuses new calls now; calls in flight run until the grace ends
    stopping = asyncio.ensure_future(server.stop(max(0.0, deadline - time.monotonic())))
    while state.in_flight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if state.in_flight:
        log.info("stopping: cancelling %d requests still in flight after the %g s grace period", state.in_flight,
                 state.config.drain_grace_seconds)
    else:
        log.info("stopping")
    if http is not None:  # HTTP responses still running are cancelled (their sessions end)
        await http.stop(1.0)
    await server.stop(1.0)
    await stopping
    # grpcio has cancelled the calls still running; let their handlers unwind (free their sessions)
    # before this coroutine returns: tasks still pending when the event loop closes are cancelled
    # again by asyncio and logged by grpcio as errors
    unwind = time.monotonic() + 5.0
    while interceptor.active and time.monotonic() < unwind:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    state.runner.stop()
    state.models.shutdown()
    state.frontend_pool.shutdown(wait=False, cancel_futures=True)
    state.voice_pool.shutdown(wait=False, cancel_futures=True)
    state.encode_pool.shutdown(wait=False, cancel_futures=True)
    await asyncio.get_running_loop().run_in_executor(None, state.registry.close)
