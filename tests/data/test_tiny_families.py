"""encode + collate end to end with the tokenizers saved by pac.testing.tiny_models
(T5, BART, GPT-2 and Llama styles of special tokens), loaded back from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from pac.data import Example
from pac.data.collate import collate
from pac.data.encoding import IGNORE_INDEX, encode, pad_token_id
from pac.tasks import TaskSpec
from pac.testing.tiny_models import build_tiny_model

ROWS = [
    Example("the film was a joy to watch", None, "fresh", "train.jsonl", 1),
    Example("dull", None, "rotten", "train.jsonl", 2),
]


def saved(family: str, tmp_path: Path) -> tuple[PreTrainedTokenizerBase, int | None]:
    model_dir = build_tiny_model(family, tmp_path / family)
    config = AutoConfig.from_pretrained(model_dir)
    return AutoTokenizer.from_pretrained(model_dir), getattr(config, "decoder_start_token_id", None)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_text_head_and_seq2seq(family: str, tmp_path: Path) -> None:
    tokenizer, start = saved(family, tmp_path)
    assert start is not None
    task = TaskSpec("classification", ("fresh", "rotten"), head="text")
    samples = encode(ROWS, tokenizer, task, is_encoder_decoder=True, decoder_start_token_id=start)
    batch = collate(samples, pad_token_id(tokenizer), task=task)
    for row, sample, name in zip(range(2), samples, ("fresh", "rotten"), strict=True):
        target = tokenizer(text_target=name)["input_ids"]
        assert sample.target_ids == tuple(target)
        assert target[-1] == tokenizer.eos_token_id
        assert batch["labels"][row, : len(target)].tolist() == target
        assert batch["decoder_input_ids"][row, 0] == start
    assert batch["class_labels"].tolist() == [0, 1]
    assert batch["labels"].shape == batch["decoder_input_ids"].shape

    seq2seq = encode(ROWS, tokenizer, TaskSpec("seq2seq"), is_encoder_decoder=True,
                     decoder_start_token_id=start)
    assert [s.target_ids for s in seq2seq] == [s.target_ids for s in samples]
    assert [s.label for s in seq2seq] == [None, None]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_only_causal_lm(family: str, tmp_path: Path) -> None:
    tokenizer, _ = saved(family, tmp_path)
    task = TaskSpec("causal-lm")
    samples = encode(ROWS, tokenizer, task, is_encoder_decoder=False, decoder_start_token_id=None)
    eos = tokenizer.eos_token_id
    for example, sample in zip(ROWS, samples, strict=True):
        prompt = tokenizer(example.text)["input_ids"]
        assert sample.input_ids[: len(prompt)] == tuple(prompt)
        assert sample.input_ids[-1] == eos
        assert sample.target_ids is not None
        assert sample.target_ids[: len(prompt)] == (IGNORE_INDEX,) * len(prompt)
        assert sample.target_ids[len(prompt) :] == sample.input_ids[len(prompt) :]
        # The answer is tokenized without special tokens: no bos in the middle (Llama).
        if tokenizer.bos_token_id is not None and tokenizer.bos_token_id != eos:
            assert tokenizer.bos_token_id not in sample.input_ids[len(prompt) :]
    batch = collate(samples, pad_token_id(tokenizer), task=task)
    assert batch["labels"].shape == batch["input_ids"].shape
    short = len(samples[1].input_ids)
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][1, short:] == 0).all()
