"""Bottleneck (Houlsby) adapters."""

from pac.techniques.adapters.config import AdapterSettings
from pac.techniques.adapters.model import AdaptersModel

__all__ = ["AdapterSettings", "AdaptersModel"]
