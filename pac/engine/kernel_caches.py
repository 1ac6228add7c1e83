"""How many compiled kernels oneDNN keeps: a few, not a thousand.

oneDNN (the prepacked backbone's linear layers, pac/techniques/packed_backbone.py) builds a
primitive, a JIT-compiled kernel, for every input shape it meets and keeps it in two caches:
its own primitive cache and ideep's LRU cache, 1024 entries each by default. Every padded
length of a mini-batch is a new shape, and each one kept costs about 0.55 MB per linear
layer shape, whatever the layer's size. Epoch 1 meets dozens of lengths, so a process left it
holding 25-50 MB of kernels that nothing would run again: the backbone is released, and the
cache phase never calls oneDNN. Measured in-process on the BERT-base shape (48 mini-batches
of random lengths 30-64): 50 MB of heap still in use after the backbone's release with the
default capacities, 2 MB with both at 4 and 7 MB at 16, in the same time (28.4, 28.5 and
28.1 s); with no cache at all every call compiles its kernel afresh and the same run took
32.5 s.

One pipeline step meets at most two row counts (its micro-batches) on three linear shapes,
so ``KERNEL_CACHE_CAPACITY`` keeps a step's six kernels and little more. Both variables are
read at oneDNN's first use: set them before the first model runs. A value already in the
environment (a user's choice) is kept.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

KERNEL_CACHE_CAPACITY = 8
KERNEL_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_kernel_caches(
    environ: MutableMapping[str, str] | None = None, capacity: int = KERNEL_CACHE_CAPACITY
) -> dict[str, str]:
    """Set oneDNN's cache capacities in ``environ`` (the process's by default) unless they
    are set already; returns the values now in force."""
    env = os.environ if environ is None else environ
    for name in KERNEL_CACHE_VARIABLES:
        env.setdefault(name, str(capacity))
    return {name: env[name] for name in KERNEL_CACHE_VARIABLES}
