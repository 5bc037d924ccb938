"""Upstream GPT-SoVITS ``api_v2.py``-compatible ``GET|POST /tts``, and its global switches
(``/set_gpt_weights``, ``/set_sovits_weights``, ``/set_refer_audio``, ``/control``) answered with
how this server does those things instead.

Parameters keep upstream's names and defaults; the fields that only tune upstream's own batching
or its v3/v4 models (:data:`IGNORED`) are accepted and ignored, as are unknown fields (upstream's
request model ignores them too).  ``streaming_mode``: false/0 = the whole file at the end (each text
segment decoded whole, upstream's quality); true or 2 = our balanced streaming, 1 = the quality
mode (bigger chunks), 3 = the lowest-latency mode.  Extension: ``model`` (a model id of this
server, see ``GET /v1/models``; default: the server's default model) — upstream switches its one
global model with ``/set_gpt_weights``; here each request names its own.
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse

from gsv.sampling import MAX_SEED, SamplingOptions
from gsv.session import SynthesisOptions
from gsv.voice import VOICE_ID_RE
from server.convert import MAX_LANGUAGE_CHARS, MAX_REFERENCE_TEXT_CHARS, SynthesisRequest, check_text, model_id_of
from server.encoders import check_available, make_encoder, native_rate
from server.errors import Code, RequestError, VoiceNotFound, shown
from server.frontdoor import FrontDoor
from server.web.common import (UPSTREAM, FieldError, HttpCall, SynthesisResponse, as_bool, as_float, as_int, as_str,
                               authorization, deadline_of, encoded_audio, handle, json_body, request_id_of)

METHOD, CONTROL_METHOD = "UpstreamTts", "UpstreamControl"
MEDIA_TYPES = {"wav": "wav", "raw": "pcm", "ogg": "opus", "aac": "aac"}  # media_type -> codec
LATENCY = {1: "quality", 2: "balanced", 3: "lowest"}  # streaming_mode -> latency mode
SPLITS = tuple(f"cut{i}" for i in range(6))
IGNORED = ("batch_size", "batch_threshold", "split_bucket", "parallel_infer", "sample_steps", "super_sampling",
           "overlap_length", "min_chunk_length")
MAX_AUX_REFERENCES = 8
MAX_PATH_CHARS = 1024
# SillyTavern's GPT-SoVITS provider lists GET /speakers and then sends ref_audio_path
# "./参考音频/<speaker>.wav" (the folder name of the GPT-SoVITS fork it was written for), with the
# speaker name as prompt_text: such a path names the registered voice <speaker> if there is one,
# else the file under --ref-audio-dir (whose name is then its transcript).
SPEAKER_DIR = "参考音频"
SPEAKER_PATH = re.compile(r"(?:\./)?" + SPEAKER_DIR + r"/(?P<stem>[^/]+)\.wav")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True)
class TtsRequest:
    request: SynthesisRequest
    text: str
    ref_audio_path: str
    aux_ref_audio_paths: tuple[str, ...]
    prompt_text: str
    prompt_lang: str
    codec: str
    media_type: str  # the Content-Type
    streaming: bool


def _streaming_mode(value) -> str | None:
    """The latency mode of ``streaming_mode`` (None: not streamed)."""
    if isinstance(value, bool):
        return "balanced" if value else None
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return "balanced" if value.strip().lower() == "true" else None
    mode = as_int("streaming_mode", value)
    if mode == 0:
        return None
    if mode not in LATENCY:
        raise FieldError("streaming_mode", "streaming_mode must be false/true or 0-3")
    return LATENCY[mode]


def _language(name: str, value, languages) -> str:
    lang = as_str(name, value, MAX_LANGUAGE_CHARS).strip().lower()
    if lang not in languages:
        raise FieldError(name, f"unknown {name} {shown(lang)} (one of {', '.join(languages)})")
    return lang


def voice_id_in(ref: str) -> str:
    """The registered voice id a ``ref_audio_path`` may name ("" if it can only be a file)."""
    m = SPEAKER_PATH.fullmatch(ref)
    name = m.group("stem") if m else ref
    return name if VOICE_ID_RE.fullmatch(name) else ""


def parse(params: dict, state, request_id: str) -> TtsRequest:
    """Upstream's fields -> a validated request (INVALID_ARGUMENT naming the first bad field)."""
    model_id = model_id_of(as_str("model", params.get("model") or "", 64), "model")
    cfg, languages = state.config, state.models.get(model_id).languages
    for name in ("text", "text_lang", "ref_audio_path"):
        if params.get(name) in (None, ""):
            raise FieldError(name, f"{name} is required")
    text = check_text(as_str("text", params["text"], cfg.max_text_chars), cfg.max_text_chars)
    text_lang = _language("text_lang", params["text_lang"], languages)
    ref = as_str("ref_audio_path", params["ref_audio_path"], MAX_PATH_CHARS)
    aux = params.get("aux_ref_audio_paths") or []
    if isinstance(aux, str):
        aux = [aux]
    if not isinstance(aux, list) or len(aux) > MAX_AUX_REFERENCES:
        raise FieldError("aux_ref_audio_paths", f"aux_ref_audio_paths must be a list of at most {MAX_AUX_REFERENCES} paths")
    aux = tuple(as_str("aux_ref_audio_paths", a, MAX_PATH_CHARS) for a in aux)
    prompt_text = as_str("prompt_text", params.get("prompt_text") or "", MAX_REFERENCE_TEXT_CHARS)
    prompt_lang = params.get("prompt_lang")
    prompt_lang = _language("prompt_lang", prompt_lang, languages) if prompt_lang not in (None, "") else ""
    split = as_str("text_split_method", params.get("text_split_method", "cut5"), 8)
    if split not in SPLITS:
        raise FieldError("text_split_method", f"text_split_method must be one of {', '.join(SPLITS)}")
    seed = as_int("seed", params.get("seed", -1))
    if not -1 <= seed <= MAX_SEED:
        raise FieldError("seed", f"seed must be -1 (random) or in [0, {MAX_SEED}]")
    d = SamplingOptions()
    sampling = SamplingOptions(top_k=as_int("top_k", params.get("top_k", d.top_k)),
                               top_p=as_float("top_p", params.get("top_p", d.top_p)),
                               temperature=as_float("temperature", params.get("temperature", d.temperature)),
                               repetition_penalty=as_float("repetition_penalty",
                                                           params.get("repetition_penalty", d.repetition_penalty)),
                               seed=None if seed == -1 else seed)
    sampling = dataclasses.replace(sampling, seed=sampling.resolved_seed())
    media = as_str("media_type", params.get("media_type", "wav"), 8).lower()
    if media not in MEDIA_TYPES:
        raise FieldError("media_type", f"media_type must be one of {', '.join(MEDIA_TYPES)}")
    codec = MEDIA_TYPES[media]
    check_available(codec)
    latency = _streaming_mode(params.get("streaming_mode", False))
    dflt = SynthesisOptions()
    options = SynthesisOptions(sampling=sampling, speed=as_float("speed_factor", params.get("speed_factor", dflt.speed)),
                               fragment_interval=as_float("fragment_interval",
                                                          params.get("fragment_interval", dflt.fragment_interval)),
                               max_audio_seconds=cfg.max_audio_seconds, streaming=latency is not None,
                               latency_mode=latency or dflt.latency_mode)
    for name in IGNORED:  # accepted for compatibility; their type is still checked like upstream's model
        if params.get(name) is not None:
            (as_bool if name in ("split_bucket", "parallel_infer", "super_sampling") else as_float)(name, params[name])
    rate = native_rate(codec)
    r = SynthesisRequest(request_id, voice_id_in(ref), text_lang, split, options, "pcm_s16le",
                         0 if rate == 32000 else rate, model_id)
    return TtsRequest(r, text, ref, aux, prompt_text, prompt_lang, codec, f"audio/{media}", latency is not None)


class UpstreamDoor:
    def __init__(self, state, door: FrontDoor):
        self.s, self.door = state, door

    async def _voice(self, t: TtsRequest, owner: str, model):
        """A registered voice of the caller named ``ref_audio_path``, else a file under --ref-audio-dir
        (prepared for ``model``)."""
        if t.request.voice_id:
            try:
                voice = await self.door.voice(t.request.voice_id, owner, model)
            except VoiceNotFound:
                if not self.s.ref_files.enabled:
                    raise VoiceNotFound(f"unknown voice {shown(t.ref_audio_path)} (this server reads no reference "
                                        "files: see --ref-audio-dir)") from None
            else:
                if t.aux_ref_audio_paths:
                    raise FieldError("aux_ref_audio_paths", "aux_ref_audio_paths only go with a reference file; a "
                                                            "registered voice has its own auxiliary references")
                return voice
        await self.door.in_voice_pool(self.s.ref_files.resolve, t.ref_audio_path)  # 400 outside, 404 missing
        if not t.prompt_text.strip() or not t.prompt_lang:
            raise FieldError("prompt_text", "a reference file needs prompt_text (its transcript) and prompt_lang")
        return await self.door.in_voice_pool(lambda: self.s.ref_files.voice(
            t.ref_audio_path, t.prompt_text, t.prompt_lang, list(t.aux_ref_audio_paths), model.preparer()))

    async def tts(self, request: Request):
        t0 = time.monotonic()
        call = HttpCall(self.s, METHOD, UPSTREAM)
        try:
            owner = self.door.owner(authorization(request))
            deadline = deadline_of(request.headers)
            if request.method == "POST":
                params = await json_body(request)
            else:
                params = dict(request.query_params)
                if "aux_ref_audio_paths" in params:
                    params["aux_ref_audio_paths"] = request.query_params.getlist("aux_ref_audio_paths")
            t = parse(params, self.s, request_id_of(request.headers))
            self.door.named(t.request)
        except Exception as e:  # noqa: BLE001 - mapped, counted and rendered in upstream's shape
            return call.error_response(e)
        meta = {"headers": {}}
        events = self.door.synthesize(t.request, t.text, owner, method=METHOD, t0=t0, deadline=deadline,
                                      voice=lambda model: self._voice(t, owner, model))
        encoder = make_encoder(t.codec, native_rate(t.codec), stream=t.streaming)
        body = encoded_audio(self.s, events, encoder, t.streaming, meta)
        return SynthesisResponse(call, body, t.media_type, meta["headers"])

    async def speakers(self, request: Request):
        """``GET /speakers`` (SillyTavern's GPT-SoVITS provider): the caller's voices, then the audio
        files in ``--ref-audio-dir``/参考音频."""

        def listing(owner: str) -> list[dict]:
            names = [m["voice_id"] for m in self.s.registry.list(owner, "")]
            folder = self.s.ref_files.root / SPEAKER_DIR if self.s.ref_files.enabled else None
            if folder is not None and folder.is_dir():
                names += sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            return [{"name": n, "voice_id": n} for n in dict.fromkeys(names)]

        async def run():
            owner = self.door.owner(authorization(request))
            return JSONResponse(await self.door.in_voice_pool(listing, owner))

        return await handle(HttpCall(self.s, CONTROL_METHOD, UPSTREAM), run)

    async def control(self, request: Request):
        """The endpoints that switch upstream's global state: refused, with what to do instead."""
        call = HttpCall(self.s, CONTROL_METHOD, UPSTREAM)

        async def refuse():
            self.door.owner(authorization(request))
            path = request.url.path
            if path == "/control":
                raise RequestError(Code.PERMISSION_DENIED, "/control (restart, exit) is not available over HTTP: the "
                                                           "server stops on SIGTERM, after draining the requests in flight")
            if path == "/set_refer_audio":
                raise RequestError(Code.INVALID_ARGUMENT,
                                   "there is no global reference audio here: name the voice in each /tts request "
                                   "(ref_audio_path = a voice id registered with gsv-voices, or a file under the "
                                   "server's --ref-audio-dir)")
            raise RequestError(Code.INVALID_ARGUMENT,
                               "weights are not switched for everyone over HTTP: each /tts request names its model "
                               f"(\"model\": one of GET /v1/models; default {self.s.model_id}); a server serves the "
                               "bundles given with --bundle/--models (gsv import makes one from upstream .ckpt/.pth "
                               "files)")
            return JSONResponse({})  # (never reached)

        return await handle(call, refuse)
