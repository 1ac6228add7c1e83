"""`pac train`: fine-tune a model on this device alone (standalone)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pac.tasks import TASK_KINDS
from pac.technique_names import DROPOUT_TECHNIQUES, TECHNIQUE_NAMES

PRECISIONS = ("fp16", "bf16", "fp32", "int8")
# pac.techniques.backbone_dtype.DTYPES (not imported: commands import torch only in run).
BACKBONE_DTYPES = ("float32", "bfloat16", "fp32", "bf16")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `pac train` and `pac predict`: how the data is written, which
    fields hold what."""
    parser.add_argument(
        "--data-format",
        choices=("jsonl", "csv", "tsv"),
        default="",
        help="how the data files are written (default: from their extension)",
    )
    parser.add_argument("--text-field", default="text", help="field with the input text")
    parser.add_argument("--pair-field", default="text_pair", help="field with a second text")
    parser.add_argument("--target-field", default="label", help="field with the target")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--backbone-dtype",
        choices=BACKBONE_DTYPES,
        help="dtype of the frozen backbone (train: default float32; predict: default as "
        "trained). bfloat16 runs it several times faster on CPUs with bf16 support; what "
        "trains stays float32 (not for --technique full)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="local Hugging Face model dir")
    parser.add_argument("--data", required=True, type=Path, help="training data (.jsonl/.csv/.tsv)")
    parser.add_argument("--eval", type=Path, help="evaluation data (evaluated: see --eval-every)")
    parser.add_argument("--task", required=True, choices=TASK_KINDS)
    parser.add_argument("--technique", default="parallel-adapters", choices=TECHNIQUE_NAMES)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, help="learning rate (default per technique)")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's weight decay")
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout of the trained modules: parallel-adapters' side blocks or LoRA's input "
        "(the other techniques train at the model's own dropout)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="where adapters and metrics go")
    parser.add_argument("--max-length", type=int, default=128, help="input tokens kept")
    parser.add_argument("--max-target-length", type=int, default=32)
    parser.add_argument(
        "--head",
        choices=("linear", "text"),
        default="linear",
        help="encoder-decoder classification: linear head or text-to-text",
    )
    parser.add_argument("--labels", help="class names, comma-separated (default: from --data)")
    parser.add_argument("--reduction", type=int, default=8, help="side network width = d / r")
    parser.add_argument(
        "--ladder",
        default="all",
        type=ladder_settings,
        help="laddered blocks: all (default), every:K (every K-th block of each stack, "
        "ending at its last), or block indices, comma-separated",
    )
    parser.add_argument("--cache-dir", type=Path, help="activation cache (default OUT/cache)")
    parser.add_argument("--cache-precision", choices=PRECISIONS, default="fp16")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="parallel adapters without the cache: run the backbone every epoch",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="checkpoint every K steps too (always after each epoch)",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=1,
        metavar="N",
        help="evaluate after every N-th epoch and after the last (default 1: after each)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from OUT/checkpoint.safetensors (a run stopped part way; same settings)",
    )
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--max-eval-samples", type=int)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_data_arguments(parser)


def technique_settings(args: argparse.Namespace) -> dict[str, object]:
    settings: dict[str, object] = {}
    if args.technique == "parallel-adapters":
        settings["reduction"] = args.reduction
        settings.update(args.ladder)
    if args.backbone_dtype in ("bfloat16", "bf16"):
        settings["backbone_dtype"] = "bfloat16"
    if args.dropout:
        settings["dropout"] = args.dropout
    return settings


def ladder_settings(spec: str) -> dict[str, object]:
    """``--ladder``'s value as parallel-adapters settings; a bad value is a usage error."""
    spec = spec.strip()
    try:
        if spec == "all":
            return {}
        if spec.startswith("every:"):
            every = int(spec.removeprefix("every:"))
            if every < 1:
                raise ValueError
            return {"ladder_every": every}
        return {"laddered_layers": [int(i) for i in spec.split(",")]}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ladder {spec!r}: expected all, every:K with K >= 1, or block indices like 1,3,5"
        ) from None


def run(args: argparse.Namespace) -> int:
    from pac.engine.kernel_caches import bound_kernel_caches

    bound_kernel_caches()  # before the first model runs (see pac/engine/kernel_caches.py)
    import torch

    from pac.engine.checkpoint import CHECKPOINT_FILE
    from pac.engine.dataset import DataFields
    from pac.engine.errors import USER_ERRORS
    from pac.engine.trainer import EpochReport, TrainConfig, Trainer
    from pac.tasks import TaskSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dropout and args.technique not in DROPOUT_TECHNIQUES:
        print(
            f"pac train: --dropout: {args.technique} trains at the model's own dropout "
            "(config.json); only parallel-adapters and lora take one",
            file=sys.stderr,
        )
        return 2
    if not 0.0 <= args.dropout < 1.0 or not args.weight_decay >= 0.0:
        print(
            "pac train: --dropout must be in [0, 1) and --weight-decay >= 0",
            file=sys.stderr,
        )
        return 2
    try:
        task = TaskSpec(
            kind=args.task,
            labels=tuple(args.labels.split(",")) if args.labels else (),
            head=args.head,
            max_length=args.max_length,
            max_target_length=args.max_target_length,
        )
        config = TrainConfig(
            model_dir=args.model,
            train_path=args.data,
            eval_path=args.eval,
            task=task,
            technique=args.technique,
            technique_settings=technique_settings(args),
            out_dir=args.out,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            cache_dir=args.cache_dir,
            cache_precision=args.cache_precision,
            use_cache=not args.no_cache,
            fields=DataFields(
                args.text_field, args.pair_field, args.target_field, args.data_format
            ),
            max_train_samples=args.max_train_samples,
            max_eval_samples=args.max_eval_samples,
            checkpoint_every=args.checkpoint_every,
            eval_every=args.eval_every,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        trainer = Trainer(config)
        if args.resume:
            checkpoint = args.out / CHECKPOINT_FILE
            if not checkpoint.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint}")
            step = trainer.resume(checkpoint)
            per_epoch = trainer.steps_per_epoch
            print(f"resumed from {checkpoint} at step {step} ({per_epoch} per epoch)")
        trainable = sum(p.numel() for p in trainer.model.trainable_parameters())
        print(
            f"{args.technique} on {trainer.loaded.family.name} ({args.model}): "
            f"{len(trainer.train_samples)} training samples, {trainable:,} trainable parameters"
        )
        if trainer.ladder_cache is not None:
            print(
                f"activation cache: {trainer.cache_projected_bytes / 2**20:.1f} MiB projected "
                f"({args.cache_precision}) at {trainer.ladder_cache.cache.directory}"
            )

        def show(report: EpochReport) -> None:
            metrics = " ".join(
                f"{k} {v:.4f}" for k, v in report.eval.items() if isinstance(v, float)
            )
            print(
                f"epoch {report.epoch} [{report.phase}] loss {report.loss:.4f} {metrics} "
                f"{report.seconds:.1f} s, peak RSS {report.peak_rss_bytes / 2**20:.0f} MiB",
                flush=True,
            )

        trainer.run(on_epoch=show)
    except USER_ERRORS as error:
        print(f"pac train: error: {error}", file=sys.stderr)
        return 2
    if trainer.backbone_released:
        print(
            f"backbone released after epoch 1: RSS {trainer.rss_before_release / 2**20:.0f} -> "
            f"{trainer.rss_after_release / 2**20:.0f} MiB"
        )
    print(f"adapters written to {args.out} (metrics: {args.out / 'metrics.jsonl'})")
    print(json.dumps({"out": str(args.out)}))
    return 0
