"""A stage on an agent: a range of backbone blocks of one model, ready to run forward.

The model engine (``pac.families``) says how to embed and run a block; this keeps only
what the stage computes: blocks ``[start, end)`` and, when ``start == 0``, the input
embedding. The parameters of everything else are freed (replaced by empty tensors) right
after loading, so a device holds only its share of the backbone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from agent.errors import BadRequest, WeightsMismatch
from agent.weights_memo import WEIGHTS_HASHES
from pac.families import ModelFamily, State, family_for_dir


def _free(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.data = torch.empty(0, dtype=parameter.dtype, device=parameter.device)


def _parameter_bytes(modules: list[nn.Module]) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel() * parameter.element_size()
    return total


@dataclass
class Stage:
    """Blocks ``[start, end)`` of the model in ``model_dir``."""

    model_dir: Path
    start: int
    end: int
    family: ModelFamily
    weights_sha256: str
    load_seconds: float
    parameter_bytes: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @classmethod
    def load(
        cls,
        model_dir: Path,
        start: int,
        end: int,
        expected_sha256: str = "",
        device: torch.device | None = None,
    ) -> Stage:
        """Load blocks ``[start, end)`` (end 0 = to the last block); refuse with
        WeightsMismatch when the weight files do not hash to ``expected_sha256``."""
        started = time.perf_counter()
        digest = WEIGHTS_HASHES.sha256(model_dir)
        if expected_sha256 and digest != expected_sha256.lower():
            raise WeightsMismatch(
                f"weights in {model_dir} hash to {digest[:16]}..., the coordinator expects "
                f"{expected_sha256[:16]}...: copy the same model revision to this device"
            )
        family_class = family_for_dir(model_dir)
        family = family_class(family_class.load(model_dir))
        blocks = family.blocks()
        end = end or len(blocks)
        if not 0 <= start < end <= len(blocks):
            raise BadRequest(
                f"layer range [{start}, {end}) is not inside the model's {len(blocks)} blocks"
            )
        for block in blocks:
            if not start <= block.index < end:
                _free(block.module)
        kept: list[nn.Module] = [b.module for b in blocks[start:end]]
        embedding = family.model.get_input_embeddings()
        if start == 0:
            kept.append(embedding)
        else:
            _free(embedding)
        if device is not None:
            module: nn.Module = family.model
            module.to(device)
        return cls(
            model_dir,
            start,
            end,
            family,
            digest,
            time.perf_counter() - started,
            _parameter_bytes(kept),
            device or torch.device("cpu"),
        )

    @torch.no_grad()
    def forward(self, state: dict[str, torch.Tensor]) -> State:
        """Run the stage on a state (``hidden`` ``[batch, seq, d]``, ``attention_mask``
        ``[batch, seq]``, ...) or, for the first stage, on a batch (``input_ids``,
        ``attention_mask`` ``[batch, seq]``). Returns the state after block ``end - 1``, on
        the stage's device (the wire moves it to the CPU when it is sent)."""
        # Received tensors live in CPU receive buffers; a CUDA or MPS stage computes there.
        state = {name: tensor.to(self.device) for name, tensor in state.items()}
        if self.start == 0 and "hidden" not in state:
            if "input_ids" not in state:
                raise BadRequest(
                    "the first stage needs a batch with input_ids and "
                    "attention_mask, or a state with hidden"
                )
            state = self.family.embed(state)
        elif "hidden" not in state:
            raise BadRequest(
                f"stage [{self.start}, {self.end}) needs a state with 'hidden', got {sorted(state)}"
            )
        for index in range(self.start, self.end):
            state = self.family.run_block(index, state)
        return state

    def release(self) -> int:
        """Free the stage's parameters (the backbone); returns the bytes freed."""
        freed = self.parameter_bytes
        _free(self.family.model)
        self.parameter_bytes = 0
        return freed
