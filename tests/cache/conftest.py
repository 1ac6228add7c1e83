"""Helpers for the activation-cache tests: random per-sample hidden states and shard surgery."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from pac.cache import CacheKey

SampleMaker = Callable[[int, dict[str, int]], dict[str, Tensor]]


@pytest.fixture
def make_sample() -> SampleMaker:
    """``make_sample(seed, {point: seq_len})`` -> ``{point: float32 [seq_len, D]}``, D = 16,
    with rows of very different magnitudes (int8's per-token scale must cope)."""

    def make(seed: int, lengths: dict[str, int]) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(seed)
        out = {}
        for point, t in lengths.items():
            x = torch.randn(t, 16, generator=gen)
            x *= torch.logspace(-2, 2, steps=max(t, 1))[:t, None]
            out[point] = x
        return out

    return make


@pytest.fixture
def key() -> Callable[..., CacheKey]:
    """``key(precision="fp16", model="m1", ...)`` -> a CacheKey with made-up fingerprints."""

    def make(precision: str = "fp16", **fields: str) -> CacheKey:
        base = {"model": "m" * 64, "tokenizer": "t" * 64, "ladder": "embed,layer.0,layer.1"}
        base.update(fields)
        return CacheKey(precision=precision, **base)

    return make


@pytest.fixture
def flip_byte() -> Callable[[Path, str], None]:
    """``flip_byte(shard, tensor_name)``: invert the first data byte of one stored tensor."""

    def flip(shard: Path, name: str) -> None:
        raw = bytearray(shard.read_bytes())
        (header_len,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + header_len])
        start = 8 + header_len + header[name]["data_offsets"][0]
        raw[start] ^= 0xFF
        shard.write_bytes(bytes(raw))

    return flip
