"""What the planner is told: devices, links, the model's layers, the technique.

All values are frozen dataclasses (printable, comparable, hashable). Times are seconds per
*sample* per layer; sizes are bytes. A device that processes ``k`` samples of a layer takes
``k`` times the per-sample time, plus a fixed cost per micro-batch and stage
(``DeviceProfile.micro_batch_overhead_s``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field


class Technique(str, enum.Enum):
    """How the model is fine-tuned; decides what runs backward and what is trained."""

    PARALLEL_ADAPTERS = "parallel-adapters"
    FULL = "full"
    LORA = "lora"
    ADAPTERS = "adapters"

    @classmethod
    def parse(cls, value: str | Technique) -> Technique:
        """``'lora'`` -> ``Technique.LORA``; raises ValueError listing the choices."""
        if isinstance(value, Technique):
            return value
        for member in cls:
            if member.value == value:
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"unknown technique {value!r}; choose one of {choices}")


@dataclass(frozen=True)
class DeviceProfile:
    """One device as measured (or estimated) for one model.

    ``forward_s[l]``: backbone forward of layer ``l``, seconds per sample.
    ``side_s[l]``: the side block of layer ``l``, forward + backward, seconds per sample.
    ``backward_s``: for the baselines, ``(technique, per-layer backward seconds per sample)``
    pairs, e.g. ``(("full", (...)), ("lora", (...)))``; a technique missing here cannot be
    planned on this device.
    ``memory_bytes``: memory usable for training; ``gflops`` is informational.
    ``micro_batch_overhead_s``: seconds the device spends on every micro-batch of a stage
    whatever its share (kernel launches, Python dispatch, message handling): what makes
    many small micro-batches dearer than a few large ones. Estimated from profiling at two
    batch sizes (the intercept of time against samples); 0 when unknown.
    ``cpu_pool``: devices of a cluster with the same non-empty pool compute on the same
    ``pool_cores`` CPU cores (agents on one machine), ``threads`` threads each; their
    times were measured with every device of the pool in the cluster measuring at once
    (see planner/cpu_pools.py). "" = a device of its own.
    """

    name: str
    forward_s: tuple[float, ...]
    side_s: tuple[float, ...]
    memory_bytes: int
    backward_s: tuple[tuple[str, tuple[float, ...]], ...] = ()
    gflops: float = 0.0
    micro_batch_overhead_s: float = 0.0
    cpu_pool: str = ""
    pool_cores: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.micro_batch_overhead_s) and self.micro_batch_overhead_s >= 0):
            raise ValueError(
                f"device {self.name!r}: micro_batch_overhead_s must be a finite number of "
                f"seconds >= 0, got {self.micro_batch_overhead_s}"
            )
        if self.cpu_pool and (self.pool_cores < 1 or self.threads < 1):
            raise ValueError(
                f"device {self.name!r} in CPU pool {self.cpu_pool!r} needs pool_cores >= 1 "
                f"and threads >= 1, got {self.pool_cores} and {self.threads}"
            )

    def backward_for(self, technique: Technique) -> tuple[float, ...]:
        """Per-layer backward seconds per sample through the backbone for a baseline."""
        for name, times in self.backward_s:
            if name == technique.value:
                return times
        raise ValueError(
            f"device {self.name!r} has no backward times for technique {technique.value!r}; "
            "profile it for that technique or plan with parallel-adapters"
        )

    def work_s(self, technique: Technique) -> tuple[float, ...]:
        """Per-layer seconds per sample of one forward + backward under ``technique``.

        Parallel adapters never run the backward through the backbone: backbone forward +
        side block (forward and backward). The baselines: backbone forward + backward.
        """
        if technique is Technique.PARALLEL_ADAPTERS:
            return tuple(f + s for f, s in zip(self.forward_s, self.side_s, strict=True))
        back = self.backward_for(technique)
        return tuple(f + b for f, b in zip(self.forward_s, back, strict=True))


@dataclass(frozen=True)
class LinkProfile:
    """A link between two devices: bytes per second and one-way latency in seconds."""

    bandwidth_bps: float
    latency_s: float = 0.0


@dataclass(frozen=True)
class Network:
    """The bandwidth matrix, written as a default link plus per-pair overrides.

    Links are symmetric and independent of each other (a switched network: one
    transfer does not slow another down).
    """

    default: LinkProfile
    overrides: tuple[tuple[str, str, LinkProfile], ...] = ()

    def link(self, a: str, b: str) -> LinkProfile:
        """The link between devices ``a`` and ``b`` (order does not matter)."""
        for x, y, link in self.overrides:
            if {x, y} == {a, b}:
                return link
        return self.default


@dataclass(frozen=True)
class Cluster:
    """The devices that take part and the network between them."""

    devices: tuple[DeviceProfile, ...]
    network: Network = field(default_factory=lambda: Network(LinkProfile(125e6, 1e-4)))

    def __post_init__(self) -> None:
        names = [d.name for d in self.devices]
        if not names:
            raise ValueError("the cluster has no devices; list at least one")
        if len(set(names)) != len(names):
            raise ValueError(f"device names must be unique, got {names}")
        cores: dict[str, int] = {}
        for device in self.devices:
            if device.cpu_pool and cores.setdefault(device.cpu_pool, device.pool_cores) != (
                device.pool_cores
            ):
                raise ValueError(
                    f"the devices of CPU pool {device.cpu_pool!r} disagree on its cores: "
                    f"{cores[device.cpu_pool]} and {device.pool_cores} ({device.name!r})"
                )


@dataclass(frozen=True)
class LayerProfile:
    """One backbone layer (a transformer block) and its side block, in bytes.

    Per sample: ``activation_bytes`` (backbone hidden state leaving the layer),
    ``side_activation_bytes`` (side hidden state leaving the side block),
    ``backbone_stash_bytes`` (what a backward through the layer keeps per sample),
    ``side_stash_bytes`` (what the side block's backward keeps per sample).
    Per layer: ``weight_bytes`` (backbone weights; embedding/head folded into the first and
    last layer), ``side_param_bytes``, ``lora_param_bytes``, ``adapter_param_bytes``.
    """

    name: str
    weight_bytes: int
    activation_bytes: int
    side_param_bytes: int
    side_activation_bytes: int
    backbone_stash_bytes: int
    side_stash_bytes: int
    lora_param_bytes: int = 0
    adapter_param_bytes: int = 0


# Gradient + Adam's two moments: the bytes of optimizer-side state per trainable byte.
OPTIMIZER_STATE_FACTOR = 3


@dataclass(frozen=True)
class ModelProfile:
    """The model as the planner sees it: an ordered tuple of layers.

    ``micro_batch_tokens``: ``(rows, scale)`` pairs, from the job's data: a micro-batch of
    ``rows`` samples computes ``scale`` times the tokens per sample of the whole mini-batch
    padded to its longest sample (the mesh sorts a mini-batch's rows longest first and cuts
    each micro-batch to its own longest, :mod:`pac.pipeline.micro_columns`). A size not
    listed computes 1.0: the layers' per-sample times are at the mini-batch's padding.

    ``one_stage_tokens``: ``(rows, devices, scale)``: in a stage of every layer (one
    stage), a device computes its rows of a micro-batch cut to their own longest (it meets
    no other device's rows), so a micro-batch of ``rows`` samples on ``devices`` devices
    computes ``scale``, less than its ``micro_batch_tokens`` scale. A pair not listed
    computes as ``micro_batch_tokens`` says."""

    name: str
    layers: tuple[LayerProfile, ...]
    micro_batch_tokens: tuple[tuple[int, float], ...] = ()
    one_stage_tokens: tuple[tuple[int, int, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError(f"model {self.name!r} has no layers")
        for rows, scale in self.micro_batch_tokens:
            if rows < 1 or not 0 < scale <= 1:
                raise ValueError(
                    f"micro-batches of {rows} rows computing {scale} of the padded tokens: "
                    "rows must be at least 1 and the scale in (0, 1]"
                )
        for rows, devices, scale in self.one_stage_tokens:
            if rows < 1 or devices < 1 or not 0 < scale <= 1:
                raise ValueError(
                    f"micro-batches of {rows} rows on {devices} devices computing {scale} of "
                    "the padded tokens: rows and devices must be at least 1 and the scale in "
                    "(0, 1]"
                )

    def token_scale(self, rows: int) -> float:
        """What a micro-batch of ``rows`` samples computes per sample, relative to the
        whole mini-batch padded to its longest sample."""
        return dict(self.micro_batch_tokens).get(rows, 1.0)

    def one_stage_scale(self, rows: int, devices: int) -> float:
        """What a micro-batch of ``rows`` samples computes per sample in a one-stage group
        of ``devices`` devices (``one_stage_tokens``, else :meth:`token_scale`); devices
        beyond ``rows`` get no row and change nothing."""
        for r, d, scale in self.one_stage_tokens:
            if (r, d) == (rows, min(devices, rows)):
                return scale
        return self.token_scale(rows)

    def trainable_bytes(self, technique: Technique) -> tuple[int, ...]:
        """Per layer, the parameter bytes that are trained (and all-reduced in a group)."""
        pick = {
            Technique.PARALLEL_ADAPTERS: lambda x: x.side_param_bytes,
            Technique.FULL: lambda x: x.weight_bytes,
            Technique.LORA: lambda x: x.lora_param_bytes,
            Technique.ADAPTERS: lambda x: x.adapter_param_bytes,
        }[technique]
        return tuple(int(pick(x)) for x in self.layers)

    def resident_bytes(self, technique: Technique) -> tuple[int, ...]:
        """Per layer, the parameter bytes held in memory (frozen and trained)."""
        extra = {
            Technique.PARALLEL_ADAPTERS: lambda x: x.side_param_bytes,
            Technique.FULL: lambda x: 0,
            Technique.LORA: lambda x: x.lora_param_bytes,
            Technique.ADAPTERS: lambda x: x.adapter_param_bytes,
        }[technique]
        return tuple(int(x.weight_bytes + extra(x)) for x in self.layers)

    def optimizer_bytes(self, technique: Technique) -> tuple[int, ...]:
        """Per layer, gradient + optimizer state of the trained parameters."""
        return tuple(OPTIMIZER_STATE_FACTOR * t for t in self.trainable_bytes(technique))

    def stash_bytes(self, technique: Technique) -> tuple[int, ...]:
        """Per layer and sample, what one in-flight micro-batch keeps until its backward."""
        if technique is Technique.PARALLEL_ADAPTERS:
            return tuple(int(x.side_stash_bytes) for x in self.layers)
        return tuple(int(x.backbone_stash_bytes) for x in self.layers)

    def forward_boundary_bytes(self, technique: Technique) -> tuple[int, ...]:
        """Per sample, bytes sent forward when a stage boundary follows layer ``l``."""
        if technique is Technique.PARALLEL_ADAPTERS:
            return tuple(int(x.activation_bytes + x.side_activation_bytes) for x in self.layers)
        return tuple(int(x.activation_bytes) for x in self.layers)

    def backward_boundary_bytes(self, technique: Technique) -> tuple[int, ...]:
        """Per sample, gradient bytes sent backward across a boundary after layer ``l``.

        Parallel adapters send only the side network's gradient: the backbone gets none.
        """
        if technique is Technique.PARALLEL_ADAPTERS:
            return tuple(int(x.side_activation_bytes) for x in self.layers)
        return tuple(int(x.activation_bytes) for x in self.layers)
