"""Standalone training on one device: the whole PAC algorithm, and the baselines.

Parallel Adapters: epoch 1 runs the frozen backbone, writes the ladder points of every
training (and evaluation) sample into the activation cache and trains the side network;
then the backbone's weights are released and epochs 2..N train from the cache alone.
Baselines (full, LoRA, adapters) run the backbone forward and backward every epoch.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tqdm import tqdm

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.data.batches import batches
from pac.data.collate import collate
from pac.data.encoding import EncodedSample
from pac.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.evaluation import Evaluation, evaluate_outputs
from pac.engine.export import save_adapters
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import LoadedModel, load_model
from pac.engine.memory import peak_rss_bytes, release_backbone, rss_bytes
from pac.engine.schedule import DEFAULT_LEARNING_RATE, make_optimizer, resume_schedule
from pac.tasks import TaskSpec
from pac.techniques import build_technique
from pac.techniques.backbone_dtype import backbone_dtype_of
from pac.techniques.base import TunedModel
from pac.techniques.parallel_adapters import ParallelAdaptersModel
from pac.techniques.parallel_adapters.ladder import point_mask_key

log = logging.getLogger("pac.train")


@dataclass
class TrainConfig:
    """Everything one standalone training run needs."""

    model_dir: Path
    train_path: Path
    task: TaskSpec
    technique: str = "parallel-adapters"
    technique_settings: dict[str, Any] = field(default_factory=dict)
    eval_path: Path | None = None
    out_dir: Path | None = None
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float | None = None
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0  # AdamW's decoupled weight decay of the trained parameters
    seed: int = 0
    cache_dir: Path | None = None
    cache_precision: str = "fp16"
    use_cache: bool = True
    fields: DataFields = field(default_factory=DataFields)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    progress: bool = False
    # Checkpoint (trained parameters + optimizer state) every K optimizer steps (0 = only at
    # the end of each epoch); written to OUT/checkpoint.safetensors.
    checkpoint_every: int = 0
    # Evaluate after every N-th epoch, and always after the last (1: after each epoch). An
    # evaluation set as large as the training set costs parallel adapters about half of what
    # a cached epoch's training does (the side network's forward, without its backward).
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.eval_every < 1:
            raise ValueError(
                f"eval_every is a number of epochs (1 = after each), not {self.eval_every}"
            )

    @property
    def backbone_dtype(self) -> torch.dtype:
        """The dtype the backbone is loaded in: ``technique_settings["backbone_dtype"]``
        (float32 by default; bfloat16 for a frozen backbone, see
        :mod:`pac.techniques.backbone_dtype`)."""
        return backbone_dtype_of(self.technique_settings)


@dataclass
class EpochReport:
    """One epoch's numbers, as written to ``metrics.jsonl``."""

    epoch: int
    phase: str  # "backbone" (the backbone ran) or "cache" (trained from the cache alone)
    loss: float
    seconds: float
    samples_per_second: float
    rss_bytes: int
    peak_rss_bytes: int
    eval: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "phase": self.phase,
            "loss": self.loss,
            "seconds": round(self.seconds, 4),
            "samples_per_second": round(self.samples_per_second, 2),
            "rss_mb": round(self.rss_bytes / 2**20, 1),
            "peak_rss_mb": round(self.peak_rss_bytes / 2**20, 1),
            **self.eval,
        }


class Trainer:
    """Runs a :class:`TrainConfig`; ``run()`` returns one report per epoch."""

    def __init__(self, config: TrainConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.loaded = loaded or load_model(config.model_dir, dtype=config.backbone_dtype)
        self.task = resolve_task(config.task, config.train_path, config.fields)
        self.train_samples = load_samples(
            config.train_path,
            self.loaded,
            self.task,
            config.fields,
            limit=config.max_train_samples,
        )
        self.eval_samples: list[EncodedSample] = []
        if config.eval_path is not None:
            self.eval_samples = load_samples(
                config.eval_path,
                self.loaded,
                self.task,
                config.fields,
                limit=config.max_eval_samples,
            )
        self.pad_id = pad_id(self.loaded)
        torch.manual_seed(config.seed)
        self.model: TunedModel = build_technique(
            config.technique, self.loaded.family, self.task, config.technique_settings
        )
        self.steps_per_epoch = -(-len(self.train_samples) // config.batch_size)
        learning_rate = config.learning_rate or DEFAULT_LEARNING_RATE[config.technique]
        self.optimizer, self.scheduler = make_optimizer(
            self.model.trainable_parameters(),
            learning_rate,
            total_steps=self.steps_per_epoch * config.epochs,
            warmup_ratio=config.warmup_ratio,
            weight_decay=config.weight_decay,
        )
        self.ladder_cache = self._open_cache()
        self.backbone_released = False
        self.global_step = 0
        self.epoch = 0
        self.released_bytes = 0
        self.rss_before_release = 0
        self.rss_after_release = 0

    # ---- the cache ---------------------------------------------------------------------
    def _open_cache(self) -> LadderCache | None:
        if not (self.config.use_cache and isinstance(self.model, ParallelAdaptersModel)):
            return None
        root = self.config.cache_dir or (self.config.out_dir or Path(".")) / "cache"
        key = CacheKey.for_model_dir(
            self.config.model_dir,
            ladder=self.model.cache_ladder,
            precision=self.config.cache_precision,
        )
        cache = ActivationCache(root, key)
        samples = self.train_samples + self.eval_samples
        token_counts = [self._token_counts(sample) for sample in samples]
        projected = cache.ensure_space_for(token_counts, self.loaded.family.hidden_size)
        log.info("activation cache: %.1f MiB projected at %s", projected / 2**20, cache.root)
        self.cache_projected_bytes = projected
        return LadderCache(cache, self.loaded.family, self.model.points)

    def _token_counts(self, sample: EncodedSample) -> dict[str, int]:
        assert isinstance(self.model, ParallelAdaptersModel)
        decoder_len = len(sample.decoder_input_ids or ())
        family = self.loaded.family
        return {
            point: decoder_len
            if point_mask_key(family, point) == "decoder_attention_mask"
            else len(sample.input_ids)
            for point in self.model.points
        }

    # ---- batches -----------------------------------------------------------------------
    def _outputs(
        self, samples: Sequence[EncodedSample], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The model's outputs for a batch: from the cache when it holds the batch, else
        live (storing the ladder points when a cache is in use)."""
        if self.ladder_cache is None:
            return self.model(batch)
        assert isinstance(self.model, ParallelAdaptersModel)
        if self.ladder_cache.holds(samples):
            ladder = self.ladder_cache.load(samples)
        else:
            if self.backbone_released:
                raise RuntimeError(
                    "a sample is missing from the cache after the backbone was released"
                )
            ladder = self.model.ladder(batch)
            self.ladder_cache.store([s.fingerprint for s in samples], batch, ladder)
        return self.model.forward_from_ladder(ladder, batch)

    def _batches(
        self, samples: list[EncodedSample], epoch: int, shuffle: bool
    ) -> Iterator[tuple[list[EncodedSample], dict[str, torch.Tensor]]]:
        for group in batches(
            samples, self.config.batch_size, shuffle=shuffle, seed=self.config.seed, epoch=epoch
        ):
            yield group, collate(group, self.pad_id, task=self.task)

    # ---- epochs ------------------------------------------------------------------------
    def train_epoch(
        self,
        epoch: int,
        on_step: Callable[[int, float], None] | None = None,
        skip: int = 0,
    ) -> tuple[float, str]:
        """One pass over the training set (after its first ``skip`` mini-batches: a run
        resumed in the middle of the epoch); returns (mean loss, phase)."""
        phase = "cache" if self.backbone_released else "backbone"
        self.epoch = epoch
        self.model.train()
        total, count = 0.0, 0
        steps = itertools.islice(self._batches(self.train_samples, epoch, shuffle=True), skip, None)
        bar = tqdm(
            steps,
            total=self.steps_per_epoch - skip,
            desc=f"epoch {epoch} ({phase})",
            disable=not self.config.progress,
            leave=False,
        )
        for samples, batch in bar:
            outputs = self._outputs(samples, batch)
            loss = self.model.loss(outputs, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.global_step += 1
            every = self.config.checkpoint_every
            if every and self.global_step % every == 0:
                self.checkpoint()
            value = loss.detach().item()
            total += value * len(samples)
            count += len(samples)
            bar.set_postfix(loss=f"{value:.4f}")
            if on_step is not None:
                on_step(count, value)
        if self.ladder_cache is not None:
            self.ladder_cache.cache.flush()
        return total / max(1, count), phase

    @torch.no_grad()
    def evaluate(self) -> Evaluation | None:
        if not self.eval_samples:
            return None
        self.model.eval()
        parts = []
        for samples, batch in self._batches(self.eval_samples, 0, shuffle=False):
            parts.append((batch, self._outputs(samples, batch)))
        if self.ladder_cache is not None:
            self.ladder_cache.cache.flush()
        return evaluate_outputs(self.model, parts, self.loaded.tokenizer)

    def release_backbone(self) -> None:
        """After epoch 1 (and its evaluation) every needed ladder point is cached."""
        self.rss_before_release = rss_bytes()
        self.released_bytes = release_backbone(
            self.loaded.family, keep_lm_head=self.task.generates_text
        )
        self.rss_after_release = rss_bytes()
        self.backbone_released = True
        log.info(
            "released the backbone: %.1f MiB of weights, RSS %.1f -> %.1f MiB",
            self.released_bytes / 2**20,
            self.rss_before_release / 2**20,
            self.rss_after_release / 2**20,
        )

    def resume(self, checkpoint: Path) -> int:
        """Continue from ``checkpoint`` (what :meth:`checkpoint` wrote for the same
        settings): the trained parameters, their optimizer state, the schedule and the
        step; :meth:`run` then goes on from that step. Returns the step."""
        try:
            load_checkpoint(checkpoint, self.model, self.optimizer)
        except KeyError as error:
            raise ValueError(
                f"{checkpoint} was written for other settings: it names {error}, which "
                "this run's model does not train"
            ) from None
        with safe_open(str(checkpoint), framework="pt") as handle:
            self.global_step = int((handle.metadata() or {}).get("step", 0))
        resume_schedule(self.scheduler, self.global_step)
        return self.global_step

    def fill_cache(self) -> int:
        """Cache the ladder points of every training and evaluation sample the cache does
        not hold yet (a resumed run's cache may lack some); returns how many mini-batches
        needed the backbone."""
        if self.ladder_cache is None or self.backbone_released:
            return 0
        assert isinstance(self.model, ParallelAdaptersModel)
        samples = self.train_samples + self.eval_samples
        missing = [
            group
            for group in batches(samples, self.config.batch_size, shuffle=False, seed=0, epoch=0)
            if not self.ladder_cache.holds(group)
        ]
        with torch.no_grad():
            for group in missing:
                batch = collate(group, self.pad_id, task=self.task)
                ladder = self.model.ladder(batch)
                self.ladder_cache.store([s.fingerprint for s in group], batch, ladder)
        self.ladder_cache.cache.flush()
        return len(missing)

    def _release_after_epoch_one(self) -> None:
        """Release the backbone once the cache holds every sample (it may lack some in a
        resumed run)."""
        if self.ladder_cache is not None and not self.backbone_released:
            self.fill_cache()
            self.release_backbone()

    def run(self, on_epoch: Callable[[EpochReport], None] | None = None) -> list[EpochReport]:
        """The epochs (from where :meth:`resume` left the run, if it did), then the
        adapters' export."""
        reports = []
        first, skip = divmod(self.global_step, self.steps_per_epoch)
        for epoch in range(first + 1, self.config.epochs + 1):
            if epoch > 1:  # (resumed past epoch 1)
                self._release_after_epoch_one()
            start = time.perf_counter()
            loss, phase = self.train_epoch(epoch, skip=skip if epoch == first + 1 else 0)
            report = self.end_epoch(epoch, phase, loss, time.perf_counter() - start)
            reports.append(report)
            if on_epoch is not None:
                on_epoch(report)
        self.export()
        return reports

    def end_epoch(self, epoch: int, phase: str, loss: float, seconds: float) -> EpochReport:
        """After an epoch's training: evaluate, checkpoint, release the backbone after the
        cache's first fill, and append the epoch's report to ``metrics.jsonl``. An epoch
        that ``eval_every`` skips reports no evaluation."""
        due = epoch % self.config.eval_every == 0 or epoch == self.config.epochs
        evaluation = self.evaluate() if due else None
        self.checkpoint()
        self._release_after_epoch_one()
        report = EpochReport(
            epoch=epoch,
            phase=phase,
            loss=loss,
            seconds=seconds,
            samples_per_second=len(self.train_samples) / max(seconds, 1e-9),
            rss_bytes=rss_bytes(),
            peak_rss_bytes=peak_rss_bytes(),
            eval=evaluation.metrics if evaluation else {},
        )
        self._write_report(report)
        return report

    def checkpoint(self) -> Path | None:
        """Write OUT/checkpoint.safetensors (atomically); None without an output dir."""
        if self.config.out_dir is None:
            return None
        return save_checkpoint(
            self.config.out_dir / CHECKPOINT_FILE,
            self.model,
            self.optimizer,
            self.global_step,
            self.epoch,
        )

    def _write_report(self, report: EpochReport) -> None:
        if self.config.out_dir is None:
            return
        self.config.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.config.out_dir / "metrics.jsonl", "a") as out:
            out.write(json.dumps(report.to_json()) + "\n")

    def export(self) -> Path | None:
        if self.config.out_dir is None:
            return None
        from pac.cache.key import fingerprint_model_dir

        return save_adapters(
            self.config.out_dir,
            self.model.trainable_state_dict(),
            technique=self.config.technique,
            settings=self.model.config_dict(),
            task=self.task,
            family=self.loaded.family.name,
            model_fingerprint=fingerprint_model_dir(self.config.model_dir),
        )
