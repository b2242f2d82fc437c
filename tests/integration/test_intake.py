"""Intake never depends on the tenant: API processes without PowerShell, facts kept in the database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from service.api.problems import UNAVAILABLE_RETRY_AFTER, problem_response
from service.persistence import tenant_facts
from service.sandbox.server import SandboxServer
from service.sandbox.tenant import DEMO_RESTRICTED
from tests.stack import Stack, running_stack

NO_ENDPOINT: dict[str, Any] = {"ps_server": None}


@pytest.fixture
def private_sandbox() -> Iterator[SandboxServer]:
    """A sandbox of this test's own, which it may stop (an outage) and start again on the same port."""
    server = SandboxServer(port=0, seed="demo").start()
    yield server
    server.close()


async def test_a_cold_api_process_accepts_cases_while_the_endpoint_is_down(
    database_url: str, private_sandbox: SandboxServer
) -> None:
    """No domain list known and the runner host down: cases are accepted (201). When the endpoint returns,
    a worker finishes each case with the right outcome; a foreign mailbox fails with foreign_mailbox and no
    command ever names it."""
    sandbox = private_sandbox
    sandbox.stop()
    async with running_stack(database_url, sandbox, worker=False) as api:
        assert api.runtime.gateway is None
        opened = {mailbox: (await api.open(mailbox))["id"] for mailbox in ("rob@contoso.com", "ann@contoso.com")}
        foreign = await api.open("eve@fabrikam.com")
        assert (await api.client.get("/readyz")).status_code == 200
    sandbox.restart()
    assert sandbox.tenant.calls == []
    async with running_stack(database_url, sandbox) as worker:
        rob = await worker.wait_for(opened["rob@contoso.com"])
        ann = await worker.wait_for(opened["ann@contoso.com"])
        eve = await worker.wait_for(foreign["id"])
        stored = (await tenant_facts.load(worker.runtime.db)).accepted_domains
    assert (rob["state"], rob["outcome"]) == ("resolved", "unblocked")
    assert (ann["state"], ann["outcome"]) == ("resolved", "not_restricted")
    assert eve["state"] == "failed"
    assert eve["last_error"]["code"] == "foreign_mailbox"
    assert "fabrikam.com" in eve["last_error"]["message"]
    assert not any("fabrikam" in str(call.public()) for call in sandbox.tenant.calls), "a command named it"
    assert stored == ["contoso.com", "contoso.onmicrosoft.com"]


async def test_with_stored_domains_a_foreign_mailbox_is_refused_at_once(
    database_url: str, sandbox: SandboxServer
) -> None:
    """Once a worker stored the tenant's domains, an API process without PowerShell refuses others with 422."""
    async with running_stack(database_url, sandbox):  # a worker stores the domains as it starts
        pass
    async with running_stack(database_url, sandbox, worker=False, **NO_ENDPOINT) as api:
        refused = await api.client.post("/v1/cases", json={"mailbox": "eve@fabrikam.com"})
        accepted = await api.client.post("/v1/cases", json={"mailbox": "rob@contoso.com"})
    assert refused.status_code == 422
    assert refused.json()["type"] == "/problems/foreign_mailbox"
    assert accepted.status_code == 201


async def test_api_processes_serve_the_list_and_the_dashboard_from_the_database(
    database_url: str, sandbox: SandboxServer
) -> None:
    """The restricted list and the dashboard's panel come from what a worker stored; the API process
    opens no session (the sandbox sees nothing from it)."""
    async with running_stack(database_url, sandbox, worker=False, **NO_ENDPOINT) as api:
        before = (await api.client.get("/v1/restricted-senders")).json()
        assert before == {"items": [], "fetched_at": None}
        async with running_stack(database_url, sandbox):
            pass  # a worker came, read the tenant, and went
        calls = len(sandbox.tenant.calls)
        listed = (await api.client.get("/v1/restricted-senders")).json()
        assert {i["sender_address"] for i in listed["items"]} == set(DEMO_RESTRICTED)
        assert listed["fetched_at"] is not None
        page = await _dashboard(api)
        assert "rob@contoso.com" in page
        assert "as read from the tenant at" in page
        assert len(sandbox.tenant.calls) == calls


async def _dashboard(stack: Stack) -> str:
    login = await stack.client.post(
        "/ui/login",
        data={"key": stack.key},
        headers={"Origin": "http://unblock.test", "Authorization": ""},
        follow_redirects=False,
    )
    assert login.status_code == 303, login.text
    stack.client.cookies.update(login.cookies)
    page = await stack.client.get("/ui", headers={"Authorization": ""})
    assert page.status_code == 200
    return page.text


async def test_readiness_means_it_can_accept_and_store_cases(database_url: str, private_sandbox: SandboxServer) -> None:
    """/readyz is 200 whenever the database answers, listing each component; the endpoint being down takes
    no process out of a load balancer; ?require=powershell is 503 naming it, with Retry-After."""
    sandbox = private_sandbox
    async with running_stack(database_url, sandbox, worker=False, **NO_ENDPOINT) as api:
        ready = await api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}
        required = await api.client.get("/readyz", params={"require": "powershell"})
        assert required.status_code == 503
        assert required.headers["retry-after"].isdigit()
        assert required.json()["failing"] == ["powershell"]
        assert "runs no worker" in required.json()["detail"]
    async with running_stack(database_url, sandbox) as worker:
        ok = await worker.client.get("/readyz", params={"require": "powershell"})
        assert ok.status_code == 200
        assert ok.json()["checks"] == {"database": "ok", "powershell": "ok"}
        sandbox.close_shells()
        sandbox.stop()
        try:
            degraded = await worker.client.get("/readyz")
            assert degraded.status_code == 200
            assert degraded.json()["checks"]["powershell"].startswith("unavailable")
            failing = await worker.client.get("/readyz", params={"require": "powershell"})
            assert failing.status_code == 503
            assert "powershell" in failing.json()["detail"]
            assert failing.headers["retry-after"].isdigit()
        finally:
            sandbox.restart()


def test_every_503_problem_says_when_to_come_back() -> None:
    """A 503 that knows no better still carries Retry-After (the database down, a dependency unavailable)."""
    response = problem_response(status=503, code="unavailable", title="Unavailable", detail="the database is down")
    assert response.headers["retry-after"] == str(UNAVAILABLE_RETRY_AFTER)
    explicit = problem_response(status=503, code="x", title="x", detail="x", headers={"Retry-After": "30"})
    assert explicit.headers["retry-after"] == "30"
