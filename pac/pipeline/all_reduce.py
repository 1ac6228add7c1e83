"""Bucketed ring all-reduce of gradients over a :class:`Transport`.

The trainable parameters are cut into buckets of at most ``bucket_bytes`` (in reverse
registration order, as PyTorch DDP does: the last layers' gradients are ready first); each
bucket is summed with a ring (reduce-scatter, then all-gather: ``2 (n - 1)`` rounds, each
moving ``1/n`` of the bucket per device). The buckets travel interleaved: in every round a
device sends its chunk of every bucket before it waits for any, so a round costs one
latency rather than one per bucket, while no message is larger than a bucket's chunk.

Every chunk's sum is made once, on one device, and then copied around the ring, so all
devices end with the same bits (the replicas stay identical without a broadcast).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pac.pipeline.transport import MessageKey, Transport

DEFAULT_BUCKET_BYTES = 4 << 20
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
) -> list[torch.Tensor]:
    """The sums over ``devices`` of each 1-D tensor in ``vectors`` (one per bucket), by a
    ring; ``me``'s right neighbour is the next device in ``devices``."""
    n = len(devices)
    if n == 1:
        return list(vectors)
    if me not in devices:
        raise ValueError(f"device {me!r} is not one of the ring's devices {list(devices)}")
    rank = devices.index(me)
    right, left = devices[(rank + 1) % n], devices[(rank - 1) % n]
    chunks = [list(v.clone().tensor_split(n)) for v in vectors]
    for r in range(2 * (n - 1)):
        gathering = r >= n - 1
        k = r - (n - 1) if gathering else r
        send_index = (rank + 1 - k) % n if gathering else (rank - k) % n
        recv_index = (send_index - 1) % n
        for b, parts in enumerate(chunks):
            key = MessageKey(step, "allreduce", b * ROUNDS_PER_BUCKET + r, me, right)
            transport.send(key, {"chunk": parts[send_index]})
        for b, parts in enumerate(chunks):
            key = MessageKey(step, "allreduce", b * ROUNDS_PER_BUCKET + r, left, me)
            incoming = transport.recv(key, timeout=timeout)["chunk"]
            parts[recv_index] = incoming.clone() if gathering else parts[recv_index] + incoming
    return [torch.cat(parts) for parts in chunks]


def all_reduce_gradients(
    transport: Transport,
    devices: Sequence[str],
    me: str,
    step: int,
    params: Sequence[torch.nn.Parameter],
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    timeout: float | None = 300.0,
) -> int:
    """Replace every parameter's ``.grad`` by its sum over ``devices`` (a missing gradient
    counts as zeros); returns the number of buckets."""
    buckets = gradient_buckets(params, bucket_bytes)
    flat = [
        torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in bucket]
        )
        for bucket in buckets
    ]
    sums = ring_all_reduce(transport, devices, me, step, flat, timeout)
    for bucket, total in zip(buckets, sums, strict=True):
        offset = 0
        for p in bucket:
            p.grad = total[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
    return len(buckets)
