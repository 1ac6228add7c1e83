"""Loading a local Hugging Face model directory: family, weights and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from pac.families import FamilyError, ModelFamily, family_for_dir
from pac.techniques.backbone_dtype import parse_backbone_dtype

TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "spiece.model",
    "vocab.json",
    "tokenizer.model",
)


@dataclass
class LoadedModel:
    """A backbone behind its family's flat view, with its tokenizer."""

    model_dir: Path
    family: ModelFamily
    tokenizer: PreTrainedTokenizerBase

    @property
    def decoder_start_token_id(self) -> int | None:
        if not self.family.is_encoder_decoder:
            return None
        start = getattr(self.family.model.config, "decoder_start_token_id", None)
        if start is None:
            raise FamilyError(f"{self.model_dir}/config.json has no decoder_start_token_id")
        return int(start)


def load_model(
    model_dir: str | Path,
    dtype: torch.dtype | str = torch.float32,
    backbone: PreTrainedModel | None = None,
) -> LoadedModel:
    """Load ``model_dir`` (``config.json``, weights, tokenizer files) offline, its weights in
    ``dtype`` (a dtype, or a backbone dtype name such as ``"bf16"``, see
    :mod:`pac.techniques.backbone_dtype`); ``backbone``: the directory's model, loaded
    already (its weights are not read again).

    Raises :class:`FamilyError` naming the directory and what is missing."""
    dtype = parse_backbone_dtype(dtype)
    path = Path(model_dir)
    if not path.is_dir():
        raise FamilyError(f"model directory {path} does not exist")
    family_type = family_for_dir(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FamilyError(f"{path} has no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}")
    hf_logging.disable_progress_bar()  # the weights of a local model load in a blink
    model = backbone if backbone is not None else family_type.load(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(model_dir=path, family=family_type(model), tokenizer=tokenizer)
