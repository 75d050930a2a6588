"""The OpenAPI document is valid, complete, and real responses conform to it."""

from __future__ import annotations

import json
import time

import pytest
from flask.testing import FlaskClient
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from kpi_service.app import create_app
from kpi_service.live.events import Event
from kpi_service.serving.responses import Served
from kpi_service.web.websocket import HEARTBEAT
from tests.helpers import make_settings, two_listings


@pytest.fixture
def document(client: FlaskClient) -> dict:
    response = client.get("/api/openapi.json")  # no token
    assert response.status_code == 200
    return response.get_json()


def conform(document: dict, path: str, status: int, response) -> None:
    """The body of `response` against the schema the document gives for (path, GET, status)."""
    assert response.status_code == status
    declared = document["paths"][path]["get"]["responses"][str(status)]
    if "$ref" in declared:
        declared = document["components"]["responses"][declared["$ref"].rsplit("/", 1)[1]]
    schema = declared["content"]["application/json"]["schema"]
    registry = Registry().with_resource("urn:doc", Resource.from_contents(document, default_specification=DRAFT4))
    validator = OAS30Validator({"$ref": "urn:doc#" + schema["$ref"].removeprefix("#")}, registry=registry)
    errors = sorted(validator.iter_errors(response.get_json()), key=str)
    assert not errors, errors


def test_document_is_valid_openapi_3(document: dict) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")


def test_bearer_security_on_both_endpoints(document: dict) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    for path in ("/api/kpi", "/api/kpi/history"):
        assert document["paths"][path]["get"]["security"] == [{"bearerAuth": []}]


def test_every_parameter_and_response_is_documented(document: dict) -> None:
    def parameters(path: str) -> dict[str, dict]:
        return {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}

    kpi = parameters("/api/kpi")
    assert set(kpi) == {"from", "to", "tz", "aged_days", "compare", "format"}
    assert kpi["compare"]["schema"]["enum"] == ["previous_period", "previous_year"]
    assert not any(p["required"] for p in kpi.values())
    assert kpi["tz"]["schema"]["default"] == "UTC" and kpi["aged_days"]["schema"]["default"] == 60
    assert (kpi["aged_days"]["schema"]["minimum"], kpi["aged_days"]["schema"]["maximum"]) == (1, 3650)
    history = parameters("/api/kpi/history")
    assert set(history) == {"from", "to", "interval", "tz", "aged_days", "format"}
    assert kpi["format"]["schema"]["enum"] == history["format"]["schema"]["enum"] == ["json", "csv"]
    assert {name for name, p in history.items() if p["required"]} == {"from", "to", "interval"}
    assert history["interval"]["schema"]["enum"] == ["day", "week", "month"]
    for path in ("/api/kpi", "/api/kpi/history"):
        assert {"200", "400", "401", "404", "500", "503"} <= set(document["paths"][path]["get"]["responses"])
        assert set(document["paths"][path]["get"]["responses"]["200"]["content"]) == {"application/json", "text/csv"}


def test_defaults_follow_the_settings(database_url: str) -> None:
    app = create_app(make_settings(database_url, timezone="Europe/Berlin", aged_days=90))
    try:
        parameters = app.test_client().get("/api/openapi.json").get_json()["paths"]["/api/kpi"]["get"]["parameters"]
    finally:
        app.extensions["kpi"].close()
    defaults = {p["name"]: p["schema"].get("default") for p in parameters}
    assert defaults["tz"] == "Europe/Berlin" and defaults["aged_days"] == 90


def test_real_responses_conform(client: FlaskClient, auth: dict[str, str], conn, document: dict) -> None:
    two_listings(conn)
    conform(document, "/api/kpi", 200, client.get("/api/kpi?from=2026-03-01&tz=UTC", headers=auth))
    conform(document, "/api/kpi", 200, client.get("/api/kpi?from=2026-03-01&tz=UTC", headers=auth))  # cached
    compared = client.get("/api/kpi?from=2026-03-02&to=2026-03-02&compare=previous_period", headers=auth)
    assert compared.get_json()["comparison"]["change"]["active_buyers"]["percent"] is None
    conform(document, "/api/kpi", 200, compared)
    # Each KPI says which direction is better.
    values = document["components"]["schemas"]["KpiValues"]["properties"]
    assert values["aged_inventory"]["x-better"] == "lower" and values["total_listings"]["x-better"] == "higher"
    history = client.get("/api/kpi/history?from=2026-02-27&to=2026-03-03&interval=week", headers=auth)
    conform(document, "/api/kpi/history", 200, history)
    conform(document, "/api/kpi", 400, client.get("/api/kpi?from=2026-13-01&bogus=1", headers=auth))
    conform(document, "/api/kpi/history", 400, client.get("/api/kpi/history?from=2026-01-01", headers=auth))
    conform(document, "/api/kpi", 401, client.get("/api/kpi"))
    conform(document, "/api/kpi/history", 401, client.get("/api/kpi/history", headers={"Authorization": "Bearer x"}))


def test_unavailable_conforms(auth: dict[str, str], document: dict) -> None:
    app = create_app(make_settings("postgresql://postgres@127.0.0.1:1/none", db_pool_timeout=0.5))
    try:
        response = app.test_client().get("/api/kpi", headers=auth)
    finally:
        app.extensions["kpi"].close()
    conform(document, "/api/kpi", 503, response)


def test_websocket_frames_conform_to_their_variant(
    client: FlaskClient, auth: dict[str, str], conn, document: dict
) -> None:
    two_listings(conn)
    body = client.get("/api/kpi?tz=UTC", headers=auth).get_json()
    registry = Registry().with_resource("urn:doc", Resource.from_contents(document, default_specification=DRAFT4))
    frame = OAS30Validator({"$ref": "urn:doc#/components/schemas/WebSocketFrame"}, registry=registry)
    served = Served(body, "miss", time.time() + 30)
    for sent in (Event.of(served).frame(), Event.unavailable("down", "X").frame(), HEARTBEAT):
        assert not list(frame.iter_errors(json.loads(sent))), sent
    # `data` is typed by `event`: an error envelope is no kpi frame, a kpi frame needs its id.
    assert list(
        frame.iter_errors(
            {"event": "kpi", "id": "X", "data": json.loads(Event.unavailable("down", "X").frame())["data"]}
        )
    )
    assert list(frame.iter_errors({"event": "kpi", "data": body}))
