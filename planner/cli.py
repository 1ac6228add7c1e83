"""``pac plan``: plan a model on a cluster described in a JSON file, print the plan."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from planner.profiles import Technique

CLUSTER_FILE = """\
cluster file (JSON):
  {"devices": [{"name": "laptop", "gflops": 120, "memory_gb": 6,
                "micro_batch_overhead_ms": 3},
               {"name": "jetson", "layer_forward_ms": 9.5, "memory_gb": 2, "count": 2}],
   "links": {"default": {"bandwidth_mbps": 1000, "latency_ms": 0.3},
             "overrides": [{"between": ["laptop", "jetson-1"], "bandwidth_mbps": 200}]}}
  a device: name, memory_gb, gflops or layer_forward_ms (one layer, per sample),
  optional count (copies named name-1, name-2, ...) and micro_batch_overhead_ms (fixed
  milliseconds per micro-batch and stage whatever its size: launches, dispatch, messages;
  default 0, which makes small micro-batches look as cheap as large ones).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = CLUSTER_FILE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--cluster", required=True, type=Path,
                        help="cluster file (devices, links): see below and "
                        "planner/examples/household.json")
    parser.add_argument("--model", required=True, type=Path,
                        help="local Hugging Face model directory (only config.json is read)")
    parser.add_argument("--technique", default=Technique.PARALLEL_ADAPTERS.value,
                        choices=[t.value for t in Technique])
    parser.add_argument("--batch", type=int, default=32, help="global (mini-)batch size")
    parser.add_argument("--micro-batches", type=int, default=None,
                        help="micro-batches per mini-batch (default: the planner chooses)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sample")
    parser.add_argument("--strategy", default="pac",
                        choices=["pac", "standalone", "data-parallel", "pipeline", "even-split"],
                        help="pac, or a baseline planned with the same cost model")
    parser.add_argument("--samples", type=int, default=0,
                        help="dataset size: also predict the bytes the cache redistribution moves")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def run(args: argparse.Namespace) -> int:
    from planner.api import plan
    from planner.errors import PlanInfeasible, gib
    from planner.estimate import cluster_from_json, model_profile, model_shape, read_config
    from planner.plan import plan_to_dict

    try:
        config = read_config(args.model)
        shape = model_shape(config, name=Path(args.model).name)
        try:
            data = json.loads(Path(args.cluster).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the cluster file {args.cluster}: {error}") from error
        cluster = cluster_from_json(data, shape, args.seq_len)
        model = model_profile(shape, args.seq_len)
        result = plan(cluster, model, technique=args.technique,
                      global_batch=args.batch, micro_batches=args.micro_batches,
                      strategy=args.strategy)
    except PlanInfeasible as error:
        print(f"pac plan: no plan fits: {error}", file=sys.stderr)
        return 3
    except ValueError as error:
        print(f"pac plan: {error}", file=sys.stderr)
        return 2
    moved = None
    if args.samples > 0 and result.cache_shares:
        from planner.cache_phase import redistribution

        # The cache holds each layer's output hidden state per sample, in fp16.
        per_layer = [x.activation_bytes // 2 for x in model.layers]
        moved = redistribution(result.stages, result.global_batch, result.micro_batches,
                               result.cache_shares, per_layer, args.samples)
    if args.json:
        out = plan_to_dict(result)
        if moved is not None:
            out["redistribution_bytes"] = moved.bytes_moved
        print(json.dumps(out, indent=2))
    else:
        print(result)
        if moved is not None:
            print(f"cache phase: redistributing {args.samples} samples moves "
                  f"{gib(moved.bytes_moved)} (fp16 hidden states)")
    return 0
