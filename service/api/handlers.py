"""The Segmentation service's method table, registered with tolerant deserializers.

gRPC's generated registration parses requests with ``FromString``; bytes that do not
parse end the call before any handler runs, as UNKNOWN (unary) or INTERNAL
(streaming). Here a parse failure becomes an :class:`~service.errors.Undecodable`
value handed to the handler, which answers INVALID_ARGUMENT, counted and logged like
any other bad request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from service._pb import footprints_pb2 as pb
from service.errors import Undecodable

SERVICE = pb.DESCRIPTOR.services_by_name["Segmentation"].full_name


def tolerant(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as e:
            return Undecodable(f"the request is not a valid {message.DESCRIPTOR.name} message ({len(data)} bytes): {e}")

    return parse


def register(servicer: Any, server: grpc.aio.Server) -> None:
    handlers = {
        "SegmentTile": grpc.stream_stream_rpc_method_handler(
            servicer.SegmentTile, tolerant(pb.SegmentTileRequest), pb.SegmentTileResponse.SerializeToString
        ),
        "InferWindows": grpc.unary_unary_rpc_method_handler(
            servicer.InferWindows, tolerant(pb.InferWindowsRequest), pb.InferWindowsResponse.SerializeToString
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, tolerant(pb.ListModelsRequest), pb.ListModelsResponse.SerializeToString
        ),
        "GetModel": grpc.unary_unary_rpc_method_handler(
            servicer.GetModel, tolerant(pb.GetModelRequest), pb.ModelInfo.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
