"""encode: what each (task, model shape) pair produces, with real and tiny tokenizers."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerBase

from pac.data import DataError, Example
from pac.data.encoding import IGNORE_INDEX, encode, pad_token_id
from pac.tasks import TaskSpec

CLASSES = TaskSpec("classification", labels=("fresh", "rotten"))
START = 0  # T5's decoder start token is its pad token


def ex(text: str, target: str | float | None = None, pair: str | None = None) -> Example:
    return Example(text, pair, target, "data.jsonl", 7)


def test_encoder_classification_uses_the_tokenizer_as_is(
    minilm_tokenizer: PreTrainedTokenizerBase,
) -> None:
    data = [ex("A fine film.", "fresh"), ex("Dull.", "rotten", pair="Very dull.")]
    samples = encode(data, minilm_tokenizer, CLASSES, is_encoder_decoder=False,
                     decoder_start_token_id=None)
    assert samples[0].input_ids == tuple(minilm_tokenizer("A fine film.")["input_ids"])
    assert samples[1].input_ids == tuple(minilm_tokenizer("Dull.", "Very dull.")["input_ids"])
    assert samples[0].input_ids[0] == minilm_tokenizer.cls_token_id
    assert [s.label for s in samples] == [0, 1]
    assert [s.index for s in samples] == [0, 1]
    assert all(s.target_ids is None and s.decoder_input_ids is None for s in samples)


def test_inputs_are_truncated_to_max_length(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    task = TaskSpec("classification", labels=("a", "b"), max_length=6)
    (sample,) = encode([ex("one two three four five six seven eight", "a")], minilm_tokenizer,
                       task, is_encoder_decoder=False, decoder_start_token_id=None)
    assert len(sample.input_ids) == 6
    assert sample.input_ids[-1] == minilm_tokenizer.sep_token_id


def test_regression_label_is_a_float(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    (sample,) = encode([ex("close", "3.25", pair="near")], minilm_tokenizer,
                       TaskSpec("regression"), is_encoder_decoder=False,
                       decoder_start_token_id=None)
    assert sample.label == 3.25 and isinstance(sample.label, float)


def test_encoder_decoder_linear_head_gets_one_decoder_start(
    t5_tokenizer: PreTrainedTokenizerBase,
) -> None:
    (sample,) = encode([ex("the movie was good", "fresh")], t5_tokenizer, CLASSES,
                       is_encoder_decoder=True, decoder_start_token_id=START)
    assert sample.input_ids == tuple(t5_tokenizer("the movie was good")["input_ids"])
    assert sample.decoder_input_ids == (START,)
    assert sample.label == 0 and sample.target_ids is None


def test_text_head_targets_the_class_name_shifted_right(
    t5_tokenizer: PreTrainedTokenizerBase,
) -> None:
    task = TaskSpec("classification", labels=("fresh", "rotten"), head="text")
    (sample,) = encode([ex("the movie was bad", "rotten")], t5_tokenizer, task,
                       is_encoder_decoder=True, decoder_start_token_id=START)
    rotten = tuple(t5_tokenizer(text_target="rotten")["input_ids"])
    assert rotten[-1] == t5_tokenizer.eos_token_id
    assert sample.target_ids == rotten
    assert sample.decoder_input_ids == (START, *rotten[:-1])
    assert sample.label == 1


def test_seq2seq_with_a_bart_like_tokenizer(bart_tokenizer: PreTrainedTokenizerBase) -> None:
    task = TaskSpec("seq2seq", max_target_length=4)
    (sample,) = encode([ex("translate hello world to french", "bonjour le monde monde monde")],
                       bart_tokenizer, task, is_encoder_decoder=True, decoder_start_token_id=2)
    target = bart_tokenizer(text_target="bonjour le monde monde monde", truncation=True,
                            max_length=4)["input_ids"]
    assert len(target) == 4
    assert sample.target_ids == tuple(target)
    assert sample.decoder_input_ids == (2, *target[:-1])
    assert sample.label is None


def test_causal_lm_masks_the_prompt_and_appends_eos(
    gpt2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    eos = gpt2_tokenizer.eos_token_id
    (sample,) = encode([ex("the movie was", "great")], gpt2_tokenizer, TaskSpec("causal-lm"),
                       is_encoder_decoder=False, decoder_start_token_id=None)
    prompt = gpt2_tokenizer("the movie was")["input_ids"]
    answer = gpt2_tokenizer("great", add_special_tokens=False)["input_ids"]
    assert sample.input_ids == (*prompt, *answer, eos)
    assert sample.target_ids == (*[IGNORE_INDEX] * len(prompt), *answer, eos)
    assert len(sample.target_ids) == len(sample.input_ids)
    assert sample.label is None and sample.decoder_input_ids is None


def test_causal_lm_without_target_learns_the_whole_text(
    gpt2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    (sample,) = encode([ex("hello world")], gpt2_tokenizer, TaskSpec("causal-lm"),
                       is_encoder_decoder=False, decoder_start_token_id=None)
    expected = tuple(gpt2_tokenizer("hello world")["input_ids"])
    assert sample.target_ids == sample.input_ids == expected


def test_causal_lm_target_is_cut_to_max_target_length_with_eos(
    gpt2_tokenizer: PreTrainedTokenizerBase,
) -> None:
    task = TaskSpec("causal-lm", max_target_length=3)
    (sample,) = encode([ex("a", "b c a b c")], gpt2_tokenizer, task,
                       is_encoder_decoder=False, decoder_start_token_id=None)
    assert sample.target_ids is not None
    assert sample.target_ids[1:] == (*gpt2_tokenizer("b c", add_special_tokens=False)["input_ids"],
                                     gpt2_tokenizer.eos_token_id)


def test_pad_token_falls_back_to_eos(gpt2_tokenizer: PreTrainedTokenizerBase,
                                     t5_tokenizer: PreTrainedTokenizerBase) -> None:
    assert gpt2_tokenizer.pad_token_id is None
    assert pad_token_id(gpt2_tokenizer) == gpt2_tokenizer.eos_token_id
    assert pad_token_id(t5_tokenizer) == t5_tokenizer.pad_token_id == 0


def test_fingerprint_follows_tokens_and_label(minilm_tokenizer: PreTrainedTokenizerBase,
                                              t5_tokenizer: PreTrainedTokenizerBase) -> None:
    def fp(tokenizer: PreTrainedTokenizerBase, text: str, label: str = "fresh") -> str:
        (sample,) = encode([ex(text, label)], tokenizer, CLASSES, is_encoder_decoder=False,
                           decoder_start_token_id=None)
        return sample.fingerprint

    base = fp(minilm_tokenizer, "the movie was good")
    assert len(base) == 64 and int(base, 16) >= 0
    assert fp(minilm_tokenizer, "the movie was good") == base
    assert fp(minilm_tokenizer, "the movie was bad") != base
    assert fp(minilm_tokenizer, "the movie was good", "rotten") != base
    assert fp(t5_tokenizer, "the movie was good") != base


def test_text_without_tokens_is_a_data_error(gpt2_tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(DataError, match=r"^data.jsonl:7: the text has no tokens"):
        encode([ex("  ")], gpt2_tokenizer, TaskSpec("causal-lm"), is_encoder_decoder=False,
               decoder_start_token_id=None)


def test_unknown_label_is_reported_by_encode(minilm_tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(DataError, match="label 'meh', which is not a training label"):
        encode([ex("x", "meh")], minilm_tokenizer, CLASSES, is_encoder_decoder=False,
               decoder_start_token_id=None)


@pytest.mark.parametrize(
    ("task", "enc_dec", "start", "message"),
    [
        (TaskSpec("seq2seq"), False, None, "seq2seq needs an encoder-decoder"),
        (TaskSpec("causal-lm"), True, 0, "causal-lm needs a decoder-only"),
        (TaskSpec("classification", ("a", "b"), head="text"), False, None, "head 'text'"),
        (TaskSpec("regression"), True, None, "needs decoder_start_token_id"),
        (TaskSpec("classification"), False, None, "task.labels is empty"),
    ],
)
def test_task_that_does_not_fit_the_model(
    t5_tokenizer: PreTrainedTokenizerBase, task: TaskSpec, enc_dec: bool, start: int | None,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        encode([ex("a b", "a")], t5_tokenizer, task, is_encoder_decoder=enc_dec,
               decoder_start_token_id=start)


def test_inputs_to_predict_have_no_label(t5_tokenizer: PreTrainedTokenizerBase) -> None:
    task = TaskSpec("classification", labels=("fresh", "rotten"), head="text")
    samples = encode([ex("good"), ex("bad")], t5_tokenizer, task, is_encoder_decoder=True,
                     decoder_start_token_id=START)
    assert [(s.label, s.target_ids, s.decoder_input_ids) for s in samples] == [
        (None, None, (START,)), (None, None, (START,))
    ]
    (value,) = encode([ex("good")], t5_tokenizer, TaskSpec("regression"),
                      is_encoder_decoder=False, decoder_start_token_id=None)
    assert value.label is None


def test_a_missing_target_among_labelled_rows_names_the_field(
    minilm_tokenizer: PreTrainedTokenizerBase,
) -> None:
    data = [ex("good", "fresh"), Example("bad", None, None, "train.csv", 3)]
    with pytest.raises(DataError, match=r"^train.csv:3: field 'stars' is missing"):
        encode(data, minilm_tokenizer, CLASSES, is_encoder_decoder=False,
               decoder_start_token_id=None, target_field="stars")
