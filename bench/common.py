"""What every bench script prints about the machine, how it reads a child's numbers, and
where it works."""

from __future__ import annotations

import argparse
import atexit
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_keep_flag(parser: argparse.ArgumentParser) -> None:
    """``--keep``: leave the bench's work directory (see :func:`work_dir`) behind."""
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (models, meshes' logs, outputs) instead of deleting it",
    )


def work_dir(prefix: str, keep: bool = False) -> Path:
    """A new directory for a bench's models, meshes and outputs (gigabytes on a large
    backbone), deleted when the bench exits unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if keep:
        print(f"# work directory (kept): {work}", flush=True)
    else:
        atexit.register(shutil.rmtree, work, True)
    return work


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


def submit_and_watch(mesh: Any, spec: Any, on_event: Any = None) -> Any:
    """Submit ``spec`` (a coordinator JobSpec) to a running LocalMesh and follow it to the
    end (``on_event(event)`` sees every progress event); returns the last progress event
    (raises unless the job is DONE)."""
    return watch_job(mesh, submit(mesh, spec), on_event)


def submit(mesh: Any, spec: Any) -> str:
    """Submit ``spec`` to a running LocalMesh; its job id."""
    import grpc

    from coordinator.job_messages import spec_to_proto
    from pac.wire.auth import token_metadata
    from protos.v1 import coordinator_pb2 as pb
    from protos.v1 import coordinator_pb2_grpc as pb_grpc

    with grpc.insecure_channel(mesh.coordinator_address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        metadata = token_metadata(mesh.join_token)
        job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=metadata)
    return str(job.job_id)


def watch_job(mesh: Any, job_id: str, on_event: Any = None) -> Any:
    """Follow a job of a running LocalMesh to its end (see :func:`submit_and_watch`)."""
    import grpc

    from pac.wire.auth import token_metadata
    from protos.v1 import coordinator_pb2 as pb
    from protos.v1 import coordinator_pb2_grpc as pb_grpc

    final = None
    with grpc.insecure_channel(mesh.coordinator_address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        request = pb.WatchJobRequest(job_id=job_id)
        for event in stub.WatchJob(request, metadata=token_metadata(mesh.join_token)):
            final = event
            if on_event is not None:
                on_event(event)
    if final is None or final.state != pb.JOB_STATE_DONE:
        raise RuntimeError(f"the mesh job did not finish: {final}")
    return final


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2
