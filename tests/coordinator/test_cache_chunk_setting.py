"""``technique_settings["cache_chunk_bytes"]`` (how much of the cache an agent computes at
once in the cache phase): checked at submission, and kept from the technique's settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coordinator.drivers.local import technique_settings
from coordinator.jobs import JobSpec, JobSpecError, validate_spec


@pytest.mark.parametrize("value", [0, -5, "12MiB", True, 2.5, None])
def test_a_chunk_that_is_not_a_positive_byte_count_is_refused(
    spec: JobSpec, value: object
) -> None:
    with pytest.raises(JobSpecError) as raised:
        validate_spec(replace(spec, technique_settings={"cache_chunk_bytes": value}))
    assert [name for name, message in raised.value.problems if "cache_chunk_bytes" in message] == [
        "technique_settings"
    ]


def test_a_byte_count_is_accepted_and_is_the_driver_s_not_the_technique_s(
    spec: JobSpec,
) -> None:
    for value in (1, 12 << 20):
        chunked = replace(spec, technique_settings={"cache_chunk_bytes": value, "reduction": 4})
        validate_spec(chunked)
        assert technique_settings(chunked) == {"reduction": 4}
