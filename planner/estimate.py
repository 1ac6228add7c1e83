"""Profiles without measurements: a model from its ``config.json``, a cluster from JSON.

Only ``config.json`` is read (no torch, no weights). Per layer, FLOPs and bytes come from
the architecture: hidden size ``d``, feed-forward size ``f``, heads, sequence length ``s``,
encoder and decoder layers for T5/BART, the vocabulary for the embedding. Parameters,
activations and optimizer state are fp32 (4 bytes). The side network has width ``d / 8``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.profiles import (
    Cluster,
    DeviceProfile,
    LayerProfile,
    LinkProfile,
    ModelProfile,
    Network,
)

BYTES = 4  # fp32
SIDE_REDUCTION = 8
LORA_RANK = 8
ADAPTER_BOTTLENECK = 64


@dataclass(frozen=True)
class LayerShape:
    """What one transformer block costs: FLOPs per token and parameter count."""

    name: str
    d: int
    ff: int
    heads: int
    gated: bool
    cross: bool  # decoder block of an encoder-decoder: cross-attention, carries encoder out


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: tuple[LayerShape, ...]
    vocab: int


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """The model directory's ``config.json`` as a dict (ValueError if absent or broken)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} not found; --model must be a local Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return config


def model_shape(config: dict[str, Any], name: str = "model") -> ModelShape:
    """Encoder/decoder block shapes for BERT-like, T5, BART, GPT-2 and Llama-like configs."""
    kind = str(config.get("model_type", ""))

    def get(*keys: str, default: int | None = None) -> int:
        for key in keys:
            if config.get(key) is not None:
                return int(config[key])
        if default is None:
            raise ValueError(f"config.json ({kind or 'unknown type'}) lacks any of {keys}")
        return default

    vocab = get("vocab_size", default=30522)
    if kind == "t5" or "d_ff" in config:
        d, ff, heads = get("d_model"), get("d_ff"), get("num_heads")
        gated = "gated" in str(config.get("feed_forward_proj", ""))
        enc = get("num_layers")
        dec = get("num_decoder_layers", default=enc)
        layers = [LayerShape(f"encoder.{k}", d, ff, heads, gated, False) for k in range(enc)]
        layers += [LayerShape(f"decoder.{k}", d, ff, heads, gated, True) for k in range(dec)]
    elif "encoder_layers" in config:  # BART, mBART, Marian
        d = get("d_model")
        layers = [
            LayerShape(f"encoder.{k}", d, get("encoder_ffn_dim"), get("encoder_attention_heads"),
                       False, False)
            for k in range(get("encoder_layers"))
        ]
        layers += [
            LayerShape(f"decoder.{k}", d, get("decoder_ffn_dim"), get("decoder_attention_heads"),
                       False, True)
            for k in range(get("decoder_layers"))
        ]
    else:  # BERT-like, GPT-2, Llama-like decoder-only
        d = get("hidden_size", "n_embd", "d_model")
        count = get("num_hidden_layers", "n_layer", "num_layers")
        heads = get("num_attention_heads", "n_head", "num_heads")
        gated = kind in {"llama", "mistral", "qwen2", "gemma", "phi3"} or "rms_norm_eps" in config
        ff = get("intermediate_size", "n_inner", default=4 * d)
        layers = [LayerShape(f"layer.{k}", d, ff, heads, gated, False) for k in range(count)]
    if not layers:
        raise ValueError("config.json describes a model with no layers")
    return ModelShape(name, tuple(layers), vocab)


def layer_params(layer: LayerShape) -> int:
    attention = 4 * layer.d * layer.d * (2 if layer.cross else 1)
    mlp = (3 if layer.gated else 2) * layer.d * layer.ff
    return attention + mlp


def layer_flops(layer: LayerShape, seq: int) -> float:
    """Forward FLOPs of one block for one sample of ``seq`` tokens."""
    scores = 4 * seq * seq * layer.d * (2 if layer.cross else 1)
    return 2.0 * layer_params(layer) * seq + scores


def side_params(layer: LayerShape) -> int:
    side = max(1, layer.d // SIDE_REDUCTION)
    return layer.d * side + 12 * side * side  # down-projection + a block of width d/8


def side_flops(layer: LayerShape, seq: int) -> float:
    """Side block forward + backward FLOPs per sample (backward ~ 2x forward)."""
    return 3 * 2.0 * side_params(layer) * seq


def model_profile(shape: ModelShape, seq: int) -> ModelProfile:
    """Bytes per layer for the planner (embedding folded into the first layer)."""
    layers = []
    for k, layer in enumerate(shape.layers):
        d, side = layer.d, max(1, layer.d // SIDE_REDUCTION)
        carried = 2 if layer.cross else 1  # decoder stages also pass the encoder output on
        weights = layer_params(layer) * BYTES + (shape.vocab * d * BYTES if k == 0 else 0)
        layers.append(LayerProfile(
            name=layer.name,
            weight_bytes=weights,
            activation_bytes=carried * seq * d * BYTES,
            side_param_bytes=side_params(layer) * BYTES,
            side_activation_bytes=seq * side * BYTES,
            backbone_stash_bytes=(seq * (10 * d + 2 * layer.ff) + 2 * layer.heads * seq * seq)
            * BYTES,
            side_stash_bytes=(seq * 18 * side + seq * d) * BYTES,
            lora_param_bytes=2 * 2 * d * LORA_RANK * BYTES,
            adapter_param_bytes=2 * 2 * d * ADAPTER_BOTTLENECK * BYTES,
        ))
    return ModelProfile(shape.name, tuple(layers))


# Backward / forward time of a block when not measured: full fine-tuning computes the input
# and the weight gradients (~2x forward); LoRA and adapters the input's gradient through the
# frozen weights (~1x) plus their small matrices.
BACKWARD_RULE_OF_THUMB = {"full": 2.0, "lora": 1.05, "adapters": 1.1}


def device_profile(
    name: str, shape: ModelShape, seq: int, memory_bytes: int,
    gflops: float | None = None, layer_forward_s: float | None = None,
    micro_batch_overhead_s: float = 0.0, side_layer_s: float | None = None,
    backward_ratio: tuple[str, float] | None = None,
    cpu_pool: str = "", pool_cores: int = 0, threads: int = 1,
) -> DeviceProfile:
    """Per-layer times from a throughput (GFLOP/s) or one measured mean layer time.

    ``side_layer_s``: a measured mean side-block forward + backward per sample; the side
    blocks' times are then scaled from it by their FLOPs (small matmuls and a backward run
    at a lower rate than the backbone's, so the backbone's rate underestimates them).
    ``backward_ratio``: ``(technique, measured backward / forward time)`` of a baseline's
    blocks; that technique's backward is then the forward times the ratio instead of the
    rule of thumb (full ~2x, LoRA ~1.05x, adapters ~1.1x).
    ``micro_batch_overhead_s``: the device's fixed seconds per micro-batch and stage (see
    :class:`DeviceProfile`), passed through, as are ``cpu_pool``, ``pool_cores`` and
    ``threads`` (devices that share CPU cores).
    """
    flops = [layer_flops(layer, seq) for layer in shape.layers]
    if layer_forward_s is not None:
        rate = (sum(flops) / len(flops)) / layer_forward_s
    elif gflops:
        rate = gflops * 1e9
    else:
        raise ValueError(
            f"device {name!r} needs 'gflops' or 'layer_forward_ms' in the cluster file"
        )
    forward = tuple(f / rate for f in flops)
    ratios = dict(BACKWARD_RULE_OF_THUMB)
    if backward_ratio is not None and backward_ratio[1] > 0:
        ratios[backward_ratio[0]] = backward_ratio[1]
    side_work = [side_flops(layer, seq) for layer in shape.layers]
    side_rate = rate
    if side_layer_s is not None and side_layer_s > 0:
        side_rate = (sum(side_work) / len(side_work)) / side_layer_s
    side = tuple(f / side_rate for f in side_work)
    return DeviceProfile(
        name=name,
        forward_s=forward,
        side_s=side,
        memory_bytes=memory_bytes,
        # Full: activation and weight gradients (~2x forward); LoRA/adapters: activation
        # gradients through the frozen weights (~1x) plus the small adapters.
        backward_s=tuple(
            (technique, tuple(ratios[technique] * f for f in forward))
            for technique in ("full", "lora", "adapters")
        ),
        gflops=rate / 1e9,
        micro_batch_overhead_s=micro_batch_overhead_s,
        cpu_pool=cpu_pool,
        pool_cores=pool_cores,
        threads=threads,
    )


def split_fixed_cost(
    batch_a: int, seconds_a: float, batch_b: int, seconds_b: float
) -> tuple[float, float]:
    """(seconds per sample, fixed seconds per call) from one timing at each of two batches.

    The line through ``(batch_a, seconds_a)`` and ``(batch_b, seconds_b)``: its slope is the
    per-sample time, its intercept the fixed cost (what ``micro_batch_overhead_s`` wants).
    Noise can tilt the line: the fixed cost is clipped to [0, the smaller timing] and the
    per-sample time then refitted to the larger batch.
    """
    if batch_a == batch_b or min(batch_a, batch_b) < 1:
        raise ValueError(f"time two different batch sizes >= 1, got {batch_a} and {batch_b}")
    if min(seconds_a, seconds_b) <= 0:
        raise ValueError(f"timings must be positive, got {seconds_a} and {seconds_b}")
    (small, t_small), (large, t_large) = sorted(((batch_a, seconds_a), (batch_b, seconds_b)))
    if t_large <= t_small:
        # The larger batch measured no slower (noise): no fixed cost can be told apart.
        return t_large / large, 0.0
    slope = (t_large - t_small) / (large - small)
    fixed = min(max(t_small - slope * small, 0.0), t_small)
    return (t_large - fixed) / large, fixed


def _link(spec: dict[str, Any], where: str) -> LinkProfile:
    try:
        mbps = float(spec["bandwidth_mbps"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: a link needs 'bandwidth_mbps' (Mbit/s)") from error
    if mbps <= 0:
        raise ValueError(f"{where}: bandwidth_mbps must be positive, got {mbps}")
    return LinkProfile(mbps * 1e6 / 8, float(spec.get("latency_ms", 0.0)) / 1e3)


def _overhead_s(spec: dict[str, Any], where: str) -> float:
    """A device's fixed cost per micro-batch from ``micro_batch_overhead_ms`` (or ``_s``)."""
    given = [k for k in ("micro_batch_overhead_ms", "micro_batch_overhead_s") if k in spec]
    if not given:
        return 0.0
    if len(given) > 1:
        raise ValueError(f"{where}: give micro_batch_overhead_ms or micro_batch_overhead_s, "
                         "not both")
    try:
        value = float(spec[given[0]])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {given[0]} must be a number") from error
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{where}: {given[0]} must be a finite number >= 0, got {value}")
    return value / 1e3 if given[0].endswith("_ms") else value


def cluster_from_json(data: dict[str, Any], shape: ModelShape, seq: int) -> Cluster:
    """The cluster file's devices (``count`` copies named ``name-1``...) and links.

    A device: ``name``, ``memory_gb``, ``gflops`` or ``layer_forward_ms`` (measured mean
    time of one layer per sample), optional ``count`` and ``micro_batch_overhead_ms``
    (fixed milliseconds per micro-batch and stage; ``micro_batch_overhead_s`` in seconds
    also works), and for devices that share a machine's CPU cores ``cpu_pool`` (a name),
    ``pool_cores`` and ``threads`` (each device's; default 1). Links: ``default`` and
    ``overrides`` (``between``: [device, device]), each with ``bandwidth_mbps`` and
    ``latency_ms``.
    """
    specs = data.get("devices")
    if not isinstance(specs, list) or not specs:
        raise ValueError("the cluster file needs a non-empty 'devices' list")
    devices = []
    for n, spec in enumerate(specs):
        if "name" not in spec or "memory_gb" not in spec:
            raise ValueError(f"devices[{n}] needs 'name' and 'memory_gb'")
        count = int(spec.get("count", 1))
        forward_ms = spec.get("layer_forward_ms")
        overhead = _overhead_s(spec, f"devices[{n}]")
        for k in range(count):
            name = str(spec["name"]) if count == 1 else f"{spec['name']}-{k + 1}"
            devices.append(device_profile(
                name, shape, seq, int(float(spec["memory_gb"]) * (1 << 30)),
                gflops=spec.get("gflops"),
                layer_forward_s=None if forward_ms is None else float(forward_ms) / 1e3,
                micro_batch_overhead_s=overhead,
                cpu_pool=str(spec.get("cpu_pool", "")),
                pool_cores=int(spec.get("pool_cores", 0)),
                threads=int(spec.get("threads", 1)),
            ))
    links = data.get("links", {})
    default = _link(links.get("default", {"bandwidth_mbps": 1000, "latency_ms": 0.2}),
                    "links.default")
    overrides = []
    for n, spec in enumerate(links.get("overrides", [])):
        pair = spec.get("between")
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError(f"links.overrides[{n}] needs 'between': [device, device]")
        overrides.append((str(pair[0]), str(pair[1]), _link(spec, f"links.overrides[{n}]")))
    cluster = Cluster(tuple(devices), Network(default, tuple(overrides)))
    known = {d.name for d in devices}
    for a, b, _ in overrides:
        if a not in known or b not in known:
            raise ValueError(f"link override names an unknown device: {a!r}, {b!r}; "
                             f"devices are {sorted(known)}")
    return cluster
