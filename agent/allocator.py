"""Keeping the agent's resident memory from creeping up (glibc's malloc on Linux).

Two effects, measured on the local mesh (4 agents, 2 of them training):

- Compute runs in the event loop's executor threads, a different one from step to step,
  and glibc gives threads their own arenas: freed blocks stay cached in every arena.
  One arena for the process (``M_ARENA_MAX`` 1, set at start: threads made later use it)
  halved a MiniLM agent's rise over two cached epochs. The agent has one compute thread at
  a time and a loop thread, so the arena's lock is not contended.
- **The holes the backbone leaves.** Epoch 1 serves the backbone's weights and large
  activations from the heap (mapping each block instead costs a backbone forward about 18%
  of its time). Their release leaves free space in the middle of the heap, below blocks
  still alive, so the heap cannot shrink: about 500 MB on the BERT-base shape.
  ``malloc_trim`` gives its pages back to the kernel, but malloc carves the cache phase's
  blocks out of it again, a little further along at every step. An agent's anonymous
  memory rose from 340 MB to 630 MB over 24 cached steps whose live blocks never passed
  about 130 MB. Lowering the mmap threshold does not help: glibc maps a block only when no
  free chunk fits it. Mapping every block is slow too: a cached epoch took 50% longer.

  So at the backbone's release the agent **reserves** the holes
  (:func:`reserve_heap_holes`): it allocates every free chunk of 128 KiB and more and never
  writes to it, after ``malloc_trim`` has returned the pages, so they stay out of resident
  memory. The cache phase's blocks then come from the heap's top, where freed blocks are
  reused in place: the top keeps up to 64 MiB free (``M_TRIM_THRESHOLD``, what glibc's
  own dynamic setting reaches) instead of shrinking after every chunk of rows and faulting
  its pages in again (that cost a BERT-base cached step 10% of its compute). Measured on
  the BERT-base shape (bench/e2e.py, all rows of a step at once): the cache phase's peak
  fell from about 420 to 317 MB above the idle agent, at the same speed. At the job's end
  the holes are freed (:func:`free_heap_holes`) for the next job's epoch 1, and the free
  pages go back to the kernel.
- **What a step frees.** Within a cache-phase step, blocks of ever different sizes (each
  chunk of rows has its own length; the all-reduce's messages) are freed where the next
  ones do not always fit, and the heap's resident free space grew by a few MB a step (on
  the BERT-large shape an agent's RSS rose from 567 to 651 MB over 16 steps whose live
  blocks did not grow). So after a cache-phase step that left resident memory more than
  32 MiB above the last trim's level, the agent gives the heap's free pages back
  (:class:`StepTrim`; ``malloc_trim(0)`` returns whole free pages anywhere in the heap,
  not only at its top): 7-13 ms a step there, against a step of 2.7 s, and every step
  starts from the same resident level.

Elsewhere (no glibc) these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("pac.agent")

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# The smallest threshold glibc starts with: while reserving, any block too large for a
# free chunk is mapped (and so told apart) rather than carved from the heap's top.
PROBE_MMAP_THRESHOLD = 128 << 10
# glibc's ceiling for its own dynamic threshold (64-bit): what an epoch 1 ends up using.
DYNAMIC_MMAP_THRESHOLD_MAX = 32 << 20
# A chunk's size field (the word before the pointer malloc returns) has this bit set when
# the chunk is mapped on its own (malloc/malloc.c, IS_MMAPPED).
IS_MMAPPED = 0x2
SIZE_SZ = ctypes.sizeof(ctypes.c_size_t)
# Without mallinfo2 (glibc < 2.33), where the search for free chunks starts.
UNKNOWN_FREE_BYTES = 16 << 30


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt"):
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _mallopt(parameter: int, value: int) -> bool:
    libc = _libc()
    return libc is not None and bool(
        libc.mallopt(ctypes.c_int(parameter), ctypes.c_int(value)) == 1
    )


def one_arena() -> bool:
    """One malloc arena for the whole process (call before threads are started)."""
    done = _mallopt(M_ARENA_MAX, 1)
    log.debug("malloc: one arena %s", "set" if done else "not available")
    return done


def _mallinfo2() -> _MallInfo2 | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info: _MallInfo2 = libc.mallinfo2()
    return info


def heap_free_bytes() -> int | None:
    """The bytes free inside the heap (glibc's ``mallinfo2().fordblks``); None without it."""
    info = _mallinfo2()
    return None if info is None else int(info.fordblks)


def heap_used_bytes() -> int | None:
    """The bytes malloc has handed out and not had back: in the heap (``uordblks``) and
    mapped on their own (``hblkhd``); None without mallinfo2."""
    info = _mallinfo2()
    return None if info is None else int(info.uordblks + info.hblkhd)


@dataclass
class HeapHoles:
    """Free heap chunks held unwritten (see the module docstring): ``pointers`` as malloc
    returned them, ``nbytes`` their total."""

    pointers: list[int] = field(default_factory=list)
    nbytes: int = 0


def reserve_heap_holes(min_bytes: int = PROBE_MMAP_THRESHOLD) -> HeapHoles:
    """Give the heap's free pages back to the kernel and hold every free chunk of at least
    ``min_bytes`` allocated, unwritten, so that later blocks do not touch them again.
    ``min_bytes`` is raised to the probing mmap threshold: a smaller request that no free
    chunk fits would be carved from the heap's top, not mapped, and the search would grow
    the heap instead of ending.
    Leaves the mmap threshold at glibc's dynamic maximum (blocks below 32 MiB from the
    heap) and the trim threshold at twice that. Returns what it holds, for
    :func:`free_heap_holes`."""
    holes = HeapHoles()
    libc = _libc()
    if libc is None:
        return holes
    min_bytes = max(min_bytes, PROBE_MMAP_THRESHOLD)
    libc.malloc_trim(0)
    libc.mallopt(M_MMAP_THRESHOLD, PROBE_MMAP_THRESHOLD)
    try:
        free = heap_free_bytes()
        size = 1 << ((UNKNOWN_FREE_BYTES if free is None else free).bit_length() - 1)
        while size >= min_bytes:
            pointer = libc.malloc(size)
            if not pointer:  # (no room even to map it)
                size //= 2
                continue
            if ctypes.c_size_t.from_address(pointer - SIZE_SZ).value & IS_MMAPPED:
                libc.free(pointer)  # no free chunk this large is left
                size //= 2
                continue
            holes.pointers.append(pointer)
            holes.nbytes += size
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, DYNAMIC_MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * DYNAMIC_MMAP_THRESHOLD_MAX)
    log.debug("malloc: %d bytes of heap holes reserved", holes.nbytes)
    return holes


def give_back_free_pages() -> None:
    """Give the kernel every whole free page of the heap, wherever it lies (glibc's
    ``malloc_trim(0)`` also returns pages inside free chunks below the top): what a
    cache-phase step freed stops counting as resident memory until it is written again."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass
class StepTrim:
    """:func:`give_back_free_pages` after a step, when it pays: when the process's resident
    memory (``read_resident``, bytes) is more than ``slack_bytes`` above where the last one
    left it. A step whose transient blocks are small (MiniLM's) then keeps its free pages
    and does not fault them in again at every step (trimming after each cost it 12% of a
    cached step's compute, with 16 MiB of slack still 10%); a step whose blocks spread (the
    BERT-large shape's: 36-53 MB a step) gives them back (5-8 MB off its peak over 8 steps).
    """

    read_resident: Callable[[], int]
    slack_bytes: int = 32 << 20
    level: int | None = None  # resident bytes after the last trim

    def after_step(self) -> bool:
        """Trim if the resident memory now calls for it; returns whether it did."""
        if self.level is not None and self.read_resident() - self.level <= self.slack_bytes:
            return False
        give_back_free_pages()
        self.level = self.read_resident()
        return True


def free_heap_holes(holes: HeapHoles) -> None:
    """Free what :func:`reserve_heap_holes` held (the next job's epoch 1 may use it) and
    give the heap's free pages back to the kernel (an idle agent holds no more than it
    needs)."""
    libc = _libc()
    if libc is not None and holes.pointers:
        for pointer in holes.pointers:
            libc.free(pointer)
        libc.malloc_trim(0)
    holes.pointers, holes.nbytes = [], 0
