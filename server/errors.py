"""The one error mapping of the server, shared by every door (gRPC, HTTP, WebSocket).

Every exception a request can end with becomes a :class:`RequestError` through :func:`failure_of`:

* the voice database being unreachable (:class:`gsv.errors.StoreUnreachable`) is ``UNAVAILABLE``
  with a retry hint;
* bad input — a :class:`gsv.errors.GsvError` (text, options, audio, voice), a message that does not
  parse (invalid UTF-8 in a string field, truncated bytes) — is ``INVALID_ARGUMENT``; unknown and
  existing voices are ``NOT_FOUND`` / ``ALREADY_EXISTS``;
* a :class:`RequestError` raised on purpose (overload, auth, draining, slow reader, ...) keeps its code;
* the client going away is ``CANCELLED``;
* anything else is a fault of the server: ``INTERNAL`` with a request id and no internals, logged
  once with its traceback by the door.

Messages are built from :func:`shown` values (user strings cut to a short preview) and capped at
:data:`MAX_MESSAGE_CHARS`, so an error can never outgrow a transport's header/trailer limit
(gRPC clients drop a status whose trailer exceeds 16 KiB and report RESOURCE_EXHAUSTED instead).
"""
from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import uuid
from dataclasses import dataclass, field

from gsv.errors import GsvError, StoreUnreachable, VoiceExists, VoiceIncompatible, VoiceNotFound, VoiceUnavailable

__all__ = ["Code", "RequestError", "VoiceNotFound", "VoiceExists", "VoiceIncompatible", "VoiceUnavailable", "StoreUnreachable", "Undecodable",
           "shown", "failure_of", "CallInfo", "begin_call", "set_request_id", "is_fault", "report"]

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 512
STORE_RETRY_AFTER_MS = 1000  # retry hint while the voice database is unreachable
SHOWN_CHARS = 40


class Code(enum.Enum):
    """Canonical status codes (gRPC names) with the HTTP status a web door answers."""

    OK = 200
    CANCELLED = 499
    INVALID_ARGUMENT = 400
    DEADLINE_EXCEEDED = 504
    NOT_FOUND = 404
    ALREADY_EXISTS = 409
    PERMISSION_DENIED = 403
    RESOURCE_EXHAUSTED = 429
    FAILED_PRECONDITION = 412
    INTERNAL = 500
    UNAVAILABLE = 503
    UNAUTHENTICATED = 401

    @property
    def http_status(self) -> int:
        return self.value


class RequestError(Exception):
    """A request ends with ``code`` and ``message``; ``retry_after_ms`` tells a client when to retry."""

    def __init__(self, code: Code, message: str, retry_after_ms: int | None = None):
        message = message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.code, self.message, self.retry_after_ms = code, message, retry_after_ms


class Undecodable(Exception):
    """A request message that does not parse (e.g. invalid UTF-8 in a string field)."""


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to a short preview: user strings are echoed only this way."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "…"


def failure_of(exc: BaseException, request_id: str | None = None) -> RequestError:
    """The one mapping from an exception to the status a client sees."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return RequestError(Code.CANCELLED, "request cancelled")
    if isinstance(exc, StoreUnreachable):  # the voice database is down: retry later (cached voices still work)
        return RequestError(Code.UNAVAILABLE, str(exc), STORE_RETRY_AFTER_MS)
    if isinstance(exc, VoiceNotFound):
        return RequestError(Code.NOT_FOUND, str(exc))
    if isinstance(exc, VoiceExists):
        return RequestError(Code.ALREADY_EXISTS, str(exc))
    if isinstance(exc, VoiceUnavailable):
        return RequestError(Code.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, GsvError):
        return RequestError(Code.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, (Undecodable, UnicodeDecodeError)):
        return RequestError(Code.INVALID_ARGUMENT, "the request is not a valid message (e.g. invalid UTF-8 in a "
                                                   "string field)")
    return RequestError(Code.INTERNAL, f"internal error (request id {request_id or 'unknown'})")


@dataclass
class CallInfo:
    """What the error mapping knows about the request being handled (set by the door and handler)."""

    method: str
    # every call has an id for its logs and fault messages; synthesis replaces it by the client's
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    model: str | None = None  # the served model the request resolved to (metrics and logs)


_CURRENT: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("gsv_call", default=None)


def begin_call(method: str) -> CallInfo:
    """Start a request's scope (called by a door before its handler runs)."""
    info = CallInfo(method)
    _CURRENT.set(info)
    return info


def set_request_id(request_id: str) -> None:
    """Name the current request, so a fault's status and log line carry its id."""
    info = _CURRENT.get()
    if info is not None:
        info.request_id = request_id


def set_model(model_id: str) -> None:
    """Record the model the current request uses (its metrics and log lines carry it)."""
    info = _CURRENT.get()
    if info is not None:
        info.model = model_id


def is_fault(exc: BaseException) -> bool:
    """True when ``exc`` is a server fault (INTERNAL) that no request validation explains."""
    return failure_of(exc).code is Code.INTERNAL and not isinstance(exc, RequestError)


def report(exc: BaseException, info: CallInfo, metrics) -> RequestError:
    """Map one failed call for any door: count it in ``tts_requests_total{method, code}`` with the
    code its client receives, log a server fault once with its traceback, and return the failure
    the door sends."""
    failure = failure_of(exc, info.request_id)
    metrics.count_request(info.method, failure.code.name, info.model)
    if is_fault(exc):
        log.error("%s request %s (model %s) failed", info.method, info.request_id, info.model, exc_info=exc)
    elif failure.code is Code.INTERNAL:
        log.warning("%s request %s (model %s): %s", info.method, info.request_id, info.model, failure.message)
    return failure
