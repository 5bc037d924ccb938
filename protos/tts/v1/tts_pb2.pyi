from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    PCM_S16LE: _ClassVar[AudioEncoding]
    PCM_F32LE: _ClassVar[AudioEncoding]
    WAV: _ClassVar[AudioEncoding]

class LatencyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LATENCY_MODE_UNSPECIFIED: _ClassVar[LatencyMode]
    BALANCED: _ClassVar[LatencyMode]
    LOWEST_LATENCY: _ClassVar[LatencyMode]
    HIGHEST_QUALITY: _ClassVar[LatencyMode]

class TextSplit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEXT_SPLIT_UNSPECIFIED: _ClassVar[TextSplit]
    CUT0: _ClassVar[TextSplit]
    CUT1: _ClassVar[TextSplit]
    CUT2: _ClassVar[TextSplit]
    CUT3: _ClassVar[TextSplit]
    CUT4: _ClassVar[TextSplit]
    CUT5: _ClassVar[TextSplit]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    COMPLETED: _ClassVar[FinishReason]
    MAX_AUDIO_LENGTH: _ClassVar[FinishReason]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_UNLOADED: _ClassVar[ModelState]
    MODEL_LOADING: _ClassVar[ModelState]
    MODEL_READY: _ClassVar[ModelState]
    MODEL_FAILED: _ClassVar[ModelState]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
PCM_S16LE: AudioEncoding
PCM_F32LE: AudioEncoding
WAV: AudioEncoding
LATENCY_MODE_UNSPECIFIED: LatencyMode
BALANCED: LatencyMode
LOWEST_LATENCY: LatencyMode
HIGHEST_QUALITY: LatencyMode
TEXT_SPLIT_UNSPECIFIED: TextSplit
CUT0: TextSplit
CUT1: TextSplit
CUT2: TextSplit
CUT3: TextSplit
CUT4: TextSplit
CUT5: TextSplit
FINISH_REASON_UNSPECIFIED: FinishReason
COMPLETED: FinishReason
MAX_AUDIO_LENGTH: FinishReason
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_UNLOADED: ModelState
MODEL_LOADING: ModelState
MODEL_READY: ModelState
MODEL_FAILED: ModelState

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class SynthesisConfig(_message.Message):
    __slots__ = ("voice_id", "language", "output", "sampling", "speed", "max_audio_seconds", "latency_mode", "text_split", "request_id", "model_id")
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_SPLIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    voice_id: str
    language: str
    output: AudioFormat
    sampling: SamplingParams
    speed: float
    max_audio_seconds: float
    latency_mode: LatencyMode
    text_split: TextSplit
    request_id: str
    model_id: str
    def __init__(self, voice_id: _Optional[str] = ..., language: _Optional[str] = ..., output: _Optional[_Union[AudioFormat, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., speed: _Optional[float] = ..., max_audio_seconds: _Optional[float] = ..., latency_mode: _Optional[_Union[LatencyMode, str]] = ..., text_split: _Optional[_Union[TextSplit, str]] = ..., request_id: _Optional[str] = ..., model_id: _Optional[str] = ...) -> None: ...

class SynthesizeRequest(_message.Message):
    __slots__ = ("config", "text")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    config: SynthesisConfig
    text: str
    def __init__(self, config: _Optional[_Union[SynthesisConfig, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "frontend_ms", "first_audio_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    frontend_ms: float
    first_audio_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., frontend_ms: _Optional[float] = ..., first_audio_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class SynthesisSummary(_message.Message):
    __slots__ = ("finish_reason", "audio_seconds", "semantic_tokens", "timings", "real_time_factor", "chunks")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    audio_seconds: float
    semantic_tokens: int
    timings: Timings
    real_time_factor: float
    chunks: int
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., audio_seconds: _Optional[float] = ..., semantic_tokens: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., real_time_factor: _Optional[float] = ..., chunks: _Optional[int] = ...) -> None: ...

class SynthesizeResponse(_message.Message):
    __slots__ = ("request_id", "audio", "format", "seed", "summary")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    audio: bytes
    format: AudioFormat
    seed: int
    summary: SynthesisSummary
    def __init__(self, request_id: _Optional[str] = ..., audio: _Optional[bytes] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., seed: _Optional[int] = ..., summary: _Optional[_Union[SynthesisSummary, _Mapping]] = ...) -> None: ...

class StreamStart(_message.Message):
    __slots__ = ("request_id", "format", "seed", "voice_id", "voice_version", "model_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    VOICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    format: AudioFormat
    seed: int
    voice_id: str
    voice_version: int
    model_id: str
    def __init__(self, request_id: _Optional[str] = ..., format: _Optional[_Union[AudioFormat, _Mapping]] = ..., seed: _Optional[int] = ..., voice_id: _Optional[str] = ..., voice_version: _Optional[int] = ..., model_id: _Optional[str] = ...) -> None: ...

class AudioData(_message.Message):
    __slots__ = ("data", "sequence", "start_sample", "num_samples")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sequence: int
    start_sample: int
    num_samples: int
    def __init__(self, data: _Optional[bytes] = ..., sequence: _Optional[int] = ..., start_sample: _Optional[int] = ..., num_samples: _Optional[int] = ...) -> None: ...

class SynthesizeStreamResponse(_message.Message):
    __slots__ = ("start", "audio", "summary")
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    start: StreamStart
    audio: AudioData
    summary: SynthesisSummary
    def __init__(self, start: _Optional[_Union[StreamStart, _Mapping]] = ..., audio: _Optional[_Union[AudioData, _Mapping]] = ..., summary: _Optional[_Union[SynthesisSummary, _Mapping]] = ...) -> None: ...

class TextInput(_message.Message):
    __slots__ = ("text", "flush")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FLUSH_FIELD_NUMBER: _ClassVar[int]
    text: str
    flush: bool
    def __init__(self, text: _Optional[str] = ..., flush: _Optional[bool] = ...) -> None: ...

class BidiSynthesizeRequest(_message.Message):
    __slots__ = ("config", "input")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    config: SynthesisConfig
    input: TextInput
    def __init__(self, config: _Optional[_Union[SynthesisConfig, _Mapping]] = ..., input: _Optional[_Union[TextInput, _Mapping]] = ...) -> None: ...

class RegisterVoiceRequest(_message.Message):
    __slots__ = ("voice_id", "reference_audio", "reference_text", "reference_language", "aux_reference_audio", "display_name", "consent_statement", "overwrite", "blend", "reference_free", "model_id")
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_AUDIO_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    AUX_REFERENCE_AUDIO_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSENT_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FREE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    voice_id: str
    reference_audio: bytes
    reference_text: str
    reference_language: str
    aux_reference_audio: _containers.RepeatedScalarFieldContainer[bytes]
    display_name: str
    consent_statement: str
    overwrite: bool
    blend: _containers.RepeatedCompositeFieldContainer[BlendSource]
    reference_free: bool
    model_id: str
    def __init__(self, voice_id: _Optional[str] = ..., reference_audio: _Optional[bytes] = ..., reference_text: _Optional[str] = ..., reference_language: _Optional[str] = ..., aux_reference_audio: _Optional[_Iterable[bytes]] = ..., display_name: _Optional[str] = ..., consent_statement: _Optional[str] = ..., overwrite: _Optional[bool] = ..., blend: _Optional[_Iterable[_Union[BlendSource, _Mapping]]] = ..., reference_free: _Optional[bool] = ..., model_id: _Optional[str] = ...) -> None: ...

class BlendSource(_message.Message):
    __slots__ = ("voice_id", "weight")
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    voice_id: str
    weight: float
    def __init__(self, voice_id: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Voice(_message.Message):
    __slots__ = ("voice_id", "display_name", "language", "reference_text", "native_sample_rate_hz", "model_id", "version", "create_time_unix", "reference_free", "consent_statement", "blend", "model_version")
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FREE_FIELD_NUMBER: _ClassVar[int]
    CONSENT_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    BLEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    voice_id: str
    display_name: str
    language: str
    reference_text: str
    native_sample_rate_hz: int
    model_id: str
    version: int
    create_time_unix: int
    reference_free: bool
    consent_statement: str
    blend: _containers.RepeatedCompositeFieldContainer[BlendSource]
    model_version: str
    def __init__(self, voice_id: _Optional[str] = ..., display_name: _Optional[str] = ..., language: _Optional[str] = ..., reference_text: _Optional[str] = ..., native_sample_rate_hz: _Optional[int] = ..., model_id: _Optional[str] = ..., version: _Optional[int] = ..., create_time_unix: _Optional[int] = ..., reference_free: _Optional[bool] = ..., consent_statement: _Optional[str] = ..., blend: _Optional[_Iterable[_Union[BlendSource, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetVoiceRequest(_message.Message):
    __slots__ = ("voice_id",)
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    voice_id: str
    def __init__(self, voice_id: _Optional[str] = ...) -> None: ...

class ListVoicesRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "language")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    language: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., language: _Optional[str] = ...) -> None: ...

class ListVoicesResponse(_message.Message):
    __slots__ = ("voices", "next_page_token")
    VOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    voices: _containers.RepeatedCompositeFieldContainer[Voice]
    next_page_token: str
    def __init__(self, voices: _Optional[_Iterable[_Union[Voice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteVoiceRequest(_message.Message):
    __slots__ = ("voice_id",)
    VOICE_ID_FIELD_NUMBER: _ClassVar[int]
    voice_id: str
    def __init__(self, voice_id: _Optional[str] = ...) -> None: ...

class DeleteVoiceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServerConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_id", "version", "backend", "precision", "native_sample_rate_hz", "state", "resident", "load_seconds", "error", "is_default", "loads", "unloads", "in_use")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    NATIVE_SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    LOADS_FIELD_NUMBER: _ClassVar[int]
    UNLOADS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    version: str
    backend: str
    precision: str
    native_sample_rate_hz: int
    state: ModelState
    resident: bool
    load_seconds: float
    error: str
    is_default: bool
    loads: int
    unloads: int
    in_use: int
    def __init__(self, model_id: _Optional[str] = ..., version: _Optional[str] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., native_sample_rate_hz: _Optional[int] = ..., state: _Optional[_Union[ModelState, str]] = ..., resident: _Optional[bool] = ..., load_seconds: _Optional[float] = ..., error: _Optional[str] = ..., is_default: _Optional[bool] = ..., loads: _Optional[int] = ..., unloads: _Optional[int] = ..., in_use: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model_id", "max_resident_models")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESIDENT_MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model_id: str
    max_resident_models: int
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model_id: _Optional[str] = ..., max_resident_models: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_text_chars", "max_live_requests", "max_queued_requests", "max_audio_seconds", "reference_seconds_min", "reference_seconds_max", "max_reference_bytes")
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_LIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SECONDS_MIN_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SECONDS_MAX_FIELD_NUMBER: _ClassVar[int]
    MAX_REFERENCE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_text_chars: int
    max_live_requests: int
    max_queued_requests: int
    max_audio_seconds: float
    reference_seconds_min: float
    reference_seconds_max: float
    max_reference_bytes: int
    def __init__(self, max_text_chars: _Optional[int] = ..., max_live_requests: _Optional[int] = ..., max_queued_requests: _Optional[int] = ..., max_audio_seconds: _Optional[float] = ..., reference_seconds_min: _Optional[float] = ..., reference_seconds_max: _Optional[float] = ..., max_reference_bytes: _Optional[int] = ...) -> None: ...

class ServerConfig(_message.Message):
    __slots__ = ("models", "encodings", "sample_rates_hz", "languages", "text_splits", "limits", "default_sampling", "server_version", "default_model_id")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATES_HZ_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_SPLITS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    encodings: _containers.RepeatedScalarFieldContainer[AudioEncoding]
    sample_rates_hz: _containers.RepeatedScalarFieldContainer[int]
    languages: _containers.RepeatedScalarFieldContainer[str]
    text_splits: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    default_sampling: SamplingParams
    server_version: str
    default_model_id: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., encodings: _Optional[_Iterable[_Union[AudioEncoding, str]]] = ..., sample_rates_hz: _Optional[_Iterable[int]] = ..., languages: _Optional[_Iterable[str]] = ..., text_splits: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., default_sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., server_version: _Optional[str] = ..., default_model_id: _Optional[str] = ...) -> None: ...
