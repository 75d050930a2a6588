"""The container's pieces without a container engine: gunicorn.conf.py loads and serves,
docker-compose.yml starts things in the right order, the Dockerfile runs as intended."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from kpi_service.config import Settings
from tests.helpers import SECRET, free_port

ROOT = Path(__file__).parents[1]
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def service_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KPI_", "GUNICORN_", "PROMETHEUS_"))}
    # development: the in-process Redis stand-in unless `extra` names a Redis
    env.update(JWT_SECRET_KEY=SECRET, DATABASE_URL=database_url, KPI_ENV="development", **extra)
    return env


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_gunicorn_config_loads(database_url: str) -> None:
    result = subprocess.run(
        [GUNICORN, "--check-config", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=service_env(database_url, PORT="8123", GUNICORN_WORKERS="3", GUNICORN_THREADS="2"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [GUNICORN, "--print-config", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=service_env(database_url, PORT="8123", GUNICORN_WORKERS="3", GUNICORN_THREADS="2"),
        capture_output=True,
        text=True,
        check=False,
    )
    printed = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, re.MULTILINE))
    assert printed["bind"] == "['0.0.0.0:8123']"
    assert (printed["workers"], printed["threads"], printed["accesslog"]) == ("3", "2", "None")


@pytest.mark.slow
def test_gunicorn_serves_probes_metrics_and_json_logs(database_url: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")
    env = service_env(
        database_url,
        PORT=str(port),
        GUNICORN_WORKERS="2",
        GUNICORN_THREADS="2",
        KPI_METRICS=f"port:{metrics_port}",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [GUNICORN, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env, stdout=log_file, stderr=log_file
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log_path.read_text()
                try:
                    if get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            for _ in range(10):  # over both workers, most likely
                assert get(f"http://127.0.0.1:{port}/healthz") == (200, b'{"status":"ok"}\n')
            status, body = get(f"http://127.0.0.1:{port}/readyz")
            assert status == 200 and json.loads(body)["checks"]["database"] == "ok"
            assert get(f"http://127.0.0.1:{port}/api/kpi")[0] == 401
            assert get(f"http://127.0.0.1:{port}/metrics")[0] == 404  # served on its own port instead
            status, text = get(f"http://127.0.0.1:{metrics_port}/metrics")
            assert status == 200
            # Merged from the workers' files; the stale file was cleared at start.
            assert 'kpi_http_requests_total{method="GET",route="/healthz",status="200"} 10.0' in text.decode()
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("logger") == "kpi_service.request"]
    # The default request log: a line for the 401, none for the successes.
    assert ("/api/kpi", 401) in [(line["path"], line["status"]) for line in requests]
    assert not [line for line in requests if line["status"] == 200]
    assert {"method", "path", "route", "status", "duration_ms", "cache", "request_id", "remote_addr"} <= set(
        requests[0]
    )
    assert any(line.get("logger") == "gunicorn.error" for line in lines)  # gunicorn's own log is JSON too
    assert not [line for line in log_path.read_text().splitlines() if line.strip() and not line.startswith("{")]


def test_compose_services_and_order() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = {name: service for name, service in compose["services"].items() if "profiles" not in service}
    assert set(services) == {"db", "redis", "seed", "roles", "kpi"}
    assert services["db"]["image"] == "postgres:15" and services["redis"]["image"] == "redis:7"
    assert "healthcheck" in services["db"] and "healthcheck" in services["redis"] and "healthcheck" in services["kpi"]
    assert services["seed"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    seed_command = " ".join(services["seed"]["command"])
    assert seed_command.index("kpi-service init-db") < seed_command.index("kpi-service seed --listings 100000")
    assert services["roles"]["depends_on"] == {"seed": {"condition": "service_completed_successfully"}}
    assert "/sql/ops/roles.sql" in services["roles"]["command"][-1]
    assert services["kpi"]["depends_on"] == {
        "roles": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }
    # The service reads as the read-only login, never as the owner of the tables.
    assert services["kpi"]["environment"]["DATABASE_URL"].startswith("postgresql://kpi:")
    assert services["kpi"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"


def test_compose_profile_ha_runs_the_service_on_redis_sentinel_and_a_database_replica() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    ha = {name: service for name, service in services.items() if service.get("profiles") == ["ha"]}
    sentinels = {f"sentinel-{n}" for n in (1, 2, 3)}
    assert set(ha) == {"db-replica", "redis-primary", "redis-replica", "kpi-ha"} | sentinels
    assert not [name for name, service in services.items() if "profiles" in service and name not in ha]
    replica = ha["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") :][:3] == ["--replicaof", "redis-primary", "6379"]
    monitored = set()
    for name in sentinels:
        script = ha[name]["command"][-1]
        assert "--sentinel" in script and "port 26379" in script
        monitor = re.search(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)", script)
        assert monitor and (monitor.group(2), monitor.group(3)) == ("redis-primary", "6379")
        assert len(sentinels) // 2 < int(monitor.group(4)) <= len(sentinels)  # a majority, and reachable
        monitored.add(monitor.group(1))
        assert ha[name]["depends_on"]["redis-primary"] == {"condition": "service_healthy"}
    # The service: the variables config.py reads, naming exactly those sentinels and that service.
    service = ha["kpi-ha"]
    env = {name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for name, value in service["environment"].items()}
    settings = Settings.from_env(env)
    assert {f"{host}:{port}" for host, port in settings.redis_sentinels} == {f"{name}:26379" for name in sentinels}
    assert {settings.redis_sentinel_service} == monitored
    assert settings.redis_url is None and settings.database_url.startswith("postgresql://kpi:")
    assert {name: dep["condition"] for name, dep in service["depends_on"].items()} == {
        "roles": "service_completed_successfully",
        "db-replica": "service_healthy",
        **dict.fromkeys(sentinels, "service_healthy"),
    }
    # The database replica: a base backup of db that follows it (-R), read by the service.
    assert settings.database_read_url == settings.database_url.replace("@db:", "@db-replica:")
    script = ha["db-replica"]["command"][-1]
    assert "pg_basebackup -h db " in script and " -R " in script and "exec postgres" in script
    assert ha["db-replica"]["depends_on"]["db"] == {"condition": "service_healthy"}
    hba = compose["configs"][services["db"]["configs"][0]["source"]]["content"]
    assert "host replication all all" in hba
    assert service["ports"] == ["8001:8000"] and "healthcheck" in service


def test_dockerfile_runs_gunicorn_config_as_non_root_with_a_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER kpi$", dockerfile, re.MULTILINE)
    assert 'CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]' in dockerfile
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*?\])$", dockerfile, re.MULTILINE | re.DOTALL)
    assert healthcheck and "/healthz" in healthcheck.group(1) and "urllib" in healthcheck.group(1)
    command = json.loads(healthcheck.group(1))
    assert command[:2] == ["python", "-c"]
    compile(command[2], "HEALTHCHECK", "exec")
    assert "curl" not in dockerfile and "gcc" not in dockerfile
    assert "COPY wsgi.py gunicorn.conf.py ./" in dockerfile
