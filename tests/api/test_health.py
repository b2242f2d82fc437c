"""Health, readiness, and problem+json on every error path the foundation has."""

from __future__ import annotations

import httpx

from service.api.app import create_app
from service.config import Settings
from service.persistence.db import Database
from service.runtime import Runtime

PROBLEM = "application/problem+json"


async def test_healthz_answers(client: httpx.AsyncClient) -> None:
    """/healthz is 200 while the process runs, with a request id header."""
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert len(response.headers["x-request-id"]) >= 16


async def test_request_id_is_echoed_when_sane(client: httpx.AsyncClient) -> None:
    """A caller's X-Request-ID is kept (for tracing across systems) when it is well-formed."""
    assert (await client.get("/healthz", headers={"X-Request-ID": "INC001-abc"})).headers[
        "x-request-id"
    ] == "INC001-abc"
    odd = (await client.get("/healthz", headers={"X-Request-ID": "a b\tc"})).headers["x-request-id"]
    assert odd != "a b\tc"


async def test_readyz_checks_the_database(client: httpx.AsyncClient) -> None:
    """/readyz is 200 and names its checks when the database answers."""
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok"}}


async def test_readyz_names_an_unreachable_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """/readyz is 503 problem+json naming the database when it cannot be reached."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
    runtime = Runtime(settings=Settings(database_url=url), db=Database(url))
    transport = httpx.ASGITransport(app=create_app(runtime), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        response = await c.get("/readyz")
    await runtime.db.dispose()
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["failing"] == ["database"]
    assert body["detail"].startswith("database:")


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    """404 for an unknown path is problem+json, not FastAPI's default body."""
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "/problems/not_found"
    assert body["status"] == 404
    assert body["instance"] == "/no/such/thing"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_wrong_method_is_problem_json(client: httpx.AsyncClient) -> None:
    """405 is problem+json too."""
    response = await client.post("/healthz")
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM


async def test_oversized_body_is_refused(client: httpx.AsyncClient) -> None:
    """Bodies over the limit are refused with 413 before any handler reads them."""
    response = await client.post("/healthz", content=b"x" * (70 * 1024))
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    """/openapi.json describes the API."""
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "unblock-service"
    assert "/healthz" in spec["paths"]
    assert "/readyz" in spec["paths"]
