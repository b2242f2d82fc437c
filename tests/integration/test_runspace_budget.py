"""Two tenants' pools sharing one runspace budget, over real pypsrp against the sandbox's two tenants.

The global cap holds across pools (the sandbox never has more shells open than the cap), and a
tenant whose neighbour floods its pool still gets a runspace within about one of the
neighbour's calls, instead of waiting for the whole flood.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from service.powershell.bridge import PowerShellBridge
from service.powershell.budget import RunspaceBudget
from service.sandbox.server import SandboxServer
from service.sandbox.tenant import FABRIKAM_TENANT_ID
from tests.integration.test_bridge import sandbox_settings

CALL_MS = 400


@pytest.fixture
async def two_tenants(
    sandbox: SandboxServer,
) -> AsyncIterator[tuple[PowerShellBridge, PowerShellBridge, RunspaceBudget]]:
    budget = RunspaceBudget(2)
    contoso = PowerShellBridge(sandbox_settings(sandbox, ps_pool_size=2), budget=budget)
    fabrikam = PowerShellBridge(
        sandbox_settings(
            sandbox, ps_pool_size=2, tenant_organization="fabrikam.onmicrosoft.com", tenant_id=FABRIKAM_TENANT_ID
        ),
        budget=budget,
    )
    try:
        yield contoso, fabrikam, budget
    finally:
        for bridge in (contoso, fabrikam):
            bridge.pool.check()
            await bridge.close()
        await asyncio.sleep(0.3)  # closing is off the event loop; let the Delete requests land


async def test_a_flooded_tenant_does_not_starve_its_neighbour(
    two_tenants: tuple[PowerShellBridge, PowerShellBridge, RunspaceBudget], sandbox: SandboxServer
) -> None:
    contoso, fabrikam, budget = two_tenants
    await contoso.start()  # contoso warms both runspaces the budget has: fabrikam starts with none
    await asyncio.gather(*(contoso.accepted_domains() for _ in range(2)))
    assert contoso.pool.held == 2
    assert fabrikam.pool.held == 0
    for tenant in sandbox.tenants.values():
        tenant.configure({"latency_ms": {"Get-AcceptedDomain": CALL_MS}})

    most_shells = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal most_shells
        while not stop.is_set():
            budget.check()
            most_shells = max(most_shells, sandbox.shells)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    flood = [asyncio.create_task(contoso.accepted_domains()) for _ in range(8)]  # 8 calls, 2 runspaces: 1.6 s+
    await asyncio.sleep(0.05)
    started = time.monotonic()
    domains = await fabrikam.accepted_domains()
    waited = time.monotonic() - started
    flood_left = sum(1 for task in flood if not task.done())
    await asyncio.gather(*flood)
    stop.set()
    await watcher

    assert "fabrikam.com" in domains  # it ran in fabrikam's tenant
    # One contoso call finished, its runspace was closed and fabrikam's opened in its room: well
    # before the flood ended (it still had calls queued when fabrikam's answer came back).
    assert flood_left >= 2, (waited, flood_left)
    assert fabrikam.pool.held >= 1
    assert most_shells <= budget.total + 1, most_shells  # +1: a shell being closed as its room is reused
    fabrikam_runspaces = {c.runspace for c in sandbox.calls if c.tenant == "fabrikam"}
    contoso_runspaces = {c.runspace for c in sandbox.calls if c.tenant == "contoso"}
    assert fabrikam_runspaces
    assert fabrikam_runspaces.isdisjoint(contoso_runspaces)


async def test_two_busy_tenants_take_turns(
    two_tenants: tuple[PowerShellBridge, PowerShellBridge, RunspaceBudget], sandbox: SandboxServer
) -> None:
    """Both tenants busy at once, two runspaces between them: their calls finish interleaved, neither
    tenant's four wait for all of the other's."""
    contoso, fabrikam, budget = two_tenants
    for tenant in sandbox.tenants.values():
        tenant.configure({"latency_ms": {"Get-AcceptedDomain": CALL_MS}})
    finished: dict[str, list[float]] = {"contoso": [], "fabrikam": []}

    async def call(name: str, bridge: PowerShellBridge) -> None:
        await bridge.accepted_domains()
        finished[name].append(time.monotonic())

    await asyncio.gather(*(call(n, b) for _ in range(4) for n, b in (("contoso", contoso), ("fabrikam", fabrikam))))
    budget.check()
    assert min(finished["fabrikam"]) < max(finished["contoso"])
    assert min(finished["contoso"]) < max(finished["fabrikam"])
    assert {c.tenant for c in sandbox.calls if c.cmdlet == "Get-AcceptedDomain"} == {"contoso", "fabrikam"}
