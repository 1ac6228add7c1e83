"""``pac submit``: send a training job to the coordinator (``--watch``: follow it).

    pac submit --coordinator HOST:PORT --model DIR --data FILE --task classification \\
        --technique parallel-adapters --epochs 3 --batch-size 16 --micro-batches 4 --watch

Paths are on the coordinator's machine (relative ones are made absolute here). With
``--watch`` the exit code is 0 when the job is DONE and 1 when it FAILED or was CANCELLED.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.commands.options import add_connection_arguments
from coordinator.jobs import DEFAULT_MAX_RESTARTS, TECHNIQUES
from pac.tasks import TASK_KINDS

if TYPE_CHECKING:
    from protos.v1 import coordinator_pb2 as pb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="Hugging Face model dir")
    parser.add_argument("--data", required=True, type=Path, help="training data file")
    parser.add_argument("--eval", type=Path, help="evaluation data, evaluated every epoch")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASK_KINDS)}")
    parser.add_argument(
        "--technique", default="parallel-adapters", help=f"one of {', '.join(TECHNIQUES)}"
    )
    parser.add_argument("--technique-json", default="", help="technique settings as JSON")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="checkpoint every K steps too (always after each epoch); on a mesh each agent "
        "writes its own, and the coordinator keeps the state there: a job restarted after "
        "an agent went away loses at most K steps",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batches", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.0, help="0 = the technique's default")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's weight decay")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=DEFAULT_MAX_RESTARTS,
        help="times a mesh job starts over on the agents still answering when one goes away, "
        "from its last completed epoch (0: it fails)",
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout of the trained modules (parallel-adapters' side blocks, LoRA)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reduction", type=int, default=8, help="side network width = d / r")
    parser.add_argument("--labels", default="", help="class names, comma-separated")
    parser.add_argument("--head", default="linear", choices=("linear", "text"))
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-target-length", type=int, default=32)
    parser.add_argument(
        "--data-format",
        default="",
        choices=("", "jsonl", "csv", "tsv"),
        help="how the data files are written (default: from their extension)",
    )
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--pair-field", default="")
    parser.add_argument("--target-field", default="label")
    parser.add_argument(
        "--cache-precision", default="float16", choices=("float16", "bfloat16", "int8")
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where the adapters go (default: the coordinator's state directory)",
    )
    parser.add_argument(
        "--placement", default="", help="local or mesh (default: the coordinator's)"
    )
    parser.add_argument(
        "--watch", action="store_true", help="follow the job with a progress bar until it ends"
    )
    add_connection_arguments(parser)


def _absolute(path: Path | None) -> str:
    return str(path.expanduser().absolute()) if path else ""


def technique_json(args: argparse.Namespace) -> str:
    """--technique-json with --checkpoint-every merged in (as its ``checkpoint_every``)."""
    if not args.checkpoint_every:
        return str(args.technique_json)
    import json

    try:
        settings = json.loads(args.technique_json) if args.technique_json.strip() else {}
    except json.JSONDecodeError:
        settings = None
    if not isinstance(settings, dict):
        return str(args.technique_json)  # the coordinator says what is wrong with it
    settings["checkpoint_every"] = args.checkpoint_every
    return json.dumps(settings)


def build_spec(args: argparse.Namespace) -> pb.JobSpec:
    """The JobSpec message of the flags."""
    from protos.v1 import coordinator_pb2 as pb

    text_fields = [args.text_field] + ([args.pair_field] if args.pair_field else [])
    return pb.JobSpec(
        model_dir=_absolute(args.model),
        data=pb.DataSpec(
            path=_absolute(args.data),
            format=args.data_format,
            eval_path=_absolute(args.eval),
            text_fields=text_fields,
            label_field=args.target_field,
        ),
        task=pb.TaskSpec(
            kind=args.task,
            labels=[n for n in args.labels.split(",") if n],
            head=args.head,
            max_length=args.max_length,
            max_target_length=args.max_target_length,
        ),
        technique=args.technique,
        technique_json=technique_json(args),
        training=pb.TrainingSettings(
            epochs=max(0, args.epochs),
            batch_size=max(0, args.batch_size),
            micro_batches=max(0, args.micro_batches),
            learning_rate=args.lr,
            seed=args.seed,
            side_reduction=max(0, args.reduction),
            cache_dtype=args.cache_precision,
            weight_decay=args.weight_decay,
            dropout=args.dropout,
            max_restarts=args.max_restarts,
        ),
        output_dir=_absolute(args.out),
        placement=args.placement,
    )


def run(args: argparse.Namespace) -> int:
    import sys

    import grpc

    from coordinator.client import ClientSetupError, connect, describe_rpc_error
    from coordinator.commands.watch import watch
    from protos.v1 import coordinator_pb2 as pb

    try:
        connection = connect(args)
    except (ClientSetupError, OSError) as error:
        print(f"pac submit: {error}", file=sys.stderr)
        return 2
    try:
        job = connection.coordinator.SubmitJob(
            pb.SubmitJobRequest(spec=build_spec(args)), metadata=connection.metadata, timeout=30
        )
        print(f"job {job.job_id} queued on {connection.address}", flush=True)
        if not args.watch:
            return 0
        return watch(connection, job.job_id)
    except grpc.RpcError as error:
        message = describe_rpc_error(error, connection.address)
        print(f"pac submit: {message}", file=sys.stderr)
        return 2 if error.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    finally:
        connection.close()
