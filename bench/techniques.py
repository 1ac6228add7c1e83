"""Each technique on one device, side by side: seconds per epoch, peak RSS, trainable
parameters, cache bytes per sample, ratios against LoRA.

    python bench/techniques.py                 # t5-small shape, 64 samples, batch 16, len 128
    python bench/techniques.py --size t5-base --batch-size 8

Every technique runs in its own process (so peak RSS is its own), on the same random-weight
T5 of the real shape, the same data and seed. Epoch times: one untimed warm-up step, then
the median of the timed epochs (min and max beside it). Parallel adapters report epoch 1
(backbone + cache writes) and epochs 2+ (from the cache) separately; its epoch 1 is the
median over --pac-runs fresh runs.

Rows marked "bf16" hold and run the frozen backbone in bfloat16 (technique setting
``backbone_dtype``; what trains stays float32): PAC, LoRA and bottleneck adapters can, full
fine-tuning cannot. Ratios are printed like for like (fp32 vs fp32, bf16 vs bf16) and for
PAC with a bf16 backbone against the fastest baseline of either kind.

Parallel adapters run their frozen backbone's linears on oneDNN-prepacked weights (the
default, pac.techniques.packed_backbone): the backbone only ever runs forward, so it can
use inference kernels; the baselines backpropagate through theirs and run aten's. The row
"aten backbone linears" is parallel adapters without them, so the kernels' share of the
speed-up is visible. "every K blocks" ladders every K-th block only (Ladder Side-Tuning's
layer dropping; tests/engine/test_real_accuracy.py measures its accuracy).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_keep_flag, machine_line, median, run_child, torch_only_rss_mb, work_dir

BASELINES = ("full", "lora", "adapters")
BF16_BASELINES = ("lora", "adapters")  # full fine-tuning trains the backbone: float32 only


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
    from pac.engine.trainer import TrainConfig, Trainer
    from pac.tasks import TaskSpec

    torch.set_num_threads(args.threads)
    settings: dict[str, Any] = {}
    if args.ladder_every > 1:
        settings["ladder_every"] = args.ladder_every
    if args.unpacked:
        settings["packed_backbone"] = False
    if args.backbone_dtype != "float32":
        settings["backbone_dtype"] = args.backbone_dtype
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
    forward_seconds = time_backbone_forward(trainer.model)
    memory = mark_cache_phase_at_release(trainer)
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
                "peak_rss_mb": memory.peak() / 2**20,
                "cache_phase_rss_mb": (memory.peak("cache_phase") or reports[-1].rss_bytes) / 2**20,
                "trainable": sum(p.numel() for p in trainer.model.trainable_parameters()),
                "cache_bytes_per_sample": cache_bytes / max(1, len(trainer.train_samples)),
                "rss_released_mb": (trainer.rss_before_release - trainer.rss_after_release) / 2**20,
                "backbone_forward_s": forward_seconds[0],
            }
        )
    )


def mark_cache_phase_at_release(trainer: Any) -> Any:
    """A PeakMemory (the agent's) that marks the cache phase when the trainer releases its
    backbone: its ``peak(CACHE_PHASE)`` is the cache phase's peak, ``peak()`` the run's."""
    from agent.peak_memory import CACHE_PHASE, PeakMemory

    memory = PeakMemory()
    release = trainer.release_backbone

    def release_then_mark() -> None:
        release()
        memory.mark(CACHE_PHASE)

    trainer.release_backbone = release_then_mark
    return memory


def time_backbone_forward(model: Any) -> list[float]:
    """Accumulate the seconds a parallel-adapters model spends running its frozen backbone
    (epoch 1's forward-only part); ``[0.0]`` for other techniques."""
    from pac.techniques.parallel_adapters import ParallelAdaptersModel

    total = [0.0]
    if isinstance(model, ParallelAdaptersModel):
        ladder = model.ladder

        def timed(batch: Any) -> Any:
            started = time.perf_counter()
            try:
                return ladder(batch)
            finally:
                total[0] += time.perf_counter() - started

        model.ladder = timed  # type: ignore[method-assign]
    return total


def child_args(
    args: argparse.Namespace,
    technique: str,
    model: Path,
    data: Path,
    out: Path,
    epochs: int,
    dropout0: bool = False,
    backbone_dtype: str = "float32",
    ladder_every: int = 1,
    unpacked: bool = False,
) -> list[str]:
    extra = ["--dropout0"] if dropout0 else []
    extra += ["--unpacked"] if unpacked else []
    extra += ["--backbone-dtype", backbone_dtype, "--ladder-every", str(ladder_every)]
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
    parser.add_argument("--unpacked", action="store_true")
    parser.add_argument("--backbone-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--ladder-every",
        type=int,
        default=2,
        help="the extra parallel-adapters rows ladder every K-th block (1 = skip them)",
    )
    add_keep_flag(parser)
    args = parser.parse_args()
    if args.child:
        args.technique = args.child
        child(args)
        return 0

    from pac.testing.tiny_models import build_tiny_model

    work = work_dir("pac-bench-techniques-", args.keep)
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
    print(f"# {bf16_line()}")
    rows: dict[str, dict[str, Any]] = {}
    for technique in BASELINES:
        rows[technique] = run_child(
            child_args(args, technique, model, data, work / technique, args.epochs)
        )
    rows["lora (dropout 0)"] = run_child(
        child_args(args, "lora", model, data, work / "lora0", args.epochs, True)
    )
    bf16_rows: dict[str, dict[str, Any]] = {}
    for technique in BF16_BASELINES:
        bf16_rows[f"{technique} bf16"] = run_child(
            child_args(
                args, technique, model, data, work / f"{technique}-bf16", args.epochs,
                backbone_dtype="bfloat16",
            )
        )
    bf16_rows["lora bf16 (dropout 0)"] = run_child(
        child_args(
            args, "lora", model, data, work / "lora0-bf16", args.epochs, True, "bfloat16"
        )
    )
    def pac_repeats(tag: str, **variant: Any) -> list[dict[str, Any]]:
        """--pac-runs fresh runs of parallel adapters with ``variant``'s child settings."""
        return [
            run_child(
                child_args(
                    args, "parallel-adapters", model, data, work / f"pac-{tag}{i}",
                    args.epochs + 1, **variant,
                )
            )
            for i in range(args.pac_runs)
        ]

    pac_runs = {
        dtype: pac_repeats(dtype, backbone_dtype=dtype) for dtype in ("float32", "bfloat16")
    }
    # The frozen backbone on aten's linears instead of oneDNN-prepacked ones: what the
    # inference kernels are worth (LoRA and adapters backpropagate through theirs).
    pac_runs["unpacked"] = pac_repeats("unpacked", unpacked=True)
    if args.ladder_every > 1:  # Ladder Side-Tuning's lever: fewer laddered blocks
        pac_runs["sparse"] = pac_repeats("sparse", ladder_every=args.ladder_every)
    first = {d: [run["epochs"][0] for run in runs] for d, runs in pac_runs.items()}
    cached = {d: [s for run in runs for s in run["epochs"][1:]] for d, runs in pac_runs.items()}
    lora = {
        "unpacked": median(rows["lora"]["epochs"]),
        "sparse": median(rows["lora"]["epochs"]),
        "float32": median(rows["lora"]["epochs"]),
        "bfloat16": median(bf16_rows["lora bf16"]["epochs"]),
    }
    lora0 = {
        "unpacked": median(rows["lora (dropout 0)"]["epochs"]),
        "sparse": median(rows["lora (dropout 0)"]["epochs"]),
        "float32": median(rows["lora (dropout 0)"]["epochs"]),
        "bfloat16": median(bf16_rows["lora bf16 (dropout 0)"]["epochs"]),
    }
    full_rss = rows["full"]["peak_rss_mb"]

    header = (
        f"{'technique':<30}{'s/epoch (median [min, max])':>30}{'peak RSS MB':>13}"
        f"{'trainable':>12}{'cache B/sample':>16}{'vs LoRA, same dtype':>21}"
    )
    print(header)
    print("-" * len(header))

    def line(
        name: str, times: list[float], rss: float, trainable: int, cache: float, dtype: str
    ) -> None:
        mid = median(times)
        spread = f"{mid:7.2f} [{min(times):.2f}, {max(times):.2f}]"
        print(
            f"{name:<30}{spread:>30}{rss:>13.0f}{trainable:>12,}{cache:>16,.0f}"
            f"{lora[dtype] / mid:>20.1f}x"
        )

    for dtype, table in (("float32", rows), ("bfloat16", bf16_rows)):
        for name, row in table.items():
            line(name, row["epochs"], row["peak_rss_mb"], row["trainable"], 0, dtype)
    labels = {"float32": "parallel-adapters", "bfloat16": "parallel-adapters bf16"}
    labels["unpacked"] = "PA, aten backbone linears"
    labels["sparse"] = f"PA, every {args.ladder_every} blocks"
    for dtype, label in labels.items():
        if dtype not in pac_runs:
            continue
        pac = pac_runs[dtype][0]
        cache = pac["cache_bytes_per_sample"]
        line(f"{label} epoch 1", first[dtype], pac["peak_rss_mb"], pac["trainable"], cache, dtype)
        rss = pac["cache_phase_rss_mb"]
        line(f"{label} epoch 2+", cached[dtype], rss, pac["trainable"], cache, dtype)

    three_pac = {d: median(first[d]) + 2 * median(cached[d]) for d in first}
    # Epoch 1 cannot beat its own backbone forward: LoRA's epoch over that time is the
    # ceiling of epoch 1's speed-up, whatever the side network and the cache writes cost.
    forward = {d: median([r["backbone_forward_s"] for r in runs]) for d, runs in pac_runs.items()}
    pac = pac_runs["float32"][0]
    print()
    for dtype, label in (
        ("float32", "fp32"), ("bfloat16", "bf16"), ("unpacked", "fp32 aten-linear")
    ):
        print(
            f"3-epoch total, {label} backbones: LoRA {3 * lora[dtype]:.1f} s, parallel adapters "
            f"{three_pac[dtype]:.1f} s ({3 * lora[dtype] / three_pac[dtype]:.1f}x)"
        )
    if "sparse" in pac_runs:
        sparse = pac_runs["sparse"][0]
        print(
            f"laddering every {args.ladder_every} blocks (fp32): epoch 1 "
            f"{lora['sparse'] / median(first['sparse']):.1f}x LoRA, cached epoch "
            f"{lora['sparse'] / median(cached['sparse']):.1f}x, 3-epoch total "
            f"{three_pac['sparse']:.1f} s ({3 * lora['sparse'] / three_pac['sparse']:.1f}x); "
            f"cache-phase peak RSS {sparse['cache_phase_rss_mb']:.0f} MB "
            f"= {100 * sparse['cache_phase_rss_mb'] / full_rss:.0f}% of full fine-tuning's peak"
        )
    for dtype, label in (
        ("float32", "fp32"), ("bfloat16", "bf16"), ("unpacked", "fp32 aten-linear")
    ):
        print(
            f"epoch 1, {label}: the frozen backbone's forward alone takes {forward[dtype]:.2f} s "
            f"of {median(first[dtype]):.2f} s; LoRA's epoch over it, the ceiling of epoch 1's "
            f"speed-up: {lora[dtype] / forward[dtype]:.1f}x"
        )
    print(
        f"cache-phase peak RSS {pac['cache_phase_rss_mb']:.0f} MB "
        f"= {100 * pac['cache_phase_rss_mb'] / full_rss:.0f}% of full fine-tuning's peak; "
        f"backbone release freed {pac['rss_released_mb']:.0f} MB (fp32 backbone)"
    )
    # The fastest baseline of either dtype, at the model's default dropout and at dropout 0.
    everything = {**{f"{n} (fp32)": r for n, r in rows.items()}, **bf16_rows}
    best = min(
        (n for n in everything if "dropout 0" not in n),
        key=lambda n: median(everything[n]["epochs"]),
    )
    best0 = min(
        (n for n in everything if "dropout 0" in n), key=lambda n: median(everything[n]["epochs"])
    )
    best_s, best0_s = median(everything[best]["epochs"]), median(everything[best0]["epochs"])
    bf16_first, bf16_cached = median(first["bfloat16"]), median(cached["bfloat16"])
    print(
        f"cached epoch vs LoRA: fp32 backbones {lora['float32'] / median(cached['float32']):.1f}x "
        f"(default dropout), {lora0['float32'] / median(cached['float32']):.1f}x (dropout 0); "
        f"bf16 backbones {lora['bfloat16'] / bf16_cached:.1f}x, "
        f"{lora0['bfloat16'] / bf16_cached:.1f}x"
    )
    print(
        f"parallel adapters bf16 vs the best baseline, {best} {best_s:.2f} s/epoch "
        f"[{best0} {best0_s:.2f} s]: epoch 1 {best_s / bf16_first:.1f}x "
        f"[{best0_s / bf16_first:.1f}x], cached epoch {best_s / bf16_cached:.1f}x "
        f"[{best0_s / bf16_cached:.1f}x], 3-epoch total {3 * best_s / three_pac['bfloat16']:.1f}x "
        f"[{3 * best0_s / three_pac['bfloat16']:.1f}x]"
    )
    print(
        f"epoch 1 vs LoRA: fp32 backbones {lora['float32'] / median(first['float32']):.1f}x "
        f"(aten linears {lora['float32'] / median(first['unpacked']):.1f}x) "
        f"(default dropout), {lora0['float32'] / median(first['float32']):.1f}x (dropout 0); "
        f"bf16 backbones {lora['bfloat16'] / bf16_first:.1f}x, "
        f"{lora0['bfloat16'] / bf16_first:.1f}x; PAC-bf16 vs fp32 LoRA "
        f"{lora['float32'] / bf16_first:.1f}x, vs the best baseline {best_s / bf16_first:.1f}x"
    )
    return 0


def bf16_line() -> str:
    """Whether this CPU multiplies bf16 natively (what the bf16 rows depend on)."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as info:
            lines = (line for line in info if line.startswith("flags"))
            flags = next(lines, ":").split(":", 1)[1].split()
    except OSError:
        pass
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    found = ", ".join(native) if native else "none found (the bf16 rows may run slower)"
    return f"bf16 matmul support: {found}"


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    if "--child" not in sys.argv:
        print(f"# {time.perf_counter() - started:.0f} s")
    sys.exit(code)
