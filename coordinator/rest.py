"""The REST face of the coordinator (FastAPI): jobs, agents, health. OpenAPI at
``/openapi.json`` and ``/docs``.

    POST /v1/jobs               submit (400 names the malformed fields; 422 a wrong shape)
    GET  /v1/jobs               every job, oldest first
    GET  /v1/jobs/{id}          one job (404 if unknown)
    POST /v1/jobs/{id}/cancel   cancel
    POST /v1/jobs/{id}/predict  predictions of a finished job's adapters on rows in the body
    GET  /v1/agents             registered agents (``?include_lost=true`` for lost ones)
    GET  /healthz               liveness of the coordinator itself

Thin like the gRPC servicer: it translates JSON to job values and calls ``Coordinator``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field

from coordinator.core import Coordinator
from coordinator.jobs import Job, JobSpec, JobSpecError, JobState, UnknownJob
from coordinator.registry import AgentLiveness, AgentRecord
from protos.v1 import agent_pb2

# The request's defaults are the JobSpec's (one source of truth).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(JobSpec)}


class JobRequest(BaseModel):
    """A job to train: paths are on the coordinator's machine."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_dir: str = Field(description="local Hugging Face model directory")
    data_path: str = Field(description="training data: .jsonl, .csv or .tsv")
    task: str = Field(description="classification, regression, seq2seq or causal-lm")
    technique: str = Field(
        _DEFAULTS["technique"], description="parallel-adapters, full, lora or adapters"
    )
    technique_settings: dict[str, Any] = Field(
        default_factory=dict, description='e.g. {"rank": 8} for LoRA'
    )
    eval_path: str = Field("", description="evaluation data, evaluated after each epoch")
    data_format: str = ""
    text_field: str = _DEFAULTS["text_field"]
    pair_field: str = _DEFAULTS["pair_field"]
    label_field: str = _DEFAULTS["label_field"]
    labels: list[str] = Field(
        default_factory=list, description="class names (default: read from the data)"
    )
    head: str = _DEFAULTS["head"]
    max_length: int = _DEFAULTS["max_length"]
    max_target_length: int = _DEFAULTS["max_target_length"]
    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    micro_batches: int = _DEFAULTS["micro_batches"]
    learning_rate: float = Field(0.0, description="0 = the technique's default")
    seed: int = 0
    side_reduction: int = Field(
        _DEFAULTS["side_reduction"], description="side network width = d / r"
    )
    cache_dtype: str = _DEFAULTS["cache_dtype"]
    weight_decay: float = Field(0.0, description="AdamW's weight decay of what trains")
    dropout: float = Field(
        0.0, description="dropout of the trained modules (parallel-adapters' side blocks, lora)"
    )
    max_restarts: int = Field(
        _DEFAULTS["max_restarts"],
        description="times a mesh job starts over on the agents still answering when one "
        "goes away, from its last completed epoch (0: it fails)",
    )
    output_dir: str = Field("", description="where the adapters go (default: state dir)")
    placement: str = Field("", description="local or mesh (default: the coordinator's)")

    def to_spec(self) -> JobSpec:
        values = self.model_dump()
        values["labels"] = tuple(values["labels"])
        return JobSpec(**values)


class JobView(BaseModel):
    job_id: str
    state: str
    epoch: int
    step: int
    total_steps: int
    loss: float
    samples_per_second: float
    eta_seconds: float
    metrics: dict[str, float]
    reason: str = Field(description="why the job failed")
    output_dir: str
    created_at: float
    updated_at: float
    spec: dict[str, Any]

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            job_id=job.job_id,
            state=job.state.value,
            epoch=job.epoch,
            step=job.step,
            total_steps=job.total_steps,
            loss=job.loss,
            samples_per_second=job.samples_per_second,
            eta_seconds=job.eta_seconds,
            metrics=job.metrics,
            reason=job.reason,
            output_dir=job.output_dir,
            created_at=job.created_at,
            updated_at=job.updated_at,
            spec=job.spec.to_json(),
        )


class AgentView(BaseModel):
    agent_id: str
    name: str
    address: str
    state: str
    registered_at: float
    last_heartbeat: float
    job_id: str
    step: int
    profile: dict[str, Any]

    @classmethod
    def of(cls, record: AgentRecord, liveness: AgentLiveness) -> AgentView:
        profile = MessageToDict(
            agent_pb2.DeviceProfile.FromString(record.profile), preserving_proto_field_name=True
        )
        return cls(
            agent_id=record.agent_id,
            name=record.name,
            address=record.address,
            state=liveness.value,
            registered_at=record.registered_at,
            last_heartbeat=record.last_heartbeat,
            job_id=record.job_id,
            step=record.step,
            profile=profile,
        )


class Problem(BaseModel):
    field: str
    message: str


class Refusal(BaseModel):
    detail: str
    problems: list[Problem] = []


class PredictRequest(BaseModel):
    """Rows to predict with a finished job's adapters; rows that carry the job's label field
    also give metrics."""

    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]] = Field(
        min_length=1, description='e.g. [{"text": "A charming comedy."}]'
    )
    max_new_tokens: int = Field(32, ge=1, le=512, description="for generation tasks")


class PredictReply(BaseModel):
    predictions: list[dict[str, Any]]
    metrics: dict[str, float]


def predict_rows(job: Job, request: PredictRequest) -> PredictReply:
    """Run the job's exported adapters on ``request.rows`` (backbone live, on this machine)."""
    from pac.engine.prediction import predict_file

    with tempfile.TemporaryDirectory(prefix="pac-predict-") as folder:
        data = Path(folder) / "rows.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in request.rows))
        rows, metrics = predict_file(
            Path(job.spec.model_dir),
            Path(job.output_dir),
            data,
            text_field=job.spec.text_field,
            pair_field=job.spec.pair_field,
            target_field=job.spec.label_field,
            batch_size=job.spec.batch_size,
            max_new_tokens=request.max_new_tokens,
        )
    return PredictReply(predictions=rows, metrics=metrics)


def create_app(coordinator: Coordinator) -> FastAPI:
    """The REST app over ``coordinator`` (serve it with uvicorn, or test with TestClient)."""
    app = FastAPI(
        title="PAC mesh coordinator", version="1", description="Jobs and agents of a PAC mesh."
    )

    def job_or_404(job_id: str) -> Job:
        try:
            return coordinator.get(job_id)
        except UnknownJob as error:
            raise HTTPException(status_code=404, detail=str(error)) from None

    @app.post(
        "/v1/jobs",
        status_code=201,
        response_model=JobView,
        responses={400: {"model": Refusal, "description": "malformed job"}},
    )
    def submit(request: JobRequest) -> Any:
        try:
            job = coordinator.submit(request.to_spec())
        except JobSpecError as error:
            body = Refusal(
                detail=f"malformed job: {error}",
                problems=[Problem(field=f, message=m) for f, m in error.problems],
            )
            return JSONResponse(status_code=400, content=body.model_dump())
        return JobView.of(job)

    @app.get("/v1/jobs", response_model=list[JobView])
    def list_jobs() -> list[JobView]:
        return [JobView.of(job) for job in coordinator.jobs()]

    @app.get(
        "/v1/jobs/{job_id}", response_model=JobView, responses={404: {"description": "no such job"}}
    )
    def get_job(job_id: str) -> JobView:
        return JobView.of(job_or_404(job_id))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        response_model=JobView,
        responses={404: {"description": "no such job"}},
    )
    def cancel_job(job_id: str) -> JobView:
        job_or_404(job_id)
        return JobView.of(coordinator.cancel(job_id))

    @app.post(
        "/v1/jobs/{job_id}/predict",
        response_model=PredictReply,
        responses={
            404: {"description": "no such job"},
            409: {"description": "the job has no adapters yet"},
            400: {"description": "rows the model cannot read"},
        },
    )
    def predict(job_id: str, request: PredictRequest) -> PredictReply:
        from pac.engine.errors import USER_ERRORS
        from pac.engine.export import WEIGHTS_FILE

        job = job_or_404(job_id)
        if job.state is not JobState.DONE or not (Path(job.output_dir) / WEIGHTS_FILE).is_file():
            raise HTTPException(
                status_code=409,
                detail=f"job {job_id} is {job.state.value}: it has no trained adapters yet",
            )
        try:
            return predict_rows(job, request)
        except USER_ERRORS as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

    @app.get("/v1/agents", response_model=list[AgentView])
    def list_agents(include_lost: bool = False) -> list[AgentView]:
        return [
            AgentView.of(record, liveness)
            for record, liveness in coordinator.agents(include_lost=include_lost)
        ]

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "instance": coordinator.registry.instance}

    return app
