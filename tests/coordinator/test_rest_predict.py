"""POST /v1/jobs/{id}/predict: a finished job's adapters answer rows sent over REST."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from coordinator.core import Coordinator
from coordinator.jobs import JobSpec
from coordinator.rest import create_app


def test_predict_with_a_finished_jobs_adapters(
    make_coordinator: Callable[..., Coordinator], spec: JobSpec
) -> None:
    coordinator = make_coordinator()
    with TestClient(create_app(coordinator)) as http:
        job_id = http.post("/v1/jobs", json=spec.to_json()).json()["job_id"]
        assert http.post(f"/v1/jobs/{job_id}/predict",
                         json={"rows": [{"text": "x"}]}).status_code in (409, 200)
        assert coordinator.wait(job_id, 120).state.value == "done"
        rows = [{"text": "a good fine film", "label": "pos"},
                {"text": "a bad dull story", "label": "neg"},
                {"text": "no label here"}]
        answer = http.post(f"/v1/jobs/{job_id}/predict", json={"rows": rows[:2]})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        labels = set(coordinator.get(job_id).spec.labels) or {"pos", "neg"}
        assert [p["text"] for p in body["predictions"]] == [r["text"] for r in rows[:2]]
        assert {p["prediction"] for p in body["predictions"]} <= labels
        assert 0.0 <= body["metrics"]["accuracy"] <= 1.0
        unlabelled = http.post(f"/v1/jobs/{job_id}/predict", json={"rows": rows[2:]}).json()
        assert unlabelled["metrics"] == {} and len(unlabelled["predictions"]) == 1

        assert http.post("/v1/jobs/nope/predict", json={"rows": rows}).status_code == 404
        assert http.post(f"/v1/jobs/{job_id}/predict", json={"rows": []}).status_code == 422
        bad = http.post(f"/v1/jobs/{job_id}/predict", json={"rows": [{"words": "x"}]})
        assert bad.status_code == 400 and "text" in bad.json()["detail"]
