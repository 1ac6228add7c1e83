"""The part of a mini-batch that one device is sent: the rows it computes, and only the
keys its stage reads.

The coordinator holds the user's data. In epoch 1 the mini-batch's rows are ordered
longest first and each micro-batch is computed at its own longest row
(:mod:`pac.pipeline.micro_columns`; the part carries each row's width); a device computes,
per micro-batch, the contiguous rows its share gives it (:mod:`pac.pipeline.routing`); it
is sent the union of those rows over the micro-batches. In the cache phase a device is
sent the rows of the samples it owns. Either way the part keeps each row's position in the
mini-batch and the mini-batch's size, so the device places its rows exactly where the
whole batch would, and the whole mini-batch's loss count, so its loss terms add up to the
single-device loss.

Which keys each stage reads (checked against ``pac/families/*.py``, ``stage.py``, the side
network and the heads): the embedding (first stage only) reads the ids and the masks,
decoder ids included (an encoder-decoder family embeds both stacks in ``embed``, and the
decoder's embedded input travels in the state); every stage's side blocks, its cache
writes and the head read the masks; only the head (last stage) reads ``labels``. Nothing
in training reads ``sample_index`` or ``class_labels`` (evaluation does, on the
coordinator). Keys not named here go to the first stage, which is where a family reads
its inputs.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from pac.pipeline.balance import slotted_order
from pac.pipeline.layout import PipelineLayout
from pac.pipeline.micro_columns import cut_columns, micro_batch_cut, used_columns
from pac.pipeline.routing import Rows, device_rows, micro_batch_rows

Tensors = dict[str, torch.Tensor]

MASKS = ("attention_mask", "decoder_attention_mask")
TARGETS = ("labels",)
EVALUATION_ONLY = ("sample_index", "class_labels")
SAMPLE_IDS, LOSS_COUNT = "pac.sample_ids", "pac.loss_count"
POSITIONS, BATCH_SIZE = "pac.positions", "pac.batch_size"
COLUMNS = "pac.columns|"  # + a mask's name: per row, the columns its micro-batch computes


def stage_keys(keys: Iterable[str], first: bool, last: bool) -> list[str]:
    """The batch keys a pipeline stage reads (see the module docstring)."""
    wanted = []
    for key in keys:
        if key in EVALUATION_ONLY:
            continue
        if key in TARGETS:
            if last:
                wanted.append(key)
        elif key in MASKS or first:
            wanted.append(key)
    return wanted


def cache_phase_keys(keys: Iterable[str]) -> list[str]:
    """The batch keys a cache-phase step reads: the ladder comes from the cache, so only
    the masks (to pad it and for the side network) and the labels."""
    return [key for key in keys if key in MASKS or key in TARGETS]


def pipeline_positions(layout: PipelineLayout, device: str, size: int) -> list[int]:
    """The mini-batch rows ``device`` computes in epoch 1: its share of every micro-batch
    (ascending)."""
    stage, rank = layout.locate(device)
    shares = layout.stages[stage].shares
    positions: list[int] = []
    for micro in micro_batch_rows(size, layout.micro_batches):
        start, stop = device_rows(micro, shares)[rank]
        positions.extend(range(start, stop))
    return positions


@dataclass(frozen=True)
class BatchPart:
    """Rows of one mini-batch: ``tensors[k]`` ``[len(positions), ...]`` is the mini-batch's
    row ``positions[k]`` (ascending); ``size`` rows in the whole mini-batch, whose loss
    sums ``loss_count`` terms; ``sample_ids``: the rows' fingerprints (None: not cached);
    ``columns``: per mask, ``[len(positions)]`` int64, how many columns each row's
    micro-batch computes (:mod:`pac.pipeline.micro_columns`; empty: all of them)."""

    tensors: Tensors
    positions: tuple[int, ...]
    size: int
    loss_count: int
    sample_ids: tuple[str, ...] | None = None
    columns: Tensors = field(default_factory=dict)

    @classmethod
    def whole(cls, batch: Tensors, sample_ids: Sequence[str] | None, loss_count: int) -> BatchPart:
        size = next(iter(batch.values())).shape[0]
        ids = tuple(sample_ids) if sample_ids is not None else None
        return cls(dict(batch), tuple(range(size)), size, loss_count, ids)

    def select(self, positions: Sequence[int], keys: Iterable[str]) -> BatchPart:
        """The part holding mini-batch rows ``positions`` (ascending; each held here) and
        only ``keys``."""
        local = [self._local(p) for p in positions]
        index = torch.tensor(local, dtype=torch.long)
        tensors = {key: self.tensors[key].index_select(0, index) for key in keys}
        ids = None if self.sample_ids is None else tuple(self.sample_ids[i] for i in local)
        columns = {mask: width.index_select(0, index) for mask, width in self.columns.items()}
        return BatchPart(tensors, tuple(positions), self.size, self.loss_count, ids, columns)

    def by_micro_batch(
        self, micro_batches: int, slots: Mapping[str, int] | None = None
    ) -> BatchPart:
        """This whole mini-batch for a pipeline of ``micro_batches``: its rows longest
        first, each knowing the columns its micro-batch computes (with one micro-batch,
        unchanged: the mini-batch is already padded to its longest row). With ``slots``
        (sample -> device index, :func:`pac.pipeline.balance.balanced_slots`) each
        micro-batch's rows are then ordered by slot, so that each device of a stage
        computes the rows of its slot."""
        if self.positions != tuple(range(self.size)):
            raise ValueError("only a whole mini-batch (BatchPart.whole) is cut into micro-batches")
        cut = micro_batch_cut(self.tensors, micro_batches)
        order, columns = cut if cut is not None else (list(range(self.size)), {})
        if slots and self.sample_ids is not None:
            placed = slotted_order(order, self.sample_ids, micro_batches, slots)
            where = {row: k for k, row in enumerate(order)}
            moved = torch.tensor([where[row] for row in placed], dtype=torch.long)
            columns = {mask: width.index_select(0, moved) for mask, width in columns.items()}
            order = placed
        if order == list(range(self.size)) and not columns:
            return self
        index = torch.tensor(order, dtype=torch.long)
        tensors = {key: value.index_select(0, index) for key, value in self.tensors.items()}
        ids = None if self.sample_ids is None else tuple(self.sample_ids[i] for i in order)
        return BatchPart(tensors, self.positions, self.size, self.loss_count, ids, columns)

    def _local(self, position: int) -> int:
        local = bisect_left(self.positions, position)
        if local == len(self.positions) or self.positions[local] != position:
            raise KeyError(
                f"row {position} of the mini-batch is not in this part (it holds "
                f"{len(self.positions)} rows); the coordinator sent another device's rows"
            )
        return local

    def _span(self, rows: Rows) -> tuple[int, int]:
        start = self._local(rows[0])
        stop = start + rows[1] - rows[0]
        if stop > len(self.positions) or self.positions[stop - 1] != rows[1] - 1:
            raise KeyError(f"rows [{rows[0]}, {rows[1]}) of the mini-batch are not all here")
        return start, stop

    def rows(self, rows: Rows, own_columns: bool = False) -> Tensors:
        """The tensors of mini-batch rows ``[start, stop)`` (all held here), cut to the
        columns their micro-batch computes; with ``own_columns``, to the columns these rows
        use themselves, where that is fewer (for a device that computes its rows through
        every block: no other device's rows of the micro-batch meet them, and the cut
        changes nothing but rounding, as :mod:`pac.pipeline.micro_columns` says)."""
        start, stop = self._span(rows)
        tensors = {key: value[start:stop] for key, value in self.tensors.items()}
        if start == stop or not (self.columns or own_columns):
            return tensors
        widths = {mask: int(width[start:stop].max()) for mask, width in self.columns.items()}
        if own_columns:
            # With one micro-batch nothing was cut: the rows' own columns are all the cut.
            for mask, columns in used_columns(tensors).items():
                own = max(1, int(columns.max()))
                widths[mask] = min(widths.get(mask, own), own)
        return cut_columns(tensors, widths)

    def ids(self, rows: Rows) -> list[str] | None:
        if self.sample_ids is None:
            return None
        start, stop = self._span(rows)
        return list(self.sample_ids[start:stop])

    def pack(self) -> Tensors:
        """One tensor message: the rows' tensors (int64 ones narrowed where their values
        allow, see :func:`narrow`), their positions, the mini-batch's size and loss count,
        and the fingerprints as ASCII bytes ``[rows, width]`` uint8."""
        message = {
            **{name: t for key, value in self.tensors.items() for name, t in narrow(key, value)},
            POSITIONS: torch.tensor(self.positions, dtype=torch.int64),
            BATCH_SIZE: torch.tensor(self.size, dtype=torch.int64),
            LOSS_COUNT: torch.tensor(self.loss_count, dtype=torch.int64),
            **{
                name: t
                for mask, width in self.columns.items()
                for name, t in narrow(COLUMNS + mask, width)
            },
        }
        if self.sample_ids is not None:
            width = max((len(s) for s in self.sample_ids), default=0)
            ids = torch.zeros(len(self.sample_ids), width, dtype=torch.uint8)
            for row, sample_id in enumerate(self.sample_ids):
                ids[row, : len(sample_id)] = torch.tensor(
                    list(sample_id.encode("ascii")), dtype=torch.uint8
                )
            message[SAMPLE_IDS] = ids
        return message

    @classmethod
    def unpack(cls, message: Mapping[str, torch.Tensor]) -> BatchPart:
        """The inverse of :meth:`pack`."""
        reserved = (SAMPLE_IDS, LOSS_COUNT, POSITIONS, BATCH_SIZE)
        missing = [key for key in reserved[1:] if key not in message]
        if missing:
            raise ValueError(f"a batch message lacks {missing}; pack it with BatchPart.pack")
        unpacked = dict(widen(k, v) for k, v in message.items() if k not in reserved)
        tensors = {k: v for k, v in unpacked.items() if not k.startswith(COLUMNS)}
        columns = {k[len(COLUMNS) :]: v for k, v in unpacked.items() if k.startswith(COLUMNS)}
        ids = None
        if SAMPLE_IDS in message:
            ids = tuple(
                bytes(row.tolist()).rstrip(b"\0").decode("ascii") for row in message[SAMPLE_IDS]
            )
        return cls(
            tensors,
            tuple(int(p) for p in message[POSITIONS].tolist()),
            int(message[BATCH_SIZE]),
            int(message[LOSS_COUNT]),
            ids,
            columns,
        )


NARROWED = "@int64"  # suffix of an int64 tensor that travels as uint8 or int32


def narrow(key: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``[(name, tensor)]`` to send for ``key``: an int64 tensor whose values fit travels
    as uint8 (masks: 8x fewer bytes) or int32 (ids, labels with -100) under
    ``key + NARROWED``; :func:`widen` restores it exactly."""
    if tensor.dtype != torch.int64 or tensor.numel() == 0:
        return [(key, tensor)]
    low, high = int(tensor.min()), int(tensor.max())
    for dtype in (torch.uint8, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return [(key + NARROWED, tensor.to(dtype))]
    return [(key, tensor)]


def widen(name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The inverse of :func:`narrow`."""
    if name.endswith(NARROWED):
        return name[: -len(NARROWED)], tensor.to(torch.int64)
    return name, tensor


def pipeline_parts(
    layout: PipelineLayout, whole: BatchPart, slots: Mapping[str, int] | None = None
) -> dict[str, BatchPart]:
    """What every device is sent for an epoch-1 step: its rows of the mini-batch ordered
    longest first (and by ``slots`` inside each micro-batch: :meth:`BatchPart.by_micro_batch`),
    its stage's keys."""
    cut = whole.by_micro_batch(layout.micro_batches, slots)
    return {device: _stage_part(layout, device, cut) for device in layout.devices}


def pipeline_part(
    layout: PipelineLayout, device: str, whole: BatchPart, slots: Mapping[str, int] | None = None
) -> BatchPart:
    """What ``device`` is sent for an epoch-1 step (see :func:`pipeline_parts`)."""
    return _stage_part(layout, device, whole.by_micro_batch(layout.micro_batches, slots))


def _stage_part(layout: PipelineLayout, device: str, cut: BatchPart) -> BatchPart:
    stage, _ = layout.locate(device)
    keys = stage_keys(cut.tensors, stage == 0, stage == len(layout.stages) - 1)
    return cut.select(pipeline_positions(layout, device, cut.size), keys)


def owned_part(owners: Mapping[str, str], device: str, whole: BatchPart) -> BatchPart:
    """What ``device`` is sent for a cache-phase step: the rows of the samples it owns
    (``owners``: fingerprint -> device), with their masks and labels."""
    if whole.sample_ids is None:
        raise ValueError("a cache-phase step needs the samples' fingerprints")
    positions = [
        whole.positions[i] for i, s in enumerate(whole.sample_ids) if owners[s] == device
    ]
    return whole.select(positions, cache_phase_keys(whole.tensors))


def pack_steps(parts: Sequence[BatchPart]) -> Tensors:
    """The parts of consecutive steps as one tensor message: step ``i``'s packed tensors
    under ``"{i}|{name}"`` (a cache-phase range travels in one message)."""
    return {f"{i}|{name}": t for i, part in enumerate(parts) for name, t in part.pack().items()}


def unpack_steps(message: Mapping[str, torch.Tensor], steps: int) -> list[BatchPart]:
    """The inverse of :func:`pack_steps`, for a message of ``steps`` steps."""
    grouped: list[Tensors] = [{} for _ in range(steps)]
    for name, tensor in message.items():
        index, _, key = name.partition("|")
        if not index.isdigit() or int(index) >= steps:
            raise ValueError(f"tensor {name!r} names no step of a {steps}-step range")
        grouped[int(index)][key] = tensor
    return [BatchPart.unpack(tensors) for tensors in grouped]
