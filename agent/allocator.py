"""Keeping the agent's resident memory from creeping up (glibc's malloc on Linux).

Measured on the local mesh (MiniLM, 4 agents): after the backbone's release an agent's
anonymous memory rose by about 70 MB over two cached epochs, with no live object behind
it. Two causes, two settings:

- Compute runs in the event loop's executor threads, a different one from step to step,
  and glibc gives threads their own arenas: freed blocks stay cached in every arena.
  One arena for the process (``M_ARENA_MAX`` 1, set at start: threads made later use it)
  halves the rise. The agent has one compute thread at a time and a loop thread, so the
  arena's lock is not contended.
- glibc raises its mmap threshold each time a large block is freed, so later large
  blocks come from the heap, where a freed one stays. In the cache phase (set at the
  backbone's release) the threshold is fixed at 128 KiB: the ladder's tensors are mapped
  and unmapped, and the rest of the rise goes. Not before: a backbone forward allocates
  so much that mapping each block costs about 18% of its time.

Elsewhere (no glibc) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("pac.agent")

# mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
CACHE_PHASE_MMAP_THRESHOLD = 128 << 10
# glibc's ceiling for its own dynamic threshold (64-bit): what an epoch 1 ends up using.
DYNAMIC_MMAP_THRESHOLD_MAX = 32 << 20


def _mallopt(parameter: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1)


def one_arena() -> bool:
    """One malloc arena for the whole process (call before threads are started)."""
    done = _mallopt(M_ARENA_MAX, 1)
    log.debug("malloc: one arena %s", "set" if done else "not available")
    return done


def cache_phase_threshold() -> bool:
    """Map blocks of 128 KiB and more (the cache phase: small tensors, no backbone)."""
    return _mallopt(M_MMAP_THRESHOLD, CACHE_PHASE_MMAP_THRESHOLD)


def backbone_threshold() -> bool:
    """Back to serving large blocks from the heap (a job with a backbone may follow)."""
    return _mallopt(M_MMAP_THRESHOLD, DYNAMIC_MMAP_THRESHOLD_MAX)
