"""A restarted attempt takes over the cache its earlier attempt kept; a cache kept that no
attempt took over goes when the job closes on the agent; checkpoints always stay."""

from __future__ import annotations

from pathlib import Path

from agent.cache_adoption import adopt_cache, discard_kept_caches


def kept(root: Path, attempt: str, namespace: str, payload: bytes = b"x" * 10) -> Path:
    folder = root / attempt / namespace
    folder.mkdir(parents=True)
    (folder / "shard-000000.safetensors").write_bytes(payload)
    (root / attempt / "checkpoint.safetensors").write_bytes(b"state")
    return folder


def test_the_first_earlier_attempt_with_a_cache_of_the_same_namespace_is_taken(
    tmp_path: Path,
) -> None:
    kept(tmp_path, "job", "ns")
    kept(tmp_path, "job-r1", "other-model")
    assert adopt_cache(tmp_path, "job-r2", ["job-r1", "job"], "ns") == "job"
    assert (tmp_path / "job-r2" / "ns" / "shard-000000.safetensors").read_bytes() == b"x" * 10
    assert not (tmp_path / "job" / "ns").exists()
    assert (tmp_path / "job" / "checkpoint.safetensors").exists()  # the checkpoint stays
    # Nothing of the same namespace left, or a cache of its own already: nothing taken.
    assert adopt_cache(tmp_path, "job-r3", ["job-r2", "job-r1"], "elsewhere") is None
    kept(tmp_path, "job-r4", "ns")
    assert adopt_cache(tmp_path, "job-r2", ["job-r4"], "ns") is None
    assert (tmp_path / "job-r4" / "ns").is_dir()


def test_caches_kept_for_a_restart_nobody_took_are_deleted_but_not_checkpoints(
    tmp_path: Path,
) -> None:
    kept(tmp_path, "job", "ns", b"a" * 100)
    kept(tmp_path, "job-r1", "ns", b"b" * 20)
    assert discard_kept_caches(tmp_path, ["job", "job-r1", "job-r9"]) == 120
    for attempt in ("job", "job-r1"):
        assert [p.name for p in (tmp_path / attempt).iterdir()] == ["checkpoint.safetensors"]
    assert discard_kept_caches(tmp_path, ["job"]) == 0
