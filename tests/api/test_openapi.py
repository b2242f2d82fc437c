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


# --- what generators and linters need (issue: an OpenAPI description that tools accept as it is) --------

OPERATION_IDS = {
    ("post", "/v1/cases"): "createCase",
    ("get", "/v1/cases"): "listCases",
    ("get", "/v1/cases/{case_id}"): "getCase",
    ("get", "/v1/cases/{case_id}/events"): "listCaseEvents",
    ("get", "/v1/cases/{case_id}/events/stream"): "streamCaseEvents",
    ("post", "/v1/cases/{case_id}/approve"): "approveCase",
    ("post", "/v1/cases/{case_id}/cancel"): "cancelCase",
    ("post", "/v1/cases/{case_id}/retry"): "retryCase",
    ("post", "/v1/cases/{case_id}/credential/reveal"): "revealCredential",
    ("get", "/v1/webhooks"): "listWebhooks",
    ("post", "/v1/webhooks"): "createWebhook",
    ("get", "/v1/webhooks/{webhook_id}"): "getWebhook",
    ("delete", "/v1/webhooks/{webhook_id}"): "deleteWebhook",
    ("get", "/v1/webhooks/{webhook_id}/deliveries"): "listWebhookDeliveries",
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): "redeliverWebhookDelivery",
    ("get", "/v1/restricted-senders"): "listRestrictedSenders",
    ("get", "/v1/tenants"): "listTenants",
    ("post", "/v1/tenants"): "createTenant",
    ("get", "/v1/tenants/{name}"): "getTenant",
    ("post", "/v1/tenants/{name}/disable"): "disableTenant",
    ("get", "/metrics"): "getMetrics",
    ("get", "/healthz"): "getHealth",
    ("get", "/readyz"): "getReadiness",
}


async def test_every_operation_has_its_chosen_operation_id(spec: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for path, method, op in _operations(spec)}
    assert found == OPERATION_IDS


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) that resolves the document's $refs."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    document = Resource.from_contents(spec, default_specification=DRAFT_2020_12)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", document)
    rooted = {"$id": "urn:openapi#", **schema} if "$ref" not in schema else {"$ref": "urn:openapi" + schema["$ref"]}
    return Draft202012Validator(_rebase(rooted), registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _rebase(schema: Any) -> Any:
    """Point the document's local refs (#/components/...) at the registered document."""
    if isinstance(schema, dict):
        return {k: ("urn:openapi" + v if k == "$ref" and v.startswith("#/") else _rebase(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rebase(v) for v in schema]
    return schema


DRAFT_2020_12 = __import__("referencing.jsonschema", fromlist=["DRAFT202012"]).DRAFT202012


async def test_every_schema_has_an_example_that_validates(spec: dict[str, Any]) -> None:
    """A client fed the examples must parse them: each schema's examples hold against the schema itself."""
    for name, schema in spec["components"]["schemas"].items():
        examples = schema.get("examples")
        assert examples, f"{name} has no example"
        validator = _validator(spec, {"$ref": f"#/components/schemas/{name}"})
        for example in examples:
            errors = [f"{'/'.join(map(str, err.path))}: {err.message}" for err in validator.iter_errors(example)]
            assert errors == [], (name, errors)


def _media(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for section in ("paths", "webhooks"):
        for path, operations in spec.get(section, {}).items():
            for method, op in operations.items():
                for code, response in op.get("responses", {}).items():
                    for media_type, media in response.get("content", {}).items():
                        out.append((f"{method} {path} {code} {media_type}", media_type, media))
                body = op.get("requestBody", {}).get("content", {})
                for media_type, media in body.items():
                    out.append((f"{method} {path} request {media_type}", media_type, media))
    return out


async def test_every_response_has_an_example_that_validates(spec: dict[str, Any]) -> None:
    for where, media_type, media in _media(spec):
        schema = media.get("schema")
        if media_type == "text/event-stream" or (media_type.startswith("text/plain")):
            assert media.get("example"), where
            continue
        example = media.get("example")
        if example is None and schema and "$ref" in schema:
            continue  # a request body's schema carries its examples (checked above)
        assert example is not None, where
        errors = [err.message for err in _validator(spec, schema).iter_errors(example)]
        assert errors == [], (where, errors)


async def test_problems_name_every_kind_and_their_fields(spec: dict[str, Any]) -> None:
    """The `type` of a problem is one of a declared enum; the fields some problems add are described."""
    from service import errors as service_errors

    types = set(spec["components"]["schemas"]["ProblemType"]["enum"])
    assert {"/problems/case_not_found", "/problems/invalid_input", "/problems/open_case_exists"} <= types
    assert f"/problems/{service_errors.CredentialGone.code}" in types
    problem = spec["components"]["schemas"]["Problem"]["properties"]
    assert {"case_id", "field", "domain", "errors"} <= set(problem)


async def test_headers_the_api_sends_are_declared(spec: dict[str, Any]) -> None:
    for path, method, op in _operations(spec):
        for code, response in op["responses"].items():
            assert "X-Request-ID" in response.get("headers", {}), (method, path, code)
            if code in ("429", "503"):
                assert "Retry-After" in response["headers"], (method, path, code)
    created = spec["paths"]["/v1/cases"]["post"]["responses"]["201"]["headers"]
    assert "Idempotent-Replayed" in created
    # A body that cannot be decoded is 400; text that is not JSON is 422 (the fuzz test sends both).
    assert "not JSON is 422" in spec["paths"]["/v1/cases"]["post"]["responses"]["400"]["description"]


async def test_the_stream_is_its_own_operation_and_webhooks_are_described(spec: dict[str, Any]) -> None:
    stream = spec["paths"]["/v1/cases/{case_id}/events/stream"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    events = spec["paths"]["/v1/cases/{case_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["application/json"]
    from service.domain.timeline import WebhookEventType

    assert set(spec["webhooks"]) == {t.value for t in WebhookEventType}
    for name, item in spec["webhooks"].items():
        headers = {p["name"] for p in item["post"]["parameters"]}
        assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}, name
    for path in ("/healthz", "/readyz", "/metrics"):
        assert spec["paths"][path]["get"]["security"] == []
    assert spec["servers"]
    assert spec["info"]["license"]["identifier"] == "MIT"
