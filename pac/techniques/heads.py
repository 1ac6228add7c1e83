"""Task heads shared by every technique.

A linear head pools the last stack's final hidden state (mean over real tokens for
encoders and encoder-decoders, the last real token for decoder-only models) and maps it
to classes or a regression value. Text tasks use the backbone's own (frozen) LM head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.backbone_dtype import module_dtype

IGNORE_INDEX = -100


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs are lifted to fp32 for the loss; fp32/fp64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def output_mask(family: ModelFamily, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The 0/1 mask ``[batch, seq]`` of the stack whose final hidden state the head reads."""
    if family.is_encoder_decoder:
        return batch["decoder_attention_mask"]
    return batch["attention_mask"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, last_token: bool) -> torch.Tensor:
    """``hidden`` ``[batch, seq, d]``, ``mask`` ``[batch, seq]`` -> ``[batch, d]``."""
    if last_token:
        last = mask.long().sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def loss_count(task: TaskSpec, batch: dict[str, torch.Tensor]) -> int:
    """How many terms a task's loss sums over ``batch``: samples, or target tokens."""
    labels = batch["labels"]
    if not task.generates_text:
        return int(labels.shape[0])
    if task.kind == "causal-lm":
        labels = labels[:, 1:]
    return int((labels != IGNORE_INDEX).sum())


class TaskHead(nn.Module):
    """Maps the final hidden state ``[batch, seq, d]`` to the task's outputs."""

    def __init__(self, family: ModelFamily, task: TaskSpec) -> None:
        super().__init__()
        self.task = task
        self.last_token = family.causal
        # The LM head belongs to the backbone (frozen, shared); keep a plain reference
        # so that it is not registered (and exported) as part of the head.
        self._family = [family]
        self.linear: nn.Linear | None = None
        if not task.generates_text:
            self.linear = nn.Linear(family.hidden_size, task.num_labels)

    def forward(self, final: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``final`` ``[batch, seq, d]`` in any float dtype: a bf16 backbone's is read by the
        float32 linear head as float32; the frozen LM head (kept in the backbone's dtype)
        gets it in its own dtype and its logits come back in ``final``'s."""
        family = self._family[0]
        if self.linear is None:
            head_dtype = module_dtype(family.model)
            return family.lm_logits(final.to(head_dtype)).to(final.dtype)
        final = final.to(self.linear.weight.dtype)
        pooled = pool(final, output_mask(family, batch), self.last_token)
        logits = self.linear(pooled)
        return logits.squeeze(-1) if self.task.kind == "regression" else logits

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean loss over the batch's samples (or target tokens)."""
        total, count = self.loss_terms(outputs, batch)
        return total / max(count, 1)

    def loss_terms(
        self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """``(sum of per-sample or per-token losses, how many)``: a pipeline splits a
        mini-batch into micro-batches and divides every part's sum by the mini-batch's count,
        so that the parts' gradients add up to exactly the mini-batch's."""
        labels = batch["labels"]
        if self.task.kind == "regression":
            return F.mse_loss(
                _upcast(outputs), labels.to(outputs.dtype), reduction="sum"
            ), labels.numel()
        if self.linear is not None:
            return F.cross_entropy(_upcast(outputs), labels, reduction="sum"), labels.numel()
        if self.task.kind == "causal-lm":
            # Next-token prediction: position t predicts token t + 1.
            outputs, labels = outputs[:, :-1], labels[:, 1:]
        total = F.cross_entropy(
            _upcast(outputs.reshape(-1, outputs.shape[-1])),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total, int((labels != IGNORE_INDEX).sum())

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms :meth:`loss_terms` sums over the whole ``batch``."""
        return loss_count(self.task, batch)

    def predict(
        self, outputs: torch.Tensor, label_first_tokens: list[int] | None = None
    ) -> torch.Tensor:
        """Predictions from outputs: class ids ``[batch]``, values ``[batch]``, or token ids
        ``[batch, seq]``. A text-head classifier picks, at the decoder's first position, the
        label whose first token scores highest (``label_first_tokens[i]`` for class i)."""
        if self.task.kind == "regression":
            return outputs.float()
        if self.linear is not None:
            return outputs.argmax(dim=-1)
        if self.task.kind == "classification":
            if label_first_tokens is None:
                raise ValueError("a text-head classifier needs the labels' first tokens")
            return outputs[:, 0, label_first_tokens].argmax(dim=-1)
        return outputs.argmax(dim=-1)
