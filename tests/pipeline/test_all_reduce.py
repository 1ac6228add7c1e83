"""The bucketed all-reduces (ring and direct): sums right, identical bits everywhere, bounded
messages, and the direct one in two rounds whatever the device count."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from pac.pipeline.all_reduce import (
    ALGORITHMS,
    GradientBuckets,
    all_reduce_gradients,
    direct_all_reduce,
    gradient_buckets,
    ring_all_reduce,
)
from pac.pipeline.transport import InProcessHub, MessageKey, Tensors


class _Recording:
    """An in-process transport that remembers the largest message it sent."""

    def __init__(self, hub: InProcessHub, device: str) -> None:
        self.inner = hub.transport(device)
        self.largest = 0
        self.messages = 0

    def send(self, key: MessageKey, tensors: Tensors) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self.largest = max(self.largest, nbytes)
        self.messages += 1
        self.inner.send(key, tensors)

    def recv(self, key: MessageKey, timeout: float | None = None) -> Tensors:
        return self.inner.recv(key, timeout)


def _params(
    seed: int, shapes: list[tuple[int, ...]], missing: set[int]
) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = None if i in missing else torch.randn(shape, generator=generator)
        params.append(p)
    return params


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@pytest.mark.parametrize("devices", [2, 3, 4])
def test_every_device_gets_the_same_sum_of_every_bucket(devices: int, algorithm: str) -> None:
    names = [f"d{i}" for i in range(devices)]
    shapes = [(7, 5), (13,), (3, 3, 3), (1,), (40,)]
    # device 1 has no gradient for parameter 2: it counts as zeros
    replicas = {n: _params(i, shapes, {2} if i == 1 else set()) for i, n in enumerate(names)}
    expected = [
        torch.stack(
            [
                g if (g := p[k].grad) is not None else torch.zeros(shapes[k])
                for p in replicas.values()
            ]
        ).sum(0)
        for k in range(len(shapes))
    ]
    hub = InProcessHub()
    transports = {n: _Recording(hub, n) for n in names}
    bucket_bytes = 30 * 4  # several buckets; the 40-float parameter is one of its own
    with ThreadPoolExecutor(devices) as pool:
        counts = list(
            pool.map(
                lambda n: all_reduce_gradients(
                    transports[n],
                    names,
                    n,
                    5,
                    replicas[n],
                    bucket_bytes,
                    timeout=30,
                    algorithm=algorithm,
                ),
                names,
            )
        )
    assert counts == [len(gradient_buckets(replicas[names[0]], bucket_bytes))] * devices
    assert counts[0] >= 3
    for k in range(len(shapes)):
        first = replicas[names[0]][k].grad
        assert first is not None
        torch.testing.assert_close(first, expected[k], rtol=1e-6, atol=1e-6)
        for n in names[1:]:
            other = replicas[n][k].grad
            assert other is not None and torch.equal(other, first)  # the same bits, not just close
    # no message carries more than a bucket's chunk (the largest bucket is 40 floats)
    largest_chunk = -(-40 // devices) * 4
    assert max(t.largest for t in transports.values()) <= largest_chunk
    # ring: 2 (n - 1) rounds, one message per bucket per round; direct: 2 rounds, one
    # message per bucket per peer per round. The same count, and the same bytes.
    assert {t.messages for t in transports.values()} == {2 * (devices - 1) * counts[0]}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_gradients_are_summed_where_they_lie(algorithm: str) -> None:
    """While the sums travel the parameters hold no gradients (their bucket's vector has
    them); after, each gradient is a view of its bucket's summed vector, not a copy."""
    names = ["d0", "d1", "d2"]
    shapes = [(6, 4), (10,), (8,), (30,)]
    replicas = {n: _params(i, shapes, set()) for i, n in enumerate(names)}
    held_during: list[bool] = []

    class Watching(_Recording):
        def send(self, key: MessageKey, tensors: Tensors) -> None:
            held_during.append(any(p.grad is not None for p in replicas[self.inner.device]))
            super().send(key, tensors)

    hub = InProcessHub()
    transports = {n: Watching(hub, n) for n in names}
    bucket_bytes = 20 * 4  # buckets: [30], [8, 10], [6x4]
    with ThreadPoolExecutor(len(names)) as pool:
        list(
            pool.map(
                lambda n: all_reduce_gradients(
                    transports[n], names, n, 1, replicas[n], bucket_bytes, 30, None, algorithm
                ),
                names,
            )
        )
    assert held_during and not any(held_during)
    for params in replicas.values():
        buckets = gradient_buckets(params, bucket_bytes)
        assert [len(b) for b in buckets] == [1, 2, 1]
        for bucket in buckets:
            grads = [p.grad for p in bucket]
            assert all(g is not None for g in grads)
            storages = {g.untyped_storage().data_ptr() for g in grads if g is not None}
            assert len(storages) == 1  # one vector per bucket


@pytest.mark.parametrize("reduce", [ring_all_reduce, direct_all_reduce])
def test_the_algorithms_sum_in_place(reduce: Any) -> None:
    names = ["a", "b", "c"]
    vectors = {n: [torch.full((7,), float(i + 1)), torch.arange(4.0)] for i, n in enumerate(names)}
    hub = InProcessHub()
    with ThreadPoolExecutor(len(names)) as pool:
        sums = dict(
            zip(
                names,
                pool.map(lambda n: reduce(hub.transport(n), names, n, 2, vectors[n], 30), names),
                strict=True,
            )
        )
    for n in names:
        assert sums[n][0] is vectors[n][0] and sums[n][1] is vectors[n][1]
        assert torch.equal(sums[n][0], torch.full((7,), 6.0))
        assert torch.equal(sums[n][1], torch.arange(4.0) * 3)


def test_buckets_keep_every_parameter_once_last_first_and_bounded() -> None:
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (10, 20, 5, 100, 3)]
    buckets = gradient_buckets(params, bucket_bytes=25 * 4)
    flat = [p for bucket in buckets for p in bucket]
    assert [id(p) for p in flat] == [id(p) for p in reversed(params)]
    for bucket in buckets:
        size = sum(p.numel() for p in bucket)
        assert size <= 25 or len(bucket) == 1
    with pytest.raises(ValueError, match="bucket size"):
        gradient_buckets(params, 0)


@pytest.mark.parametrize("reduce", [ring_all_reduce, direct_all_reduce])
def test_a_ring_of_one_returns_its_input_and_a_stranger_is_refused(reduce: Any) -> None:
    vector = torch.arange(5.0)
    hub = InProcessHub()
    assert reduce(hub.transport("a"), ["a"], "a", 0, [vector])[0] is vector
    with pytest.raises(ValueError, match="not one of the ring"):
        reduce(hub.transport("z"), ["a", "b"], "z", 0, [vector])


class _Concurrent(_Recording):
    """Sends and receives several messages per call, as the agents' wire transport does."""

    def __init__(self, hub: InProcessHub, device: str) -> None:
        super().__init__(hub, device)
        self.calls = 0

    def send_many(self, messages: list[tuple[MessageKey, Tensors]]) -> None:
        self.calls += 1
        for key, tensors in messages:
            self.send(key, tensors)

    def recv_many(self, keys: list[MessageKey], timeout: float | None = None) -> list[Tensors]:
        self.calls += 1
        return [self.recv(key, timeout) for key in keys]


def test_the_direct_all_reduce_takes_two_rounds_of_calls_whatever_the_devices() -> None:
    names = [f"d{i}" for i in range(5)]
    vectors = {
        n: torch.randn(23, generator=torch.Generator().manual_seed(i)) for i, n in enumerate(names)
    }
    # Summed in device order: exactly what one device adding the vectors in order gets.
    expected = vectors[names[0]].clone()
    for n in names[1:]:
        expected += vectors[n]
    hub = InProcessHub()
    transports = {n: _Concurrent(hub, n) for n in names}
    with ThreadPoolExecutor(len(names)) as pool:
        sums = list(
            pool.map(
                lambda n: direct_all_reduce(transports[n], names, n, 3, [vectors[n]], 30)[0],
                names,
            )
        )
    for name, total in zip(names, sums, strict=True):
        assert torch.equal(total, expected)
        assert total is vectors[name]  # summed in place
    # One send call and one receive call per round, each carrying a message per peer.
    assert {t.calls for t in transports.values()} == {4}
    assert {t.messages for t in transports.values()} == {2 * (len(names) - 1)}


def test_an_unknown_algorithm_is_refused_with_the_known_ones() -> None:
    param = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="direct"):
        all_reduce_gradients(InProcessHub().transport("a"), ["a"], "a", 0, [param], algorithm="x")


def _small_model(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_kept_buckets_take_backward_in_place_and_sum_like_fresh_ones(algorithm: str) -> None:
    """Gradients that live in kept bucket vectors: backward accumulates into them (over two
    backward calls, as the cache phase's chunks do), the all-reduce sums them where they
    are, and the sums equal those of gradients handed over as plain parameters."""
    names = ["d0", "d1", "d2"]
    inputs = {
        n: torch.randn(4, 6, generator=torch.Generator().manual_seed(i))
        for i, n in enumerate(names)
    }
    kept_models = {n: _small_model(0) for n in names}
    plain_models = {n: _small_model(0) for n in names}
    kept = {n: GradientBuckets(list(kept_models[n].parameters()), 8 * 4) for n in names}
    assert len(kept["d0"].buckets) >= 3
    pointers = {n: [v.data_ptr() for v in kept[n].vectors] for n in names}
    for n in names:
        for model in (kept_models[n], plain_models[n]):
            for half in inputs[n].chunk(2):
                model(half).square().sum().backward()
    for n in names:  # backward wrote into the vectors, not into new tensors
        for bucket, vector in zip(kept[n].buckets, kept[n].vectors, strict=True):
            assert all(
                p.grad is not None
                and p.grad.untyped_storage().data_ptr() == vector.untyped_storage().data_ptr()
                for p in bucket
            )
        assert any(v.abs().sum() > 0 for v in kept[n].vectors)

    def reduce(n: str, params: Any, hub: InProcessHub) -> int:
        return all_reduce_gradients(
            hub.transport(n), names, n, 2, params, 8 * 4, 30, None, algorithm
        )

    handed: list[dict[str, Any]] = [kept, {n: list(plain_models[n].parameters()) for n in names}]
    for params in handed:
        hub = InProcessHub()
        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: reduce(n, params[n], hub), names))  # noqa: B023
    for n in names:
        assert [v.data_ptr() for v in kept[n].vectors] == pointers[n]  # no new vectors
        for a, b in zip(kept_models[n].parameters(), plain_models[n].parameters(), strict=True):
            assert a.grad is not None and b.grad is not None
            assert torch.equal(a.grad, b.grad)
        for a, b in zip(kept_models[n].parameters(), kept_models["d0"].parameters(), strict=True):
            assert torch.equal(a.grad, b.grad)  # every device the same bits
    # zero_ starts a step: zeros, still in the vectors
    kept["d1"].zero_()
    for p in kept_models["d1"].parameters():
        assert p.grad is not None and not p.grad.any()
    assert all(not v.any() for v in kept["d1"].vectors)


def test_kept_buckets_gather_a_gradient_that_left_its_vector() -> None:
    """A gradient set to None, or replaced by another tensor, is taken back into its
    vector (zeros, or a copy) and its view put back."""
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(2, 3), (4,), (5,)]]
    buckets = GradientBuckets(params, bucket_bytes=1 << 20)
    assert len(buckets.buckets) == 1 and buckets.nbytes == 15 * 4
    params[0].grad = None
    params[1].grad = torch.arange(4.0)
    buckets.vectors[0][:5].fill_(7.0)  # params[2] comes first (last registered)
    (vector,) = buckets.gather()
    assert torch.equal(
        vector, torch.cat([torch.full((5,), 7.0), torch.arange(4.0), torch.zeros(6)])
    )
    for p in params:
        assert p.grad is not None
        assert p.grad.untyped_storage().data_ptr() == vector.untyped_storage().data_ptr()


def test_kept_buckets_refuse_mixed_dtypes() -> None:
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3).double())]
    with pytest.raises(ValueError, match="one dtype"):
        GradientBuckets(params)


class _Rounds(_Recording):
    """Counts the bytes sent per receive: one ring round's chunks go out before it waits."""

    def __init__(self, hub: InProcessHub, device: str) -> None:
        super().__init__(hub, device)
        self.round_bytes: list[int] = [0]

    def send(self, key: MessageKey, tensors: Tensors) -> None:
        self.round_bytes[-1] += sum(t.numel() * t.element_size() for t in tensors.values())
        super().send(key, tensors)

    def recv(self, key: MessageKey, timeout: float | None = None) -> Tensors:
        if self.round_bytes[-1]:
            self.round_bytes.append(0)
        return super().recv(key, timeout)


def _waved(algorithm: str, wave_bytes: int) -> tuple[dict[str, _Rounds], dict[str, Any]]:
    """Two devices all-reduce six 40-float gradients, a bucket each, in waves."""
    names = ["d0", "d1"]
    replicas = {n: _params(i, [(40,)] * 6, set()) for i, n in enumerate(names)}
    hub = InProcessHub()
    transports = {n: _Rounds(hub, n) for n in names}
    with ThreadPoolExecutor(len(names)) as pool:
        list(
            pool.map(
                lambda n: all_reduce_gradients(
                    transports[n], names, n, 4, replicas[n], 40 * 4, 30, None, algorithm, wave_bytes
                ),
                names,
            )
        )
    return transports, replicas


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_waves_bound_a_round_and_sum_the_same(algorithm: str) -> None:
    """Buckets summed in waves: no round sends more than a wave's chunks, and the sums are
    the same bits as in one wave (message keys stay distinct across the waves)."""
    one_wave, one_sums = _waved(algorithm, 1 << 20)
    waves, waved_sums = _waved(algorithm, 80 * 4)
    # 2 devices: a round sends half of every bucket of its wave
    assert max(max(t.round_bytes) for t in one_wave.values()) == 6 * 40 * 4 // 2
    assert max(max(t.round_bytes) for t in waves.values()) == 80 * 4 // 2
    for one, waved in zip(one_sums["d1"], waved_sums["d1"], strict=True):
        assert one.grad is not None and waved.grad is not None
        assert torch.equal(one.grad, waved.grad)
    with pytest.raises(ValueError, match="wave size"):
        all_reduce_gradients(
            InProcessHub().transport("a"), ["a"], "a", 0, one_sums["d0"], wave_bytes=0
        )
