"""`pac plan` reads a cluster file and a model's config.json and prints the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pac.cli import main
from planner.estimate import model_profile, model_shape

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "planner" / "examples" / "household.json"

T5_BASE = {"model_type": "t5", "d_model": 768, "d_ff": 3072, "num_layers": 12,
           "num_decoder_layers": 12, "num_heads": 12, "vocab_size": 32128}
BERT = {"model_type": "bert", "hidden_size": 384, "intermediate_size": 1536,
        "num_hidden_layers": 6, "num_attention_heads": 12, "vocab_size": 30522}
BART = {"model_type": "bart", "d_model": 1024, "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
        "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 16,
        "decoder_attention_heads": 16, "vocab_size": 50265}


@pytest.fixture
def t5_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(T5_BASE))
    return tmp_path


def test_plan_prints_a_table(t5_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--cluster", str(EXAMPLE), "--model", str(t5_dir), "--batch", "16"]
    assert main([*args, "--samples", "3668"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan (pac, parallel-adapters)")
    assert "stage" in out and "layers" in out and "laptop" in out
    assert "note: all-reduce once per iteration" in out
    assert "cache phase: redistributing 3668 samples moves" in out


def test_plan_json_and_baseline(t5_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--cluster", str(EXAMPLE), "--model", str(t5_dir), "--json", "--batch", "8"]
    assert main(args) == 0
    pac = json.loads(capsys.readouterr().out)
    assert main([*args, "--strategy", "even-split"]) == 0
    even = json.loads(capsys.readouterr().out)
    assert sum(s["end"] - s["start"] for s in pac["stages"]) == 24
    assert pac["step_time_s"] <= even["step_time_s"]
    assert set(pac["instructions"]) <= set(pac["memory_limit_bytes"])


def test_plan_reports_infeasible_and_bad_input(
    tmp_path: Path, t5_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = tmp_path / "tiny.json"
    tiny.write_text(json.dumps({"devices": [{"name": "watch", "gflops": 1, "memory_gb": 0.05}]}))
    assert main(["plan", "--cluster", str(tiny), "--model", str(t5_dir)]) == 3
    assert "watch" in capsys.readouterr().err
    empty = tmp_path / "no-model"
    empty.mkdir()
    assert main(["plan", "--cluster", str(EXAMPLE), "--model", str(empty)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_estimates_count_encoder_and_decoder_layers() -> None:
    t5 = model_shape(T5_BASE)
    assert len(t5.layers) == 24 and t5.layers[12].cross and not t5.layers[0].cross
    assert len(model_shape(BART).layers) == 24
    bert = model_profile(model_shape(BERT), seq=128)
    assert len(bert.layers) == 6
    # Side width d/8: side activations are an eighth of the backbone's.
    assert bert.layers[1].side_activation_bytes * 8 == bert.layers[1].activation_bytes
    # The embedding sits with the first layer.
    assert bert.layers[0].weight_bytes > bert.layers[1].weight_bytes
    total = sum(x.weight_bytes for x in model_profile(t5, 128).layers)
    assert 0.8e9 < total < 1.1e9  # T5-Base is ~220M parameters in fp32 (tied embedding)


def test_measured_times_scale_the_estimates_by_flops() -> None:
    """A measured mean block time sets the backbone's rate; a measured mean side-block time
    sets the side blocks' own."""
    from planner.estimate import device_profile

    t5 = model_shape(T5_BASE)
    estimated = device_profile("d", t5, 128, 1 << 30, gflops=50.0)
    measured = device_profile(
        "d", t5, 128, 1 << 30, layer_forward_s=2e-3, side_layer_s=5e-4, micro_batch_overhead_s=1e-3
    )
    assert sum(measured.forward_s) / len(measured.forward_s) == pytest.approx(2e-3)
    assert sum(measured.side_s) / len(measured.side_s) == pytest.approx(5e-4)
    # without a side measurement the side runs at the backbone's rate
    ratio = [s / f for s, f in zip(estimated.side_s, estimated.forward_s, strict=True)]
    assert max(ratio) < 0.2
    assert measured.micro_batch_overhead_s == 1e-3


def test_a_measured_backward_ratio_replaces_the_rule_of_thumb() -> None:
    from planner.estimate import BACKWARD_RULE_OF_THUMB, device_profile
    from planner.profiles import Technique

    bert = model_shape(BERT)
    measured = device_profile(
        "d", bert, 64, 1 << 30, layer_forward_s=1e-3, backward_ratio=("lora", 1.7)
    )
    forward = measured.forward_s
    assert measured.backward_for(Technique.LORA) == pytest.approx([1.7 * f for f in forward])
    rule = BACKWARD_RULE_OF_THUMB["full"]
    assert measured.backward_for(Technique.FULL) == pytest.approx([rule * f for f in forward])
