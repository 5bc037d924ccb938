"""WebSocket ``/v1/ws/synthesize``: the BidiSynthesize session for engines without gRPC (Unity
WebGL, Godot, browsers).  The protocol is specified in ``protos/tts/v1/websocket.md``.

The first message is the synthesis config as JSON — the fields of ``SynthesisConfig`` flattened,
converted to the protobuf message and validated by the same code as gRPC
(:func:`server.convert.synthesis_from_pb`) — then ``{"text": ..., "flush": ..., "close": ...}``
messages.  The server sends a ``start`` event, then per chunk a ``chunk`` event followed by one
binary frame of PCM, then a ``summary`` event and closes (1000).  An error is an ``error`` event,
then a close with code 4000 + the HTTP status of the error (4400, 4401, 4404, 4429, 4503, ...).
A client that goes away mid-stream cancels its request (the engine row is freed at once).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from protos.tts.v1 import tts_pb2 as pb
from server import convert
from server.audio_format import encode_pcm
from server.errors import Code, RequestError, begin_call, report, shown
from server.frontdoor import Audio, FrontDoor, Started
from server.web.common import deadline_of

log = logging.getLogger(__name__)

METHOD = "WebSocketSynthesize"
SAMPLING = ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
CONFIG = {"voice_id": str, "language": str, "encoding": str, "sample_rate_hz": int, "latency_mode": str,
          "text_split": str, "speed": float, "max_audio_seconds": float, "request_id": str, "temperature": float,
          "top_k": int, "top_p": float, "repetition_penalty": float, "seed": int, "token": str, "model_id": str,
          "model": str}
LATENCY_PB = {"balanced": pb.BALANCED, "lowest": pb.LOWEST_LATENCY, "quality": pb.HIGHEST_QUALITY}
SPLIT_PB = {f"cut{i}": getattr(pb, f"CUT{i}") for i in range(6)}
MAX_MESSAGE_BYTES = 256 * 1024  # uvicorn refuses bigger frames (close 1009)
CLOSE_OK, CLOSE_ERROR_BASE = 1000, 4000


class ClientGone(Exception):
    """The WebSocket client disconnected (its request is cancelled)."""


def _bad(message: str) -> RequestError:
    return RequestError(Code.INVALID_ARGUMENT, message)


def _typed(name: str, value, kind):
    ok = (isinstance(value, kind) and not isinstance(value, bool)) or (kind is float and isinstance(value, int)
                                                                        and not isinstance(value, bool))
    if not ok:
        raise _bad(f"config.{name} must be {'a string' if kind is str else 'an integer' if kind is int else 'a number'}")
    return value


def config_pb(msg: dict) -> pb.SynthesisConfig:
    """The JSON config -> SynthesisConfig (then validated by :func:`server.convert.synthesis_from_pb`)."""
    unknown = sorted(set(msg) - set(CONFIG))
    if unknown:
        raise _bad(f"unknown config field(s): {', '.join(shown(u) for u in unknown[:5])}")
    v = {k: _typed(k, msg[k], CONFIG[k]) for k in msg if msg[k] is not None}
    if "model" in v and "model_id" in v and v["model"] != v["model_id"]:
        raise _bad("config.model and config.model_id name different models (model is an alias of model_id)")
    cfg = pb.SynthesisConfig(voice_id=v.get("voice_id", ""), language=v.get("language", ""),
                             request_id=v.get("request_id", ""), model_id=v.get("model_id", v.get("model", "")))
    try:
        cfg.output.encoding = convert.ENCODING_PB[v.get("encoding", "pcm_s16le")]
        cfg.latency_mode = LATENCY_PB[v.get("latency_mode", "balanced")]
        cfg.text_split = SPLIT_PB[v.get("text_split", "cut5")]
    except KeyError as e:
        raise _bad(f"unknown value {shown(e.args[0])} (encoding: pcm_s16le | pcm_f32le; latency_mode: "
                   "balanced | lowest | quality; text_split: cut0-cut5)") from None
    if cfg.output.encoding == pb.WAV:
        raise _bad("a WebSocket stream sends PCM: encoding pcm_s16le or pcm_f32le")
    cfg.output.sample_rate_hz = v.get("sample_rate_hz", 0)
    for name in SAMPLING:
        if name in v:
            if name in ("top_k", "seed") and not -2**63 <= v[name] < 2**63:
                raise _bad(f"config.{name} is out of range")
            setattr(cfg.sampling, name, v[name])
    for name in ("speed", "max_audio_seconds"):
        if name in v:
            setattr(cfg, name, v[name])
    return cfg


class WebSocketDoor:
    def __init__(self, state, door: FrontDoor):
        self.s, self.door = state, door

    async def _message(self, ws: WebSocket, timeout: float | None = None) -> dict:
        """The next JSON object from the client (ClientGone on disconnect, INVALID_ARGUMENT otherwise)."""
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout)
        except asyncio.TimeoutError:
            raise RequestError(Code.DEADLINE_EXCEEDED, f"no config within {timeout:g} s") from None
        if msg["type"] == "websocket.disconnect":
            raise ClientGone()
        if msg.get("text") is None:
            raise _bad("messages must be JSON text, not binary")
        try:
            obj = json.loads(msg["text"])
        except ValueError:
            raise _bad("a message is not valid JSON") from None
        if not isinstance(obj, dict):
            raise _bad("a message must be a JSON object")
        return obj

    async def synthesize(self, ws: WebSocket):
        t0 = time.monotonic()
        info = begin_call(METHOD)
        await ws.accept()
        try:
            deadline = deadline_of(ws.headers)
            first = await self._message(ws, self.s.config.bidi_idle_timeout)
            header = ws.headers.get("authorization")
            token = first.pop("token", None)
            owner = self.door.owner(header if header is not None or token is None else f"Bearer {token}")
            r = self.door.named(convert.synthesis_from_pb(config_pb(first), self.s.config.max_audio_seconds, True))
            ended = [False]

            async def next_input():
                if ended[0]:
                    return None
                msg = await self._message(ws)
                extra = set(msg) - {"text", "flush", "close"}
                if extra:
                    raise _bad(f"unknown field(s) in a text message: {', '.join(sorted(map(shown, extra))[:5])}")
                text, flush, close = msg.get("text", ""), msg.get("flush", False), msg.get("close", False)
                if not isinstance(text, str) or not isinstance(flush, bool) or not isinstance(close, bool):
                    raise _bad("text must be a string; flush and close true or false")
                if close:
                    ended[0] = True
                    if not text:
                        return None
                return text, flush or close

            events = self.door.bidi(r, owner, next_input, method=METHOD, t0=t0, deadline=deadline)
            async with contextlib.aclosing(events):
                async for ev in events:
                    if isinstance(ev, Audio):
                        data = encode_pcm(ev.samples, r.encoding)
                        await ws.send_json({"type": "chunk", "sequence": ev.sequence, "start_sample": ev.start_sample,
                                            "num_samples": int(ev.samples.size), "bytes": len(data)})
                        await ws.send_bytes(data)
                    elif isinstance(ev, Started):
                        await ws.send_json({"type": "start", "request_id": ev.request_id, "seed": ev.seed,
                                            "voice_id": ev.voice_id, "voice_version": ev.voice_version,
                                            "model_id": ev.model_id, "encoding": r.encoding,
                                            "sample_rate_hz": ev.sample_rate, "channels": 1})
                    else:
                        await ws.send_json({"type": "summary", **dataclasses.asdict(ev)})
        except (ClientGone, WebSocketDisconnect, OSError):
            report(asyncio.CancelledError(), info, self.s.metrics)  # the client went away: CANCELLED
            return
        except asyncio.CancelledError:
            report(asyncio.CancelledError(), info, self.s.metrics)
            raise
        except Exception as e:  # noqa: BLE001 - mapped and counted once, sent as an error event
            failure = report(e, info, self.s.metrics)
            event = {"type": "error", "code": failure.code.name, "status": failure.code.http_status,
                     "message": failure.message}
            if failure.retry_after_ms:
                event["retry_after_ms"] = failure.retry_after_ms
            with contextlib.suppress(Exception):  # the client may be gone already
                await ws.send_json(event)
                await ws.close(CLOSE_ERROR_BASE + failure.code.http_status, failure.code.name)
            return
        self.s.metrics.count_request(METHOD, "OK", info.model)
        with contextlib.suppress(Exception):
            await ws.close(CLOSE_OK)

