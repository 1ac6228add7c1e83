"""Parallel Adapters (side-tuning with a gated ladder), the PAC technique."""

from pac.techniques.parallel_adapters.config import ParallelAdaptersConfig
from pac.techniques.parallel_adapters.model import ParallelAdaptersModel, SideNetwork

__all__ = ["ParallelAdaptersConfig", "ParallelAdaptersModel", "SideNetwork"]
