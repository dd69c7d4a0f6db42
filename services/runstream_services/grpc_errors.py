"""One server interceptor that turns domain errors into gRPC statuses, and unexpected exceptions
into INTERNAL with a log line (never a traceback on the wire). Request bytes that do not decode
are answered INVALID_ARGUMENT (gRPC's own answer would be UNKNOWN, "Unexpected DecodeError");
the Ingest stream decodes its requests itself and answers each one (ingest/service.py)."""

from __future__ import annotations

import inspect
import logging

import grpc

from runstream_services.errors import InvalidArgument, RunstreamServiceError

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
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, streamed=True),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class _Undecodable:
    """Stands for request bytes the deserializer refused; the wrapped method answers it."""

    def __init__(self, why: str):
        self.why = why


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, too deep: the client's bytes
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    return parse


def _refuse_undecodable(request, method: str) -> None:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"the request is not a valid {method.rsplit('/', 1)[-1]} message ({request.why}); "
            "send it with the runstream.v1 protos"
        )


async def _checked(requests, method: str):
    async for request in requests:
        _refuse_undecodable(request, method)
        yield request


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, RunstreamServiceError):
        await context.abort(exc.grpc_code, exc.message)
    log.exception("unexpected error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises this to end the call; let it through untouched.
    return isinstance(exc, grpc.aio.AbortError) or type(exc).__name__ == "AbortError"


def _wrap_unary(fn, method, streamed: bool = False):
    async def wrapper(request, context):
        try:
            if streamed:
                request = _checked(request, method)
            else:
                _refuse_undecodable(request, method)
            return await fn(request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc, method)

    return wrapper


def _wrap_stream(fn, method):
    async def wrapper(request, context):
        try:
            _refuse_undecodable(request, method)
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
