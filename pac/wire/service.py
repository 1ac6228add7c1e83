"""A gRPC service's method handlers built from its descriptor, with chosen raw methods.

The generated ``add_*Servicer_to_server`` fixes protobuf (de)serializers for every method.
Tensor streams need identity (de)serializers (frames stay ``bytes``; see tensors.proto),
so the handlers are built here from the service descriptor instead, one per method, with
the methods named in ``raw_requests``/``raw_responses`` left as bytes. Reflection still
describes them as TensorChunk, which is what the bytes are.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor

_FACTORIES: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def service_handler(
    service: ServiceDescriptor,
    servicer: Any,
    raw_requests: Collection[str] = (),
    raw_responses: Collection[str] = (),
) -> grpc.GenericRpcHandler:
    """A handler for every method of ``service``, calling ``servicer.<MethodName>``."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        factory = _FACTORIES[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = factory(
            getattr(servicer, method.name),
            request_deserializer=None if method.name in raw_requests else request_class.FromString,
            response_serializer=None
            if method.name in raw_responses
            else response_class.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
