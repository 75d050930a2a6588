"""Numbers that cannot drift (issue 33): concurrent writers of every kind, VACUUMs and the
service's own applier at its default pace; once the writes stop and the log drains, every window
from the summaries equals the raw rows and the service's answer, and the summaries equal a
rebuild. The short form of bench/concurrent_exactness.py (the same code: tests/concurrent_workload.py)."""

from __future__ import annotations

import pytest

from tests.concurrent_workload import run


@pytest.mark.parametrize("timezone", ["Europe/Berlin", "UTC"])
def test_concurrent_writes_leave_every_window_exact(server_url: str, timezone: str) -> None:
    # Two writer threads and the vacuum thread, beside the service's applier thread: the server's
    # cores are shared with the rest of the suite (pytest -n auto).
    result = run(server_url, timezone, listings=600, writers=2, seconds=6)
    assert result.counts.transactions > 0
    assert result.comparison.windows == 24
    assert result.comparison.http == 24
    assert result.mismatches == []
