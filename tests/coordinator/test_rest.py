"""The REST API: submit, list, get, cancel, agents, health; clear refusals; OpenAPI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from coordinator.core import Coordinator
from coordinator.jobs import JobSpec
from coordinator.rest import create_app
from protos.v1 import agent_pb2


@pytest.fixture
def client(make_coordinator: Callable[..., Coordinator], gated_driver: Any
           ) -> Iterator[tuple[TestClient, Coordinator]]:
    coordinator = make_coordinator(drivers={"local": gated_driver})
    with TestClient(create_app(coordinator)) as test_client:
        yield test_client, coordinator


def body(spec: JobSpec, **change: object) -> dict[str, object]:
    data = {**spec.to_json(), **change}
    return {name: value for name, value in data.items() if value is not None}


def test_submit_get_list_and_cancel(client: tuple[TestClient, Coordinator], spec: JobSpec,
                                    gated_driver: Any) -> None:
    http, coordinator = client
    created = http.post("/v1/jobs", json=body(spec))
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert created.json()["state"] == "queued"
    assert created.json()["spec"]["placement"] == "local"
    assert gated_driver.training.wait(10)
    got = http.get(f"/v1/jobs/{job_id}").json()
    assert got["state"] == "training" and got["epoch"] == 1
    assert [job["job_id"] for job in http.get("/v1/jobs").json()] == [job_id]
    assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert coordinator.wait(job_id, 10).state.value == "cancelled"
    assert http.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"model_dir": "/nowhere/model"}, "model_dir", "not a directory"),
    ({"technique": "prompt-tuning"}, "technique", "unknown technique"),
    ({"batch_size": 2, "micro_batches": 4}, "batch_size", "smaller than the micro-batch"),
])
def test_malformed_jobs_are_400_with_the_field_and_what_to_do(
        client: tuple[TestClient, Coordinator], spec: JobSpec, change: dict[str, object],
        field: str, words: str) -> None:
    http, coordinator = client
    answer = http.post("/v1/jobs", json=body(spec, **change))
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith(f"malformed job: {field}: ")
    assert any(p["field"] == field and words in p["message"]
               for p in answer.json()["problems"])
    assert coordinator.jobs() == []


def test_a_job_without_a_model_or_with_a_wrong_type_is_422(
        client: tuple[TestClient, Coordinator], spec: JobSpec) -> None:
    http, _ = client
    data = body(spec)
    del data["model_dir"]
    missing = http.post("/v1/jobs", json=data)
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "model_dir"]
    wrong = http.post("/v1/jobs", json=body(spec, epochs="many"))
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "epochs"]
    unknown = http.post("/v1/jobs", json=body(spec, colour="red"))
    assert unknown.status_code == 422


def test_unknown_jobs_are_404(client: tuple[TestClient, Coordinator]) -> None:
    http, _ = client
    for answer in (http.get("/v1/jobs/nope"), http.post("/v1/jobs/nope/cancel")):
        assert answer.status_code == 404
        assert "no job with id 'nope'" in answer.json()["detail"]


def test_agents_health_and_openapi(client: tuple[TestClient, Coordinator]) -> None:
    http, coordinator = client
    profile = agent_pb2.DeviceProfile(name="jetson-1", cpu_cores=4, accelerator="cpu")
    coordinator.registry.register("jetson-1", "10.0.0.5:50061", profile.SerializeToString())
    agents = http.get("/v1/agents").json()
    assert [(a["name"], a["address"], a["state"]) for a in agents] == [
        ("jetson-1", "10.0.0.5:50061", "alive")]
    assert agents[0]["profile"]["cpu_cores"] == 4
    assert http.get("/healthz").json()["status"] == "ok"
    document = http.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/agents",
            "/healthz"} <= set(document["paths"])
    assert "400" in document["paths"]["/v1/jobs"]["post"]["responses"]
    assert http.get("/docs").status_code == 200
