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
from service.sandbox.tenant import DEMO_RESTRICTED

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
        bridge.pool.check()  # the slot bookkeeping holds after whatever the test did
        await bridge.close()
        bridge.pool.check()
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
    assert {r.sender_address for r in listed} == set(DEMO_RESTRICTED)


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
    """Rules come back typed, recipients taken out of Exchange's "Name" [SMTP:x] form; one is disabled;
    forwarding is read with its smtp: prefix removed, then cleared."""
    rules = await bridge.list_inbox_rules("rob@contoso.com")
    assert [r.name for r in rules] == ["Team updates", ".", "invoice"]
    assert rules[2].forward_to == ("payments@fabrikam.example",)
    assert rules[2].delete_message is True
    assert rules[1].move_to_folder is not None
    assert rules[1].move_to_folder.endswith("RSS Feeds")
    assert not any(r.hidden for r in rules)
    forwarding = await bridge.get_forwarding("rob@contoso.com")
    assert forwarding.smtp_address == "collector@fabrikam.example"
    await bridge.disable_inbox_rule("rob@contoso.com", rules[2].identity)
    await bridge.clear_forwarding("rob@contoso.com")
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.inbox_rules[2].enabled is False
    assert user.forwarding_smtp_address is None
    assert (await bridge.get_forwarding("rob@contoso.com")).smtp_address is None


async def test_hidden_rules_are_found_and_marked(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Get-InboxRule shows hidden rules only with -IncludeHidden, and nothing marks them: the bridge asks twice."""
    sandbox.tenant.add_inbox_rule(
        "laura@contoso.com", "  ", hidden=True, redirect_to=["drop@fabrikam.example"], mark_as_read=True
    )
    sandbox.tenant.add_inbox_rule("laura@contoso.com", "Colleague", forward_to=["ann@contoso.com"])
    rules = await bridge.list_inbox_rules("laura@contoso.com")
    assert [(r.name, r.hidden) for r in rules] == [("  ", True), ("Colleague", False)]
    assert rules[0].redirect_to == ("drop@fabrikam.example",)
    assert rules[0].mark_as_read is True
    # A recipient of the directory is printed [EX:...] with its display name, which the bridge keeps.
    assert rules[1].forward_to == ("Ann Beebe",)
    calls = _calls(sandbox, "Get-InboxRule")
    assert [call.parameters.get("IncludeHidden") for call in calls] == [None, True]


async def test_delegates_and_send_as(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Get-MailboxPermission and Get-RecipientPermission, the owner's own SELF entries included."""
    sandbox.tenant.add_mailbox_permission("ben@contoso.com", "ann@contoso.com")
    sandbox.tenant.add_send_as("ben@contoso.com", "ann@contoso.com")
    delegates = await bridge.list_mailbox_permissions("ben@contoso.com")
    assert [(p.user, p.rights) for p in delegates] == [
        ("NT AUTHORITY\\SELF", ("FullAccess", "ReadPermission")),
        ("ann@contoso.com", ("FullAccess",)),
    ]
    send_as = await bridge.list_send_as("ben@contoso.com")
    assert [(p.trustee, p.rights, p.access_control_type) for p in send_as] == [
        ("NT AUTHORITY\\SELF", ("SendAs",), "Allow"),
        ("ann@contoso.com", ("SendAs",), "Allow"),
    ]
    with pytest.raises(e.MailboxNotFound):
        await bridge.list_mailbox_permissions("zed@contoso.com")


async def test_sign_in_methods_come_with_their_graph_type_and_age(bridge: PowerShellBridge) -> None:
    """Graph's base type declares only Id: the type and dates come out of AdditionalProperties."""
    methods = await bridge.list_auth_methods("victor@contoso.com")
    assert [m.kind for m in methods] == ["password", "microsoftAuthenticator"]
    phone = methods[1]
    assert phone.display_name == "Galaxy A15"
    assert phone.created_at is not None
    assert phone.created_at.tzinfo is not None
    assert phone.detail["deviceTag"] == "SoftwareTokenActivated"


async def test_consents_are_read_app_only_by_the_users_object_id(
    bridge: PowerShellBridge, sandbox: SandboxServer
) -> None:
    """Get-MgOauth2PermissionGrant -Filter "principalId eq '<id>'": the id comes from Get-MgUser, never the address."""
    grants = await bridge.list_oauth_grants("victor@contoso.com")
    assert len(grants) == 1
    assert "Mail.ReadWrite" in grants[0].scopes
    assert grants[0].consent_type == "Principal"
    victor = sandbox.tenant.find_user("victor@contoso.com")
    assert victor is not None
    (call,) = _calls(sandbox, "Get-MgOauth2PermissionGrant")
    assert call.parameters == {"Filter": f"principalId eq '{victor.object_id}'", "All": True}
    assert await bridge.list_oauth_grants("laura@contoso.com") == []
    app = await bridge.get_service_principal(grants[0].client_id)
    assert app is not None
    assert (app.display_name, app.verified_publisher) == ("Mail Sync Pro", None)
    assert app.owner_tenant_id == "5f2c7a9e-3b1d-4e8f-9a6c-2d4b8e1f0c37"
    verified = sandbox.tenant.add_service_principal("Contoso CRM", verified_publisher="Contoso Ltd")
    found = await bridge.get_service_principal(verified.object_id)
    assert found is not None
    assert found.verified_publisher == "Contoso Ltd"
    assert await bridge.get_service_principal("00000000-dead-4000-8000-000000000000") is None
    with pytest.raises(e.MailboxNotFound):
        await bridge.list_oauth_grants("zed@contoso.com")


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


async def test_graph_throttling_carries_retry_after(bridge: PowerShellBridge, sandbox: SandboxServer) -> None:
    """Graph's 429: retryable, after the Retry-After its error details advertise."""
    await bridge.get_user("rob@contoso.com")
    sandbox.tenant.configure({"throttle_retry_after_s": 9})
    sandbox.tenant.add_fault("Revoke-MgUserSignInSession", "throttled", 1)
    with pytest.raises(e.Throttled) as caught:
        await bridge.revoke_sessions("rob@contoso.com")
    assert caught.value.retry_after == 9
    assert caught.value.retryable


async def test_an_exchange_micro_delay_paces_the_pool_without_repeating_the_command(
    bridge: PowerShellBridge, sandbox: SandboxServer
) -> None:
    """Exchange's "Micro delay applied" warning comes with a command that succeeded: it is not run again,
    and the next call waits out the delay before it starts."""
    await bridge.get_restriction("rob@contoso.com")
    sandbox.tenant.configure({"throttle_retry_after_s": 5})  # the sandbox delays by 100 ms per unit: 500 ms
    sandbox.tenant.add_fault("Remove-BlockedSenderAddress", "throttled", 1)
    with capture_logs() as logs:
        assert await bridge.remove_restriction("rob@contoso.com")
        started = time.monotonic()
        assert await bridge.get_restriction("laura@contoso.com") is not None
        waited = time.monotonic() - started
    assert len(_calls(sandbox, "Remove-BlockedSenderAddress")) == 1
    assert [entry["delay_s"] for entry in logs if entry["event"] == "remote_slowed_down"] == [0.5]
    assert waited >= 0.4


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
    sandbox.tenant.configure({"forbidden_cmdlets": [cmdlet]})
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


async def test_the_pool_bookkeeping_holds_under_concurrency_and_failures(
    bridge: PowerShellBridge, sandbox: SandboxServer
) -> None:
    """Concurrent calls, a hang, a dropped connection and a lost shell: the slots stay consistent and the pool
    returns to its size with nothing lent out."""
    sandbox.tenant.add_fault("Get-Mailbox", "hang", 1)
    sandbox.tenant.add_fault("Get-BlockedSenderAddress", "drop_connection", 1)
    sandbox.tenant.add_fault("Revoke-MgUserSignInSession", "shell_lost", 1)
    outcomes = await asyncio.gather(
        *(bridge.get_restriction("rob@contoso.com") for _ in range(3)),
        bridge.revoke_sessions("rob@contoso.com"),
        bridge.accepted_domains(),
        return_exceptions=True,
    )
    assert any(not isinstance(o, BaseException) for o in outcomes)
    bridge.pool.check()
    await _settle(lambda: bridge.stats().in_use == 0, "nothing lent out", timeout=15)
    bridge.pool.check()
    assert bridge.stats().idle + bridge.stats().opening <= bridge.stats().size


@pytest.mark.parametrize(
    ("cmdlet", "operation"),
    [
        ("Get-BlockedSenderAddress", lambda b: b.get_restriction("rob@contoso.com")),
        ("Remove-BlockedSenderAddress", lambda b: b.remove_restriction("rob@contoso.com")),
        ("Get-MgUser", lambda b: b.get_user("rob@contoso.com")),
        ("Update-MgUser", lambda b: b.reset_password("rob@contoso.com", "Gx7!mQ2#pL9zR4wT8vY")),
    ],
)
@pytest.mark.parametrize("kind", ["session_expired", "shell_lost"])
async def test_a_lost_session_is_replaced_and_the_call_runs_once_more(
    bridge: PowerShellBridge, sandbox: SandboxServer, cmdlet: str, operation: Any, kind: str
) -> None:
    """A runspace whose sign-in lapsed (Exchange commands gone, Graph asking to connect) or whose remote
    shell vanished is closed; a fresh runspace connects again and the same call succeeds there."""
    await bridge.accepted_domains()  # a warm, connected runspace that has worked
    connects_before = len(_calls(sandbox, "Connect-ExchangeOnline"))
    sandbox.tenant.add_fault(cmdlet, kind, 1)
    with capture_logs() as logs:
        await operation(bridge)
    assert [c.outcome for c in _calls(sandbox, cmdlet)][-1].startswith("ok")
    assert len(_calls(sandbox, "Connect-ExchangeOnline")) == connects_before + 1  # the reconnect
    events = [entry["event"] for entry in logs]
    assert "runspace_session_lost" in events
    assert "runspace_reconnected" in events


async def test_a_command_still_missing_after_a_reconnect_is_a_missing_permission(
    bridge: PowerShellBridge, sandbox: SandboxServer
) -> None:
    """One reconnect, then the usual reading: a command the endpoint does not have is PermissionDenied."""
    await bridge.accepted_domains()
    connects_before = len(_calls(sandbox, "Connect-ExchangeOnline"))
    sandbox.tenant.configure({"denied_cmdlets": ["Remove-BlockedSenderAddress"]})
    with pytest.raises(e.PermissionDenied):
        await bridge.remove_restriction("rob@contoso.com")
    removes = _calls(sandbox, "Remove-BlockedSenderAddress")
    assert len(removes) == 2  # the first try and the one after reconnecting
    assert len(_calls(sandbox, "Connect-ExchangeOnline")) == connects_before + 1


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
