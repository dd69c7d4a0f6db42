"""One server interceptor that turns domain errors into gRPC statuses, and unexpected exceptions
into INTERNAL with a log line (never a traceback on the wire)."""

from __future__ import annotations

import inspect
import logging

import grpc

from runstream_services.errors import RunstreamServiceError

log = logging.getLogger("runstream.grpc")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler of a grpc.aio server (unary and streaming responses alike)."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, RunstreamServiceError):
        await context.abort(exc.grpc_code, exc.message)
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises this to end the call; let it through untouched.
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"


def _wrap_unary(fn, method):
    async def wrapper(request, context):
        try:
            return await fn(request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc, method)

    return wrapper


def _wrap_stream(fn, method):
    async def wrapper(request, context):
        try:
            result = fn(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:  # a coroutine that writes with context.write
                await result
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc, method)

    return wrapper
