"""Which device of a one-stage epoch 1 computes which row, so that the cache phase's steps
are even.

In the cache phase a device computes the rows of each mini-batch whose samples it owns,
and every step waits for its slowest device. A sample's owner is the device that cached
it (:mod:`pac.pipeline.ownership`): with one stage, the device that computed its row in
epoch 1. Epochs are shuffled anew, so a device's rows in a later mini-batch are a random
draw: with rows dealt by position, on 4 devices and mini-batches of 32, the busiest device
of a step computes 1.3-1.55 times the mean's tokens.

Every epoch's mini-batches are known before epoch 1 (seeded per epoch,
:func:`pac.data.batches.batches`), and inside a micro-batch which device computes which
row is free: every row of a micro-batch is computed at the same width. So each row goes,
longest first, to the device with room left in that micro-batch whose later steps that
row joins carry the least work per unit of its speed (greedy; 1.1-1.2 times the mean on
the same mini-batches). Nothing else changes: the same micro-batches, the same widths, the
same sums (in another order), and no cache entry moves for it.

Where the devices pack their rows (:mod:`pac.families.row_packing`), a device's epoch-1
work in a micro-batch is no longer its rows times a common width but its rows' own tokens,
so which device computes which row changes epoch 1's steps too: each row then also counts
what it adds to its device's work in its own micro-batch, weighted by what a token costs in
epoch 1 against a token of the cache phase (``epoch_one_weight``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pac.pipeline.routing import device_rows, micro_batch_rows

Slots = dict[str, int]  # sample fingerprint -> index of the device (in its stage) computing it


def balanced_slots(
    epoch_one: Sequence[Sequence[str]],
    micro_batches: int,
    shares: Sequence[float],
    later: Sequence[Sequence[Sequence[str]]],
    tokens: Mapping[str, float],
    speeds: Sequence[float] | None = None,
    epoch_one_weight: float = 0.0,
) -> Slots:
    """Each sample's device in epoch 1 (an index into ``shares``, the stage's devices).

    ``epoch_one``: its mini-batches, each in the order epoch 1 computes it (longest first:
    :meth:`pac.pipeline.batch_part.BatchPart.by_micro_batch`); ``shares``: the devices'
    shares of a micro-batch; ``later``: the mini-batches of epochs 2..N; ``tokens``: each
    sample's work in the cache phase (its real tokens); ``speeds``: the devices' cache-phase
    speeds (equal by default); ``epoch_one_weight``: with packed rows, a token of epoch 1
    against a token of the cache phase (0: rows are computed at a common width, their
    device changes nothing in epoch 1). Each micro-batch gives each device exactly its
    share of rows (:func:`pac.pipeline.routing.device_rows`)."""
    devices = len(shares)
    if devices < 1:
        raise ValueError("balancing needs at least one device")
    speed = list(speeds) if speeds is not None else [1.0] * devices
    if len(speed) != devices or min(speed) <= 0:
        raise ValueError(f"{devices} devices need {devices} positive speeds, not {speed}")
    # Where each sample trains later: (epoch, step) pairs, as indices into ``load``.
    steps_of: dict[str, list[int]] = {}
    count = 0
    for epoch in later:
        for group in epoch:
            for fingerprint in group:
                steps_of.setdefault(fingerprint, []).append(count)
            count += 1
    load = [[0.0] * devices for _ in range(count)]
    slots: Slots = {}
    for group in epoch_one:
        for micro in micro_batch_rows(len(group), micro_batches):
            room = [stop - start for start, stop in device_rows(micro, shares)]
            first = [0.0] * devices  # each device's tokens of this micro-batch so far
            members = group[micro[0] : micro[1]]  # the most work first (one micro-batch
            # is not sorted longest first: nothing is cut from it)
            for fingerprint in sorted(members, key=lambda f: -float(tokens.get(f, 1.0))):
                steps = steps_of.get(fingerprint, [])
                work = float(tokens.get(fingerprint, 1.0))

                def cost(
                    device: int,
                    steps: list[int] = steps,
                    work: float = work,
                    first: list[float] = first,
                ) -> float:
                    later_work = sum(load[s][device] + work for s in steps)
                    return (epoch_one_weight * (first[device] + work) + later_work) / speed[device]

                device = min((d for d in range(devices) if room[d]), key=lambda d: (cost(d), d))
                room[device] -= 1
                first[device] += work
                slots[fingerprint] = device
                for s in steps:
                    load[s][device] += work
    return slots


def slotted_order(
    order: Sequence[int], ids: Sequence[str], micro_batches: int, slots: Mapping[str, int]
) -> list[int]:
    """``order`` (a mini-batch's rows as epoch 1 computes them) with each micro-batch's
    rows sorted by their samples' slots (stable): the device of slot ``k`` gets the rows of
    slot ``k``, which fill its range of the micro-batch. A sample without a slot keeps its
    place after the slotted ones."""
    placed: list[int] = []
    for start, stop in micro_batch_rows(len(order), micro_batches):
        rows = order[start:stop]
        placed.extend(sorted(rows, key=lambda row: slots.get(ids[row], len(slots) + 1)))
    return placed


def step_loads(
    batches: Sequence[Sequence[str]], owners: Mapping[str, str], tokens: Mapping[str, float]
) -> list[dict[str, float]]:
    """Per mini-batch, each owner's work in the cache phase (the tokens of its rows)."""
    loads = []
    for group in batches:
        load: dict[str, float] = {}
        for fingerprint in group:
            owner = owners[fingerprint]
            load[owner] = load.get(owner, 0.0) + float(tokens.get(fingerprint, 1.0))
        loads.append(load)
    return loads
