"""The OpenAPI description: valid, complete, honest about errors and security."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from service.cli import main

PROBLEM = "application/problem+json"


@pytest.fixture
async def spec(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


async def test_the_spec_validates(spec: dict[str, Any]) -> None:
    """openapi-spec-validator accepts the document."""
    validate(spec)


async def test_every_operation_is_described(spec: dict[str, Any]) -> None:
    """Each operation has a summary, a description and a tag."""
    for path, method, op in _operations(spec):
        assert op.get("summary"), (method, path)
        assert op.get("description"), (method, path)
        assert op.get("tags"), (method, path)


async def test_every_api_operation_names_its_security_and_errors(spec: dict[str, Any]) -> None:
    """/v1 operations: a security requirement, the scope they need, and problem+json for every error."""
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["properties"])
    for path, method, op in _operations(spec):
        if not path.startswith("/v1"):
            continue
        assert op["security"] == [{"ApiKey": []}], (method, path)
        assert op["x-required-scope"], (method, path)
        codes = set(op["responses"])
        assert {"401", "403", "422", "429", "503"} <= codes, (method, path, codes)
        if "{" in path:
            assert "404" in codes, (method, path)
        for code, response in op["responses"].items():
            if int(code) >= 400:
                assert list(response["content"]) == [PROBLEM], (method, path, code)
                assert response["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
        success = [c for c in codes if c.startswith("2")]
        assert success, (method, path)


async def test_bodies_carry_examples(spec: dict[str, Any]) -> None:
    """Request bodies and the main response bodies have examples."""
    schemas = spec["components"]["schemas"]
    for name in (
        "CaseCreate",
        "CasePublic",
        "EventPublic",
        "WebhookCreate",
        "WebhookPublic",
        "WebhookCreated",
        "SendersPage",
        "RevealedCredential",
        "DeliveryPublic",
    ):
        assert schemas[name].get("examples"), name
    for path, method, op in _operations(spec):
        if "requestBody" in op:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            assert schemas[ref].get("examples"), (method, path)


def test_unblock_openapi_writes_the_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`unblock openapi --output FILE` writes the same valid document."""
    target = tmp_path / "openapi.json"
    assert main(["openapi", "--output", str(target)]) == 0
    written = json.loads(target.read_text())
    validate(written)
    assert "/v1/cases" in written["paths"]
    assert "wrote" in capsys.readouterr().out
