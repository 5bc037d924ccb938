"""Protobuf <-> core conversion (``from_pb`` / ``to_pb``): the only module that knows both.

Request fields are checked here before anything else sees them: enum values, option ranges (by
the core dataclasses' own validation), and the length of every free-text field, so an oversized
value is refused early and never echoed whole.
"""
from __future__ import annotations

import dataclasses
import re
import uuid
from dataclasses import dataclass

from gsv import __version__
from gsv import constants as C
from gsv.errors import OptionError
from gsv.sampling import SamplingOptions
from gsv.session import SynthesisOptions
from gsv.voice import VOICE_ID_RE, validate_voice_id
from protos.tts.v1 import tts_pb2 as pb
from server.audio_format import SAMPLE_RATES, OutputConverter
from server.errors import Code, RequestError, shown

LATENCY = {pb.LATENCY_MODE_UNSPECIFIED: "balanced", pb.BALANCED: "balanced", pb.LOWEST_LATENCY: "lowest",
           pb.HIGHEST_QUALITY: "quality"}
SPLITS = {pb.TEXT_SPLIT_UNSPECIFIED: "cut5", pb.CUT0: "cut0", pb.CUT1: "cut1", pb.CUT2: "cut2", pb.CUT3: "cut3",
          pb.CUT4: "cut4", pb.CUT5: "cut5"}
ENCODINGS = {pb.AUDIO_ENCODING_UNSPECIFIED: "pcm_s16le", pb.PCM_S16LE: "pcm_s16le", pb.PCM_F32LE: "pcm_f32le",
             pb.WAV: "wav"}
ENCODING_PB = {"pcm_s16le": pb.PCM_S16LE, "pcm_f32le": pb.PCM_F32LE, "wav": pb.WAV}
FINISH = {"completed": pb.COMPLETED, "max_audio": pb.MAX_AUDIO_LENGTH}
SAMPLING_FIELDS = ("top_k", "top_p", "temperature", "repetition_penalty", "seed")

# Longest accepted value of each free-text field (characters).  Voice ids are checked by their own
# pattern (at most 64 characters).
MAX_LANGUAGE_CHARS = 16
MAX_REQUEST_ID_CHARS = 128
MAX_DISPLAY_NAME_CHARS = 256
MAX_REFERENCE_TEXT_CHARS = 1000
MAX_CONSENT_CHARS = 4000
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
PAGE_TOKEN = re.compile(r"0|[1-9][0-9]{0,8}")  # an offset, as ListVoices hands it out


def check_length(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise RequestError(Code.INVALID_ARGUMENT, f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def model_id_of(value: str, name: str = "model_id") -> str:
    """A well-formed model id or "" (the default model); INVALID_ARGUMENT otherwise (never a model's id)."""
    if value and not VOICE_ID_RE.fullmatch(value):
        raise RequestError(Code.INVALID_ARGUMENT, f"invalid {name} {shown(value)} (1-64 of letters, digits, '_', '.', '-')")
    return value


def voice_id_of(value: str, name: str = "voice_id") -> str:
    """A well-formed voice id (INVALID_ARGUMENT otherwise: such an id can never exist)."""
    if not value:
        raise RequestError(Code.INVALID_ARGUMENT, f"{name} is required")
    validate_voice_id(value)  # a VoiceError (INVALID_ARGUMENT) that shows only a preview of the value
    return value


@dataclass(frozen=True)
class SynthesisRequest:
    """A validated synthesis config, before its voice is resolved."""

    request_id: str
    voice_id: str
    language: str  # "" = the voice's language
    split: str
    options: SynthesisOptions
    encoding: str
    sample_rate: int
    model_id: str = ""  # "" = the server's default model

    @property
    def seed(self) -> int:
        return self.options.sampling.seed

    def converter(self) -> OutputConverter:
        return OutputConverter(self.encoding, self.sample_rate)

    def format_pb(self) -> pb.AudioFormat:
        return pb.AudioFormat(encoding=ENCODING_PB[self.encoding], sample_rate_hz=self.sample_rate or C.SAMPLE_RATE)


def sampling_from_pb(sp: pb.SamplingParams) -> SamplingOptions:
    """Given fields over the defaults of :class:`SamplingOptions` (defined there once); the seed resolved."""
    given = {name: getattr(sp, name) for name in SAMPLING_FIELDS if sp.HasField(name)}
    sampling = dataclasses.replace(SamplingOptions(), **given)
    return dataclasses.replace(sampling, seed=sampling.resolved_seed())


def synthesis_from_pb(config: pb.SynthesisConfig, max_audio_seconds: float, streaming: bool) -> SynthesisRequest:
    voice_id = voice_id_of(config.voice_id, "config.voice_id")
    check_length("config.language", config.language, MAX_LANGUAGE_CHARS)
    check_length("config.request_id", config.request_id, MAX_REQUEST_ID_CHARS)
    for value, table, name in ((config.latency_mode, LATENCY, "latency_mode"), (config.text_split, SPLITS, "text_split"),
                               (config.output.encoding, ENCODINGS, "output.encoding")):
        if value not in table:
            raise RequestError(Code.INVALID_ARGUMENT, f"unknown {name} value {value}")
    encoding = ENCODINGS[config.output.encoding]
    if streaming and encoding == "wav":
        raise RequestError(Code.INVALID_ARGUMENT, "WAV is only available from Synthesize; stream PCM")
    if config.output.sample_rate_hz not in (0, *SAMPLE_RATES):
        raise RequestError(Code.INVALID_ARGUMENT, f"sample_rate_hz {config.output.sample_rate_hz} not supported "
                                                  f"(choose 0 or one of {list(SAMPLE_RATES)})")
    max_audio = config.max_audio_seconds if config.HasField("max_audio_seconds") else max_audio_seconds
    if max_audio > max_audio_seconds:
        raise OptionError(f"max_audio_seconds is limited to {max_audio_seconds:g}")
    options = SynthesisOptions(sampling=sampling_from_pb(config.sampling), max_audio_seconds=max_audio,
                               streaming=streaming, latency_mode=LATENCY[config.latency_mode],
                               **({"speed": config.speed} if config.HasField("speed") else {}))
    return SynthesisRequest(config.request_id or uuid.uuid4().hex, voice_id, config.language,
                            SPLITS[config.text_split], options, encoding, config.output.sample_rate_hz,
                            model_id_of(config.model_id, "config.model_id"))


def check_text(text: str, max_chars: int) -> str:
    if not text or not text.strip():
        raise RequestError(Code.INVALID_ARGUMENT, "text is empty")
    if len(text) > max_chars:
        raise RequestError(Code.INVALID_ARGUMENT, f"text has {len(text)} characters; the limit is {max_chars}")
    return text


# ------------------------------------------------------------------------------------------ responses
def stream_start_pb(r: SynthesisRequest, ev) -> pb.SynthesizeStreamResponse:
    """A :class:`server.frontdoor.Started` event as the stream's first message."""
    return pb.SynthesizeStreamResponse(start=pb.StreamStart(
        request_id=ev.request_id, format=r.format_pb(), seed=ev.seed, voice_id=ev.voice_id,
        voice_version=ev.voice_version, model_id=ev.model_id))


def summary_pb(s) -> pb.SynthesisSummary:
    """A :class:`server.frontdoor.Summary` as a SynthesisSummary."""
    timings = pb.Timings(queue_ms=s.queue_ms, frontend_ms=s.frontend_ms, first_audio_ms=s.first_audio_ms,
                         total_ms=s.total_ms)
    return pb.SynthesisSummary(finish_reason=FINISH.get(s.finish_reason, pb.COMPLETED), audio_seconds=s.audio_seconds,
                               semantic_tokens=s.semantic_tokens, timings=timings,
                               real_time_factor=s.real_time_factor, chunks=s.chunks)


def voice_pb(meta: dict) -> pb.Voice:
    """A stored voice's metadata (``voice.json``) as a Voice message."""
    return pb.Voice(voice_id=meta["voice_id"], display_name=meta.get("display_name", ""),
                    language=meta.get("language", ""), reference_text=meta.get("ref_text", ""),
                    native_sample_rate_hz=C.SAMPLE_RATE, model_id=meta.get("bundle_id", ""),
                    version=int(meta.get("version", 1)), create_time_unix=int(meta.get("created", 0)),
                    reference_free=bool(meta.get("reference_free", False)),
                    consent_statement=meta.get("consent", ""), model_version=meta.get("model_version", ""),
                    blend=[pb.BlendSource(voice_id=b["voice_id"], weight=b["weight"])
                           for b in (meta.get("blend") or {}).get("sources", [])])


def page_bounds(page_size: int, page_token: str) -> tuple[int, int]:
    """(start, size) of a ListVoices page; INVALID_ARGUMENT for a negative size or a malformed token."""
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise RequestError(Code.INVALID_ARGUMENT, f"page_size must be in [0, {MAX_PAGE_SIZE}]")
    start = 0
    if page_token:
        if not PAGE_TOKEN.fullmatch(page_token):
            raise RequestError(Code.INVALID_ARGUMENT, f"invalid page_token {shown(page_token)}")
        start = int(page_token)
    return start, page_size or DEFAULT_PAGE_SIZE


def voice_page_pb(metas: list[dict], start: int, size: int) -> pb.ListVoicesResponse:
    page = metas[start : start + size]
    nxt = str(start + size) if start + size < len(metas) else ""
    return pb.ListVoicesResponse(voices=[voice_pb(m) for m in page], next_page_token=nxt)


MODEL_STATE_PB = {"unloaded": pb.MODEL_UNLOADED, "loading": pb.MODEL_LOADING, "ready": pb.MODEL_READY,
                  "failed": pb.MODEL_FAILED}


def model_info_pb(d: dict) -> pb.ModelInfo:
    """One entry of :meth:`server.models.ModelHost.describe` as a ModelInfo."""
    return pb.ModelInfo(model_id=d["model_id"], version=d["version"], backend=d["backend"], precision=d["precision"],
                        native_sample_rate_hz=C.SAMPLE_RATE, state=MODEL_STATE_PB[d["state"]], resident=d["resident"],
                        load_seconds=d["load_seconds"] or 0.0, error=d["error"], is_default=d["default"],
                        loads=d["loads"], unloads=d["unloads"], in_use=d["in_use"])


def list_models_pb(state) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info_pb(d) for d in state.models.describe()],
                                 default_model_id=state.model_id,
                                 max_resident_models=state.config.max_resident_models or 0)


def server_config_pb(state) -> pb.ServerConfig:
    cfg = state.config
    limits = pb.Limits(max_text_chars=cfg.max_text_chars, max_live_requests=cfg.max_live,
                       max_queued_requests=cfg.max_queue, max_audio_seconds=cfg.max_audio_seconds,
                       reference_seconds_min=C.REF_MIN_SECONDS, reference_seconds_max=C.REF_MAX_SECONDS,
                       max_reference_bytes=cfg.max_reference_bytes)
    models = sorted(state.models.describe(), key=lambda d: not d["default"])  # the default model first
    languages = list(dict.fromkeys(lang for m in state.models.models.values() if m.bundle is not None
                                   for lang in m.languages))
    d = SamplingOptions()
    return pb.ServerConfig(models=[model_info_pb(m) for m in models], encodings=[pb.PCM_S16LE, pb.PCM_F32LE, pb.WAV],
                           sample_rates_hz=list(SAMPLE_RATES), languages=languages,
                           text_splits=sorted(set(SPLITS.values())), limits=limits,
                           default_sampling=pb.SamplingParams(temperature=d.temperature, top_k=d.top_k, top_p=d.top_p,
                                                              repetition_penalty=d.repetition_penalty),
                           server_version=__version__, default_model_id=state.model_id)
