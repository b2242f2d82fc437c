"""Inputs the fuzzer found (or could find) that once reached the database: each is now a clear 4xx.

PostgreSQL refuses NUL in text and integers beyond 64 bits; those errors used to surface as 500s.
Runs on both databases.
"""

from __future__ import annotations

import base64
import json

import pytest

from service.sandbox.server import SandboxServer
from tests.stack import running_stack


def _forged_cursor(case_id: str) -> str:
    raw = json.dumps(["2026-01-01T00:00:00+00:00", case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/cases", {"mailbox": "rob@contoso.com", "note": "a\x00b"}),
        ("POST", "/v1/cases", {"mailbox": "rob@contoso.com", "ticket_ref": "T\x00"}),
        ("POST", "/v1/webhooks", {"url": "https://example.com/\x00", "events": ["*"]}),
        ("POST", "/v1/webhooks", {"url": "https://exämple.com/hook", "events": ["*"]}),
        ("POST", "/v1/webhooks", {"url": "https://[::1/hook", "events": ["*"]}),
        ("POST", "/v1/webhooks", {"url": "https://example.com:99999/hook", "events": ["*"]}),
        ("POST", "/v1/webhooks", {"url": "https://example.com/", "events": ["*"], "description": "x\x00"}),
        ("GET", "/v1/cases?mailbox=%00", None),
        ("GET", "/v1/cases?ticket_ref=a%00b", None),
        ("GET", f"/v1/cases?cursor={_forged_cursor('abc' + chr(0))}", None),
        ("GET", "/v1/cases?cursor=%00", None),
        ("GET", "/v1/cases?State=failed", None),
        ("GET", "/v1/cases?state=failed&state=resolved", None),
        ("GET", "/v1/cases/0000000000000000000000000a/events?after=99999999999999999999", None),
        ("POST", "/v1/webhooks/00000000000000000000000000/deliveries/99999999999999999999/redeliver", None),
    ],
)
async def test_refused_with_a_problem_not_a_crash(
    database_url: str, sandbox: SandboxServer, method: str, path: str, body: object
) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        response = await stack.client.request(method, path, json=body)
        assert response.status_code == 422, (response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_an_unknown_query_parameter_is_named(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        response = await stack.client.get("/v1/cases", params={"State": "failed"})
        assert response.status_code == 422
        assert "State" in response.json()["detail"]
        assert "state" in response.json()["detail"]  # and what the operation does take


async def test_a_huge_last_event_id_is_not_a_crash(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        case = await stack.open("rob@contoso.com")
        assert (await stack.client.post(f"/v1/cases/{case['id']}/cancel")).status_code == 200  # so the stream ends
        response = await stack.client.get(
            f"/v1/cases/{case['id']}/events",
            headers={"Accept": "text/event-stream", "Last-Event-ID": "9" * 30},
        )
        assert response.status_code == 200, response.text
        assert "event: end" in response.text  # resumed after every event there is: only the end


async def test_reveal_before_the_reset_is_409(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        case = await stack.open("rob@contoso.com")
        response = await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
        assert response.status_code == 409
        assert response.json()["type"] == "/problems/credential_not_ready"
        skipped = await stack.open("ann@contoso.com", actions={"reset_password": False})
        response = await stack.client.post(f"/v1/cases/{skipped['id']}/credential/reveal")
        assert response.status_code == 404
        assert response.json()["type"] == "/problems/credential_not_found"


async def test_the_dashboard_refuses_malformed_ids_and_keys(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, worker=False) as stack:
        login = await stack.client.post("/ui/login", data={"key": "ubk_\x00\x00\x00\x00\x00\x00\x00\x00_" + "a" * 43})
        assert login.status_code == 401
        page = await stack.client.get("/ui/cases/%00")
        assert page.status_code in (303, 422)  # not signed in: to the login page; never a 500
