"""Plot a job's loss, throughput and phase from Prometheus (a PNG for the docs or a report).

    python docker/plot_job.py --prometheus http://127.0.0.1:9090 --job 3f2a... \\
        --out docs/img/job-metrics.png

Reads ``/api/v1/query_range`` over the job's lifetime (found from ``pac_job_state``) at the
scrape resolution; needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path

Series = dict[str, list[tuple[float, float]]]
_TERMINAL = ("done", "failed", "cancelled")


def query_range(base: str, expr: str, start: float, end: float, step: float,
                legend: str) -> Series:
    """``expr`` over [start, end] -> {legend: [(unix time, value), ...]}, the legend a
    format of the series' labels, e.g. ``"{peer} -> {device}"``."""
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{query}", timeout=30) as reply:
        answer = json.loads(reply.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {answer.get('error')}")
    return {legend.format_map(defaultdict(str, row["metric"])):
            [(float(t), float(v)) for t, v in row["values"]] for row in answer["data"]["result"]}


def job_window(base: str, job: str, lookback_s: float) -> tuple[float, float]:
    """From the job's first state to a few seconds after it ended (or its last state), within
    the last ``lookback_s`` seconds."""
    now = time.time()
    states = query_range(base, f'pac_job_state{{job="{job}"}} == 1', now - lookback_s, now,
                         1.0, "{state}")
    times = [t for points in states.values() for t, _ in points]
    if not times:
        raise RuntimeError(f"Prometheus has no pac_job_state for job {job!r} in the last "
                           f"{lookback_s:.0f} s: is it scraping the coordinator?")
    ended = [points[0][0] for state, points in states.items() if state in _TERMINAL]
    return min(times), min([max(times), *[t + 5.0 for t in ended]])


def _with_gaps(points: list[tuple[float, float]], start: float,
               step: float) -> tuple[list[float], list[float]]:
    """Times (from ``start``) and values, with a NaN where points are missing, so that a
    line breaks where the series had no samples (e.g. between epochs) instead of bridging."""
    times: list[float] = []
    values: list[float] = []
    for t, v in points:
        if times and t - start - times[-1] > 2.5 * step:
            times.append(times[-1] + step)
            values.append(float("nan"))
        times.append(t - start)
        values.append(v)
    return times, values


def plot(base: str, job: str, out: Path, lookback_s: float, step: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start, end = job_window(base, job, lookback_s)
    start, end = start - 2 * step, end + 2 * step

    def series(expr: str, legend: str = "{job}") -> Series:
        return query_range(base, expr, start, end, step, legend)

    # Only while training and after the first step: before it the gauges read 0.
    training = (f' and on(job) (pac_job_state{{job="{job}",state="training"}} == 1)'
                f' and on(job) (pac_job_step{{job="{job}"}} > 0)')
    loss = series(f'pac_job_loss{{job="{job}"}}' + training)
    speed = series(f'pac_job_samples_per_second{{job="{job}"}}' + training)
    epoch = series(f'pac_job_epoch{{job="{job}"}}')
    phases = series(f'pac_job_state{{job="{job}"}} == 1', "{state}")

    # Agent to agent traffic (received, by sender), when agents were scraped too.
    links = series(f"8e-6 * sum by (peer, device) (rate(pac_agent_received_bytes_total"
                   f"[{max(4 * step, 2):g}s]))", "{peer} → {device}")

    rows = [(loss, "training loss"), (speed, "samples / s")] + (
        [(links, "Mbit/s received")] if links else [])
    figure, axes = plt.subplots(len(rows) + 1, 1, figsize=(8, 2.6 * len(rows) + 1.5),
                                sharex=True, height_ratios=[3] * len(rows) + [1])
    top, bottom = axes[0], axes[-1]
    for axis, (data, name) in zip(axes, rows, strict=False):
        for legend, points in sorted(data.items()):
            times, values = _with_gaps(points, start, step)
            axis.plot(times, values, marker=".", markersize=3,
                      label=legend if data is links else None)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        if data is links:
            axis.legend(fontsize=7, loc="upper right")
    for points in epoch.values():  # epoch boundaries: cached epochs start after the first
        previous = None
        for t, value in points:
            if previous is not None and value != previous:
                for axis in axes[:-1]:
                    axis.axvline(t - start, color="grey", linestyle="--", linewidth=0.8)
                top.annotate(f"epoch {value:g}", (t - start, 1), xycoords=("data", "axes "
                             "fraction"), xytext=(3, -12), textcoords="offset points",
                             fontsize=8, color="grey")
            previous = value
    for row, (state, points) in enumerate(sorted(phases.items(),
                                                 key=lambda item: item[1][0][0])):
        times = [t - start for t, _ in points]
        bottom.broken_barh([(t, step) for t in times], (row, 0.8))
        bottom.text(times[0], row + 0.4, f" {state}", va="center", fontsize=8)
    bottom.set_yticks([])
    bottom.set_ylabel("phase")
    bottom.set_xlabel("seconds since the job was queued")
    top.set_title(f"job {job}: scraped by Prometheus every {step:g} s")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--job", required=True, help="job id (pac_job_* label `job`)")
    parser.add_argument("--out", type=Path, default=Path("job-metrics.png"))
    parser.add_argument("--lookback", type=float, default=3600.0,
                        help="seconds back to look for the job")
    parser.add_argument("--step", type=float, default=1.0, help="seconds between points")
    args = parser.parse_args(argv)
    try:
        plot(args.prometheus.rstrip("/"), args.job, args.out, args.lookback, args.step)
    except (OSError, RuntimeError) as error:
        print(f"plot_job: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
