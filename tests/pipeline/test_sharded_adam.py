"""AdamW sharded over the cache phase's replicas (ZeRO stage 1): the same steps as one
AdamW on the summed gradients, the same bits on every device, each device holding only a
piece of the state, and the pieces joining into the whole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import nn

from pac.engine.checkpoint import join_shards
from pac.pipeline.all_reduce import COLLECTIVES, GradientBuckets
from pac.pipeline.sharded_adam import ShardedAdamW
from pac.pipeline.transport import InProcessHub, Tensors

SHAPES = [(7, 5), (13,), (3, 3, 3), (1,), (40,), (6, 2)]
BUCKET_BYTES = 30 * 4  # several buckets, parameters across chunk edges
STEPS = 3


def _model() -> nn.Module:
    generator = torch.Generator().manual_seed(0)  # (the devices build theirs in threads)
    model = nn.Module()
    for i, shape in enumerate(SHAPES):
        model.register_parameter(f"p{i}", nn.Parameter(torch.randn(shape, generator=generator)))
    return model


def _optimizer(model: nn.Module) -> torch.optim.AdamW:
    """Two groups with their own learning rate and weight decay."""
    params = list(model.parameters())
    return torch.optim.AdamW(
        [
            {"params": params[::2], "lr": 1e-2, "weight_decay": 0.1},
            {"params": params[1::2], "lr": 3e-3, "weight_decay": 0.0},
        ]
    )


def _gradients(device: int, step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 * step + device)
    return [torch.randn(shape, generator=generator) for shape in SHAPES]


def _reference(devices: int) -> tuple[nn.Module, torch.optim.AdamW]:
    """One AdamW on the gradients summed over the devices: a first step before sharding
    (state to take over), then the sharded steps."""
    model = _model()
    optimizer = _optimizer(model)
    for step in range(1 + STEPS):
        for p, *grads in zip(
            model.parameters(), *(_gradients(d, step) for d in range(devices)), strict=True
        ):
            p.grad = torch.stack(grads).sum(0)
        optimizer.step()
    return model, optimizer


def _sharded(devices: int, algorithm: str) -> list[tuple[nn.Module, Tensors, int]]:
    """Every device's model after the same first step, then the sharded steps on its own
    gradients; with what it holds of the state, and its bytes of it."""
    names = [f"d{i}" for i in range(devices)]
    hub = InProcessHub()

    def device(rank: int) -> tuple[nn.Module, Tensors, int]:
        model = _model()
        optimizer = _optimizer(model)
        for p, *grads in zip(
            model.parameters(), *(_gradients(d, 0) for d in range(devices)), strict=True
        ):
            p.grad = torch.stack(grads).sum(0)
        optimizer.step()
        buckets = GradientBuckets(list(model.parameters()), BUCKET_BYTES)
        named = {p: n for n, p in model.named_parameters()}
        sharded = ShardedAdamW(optimizer, buckets, named, names, names[rank], algorithm)
        assert not optimizer.state  # taken over
        for step in range(1, 1 + STEPS):
            buckets.zero_()
            for p, grad in zip(model.parameters(), _gradients(rank, step), strict=True):
                assert p.grad is not None
                p.grad.add_(grad)
            sharded.step(hub.transport(names[rank]), step, wave_bytes=64 * 4, timeout=30)
        return model, sharded.state(), sharded.state_bytes

    with ThreadPoolExecutor(devices) as pool:
        return list(pool.map(device, range(devices)))


@pytest.mark.parametrize("algorithm", sorted(COLLECTIVES))
@pytest.mark.parametrize("devices", [1, 2, 3])
def test_sharded_steps_equal_one_adamw_on_the_summed_gradients(
    devices: int, algorithm: str
) -> None:
    expected, reference = _reference(devices)
    results = _sharded(devices, algorithm)
    first = dict(results[0][0].named_parameters())
    for name, value in expected.named_parameters():
        torch.testing.assert_close(first[name], value, rtol=1e-6, atol=1e-6, msg=name)
        for model, _, _ in results[1:]:
            # Every chunk is stepped on one device and copied: the same bits everywhere.
            assert torch.equal(dict(model.named_parameters())[name], first[name]), name

    # Each device holds a piece of the moments; the pieces are the reference's state.
    whole_bytes = sum(2 * p.numel() * 4 for p in expected.parameters())
    assert sum(nbytes for _, _, nbytes in results) == whole_bytes
    if devices > 1:
        assert max(nbytes for _, _, nbytes in results) < whole_bytes * 0.75
    pieces: Tensors = {}
    for _, state, _ in results:
        assert pieces.keys().isdisjoint(k for k in state if "@" in k)
        pieces.update(state)
    joined = join_shards(pieces, strict=True)
    names = {p: n for n, p in expected.named_parameters()}
    for param, state in reference.state.items():
        name = names[param]
        assert torch.equal(joined[name], first[name])
        assert float(joined[f"{name}::step"]) == float(state["step"]) == 1 + STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            got = joined[f"{name}::{key}"]
            assert got.shape == param.shape
            torch.testing.assert_close(got, state[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_missing_piece_is_refused_or_leaves_its_parameter_without_state() -> None:
    results = _sharded(3, "ring")
    pieces: Tensors = {}
    for _, state, _ in results:
        pieces.update(state)
    gone = next(k for k in results[2][1] if k.startswith("p4::exp_avg_sq@"))
    del pieces[gone]  # a device's piece of p4's state is lost
    with pytest.raises(ValueError, match=r"pieces of p4::exp_avg_sq (leave elements|cover)"):
        join_shards(pieces, strict=True)
    joined = join_shards(pieces)
    assert "p4" in joined and not any(k.startswith("p4::") for k in joined)
    for name in ("p0", "p1", "p2", "p3", "p5"):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert f"{name}::{key}" in joined
    del pieces["p4"]
    with pytest.raises(ValueError, match=r"p4::exp_avg come without their parameter"):
        join_shards(pieces, strict=True)


def test_only_adam_without_amsgrad_is_sharded() -> None:
    model = _model()
    buckets = GradientBuckets(list(model.parameters()), BUCKET_BYTES)
    named = {p: n for n, p in model.named_parameters()}
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="only Adam and AdamW"):
        ShardedAdamW(sgd, buckets, named, ["a"], "a")
    amsgrad = torch.optim.AdamW(model.parameters(), amsgrad=True)
    with pytest.raises(ValueError, match="amsgrad"):
        ShardedAdamW(amsgrad, buckets, named, ["a"], "a")
    with pytest.raises(ValueError, match="not one of"):
        ShardedAdamW(_optimizer(model), buckets, named, ["a"], "b")
