"""A job as a value: what the user asked for (``JobSpec``), where it stands (``Job``), and
the state machine that moves it.

    QUEUED -> PROFILING -> PLANNING -> LOADING -> TRAINING(1) -> ... -> TRAINING(k)
           \\-> LOADING (a standalone job needs no profiles and no plan)
    TRAINING(k) -> REDISTRIBUTING -> TRAINING(k+1)     (after epoch 1 on the mesh)
    TRAINING(k) -> DONE;   any live state -> FAILED (with a reason) or CANCELLED
    any live state but QUEUED -> PROFILING   (a mesh job restarted on the agents still
           answering when one went away; a restarted parallel-adapters job rebuilds its
           cache while LOADING, then REDISTRIBUTING -> TRAINING(k+1))
    any live state but QUEUED -> QUEUED      (a mesh job that a coordinator restart
           interrupted: the next coordinator resumes it from its agents' checkpoints)

Everything here is plain data: printable, comparable in a test, storable as JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from pac.model_files import WEIGHT_FILES
from pac.tasks import TASK_KINDS
from pac.technique_names import DROPOUT_TECHNIQUES, TECHNIQUE_NAMES

TECHNIQUES = TECHNIQUE_NAMES
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv")
# technique_settings["backbone_dtype"]: pac.techniques.backbone_dtype.DTYPES (named here so
# that this module stays free of torch).
BACKBONE_DTYPES = ("float32", "fp32", "bfloat16", "bf16")
# Cache precisions as the proto spells them, and as the engine does.
CACHE_DTYPES = {
    "float16": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "int8": "int8",
    "fp16": "fp16",
    "bf16": "bf16",
    "fp32": "fp32",
}


class JobState(str, Enum):
    QUEUED = "queued"
    PROFILING = "profiling"
    PLANNING = "planning"
    LOADING = "loading"
    TRAINING = "training"
    REDISTRIBUTING = "redistributing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


_ENDINGS = {JobState.FAILED, JobState.CANCELLED}
# A mesh job that lost an agent starts over on the others (PROFILING) from any live state;
# one that a coordinator restart interrupted is queued again (QUEUED) by the next one.
_LIVE_ENDINGS = _ENDINGS | {JobState.PROFILING, JobState.QUEUED}
TRANSITIONS: dict[JobState, set[JobState]] = {
    JobState.QUEUED: {JobState.PROFILING, JobState.LOADING} | _ENDINGS,
    JobState.PROFILING: {JobState.PLANNING} | _LIVE_ENDINGS,
    JobState.PLANNING: {JobState.LOADING} | _LIVE_ENDINGS,
    # LOADING -> REDISTRIBUTING: a restarted job's rebuilt cache.
    JobState.LOADING: {JobState.TRAINING, JobState.REDISTRIBUTING} | _LIVE_ENDINGS,
    # TRAINING -> TRAINING is the next epoch.
    JobState.TRAINING: {JobState.TRAINING, JobState.REDISTRIBUTING, JobState.DONE} | _LIVE_ENDINGS,
    JobState.REDISTRIBUTING: {JobState.TRAINING} | _LIVE_ENDINGS,
    JobState.DONE: set(),
    JobState.FAILED: set(),
    JobState.CANCELLED: set(),
}


class IllegalTransition(ValueError):
    """A driver or a caller tried to move a job along an edge the state machine lacks."""


class JobSpecError(ValueError):
    """A malformed job: ``problems`` lists (field, what is wrong and what to do)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {message}" for name, message in problems))


class UnknownJob(KeyError):
    """No job has this id."""

    def __str__(self) -> str:
        return f"no job with id {self.args[0]!r} (pac jobs lists them)"


DEFAULT_MAX_RESTARTS = 2


@dataclass(frozen=True)
class JobSpec:
    """What to train: model, data, task, technique and the training settings.

    Paths are on the coordinator's machine. ``learning_rate`` 0 = the technique's default;
    ``output_dir`` "" = a folder of the job under the coordinator's state directory;
    ``placement`` "" = the coordinator's default driver ("local" or "mesh").
    """

    model_dir: str
    data_path: str
    task: str
    technique: str = "parallel-adapters"
    technique_settings: dict[str, Any] = field(default_factory=dict)
    eval_path: str = ""
    data_format: str = ""
    text_field: str = "text"
    pair_field: str = "text_pair"
    label_field: str = "label"
    labels: tuple[str, ...] = ()
    head: str = "linear"
    max_length: int = 128
    max_target_length: int = 32
    epochs: int = 3
    batch_size: int = 16
    micro_batches: int = 1
    learning_rate: float = 0.0
    seed: int = 0
    side_reduction: int = 8
    cache_dtype: str = "float16"
    weight_decay: float = 0.0
    dropout: float = 0.0
    # How many times a mesh job starts over on the agents still answering when one goes
    # away (from the end of its last completed epoch); 0 = it fails at once.
    max_restarts: int = DEFAULT_MAX_RESTARTS
    output_dir: str = ""
    placement: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        known = {name: value for name, value in data.items() if name in cls.__dataclass_fields__}
        known["labels"] = tuple(known.get("labels", ()))
        return cls(**known)


def validate_spec(spec: JobSpec, placements: tuple[str, ...] = ("local",)) -> None:
    """Raise :class:`JobSpecError` naming every field that is wrong and what to do."""
    problems: list[tuple[str, str]] = []

    def bad(name: str, message: str) -> None:
        problems.append((name, message))

    model = Path(spec.model_dir) if spec.model_dir else None
    if model is None:
        bad("model_dir", "missing: give a local Hugging Face model directory")
    elif not model.is_dir():
        bad(
            "model_dir",
            f"{model} is not a directory on the coordinator's machine: give a "
            "local Hugging Face model directory (config.json, weights, tokenizer)",
        )
    elif not (model / "config.json").is_file():
        bad("model_dir", f"{model} has no config.json: it is not a Hugging Face model directory")
    elif not any((model / name).is_file() for name in WEIGHT_FILES):
        bad(
            "model_dir",
            f"{model} holds no weights ({', '.join(WEIGHT_FILES)}): save the "
            "model with save_pretrained",
        )
    for name, value, required in (
        ("data_path", spec.data_path, True),
        ("eval_path", spec.eval_path, False),
    ):
        if not value:
            if required:
                bad(name, "missing: give a JSONL, CSV or TSV file on the coordinator's machine")
            continue
        path = Path(value)
        if not path.is_file():
            bad(name, f"{path} does not exist on the coordinator's machine")
        elif path.suffix.lower() not in DATA_SUFFIXES and not spec.data_format:
            bad(name, f"{path} is not .jsonl, .csv or .tsv: rename it or set the data format")
    if spec.data_format and f".{spec.data_format}" not in DATA_SUFFIXES:
        bad("data_format", f"unknown format {spec.data_format!r}; use jsonl, csv or tsv")
    if spec.task not in TASK_KINDS:
        bad("task", f"unknown task {spec.task!r}; choose one of {', '.join(TASK_KINDS)}")
    if spec.head not in ("linear", "text"):
        bad("head", f"unknown head {spec.head!r}; choose 'linear' or 'text'")
    if spec.technique not in TECHNIQUES:
        bad(
            "technique",
            f"unknown technique {spec.technique!r}; choose one of {', '.join(TECHNIQUES)}",
        )
    backbone_dtype = str(spec.technique_settings.get("backbone_dtype", "float32")).lower()
    if backbone_dtype not in BACKBONE_DTYPES:
        bad(
            "technique_settings",
            f"unknown backbone_dtype {backbone_dtype!r}; use float32 (the default) or bfloat16",
        )
    elif spec.technique == "full" and backbone_dtype in ("bfloat16", "bf16"):
        bad(
            "technique_settings",
            "full fine-tuning trains the backbone and needs it in float32: drop backbone_dtype "
            "or pick a technique with a frozen backbone (parallel-adapters, lora, adapters)",
        )
    chunk_bytes = spec.technique_settings.get("cache_chunk_bytes", 1)
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        bad(
            "technique_settings",
            f"cache_chunk_bytes {chunk_bytes!r}: give the bytes of cached hidden states a "
            "device computes at once in the cache phase, a positive integer (default 3 MiB)",
        )
    if spec.epochs < 1:
        bad("epochs", f"{spec.epochs}: train for at least 1 epoch")
    if spec.batch_size < 1:
        bad("batch_size", f"{spec.batch_size}: a batch needs at least 1 sample")
    if spec.micro_batches < 1:
        bad("micro_batches", f"{spec.micro_batches}: use at least 1 micro-batch")
    elif spec.batch_size >= 1 and spec.batch_size < spec.micro_batches:
        bad(
            "batch_size",
            f"{spec.batch_size} is smaller than the micro-batch count "
            f"{spec.micro_batches}: every micro-batch needs a sample; raise "
            "the batch size or lower the micro-batches",
        )
    if not math.isfinite(spec.learning_rate) or spec.learning_rate < 0:
        bad("learning_rate", f"{spec.learning_rate}: use a positive rate (0 = the default)")
    if spec.side_reduction < 1:
        bad("side_reduction", f"{spec.side_reduction}: the side network is d / r wide, r >= 1")
    if spec.max_length < 1:
        bad("max_length", f"{spec.max_length}: keep at least 1 input token")
    if spec.cache_dtype not in CACHE_DTYPES:
        bad("cache_dtype", f"unknown precision {spec.cache_dtype!r}; use float16, bfloat16 or int8")
    if not 0.0 <= spec.dropout < 1.0:
        bad("dropout", f"{spec.dropout}: use a probability in [0, 1)")
    elif spec.dropout and spec.technique in TECHNIQUES:
        if spec.technique not in DROPOUT_TECHNIQUES:
            bad(
                "dropout",
                f"{spec.technique} has no dropout of its own to set: it trains at the model's "
                "dropout (config.json); leave dropout at 0 or pick parallel-adapters or lora",
            )
        elif spec.technique_settings.get("dropout", spec.dropout) != spec.dropout:
            bad(
                "dropout",
                f"{spec.dropout} disagrees with the technique settings' dropout "
                f"{spec.technique_settings['dropout']}: give it once",
            )
    if spec.max_restarts < 0:
        bad("max_restarts", f"{spec.max_restarts}: use 0 (fail when an agent goes away) or more")
    if not (math.isfinite(spec.weight_decay) and spec.weight_decay >= 0):
        bad("weight_decay", f"{spec.weight_decay}: use a finite, non-negative decay (AdamW's)")
    if spec.placement and spec.placement not in placements:
        bad(
            "placement",
            f"unknown placement {spec.placement!r}; this coordinator runs {', '.join(placements)}",
        )
    if problems:
        raise JobSpecError(problems)


def parse_technique_json(text: str) -> dict[str, Any]:
    """Technique settings from JSON text ("" = none); JobSpecError if not a JSON object."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise JobSpecError([("technique_json", f"not valid JSON ({error})")]) from None
    if not isinstance(value, dict):
        raise JobSpecError([("technique_json", 'must be a JSON object, e.g. {"rank": 8}')])
    return value


@dataclass(frozen=True)
class Job:
    """A job's recorded state. ``epoch`` is the epoch being trained (0 before training);
    ``step`` the global optimizer step; ``reason`` says why a job FAILED."""

    job_id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    samples_per_second: float = 0.0
    eta_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    output_dir: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0

    def moved_to(
        self, state: JobState, now: float, *, epoch: int | None = None, reason: str = ""
    ) -> Job:
        """The job in ``state``; IllegalTransition when the state machine has no such edge
        (a same-state move that is not a new epoch changes nothing)."""
        new_epoch = self.epoch if epoch is None else epoch
        if state == self.state and not (state == JobState.TRAINING and new_epoch != self.epoch):
            return self
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"job {self.job_id}: {self.state.value} -> {state.value} is not a legal move"
            )
        if state == JobState.FAILED and not reason:
            raise IllegalTransition(f"job {self.job_id}: a failed job needs a reason")
        return replace(
            self, state=state, epoch=new_epoch, reason=reason or self.reason, updated_at=now
        )


@dataclass(frozen=True)
class Progress:
    """What a driver reports: a state change and/or new numbers (None = unchanged).

    ``samples`` is how many training samples were processed since the last report (it feeds
    a counter); ``metrics`` are evaluation metrics, set at the end of an epoch.
    """

    state: JobState | None = None
    epoch: int | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    redistribution_progress: float | None = None
    redistribution_bytes: int = 0
    # Why the job just started over on the agents still answering ("" = it did not).
    restarted: str = ""
    # The id the agents know the job's current attempt by ("" = unchanged).
    attempt: str = ""
