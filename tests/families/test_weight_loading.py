"""Loading a backbone's weights: one tensor at a time into the process's own memory, from a
single safetensors file or the shards its index names, the same values as transformers'
own loading, and no mapping of the files left behind."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from pac.families import FamilyError
from pac.families.loading import from_pretrained, safetensors_files


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize(
    ("family", "auto_class"), [("bert", AutoModel), ("llama", AutoModelForCausalLM)]
)
def test_weights_equal_transformers_own_loading(
    family: str, auto_class: type, tiny_model_dir: Callable[[str], Path]
) -> None:
    model_dir = tiny_model_dir(family)
    ours = from_pretrained(auto_class, model_dir, torch.float32)
    theirs = auto_class.from_pretrained(str(model_dir), dtype=torch.float32)
    assert type(ours) is type(theirs)  # the class the auto class stands for
    assert not ours.training
    _same_state(ours, theirs)


def test_the_whole_file_is_never_decoded_in_one_call(
    tiny_model_dir: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers' unmapped read decodes the file in one call holding the GIL (seconds for a
    large model on a busy device: the agent's health checks go unanswered)."""
    import transformers.modeling_utils as modeling_utils

    def refuse(_data: bytes) -> dict[str, torch.Tensor]:
        raise AssertionError("the whole weight file was decoded in one call")

    monkeypatch.setattr(modeling_utils, "_safe_load_bytes", refuse)
    model = from_pretrained(AutoModel, tiny_model_dir("bert"), torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_sharded_weights_load_from_every_shard(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    whole = from_pretrained(AutoModel, tiny_model_dir("bert"), torch.float32)
    sharded = tmp_path / "sharded"
    whole.save_pretrained(sharded, max_shard_size="20KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        source = tiny_model_dir("bert") / name
        if source.exists():
            shutil.copy(source, sharded / name)
    files = safetensors_files(sharded)
    assert len(files) > 1 and all(f.suffix == ".safetensors" for f in files)
    _same_state(from_pretrained(AutoModel, sharded, torch.float32), whole)


def test_a_torn_shard_index_is_a_clear_error(
    tmp_path: Path, tiny_model_dir: Callable[[str], Path]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir("bert"), broken)
    (broken / "model.safetensors").unlink()
    (broken / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(FamilyError, match="not a safetensors index"):
        from_pretrained(AutoModel, broken, torch.float32)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_no_mapping_of_the_weight_file_is_left(tiny_model_dir: Callable[[str], Path]) -> None:
    """Releasing the backbone must give its pages back: nothing may keep the file mapped."""
    model_dir = tiny_model_dir("bert")
    model = from_pretrained(AutoModel, model_dir, torch.float32)
    weights = str((model_dir / "model.safetensors").resolve())
    assert weights not in Path("/proc/self/maps").read_text()
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_model_type_the_class_cannot_build_is_a_clear_error(
    tiny_model_dir: Callable[[str], Path],
) -> None:
    with pytest.raises(FamilyError, match=r"no AutoModelForCausalLM for model type 't5'"):
        from_pretrained(AutoModelForCausalLM, tiny_model_dir("t5"), torch.float32)
