"""`pac predict`: a backbone plus trained adapters, applied to a data file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pac.commands.train import add_data_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="local Hugging Face model dir")
    parser.add_argument("--adapters", required=True, type=Path, help="output dir of pac train")
    parser.add_argument("--data", required=True, type=Path, help="rows to predict")
    parser.add_argument("--out", type=Path, help="write predictions as JSON lines here")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    add_data_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from pac.engine.errors import USER_ERRORS
    from pac.engine.prediction import predict_file

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows, metrics = predict_file(
            args.model,
            args.adapters,
            args.data,
            text_field=args.text_field,
            pair_field=args.pair_field,
            target_field=args.target_field,
            data_format=args.data_format,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            backbone_dtype=args.backbone_dtype,
        )
    except USER_ERRORS as error:
        print(f"pac predict: error: {error}", file=sys.stderr)
        return 2
    lines = [json.dumps(row) for row in rows]
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"{len(rows)} predictions written to {args.out}")
    else:
        print("\n".join(lines))
    if metrics:
        print(json.dumps({"metrics": metrics}), file=sys.stderr if not args.out else sys.stdout)
    return 0
