"""Where each part of the model runs: a value the coordinator derives from the planner's
plan and sends to every device."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StageSpec:
    """Blocks ``[begin, end)`` run on ``devices``; device ``k`` takes ``shares[k]`` of
    every micro-batch (shares are proportional to speed; they need not sum to 1)."""

    begin: int
    end: int
    devices: tuple[str, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.devices or len(self.devices) != len(self.shares):
            raise ValueError(f"stage [{self.begin}, {self.end}) needs one share per device")
        if any(share <= 0 for share in self.shares):
            raise ValueError(f"stage [{self.begin}, {self.end}) has a non-positive share")


@dataclass(frozen=True)
class PipelineLayout:
    """The stages in order and the number of micro-batches per mini-batch."""

    stages: tuple[StageSpec, ...]
    micro_batches: int

    def validate(self, num_blocks: int) -> None:
        """The stages must cover blocks ``0..num_blocks-1`` in order, each device once."""
        expected = 0
        for stage in self.stages:
            if stage.begin != expected or stage.end <= stage.begin:
                raise ValueError(
                    f"stages must cover the blocks in order: expected a stage starting at "
                    f"{expected}, got [{stage.begin}, {stage.end})"
                )
            expected = stage.end
        if expected != num_blocks:
            raise ValueError(f"stages cover blocks up to {expected}, the model has {num_blocks}")
        devices = [d for stage in self.stages for d in stage.devices]
        if len(set(devices)) != len(devices):
            raise ValueError(f"a device appears in two stages: {devices}")
        if self.micro_batches < 1:
            raise ValueError("micro_batches must be >= 1")

    def locate(self, device: str) -> tuple[int, int]:
        """``(stage index, rank in the stage's group)`` of ``device``."""
        for index, stage in enumerate(self.stages):
            if device in stage.devices:
                return index, stage.devices.index(device)
        raise KeyError(f"device {device!r} has no stage in this layout")

    @property
    def devices(self) -> list[str]:
        return [d for stage in self.stages for d in stage.devices]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PipelineLayout:
        data = json.loads(text)
        stages = tuple(
            StageSpec(s["begin"], s["end"], tuple(s["devices"]), tuple(s["shares"]))
            for s in data["stages"]
        )
        return cls(stages=stages, micro_batches=int(data["micro_batches"]))
