"""Each storage precision round-trips within its documented error bound."""

from __future__ import annotations

import pytest
import torch

from pac.cache import PRECISIONS, get_codec


def _hidden(t: int = 40, d: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    # Rows spanning 1e-3 .. 1e3 so a relative bound and the per-token scale both matter.
    return torch.randn(t, d, generator=gen) * torch.logspace(-3, 3, t)[:, None]


def test_fp32_is_exact() -> None:
    x = _hidden()
    codec = get_codec("fp32")
    assert torch.equal(codec.decode(codec.encode(x)), x)


@pytest.mark.parametrize(("precision", "rel"), [("fp16", 2.0**-11), ("bf16", 2.0**-8)])
def test_half_precisions_within_half_an_ulp(precision: str, rel: float) -> None:
    x = _hidden()
    codec = get_codec(precision)
    stored = codec.encode(x)
    assert stored["values"].dtype == codec.stored_dtypes()["values"]
    error = (codec.decode(stored) - x).abs()
    # Half an ulp relative, plus fp16's subnormal step for the tiniest values.
    assert bool((error <= x.abs() * rel + 2.0**-25).all())
    assert float(error.max()) > 0  # the bound is tight enough to mean something


def test_int8_within_half_a_step_per_token() -> None:
    x = _hidden()
    codec = get_codec("int8")
    stored = codec.encode(x)
    assert stored["values"].dtype == torch.int8
    assert stored["scale"].dtype == torch.float32 and stored["scale"].shape == (x.shape[0],)
    error = (codec.decode(stored) - x).abs().amax(dim=1)
    peak = x.abs().amax(dim=1)
    assert bool((error <= peak / 254 + peak * 1e-6).all())
    # the peak of each row is representable exactly (it maps to +-127)
    assert int(stored["values"].abs().amax(dim=1).min()) == 127


def test_int8_zero_rows_decode_to_zero() -> None:
    x = torch.zeros(3, 8)
    x[1] = torch.arange(8.0) - 4
    codec = get_codec("int8")
    stored = codec.encode(x)
    out = codec.decode(stored)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(8)) and torch.equal(out[2], torch.zeros(8))
    assert float(stored["scale"][0]) == 0.0


def test_fp16_overflow_is_refused_with_a_way_out() -> None:
    x = torch.tensor([[1.0, 7.0e4]])
    with pytest.raises(ValueError, match="bf16"):
        get_codec("fp16").encode(x)
    assert torch.equal(get_codec("bf16").decode(get_codec("bf16").encode(x)).isinf(), x.isinf())


def test_encode_copies_and_moves_to_cpu_and_checks_shape() -> None:
    x = torch.ones(2, 4)
    stored = get_codec("fp32").encode(x)
    x += 1  # the caller reusing its buffer must not change what is cached
    assert torch.equal(stored["values"], torch.ones(2, 4))
    for precision in PRECISIONS:
        with pytest.raises(ValueError, match=r"\[seq_len, d\]"):
            get_codec(precision).encode(torch.ones(2, 3, 4))


def test_bytes_per_token_and_unknown_precision() -> None:
    assert [get_codec(p).bytes_per_token(10) for p in ("fp32", "fp16", "bf16", "int8")] == [
        40,
        20,
        20,
        14,
    ]
    with pytest.raises(ValueError, match="fp16, bf16, fp32, int8"):
        get_codec("fp8")
