"""Where exceptions become gRPC status codes: one table, and the decorators that
apply it to every RPC (count the call by status, abort with the message)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .batcher import QueueFull
from .bridge import Cancelled
from .errors import InputError, NotFoundError


class RequestError(Exception):
    """An error that carries its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    # A model server (ours or TorchServe) that died or refused: the client may retry.
    (ConnectionError, grpc.StatusCode.UNAVAILABLE),
]


def status_of(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, RequestError):
        return e.code
    for kind, code in STATUS:
        if isinstance(e, kind):
            return code
    return grpc.StatusCode.INTERNAL


Record = Callable[[Any, str, grpc.StatusCode], None]  # (servicer, method, code)


@contextlib.asynccontextmanager
async def answered(record: Record, servicer: Any, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around one RPC: an exception becomes its status and message (``context.abort``),
    a client that went away counts as CANCELLED, and the outcome is recorded once."""
    try:
        yield
    except asyncio.CancelledError:
        record(servicer, method, grpc.StatusCode.CANCELLED)
        raise
    except Exception as e:
        record(servicer, method, status_of(e))
        await context.abort(status_of(e), str(e))
    record(servicer, method, grpc.StatusCode.OK)


def unary(record: Record) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate a unary handler with :func:`answered`."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with answered(record, self, handler.__name__, context):
                return await handler(self, request, context)

        return call

    return wrap


def streaming(record: Record) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """Decorate a handler that streams its replies with :func:`answered`."""

    def wrap(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with answered(record, self, handler.__name__, context):
                async for reply in handler(self, request, context):
                    yield reply

        return call

    return wrap
