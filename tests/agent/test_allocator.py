"""The agent's malloc settings (agent/allocator.py): one arena, and the heap's holes held
unwritten through the cache phase; no-ops away from glibc."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent import allocator

ROOT = Path(__file__).resolve().parents[2]
glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
    reason="holding heap holes is glibc malloc's (Linux); elsewhere it is a no-op, tested below",
)

# The scripts below run in a fresh interpreter: they change the process's malloc settings
# and fill its heap. Each starts with this.
PRELUDE = textwrap.dedent(
    """
    import ctypes
    from agent import allocator

    MiB = 1 << 20
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def anon_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) // 1024
    """
)

HOLES = textwrap.dedent(
    """
    # An epoch 1 in miniature: 128 MiB of blocks from the heap, written, then freed below a
    # block still alive, so the heap cannot shrink.
    libc.mallopt(allocator.M_MMAP_THRESHOLD, allocator.DYNAMIC_MMAP_THRESHOLD_MAX)
    *blocks, alive = [libc.malloc(4 * MiB) for _ in range(33)]
    lo, hi = min(blocks), max(blocks) + 4 * MiB
    assert alive > hi - 4 * MiB, "the live block sits above the freed ones"
    for block in blocks:
        ctypes.memset(block, 1, 4 * MiB)
    for block in blocks:
        libc.free(block)
    before = anon_mib()

    holes = allocator.reserve_heap_holes()
    assert holes.nbytes >= 120 * MiB, holes.nbytes
    assert all(lo <= p < hi for p in holes.pointers)
    assert anon_mib() < before - 100, (before, anon_mib())  # the pages went back

    later = [libc.malloc(4 * MiB) for _ in range(8)]  # the cache phase's blocks
    assert not any(lo <= p < hi for p in later), "a block was carved out of a held hole"
    for block in later:
        libc.free(block)

    allocator.free_heap_holes(holes)
    assert holes.pointers == [] and holes.nbytes == 0
    again = libc.malloc(4 * MiB)
    assert lo <= again < hi, "the freed holes serve blocks again"
    libc.free(again)

    # Asked for holes smaller than the probing threshold, it still ends (a request no free
    # chunk fits is mapped, never carved from the heap's top).
    small = allocator.reserve_heap_holes(min_bytes=4096)
    assert 0 < small.nbytes <= 132 * MiB, small.nbytes
    allocator.free_heap_holes(small)
    print("ok")
    """
)


@glibc
def test_one_arena_is_accepted_by_glibc() -> None:
    assert allocator.one_arena()


@glibc
def test_held_holes_are_not_touched_and_come_back_at_the_end() -> None:
    _run_fresh(HOLES)


def _run_fresh(script: str) -> None:
    """Run ``PRELUDE`` + ``script`` in a fresh interpreter; it must print ``ok``."""
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# Free pages in the middle of the heap (below a live block, where the top's trim cannot
# reach) go back to the kernel.
MIDDLE = textwrap.dedent(
    """
    libc.mallopt(allocator.M_MMAP_THRESHOLD, allocator.DYNAMIC_MMAP_THRESHOLD_MAX)
    libc.mallopt(allocator.M_TRIM_THRESHOLD, 2 * allocator.DYNAMIC_MMAP_THRESHOLD_MAX)
    *blocks, alive = [libc.malloc(2 * MiB) for _ in range(33)]
    for block in blocks:
        ctypes.memset(block, 1, 2 * MiB)
    for block in blocks:
        libc.free(block)
    before = anon_mib()
    allocator.give_back_free_pages()
    assert anon_mib() < before - 50, (before, anon_mib())
    libc.free(alive)
    print("ok")
    """
)


@glibc
def test_free_pages_below_a_live_block_go_back() -> None:
    _run_fresh(MIDDLE)


def test_elsewhere_the_settings_are_no_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not allocator.one_arena()
    holes = allocator.reserve_heap_holes()
    assert holes.pointers == [] and holes.nbytes == 0
    assert allocator.heap_free_bytes() is None
    allocator.free_heap_holes(holes)
    allocator.give_back_free_pages()


def test_a_step_trim_gives_pages_back_only_after_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(allocator, "give_back_free_pages", lambda: trims.append(1))
    # What each read of the resident memory finds, in order (bytes).
    reads = iter(mib << 20 for mib in (500, 510, 516, 517, 505))
    trim = allocator.StepTrim(lambda: next(reads), slack_bytes=16 << 20)
    assert trim.after_step()  # the first step: nothing to compare with
    assert trim.level == 500 << 20  # (read after the trim)
    assert not trim.after_step()  # within the slack: its free pages stay
    assert not trim.after_step()
    assert trim.after_step()  # grown past it: given back
    assert trim.level == 505 << 20
    assert len(trims) == 2
