"""What every bench script prints about the machine, and how it reads a child's numbers."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any


def machine_line(threads: int) -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{threads} torch threads, CPU: {cpu}"
    )


def torch_only_rss_mb() -> float:
    """Peak RSS of a process that only imports torch (the interpreter's floor)."""
    # VmHWM, not ru_maxrss: a child inherits its parent's ru_maxrss across fork + exec.
    code = (
        "import torch\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmHWM:'): print(int(line.split()[1]) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def run_child(args: list[str]) -> dict[str, Any]:
    """Run ``python <args>`` and parse the last stdout line as JSON."""
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
