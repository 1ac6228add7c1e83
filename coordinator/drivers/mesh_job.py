"""What the coordinator holds of a mesh job: the model (tokenizer, and the backbone for
evaluation), the encoded data, the settings every agent gets, and the step counter."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from coordinator.drivers.local import task_spec, technique_settings
from coordinator.jobs import CACHE_DTYPES, JobSpec
from pac.cache.key import fingerprint_model_dir
from pac.data.batches import batches
from pac.data.collate import collate
from pac.data.encoding import EncodedSample
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.evaluation import evaluate_outputs
from pac.engine.export import save_adapters
from pac.engine.loading import LoadedModel, load_model
from pac.engine.schedule import DEFAULT_LEARNING_RATE
from pac.families import ModelFamily
from pac.pipeline.all_reduce import DEFAULT_BUCKET_BYTES
from pac.pipeline.cache_phase import CACHE_PHASE_ALL_REDUCE
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.layout import PipelineLayout
from pac.tasks import TaskSpec
from pac.techniques import build_technique
from pac.techniques.backbone_dtype import backbone_dtype_of
from pac.techniques.base import TunedModel

if TYPE_CHECKING:
    from planner.plan import Plan


def packs_rows(spec: JobSpec, family: ModelFamily) -> bool:
    """Whether a one-stage layout of the job packs its rows (a parallel-adapters stage of
    every block on a family that packs them, unless the job's ``pack_rows`` setting is
    false: :class:`pac.pipeline.stage.SideStage`)."""
    wanted = bool(spec.technique_settings.get("pack_rows", True))
    return spec.technique == "parallel-adapters" and wanted and family.packs_rows


class JobInputs(NamedTuple):
    """What a job reads on the coordinator whatever its layout: the model, the task, the
    encoded training and evaluation samples, the model directory's fingerprint, and the
    tuned model built on the loaded one for evaluation and export."""

    loaded: LoadedModel
    task: TaskSpec
    samples: list[EncodedSample]
    eval_samples: list[EncodedSample]
    fingerprint: str
    model: TunedModel

    @classmethod
    def load(cls, spec: JobSpec) -> JobInputs:
        # The job's backbone dtype: the coordinator evaluates (and exports) the model the
        # agents train.
        loaded = load_model(spec.model_dir, dtype=backbone_dtype_of(technique_settings(spec)))
        fields = DataFields(spec.text_field, spec.pair_field, spec.label_field, spec.data_format)
        task = resolve_task(task_spec(spec), Path(spec.data_path), fields)
        samples = load_samples(Path(spec.data_path), loaded, task, fields)
        eval_samples = (
            load_samples(Path(spec.eval_path), loaded, task, fields) if spec.eval_path else []
        )
        # Built here, while the agents are measured, rather than when the job first needs
        # it (redistribution), where every agent would wait for it. The job's seed: its
        # untrained parts equal the agents'.
        torch.manual_seed(spec.seed)
        model = build_technique(spec.technique, loaded.family, task, technique_settings(spec))
        return cls(
            loaded, task, samples, eval_samples, fingerprint_model_dir(spec.model_dir), model
        )

    @classmethod
    def timed_load(cls, spec: JobSpec) -> tuple[JobInputs, float]:
        """:meth:`load`, and the seconds it took."""
        started = time.perf_counter()
        inputs = cls.load(spec)
        return inputs, time.perf_counter() - started


@dataclass
class JobData:
    spec: JobSpec
    loaded: LoadedModel
    task: TaskSpec
    samples: list[EncodedSample]
    eval_samples: list[EncodedSample]
    settings: MeshJobSettings
    # The job's tuned model on the coordinator (JobInputs.model), for evaluation and export.
    tuned: TunedModel
    step: int = 0
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)
    # The planner's predicted step time of the pipeline epoch (0 = a fixed layout).
    predicted_step_s: float = 0.0
    # The planner's plan (None = a fixed layout).
    plan: Plan | None = None
    # Bytes redistribution moved, and the planner's prediction (None before it ran).
    redistribution_bytes: tuple[int, int] | None = None
    # Seconds of the phases around epoch 1 (profile, probe_links, plan, load_data, open_job,
    # redistribute, release: "<phase>_seconds"), written with epoch 1's metrics.
    phases: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        spec: JobSpec,
        layout: PipelineLayout,
        addresses: dict[str, str],
        inputs: JobInputs | None = None,
    ) -> JobData:
        """The job on ``layout``; ``inputs``: its model and data when they were loaded
        already (:meth:`JobInputs.load`, while the agents were being measured)."""
        loaded, task, samples, eval_samples, fingerprint, model = inputs or JobInputs.load(spec)
        settings = technique_settings(spec)
        steps_per_epoch = -(-len(samples) // spec.batch_size)
        mesh = MeshJobSettings(
            model_dir=str(Path(spec.model_dir).resolve()),
            task=task,
            technique=spec.technique,
            technique_settings=settings,
            layout=layout,
            addresses=addresses,
            seed=spec.seed,
            learning_rate=spec.learning_rate or DEFAULT_LEARNING_RATE[spec.technique],
            total_steps=steps_per_epoch * spec.epochs,
            weight_decay=spec.weight_decay,
            cache_precision=CACHE_DTYPES.get(spec.cache_dtype, "fp16"),
            model_fingerprint=fingerprint,
            extra={
                "steps_per_epoch": steps_per_epoch,
                "checkpoint_every": int(spec.technique_settings.get("checkpoint_every", 0)),
                "bucket_bytes": int(
                    spec.technique_settings.get("bucket_bytes", DEFAULT_BUCKET_BYTES)
                ),
                "all_reduce": str(
                    spec.technique_settings.get("all_reduce", CACHE_PHASE_ALL_REDUCE)
                ),
                # 0: the agent's default for the model (pac.pipeline.row_chunks)
                "cache_chunk_bytes": int(spec.technique_settings.get("cache_chunk_bytes", 0)),
                # The agents delete a job's activation cache when it closes, unless kept.
                "keep_cache": bool(spec.technique_settings.get("keep_cache", False)),
            },
        )
        return cls(spec, loaded, task, samples, eval_samples, mesh, model)

    @property
    def steps_per_epoch(self) -> int:
        return int(self.settings.extra["steps_per_epoch"])

    def batches(self, epoch: int) -> list[list[EncodedSample]]:
        """The same order as single-device training (seeded per epoch)."""
        return batches(
            self.samples, self.spec.batch_size, shuffle=True, seed=self.spec.seed, epoch=epoch
        )

    def collate(self, group: list[EncodedSample]) -> dict[str, torch.Tensor]:
        return collate(group, pad_id(self.loaded), task=self.task)

    def model(self) -> TunedModel:
        """The job's model on the coordinator, for evaluation and export."""
        return self.tuned

    @torch.no_grad()
    def evaluate(self, trained: dict[str, torch.Tensor]) -> dict[str, float]:
        model = self.model()
        model.load_state_dict(trained, strict=False)
        if not self.eval_samples:
            return {}
        model.eval()
        parts = []
        for group in batches(
            self.eval_samples, self.spec.batch_size, shuffle=False, seed=0, epoch=0
        ):
            batch = self.collate(group)
            parts.append((batch, model(batch)))
        return evaluate_outputs(model, parts, self.loaded.tokenizer).metrics

    def save(self, out: Path, metrics: dict[str, float]) -> None:
        model = self.model()
        save_adapters(
            out,
            model.trainable_state_dict(),
            technique=self.spec.technique,
            settings=model.config_dict(),
            task=self.task,
            family=self.loaded.family.name,
            model_fingerprint=self.settings.model_fingerprint,
        )
        record = dict(metrics)
        for device, (before, after) in self.memory.items():
            record[f"rss_mb_before_release.{device}"] = round(before / 2**20, 1)
            record[f"rss_mb_after_release.{device}"] = round(after / 2**20, 1)
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
