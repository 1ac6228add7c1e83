"""What T5 and BART share: decoder inputs and the switch from encoder to decoder state."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pac.families.base import State


def decoder_inputs(
    batch: dict[str, torch.Tensor], decoder_start_token_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoder_input_ids`` and ``decoder_attention_mask`` ``[batch, tgt]`` from the batch;
    without them a single start token per sample (a linear head reads that position)."""
    ids = batch.get("decoder_input_ids")
    if ids is None:
        if decoder_start_token_id is None:
            raise ValueError(
                "the batch has no decoder_input_ids and the config no decoder_start_token_id"
            )
        rows = batch["input_ids"].shape[0]
        ids = torch.full((rows, 1), decoder_start_token_id, device=batch["input_ids"].device)
    mask = batch.get("decoder_attention_mask")
    if mask is None:
        mask = torch.ones_like(ids)
    return ids, mask


def switch_to_decoder(
    state: State, encoder_final: Callable[[torch.Tensor], torch.Tensor] | None
) -> State:
    """Before the first decoder block: the encoder output (after ``encoder_final``, the
    encoder's final norm where there is one) becomes ``encoder_hidden`` with its mask, and
    the embedded decoder input becomes ``hidden`` with ``attention_mask``."""
    encoder_hidden = state["hidden"]
    if encoder_final is not None:
        encoder_hidden = encoder_final(encoder_hidden)
    rest = {
        key: value
        for key, value in state.items()
        if key not in ("hidden", "attention_mask", "decoder_hidden", "decoder_attention_mask")
    }
    return {
        **rest,
        "hidden": state["decoder_hidden"],
        "attention_mask": state["decoder_attention_mask"],
        "encoder_hidden": encoder_hidden,
        "encoder_attention_mask": state["attention_mask"],
    }
