"""Following a job: a progress bar over its steps, one line per state or epoch change,
and the final metrics."""

from __future__ import annotations

import sys

from tqdm import tqdm

from coordinator.client import Connection
from coordinator.job_messages import state_name
from protos.v1 import coordinator_pb2 as pb


def watch(connection: Connection, job_id: str) -> int:
    """Stream WatchJob until the job ends: 0 if it is DONE, 1 otherwise.

    Lines on stdout (``job ID training epoch 2``, ``job ID done accuracy 0.9``) are for
    scripts; the bar (stderr, on a terminal) shows step, loss, samples/s and the ETA."""
    bar = tqdm(
        total=0, unit="step", file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True
    )
    last: pb.JobProgress | None = None
    shown = ("", -1)
    try:
        for event in connection.coordinator.WatchJob(
            pb.WatchJobRequest(job_id=job_id), metadata=connection.metadata
        ):
            state = state_name(event.state)
            if (state, event.epoch) != shown:
                shown = (state, event.epoch)
                epoch = f" epoch {event.epoch}" if state == "training" else ""
                bar.write(f"job {job_id} {state}{epoch}", file=sys.stdout)
                sys.stdout.flush()
            if event.total_steps and bar.total != event.total_steps:
                bar.total = event.total_steps
            bar.set_description(f"epoch {event.epoch} {state}")
            bar.update(max(0, event.step - bar.n))
            bar.set_postfix(
                loss=f"{event.loss:.4f}",
                samples_s=f"{event.samples_per_second:.1f}",
                eta=f"{event.eta_seconds:.0f}s",
            )
            last = event
    except KeyboardInterrupt:
        print(
            f"stopped watching; job {job_id} goes on (pac cancel {job_id} stops it)",
            file=sys.stderr,
        )
        return 130
    finally:
        bar.close()
    if last is None:
        return 1
    state = state_name(last.state)
    metrics = " ".join(f"{name} {value:.4f}" for name, value in sorted(last.metrics.items()))
    detail = f": {last.error}" if last.error else ""
    print(
        f"job {job_id} {state}{detail} (step {last.step}, loss {last.loss:.4f}) {metrics}".rstrip(),
        flush=True,
    )
    return 0 if last.state == pb.JOB_STATE_DONE else 1
