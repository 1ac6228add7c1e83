"""Bucketed all-reduce of gradients over a :class:`Transport`: a ring, or two direct rounds.

The trainable parameters are cut into buckets of at most ``bucket_bytes`` (in reverse
registration order, as PyTorch DDP does: the last layers' gradients are ready first); each
bucket is cut into ``n`` chunks and summed by one of two algorithms (``ALGORITHMS``):

- ``ring``: reduce-scatter, then all-gather around a ring: ``2 (n - 1)`` rounds, each
  moving ``1/n`` of the bucket per device to its right neighbour. The default, and what
  the planner's cost model prices.
- ``direct``: every device sends chunk ``k`` to device ``k``, which sums it, then sends
  the sum to every other device: 2 rounds whatever ``n``, the same bytes per device as the
  ring. The cache phase can choose it (job setting ``all_reduce``): the side network's
  gradients are small, so a round's latency, not bandwidth, is what a step pays for.

Each algorithm is a reduce-scatter, after which every device holds the sum of one chunk of
each vector (``COLLECTIVES[...].owned``), then an all-gather of those chunks; the cache
phase runs the halves apart and steps its optimizer between them
(:mod:`pac.pipeline.sharded_adam`).

The buckets travel interleaved, in waves of at most ``wave_bytes``: in every round a device
sends its chunk of every bucket of the wave before it waits for any, so a round costs one
latency rather than one per bucket, while no message is larger than a bucket's chunk. The
waves bound what one round holds of received chunks (on 2 devices, half of a wave): on the
BERT-large shape's side network a single wave of 36 MB of gradients held 18 MB of them at
once, beside the gradients themselves.

Every chunk's sum is made once, on one device, and then copied to the others, so all
devices end with the same bits (the replicas stay identical without a broadcast).

Memory: the gradients are summed where they lie. Each bucket's gradients are copied into one
flat vector and let go at once; the algorithms sum the vectors in place (each round's
received chunks are added into, or copied over, the vector's own chunks, then dropped); and
each parameter's summed gradient is a view of its bucket's vector, as PyTorch DDP's
``gradient_as_bucket_view`` makes it. An all-reduce so holds the gradients about once and a
half (the vectors and one round's chunks) instead of about four times (the gradients, their
vectors, the received and the summed chunks, the joined sums and their copies): on the
BERT-large shape's side network (36 MB of gradients) that was the cache phase's peak.
Where the same parameters are all-reduced step after step (the cache phase), the vectors
are kept for good (:class:`GradientBuckets`): the gradients are views of them from the
start, backward accumulates into them, and no copy is made at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from pac.pipeline.step_clock import StepClock
from pac.pipeline.transport import MessageKey, Tensors, Transport

# PyTorch DDP's buckets are 25 MiB; these hold the BERT-large shape's side network (32.6 MB
# of gradients) in one. Each round's messages are then few and large: with every agent
# capped at half a core, a cached step's exchange took 583 ms in one bucket against 964-1009
# ms in buckets of 4 MiB (and waves of 8), and the cache-phase peak rose from 537-540 to
# 561 MB per agent (a round's received chunks: a quarter of the bucket on 4 agents).
DEFAULT_BUCKET_BYTES = 32 << 20
DEFAULT_WAVE_BYTES = 8 << 20
# micro_batch field of a ring message: bucket * ROUNDS_PER_BUCKET + round (rounds < 2n - 2)
ROUNDS_PER_BUCKET = 1 << 10


def gradient_buckets(
    params: Sequence[torch.nn.Parameter], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> list[list[torch.nn.Parameter]]:
    """``params`` cut into buckets of at most ``bucket_bytes`` (a larger parameter is a
    bucket of its own), last parameters first."""
    if bucket_bytes <= 0:
        raise ValueError(f"the bucket size must be positive, got {bucket_bytes} bytes")
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for param in reversed(list(params)):
        nbytes = param.numel() * param.element_size()
        if not buckets or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(param)
        size += nbytes
    return buckets


def ring_all_reduce(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    first_bucket: int = 0,
) -> list[torch.Tensor]:
    """Sum each 1-D tensor in ``vectors`` (one per bucket) over ``devices`` in place, by a
    ring, and return them; ``me``'s right neighbour is the next device in ``devices``.
    ``clock`` (optional) sums the time spent sending (``send``) and blocked on the left
    neighbour (``wait``), or both as ``exchange`` (see :func:`_exchange`). ``first_bucket``:
    the number of ``vectors[0]`` among the step's buckets (its messages' keys).

    A chunk sent in a round is changed in a later one: the transport must be done with a
    message's tensors when ``send`` returns (the wire has sent them, the in-process hub
    copies them)."""
    ring_reduce_scatter(transport, devices, me, step, vectors, timeout, clock, first_bucket)
    ring_all_gather(transport, devices, me, step, vectors, timeout, clock, first_bucket)
    return list(vectors)


def ring_reduce_scatter(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    first_bucket: int = 0,
) -> None:
    """The ring's first half (rounds ``0 .. n - 2``): ``me`` ends with the sum over
    ``devices`` of its own chunk of each vector (``COLLECTIVES["ring"].owned``); its other
    chunks hold partial sums."""
    n = len(devices)
    _ring_rounds(transport, devices, me, step, vectors, range(n - 1), timeout, clock, first_bucket)


def ring_all_gather(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    first_bucket: int = 0,
) -> None:
    """The ring's second half (rounds ``n - 1 .. 2n - 3``): every device's own chunk of each
    vector is copied to every other device."""
    n = len(devices)
    rounds = range(n - 1, 2 * (n - 1))
    _ring_rounds(transport, devices, me, step, vectors, rounds, timeout, clock, first_bucket)


def _ring_rounds(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    rounds: range,
    timeout: float | None,
    clock: StepClock | None,
    first_bucket: int,
) -> None:
    """Rounds ``rounds`` of the ring (reduce-scatter below ``n - 1``, all-gather from it)."""
    n = len(devices)
    if n == 1:
        return
    rank = _rank(devices, me)
    clock = clock or StepClock()  # a throwaway one when the caller does not time the parts
    right, left = devices[(rank + 1) % n], devices[(rank - 1) % n]
    chunks = [v.tensor_split(n) for v in vectors]  # views: the rounds write into vectors
    for r in rounds:
        gathering = r >= n - 1
        k = r - (n - 1) if gathering else r
        send_index = (rank + 1 - k) % n if gathering else (rank - k) % n
        recv_index = (send_index - 1) % n
        received = _exchange(
            transport,
            clock,
            [
                (_key(step, first_bucket + b, r, me, right), {"chunk": parts[send_index]})
                for b, parts in enumerate(chunks)
            ],
            [_key(step, first_bucket + b, r, left, me) for b in range(len(chunks))],
            timeout,
        )
        for parts, message in zip(chunks, received, strict=True):
            if gathering:
                parts[recv_index].copy_(message["chunk"])
            else:
                parts[recv_index].add_(message["chunk"])
        del received  # this round's chunks, before the next round's arrive


def direct_all_reduce(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    first_bucket: int = 0,
) -> list[torch.Tensor]:
    """Sum each 1-D tensor in ``vectors`` over ``devices`` in place, in two rounds whatever
    the number of devices, and return them: device ``k`` is sent chunk ``k`` of every vector
    by every other device and sums it (reduce-scatter), then sends the sum to every other
    device (all-gather). Each device moves the same bytes as in the ring (``2 (n - 1) / n``
    of every vector), but a step waits for 2 message latencies instead of ``2 (n - 1)``: on
    small vectors (the side network's gradients) latency is what a step pays for.
    ``first_bucket`` as in :func:`ring_all_reduce`."""
    direct_reduce_scatter(transport, devices, me, step, vectors, timeout, clock, first_bucket)
    direct_all_gather(transport, devices, me, step, vectors, timeout, clock, first_bucket)
    return list(vectors)


def direct_reduce_scatter(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    first_bucket: int = 0,
) -> None:
    """Round 0 of the direct all-reduce: device ``k`` is sent chunk ``k`` of every vector by
    every other device and sums them, in device order (the same sum whoever makes it)."""
    n = len(devices)
    if n == 1:
        return
    rank = _rank(devices, me)
    chunks = [v.tensor_split(n) for v in vectors]
    received = _direct_round(transport, devices, me, step, chunks, 0, timeout, clock, first_bucket)
    for parts, pieces in zip(chunks, received, strict=True):
        from_peers = iter(pieces)
        total = parts[0].clone() if rank == 0 else next(from_peers).clone()
        for k in range(1, n):
            total.add_(parts[k] if k == rank else next(from_peers))
        parts[rank].copy_(total)  # (this chunk was not sent: it is no other device's)
    del received  # the peers' chunks, summed


def direct_all_gather(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    vectors: Sequence[torch.Tensor],
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    first_bucket: int = 0,
) -> None:
    """Round 1 of the direct all-reduce: every device sends its own chunk of every vector
    to every other device."""
    n = len(devices)
    if n == 1:
        return
    rank = _rank(devices, me)
    chunks = [v.tensor_split(n) for v in vectors]
    received = _direct_round(transport, devices, me, step, chunks, 1, timeout, clock, first_bucket)
    peers = [k for k in range(n) if k != rank]
    for parts, pieces in zip(chunks, received, strict=True):
        for k, piece in zip(peers, pieces, strict=True):
            parts[k].copy_(piece)


def _direct_round(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    chunks: Sequence[Sequence[torch.Tensor]],
    round_: int,
    timeout: float | None,
    clock: StepClock | None,
    first_bucket: int,
) -> list[list[torch.Tensor]]:
    """One round of the direct all-reduce: to every other device ``k``, chunk ``k`` of each
    vector (round 0) or ``me``'s own chunk (round 1). Returns each vector's chunks received,
    in device order."""
    rank = devices.index(me)
    peers = [(k, peer) for k, peer in enumerate(devices) if peer != me]
    received = _exchange(
        transport,
        clock or StepClock(),  # a throwaway one when the caller does not time the parts
        [
            (
                _key(step, first_bucket + b, round_, me, peer),
                {"chunk": parts[k if round_ == 0 else rank]},
            )
            for k, peer in peers
            for b, parts in enumerate(chunks)
        ],
        [
            _key(step, first_bucket + b, round_, peer, me)
            for b in range(len(chunks))
            for _, peer in peers
        ],
        timeout,
    )
    return [
        [message["chunk"] for message in received[b * len(peers) : (b + 1) * len(peers)]]
        for b in range(len(chunks))
    ]


def _rank(devices: Sequence[str], me: str) -> int:
    """``me``'s index in ``devices`` (a ValueError naming them when it is not one)."""
    if me not in devices:
        raise ValueError(f"device {me!r} is not one of the ring's devices {list(devices)}")
    return devices.index(me)


def _key(step: int, bucket: int, round_: int, source: str, target: str) -> MessageKey:
    """The message of ``bucket`` in all-reduce round ``round_`` of ``step``."""
    return MessageKey(step, "allreduce", bucket * ROUNDS_PER_BUCKET + round_, source, target)


def _exchange(
    transport: Transport,
    clock: StepClock,
    messages: Sequence[tuple[MessageKey, Tensors]],
    keys: Sequence[MessageKey],
    timeout: float | None,
) -> list[Tensors]:
    """One round: send ``messages`` and receive the messages ``keys`` in that order. A
    transport that can do both at once (``exchange``: the wire's) is timed as ``exchange``;
    otherwise the sends go first, timed as ``send``, then the receives as ``wait``."""
    exchange = getattr(transport, "exchange", None)
    if exchange is not None:
        with clock.part("exchange"):
            return list(exchange(messages, keys, timeout))
    with clock.part("send"):
        send_all(transport, messages)
    with clock.part("wait"):
        return recv_all(transport, keys, timeout)


def send_all(transport: Transport, messages: Sequence[tuple[MessageKey, Tensors]]) -> None:
    """Send ``messages`` at once when the transport can (``send_many``), else in order."""
    send_many = getattr(transport, "send_many", None)
    if send_many is not None:
        send_many(messages)
        return
    for key, tensors in messages:
        transport.send(key, tensors)


def recv_all(
    transport: Transport, keys: Sequence[MessageKey], timeout: float | None
) -> list[Tensors]:
    """The messages ``keys``, in that order: awaited together when the transport can
    (``recv_many``), else one after another."""
    recv_many = getattr(transport, "recv_many", None)
    if recv_many is not None:
        return list(recv_many(keys, timeout))
    return [transport.recv(key, timeout=timeout) for key in keys]


def all_reduce_gradients(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    params: Sequence[torch.nn.Parameter] | GradientBuckets,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    timeout: float | None = 300.0,
    clock: StepClock | None = None,
    algorithm: str = "ring",
    wave_bytes: int = DEFAULT_WAVE_BYTES,
) -> int:
    """Replace every parameter's ``.grad`` by its sum over ``devices`` (a missing gradient
    counts as zeros), a view of its bucket's summed vector; returns the number of buckets.

    ``params`` is either the parameters, whose gradients are copied into new bucket vectors
    (of at most ``bucket_bytes``) and let go, or :class:`GradientBuckets` whose vectors
    already hold them (``bucket_bytes`` is then theirs). The buckets are summed in waves
    of at most ``wave_bytes`` (a larger bucket is a wave of its own). If the all-reduce fails, plain
    parameters are left without gradients; buckets keep their vectors (partly summed)."""
    reduce = ALGORITHMS.get(algorithm)
    if reduce is None:
        raise ValueError(
            f"unknown all-reduce algorithm {algorithm!r}; choose one of {sorted(ALGORITHMS)}"
        )
    if isinstance(params, GradientBuckets):
        buckets, flat = params.buckets, params.gather()
    else:
        buckets = gradient_buckets(params, bucket_bytes)
        flat = [_take_gradients(bucket) for bucket in buckets]
    for start, end in wave_ranges(flat, wave_bytes):
        reduce(transport, devices, me, step, flat[start:end], timeout, clock, first_bucket=start)
    for bucket, total in zip(buckets, flat, strict=True):  # (summed in place)
        for p, view in bucket_views(bucket, total):
            p.grad = view
    return len(buckets)


def wave_ranges(vectors: Sequence[torch.Tensor], wave_bytes: int) -> list[tuple[int, int]]:
    """``vectors`` cut into runs (start, end) of at most ``wave_bytes`` each (a larger
    vector is a run of its own)."""
    if wave_bytes <= 0:
        raise ValueError(f"the wave size must be positive, got {wave_bytes} bytes")
    waves: list[tuple[int, int]] = []
    size = 0
    for i, vector in enumerate(vectors):
        nbytes = vector.numel() * vector.element_size()
        if not waves or size + nbytes > wave_bytes:
            waves.append((i, i + 1))
            size = 0
        else:
            waves[-1] = (waves[-1][0], i + 1)
        size += nbytes
    return waves


class GradientBuckets:
    """Gradients that live in bucket vectors for good: PyTorch DDP's persistent buckets
    with ``gradient_as_bucket_view``. Each trainable parameter's ``.grad`` is a view of
    its bucket's vector from the start; backward accumulates into it in place, so that the
    all-reduce sums the vectors where the gradients already are, with no copy. :meth:`zero_`
    starts a step (zeros, not ``None``: a gradient set to ``None`` would be made anew by
    the next backward, outside its vector).

    Worth it where steps repeat on the same parameters (the cache phase): the gradients'
    memory is allocated once, instead of each step's gradients and then their vectors
    being allocated and freed (on the BERT-large shape that left about 25 MB of the
    heap resident and free at every step)."""

    def __init__(
        self, params: Sequence[torch.nn.Parameter], bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> None:
        self.buckets = gradient_buckets(params, bucket_bytes)
        self.vectors = [_bucket_vector(bucket) for bucket in self.buckets]
        self.zero_()

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.vectors)

    def zero_(self) -> None:
        """Every gradient zero, a view of its bucket's vector."""
        for bucket, vector in zip(self.buckets, self.vectors, strict=True):
            vector.zero_()
            for p, view in bucket_views(bucket, vector):
                p.grad = view

    def gather(self) -> list[torch.Tensor]:
        """The bucket vectors, holding every parameter's gradient: one that is no longer its
        view (replaced, or set to ``None``: zeros) is copied in, and the view put back."""
        for bucket, vector in zip(self.buckets, self.vectors, strict=True):
            for p, view in bucket_views(bucket, vector):
                grad = p.grad
                if grad is None:
                    view.zero_()
                elif grad.data_ptr() != view.data_ptr() or grad.stride() != view.stride():
                    view.copy_(grad)
                else:
                    continue
                p.grad = view
        return self.vectors


def _bucket_vector(bucket: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    dtypes = {p.dtype for p in bucket}
    if len(dtypes) != 1:
        raise ValueError(
            f"a gradient bucket holds one dtype, not {sorted(map(str, dtypes))}: "
            "keep the trainable parameters in one dtype"
        )
    return torch.zeros(sum(p.numel() for p in bucket), dtype=bucket[0].dtype)


def bucket_views(
    bucket: Sequence[torch.nn.Parameter], vector: torch.Tensor
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Each parameter of ``bucket`` with its slice of ``vector``, shaped like it."""
    views, offset = [], 0
    for p in bucket:
        views.append((p, vector[offset : offset + p.numel()].view_as(p)))
        offset += p.numel()
    return views


def _take_gradients(bucket: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    """The bucket's gradients in one new vector (zeros for a missing one); the parameters
    let theirs go."""
    flat = torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in bucket]
    )
    for p in bucket:
        p.grad = None
    return flat


ALGORITHMS = {"ring": ring_all_reduce, "direct": direct_all_reduce}


class Collective(NamedTuple):
    """An algorithm's two halves, and which chunk of a vector a device is left holding
    summed between them (``owned(rank, n)``)."""

    reduce_scatter: Callable[..., None]
    all_gather: Callable[..., None]
    owned: Callable[[int, int], int]


COLLECTIVES = {
    "ring": Collective(ring_reduce_scatter, ring_all_gather, lambda rank, n: (rank + 1) % n),
    "direct": Collective(direct_reduce_scatter, direct_all_gather, lambda rank, n: rank),
}
