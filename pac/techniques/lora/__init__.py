"""LoRA (via PEFT)."""

from pac.techniques.lora.config import LoraSettings
from pac.techniques.lora.model import LoraModel

__all__ = ["LoraModel", "LoraSettings"]
