"""Where exceptions become gRPC status codes: one table, and the decorators that
apply it to every RPC (count the call by status, log it once, abort with the message)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from service.api import logs
from service.api.bridge import Cancelled
from service.errors import InputError, NotAllowed, NotFoundError, NotReady, OverBudget, Undecodable, UploadStalled
from service.models.batcher import QueueFull


class RequestError(Exception):
    """An error that carries its own status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (Undecodable, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OverBudget, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (UploadStalled, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReady, grpc.StatusCode.UNAVAILABLE),
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


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on ``time.monotonic``'s clock (None: none), read at its start:
    once the call has ended, the context no longer says."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def gone(deadline: float | None) -> grpc.StatusCode:
    """Why a call ended from the client's side: its deadline passed, or it cancelled."""
    passed = deadline is not None and time.monotonic() >= deadline - 0.05  # the server learns a little late
    return grpc.StatusCode.DEADLINE_EXCEEDED if passed else grpc.StatusCode.CANCELLED


def request_id(metadata: Any) -> str | None:
    """The client's ``x-request-id`` (call metadata), if it sent a usable one."""
    for key, value in metadata or ():
        if key == "x-request-id" and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return None


Record = Callable[[Any, str, grpc.StatusCode], None]  # (servicer, method, code)


@contextlib.asynccontextmanager
async def answered(record: Record, servicer: Any, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Around one RPC: an exception becomes its status and message (``context.abort``),
    a client that went away counts as CANCELLED or DEADLINE_EXCEEDED, and the outcome
    is counted and logged once (with the request id, sent back as trailing metadata)."""
    call = logs.CallLog(method)
    call.request_id = request_id(context.invocation_metadata()) or call.request_id
    deadline = deadline_of(context)
    # Each RPC runs in a task of its own, so the variable needs no reset: a streaming
    # call's generator may even be closed from another context, where a reset fails.
    logs.current.set(call)
    context.set_trailing_metadata((("x-request-id", call.request_id),))
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):  # cancelled, or its stream closed by gRPC
        if getattr(servicer, "cut_off", False):  # the server's shutdown cut it off after its grace period
            code, why = grpc.StatusCode.UNAVAILABLE, "cut off by the server's shutdown (its --grace period ended)"
        else:
            code, why = gone(deadline), "the client went away"
        record(servicer, method, code)
        logs.rpc_done(call, code.name, why)
        raise
    except Exception as e:
        code = status_of(e)
        if isinstance(e, Cancelled):
            code = gone(deadline)  # the tile's windows stopped because the client left: say why it left
        record(servicer, method, code)
        # An INTERNAL error is ours: its line carries the traceback.
        logs.rpc_done(call, code.name, str(e), e if code == grpc.StatusCode.INTERNAL else None)
        await context.abort(code, str(e))
    else:
        record(servicer, method, grpc.StatusCode.OK)
        logs.rpc_done(call, "OK")


def unary(record: Record) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Decorate a unary handler with :func:`answered`."""

    def wrap(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with answered(record, self, handler.__name__, context):
                if isinstance(request, Undecodable):
                    raise request
                return await handler(self, request, context)

        return call

    return wrap


def streaming(record: Record) -> Callable[[Callable[..., AsyncGenerator[Any, None]]], Callable[..., AsyncIterator[Any]]]:
    """Decorate a handler that streams its replies with :func:`answered`."""

    def wrap(handler: Callable[..., AsyncGenerator[Any, None]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(handler)
        async def call(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with answered(record, self, handler.__name__, context):
                # aclosing: a stream closed early closes the handler's generator now, so its
                # clean-up runs in order instead of whenever the garbage collector gets to it.
                async with contextlib.aclosing(handler(self, request, context)) as replies:
                    async for reply in replies:
                        yield reply

        return call

    return wrap
