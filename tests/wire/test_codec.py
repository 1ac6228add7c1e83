"""The zero-copy safetensors framing: valid safetensors both ways, strict validation."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from pac.wire.codec import DTYPES, decode, encode
from pac.wire.errors import MalformedMessage


def sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator) * 4).to(dtype)
    return torch.randint(0, 120, shape, generator=generator).to(dtype)


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Bitwise view: compares NaNs and float8 exactly."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(as_bytes(got[name]), as_bytes(tensor)), name


TENSORS = {
    **{f"t_{name}": sample(dtype, (3, 5)) for name, dtype in DTYPES.items()},
    "scalar": torch.tensor(2.5, dtype=torch.float64),
    "empty": torch.zeros(0),
    "empty_2d": torch.zeros(3, 0, 2, dtype=torch.int64),
    "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
    "odd_bytes": torch.arange(7, dtype=torch.uint8),
}


def test_encoded_blob_is_safetensors_and_decodes_bit_exact() -> None:
    message = encode(TENSORS, {"pac.job_id": "job-1"})
    blob = message.to_bytes()
    assert len(blob) == message.total_size
    assert_same(safetensors.torch.load(blob), TENSORS)
    tensors, metadata = decode(bytearray(blob))
    assert_same(tensors, TENSORS)
    assert metadata == {"pac.job_id": "job-1"}


def test_decode_reads_stock_safetensors_and_views_the_buffer() -> None:
    blob = bytearray(
        safetensors.torch.save({"a": torch.ones(4), "b": torch.zeros(2, 2)}, metadata={"k": "v"})
    )
    tensors, metadata = decode(blob)
    assert metadata == {"k": "v"} and torch.equal(tensors["a"], torch.ones(4))
    tensors["a"][0] = 7.0  # a view of the buffer, not a copy
    assert safetensors.torch.load(bytes(blob))["a"][0] == 7.0


def test_encode_does_not_copy_contiguous_cpu_tensors() -> None:
    tensor = torch.arange(1000, dtype=torch.float32)
    message = encode({"x": tensor})
    assert message.tensors[0].data_ptr() == tensor.data_ptr()


def blob_with_header(header: dict[str, object], data: bytes) -> bytearray:
    text = json.dumps(header).encode()
    return bytearray(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (bytearray(b"\x01\x02"), "at least 8 bytes"),
        (bytearray(struct.pack("<Q", 1 << 40) + b"{}"), "header is corrupt"),
        (bytearray(struct.pack("<Q", 4) + b"{{{{"), "not valid JSON"),
        (
            blob_with_header(
                {"x": {"dtype": "F4", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            "unknown dtype 'F4'",
        ),
        (
            blob_with_header(
                {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            "needs 8 bytes",
        ),
        (
            blob_with_header(
                {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4
            ),
            "outside",
        ),
        (
            blob_with_header(
                {
                    "x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                    "y": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
                },
                b"\0" * 6,
            ),
            "overlaps",
        ),
        (
            blob_with_header(
                {"x": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\0" * 6
            ),
            "hole",
        ),
        (
            blob_with_header({"x": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, b""),
            "non-negative",
        ),
        (blob_with_header({"__metadata__": {"a": 1}}, b""), "strings to strings"),
        (
            blob_with_header(
                {"x": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 5
            ),
            "trailing bytes",
        ),
    ],
)
def test_decode_refuses_malformed_blobs(blob: bytearray, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        decode(blob)


def test_encode_refuses_dtypes_safetensors_cannot_carry() -> None:
    with pytest.raises(MalformedMessage, match="cannot carry"):
        encode({"c": torch.zeros(2, dtype=torch.complex64)})
