"""Full fine-tuning."""

from pac.techniques.full.model import FullFineTuningModel

__all__ = ["FullFineTuningModel"]
