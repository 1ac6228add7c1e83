"""A job's ``technique_settings["backbone_dtype"]``: checked at submission, and a local job
trains with a bfloat16 backbone and exports adapters that say so."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.core import Coordinator
from coordinator.jobs import JobSpec, JobSpecError, JobState, validate_spec


@pytest.mark.parametrize(
    ("technique", "dtype", "words"),
    [
        ("parallel-adapters", "fp8", "unknown backbone_dtype 'fp8'"),
        ("full", "bf16", "full fine-tuning trains the backbone"),
    ],
)
def test_a_backbone_dtype_that_cannot_work_is_refused(
    spec: JobSpec, technique: str, dtype: str, words: str
) -> None:
    bad = replace(spec, technique=technique, technique_settings={"backbone_dtype": dtype})
    with pytest.raises(JobSpecError) as raised:
        validate_spec(bad)
    assert any(
        name == "technique_settings" and words in message
        for name, message in raised.value.problems
    )
    validate_spec(replace(spec, technique_settings={"backbone_dtype": "bfloat16"}))


def test_a_local_job_trains_with_a_bf16_backbone(
    make_coordinator: Callable[..., Coordinator], spec: JobSpec
) -> None:
    coordinator = make_coordinator()
    job = coordinator.submit(replace(spec, technique_settings={"backbone_dtype": "bf16"}))
    done = coordinator.wait(job.job_id, timeout=120)
    assert done.state == JobState.DONE, done.reason
    config = json.loads((Path(done.output_dir) / "adapter_config.json").read_text())
    assert config["settings"]["backbone_dtype"] == "bfloat16"
