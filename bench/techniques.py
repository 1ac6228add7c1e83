"""Each technique on one device, side by side: seconds per epoch, peak RSS, trainable
parameters, cache bytes per sample, ratios against LoRA.

    python bench/techniques.py                 # t5-small shape, 64 samples, batch 16, len 128
    python bench/techniques.py --size t5-base --batch-size 8

Every technique runs in its own process (so peak RSS is its own), on the same random-weight
T5 of the real shape, the same data and seed. Epoch times: one untimed warm-up step, then
the median of the timed epochs (min and max beside it). Parallel adapters report epoch 1
(backbone + cache writes) and epochs 2+ (from the cache) separately; its epoch 1 is the
median over --pac-runs fresh runs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line, median, run_child, torch_only_rss_mb

BASELINES = ("full", "lora", "adapters")


def write_data(path: Path, samples: int, words: int, seed: int = 0) -> None:
    from pac.testing.tiny_models import english_sentences

    rng = random.Random(seed)
    vocabulary = " ".join(english_sentences()).split()
    rows = [
        {"text": " ".join(rng.choice(vocabulary) for _ in range(words)), "label": str(i % 2)}
        for i in range(samples)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def child(args: argparse.Namespace) -> None:
    """One technique, in this process: print one JSON line of measurements."""
    import torch

    from pac.data.collate import collate
    from pac.engine.memory import peak_rss_bytes
    from pac.engine.trainer import TrainConfig, Trainer
    from pac.tasks import TaskSpec

    torch.set_num_threads(args.threads)
    settings: dict[str, Any] = {}
    config = TrainConfig(
        model_dir=Path(args.model),
        train_path=Path(args.data),
        task=TaskSpec("classification", max_length=args.length),
        technique=args.technique,
        technique_settings=settings,
        epochs=args.epochs,
        batch_size=args.batch_size,
        out_dir=Path(args.out),
        seed=0,
    )
    trainer = Trainer(config)
    if args.dropout0:
        for module in trainer.loaded.family.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    # One untimed warm-up step (forward + backward, no update, nothing cached).
    warm = collate(trainer.train_samples[: args.batch_size], trainer.pad_id, task=trainer.task)
    trainer.model.train()
    trainer.model.loss(trainer.model(warm), warm).backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    reports = trainer.run()
    cache_bytes = 0
    if trainer.ladder_cache is not None:
        cache_bytes = trainer.ladder_cache.cache.nbytes
    print(
        json.dumps(
            {
                "technique": args.technique,
                "epochs": [r.seconds for r in reports],
                "phases": [r.phase for r in reports],
                "peak_rss_mb": peak_rss_bytes() / 2**20,
                "cache_phase_rss_mb": reports[-1].rss_bytes / 2**20,
                "trainable": sum(p.numel() for p in trainer.model.trainable_parameters()),
                "cache_bytes_per_sample": cache_bytes / max(1, len(trainer.train_samples)),
                "rss_released_mb": (trainer.rss_before_release - trainer.rss_after_release) / 2**20,
            }
        )
    )


def child_args(
    args: argparse.Namespace,
    technique: str,
    model: Path,
    data: Path,
    out: Path,
    epochs: int,
    dropout0: bool = False,
) -> list[str]:
    extra = ["--dropout0"] if dropout0 else []
    return [
        __file__,
        "--child",
        technique,
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(args.batch_size),
        "--length",
        str(args.length),
        "--threads",
        str(args.threads),
        *extra,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="t5-small", choices=("t5-small", "t5-base"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per baseline")
    parser.add_argument("--pac-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child")
    parser.add_argument("--model")
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--dropout0", action="store_true")
    args = parser.parse_args()
    if args.child:
        args.technique = args.child
        child(args)
        return 0

    from pac.testing.tiny_models import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="pac-bench-techniques-"))
    model = build_tiny_model("t5", work / "model", size=args.size)
    data = work / "train.jsonl"
    write_data(data, args.samples, words=args.length * 2)
    print(
        f"# bench/techniques.py: {args.size} shape, {args.samples} samples, batch "
        f"{args.batch_size}, source length {args.length}"
    )
    print(
        f"# {machine_line(args.threads)}; RSS of a process that only imports torch: "
        f"{torch_only_rss_mb():.0f} MB"
    )
    rows: dict[str, dict[str, Any]] = {}
    for technique in BASELINES:
        rows[technique] = run_child(
            child_args(args, technique, model, data, work / technique, args.epochs)
        )
    rows["lora (dropout 0)"] = run_child(
        child_args(args, "lora", model, data, work / "lora0", args.epochs, True)
    )
    pac_runs = [
        run_child(
            child_args(args, "parallel-adapters", model, data, work / f"pac{i}", args.epochs + 1)
        )
        for i in range(args.pac_runs)
    ]
    first = [run["epochs"][0] for run in pac_runs]
    cached = [s for run in pac_runs for s in run["epochs"][1:]]
    lora = median(rows["lora"]["epochs"])
    lora0 = median(rows["lora (dropout 0)"]["epochs"])
    full_rss = rows["full"]["peak_rss_mb"]

    header = (
        f"{'technique':<28}{'s/epoch (median [min, max])':>30}{'peak RSS MB':>13}"
        f"{'trainable':>12}{'cache B/sample':>16}{'vs LoRA':>9}"
    )
    print(header)
    print("-" * len(header))

    def line(name: str, times: list[float], rss: float, trainable: int, cache: float) -> None:
        mid = median(times)
        spread = f"{mid:7.2f} [{min(times):.2f}, {max(times):.2f}]"
        print(
            f"{name:<28}{spread:>30}{rss:>13.0f}{trainable:>12,}{cache:>16,.0f}{lora / mid:>8.1f}x"
        )

    for name, row in rows.items():
        line(name, row["epochs"], row["peak_rss_mb"], row["trainable"], 0)
    pac = pac_runs[0]
    line(
        "parallel-adapters epoch 1",
        first,
        pac["peak_rss_mb"],
        pac["trainable"],
        pac["cache_bytes_per_sample"],
    )
    line(
        "parallel-adapters epoch 2+",
        cached,
        pac["cache_phase_rss_mb"],
        pac["trainable"],
        pac["cache_bytes_per_sample"],
    )
    three_pac = median(first) + 2 * median(cached)
    print()
    print(
        f"3-epoch total: LoRA {3 * lora:.1f} s, parallel adapters {three_pac:.1f} s "
        f"({3 * lora / three_pac:.1f}x); cache-phase RSS {pac['cache_phase_rss_mb']:.0f} MB "
        f"= {100 * pac['cache_phase_rss_mb'] / full_rss:.0f}% of full fine-tuning's peak; "
        f"backbone release freed {pac['rss_released_mb']:.0f} MB"
    )
    print(
        f"epoch 1 vs LoRA: {lora / median(first):.1f}x (default dropout), "
        f"{lora0 / median(first):.1f}x (dropout 0)"
    )
    print(
        f"cached epoch vs LoRA: {lora / median(cached):.1f}x (default dropout), "
        f"{lora0 / median(cached):.1f}x (dropout 0)"
    )
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    if "--child" not in sys.argv:
        print(f"# {time.perf_counter() - started:.0f} s")
    sys.exit(code)
