"""How hidden states are stored: one small codec per storage precision.

A codec turns a hidden state ``x`` of shape ``[T, d]`` into named stored tensors
(``{"values": ..., "scale": ...}``) and back into float32. Every codec reports its stored size
per token so the cache can project its size before writing a byte.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

Precision = Literal["fp16", "bf16", "fp32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp16", "bf16", "fp32", "int8")

VALUES = "values"
SCALE = "scale"


class PrecisionCodec(ABC):
    """Encodes ``[T, d]`` hidden states for storage and decodes them to float32."""

    name: Precision
    # The stored parts of one hidden state, in checksum order.
    parts: tuple[str, ...] = (VALUES,)

    @abstractmethod
    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """``x [T, d]`` (any float dtype, any device) -> stored CPU tensors by part name."""

    @abstractmethod
    def decode_into(self, stored: Mapping[str, Tensor], out: Tensor) -> None:
        """Write the decoding of ``stored`` into ``out [T, d]`` (no extra copy), float32 or
        :attr:`exact_dtype`."""

    @property
    @abstractmethod
    def exact_dtype(self) -> torch.dtype:
        """The narrowest float dtype that holds every decoded value exactly: a ladder read
        in it takes the least memory and widens to float32 without rounding."""

    @abstractmethod
    def bytes_per_token(self, d: int) -> int:
        """Stored bytes of one token of width ``d`` (all parts together)."""

    @abstractmethod
    def stored_dtypes(self) -> dict[str, torch.dtype]:
        """The dtype of each stored part, to check entries imported from another device."""

    def decode(self, stored: Mapping[str, Tensor]) -> Tensor:
        """Stored tensors -> float32 ``[T, d]``."""
        values = stored[VALUES]
        out = torch.empty(values.shape, dtype=torch.float32)
        self.decode_into(stored, out)
        return out


class CastCodec(PrecisionCodec):
    """Stores the values cast to one float dtype (fp32, fp16 or bf16).

    Max abs error of a round trip, per element (round to nearest):
    - fp32: 0 (exact);
    - fp16: ``|x| * 2**-11`` for ``6.1e-5 <= |x| <= 65504`` and ``2**-25`` below that;
      values beyond 65504 are refused (they would become inf), see ``encode``;
    - bf16: ``|x| * 2**-8`` (same range as fp32).
    """

    def __init__(self, name: Precision, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """``x [T, d]`` -> ``{"values": [T, d] in the codec's dtype}``, a fresh CPU copy.

        Raises ValueError when a finite value overflows the dtype (fp16 beyond 65504):
        storing inf would silently poison training.
        """
        _check_2d(x)
        # copy=True: the caller may reuse its buffer while this entry waits for its shard.
        values = x.detach().to(device="cpu", dtype=self.dtype, copy=True).contiguous()
        if self.dtype == torch.float16 and x.numel() and bool(torch.isinf(values).any()):
            peak = float(x.detach().abs().max())
            if torch.isfinite(torch.tensor(peak)):
                raise ValueError(
                    f"hidden state has |x| up to {peak:.3g}, beyond fp16's 65504; "
                    "use --cache-precision bf16 or fp32"
                )
        return {VALUES: values}

    def decode_into(self, stored: Mapping[str, Tensor], out: Tensor) -> None:
        """``{"values": [T, d]}`` -> written into ``out [T, d]``."""
        out.copy_(stored[VALUES])

    @property
    def exact_dtype(self) -> torch.dtype:
        """The stored dtype itself."""
        return self.dtype

    def bytes_per_token(self, d: int) -> int:
        """``d`` times the dtype's size."""
        return d * torch.empty((), dtype=self.dtype).element_size()

    def stored_dtypes(self) -> dict[str, torch.dtype]:
        """One part, the values, in the codec's dtype."""
        return {VALUES: self.dtype}


class Int8Codec(PrecisionCodec):
    """int8 values with one symmetric fp32 scale per token.

    ``scale[t] = max|x[t, :]| / 127``, ``values[t] = round(x[t] / scale[t])`` in [-127, 127];
    an all-zero token gets scale 0 and decodes to zeros. Max abs error per element:
    ``scale[t] / 2 = max|x[t, :]| / 254`` (plus float32 rounding, ~1e-7 relative).
    Stored size: ``d + 4`` bytes per token.
    """

    name: Precision = "int8"
    parts = (VALUES, SCALE)

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """``x [T, d]`` -> ``{"values": int8 [T, d], "scale": float32 [T]}``."""
        _check_2d(x)
        xf = x.detach().to(device="cpu", dtype=torch.float32)
        scale = xf.abs().amax(dim=1) / 127.0 if xf.shape[1] else xf.new_zeros(xf.shape[0])
        # A zero row divides by 1 instead of 0: its values are all 0 anyway.
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        values = torch.round(xf / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return {VALUES: values.contiguous(), SCALE: scale.contiguous()}

    def decode_into(self, stored: Mapping[str, Tensor], out: Tensor) -> None:
        """``values * scale[:, None]`` written into ``out [T, d]`` float32."""
        torch.mul(stored[VALUES], stored[SCALE][:, None], out=out)

    @property
    def exact_dtype(self) -> torch.dtype:
        """float32: the products of values and scales need it."""
        return torch.float32

    def bytes_per_token(self, d: int) -> int:
        """``d`` int8 values plus one fp32 scale."""
        return d + 4

    def stored_dtypes(self) -> dict[str, torch.dtype]:
        """int8 values and float32 scales."""
        return {VALUES: torch.int8, SCALE: torch.float32}


_CODECS: dict[str, PrecisionCodec] = {
    "fp32": CastCodec("fp32", torch.float32),
    "fp16": CastCodec("fp16", torch.float16),
    "bf16": CastCodec("bf16", torch.bfloat16),
    "int8": Int8Codec(),
}


def get_codec(precision: str) -> PrecisionCodec:
    """The codec for ``precision`` (one of fp16, bf16, fp32, int8)."""
    try:
        return _CODECS[precision]
    except KeyError:
        raise ValueError(
            f"unknown cache precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
        ) from None


def _check_2d(x: Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"a cached hidden state must be [seq_len, d]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"a cached hidden state must be floating point; got {x.dtype}")
