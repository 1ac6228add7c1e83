"""Who owns each sample in the cache phase, chosen so that little of the cache moves.

After epoch 1 a device holds, for every sample it computed, its stage's layers of that
sample's cache. In the cache phase each sample needs one owner holding all its layers, and
each device owns a number of samples proportional to its speed. The devices holding the
most layers per sample choose first, and each takes the samples it already holds the
most of: what a device holds of its own samples stays where it is; everything else moves.
This is the rule the planner's redistribution estimate assumes
(:func:`planner.cache_phase.redistribution`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pac.pipeline.batch_part import pipeline_positions
from pac.pipeline.layout import PipelineLayout
from pac.pipeline.routing import split_counts

# device -> sample fingerprint -> layers of that sample's cache the device holds
Holdings = dict[str, dict[str, int]]


def epoch_holdings(layout: PipelineLayout, batches: Sequence[Sequence[str]]) -> Holdings:
    """What each device of ``layout`` cached in an epoch over ``batches`` (each a list of
    sample fingerprints, in the order the pipeline computed the mini-batch's rows:
    :meth:`pac.pipeline.batch_part.BatchPart.by_micro_batch`)."""
    held: Holdings = {device: {} for device in layout.devices}
    for group in batches:
        for stage in layout.stages:
            layers = stage.end - stage.begin
            for device in stage.devices:
                mine = held[device]
                for position in pipeline_positions(layout, device, len(group)):
                    fingerprint = group[position]
                    mine[fingerprint] = mine.get(fingerprint, 0) + layers
    return held


def owners_by_holdings(
    fingerprints: Sequence[str],
    devices: Sequence[str],
    shares: Sequence[float],
    held: Mapping[str, Mapping[str, int]],
) -> dict[str, str]:
    """Each sample's owner: ``devices[k]`` owns ``shares[k] / sum(shares)`` of the samples
    (whole samples, largest remainder), preferring samples it holds more layers of."""
    if len(devices) != len(shares):
        raise ValueError(f"{len(devices)} devices but {len(shares)} shares")
    quotas = dict(zip(devices, split_counts(len(fingerprints), shares), strict=True))
    order = sorted(
        range(len(devices)),
        key=lambda k: -max(held.get(devices[k], {}).values(), default=0),
    )
    owners: dict[str, str] = {}
    for k in order:
        device = devices[k]
        mine = held.get(device, {})
        free = [f for f in fingerprints if f not in owners]
        # sorted() is stable: among equal holdings the data set's order decides
        for fingerprint in sorted(free, key=lambda f: -mine.get(f, 0))[: quotas[device]]:
            owners[fingerprint] = device
    return owners


def bytes_to_move(
    owners: Mapping[str, str],
    held: Mapping[str, Mapping[str, int]],
    layers: int,
    bytes_per_layer: Mapping[str, int] | None = None,
) -> int:
    """Cache bytes that must travel for ``owners``: every layer of a sample its owner does
    not hold. ``bytes_per_layer[fingerprint]`` (1 if not given: then a count of layers)."""
    total = 0
    for fingerprint, owner in owners.items():
        missing = layers - held.get(owner, {}).get(fingerprint, 0)
        total += missing * (bytes_per_layer or {}).get(fingerprint, 1)
    return total
