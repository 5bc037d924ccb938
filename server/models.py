"""The models one server serves: which exist, which are resident, loading on demand, LRU unloading.

Every bundle given with ``--bundle`` or found in ``--models DIR`` is a :class:`Model` (its id: the
manifest's ``name``, else the folder name; ``--bundle ID=PATH`` names it explicitly).  A model is
opened at start (manifest, files, its backend's artifacts): one that fails is reported then and
refused with its reason (FAILED_PRECONDITION) while the others serve.  Its engine (backends + an
:class:`~gsv.engine.Engine` driven by the shared scheduler, :class:`server.runner.EngineRunner`) is
built when first needed, on one loader thread, warmed up before the scheduler sees it.

Residency: with ``--max-resident-models N`` a load first unloads the least-recently-used resident
model that is idle — no request holds a :class:`Lease` on it and its engine holds no work.  A model
in use is never unloaded: when every resident model is busy, the load waits until one is idle (the
requests waiting for it keep their deadlines; when they all leave, the load is dropped).

Requests hold a lease from the moment they name a model until they end: it keeps the model
resident, and waiting for the load (:meth:`Lease.engine`) happens on the event loop without
blocking anything else.  Parts several models can share — the text frontend and BERT, HuBERT, the
speaker-verification network — are loaded once per distinct model folder (:class:`SharedParts`).

One lock (``ModelHost._lock``) guards every model's state, leases and load bookkeeping; it is held
only briefly (never during a load).  Lock order: this lock, then the scheduler's.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import enum
import gc
import logging
import threading
import time
from pathlib import Path

from gsv.checkpoint.bundle import Bundle, folder_fingerprint
from gsv.errors import GsvError
from gsv.voice import VOICE_ID_RE
from server.errors import Code, RequestError, shown

log = logging.getLogger(__name__)

LOAD_RETRY_SECONDS = 30.0  # a model that failed to load is tried again after this long (the folder may be fixed)
MAX_LISTED_IDS = 20  # an unknown-model error lists at most this many of the served ids


class ModelState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


def default_backend(bundle: Bundle) -> str:
    """ONNX Runtime CPU when the bundle has ONNX graphs, torch otherwise."""
    has_onnx = any(a.get("kind") == "onnx" and a.get("precision") == "fp32" for a in bundle.artifacts)
    return "onnx" if has_onnx else "torch"


def precision_of(backend: str) -> str:
    return "int8" if backend.endswith("int8") else ("fp16" if backend in ("trt", "onnx-fp16") else "fp32")


def check_backend_files(bundle: Bundle, backend: str) -> None:
    """Raise GsvError when the bundle lacks what ``backend`` reads (checked at start, cheaply)."""
    if backend.startswith("onnx"):
        from gsv.backends.onnx_backend import AUDIO_GRAPHS, GPT_GRAPHS, PRECISION_OF, find_artifact

        for graph in GPT_GRAPHS + AUDIO_GRAPHS:
            art = find_artifact(bundle, graph, PRECISION_OF[backend])
            if not (bundle.path / art["file"]).is_file():
                raise GsvError(f"{bundle.path / art['file']} is missing (re-run gsv-export)")


class SharedParts:
    """Components loaded once and shared by every model that uses the same one: the text frontend of
    a phone table, BERT and HuBERT (by folder fingerprint: copies of one folder count as one) and the
    speaker-verification network (by file hash).  Thread-safe."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._lock = threading.Lock()  # guards _parts; loads happen under it (once each)
        self._parts: dict[tuple, object] = {}

    def _get(self, key: tuple, make):
        with self._lock:
            if key not in self._parts:
                self._parts[key] = make()
            return self._parts[key]

    def text(self, bundle: Bundle):
        from gsv.pipeline import TextPreparer
        from gsv.text.frontend import TextFrontend

        frontend = self._get(("frontend", bundle.symbol_version), lambda: TextFrontend(version=bundle.symbol_version))
        bert = None
        if bundle.bert_dir is not None:
            from gsv.features import BertExtractor

            bert = self._get(("bert", folder_fingerprint(bundle.bert_dir)), lambda: BertExtractor(bundle.bert_dir,
                                                                                                  self.device))
        key = ("text", bundle.symbol_version, id(bert), bundle.gpt_config.bert_dim)
        return self._get(key, lambda: TextPreparer.from_bundle(bundle, self.device, bert=bert, frontend=frontend))

    def preparer(self, bundle: Bundle):
        """A VoicePreparer of the bundle's own voice layers over the shared text, HuBERT and SV parts."""
        from gsv.pipeline import make_voice_preparer

        hubert = sv = None
        if bundle.hubert_dir is not None:
            from gsv.features import HubertExtractor

            hubert = self._get(("hubert", folder_fingerprint(bundle.hubert_dir)),
                               lambda: HubertExtractor(bundle.hubert_dir, self.device))
        if bundle.is_pro:
            sv = self._get(("sv", bundle.manifest["sv"].get("sha256") or str(bundle.path)),
                           lambda: bundle.load_sv(self.device))
        return make_voice_preparer(bundle, self.text(bundle), self.device, hubert=hubert, sv=sv)


class Model:
    """One served model: what was found at start, and (guarded by ``ModelHost._lock``) its state."""

    def __init__(self, model_id: str, path: Path, bundle: Bundle | None, backend: str, error: str = ""):
        self.model_id, self.path, self.bundle, self.backend = model_id, path, bundle, backend
        self.precision = precision_of(backend)
        self.state = ModelState.FAILED if error else ModelState.UNLOADED
        self.error = error
        self.failed_at = time.monotonic() if error else 0.0
        self.engine = None  # gsv.engine.Engine while READY
        self.leases = 0  # requests holding it
        self.last_used = 0.0
        self.loads = self.unloads = 0
        self.load_seconds: float | None = None  # of the last successful load
        self.loading: concurrent.futures.Future | None = None
        self._shared: SharedParts | None = None
        self._kit_lock = threading.Lock()  # guards _preparer and _text (built once, outside ModelHost._lock)
        self._preparer = None
        self._text = None

    # ---- what voices need from the model they are used with (see server.voices.VoiceRegistry)
    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def family(self) -> str:
        return self.bundle.symbol_version

    @property
    def prompt_space(self) -> str:
        return self.bundle.prompt_space()

    @property
    def version(self) -> str:
        return self.bundle.model_version if self.bundle is not None else ""

    def preparer(self):
        """The model's VoicePreparer (its small voice layers; built on first use, kept while it serves).
        FAILED_PRECONDITION when the model's files cannot give one (the request is not at fault)."""
        with self._kit_lock:
            if self._preparer is None:
                self._preparer = self._unusable_as(lambda: self._shared.preparer(self.bundle))
            return self._preparer

    def drop_preparer(self) -> None:
        with self._kit_lock:
            self._preparer = None

    @property
    def text(self):
        """The text frontend (+ BERT) of the model, shared with the models of the same ones (loaded on
        first use: call off the event loop)."""
        with self._kit_lock:
            if self._text is None:
                self._text = self._unusable_as(lambda: self._shared.text(self.bundle))
            return self._text

    def _unusable_as(self, make):
        try:
            return make()
        except (GsvError, OSError) as e:
            raise RequestError(Code.FAILED_PRECONDITION, f"model {self.model_id} cannot be used: {e}") from None

    @property
    def languages(self) -> tuple[str, ...]:
        from gsv.text.frontend import LANGUAGE_MODES

        return tuple(LANGUAGE_MODES[self.family])


class Lease:
    """A request's hold on a model (from naming it to its end): keeps it resident."""

    def __init__(self, host: "ModelHost", model: Model):
        self.host, self.model = host, model
        self._held = True

    async def engine(self, deadline: float | None):
        """The model's engine, waiting (on the event loop) while it loads; DEADLINE_EXCEEDED when the
        request's deadline passes first, FAILED_PRECONDITION (with the reason) when it cannot load."""
        m = self.model
        while True:
            fut = self.host._ready_or_loading(m)
            if fut is None:
                return m.engine
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise RequestError(Code.DEADLINE_EXCEEDED, f"deadline exceeded while model {m.model_id} was loading")
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)
            except asyncio.TimeoutError:
                raise RequestError(Code.DEADLINE_EXCEEDED,
                                   f"deadline exceeded while model {m.model_id} was loading") from None

    def release(self) -> None:
        if self._held:
            self._held = False
            self.host._release(self.model)

    async def __aenter__(self) -> "Lease":
        return self

    async def __aexit__(self, *exc) -> None:
        self.release()


class ModelHost:
    def __init__(self, models: list[Model], default_id: str, *, max_resident: int | None, build_engine, metrics,
                 runner, shared: SharedParts):
        self.models = {m.model_id: m for m in models}
        self.default_id = default_id
        self.max_resident = max_resident
        self._build_engine = build_engine  # (Model, warm) -> Engine, warmed up when asked (server.app)
        self.metrics, self.runner, self.shared = metrics, runner, shared
        self._lock = threading.Condition()
        self._loader = concurrent.futures.ThreadPoolExecutor(1, "gsv-loader")
        for m in models:
            m._shared = shared
            metrics.model_resident.labels(m.model_id).set(0)

    @property
    def default(self) -> Model:
        return self.models[self.default_id]

    # ------------------------------------------------------------------ lookups (any thread)
    def get(self, model_id: str) -> Model:
        """The model named ``model_id`` ("" = the default): NOT_FOUND if unknown, FAILED_PRECONDITION
        (with the reason) if it could not be opened at start."""
        m = self.models.get(model_id or self.default_id)
        if m is None:
            ids = sorted(self.models)
            listed = ", ".join(ids[:MAX_LISTED_IDS]) + (", ..." if len(ids) > MAX_LISTED_IDS else "")
            raise RequestError(Code.NOT_FOUND, f"unknown model {shown(model_id)} (this server has: {listed})")
        if m.bundle is None:
            raise RequestError(Code.FAILED_PRECONDITION, f"model {m.model_id} cannot be served: {m.error}")
        return m

    def lease(self, model_id: str) -> Lease:
        """Hold a model for a request (and start loading it if it is not resident)."""
        m = self.get(model_id)
        with self._lock:
            m.leases += 1
            m.last_used = time.monotonic()
            if m.state is ModelState.UNLOADED:
                self._start_load_locked(m)
        return Lease(self, m)

    def describe(self) -> list[dict]:
        with self._lock:
            return [{"model_id": m.model_id, "version": m.version, "backend": m.backend, "precision": m.precision,
                     "state": m.state.value, "resident": m.state is ModelState.READY, "load_seconds": m.load_seconds,
                     "loads": m.loads, "unloads": m.unloads, "error": m.error, "default": m.model_id == self.default_id,
                     "in_use": m.leases}
                    for m in sorted(self.models.values(), key=lambda m: m.model_id)]

    @property
    def resident(self) -> list[Model]:
        with self._lock:
            return [m for m in self.models.values() if m.state is ModelState.READY]

    # ------------------------------------------------------------------ loading
    def load_now(self, model_id: str, warm: bool = True) -> None:
        """Load a model at start (on the calling thread, before serving); raises if it fails.
        ``warm=False``: the caller warms the engine up before the scheduler threads start."""
        m = self.get(model_id)
        with self._lock:
            fut = self._start_load_locked(m, submit=False)
            m.leases += 1  # wanted: a full server waits for room instead of giving up
        try:
            self._load(m, warm)
            fut.result()
        finally:
            self._release(m)

    def _ready_or_loading(self, m: Model) -> concurrent.futures.Future | None:
        """None when the model is ready; else the future of its (possibly new) load, or raise."""
        with self._lock:
            if m.state is ModelState.READY:
                m.last_used = time.monotonic()
                return None
            if m.state is ModelState.FAILED:
                if time.monotonic() - m.failed_at < LOAD_RETRY_SECONDS:
                    raise RequestError(Code.FAILED_PRECONDITION, f"model {m.model_id} could not be loaded: {m.error}")
                log.info("model %s: trying to load it again", m.model_id)
            return self._start_load_locked(m)

    def _start_load_locked(self, m: Model, submit: bool = True) -> concurrent.futures.Future:
        if m.loading is None:
            m.state, m.loading = ModelState.LOADING, concurrent.futures.Future()
            if submit:
                self._loader.submit(self._load, m)
        return m.loading

    def _load(self, m: Model, warm: bool = True) -> None:
        """Make room, build and warm the engine, publish it (loader thread, or the caller of load_now)."""
        fut, t0 = m.loading, time.monotonic()
        try:
            if not self._make_room(m):
                with self._lock:
                    m.state, m.loading = ModelState.UNLOADED, None
                fut.set_exception(RequestError(Code.UNAVAILABLE, f"model {m.model_id}: nobody waits for it anymore"))
                return
            log.info("model %s: loading %s (%s backend)", m.model_id, m.path, m.backend)
            engine = self._build_engine(m, warm)
        except Exception as e:  # noqa: BLE001 - reported to every request waiting for it, and kept
            reason = str(e) if isinstance(e, (GsvError, OSError)) else f"{type(e).__name__}: {e}"
            log.error("model %s: load failed: %s", m.model_id, reason, exc_info=not isinstance(e, (GsvError, OSError)))
            with self._lock:
                m.state, m.error, m.failed_at, m.loading = ModelState.FAILED, reason, time.monotonic(), None
            self.metrics.model_loads.labels(m.model_id, "failed").inc()
            fut.set_exception(RequestError(Code.FAILED_PRECONDITION, f"model {m.model_id} could not be loaded: {reason}"))
            return
        seconds = time.monotonic() - t0
        self.runner.add(engine)
        with self._lock:
            m.engine, m.state, m.loading, m.error = engine, ModelState.READY, None, ""
            m.load_seconds, m.loads, m.last_used = seconds, m.loads + 1, time.monotonic()
            self._lock.notify_all()
        self.metrics.model_loads.labels(m.model_id, "ok").inc()
        self.metrics.model_load_seconds.labels(m.model_id).observe(seconds)
        self.metrics.model_resident.labels(m.model_id).set(1)
        log.info("model %s: loaded in %.2f s (%d resident)", m.model_id, seconds, len(self.resident))
        fut.set_result(None)

    def _make_room(self, m: Model) -> bool:
        """Unload idle least-recently-used models until ``m`` fits; False when nobody wants ``m`` anymore."""
        unloaded = []
        try:
            with self._lock:
                while True:
                    resident = [x for x in self.models.values() if x.state is ModelState.READY]
                    if self.max_resident is None or len(resident) < self.max_resident:
                        return True
                    idle = [x for x in resident if x.leases == 0 and x.engine.idle() and not self.runner.stepping(x.engine)]
                    if idle:
                        victim = min(idle, key=lambda x: x.last_used)
                        self._unload_locked(victim)
                        unloaded.append(victim.model_id)
                        continue
                    if m.leases == 0:
                        return False
                    self._lock.wait(0.05)  # every resident model is in use: wait for one to be released
        finally:
            if unloaded:
                gc.collect()
                _give_memory_back()

    def _unload_locked(self, m: Model) -> None:
        self.runner.remove(m.engine)
        m.engine, m.state = None, ModelState.UNLOADED
        m.unloads += 1
        if m.model_id != self.default_id:  # the default model's voice layers prepare registrations
            m.drop_preparer()
        self.metrics.model_unloads.labels(m.model_id).inc()
        self.metrics.model_resident.labels(m.model_id).set(0)
        log.info("model %s: unloaded (least recently used, idle)", m.model_id)

    def _release(self, m: Model) -> None:
        with self._lock:
            m.leases -= 1
            m.last_used = time.monotonic()
            self._lock.notify_all()

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)


def _give_memory_back() -> None:
    """Return freed heap pages to the system after an unload (glibc keeps them otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# ---------------------------------------------------------------------------------------- discovery
def discover(config) -> tuple[list[Model], str]:
    """The models of a server config and the default model's id.

    Bundles named with ``--bundle`` must open (GsvError otherwise: the operator asked for them); a
    folder in ``--models`` that fails is reported and kept as a failed model.  Every folder in
    ``--models`` with a ``manifest.json`` is a bundle (hidden folders are skipped)."""
    entries: list[tuple[str | None, Path, bool]] = [(mid, p, True) for mid, p in config.model_paths]
    if config.models_dir is not None:
        root = Path(config.models_dir)
        if not root.is_dir():
            raise GsvError(f"--models {root} is not a folder")
        for sub in sorted(root.iterdir()):
            if sub.name.startswith(".") or not sub.is_dir():
                continue
            if not (sub / "manifest.json").is_file():
                log.info("--models: %s has no manifest.json; not a bundle", sub)
                continue
            entries.append((None, sub, False))
    models: list[Model] = []
    for explicit_id, path, required in entries:
        model = _open(explicit_id, path, config.backend)
        if model.error:
            if required:
                raise GsvError(f"--bundle {path}: {model.error}")
            log.error("model %s (%s) cannot be served: %s", model.model_id, path, model.error)
        if any(x.model_id == model.model_id for x in models):
            message = f"two models are named {model.model_id!r} ({path}); name them apart (--bundle ID=PATH or " \
                      "the manifest's \"name\")"
            if required:
                raise GsvError(message)
            log.error("%s: ignoring %s", message, path)
            continue
        models.append(model)
    usable = [m for m in models if not m.error]
    if not usable:
        raise GsvError("no model to serve (give --bundle or --models DIR with at least one bundle that opens)")
    default = config.default_model or usable[0].model_id
    named = next((m for m in models if m.model_id == default), None)
    if named is None:
        raise GsvError(f"--default-model {default!r} is not one of the models ({', '.join(m.model_id for m in models)})")
    if named.error:
        raise GsvError(f"--default-model {default!r} cannot be served: {named.error}")
    for mid in config.preload:
        if mid not in {m.model_id for m in models}:
            raise GsvError(f"--preload {mid!r} is not one of the models")
    return models, default


def _open(explicit_id: str | None, path: Path, backend: str | None) -> Model:
    fallback_id = explicit_id or Path(path).name
    try:
        bundle = Bundle.open(path)
        name = explicit_id or bundle.manifest.get("name") or Path(path).resolve().name
        if not isinstance(name, str) or not VOICE_ID_RE.fullmatch(name):
            raise GsvError(f"model id {name!r} is not valid (1-64 of letters, digits, '_', '.', '-')")
        chosen = backend or default_backend(bundle)
        check_backend_files(bundle, chosen)
        return Model(name, Path(path), bundle, chosen)
    except (GsvError, OSError, KeyError, ValueError) as e:
        return Model(fallback_id, Path(path), None, backend or "", error=str(e) or type(e).__name__)
