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

    def calls(self, cmdlet: str | None = None) -> list[dict[str, Any]]:
        with self.sandbox.tenant.lock:
            calls = [c.public() for c in self.sandbox.tenant.calls]
        return [c for c in calls if cmdlet is None or c["cmdlet"] == cmdlet]


async def make_key(runtime: Runtime, name: str, scopes: list[str]) -> str:
    new = generate_key()
    await key_rows.create_key(runtime.db, name=name, prefix=new.prefix, key_hash=new.key_hash, scopes=scopes)
    return new.plaintext


@asynccontextmanager
async def running_stack(
    database_url: str, sandbox: SandboxServer, *, worker: bool = True, **overrides: Any
) -> AsyncIterator[Stack]:
    settings = stack_settings(database_url, sandbox, **overrides)
    runtime = build_runtime(settings)
    app = create_app(runtime, background=services(runtime, worker=worker))
    async with app.router.lifespan_context(app):
        key = await make_key(runtime, "servicedesk", sorted(ALL_SCOPES))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://unblock.test", headers={"Authorization": f"Bearer {key}"}
        ) as client:
            yield Stack(client=client, runtime=runtime, sandbox=sandbox, key=key, app=app)
