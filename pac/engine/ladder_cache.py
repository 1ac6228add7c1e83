"""The activation cache seen from the trainer: padded ladder batches in, padded out.

The backbone produces ladder points for a padded batch ``{point: [batch, seq, d]}``; the
cache stores each sample's points unpadded (real tokens only, by the point's own mask)
under the sample's fingerprint; reading a batch back pads them again with zeros. The
padded positions never reach a real output (they are masked in the side network's
attention and in pooling/loss), so training from the cache equals training live.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pac.cache.store import ActivationCache
from pac.data.encoding import EncodedSample
from pac.families import ModelFamily
from pac.techniques.parallel_adapters.ladder import point_mask_key


class LadderCache:
    def __init__(self, cache: ActivationCache, family: ModelFamily, points: Sequence[str]):
        self.cache = cache
        self.points = list(points)
        self.mask_keys = {point: point_mask_key(family, point) for point in self.points}

    def holds(self, samples: Sequence[EncodedSample]) -> bool:
        return all(sample.fingerprint in self.cache for sample in samples)

    def store(
        self,
        sample_ids: Sequence[str],
        batch: dict[str, torch.Tensor],
        ladder: dict[str, torch.Tensor],
    ) -> None:
        """Write each sample's points, keyed by ``sample_ids`` (the samples' fingerprints):
        those of ``self.points`` that ``ladder`` holds (a pipeline stage computes only its
        own), unpadded, unless the cache holds the sample already."""
        points = [point for point in self.points if point in ladder]
        keys = {self.mask_keys[point] for point in points}
        lengths = {key: batch[key].sum(dim=1).tolist() for key in keys}
        for row, sample_id in enumerate(sample_ids):
            if sample_id in self.cache:
                continue
            self.cache.put(
                sample_id,
                {
                    point: ladder[point][row, : int(lengths[self.mask_keys[point]][row])]
                    for point in points
                },
            )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype a ladder is read in: the narrowest that holds the stored values exactly
        (fp16 for an fp16 cache: half of float32's memory, the same values). The side network
        widens each point to its own dtype as it reads it."""
        return self.cache.codec.exact_dtype

    def load(self, samples: Sequence[EncodedSample]) -> dict[str, torch.Tensor]:
        """``{point: [batch, seq, d]}`` in :attr:`dtype`, zero-padded to the batch's longest."""
        padded, _lengths = self.cache.get_batch(
            [s.fingerprint for s in samples], self.points, self.dtype
        )
        return padded
