"""What every HTTP route shares: the HTTP side of the one error mapping, request reading, typed
field parsing, and the streaming response that cancels its synthesis when the client goes away.

Errors are mapped once (:func:`server.errors.report`: the canonical code, its count in
``tts_requests_total{method, code}``, a fault's log line) and only *rendered* per door: upstream
``/tts`` as ``{"message", "Exception"}``, OpenAI as ``{"error": {"message", "type", "param",
"code"}}``, both with the code's HTTP status (``Code.http_status``), ``Retry-After`` (+
``retry-after-ms``, which the OpenAI SDK honours) when the server gives a retry hint (429 when full,
503 while starting) and ``WWW-Authenticate`` on 401.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import math
import time
import uuid
from typing import AsyncIterator, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from server.convert import MAX_REQUEST_ID_CHARS
from server.errors import CallInfo, Code, RequestError, begin_call, report
from server.frontdoor import Audio, Started

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # a JSON request body (text is capped far below this)
UPSTREAM, OPENAI = "upstream", "openai"
DEADLINE_HEADER = "x-request-timeout"  # optional: seconds the client will wait (the gRPC deadline's twin)

_OPENAI_TYPE = {Code.UNAUTHENTICATED: "authentication_error", Code.PERMISSION_DENIED: "permission_error",
                Code.RESOURCE_EXHAUSTED: "rate_limit_error", Code.INTERNAL: "server_error",
                Code.UNAVAILABLE: "server_error", Code.DEADLINE_EXCEEDED: "server_error"}


class FieldError(RequestError):
    """INVALID_ARGUMENT about one request field (OpenAI's ``param``)."""

    def __init__(self, param: str, message: str):
        super().__init__(Code.INVALID_ARGUMENT, message)
        self.param = param


# ------------------------------------------------------------------------------------ errors
def error_body(style: str, failure: RequestError) -> dict:
    if style == OPENAI:
        code = "invalid_api_key" if failure.code is Code.UNAUTHENTICATED else failure.code.name.lower()
        return {"error": {"message": failure.message, "type": _OPENAI_TYPE.get(failure.code, "invalid_request_error"),
                          "param": getattr(failure, "param", None), "code": code}}
    return {"message": failure.message, "Exception": failure.code.name}


def error_headers(failure: RequestError) -> dict[str, str]:
    headers = {}
    if failure.retry_after_ms:
        headers["retry-after"] = str(max(1, math.ceil(failure.retry_after_ms / 1000)))
        headers["retry-after-ms"] = str(failure.retry_after_ms)
    if failure.code is Code.UNAUTHENTICATED:
        headers["www-authenticate"] = "Bearer"
    return headers


def error_response(style: str, failure: RequestError) -> JSONResponse:
    return JSONResponse(error_body(style, failure), status_code=failure.code.http_status,
                        headers=error_headers(failure))


class HttpCall:
    """One HTTP request's scope: its id and method for logs and metrics, counted exactly once."""

    def __init__(self, state, method: str, style: str):
        self.metrics, self.style = state.metrics, style
        self.info: CallInfo = begin_call(method)
        self._counted = False

    def ok(self) -> None:
        if not self._counted:
            self._counted = True
            self.metrics.count_request(self.info.method, "OK", self.info.model)

    def fail(self, exc: BaseException) -> RequestError:
        failure = report(exc, self.info, self.metrics) if not self._counted else None
        self._counted = True
        return failure or RequestError(Code.INTERNAL, "internal error")

    def error_response(self, exc: BaseException) -> JSONResponse:
        return error_response(self.style, self.fail(exc))


async def handle(call: HttpCall, handler) -> Response:
    """Run a non-streaming route handler; any exception becomes the door's error response."""
    try:
        response = await handler()
    except Exception as e:  # noqa: BLE001 - every outcome is mapped and counted here
        return call.error_response(e)
    call.ok()
    return response


# ------------------------------------------------------------------------------------ reading
def authorization(request) -> str | None:
    return request.headers.get("authorization")


def deadline_of(headers) -> float | None:
    """The monotonic deadline from ``X-Request-Timeout: <seconds>`` (None: no deadline)."""
    value = headers.get(DEADLINE_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise RequestError(Code.INVALID_ARGUMENT, f"{DEADLINE_HEADER} must be a positive number of seconds")
    return time.monotonic() + seconds


async def json_body(request: Request) -> dict:
    """The request's JSON object (INVALID_ARGUMENT if it is too big, not JSON or not an object)."""
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY_BYTES:
        raise RequestError(Code.INVALID_ARGUMENT, f"request body is {size} bytes; the limit is {MAX_BODY_BYTES}")
    data = bytearray()
    try:
        async for part in request.stream():
            data += part
            if len(data) > MAX_BODY_BYTES:
                raise RequestError(Code.INVALID_ARGUMENT, f"request body is over the limit of {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:
        raise RequestError(Code.CANCELLED, "the client went away while sending its request") from None
    try:
        body = json.loads(bytes(data)) if data.strip() else None
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(Code.INVALID_ARGUMENT, f"request body is not valid JSON ({type(e).__name__})") from None
    if not isinstance(body, dict):
        raise RequestError(Code.INVALID_ARGUMENT, "request body must be a JSON object")
    return body


# ------------------------------------------------------------------------------------ typed fields
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def as_str(name: str, value, limit: int) -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"{name} must be a string")
    if len(value) > limit:
        raise FieldError(name, f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def as_int(name: str, value) -> int:
    """An integer from JSON (a number without fraction) or from a query string."""
    if isinstance(value, bool):
        raise FieldError(name, f"{name} must be an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    if isinstance(value, int):
        return value
    raise FieldError(name, f"{name} must be an integer")


def as_float(name: str, value) -> float:
    if isinstance(value, bool):
        raise FieldError(name, f"{name} must be a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise FieldError(name, f"{name} must be a number") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(name, f"{name} must be a finite number")
    return float(value)


def as_bool(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise FieldError(name, f"{name} must be true or false")


# ------------------------------------------------------------------------------------ streaming
class _Abandoned:
    """Marks (per request task) a response cut on purpose after its headers were sent, so uvicorn's
    "returned without completing response" line is not logged as a server error: the failure was
    already mapped, counted and logged by :class:`HttpCall`."""

    flag: contextvars.ContextVar[bool] = contextvars.ContextVar("gsv_http_abandoned", default=False)

    @classmethod
    def filter(cls, record: logging.LogRecord) -> bool:
        return not (cls.flag.get() and "without completing response" in record.getMessage())


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if _Abandoned.filter not in logger.filters:
        logger.addFilter(_Abandoned.filter)


class SynthesisResponse(Response):
    """Streams ``body`` — an async iterator of bytes whose *first* item is produced only after the
    request was admitted and its first audio exists — as a chunked 200 response.

    * An error before the first item is an ordinary error response with its status code.
    * An error after it cuts the connection (a truncated chunked body, which HTTP clients report as
      an error), or, when ``trailer`` is given, sends ``trailer(failure)`` and ends the body cleanly
      (server-sent events carry their own error event).
    * The client going away (``http.disconnect``) cancels the body at once, whatever it is waiting
      for, so its engine Session ends and its admission ticket is returned.

    ``headers`` may be filled in by ``body`` before its first item (e.g. the seed it used).
    """

    def __init__(self, call: HttpCall, body: AsyncIterator[bytes], media_type: str, headers: dict[str, str],
                 trailer: Callable[[RequestError], bytes] | None = None):
        self.call, self.chunks, self.trailer = call, body, trailer
        self.status_code, self.media_type, self.extra_headers = 200, media_type, headers

    async def __call__(self, scope, receive, send) -> None:
        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass

        streaming = asyncio.ensure_future(self._stream(scope, receive, send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({streaming, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not streaming.done():
                streaming.cancel()  # the client is gone (or the server stops): end the synthesis now
            try:
                abandoned = await streaming
            except asyncio.CancelledError:
                abandoned = False
        if abandoned:
            _Abandoned.flag.set(True)

    async def _stream(self, scope, receive, send) -> bool:
        """Send the response; True when it was cut after its headers (the failure is counted)."""
        try:
            try:
                first = await anext(self.chunks, b"")
            except asyncio.CancelledError:
                self.call.fail(asyncio.CancelledError())
                raise
            except Exception as e:  # noqa: BLE001 - mapped, counted and rendered by the door's style
                await self.call.error_response(e)(scope, receive, send)
                return False
            self.init_headers(self.extra_headers)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if first:
                await send({"type": "http.response.body", "body": first, "more_body": True})
            try:
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except asyncio.CancelledError:
                self.call.fail(asyncio.CancelledError())
                raise
            except Exception as e:  # noqa: BLE001
                failure = self.call.fail(e)
                if self.trailer is None:
                    log.info("%s request %s: stream cut after its start: %s %s", self.call.info.method,
                             self.call.info.request_id, failure.code.name, failure.message)
                    return True
                await send({"type": "http.response.body", "body": self.trailer(failure), "more_body": True})
            else:
                self.call.ok()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return False
        finally:
            await self.chunks.aclose()


# ------------------------------------------------------------------------------------ encoding
def request_id_of(headers) -> str:
    """The client's ``X-Request-Id`` (echoed in logs, errors and the response), else a new one."""
    rid = headers.get("x-request-id", "")
    if len(rid) > MAX_REQUEST_ID_CHARS:
        raise RequestError(Code.INVALID_ARGUMENT, f"x-request-id is longer than {MAX_REQUEST_ID_CHARS} characters")
    return rid or uuid.uuid4().hex


async def encoded_audio(state, events, encoder, stream: bool, meta: dict) -> AsyncIterator[bytes]:
    """The bytes of a front-door event stream in ``encoder``'s format.

    Nothing is yielded before the first audio is encoded (a container header goes out with it), so
    an error before that still gets its status code.  ``stream=False`` yields one body at the end.
    ``meta`` receives ``headers`` (request id, seed, rate: set before the first bytes) and
    ``summary`` (the :class:`server.frontdoor.Summary`, at the end).  Real codecs run in the encode
    pool, one call at a time per request, off the event loop.
    """
    loop = asyncio.get_running_loop()

    async def run(fn, *args):
        return await loop.run_in_executor(state.encode_pool, fn, *args) if encoder.heavy else fn(*args)

    pending = bytearray()
    async with contextlib.aclosing(events):
        async for ev in events:
            if isinstance(ev, Audio):
                pending += await run(encoder.encode, ev.samples)
                if stream and pending:
                    yield bytes(pending)
                    pending.clear()
            elif isinstance(ev, Started):
                meta["headers"].update({"x-request-id": ev.request_id, "x-seed": str(ev.seed),
                                        "x-sample-rate": str(encoder.rate), "x-model-id": ev.model_id})
                pending += encoder.start()
            else:
                meta["summary"] = ev
    pending += await run(encoder.finish)
    if pending:
        yield bytes(pending)
