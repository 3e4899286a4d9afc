"""The server's side of transport security: TLS and mutual TLS credentials, and an
optional bearer-token check (clients' side: :mod:`service.transport`).

Tokens: ``serve --tokens-file F`` (one token per line, ``#`` comments) makes every
Segmentation call carry ``authorization: Bearer <token>`` metadata; a call without a
known token gets UNAUTHENTICATED. Health checks stay open (orchestrators probe them
without credentials). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from service.transport import read_credential

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca``, mutual TLS (clients
    must present a certificate that CA signed)."""
    pair = (read_credential(key, "TLS key"), read_credential(cert, "TLS certificate"))
    ca = read_credential(client_ca, "client CA")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


class TokenCheck(grpc.aio.ServerInterceptor):
    """Refuses calls without a known bearer token (UNAUTHENTICATED)."""

    def __init__(self, tokens: list[str], refused: Callable[[str, Any], str]) -> None:
        self._tokens = [t.encode() for t in tokens]
        self._refused = refused  # (method, metadata) -> request id: counts and logs the refusal

    def _known(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                given = value[7:].strip().encode()
                return any(hmac.compare_digest(given, t) for t in self._tokens)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        if method.startswith(OPEN_SERVICES) or self._known(details.invocation_metadata):
            return await continuation(details)
        rid = self._refused(method, details.invocation_metadata)
        handler = await continuation(details)
        return _refusal(handler, rid)


REFUSAL = "missing or unknown bearer token: send 'authorization: Bearer <token>' metadata"


def _refusal(handler: grpc.RpcMethodHandler | None, request_id: str) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> None:
        context.set_trailing_metadata((("x-request-id", request_id),))
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> None:
        context.set_trailing_metadata((("x-request-id", request_id),))
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)

    if handler is None or not handler.request_streaming and not handler.response_streaming:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(stream)
    return grpc.unary_stream_rpc_method_handler(unary)
