"""The gRPC transport every side shares: message-size caps, and how a client (ours,
or a front end's link to its model servers) connects: TLS, mutual TLS, a bearer token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from service.errors import InputError

MAX_MESSAGE_BYTES = 512 * 2**20  # a batch of 2636-px windows and their float32 answers
# Channel options that lift gRPC's 4 MiB default to that size (clients, and the links to
# model servers; a server's own receive limit is its Limits.receive_bytes()).
MESSAGE_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def read_credential(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the {what} {path}: {e.strerror}") from None


def read_tokens(path: Path) -> list[str]:
    data = read_credential(path, "tokens file")
    assert data is not None
    tokens = [line.strip() for line in data.decode().splitlines() if line.strip() and not line.startswith("#")]
    if not tokens:
        raise InputError(f"the tokens file {path} holds no token")
    return tokens


def read_token(path: Path) -> str:
    """A client's token: the first in the file."""
    return read_tokens(path)[0]


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
            read_credential(self.ca, "CA certificate"),
            read_credential(self.key, "TLS key"),
            read_credential(self.cert, "TLS certificate"),
        )
        return grpc.secure_channel(address, creds, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
