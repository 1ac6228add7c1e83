"""Laddering every k-th block (Ladder Side-Tuning's layer dropping): which blocks, what the
side network and the cache then hold, and `pac train --ladder` end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pac.cli import main
from pac.engine.loading import load_model
from pac.tasks import TaskSpec
from pac.techniques.parallel_adapters import ParallelAdaptersConfig, ParallelAdaptersModel
from pac.techniques.parallel_adapters.ladder import every_kth_block


@pytest.mark.parametrize(
    ("family", "k", "expected"),
    [
        ("bert", 1, [0, 1]),
        ("bert", 2, [1]),
        ("bert", 5, [1]),
        ("t5", 1, [0, 1, 2, 3]),
        ("t5", 2, [1, 3]),  # each stack keeps its own last block
    ],
)
def test_every_kth_block_counts_back_from_each_stacks_last(
    family: str, k: int, expected: list[int], tiny_model_dir: Callable[[str], Path]
) -> None:
    loaded = load_model(tiny_model_dir(family))
    assert every_kth_block(loaded.family, k) == expected


def test_six_blocks_every_second_and_third() -> None:
    class Block:
        def __init__(self, index: int, stack: str) -> None:
            self.index, self.stack = index, stack

    class Family:
        def blocks(self) -> list[Block]:
            return [Block(i, "encoder") for i in range(6)] + [
                Block(6 + i, "decoder") for i in range(6)
            ]

    family = Family()
    assert every_kth_block(family, 2) == [1, 3, 5, 7, 9, 11]  # type: ignore[arg-type]
    assert every_kth_block(family, 3) == [2, 5, 8, 11]  # type: ignore[arg-type]


def test_a_sparser_ladder_has_fewer_side_blocks_and_cache_points(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    task = TaskSpec("classification", labels=("neg", "pos"))
    every = ParallelAdaptersModel(
        load_model(tiny_model_dir("t5")).family, task, ParallelAdaptersConfig(ladder_every=2)
    )
    full = ParallelAdaptersModel(load_model(tiny_model_dir("t5")).family, task)
    assert sorted(every.side.side_blocks) == ["1", "3"]
    assert every.points == ["embed", "embed.decoder", "layer.1", "layer.3"]
    assert len(full.points) == 6
    trained = sum(p.numel() for p in every.trainable_parameters())
    assert trained < sum(p.numel() for p in full.trainable_parameters())


def test_ladder_every_and_explicit_layers_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        ParallelAdaptersConfig(laddered_layers=(0,), ladder_every=2)
    with pytest.raises(ValueError, match=">= 1"):
        ParallelAdaptersConfig(ladder_every=0)
    config = ParallelAdaptersConfig(ladder_every=3)
    assert ParallelAdaptersConfig.from_dict(config.to_dict()) == config


def train(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "train", "--model", str(model), "--data", str(data), "--eval", str(data),
            "--task", "classification", "--epochs", "2", "--batch-size", "8",
            "--out", str(out), "--quiet", *extra,
        ]
    )  # fmt: skip


def test_pac_train_ladder_every_then_predict(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = tiny_model_dir("t5"), toy_data("classification", 16)
    assert train(model, data, tmp_path / "all") == 0
    assert train(model, data, tmp_path / "every", "--ladder", "every:2") == 0
    config = json.loads((tmp_path / "every" / "adapter_config.json").read_text())
    assert config["settings"]["ladder_every"] == 2

    def cache_bytes(out: Path) -> int:
        return sum(f.stat().st_size for f in (out / "cache").rglob("*.safetensors"))

    # Two of the four encoder-side points (embed, 0, 1 -> embed, 1) and of the decoder's.
    assert cache_bytes(tmp_path / "every") < 0.8 * cache_bytes(tmp_path / "all")
    capsys.readouterr()
    predictions = tmp_path / "predictions.jsonl"
    args = ["predict", "--model", str(model), "--adapters", str(tmp_path / "every")]
    assert main([*args, "--data", str(data), "--out", str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == 16


@pytest.mark.parametrize("spec", ["every:0", "every:x", "1,a", "sparse"])
def test_a_bad_ladder_is_a_usage_error(
    spec: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = toy_data("classification", 8)
    with pytest.raises(SystemExit) as exit_info:
        train(tiny_model_dir("bert"), data, tmp_path / "out", "--ladder", spec)
    assert exit_info.value.code == 2
    assert "--ladder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_side_network_reads_only_its_points(tiny_model_dir: Callable[[str], Path]) -> None:
    """The sparser side network's output depends only on the points it ladders."""
    task = TaskSpec("classification", labels=("neg", "pos"))
    family = load_model(tiny_model_dir("bert")).family
    model = ParallelAdaptersModel(family, task, ParallelAdaptersConfig(ladder_every=2))
    torch.nn.init.normal_(model.side.up.weight)
    batch = {
        "input_ids": torch.randint(5, 50, (2, 7)),
        "attention_mask": torch.ones(2, 7, dtype=torch.long),
    }
    ladder = model.ladder(batch)
    assert set(ladder) == {"embed", "layer.1"}
    out = model.forward_from_ladder(ladder, batch)
    assert torch.allclose(out, model(batch))
