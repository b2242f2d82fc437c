"""The sandbox hosts several tenants: contoso (first, the default) and, in the demo seed, fabrikam.

A runspace works in the tenant its sign-ins name (Connect-ExchangeOnline -Organization,
Connect-MgGraph -TenantId) or the one its JEA configuration serves (UnblockRunner-<name>); the call
log says, for every command, which tenant it ran against and in which runspace.
"""

from __future__ import annotations

import httpx
import pytest
from pypsrp.exceptions import WSManFaultError
from pypsrp.powershell import RunspacePool

from service.sandbox import wsman as w
from service.sandbox.server import SandboxServer
from service.sandbox.tenant import (
    DEMO_RESTRICTED,
    FABRIKAM_RESTRICTED,
    FABRIKAM_TENANT_ID,
    TENANT_ID,
)
from tests.sandbox_client import APP, FABRIKAM_APP, FABRIKAM_GRAPH, GRAPH, Result, open_pool, run, wsman_for

MIA, NOAH = "mia@fabrikam.com", "noah@fabrikam.com"


def _values(result: Result, name: str) -> list[object]:
    return [result.prop(i, name) for i in range(len(result.output))]


def _runspaces_of(sandbox: SandboxServer, tenant: str) -> set[str]:
    return {c.runspace for c in sandbox.calls if c.tenant == tenant}


# --- the tenants themselves ----------------------------------------------------------------------------


def test_the_demo_seed_hosts_contoso_first_and_fabrikam(sandbox: SandboxServer) -> None:
    """contoso is first and is `sandbox.tenant`; fabrikam has two clean users, mia restricted."""
    assert list(sandbox.tenants) == ["contoso", "fabrikam"]
    assert sandbox.tenant is sandbox.tenants["contoso"] is sandbox.tenants.first
    fabrikam = sandbox.tenant_named("Fabrikam")
    assert fabrikam is sandbox.tenants["fabrikam"]
    assert fabrikam.initial_domain == "fabrikam.onmicrosoft.com"
    assert fabrikam.accepted_domains == ["fabrikam.com", "fabrikam.onmicrosoft.com"]
    assert fabrikam.tenant_id == FABRIKAM_TENANT_ID != TENANT_ID
    assert set(fabrikam.users) == {MIA, NOAH}
    assert [s.address for s in fabrikam.listed()] == list(FABRIKAM_RESTRICTED) == [MIA]
    assert fabrikam.listed()[0].reason.startswith("EmailSendingLimitExceeded;")
    for user in fabrikam.users.values():
        assert user.inbox_rules == []
        assert user.forwarding_smtp_address is None
        assert user.forwarding_address is None
        assert user.auth_methods == []
        assert not any(g.principal_id == user.object_id for g in fabrikam.oauth_grants)
    contoso_ids = {u.object_id for u in sandbox.tenant.users.values()}
    assert contoso_ids.isdisjoint(u.object_id for u in fabrikam.users.values()), "object ids are unique"
    assert {s.address for s in sandbox.tenant.listed()} == set(DEMO_RESTRICTED)  # contoso as it always was
    with pytest.raises(ValueError, match="northwind"):
        sandbox.tenant_named("northwind")


# --- connecting picks the tenant -------------------------------------------------------------------------


def test_connecting_to_fabrikam_gives_fabrikams_data(sandbox: SandboxServer) -> None:
    """Exchange by fabrikam's initial domain, Graph by its tenant id: every command reads fabrikam."""
    with open_pool(sandbox, exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH) as pool:
        senders = run(pool, "Get-BlockedSenderAddress")
        domains = run(pool, "Get-AcceptedDomain")
        mailboxes = run(pool, "Get-Mailbox")
        rules = run(pool, "Get-InboxRule", Mailbox=MIA)
        noah = run(pool, "Get-MgUser", UserId=NOAH)
        methods = run(pool, "Get-MgUserAuthenticationMethod", UserId=MIA)
        context = run(pool, "Get-MgContext")
        rob_mailbox = run(pool, "Get-Mailbox", Identity="rob@contoso.com")
        rob_user = run(pool, "Get-MgUser", UserId="rob@contoso.com")
    assert _values(senders, "SenderAddress") == [MIA]
    assert _values(domains, "DomainName") == ["fabrikam.com", "fabrikam.onmicrosoft.com"]
    assert _values(domains, "Default") == [True, False]
    assert sorted(map(str, _values(mailboxes, "UserPrincipalName"))) == [MIA, NOAH]
    assert rules.output == []
    assert rules.errors == []
    assert noah.prop(0, "UserPrincipalName") == NOAH
    types = [m["@odata.type"] for m in _values(methods, "AdditionalProperties")]  # type: ignore[index]
    assert types == ["#microsoft.graph.passwordAuthenticationMethod"]  # nothing registered
    assert context.prop(0, "TenantId") == FABRIKAM_TENANT_ID
    assert rob_mailbox.errors[0].reason == "ManagementObjectNotFoundException"
    assert rob_user.error_ids == ["Request_ResourceNotFound,Microsoft.Graph.PowerShell.Cmdlets.GetMgUser_Get"]


def test_a_change_in_fabrikam_stays_in_fabrikam(sandbox: SandboxServer) -> None:
    """Unblocking mia and resetting noah's password change fabrikam's state, and nothing of contoso's."""
    with open_pool(sandbox, exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH) as pool:
        removed = run(pool, "Remove-BlockedSenderAddress", SenderAddress=MIA)
        reset = run(pool, "Update-MgUser", UserId=NOAH, PasswordProfile={"Password": "Fab-Rikam-2468!"})
        after = run(pool, "Get-BlockedSenderAddress")
    assert removed.errors == []
    assert reset.errors == []
    assert after.output == []
    fabrikam = sandbox.tenant_named("fabrikam")
    assert fabrikam.listed() == []
    noah = fabrikam.find_user(NOAH)
    assert noah is not None
    assert noah.password_changed_at is not None
    assert {s.address for s in sandbox.tenant.listed()} == set(DEMO_RESTRICTED)
    assert all(u.password_changed_at is None for u in sandbox.tenant.users.values())


def test_a_contoso_runspace_never_sees_fabrikam(sandbox: SandboxServer) -> None:
    """Connected to contoso, fabrikam's users do not exist and its list is not contoso's."""
    with open_pool(sandbox) as pool:
        senders = run(pool, "Get-BlockedSenderAddress")
        one = run(pool, "Get-BlockedSenderAddress", SenderAddress=MIA)
        mailbox = run(pool, "Get-Mailbox", Identity=MIA)
        mailboxes = run(pool, "Get-Mailbox")
        user = run(pool, "Get-MgUser", UserId=MIA)
        remove = run(pool, "Remove-BlockedSenderAddress", SenderAddress=MIA)
    assert set(_values(senders, "SenderAddress")) == set(DEMO_RESTRICTED)
    assert one.output == []
    assert mailbox.errors[0].reason == "ManagementObjectNotFoundException"
    assert not any("fabrikam" in str(upn) for upn in _values(mailboxes, "UserPrincipalName"))
    assert "Request_ResourceNotFound" in user.error_ids[0]
    assert remove.errors[0].reason == "ManagementObjectNotFoundException"
    assert [s.address for s in sandbox.tenant_named("fabrikam").listed()] == [MIA]  # untouched
    assert {c.tenant for c in sandbox.calls} == {"contoso"}
    assert sandbox.tenant_named("fabrikam").calls == []


def test_graph_finds_fabrikam_by_tenant_id_or_any_of_its_domains(sandbox: SandboxServer) -> None:
    """Connect-MgGraph -TenantId takes the tenant id, the initial domain or an accepted domain."""
    for tenant_id in (FABRIKAM_TENANT_ID, "fabrikam.onmicrosoft.com", "FABRIKAM.COM"):
        with open_pool(sandbox, connect=False) as pool:
            connect = run(pool, "Connect-MgGraph", NoWelcome=True, **{**GRAPH, "TenantId": tenant_id})
            context = run(pool, "Get-MgContext")
            mia = run(pool, "Get-MgUser", UserId=MIA)
        assert not connect.failed, tenant_id
        assert context.prop(0, "TenantId") == FABRIKAM_TENANT_ID
        assert mia.prop(0, "UserPrincipalName") == MIA


def test_an_unknown_organization_or_tenant_is_refused(sandbox: SandboxServer) -> None:
    """As today: an organization no tenant has (or a vanity domain) is refused, and so is an unknown tenant id."""
    with open_pool(sandbox, connect=False) as pool:
        unknown = run(pool, "Connect-ExchangeOnline", **{**APP, "Organization": "northwind.onmicrosoft.com"})
        vanity = run(pool, "Connect-ExchangeOnline", **{**APP, "Organization": "fabrikam.com"})
        graph = run(pool, "Connect-MgGraph", **{**GRAPH, "TenantId": "northwind.onmicrosoft.com"})
        still = run(pool, "Get-BlockedSenderAddress")
    assert unknown.failed
    assert "northwind.onmicrosoft.com" in unknown.messages[0]
    assert vanity.failed
    assert "initial domain" in vanity.messages[0]
    assert graph.failed
    assert "northwind.onmicrosoft.com" in graph.messages[0]
    assert still.error_ids == ["CommandNotFoundException"]  # not connected to anything


def test_each_module_runs_against_the_tenant_it_was_connected_to(sandbox: SandboxServer) -> None:
    """Exchange and Graph sign in separately, as the real modules do: Exchange to contoso and Graph to
    fabrikam in one runspace is allowed, and then each command runs against its own module's tenant."""
    with open_pool(sandbox, exchange=APP, graph=FABRIKAM_GRAPH) as pool:
        senders = run(pool, "Get-BlockedSenderAddress")
        mia = run(pool, "Get-MgUser", UserId=MIA)
        rob = run(pool, "Get-MgUser", UserId="rob@contoso.com")
        run(pool, "Connect-ExchangeOnline", ShowBanner=False, **FABRIKAM_APP)  # a second connect moves Exchange
        moved = run(pool, "Get-BlockedSenderAddress")
    assert set(_values(senders, "SenderAddress")) == set(DEMO_RESTRICTED)
    assert mia.prop(0, "UserPrincipalName") == MIA
    assert "Request_ResourceNotFound" in rob.error_ids[0]
    assert _values(moved, "SenderAddress") == [MIA]
    by_command = [(c.cmdlet, c.tenant) for c in sandbox.calls]
    assert by_command == [
        ("Connect-ExchangeOnline", "contoso"),
        ("Connect-MgGraph", "fabrikam"),
        ("Get-BlockedSenderAddress", "contoso"),
        ("Get-MgUser", "fabrikam"),
        ("Get-MgUser", "fabrikam"),
        ("Connect-ExchangeOnline", "fabrikam"),
        ("Get-BlockedSenderAddress", "fabrikam"),
    ]


# --- the JEA configurations --------------------------------------------------------------------------------


def test_the_jea_configuration_of_fabrikam_serves_fabrikam(sandbox: SandboxServer) -> None:
    """UnblockRunner-fabrikam is connected to fabrikam by its startup script; UnblockRunner stays contoso's."""
    with open_pool(sandbox, connect=False, configuration="UnblockRunner-fabrikam") as pool:
        senders = run(pool, "Get-BlockedSenderAddress")
        mia = run(pool, "Get-MgUser", UserId=MIA)
        rob = run(pool, "Get-Mailbox", Identity="rob@contoso.com")
        connect = run(pool, "Connect-ExchangeOnline", **APP)
        removed = run(pool, "Remove-BlockedSenderAddress", SenderAddress=MIA)
    with open_pool(sandbox, connect=False, configuration="UnblockRunner") as pool:
        contoso = run(pool, "Get-BlockedSenderAddress")
    assert _values(senders, "SenderAddress") == [MIA]
    assert mia.prop(0, "UserPrincipalName") == MIA
    assert rob.errors[0].reason == "ManagementObjectNotFoundException"
    assert connect.error_ids == ["CommandNotFoundException"]  # the role capability has no Connect-*
    assert removed.errors == []
    assert sandbox.tenant_named("fabrikam").listed() == []
    assert set(_values(contoso, "SenderAddress")) == set(DEMO_RESTRICTED)
    jea_fabrikam = _runspaces_of(sandbox, "fabrikam")
    assert jea_fabrikam
    assert jea_fabrikam.isdisjoint(_runspaces_of(sandbox, "contoso"))


@pytest.mark.parametrize("configuration", ["UnblockRunner-northwind", "UnblockRunner-contoso", "UnblockRunner-"])
def test_an_unknown_jea_configuration_fails_as_before(sandbox: SandboxServer, configuration: str) -> None:
    """Only the other tenants have an UnblockRunner-<name>: the first tenant's is plain UnblockRunner."""
    with pytest.raises(WSManFaultError) as caught:
        RunspacePool(wsman_for(sandbox), configuration_name=configuration).open()
    assert caught.value.code == w.ERROR_INVALID_RESOURCE_URI
    assert configuration in str(caught.value.reason)
    assert sandbox.shells == 0


# --- the call log ------------------------------------------------------------------------------------------


def test_the_call_log_names_each_calls_tenant_and_runspace(sandbox: SandboxServer, control: httpx.Client) -> None:
    """One sequence across tenants; every call carries its tenant and runspace, so isolation can be checked."""
    with (
        open_pool(sandbox) as contoso,
        open_pool(sandbox, exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH) as fabrikam,
    ):
        run(contoso, "Get-BlockedSenderAddress")
        run(fabrikam, "Get-BlockedSenderAddress")
        run(contoso, "Get-MgUser", UserId="rob@contoso.com")
        run(fabrikam, "Get-MgUser", UserId=MIA)
    calls = control.get("/calls").json()
    assert [c["seq"] for c in calls] == list(range(1, len(calls) + 1))
    assert [c["tenant"] for c in calls] == ["contoso"] * 2 + ["fabrikam"] * 2 + ["contoso", "fabrikam"] * 2
    runspaces = {t: {c["runspace"] for c in calls if c["tenant"] == t} for t in ("contoso", "fabrikam")}
    assert len(runspaces["contoso"]) == len(runspaces["fabrikam"]) == 1
    assert runspaces["contoso"].isdisjoint(runspaces["fabrikam"])
    assert not any("fabrikam" in str(c["parameters"]) for c in calls if c["tenant"] == "contoso")
    assert [c.public() for c in sandbox.calls] == calls
    assert [c.seq for c in sandbox.tenant_named("fabrikam").calls] == [c["seq"] for c in calls if "fab" in c["tenant"]]
    only = control.get("/calls", params={"tenant": "fabrikam"}).json()
    assert only == [c for c in calls if c["tenant"] == "fabrikam"]
    assert control.get("/calls", params={"tenant": "fabrikam", "since": only[0]["seq"]}).json() == only[1:]
    assert control.delete("/calls", params={"tenant": "fabrikam"}).status_code == 204
    assert control.get("/calls").json() == [c for c in calls if c["tenant"] == "contoso"]


# --- the control API ---------------------------------------------------------------------------------------


def test_state_lists_the_tenants_and_shows_the_one_asked_for(control: httpx.Client) -> None:
    default = control.get("/state").json()
    fabrikam = control.get("/state", params={"tenant": "fabrikam"}).json()
    assert default["tenant"] == "contoso"
    assert fabrikam["tenant"] == "fabrikam"
    assert (
        default["tenants"]
        == fabrikam["tenants"]
        == [
            {
                "name": "contoso",
                "initial_domain": "contoso.onmicrosoft.com",
                "tenant_id": TENANT_ID,
                "accepted_domains": ["contoso.com", "contoso.onmicrosoft.com"],
            },
            {
                "name": "fabrikam",
                "initial_domain": "fabrikam.onmicrosoft.com",
                "tenant_id": FABRIKAM_TENANT_ID,
                "accepted_domains": ["fabrikam.com", "fabrikam.onmicrosoft.com"],
            },
        ]
    )
    assert {u["upn"] for u in fabrikam["users"]} == {MIA, NOAH}
    assert [s["address"] for s in fabrikam["senders"]] == [MIA]
    assert fabrikam["accepted_domains"] == ["fabrikam.com", "fabrikam.onmicrosoft.com"]
    assert {s["address"] for s in default["senders"]} == set(DEMO_RESTRICTED)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/state"),
        ("POST", "/users"),
        ("GET", f"/users/{MIA}"),
        ("POST", "/senders"),
        ("GET", "/calls"),
        ("DELETE", "/calls"),
        ("POST", "/faults"),
        ("DELETE", "/faults"),
        ("POST", "/config"),
        ("POST", "/reset"),
    ],
)
def test_an_unknown_tenant_is_404(control: httpx.Client, method: str, path: str) -> None:
    response = control.request(method, path, params={"tenant": "northwind"}, json={})
    assert response.status_code == 404
    assert "northwind" in response.json()["error"]


def test_the_control_api_arranges_fabrikam(sandbox: SandboxServer, control: httpx.Client) -> None:
    """users, senders and user reads with ?tenant=fabrikam change and read fabrikam alone."""
    assert control.post("/users", params={"tenant": "fabrikam"}, json={"upn": "lea@fabrikam.com"}).status_code == 201
    added = control.post("/senders", params={"tenant": "fabrikam"}, json={"address": NOAH})
    assert added.status_code == 201
    assert control.get(f"/users/{MIA}", params={"tenant": "fabrikam"}).json()["can_send"] is False
    assert control.get(f"/users/{MIA}").status_code == 404  # the default tenant is contoso
    with open_pool(sandbox, exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH) as pool:
        senders = run(pool, "Get-BlockedSenderAddress")
        lea = run(pool, "Get-MgUser", UserId="lea@fabrikam.com")
    with open_pool(sandbox) as pool:
        not_here = run(pool, "Get-MgUser", UserId="lea@fabrikam.com")
    assert set(_values(senders, "SenderAddress")) == {MIA, NOAH}
    assert lea.prop(0, "UserPrincipalName") == "lea@fabrikam.com"
    assert "Request_ResourceNotFound" in not_here.error_ids[0]
    assert sandbox.tenant.find_user("lea@fabrikam.com") is None


def test_faults_and_config_are_per_tenant(sandbox: SandboxServer, control: httpx.Client) -> None:
    """A fault or a knob set with ?tenant=fabrikam strikes fabrikam's commands only."""
    fault = {"cmdlet": "Get-BlockedSenderAddress", "kind": "fatal", "times": 5}
    assert control.post("/faults", params={"tenant": "fabrikam"}, json=fault).status_code == 201
    control.post("/config", params={"tenant": "fabrikam"}, json={"denied_cmdlets": ["Get-Mailbox"]})
    assert control.get("/state").json()["faults"] == []
    assert control.get("/state", params={"tenant": "fabrikam"}).json()["config"]["denied_cmdlets"] == ["Get-Mailbox"]
    with open_pool(sandbox) as pool:
        contoso_list = run(pool, "Get-BlockedSenderAddress")
        contoso_mailbox = run(pool, "Get-Mailbox", Identity="rob@contoso.com")
    with open_pool(sandbox, exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH) as pool:
        fabrikam_list = run(pool, "Get-BlockedSenderAddress")
        fabrikam_mailbox = run(pool, "Get-Mailbox", Identity=MIA)
        listed = run(pool, "Get-Command", Name=["Get-Mailbox", "Get-MgUser"])
    assert not contoso_list.failed
    assert not contoso_mailbox.failed
    assert fabrikam_list.error_ids == ["System.NullReferenceException,Get-BlockedSenderAddress"]
    assert fabrikam_mailbox.error_ids == ["CommandNotFoundException"]
    assert _values(listed, "Name") == ["Get-MgUser"]
    assert sandbox.tenant_named("fabrikam").faults[0].times == 4
    assert control.delete("/faults", params={"tenant": "fabrikam"}).status_code == 204
    assert sandbox.tenant_named("fabrikam").faults == []


def test_reset_one_tenant_or_the_whole_sandbox(sandbox: SandboxServer, control: httpx.Client) -> None:
    """?tenant=fabrikam resets fabrikam alone; without it, every tenant and the call log, as before."""
    with open_pool(sandbox, exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH) as pool:
        run(pool, "Remove-BlockedSenderAddress", SenderAddress=MIA)
    control.post("/senders", json={"address": "ann@contoso.com"})
    logged = len(sandbox.calls)

    assert control.post("/reset", params={"tenant": "fabrikam"}, json={"seed": "demo"}).json() == {
        "seed": "demo",
        "tenant": "fabrikam",
    }
    assert [s.address for s in sandbox.tenant_named("fabrikam").listed()] == [MIA]
    assert sandbox.tenant.lookup("ann@contoso.com") is not None  # contoso untouched
    assert len(sandbox.calls) == logged  # the log is the sandbox's

    assert control.post("/reset", params={"tenant": "fabrikam"}, json={"seed": "empty"}).status_code == 200
    assert control.get("/state", params={"tenant": "fabrikam"}).json()["users"] == []
    contoso = sandbox.tenant
    assert control.post("/reset", json={"seed": "demo"}).json() == {"seed": "demo"}
    assert sandbox.tenant is contoso  # reset in place: `sandbox.tenant` stays valid
    assert sandbox.calls == []
    assert sandbox.tenant.lookup("ann@contoso.com") is None
    assert {u["upn"] for u in control.get("/state", params={"tenant": "fabrikam"}).json()["users"]} == {MIA, NOAH}


def test_the_empty_seed_has_contoso_alone(sandbox: SandboxServer, control: httpx.Client) -> None:
    """--seed empty (or a reset to it) has no fabrikam: its JEA configuration and ?tenant= are unknown."""
    sandbox.tenant.reset("empty")
    assert [t["name"] for t in control.get("/state").json()["tenants"]] == ["contoso"]
    assert control.get("/state", params={"tenant": "fabrikam"}).status_code == 404
    with pytest.raises(WSManFaultError):
        RunspacePool(wsman_for(sandbox), configuration_name="UnblockRunner-fabrikam").open()
    with open_pool(sandbox, connect=False) as pool:
        assert run(pool, "Connect-ExchangeOnline", **FABRIKAM_APP).failed
    sandbox.tenants.reset("demo")
    assert list(sandbox.tenants) == ["contoso", "fabrikam"]
