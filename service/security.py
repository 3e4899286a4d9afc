"""Transport security: TLS and mutual TLS for the server, its clients and its links to
model servers, and an optional bearer-token check.

Tokens: ``serve --tokens-file F`` (one token per line, ``#`` comments) makes every
Segmentation call carry ``authorization: Bearer <token>`` metadata; a call without a
known token gets UNAUTHENTICATED. Health checks stay open (orchestrators probe them
without credentials). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .errors import InputError

OPEN_SERVICES = ("/grpc.health.v1.Health/",)


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the {what} {path}: {e.strerror}") from None


def read_tokens(path: Path) -> list[str]:
    data = _read(path, "tokens file")
    assert data is not None
    tokens = [line.strip() for line in data.decode().splitlines() if line.strip() and not line.startswith("#")]
    if not tokens:
        raise InputError(f"the tokens file {path} holds no token")
    return tokens


def read_token(path: Path) -> str:
    """A client's token: the first in the file."""
    return read_tokens(path)[0]


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with ``client_ca``, mutual TLS (clients
    must present a certificate that CA signed)."""
    pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
    ca = _read(client_ca, "client CA")
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client (ours, or the server's link to its model servers) connects."""

    ca: Path | None = None  # the CA that signed the server's certificate (TLS when set)
    cert: Path | None = None  # this client's certificate and key (mutual TLS)
    key: Path | None = None
    token: str | None = None  # sent as a bearer token

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(address, options=options)
        if (self.cert is None) != (self.key is None):
            raise InputError("a client certificate needs its key, and a key its certificate")
        creds = grpc.ssl_channel_credentials(
            _read(self.ca, "CA certificate"), _read(self.key, "TLS key"), _read(self.cert, "TLS certificate")
        )
        return grpc.secure_channel(address, creds, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


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
