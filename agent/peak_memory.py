"""The agent's memory over a job: idle, peak since the process started, peak of a phase.

The kernel keeps one high-water mark of resident memory per process (``VmHWM``). To know
the peak of a phase (the cache phase, after the backbone's release) the agent notes the
mark so far and resets it (Linux: ``/proc/self/clear_refs`` value 5); the peak since the
start stays the larger of the noted marks and the kernel's. Where the reset is not
available the phase's peak falls back to the peak since the start (never an
underestimate).

What a benchmark reads (``/metrics``): ``pac_agent_idle_rss_bytes`` (resident memory when
the agent registered with no job open: its imports and process floor),
``pac_agent_peak_rss_bytes{since="start"}`` and ``{since="cache_phase"}``.
"""

from __future__ import annotations

import contextlib

from pac.engine.memory import peak_rss_bytes, rss_bytes

START = "start"
CACHE_PHASE = "cache_phase"


def reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process to its current RSS; False where
    the kernel does not offer it."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
        return True
    return False


class PeakMemory:
    """Peaks since named marks (see the module docstring)."""

    def __init__(self) -> None:
        # mark -> the peak seen since it, up to the kernel mark's last reset
        self._noted: dict[str, int] = {START: 0}
        self.idle_bytes = 0

    def note_idle(self) -> int:
        """Record the resident memory now as the agent's idle floor; returns it."""
        self.idle_bytes = rss_bytes()
        return self.idle_bytes

    def mark(self, name: str) -> None:
        """Start (or restart) the phase ``name``: its peak is measured from now."""
        kernel = peak_rss_bytes()
        for key in self._noted:
            self._noted[key] = max(self._noted[key], kernel)
        # Without a reset the kernel's mark still holds the past: the phase's peak is then
        # the peak since the start, an upper bound.
        self._noted[name] = rss_bytes() if reset_peak() else kernel

    def peak(self, name: str = START) -> int:
        """The peak resident bytes since mark ``name`` (0 if it was never marked)."""
        if name not in self._noted:
            return 0
        return max(self._noted[name], peak_rss_bytes())
