"""OpenAI-compatible speech API: ``POST /v1/audio/speech``, ``GET /v1/models`` and
``GET /v1/audio/voices`` (the caller's voices), for the ``openai`` SDK with a custom ``base_url``
and the tools built on it.

``model`` is required (as by OpenAI) and picks the model: one of the ids ``/v1/models`` lists, or
one of OpenAI's own names (:data:`DEFAULT_ALIASES`: ``tts-1``, ``gsv``, ...) for the server's
default model; any other name is 404 ``model_not_found`` — except on a server of one model, which
speaks with it whatever the name (as before models could be chosen).  ``voice`` is one of the caller's voice ids (or
``{"id": ...}``).  ``speed`` is accepted in OpenAI's range [0.25, 4.0] and clamped to the range the
model honours (:data:`gsv.session.SPEED_RANGE`); ``instructions`` is accepted and ignored.  The
audio is streamed as it is generated (``stream_format`` ``audio``: the encoded bytes; ``sse``:
``speech.audio.delta`` events with base64 audio, then ``speech.audio.done``), except FLAC, which
is sent whole.  ``pcm`` is 24 kHz mono s16le as OpenAI defines it; ``opus`` is Ogg/Opus at 48 kHz;
``mp3``, ``wav`` and ``flac`` keep the model's 32 kHz.  Extensions: an integer ``seed``, and
``language`` (the text's language; default: the voice's).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from gsv import constants as C
from gsv.sampling import MAX_SEED, SamplingOptions
from gsv.session import SPEED_RANGE, SynthesisOptions
from server.convert import MAX_LANGUAGE_CHARS, SynthesisRequest, check_text, voice_id_of
from server.encoders import check_available, make_encoder, native_rate
from server.errors import Code, RequestError, shown
from server.frontdoor import FrontDoor
from server.web.common import (OPENAI, FieldError, HttpCall, SynthesisResponse, as_float, as_int, as_str,
                               authorization, deadline_of, encoded_audio, error_body, handle, json_body, request_id_of)

METHOD = "OpenAISpeech"
MAX_INPUT_CHARS = 4096  # OpenAI's limit (the server's --max-text-chars applies too)
SPEED_LIMITS = (0.25, 4.0)  # OpenAI's accepted range
# response_format -> (codec, Content-Type, rate)
FORMATS = {"mp3": ("mp3", "audio/mpeg", C.SAMPLE_RATE), "opus": ("opus", "audio/ogg", native_rate("opus")),
           "aac": ("aac", "audio/aac", C.SAMPLE_RATE), "flac": ("flac", "audio/flac", C.SAMPLE_RATE),
           "wav": ("wav", "audio/wav", C.SAMPLE_RATE), "pcm": ("pcm", "audio/pcm", 24000)}
STREAM_FORMATS = ("audio", "sse")
# model names that mean the server's default model (what OpenAI clients and tools send by default)
DEFAULT_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gsv", "default")


@dataclasses.dataclass(frozen=True)
class SpeechRequest:
    request: SynthesisRequest
    text: str
    codec: str
    media_type: str
    rate: int
    sse: bool


def parse(body: dict, state, request_id: str) -> SpeechRequest:
    for name in ("model", "input", "voice"):
        if body.get(name) in (None, ""):
            raise FieldError(name, f"{name} is required")
    model_id = model_of(as_str("model", body["model"], 256), state)
    limit = min(MAX_INPUT_CHARS, state.config.max_text_chars)
    text = as_str("input", body["input"], limit)
    try:
        check_text(text, limit)
    except RequestError as e:
        raise FieldError("input", e.message) from None
    voice = body["voice"]
    if isinstance(voice, dict):
        voice = voice.get("id")
    try:
        voice_id = voice_id_of(as_str("voice", voice, 64) if voice is not None else "", "voice")
    except FieldError:
        raise
    except Exception as e:  # noqa: BLE001 - a malformed id names the field
        raise FieldError("voice", str(e)) from None
    fmt = as_str("response_format", body.get("response_format") or "mp3", 16)
    if fmt not in FORMATS:
        raise FieldError("response_format", f"response_format must be one of {', '.join(FORMATS)}")
    codec, media_type, rate = FORMATS[fmt]
    try:
        check_available(codec)
    except Exception as e:  # noqa: BLE001
        raise FieldError("response_format", str(e)) from None
    stream_format = as_str("stream_format", body.get("stream_format") or "audio", 16)
    if stream_format not in STREAM_FORMATS:
        raise FieldError("stream_format", "stream_format must be audio or sse")
    speed = as_float("speed", body.get("speed", 1.0))
    if not SPEED_LIMITS[0] <= speed <= SPEED_LIMITS[1]:
        raise FieldError("speed", f"speed must be in [{SPEED_LIMITS[0]}, {SPEED_LIMITS[1]}]")
    speed = min(max(speed, SPEED_RANGE[0]), SPEED_RANGE[1])
    if body.get("instructions") is not None:
        as_str("instructions", body["instructions"], MAX_INPUT_CHARS)
    seed = body.get("seed")
    if seed is not None:
        seed = as_int("seed", seed)
        if not 0 <= seed <= MAX_SEED:
            raise FieldError("seed", f"seed must be in [0, {MAX_SEED}]")
    language = body.get("language") or ""
    if language:
        language = as_str("language", language, MAX_LANGUAGE_CHARS).strip().lower()
        if language not in state.models.get(model_id).languages:
            raise FieldError("language", f"unknown language {shown(language)}")
    sampling = SamplingOptions(seed=seed)
    sampling = dataclasses.replace(sampling, seed=sampling.resolved_seed())
    options = SynthesisOptions(sampling=sampling, speed=speed, max_audio_seconds=state.config.max_audio_seconds)
    r = SynthesisRequest(request_id, voice_id, language, "cut5", options, "pcm_s16le", 0 if rate == C.SAMPLE_RATE else rate,
                         model_id)
    return SpeechRequest(r, text, codec, media_type, rate, stream_format == "sse")


def model_of(name: str, state) -> str:
    """The served model id ``model`` names ("" = the default model); 404 for an unknown name."""
    if name in state.models.models:
        return name
    if name in DEFAULT_ALIASES or len(state.models.models) == 1:
        return ""
    raise RequestError(Code.NOT_FOUND, f"unknown model {shown(name)}: GET /v1/models lists this server's models")


def _model_entry(d: dict, created: int) -> dict:
    return {"id": d["model_id"], "object": "model", "created": created, "owned_by": "gsv",
            "version": d["version"], "resident": d["resident"], "default": d["default"]}


def _sse(event: dict) -> bytes:
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


async def _sse_events(audio, meta: dict, text: str):
    async for data in audio:
        yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    s = meta.get("summary")
    tokens = s.semantic_tokens if s is not None else 0
    yield _sse({"type": "speech.audio.done",
                "usage": {"input_tokens": len(text), "output_tokens": tokens, "total_tokens": len(text) + tokens}})


class OpenAIDoor:
    def __init__(self, state, door: FrontDoor):
        self.s, self.door = state, door

    async def speech(self, request: Request):
        t0 = time.monotonic()
        call = HttpCall(self.s, METHOD, OPENAI)
        try:
            owner = self.door.owner(authorization(request))
            deadline = deadline_of(request.headers)
            sp = parse(await json_body(request), self.s, request_id_of(request.headers))
            self.door.named(sp.request)
        except Exception as e:  # noqa: BLE001 - mapped, counted and rendered in OpenAI's shape
            return call.error_response(e)
        meta = {"headers": {}}
        events = self.door.synthesize(sp.request, sp.text, owner, method=METHOD, t0=t0, deadline=deadline)
        audio = encoded_audio(self.s, events, make_encoder(sp.codec, sp.rate, stream=True), True, meta)
        if not sp.sse:
            return SynthesisResponse(call, audio, sp.media_type, meta["headers"])
        return SynthesisResponse(call, _sse_events(audio, meta, sp.text), "text/event-stream", meta["headers"],
                                 trailer=lambda failure: _sse({"type": "error", **error_body(OPENAI, failure)}))

    async def models(self, request: Request):
        async def run():
            self.door.owner(authorization(request))
            created = int(self.s.started_at)
            listed = [_model_entry(d, created) for d in self.s.models.describe() if not d["error"]]
            listed.sort(key=lambda m: not m["default"])  # the default model first
            if "model" not in request.path_params:
                return JSONResponse({"object": "list", "data": listed})
            found = [m for m in listed if m["id"] == request.path_params["model"]]
            if not found:
                raise RequestError(Code.NOT_FOUND, f"unknown model {shown(request.path_params['model'])}")
            return JSONResponse(found[0])

        return await handle(HttpCall(self.s, "OpenAIModels", OPENAI), run)

    async def voices(self, request: Request):
        async def run():
            owner = self.door.owner(authorization(request))
            metas = await self.door.in_voice_pool(self.s.registry.list, owner, "")
            data = [{"id": m["voice_id"], "object": "voice", "name": m.get("display_name") or m["voice_id"],
                     "language": m.get("language", ""), "created": int(m.get("created", 0))} for m in metas]
            # "voices": the plain id list some OpenAI-compatible servers (Kokoro-FastAPI) return
            return JSONResponse({"object": "list", "data": data, "voices": [d["id"] for d in data]})

        return await handle(HttpCall(self.s, "OpenAIVoices", OPENAI), run)
