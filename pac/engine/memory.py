"""Process memory: what we measure, and releasing the backbone after epoch 1."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys

import torch

from pac.families import ModelFamily
from pac.techniques.packed_backbone import release_packed


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """The process's resident set size now (Linux ``/proc``; peak RSS elsewhere)."""
    return _status_bytes("VmRSS") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far. On Linux this is ``VmHWM``: unlike
    ``ru_maxrss``, which a child started by fork + exec inherits from its parent, it
    starts afresh in every program."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


def freeze_startup_objects() -> int:
    """Move every object alive now out of the cyclic garbage collector's reach (``gc.freeze``)
    and return how many: called by a long-lived service once its imports are done.

    torch and transformers leave some 350,000 objects behind that live as long as the
    process; without this every full collection walks them all (about 0.2 s here), and one
    runs in the middle of a step or at the backbone's release. Objects created later are
    collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _return_freed_memory() -> None:
    gc.collect()
    # glibc keeps freed arenas; ask it to give them back to the OS.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_backbone(family: ModelFamily, keep_lm_head: bool = True) -> int:
    """Free every backbone weight the head does not need (after epoch 1 the side network
    trains from the cache). Returns the bytes of parameters released. The backbone can no
    longer run afterwards.

    ``keep_lm_head=False`` (a task with a linear head): of the family's head modules only
    the final norms are kept (their parameters are vectors); the LM head and the embedding
    it may be tied to go too."""
    keep = {
        id(p)
        for module in family.head_modules()
        for p in module.parameters()
        if keep_lm_head or p.dim() == 1
    }
    released = 0
    for parameter in family.model.parameters():
        if id(parameter) in keep or parameter.numel() == 0:
            continue
        released += parameter.numel() * parameter.element_size()
        parameter.data = torch.empty(0, dtype=parameter.dtype)
    released += release_packed(family.model)
    _return_freed_memory()
    return released
