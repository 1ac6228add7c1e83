"""Small random-weight models of every family, saved like a real checkpoint.

``build_tiny_model(family, out_dir)`` writes ``config.json``, ``model.safetensors`` and a real
tokenizer (trained here, offline, on generated English sentences) so that
``from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)`` both work.
Deterministic given ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

FAMILIES = ("bert", "t5", "bart", "gpt2", "llama", "qwen2")
SIZES = ("tiny", "t5-small", "t5-base")
TOKENIZER_VOCAB = 600


def _words(text: str) -> list[str]:
    return text.split()


_NOUNS = _words(
    "film movie story actor actress friend critic director music team audience scene plot "
    "script camera screen ending hero villain city river garden kitchen teacher student "
    "doctor child family dog cat horse bird window door table chair book letter song "
    "picture painting train car road bridge mountain forest ocean island village market "
    "school office letter morning evening winter summer spring autumn dinner breakfast "
    "question answer problem idea reason moment journey voice heart mind world"
)
_ADJECTIVES = _words(
    "good bad fresh rotten funny boring moving slow brilliant awful charming dull clever "
    "silly warm cold bright dark quiet loud gentle harsh strange familiar simple complex "
    "honest clumsy elegant tired eager calm nervous proud humble ancient modern tiny huge "
    "careful lazy rich poor sweet bitter"
)
_VERBS = _words(
    "watched loved hated found followed remembered painted described admired ignored "
    "visited crossed opened closed built carried praised questioned explained surprised"
)
_ADVERBS = _words(
    "today again slowly quickly quietly happily sadly honestly finally suddenly rarely "
    "often always never yesterday tonight"
)


def english_sentences(count: int = 400) -> list[str]:
    """``count`` short, varied, deterministic English sentences (the tokenizer corpus)."""
    out = []
    for i in range(count):
        adjective = _ADJECTIVES[(7 * i) % len(_ADJECTIVES)]
        subject = _NOUNS[i % len(_NOUNS)]
        verb = _VERBS[(3 * i) % len(_VERBS)]
        obj = _NOUNS[(11 * i + 5) % len(_NOUNS)]
        adverb = _ADVERBS[(5 * i) % len(_ADVERBS)]
        article = "a" if i % 2 else "the"
        out.append(f"The {adjective} {subject} {verb} {article} {obj} {adverb}.")
    return out


def build_tiny_model(family: str, out_dir: Path, *, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight ``family`` model and its tokenizer into ``out_dir``; return it.

    ``size="tiny"``: d_model 32, 2 layers per stack, 4 heads (fast tests).
    ``size="t5-small"`` / ``"t5-base"``: the real T5 shapes (T5 only), for benchmarks; the
    tokenizer stays small but ``vocab_size`` is the real 32128.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if size != "tiny" and family != "t5":
        raise ValueError(f"size {size!r} exists for family 't5' only, not {family!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(family)
    torch.manual_seed(seed)
    model = _model(family, size, tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---- tokenizers ----------------------------------------------------------------------------
_SPECIALS: dict[str, list[str]] = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "t5": ["<pad>", "</s>", "<unk>"],
    "bart": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "gpt2": ["<|endoftext|>"],
    "llama": ["<unk>", "<s>", "</s>"],
    "qwen2": ["<|endoftext|>"],
}


def _tokenizer(family: str) -> PreTrainedTokenizerFast:
    specials = _SPECIALS[family]
    if family == "bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer: Any = trainers.WordPieceTrainer(
            vocab_size=TOKENIZER_VOCAB, special_tokens=specials, show_progress=False
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=None if family in ("gpt2", "qwen2") else "<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=TOKENIZER_VOCAB,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    ids = {name: tok.token_to_id(name) for name in specials}
    post = {
        "bert": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1", ["[CLS]", "[SEP]"]),
        "t5": ("$A </s>", "$A </s> $B </s>", ["</s>"]),
        "bart": ("<s> $A </s>", "<s> $A </s> </s> $B </s>", ["<s>", "</s>"]),
        "llama": ("<s> $A", "<s> $A <s> $B", ["<s>"]),
    }.get(family)
    if post is not None:
        single, pair, used = post
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, ids[t]) for t in used]
        )
    roles: dict[str, dict[str, str]] = {
        "bert": {
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        "t5": {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
        "bart": {
            "bos_token": "<s>",
            "pad_token": "<pad>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "cls_token": "<s>",
            "sep_token": "</s>",
            "mask_token": "<mask>",
        },
        "gpt2": {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        },
        "llama": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "</s>",
        },
        "qwen2": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    }
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **roles[family])
    fast.model_max_length = 128
    return fast


def _corpus() -> Iterator[str]:
    yield from english_sentences()


# The configs' default init (std 0.02) suits wide models; at width 32 it leaves a random
# model's outputs nearly independent of its input, and nothing can be learned through it in
# a few steps. A wider init gives tiny models the signal scale of real ones.
TINY_INIT_STD = 0.2


# ---- models --------------------------------------------------------------------------------
def _model(family: str, size: str, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    vocab = len(tok) if size == "tiny" else 32128
    ids: dict[str, Any] = {
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
    }
    if family == "bert":
        ids.pop("eos_token_id"), ids.pop("bos_token_id")
        return BertModel(
            BertConfig(
                vocab_size=vocab,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=128,
                initializer_range=TINY_INIT_STD,
                **ids,
            )
        )
    if family == "t5":
        d, layers, heads, ff = {
            "tiny": (32, 2, 4, 64),
            "t5-small": (512, 6, 8, 2048),
            "t5-base": (768, 12, 12, 3072),
        }[size]
        ids.pop("bos_token_id")
        ids["decoder_start_token_id"] = tok.pad_token_id  # T5 starts decoding from <pad>
        buckets = (8, 16) if size == "tiny" else (32, 128)  # small buckets: log-bins in tests
        return T5ForConditionalGeneration(
            T5Config(
                vocab_size=vocab,
                d_model=d,
                d_kv=d // heads,
                d_ff=ff,
                num_layers=layers,
                num_decoder_layers=layers,
                num_heads=heads,
                relative_attention_num_buckets=buckets[0],
                relative_attention_max_distance=buckets[1],
                **ids,
            )
        )
    if family == "bart":
        model = BartForConditionalGeneration(
            BartConfig(
                vocab_size=vocab,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                max_position_embeddings=128,
                scale_embedding=True,
                decoder_start_token_id=tok.eos_token_id,
                forced_eos_token_id=tok.eos_token_id,
                init_std=TINY_INIT_STD,
                **ids,
            )
        )
        # Non-zero, so that tests see it in the logits.
        model.final_logits_bias.normal_(std=0.1)
        return model
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_positions=128,
                initializer_range=TINY_INIT_STD,
                **ids,
            )
        )
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=TINY_INIT_STD,
        **ids,
    )
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **common))
    return Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=True, **common))
