"""The gRPC side of the one error mapping: an interceptor that wraps every TextToSpeech handler.

For each RPC it: parses requests leniently (a message that does not decode — e.g. invalid UTF-8
in a string field — becomes INVALID_ARGUMENT instead of grpcio's UNKNOWN), maps whatever the
handler raises through :func:`server.errors.failure_of`, logs a server fault once with its
traceback, sets the retry hint trailer, and counts the outcome in ``tts_requests_total`` with the
code the client actually receives.  Handlers therefore only raise; they never call ``abort``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from server.errors import Code, Undecodable, begin_call, report

log = logging.getLogger(__name__)

GRPC_CODE = {c: getattr(grpc.StatusCode, c.name) for c in Code}


class _BadMessage:
    """Stands in for a request message that did not parse."""

    def __init__(self, error: Exception):
        self.error = error


def _lenient(deserializer):
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as e:  # noqa: BLE001 - any parse failure is the client's bad input
            return _BadMessage(e)

    return parse


def _checked(request):
    if isinstance(request, _BadMessage):
        raise Undecodable(str(request.error)) from None
    return request


async def _checked_stream(requests):
    async for request in requests:
        yield _checked(request)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics, service: str):
        self.metrics, self.prefix = metrics, f"/{service}/"
        self.active = 0  # handlers running (the server waits for them to unwind before its loop ends)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefix):
            return handler
        method = details.method[len(self.prefix):]
        deser, ser = _lenient(handler.request_deserializer), handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), deser, ser)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream, False), deser, ser)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream, True), deser, ser)
        return handler  # (no client-streaming RPCs in this service)

    def _unary(self, method, behavior):
        async def run(request, context):
            info = begin_call(method)
            self.active += 1
            try:
                response = await behavior(_checked(request), context)
            except BaseException as e:  # noqa: BLE001 - every outcome is mapped and counted here
                await self._fail(method, info, e, context)
                raise
            finally:
                self.active -= 1
            self._count(method, "OK", info)
            return response

        return run

    def _stream(self, method, behavior, request_streaming: bool):
        async def run(request, context):
            info = begin_call(method)
            self.active += 1
            try:
                arg = _checked_stream(request) if request_streaming else _checked(request)
                # aclosing: the handler's own cleanup (cancel the session, free its admission
                # ticket) runs now, also when the client went away mid-stream
                async with contextlib.aclosing(behavior(arg, context)) as responses:
                    async for msg in responses:
                        yield msg
            except GeneratorExit:
                self._count(method, "CANCELLED", info)
                raise
            except BaseException as e:  # noqa: BLE001
                await self._fail(method, info, e, context)
                raise
            finally:
                self.active -= 1
            self._count(method, "OK", info)

        return run

    async def _fail(self, method: str, info, e: BaseException, context) -> None:
        """Count, log and send the status of a failed call (raises AbortError when it sends one)."""
        if isinstance(e, grpc.aio.AbortError):  # already sent by someone else; count what was sent
            code = context.code() if hasattr(context, "code") else None
            self._count(method, getattr(code, "name", "UNKNOWN"), info)
            return
        failure = report(e, info, self.metrics)
        if isinstance(e, asyncio.CancelledError):
            return  # the client is gone (or the server stops): nothing to send
        if failure.retry_after_ms:
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(failure.retry_after_ms)),))
        await context.abort(GRPC_CODE[failure.code], failure.message)

    def _count(self, method: str, code: str, info) -> None:
        self.metrics.count_request(method, code, info.model)
