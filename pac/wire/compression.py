"""Lossy compression of tensor messages by role, as hivemind does for activations.

Activations and gradients tolerate half precision on the wire: casting float32 to float16
or bfloat16 halves the bytes, and the receiver casts back. Which roles are cast is a
``CompressionPolicy``; what was cast is recorded in the message metadata
(``pac.cast`` = JSON ``{name: original dtype}``), so ``decompress`` needs no policy.

float16 keeps 10 mantissa bits but overflows above 65504; bfloat16 keeps the float32 range
with 7 mantissa bits. Hidden states of pre-norm decoders can exceed 65504: use bfloat16 there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from pac.wire.codec import DTYPE_NAMES, DTYPES
from pac.wire.errors import MalformedMessage

CAST_METADATA_KEY = "pac.cast"
WIRE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CompressionPolicy:
    """``by_kind`` maps a tensor kind name (e.g. ``"TENSOR_KIND_ACTIVATION"``) to the wire
    dtype (``"float16"`` or ``"bfloat16"``) its float32 tensors are cast to."""

    by_kind: Mapping[str, str] = field(default_factory=dict)

    def wire_dtype(self, kind: str) -> torch.dtype | None:
        name = self.by_kind.get(kind)
        if name is None:
            return None
        if name not in WIRE_DTYPES:
            raise ValueError(f"unknown wire dtype {name!r}; choose one of {', '.join(WIRE_DTYPES)}")
        return WIRE_DTYPES[name]


def compress(
    tensors: Mapping[str, torch.Tensor], wire_dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Cast the float32 tensors to ``wire_dtype`` (None = send as is). Returns the tensors
    to send and the metadata entries that record the casts."""
    if wire_dtype is None:
        return dict(tensors), {}
    out: dict[str, torch.Tensor] = {}
    cast: dict[str, str] = {}
    for name, tensor in tensors.items():
        if tensor.dtype == torch.float32:
            out[name] = tensor.to(wire_dtype)
            cast[name] = DTYPE_NAMES[torch.float32]
        else:
            out[name] = tensor
    return out, ({CAST_METADATA_KEY: json.dumps(cast)} if cast else {})


def decompress(
    tensors: dict[str, torch.Tensor], metadata: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Cast back what ``compress`` cast, as recorded in ``metadata``. Raises
    ``MalformedMessage`` when the record names a missing tensor or an unknown dtype."""
    record = metadata.get(CAST_METADATA_KEY)
    if not record:
        return tensors
    try:
        cast = json.loads(record)
    except json.JSONDecodeError as error:
        raise MalformedMessage(f"metadata {CAST_METADATA_KEY!r} is not JSON: {error}") from None
    if not isinstance(cast, dict):
        raise MalformedMessage(f"metadata {CAST_METADATA_KEY!r} must be a JSON object")
    out = dict(tensors)
    for name, dtype_name in cast.items():
        if name not in out or dtype_name not in DTYPES:
            raise MalformedMessage(
                f"metadata {CAST_METADATA_KEY!r} names tensor {name!r} as {dtype_name!r}, "
                "which the message does not hold"
            )
        out[name] = out[name].to(DTYPES[dtype_name])
    return out
