"""Processes that run models bound oneDNN's kernel caches (pac/engine/kernel_caches.py): a
packed backbone run on many padded lengths leaves a few kernels in the heap, not one per
length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from agent import allocator
from pac.engine.kernel_caches import KERNEL_CACHE_VARIABLES, bound_kernel_caches
from pac.techniques.packed_backbone import packing_supported

ROOT = Path(__file__).resolve().parents[2]
SHAPES = 40

# In a fresh interpreter: the capacities are read at oneDNN's first use, once per process.
KERNELS_LEFT = textwrap.dedent(
    f"""
    import gc, json, sys
    from agent import allocator
    from pac.engine.kernel_caches import bound_kernel_caches
    if sys.argv[1] == "bounded":
        bound_kernel_caches()
    import torch
    from torch import nn
    from pac.techniques.packed_backbone import PackedLinear

    linear = PackedLinear(nn.Linear(64, 64))
    with torch.no_grad():
        linear(torch.randn(8, 64))  # (oneDNN's own one-time set-up, before the count)
        gc.collect()
        before = allocator.heap_used_bytes()
        for rows in range(9, 9 + {SHAPES}):  # one padded length per mini-batch
            linear(torch.randn(rows, 64))
    gc.collect()
    print(json.dumps(allocator.heap_used_bytes() - before))
    """
)


def kernels_left(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in KERNEL_CACHE_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", KERNELS_LEFT, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(
    not packing_supported(torch.float32, torch.device("cpu"))
    or allocator.heap_used_bytes() is None,
    reason="needs oneDNN's prepacked linear (a CPU build with mkldnn) and glibc's mallinfo2",
)
def test_bounded_caches_keep_a_few_kernels_not_one_per_length() -> None:
    unbounded, bounded = kernels_left("unbounded"), kernels_left("bounded")
    MiB = 1 << 20
    # About 0.55 MB per kernel kept: 40 lengths unbounded, 8 bounded.
    assert unbounded > 12 * MiB, unbounded
    assert bounded < 6 * MiB, bounded
    assert bounded * 3 < unbounded


def test_a_capacity_already_set_is_kept() -> None:
    env = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "100"}
    assert bound_kernel_caches(env, capacity=8) == {
        "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "100",
        "LRU_CACHE_CAPACITY": "8",
    }
    assert env["LRU_CACHE_CAPACITY"] == "8"
