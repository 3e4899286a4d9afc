"""Where exceptions become gRPC status codes: one table, and the decorators that
apply it to every RPC (count the call by status, abort with the message)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

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
]


def status_of(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, RequestError):
        return e.code
    for kind, code in STATUS:
        if isinstance(e, kind):
            return code
    return grpc.StatusCode.INTERNAL


Servicer = TypeVar("Servicer")
Record = Callable[[Any, str, grpc.StatusCode], None]  # (servicer, method, code)


def unary(record: Record) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate a unary handler: its exceptions become statuses; every call is recorded."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                reply = await handler(self, request, context)
            except asyncio.CancelledError:
                record(self, handler.__name__, grpc.StatusCode.CANCELLED)
                raise
            except Exception as e:
                record(self, handler.__name__, status_of(e))
                await context.abort(status_of(e), str(e))
            record(self, handler.__name__, grpc.StatusCode.OK)
            return reply

        return call

    return wrap


def streaming(record: Record) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """The same for a handler that streams its replies."""

    def wrap(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for reply in handler(self, request, context):
                    yield reply
            except asyncio.CancelledError:
                record(self, handler.__name__, grpc.StatusCode.CANCELLED)
                raise
            except Exception as e:
                record(self, handler.__name__, status_of(e))
                await context.abort(status_of(e), str(e))
            record(self, handler.__name__, grpc.StatusCode.OK)

        return call

    return wrap
