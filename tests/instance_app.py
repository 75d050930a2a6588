"""A service instance for the multi-process tests: the real app from the environment, with
every execution of the KPI statement counted in Redis (KPI_TEST_COUNTER_KEY) so the test can
read how many ran across all processes."""

import os

import redis

from kpi_service.app import create_app

app = create_app()
_counter = redis.Redis.from_url(os.environ["REDIS_URL"])
_key = os.environ["KPI_TEST_COUNTER_KEY"]
_db = app.extensions["kpi"].db
_kpi_rows = _db.kpi_rows


def _counted(*args, **kwargs):
    _counter.incr(_key)
    return _kpi_rows(*args, **kwargs)


_db.kpi_rows = _counted
