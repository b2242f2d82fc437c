"""The PowerShell bridge against the sandbox tenant over real pypsrp: operations, errors, pool."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from service import errors as e
from service.config import Settings
from service.powershell import commands as c
from service.powershell.bridge import PowerShellBridge
from service.sandbox.server import SandboxServer

APP_ID = "11111111-2222-3333-4444-555555555555"

BridgeFactory = Callable[..., PowerShellBridge]


def sandbox_settings(server: SandboxServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "ps_server": server.host,
        "ps_port": server.port,
        "ps_ssl": False,
        "ps_auth": "basic",
        "ps_encryption": "never",
        "ps_username": "sandbox",
        "ps_password": "sandbox",
        "ps_pool_size": 2,
        "ps_call_timeout": 10,
        "ps_operation_timeout": 1,
        "tenant_organization": "contoso.onmicrosoft.com",
        "tenant_app_id": APP_ID,
        "tenant_cert_thumbprint": "A" * 40,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def make_bridge(sandbox: SandboxServer) -> AsyncIterator[BridgeFactory]:
    bridges: list[PowerShellBridge] = []

    def make(**overrides: Any) -> PowerShellBridge:
        bridge = PowerShellBridge(sandbox_settings(sandbox, **overrides))
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        await bridge.close()
    await asyncio.sleep(0.3)  # closing is off the event loop; let the Delete requests land


@pytest.fixture
async def bridge(make_bridge: BridgeFactory) -> PowerShellBridge:
    b = make_bridge()
    await b.start()
    return b


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _calls(sandbox: SandboxServer, cmdlet: str) -> list[Any]:
    return [c for c in sandbox.tenant.calls if c.cmdlet == cmdlet]


# --- operations -------------------------------------------------------------------------------------


async def test_get_and_list_restrictions(bridge: PowerShellBridge) -> None:
    """get_restriction finds a listed sender with parsed times; list_restrictions returns all."""
    rob = await bridge.get_restriction("rob@contoso.com")
    assert rob is not None
    assert rob.sender_address == "rob@contoso.com"
    assert rob.reason.startswith("EmailSendingLimitExceeded;")
    assert rob.blocked_at is not None
    assert rob.blocked_at.tzinfo is not None
    assert rob.temporary_block is False
    assert await bridge.get_restriction("ann@contoso.com") is None
    listed = await bridge.list_restrictions()
    assert {r.sender_address for r in listed} == {"rob@contoso.com", "laura@contoso.com", "julia@contoso.com"}


async def test_remove_restriction_is_idempotent(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """The first remove unblocks; a second finds nothing to remove and is not an error."""
    assert await bridge.remove_restriction("rob@contoso.com", reason="INC001") is True
    assert await bridge.remove_restriction("rob@contoso.com") is False
    assert sandbox.tenant.lookup("rob@contoso.com") is None
    assert _calls(sandbox, "Remove-BlockedSenderAddress")[0].parameters["Reason"] == "INC001"


async def test_reset_password_through_graph(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Update-MgUser -PasswordProfile sets the password and the force-change flag."""
    await bridge.reset_password("rob@contoso.com", "Gx7!mQ2#pL9zR4wT8vY", force_change=True)
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.password_sha256 == _sha("Gx7!mQ2#pL9zR4wT8vY")
    assert user.force_change_password is True


async def test_reset_password_in_active_directory(make_bridge: BridgeFactory, sandbox: SandboxServer) -> None:
    """The ad backend: LDAP-filtered lookup piped to Set-ADAccountPassword with a SecureString."""
    sandbox.tenant.add_user("sam@contoso.com", on_premises_sync=True)
    bridge = make_bridge(password_backend="ad")
    await bridge.reset_password("sam@contoso.com", "Ad7!mQ2#pL9zR4wT8vY", force_change=True)
    user = sandbox.tenant.find_user("sam@contoso.com")
    assert user is not None
    assert user.password_sha256 == _sha("Ad7!mQ2#pL9zR4wT8vY")
    assert user.force_change_password is True
    call = _calls(sandbox, "Set-ADAccountPassword")[-1]
    assert call.parameters["NewPassword"] == {"sha256": _sha("Ad7!mQ2#pL9zR4wT8vY")}
    with pytest.raises(e.MailboxNotFound):
        await bridge.reset_password("rob@contoso.com", "Ad7!mQ2#pL9zR4wT8vY")  # cloud-only: not in AD


async def test_revoke_sessions(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Revoke-MgUserSignInSession is recorded on the user."""
    await bridge.revoke_sessions("rob@contoso.com")
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.sessions_revoked_at is not None


async def test_inbox_rules_and_forwarding(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Rules come back typed with a suspicion flag; one is disabled; forwarding is cleared."""
    rules = await bridge.list_inbox_rules("rob@contoso.com")
    assert [r.name for r in rules] == ["Team updates", ".", "invoice"]
    assert [r.suspicious for r in rules] == [False, True, True]
    await bridge.disable_inbox_rule("rob@contoso.com", rules[2].identity)
    await bridge.clear_forwarding("rob@contoso.com")
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.inbox_rules[2].enabled is False
    assert user.forwarding_smtp_address is None


async def test_accepted_domains_and_users(bridge: PowerShellBridge) -> None:
    """accepted_domains, get_user and user_exists."""
    assert await bridge.accepted_domains() == ["contoso.com", "contoso.onmicrosoft.com"]
    user = await bridge.get_user("rob@contoso.com")
    assert user is not None
    assert user.on_premises_sync is False
    assert await bridge.user_exists("zed@contoso.com") is False


async def test_probe(bridge: PowerShellBridge, make_bridge: BridgeFactory) -> None:
    """The probe passes against the sandbox and fails, classified, against a closed port."""
    await bridge.probe()
    dead = make_bridge(ps_port=1)
    with pytest.raises(e.EndpointUnavailable):
        await dead.probe()


async def test_each_runspace_connects_once_with_bound_parameters(
    bridge: PowerShellBridge, sandbox: SandboxServer
) -> None:
    """Connect-ExchangeOnline and Connect-MgGraph run once per runspace, app-only, with -CommandName."""
    for _ in range(6):
        await bridge.get_restriction("rob@contoso.com")
    connects = _calls(sandbox, "Connect-ExchangeOnline")
    assert len(connects) == 2  # the pool size
    assert len(_calls(sandbox, "Connect-MgGraph")) == 2
    params = connects[0].parameters
    assert params["AppId"] == APP_ID
    assert params["Organization"] == "contoso.onmicrosoft.com"
    assert params["ShowBanner"] is False
    assert "Remove-BlockedSenderAddress" in params["CommandName"]


async def test_jea_endpoint_without_connects(make_bridge: BridgeFactory, sandbox: SandboxServer) -> None:
    """With UNBLOCK_PS_CONNECT_IN_SESSION=false the bridge runs against the JEA endpoint as is."""
    bridge = make_bridge(ps_configuration_name="UnblockRunner", ps_connect_in_session=False)
    assert await bridge.get_restriction("rob@contoso.com") is not None
    assert _calls(sandbox, "Connect-ExchangeOnline") == []


# --- error classes ------------------------------------------------------------------------------------


async def test_transient_errors_are_retryable(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """A 503 from the tenant is a TransientError the engine retries."""
    await bridge.get_restriction("rob@contoso.com")
    sandbox.tenant.add_fault("Get-BlockedSenderAddress", "transient", 1)
    with pytest.raises(e.TransientError) as caught:
        await bridge.get_restriction("rob@contoso.com")
    assert caught.value.retryable


async def test_throttling_carries_retry_after(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Throttling is retryable and says how long to wait."""
    await bridge.get_restriction("rob@contoso.com")
    sandbox.tenant.configure({"throttle_retry_after_s": 9})
    sandbox.tenant.add_fault("Get-BlockedSenderAddress", "throttled", 1)
    with pytest.raises(e.Throttled) as caught:
        await bridge.get_restriction("rob@contoso.com")
    assert caught.value.retry_after == 9
    assert caught.value.retryable


async def test_not_found(bridge: PowerShellBridge) -> None:
    """An unknown user is MailboxNotFound (Graph's Request_ResourceNotFound)."""
    with pytest.raises(e.MailboxNotFound):
        await bridge.reset_password("zed@contoso.com", "Gx7!mQ2#pL9zR4wT8vY")
    with pytest.raises(e.MailboxNotFound):
        await bridge.list_inbox_rules("zed@contoso.com")


async def test_unblock_limit(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Past the daily unblock limit, UnblockLimitExceeded (not retryable)."""
    sandbox.tenant.configure({"unblock_limit_per_day": 1})
    assert await bridge.remove_restriction("rob@contoso.com")
    sandbox.tenant.restrict("rob@contoso.com")
    with pytest.raises(e.UnblockLimitExceeded) as caught:
        await bridge.remove_restriction("rob@contoso.com")
    assert not caught.value.retryable


@pytest.mark.parametrize("cmdlet", ["Remove-BlockedSenderAddress", "Update-MgUser"])
async def test_permission_denied(bridge: PowerShellBridge, sandbox: SandboxServer, cmdlet: str) -> None:
    """A missing Exchange role or Graph permission is PermissionDenied."""
    sandbox.tenant.configure({"denied_cmdlets": [cmdlet]})
    if cmdlet == "Update-MgUser":
        with pytest.raises(e.PermissionDenied):
            await bridge.reset_password("rob@contoso.com", "Gx7!mQ2#pL9zR4wT8vY")
    else:
        with pytest.raises(e.PermissionDenied):
            await bridge.remove_restriction("rob@contoso.com")


async def test_a_command_the_endpoint_does_not_offer_is_permission_denied(
    make_bridge: BridgeFactory, sandbox: SandboxServer
) -> None:
    """CommandNotFoundException for a command we need means a missing role or JEA capability."""
    bridge = make_bridge(ps_configuration_name="UnblockRunner", ps_connect_in_session=False)
    connect = c.CONNECT_GRAPH(ClientId="x", CertificateThumbprint="y", TenantId="z", NoWelcome=True)
    result = await bridge._run(connect)  # not visible through the JEA endpoint
    with pytest.raises(e.PermissionDenied, match="does not offer"):
        bridge._raise_errors(result, connect.name)


async def test_synced_user_and_weak_password(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Graph refuses a synced user (SyncedUser) and a weak password (InvalidPassword)."""
    sandbox.tenant.add_user("sam@contoso.com", on_premises_sync=True)
    with pytest.raises(e.SyncedUser):
        await bridge.reset_password("sam@contoso.com", "Gx7!mQ2#pL9zR4wT8vY")
    with pytest.raises(e.InvalidPassword):
        await bridge.reset_password("rob@contoso.com", "password")


async def test_fatal_is_a_permanent_remote_error(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """An unexpected failure of the command is a permanent RemoteError."""
    await bridge.get_restriction("rob@contoso.com")
    sandbox.tenant.add_fault("Get-BlockedSenderAddress", "fatal", 1)
    with pytest.raises(e.RemoteError) as caught:
        await bridge.get_restriction("rob@contoso.com")
    assert not caught.value.retryable


async def test_endpoint_misconfiguration(make_bridge: BridgeFactory) -> None:
    """Wrong credentials: PermissionDenied. Unknown session configuration: permanent. No server: transient."""
    with pytest.raises(e.PermissionDenied, match="credential"):
        await make_bridge(ps_password="wrong").get_restriction("rob@contoso.com")
    with pytest.raises(e.RemoteError, match="session configuration"):
        await make_bridge(ps_configuration_name="Nope").get_restriction("rob@contoso.com")
    with pytest.raises(e.EndpointUnavailable):
        await make_bridge(ps_port=1).get_restriction("rob@contoso.com")


# --- the pool -----------------------------------------------------------------------------------------


async def test_recovery_after_a_dropped_connection(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """A dropped connection is a retryable error; the broken runspace is replaced and its shell closed."""
    await bridge.get_restriction("rob@contoso.com")
    sandbox.tenant.add_fault("Get-BlockedSenderAddress", "drop_connection", 1)
    with pytest.raises(e.EndpointUnavailable):
        await bridge.get_restriction("rob@contoso.com")
    assert await bridge.get_restriction("rob@contoso.com") is not None
    await _settle(lambda: sandbox.shells == 2, "the pool back to two shells")


async def test_recovery_after_a_hang(make_bridge: BridgeFactory, sandbox: SandboxServer) -> None:
    """A hang ends at the call timeout with CallTimeout, never later; the pool recovers."""
    bridge = make_bridge(ps_call_timeout=2)
    await bridge.get_restriction("rob@contoso.com")
    sandbox.tenant.add_fault("Get-BlockedSenderAddress", "hang", 1)
    started = time.monotonic()
    with pytest.raises(e.CallTimeout):
        await bridge.get_restriction("rob@contoso.com")
    assert 1.8 < time.monotonic() - started < 3.5
    assert await bridge.get_restriction("rob@contoso.com") is not None
    await _settle(lambda: sandbox.shells == 2, "the hung shell closed")


async def test_pool_size_bounds_concurrency_and_never_blocks_the_loop(
    make_bridge: BridgeFactory, sandbox: SandboxServer
) -> None:
    """N calls run at once, call N+1 waits its turn, and the event loop keeps ticking meanwhile."""
    bridge = make_bridge(ps_pool_size=2)
    await bridge.start()
    await asyncio.gather(*(bridge.accepted_domains() for _ in range(2)))  # both runspaces warm
    sandbox.tenant.configure({"latency_ms": {"Get-AcceptedDomain": 400}})
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    started = time.monotonic()
    await asyncio.gather(*(bridge.accepted_domains() for _ in range(2)))
    two = time.monotonic() - started
    started = time.monotonic()
    await asyncio.gather(*(bridge.accepted_domains() for _ in range(3)))
    three = time.monotonic() - started
    stop.set()
    await tick
    assert two < 0.75, two
    assert three > 0.8, three  # the third waited for a runspace
    assert max(gaps) < 0.15, max(gaps)


async def test_a_warm_pool_does_not_reconnect(make_bridge: BridgeFactory, sandbox: SandboxServer) -> None:
    """With Connect-ExchangeOnline taking 2 s, 50 sequential lookups on a warm pool take under 2 s."""
    sandbox.tenant.configure({"latency_ms": {"Connect-ExchangeOnline": 2000}})
    bridge = make_bridge(ps_pool_size=2)
    await bridge.start()
    await _settle(lambda: bridge.stats().idle == 2, "two warm runspaces", timeout=15)
    started = time.monotonic()
    for _ in range(50):
        assert await bridge.get_restriction("rob@contoso.com") is not None
    elapsed = time.monotonic() - started
    print(f"50 sequential lookups: {elapsed:.3f}s")
    assert elapsed < 2.0, elapsed
    assert len(_calls(sandbox, "Connect-ExchangeOnline")) == 2


async def test_runspaces_are_recycled(make_bridge: BridgeFactory, sandbox: SandboxServer) -> None:
    """After ps_recycle_after calls a runspace is replaced by a freshly connected one."""
    bridge = make_bridge(ps_pool_size=1, ps_recycle_after=3)
    for _ in range(7):
        await bridge.get_restriction("rob@contoso.com")
        await asyncio.sleep(0.05)
    assert len(_calls(sandbox, "Connect-ExchangeOnline")) == 3


async def test_passwords_never_reach_the_logs(bridge: PowerShellBridge) -> None:
    """Even on failure, no log line carries the temporary password."""
    password = "Qz9!never-logged-Vw3"
    with capture_logs() as logs:
        await bridge.reset_password("rob@contoso.com", password)
        with pytest.raises(e.MailboxNotFound):
            await bridge.reset_password("zed@contoso.com", password)
    assert logs
    assert password not in repr(logs)


async def _settle(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_the_runner_endpoint_gets_its_wrappers(make_bridge: BridgeFactory, sandbox: SandboxServer) -> None:
    """With UNBLOCK_PS_RUNNER_FUNCTIONS the password travels as a SecureString and forwarding has no $null."""
    bridge = make_bridge(ps_configuration_name="UnblockRunner", ps_connect_in_session=False, ps_runner_functions=True)
    await bridge.reset_password("rob@contoso.com", "Gx7!mQ2#pL9zR4wT8vY", force_change=True)
    await bridge.clear_forwarding("rob@contoso.com")
    names = [call.cmdlet for call in sandbox.tenant.calls]
    assert "Update-MgUser" not in names
    assert "Set-Mailbox" not in names
    wrapper = _calls(sandbox, "Set-UnblockUserPassword")[0]
    assert wrapper.parameters["NewPassword"] == {"sha256": _sha("Gx7!mQ2#pL9zR4wT8vY")}
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.password_sha256 == _sha("Gx7!mQ2#pL9zR4wT8vY")
    assert user.force_change_password is True
    assert user.forwarding_smtp_address is None
    with pytest.raises(e.MailboxNotFound):
        await bridge.reset_password("zed@contoso.com", "Gx7!mQ2#pL9zR4wT8vY")


async def test_the_wrappers_do_not_exist_on_a_full_endpoint(make_bridge: BridgeFactory) -> None:
    """Asking a plain endpoint for the runner's wrappers is a clear PermissionDenied (command missing)."""
    bridge = make_bridge(ps_runner_functions=True)
    with pytest.raises(e.PermissionDenied, match="does not offer"):
        await bridge.clear_forwarding("rob@contoso.com")
