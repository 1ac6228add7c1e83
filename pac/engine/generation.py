"""Greedy generation with a tuned model (seq2seq and causal LM), one example at a time.

Each step reruns the whole model on the prefix: simple and exactly the trained model's
computation; fast enough for the short targets this project predicts.
"""

from __future__ import annotations

import torch

from pac.techniques.base import TunedModel


@torch.no_grad()
def generate(
    model: TunedModel,
    input_ids: list[int],
    *,
    eos_token_id: int | None,
    decoder_start_token_id: int | None,
    max_new_tokens: int,
) -> list[int]:
    """Token ids generated after ``input_ids`` (without the prompt or the start token)."""
    model.eval()
    prompt = torch.tensor([input_ids])
    new: list[int] = []
    for _ in range(max_new_tokens):
        if model.family.is_encoder_decoder:
            assert decoder_start_token_id is not None
            decoder = torch.tensor([[decoder_start_token_id, *new]])
            batch = {
                "input_ids": prompt,
                "attention_mask": torch.ones_like(prompt),
                "decoder_input_ids": decoder,
                "decoder_attention_mask": torch.ones_like(decoder),
            }
        else:
            ids = torch.tensor([[*input_ids, *new]])
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        token = int(model(batch)[0, -1].argmax())
        if token == eos_token_id:
            break
        new.append(token)
    return new
