"""The load test: many clients at once lose no run, and only requests beyond the limits wait."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.server_load import load, table


@pytest.mark.slow
def test_200_requests_at_concurrency_32_lose_no_run(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    crowd = load(200, 32, latency=0.2, max_runs=8, queue=8, data=tmp_path / "crowd",
                 retry=False)
    record_property("load", table([crowd]))  # throughput and p95, in the JUnit report
    assert crowd.server_errors == 0 and set(crowd.statuses) <= {200, 429}
    assert crowd.answered + crowd.statuses.get(429, 0) == 200
    assert crowd.statuses.get(429, 0) > 0  # 32 at once is more than 8 running + 8 waiting
    assert crowd.missing_files == []
    assert crowd.run_folders == crowd.answered  # every accepted run finished, none half-made
    assert crowd.most_model_calls_at_once <= 8


@pytest.mark.slow
def test_clients_within_the_limits_are_never_refused(tmp_path: Path) -> None:
    within = load(48, 16, latency=0.2, max_runs=8, queue=8, data=tmp_path / "within")
    assert within.statuses == {200: 48} and within.refusals == 0
    assert within.missing_files == []
