"""Synthetic clusters and models for tests and benchmarks (seeded, no files)."""

from __future__ import annotations

import numpy as np

from planner.profiles import (
    Cluster,
    DeviceProfile,
    LayerProfile,
    LinkProfile,
    ModelProfile,
    Network,
)

MIB = 1 << 20


def synthetic_model(num_layers: int, hidden: int = 768, seq: int = 128) -> ModelProfile:
    """A BERT-base-like stack: fp32 weights, fp32 activations, side width hidden / 8."""
    side = hidden // 8
    layers = tuple(
        LayerProfile(
            name=f"layer.{k}",
            weight_bytes=12 * hidden * hidden * 4,
            activation_bytes=seq * hidden * 4,
            side_param_bytes=12 * side * side * 4 + hidden * side * 4,
            side_activation_bytes=seq * side * 4,
            backbone_stash_bytes=16 * seq * hidden * 4,
            side_stash_bytes=16 * seq * side * 4 + seq * hidden * 4,
            lora_param_bytes=4 * 8 * hidden * 4,
            adapter_param_bytes=2 * hidden * 64 * 4,
        )
        for k in range(num_layers)
    )
    return ModelProfile(f"synthetic-{num_layers}", layers)


def device(
    name: str, num_layers: int, seconds: float, memory_bytes: int, jitter: np.ndarray | None = None,
    overhead_s: float = 0.0,
) -> DeviceProfile:
    """A device whose backbone layer takes ``seconds`` per sample (times ``jitter[l]``).

    ``overhead_s``: its fixed seconds per micro-batch and stage.
    """
    scale = np.ones(num_layers) if jitter is None else jitter
    forward = tuple(float(seconds * x) for x in scale)
    return DeviceProfile(
        name=name,
        forward_s=forward,
        side_s=tuple(f * 0.25 for f in forward),
        memory_bytes=int(memory_bytes),
        backward_s=(
            ("full", tuple(2 * f for f in forward)),
            ("lora", tuple(1.6 * f for f in forward)),
            ("adapters", tuple(1.7 * f for f in forward)),
        ),
        gflops=1.0 / seconds,
        micro_batch_overhead_s=overhead_s,
    )


def random_cluster(
    rng: np.random.Generator,
    num_devices: int,
    model: ModelProfile,
    num_types: int | None = None,
    memory_mib: tuple[float, float] = (300, 3000),
    bandwidth_mbps: tuple[float, float] = (50, 1000),
    overhead_ms: tuple[float, float] | None = None,
) -> Cluster:
    """Heterogeneous devices (speed within 8x, memory, per-pair links), seeded.

    With ``num_types`` the devices are copies of that many kinds and share one link
    speed, so that they form exact types. With ``overhead_ms`` each kind draws a fixed
    cost per micro-batch in that range (milliseconds); without, it has none (and the
    random draws are those of a cluster without overheads).
    """
    L = len(model.layers)
    kinds = num_types or num_devices
    speeds = 10 ** rng.uniform(-3, -2.1, size=kinds)
    memories = rng.uniform(*memory_mib, size=kinds) * MIB
    jitters = [rng.uniform(0.8, 1.25, size=L) for _ in range(kinds)]
    overheads = (
        rng.uniform(*overhead_ms, size=kinds) / 1e3 if overhead_ms else np.zeros(kinds)
    )
    kind_of = [k % kinds for k in range(num_devices)] if num_types else list(range(num_devices))
    devices = tuple(
        device(f"dev{d}", L, speeds[k], int(memories[k]), jitters[k], float(overheads[k]))
        for d, k in enumerate(kind_of)
    )
    default = LinkProfile(float(rng.uniform(*bandwidth_mbps)) * 1e6 / 8, 2e-4)
    overrides: list[tuple[str, str, LinkProfile]] = []
    if num_types is None:
        for a in range(num_devices):
            for b in range(a + 1, num_devices):
                if rng.random() < 0.5:
                    bw = float(rng.uniform(*bandwidth_mbps)) * 1e6 / 8
                    overrides.append((f"dev{a}", f"dev{b}", LinkProfile(bw, 2e-4)))
    return Cluster(devices, Network(default, tuple(overrides)))
