"""What every device of a mesh job is told when the job opens (a mini-batch's part for
one device travels as :class:`pac.pipeline.batch_part.BatchPart`)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pac.pipeline.layout import PipelineLayout
from pac.tasks import TaskSpec

# The step number of the message that carries a restarted job's state to its agents (the
# trained parameters and optimizer state the coordinator kept).
RESTORE_STEP = -3
# A restarted mesh job's agents know attempt n >= 1 as "{job_id}-r{n}" (job ids are hex).
_ATTEMPT = re.compile(r"^(?P<job>.+)-r(?P<attempt>[0-9]+)$")


def attempt_id(job_id: str, attempt: int) -> str:
    """What the agents call attempt ``attempt`` of a job (0: the job's own id)."""
    return f"{job_id}-r{attempt}" if attempt else job_id


def job_of_attempt(name: str) -> tuple[str, int]:
    """The job id and attempt number of an attempt id (see :func:`attempt_id`)."""
    match = _ATTEMPT.match(name)
    return (match["job"], int(match["attempt"])) if match else (name, 0)


@dataclass(frozen=True)
class MeshJobSettings:
    """A mesh job as one device needs it: the model (a local copy on every device), the
    task and technique, the layout, where the other devices listen, and the optimizer's
    settings (equal everywhere, so that all replicas train alike)."""

    model_dir: str
    task: TaskSpec
    technique: str
    technique_settings: dict[str, Any]
    layout: PipelineLayout
    addresses: dict[str, str]
    seed: int = 0
    learning_rate: float = 1e-3
    total_steps: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    cache_precision: str = "fp16"
    # sha256 over the model's config and weights (pac.cache.key.fingerprint_model_dir):
    # every device checks its local copy against it before loading ("" = do not check).
    model_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["task"]["labels"] = list(self.task.labels)
        data["layout"] = json.loads(self.layout.to_json())
        return json.dumps({"mesh": data})

    @classmethod
    def from_json(cls, text: str) -> MeshJobSettings | None:
        """The settings in a job's settings JSON, or None when it is not a mesh job."""
        data = json.loads(text or "{}").get("mesh")
        if data is None:
            return None
        task = dict(data["task"])
        task["labels"] = tuple(task.get("labels", ()))
        return cls(
            model_dir=data["model_dir"],
            task=TaskSpec(**task),
            technique=data["technique"],
            technique_settings=dict(data["technique_settings"]),
            layout=PipelineLayout.from_json(json.dumps(data["layout"])),
            addresses=dict(data["addresses"]),
            seed=int(data["seed"]),
            learning_rate=float(data["learning_rate"]),
            total_steps=int(data["total_steps"]),
            warmup_ratio=float(data["warmup_ratio"]),
            weight_decay=float(data.get("weight_decay", 0.0)),
            cache_precision=str(data["cache_precision"]),
            model_fingerprint=str(data.get("model_fingerprint", "")),
            extra=dict(data.get("extra", {})),
        )
