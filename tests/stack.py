"""The whole service in one test: the real app, the real worker and bridge, a real database, the sandbox.

Requests go through httpx's ASGI transport to the application that `unblock serve` runs, and
the app's lifespan starts the warm pool and the worker exactly as in production. Waits are
shortened by settings, not by patching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from service.api.app import create_app
from service.config import Settings
from service.persistence import keys as key_rows
from service.runtime import Runtime
from service.sandbox.server import SandboxServer
from service.security.keys import generate_key
from service.security.scopes import ALL_SCOPES
from service.serving import build_runtime, services
from tests.resolver import StubResolver

SECRET = "0" * 64
TERMINAL = {"resolved", "failed", "escalated", "cancelled"}


def stack_settings(database_url: str, sandbox: SandboxServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": [SECRET],
        "ps_server": sandbox.host,
        "ps_port": sandbox.port,
        "ps_ssl": False,
        "ps_auth": "basic",
        "ps_encryption": "never",
        "ps_username": "sandbox",
        "ps_password": "sandbox",
        "ps_pool_size": 2,
        "ps_call_timeout": 10,
        "ps_operation_timeout": 1,
        "tenant_organization": "contoso.onmicrosoft.com",
        "tenant_app_id": "11111111-2222-3333-4444-555555555555",
        "tenant_cert_thumbprint": "A" * 40,
        "propagation_wait": 1.5,
        "recheck_interval": 0.5,
        "retry_initial": 0.1,
        "retry_max": 0.5,
        "retry_attempts": 4,
        "worker_lease": 10,
        "worker_poll_interval": 1,
        "discovery_interval": 0,  # tests that want discovery turn it on
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Stack:
    client: httpx.AsyncClient
    runtime: Runtime
    sandbox: SandboxServer
    key: str
    app: Any = None
    approver_key: str | None = None

    async def open(self, mailbox: str, **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/cases", json={"mailbox": mailbox, **body})
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def get(self, case_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/cases/{case_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_for(self, case_id: str, states: set[str] | str = TERMINAL, timeout: float = 20) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        while True:
            case = await self.get(case_id)
            if case["state"] in wanted:
                return case
            if time.monotonic() > deadline:
                raise AssertionError(f"case stayed in {case['state']} (wanted {sorted(wanted)}): {case}")
            await asyncio.sleep(0.05)

    async def events(self, case_id: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/cases/{case_id}/events")
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    async def approve(self, case_id: str) -> httpx.Response:
        """Approve as a second person (four eyes: the key that opened a case may not approve it)."""
        if self.approver_key is None:
            self.approver_key = await make_key(self.runtime, "approver", ["cases:approve", "cases:read"])
        return await self.client.post(
            f"/v1/cases/{case_id}/approve", headers={"Authorization": f"Bearer {self.approver_key}"}
        )

    def calls(self, cmdlet: str | None = None) -> list[dict[str, Any]]:
        with self.sandbox.tenant.lock:
            calls = [c.public() for c in self.sandbox.tenant.calls]
        return [c for c in calls if cmdlet is None or c["cmdlet"] == cmdlet]


async def _first_tenant_read(runtime: Runtime, timeout: float = 60.0) -> None:
    """A worker reads the tenant's domains and restricted list as it starts; tests that then arm faults
    on those reads must not have them taken by that first read, so wait for it."""
    from service.persistence import tenant_facts

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        facts = await tenant_facts.load(runtime.db)
        if facts.senders_fetched_at is not None and facts.domains_refreshed_at is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the worker did not read the tenant's facts on start")


async def make_key(runtime: Runtime, name: str, scopes: list[str]) -> str:
    new = generate_key()
    await key_rows.create_key(
        runtime.db, name=name, prefix=new.prefix, key_hash=new.key_hash, scopes=scopes, signer=runtime.audit_signer
    )
    return new.plaintext


async def _stack_key(runtime: Runtime) -> str:
    """The stack's all-scopes key, named servicedesk; a later stack on the same database (a restart)
    gets servicedesk-2, -3..., since key names are unique."""
    from service.errors import ApiKeyNameTaken

    for number in range(1, 100):
        try:
            return await make_key(
                runtime, "servicedesk" if number == 1 else f"servicedesk-{number}", sorted(ALL_SCOPES)
            )
        except ApiKeyNameTaken:
            continue
    raise AssertionError("no free name for the stack's key")


@asynccontextmanager
async def running_stack(
    database_url: str,
    sandbox: SandboxServer,
    *,
    worker: bool = True,
    tenant: bool | None = None,
    resolver: StubResolver | None = None,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """``worker=False`` is an API-only process: like `serve --no-worker`, it has no PowerShell bridge
    unless ``tenant=True`` asks for one (tests that drive the bridge by hand). Host names in webhook
    URLs resolve through ``resolver`` (by default, none resolves): tests never ask real DNS."""
    settings = stack_settings(database_url, sandbox, **overrides)
    runtime = build_runtime(settings, tenant=worker if tenant is None else tenant)
    runtime.resolver = resolver or StubResolver()
    app = create_app(runtime, background=services(runtime, worker=worker))
    async with app.router.lifespan_context(app):
        key = await _stack_key(runtime)
        if worker:
            await _first_tenant_read(runtime)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://unblock.test", headers={"Authorization": f"Bearer {key}"}
        ) as client:
            yield Stack(client=client, runtime=runtime, sandbox=sandbox, key=key, app=app)
