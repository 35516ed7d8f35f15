"""The lease service's unary gRPC calls, independent of the server that carries them: the method table,
request parsing, input checks, the token from the `authorization` metadata and the edge core's mapping of
every outcome to a gRPC status (app.api.core), for the gRPC port's own HTTP/2 front (app/api/grpc_front.py),
which answers every method of the lease service itself."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from app.api.core import GRPC, map_error
from app.api.hygiene import BadInput, check_message
from proto.intrinsic_proto.vmpoolleaseapi.v1 import lease_api_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["VMPoolLeaseService"].full_name
OPEN_METHODS = {"Ping"}

# RPC name -> (LeaseService method, request type, response type)
METHODS: dict[str, tuple[str, Any, Any]] = {
    "Ping": ("ping", empty_pb2.Empty, pb.PingResponse),
    "Lease": ("lease", pb.LeaseRequest, pb.LeaseResponse),
    "Return": ("return_", pb.ReturnRequest, pb.ReturnResponse),
    "ExtendTo": ("extend_to", pb.ExtendToRequest, pb.ExtendToResponse),
    "Pools": ("pools", pb.PoolsRequest, pb.PoolsResponse),
    "GetLease": ("get_lease", pb.GetLeaseRequest, pb.GetLeaseResponse),
}
NATIVE = {f"/{SERVICE}/{rpc}": rpc for rpc in METHODS}  # HTTP/2 :path -> RPC


class Refused(Exception):
    """The call's answer is a non-OK status, with its message and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, message: str, trailers: tuple = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.trailers = code, message, trailers


class _Malformed:
    """Stands in for a request whose bytes did not parse, so the handler can answer INVALID_ARGUMENT
    (grpcio itself would answer INTERNAL)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # noqa: BLE001 - any decode failure is the client's
            return _Malformed(exc)

    return parse


PARSERS = {rpc: _parser(request_type) for rpc, (_, request_type, _) in METHODS.items()}


async def call(service: Any, rpc: str, request: Any, authorization: str | None, remaining: float | None) -> Any:
    """The response message of `rpc`, or Refused."""
    attr, request_type, _ = METHODS[rpc]
    if isinstance(request, _Malformed):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                      f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {request.error}")
    try:
        check_message(request)  # the same input rules as every other façade (app/api/hygiene.py)
    except BadInput as exc:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, exc.message) from None
    if rpc in OPEN_METHODS:
        authorization = None
    try:
        return await getattr(service, attr)(authorization, request, remaining)
    except Exception as exc:  # noqa: BLE001 - every outcome is a gRPC status (app.api.core's table)
        refusal = map_error(exc, GRPC, what=f"{SERVICE}/{rpc}")
        raise Refused(refusal.code, refusal.message, refusal.trailers()) from None


async def answer(service: Any, path: str, data: bytes, authorization: str | None, remaining: float | None) -> bytes:
    """The serialized response to the request bytes `data` of the RPC at HTTP/2 `path` (one of NATIVE)."""
    rpc = NATIVE[path]
    response = await call(service, rpc, PARSERS[rpc](data), authorization, remaining)
    return response.SerializeToString()
