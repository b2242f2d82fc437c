"""Fault injection, latency, the call log and the control API."""

from __future__ import annotations

import time

import httpx
import pytest
import requests
from pypsrp.powershell import PowerShell

from service.sandbox.control import LoopbackOnly, build_control_app
from service.sandbox.server import SandboxServer
from service.sandbox.shells import ShellRegistry
from service.sandbox.tenant import DEMO_RESTRICTED, Tenant
from tests.sandbox_client import open_pool, run


def test_transient_fault_fails_the_pipeline_once(sandbox: SandboxServer, control: httpx.Client) -> None:
    """kind=transient: a terminating 503-style error in each family's shape, then the command works again."""
    control.post("/faults", json={"cmdlet": "Get-BlockedSenderAddress", "kind": "transient", "times": 1})
    control.post("/faults", json={"cmdlet": "Get-MgUser", "kind": "transient", "times": 1})
    with open_pool(sandbox) as pool:
        first = run(pool, "Get-BlockedSenderAddress")
        second = run(pool, "Get-BlockedSenderAddress")
        graph = run(pool, "Get-MgUser", UserId="rob@contoso.com")
    assert first.failed
    assert first.error_ids[0].endswith("],Write-ErrorMessage")
    assert "(503) Server Unavailable" in first.messages[0]
    assert not second.failed
    assert len(second.output) == len(DEMO_RESTRICTED)
    assert graph.error_ids == ["ServiceUnavailable,Microsoft.Graph.PowerShell.Cmdlets.GetMgUser_Get"]


def test_throttled_fault_in_each_family(sandbox: SandboxServer, control: httpx.Client) -> None:
    """kind=throttled: Exchange slows the command down with a "Micro delay applied" WARNING and still runs
    it; Graph answers 429 TooManyRequests with Retry-After in the error details and does not run it."""
    control.post("/config", json={"throttle_retry_after_s": 2})
    control.post("/faults", json={"cmdlet": "Get-AcceptedDomain", "kind": "throttled", "times": 1})
    control.post("/faults", json={"cmdlet": "Revoke-MgUserSignInSession", "kind": "throttled", "times": 1})
    with open_pool(sandbox) as pool:
        exchange = run(pool, "Get-AcceptedDomain")
        graph = run(pool, "Revoke-MgUserSignInSession", UserId="rob@contoso.com")
    assert not exchange.failed
    assert exchange.errors == []
    assert len(exchange.output) == 2  # it ran
    assert str(exchange.warnings[0].message).startswith("Micro delay applied.")
    assert graph.error_ids == ["TooManyRequests,Microsoft.Graph.PowerShell.Cmdlets.RevokeMgUserSignInSession_Revoke"]
    assert "Retry-After : 2" in str(graph.errors[0].details_message)
    user = sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.sessions_revoked_at is None


def test_fatal_fault(sandbox: SandboxServer, control: httpx.Client) -> None:
    """kind=fatal: an unexpected exception fails the pipeline."""
    control.post("/faults", json={"cmdlet": "Get-MgUser", "kind": "fatal", "times": 1})
    with open_pool(sandbox) as pool:
        result = run(pool, "Get-MgUser", UserId="rob@contoso.com")
    assert result.failed
    assert result.error_ids == ["System.NullReferenceException,Get-MgUser"]


def test_drop_connection_breaks_the_receive_after_the_command_ran(
    sandbox: SandboxServer, control: httpx.Client
) -> None:
    """kind=drop_connection: the command runs, then the HTTP connection closes mid-Receive."""
    control.post("/faults", json={"cmdlet": "Remove-BlockedSenderAddress", "kind": "drop_connection", "times": 1})
    with open_pool(sandbox) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Remove-BlockedSenderAddress").add_parameter("SenderAddress", "rob@contoso.com")
        with pytest.raises(requests.exceptions.RequestException):  # ChunkedEncodingError: IncompleteRead
            ps.invoke()
    assert sandbox.tenant.lookup("rob@contoso.com") is None  # it did run
    assert sandbox.tenant.calls[-1].outcome == "ok (connection dropped)"


def test_hang_fault_never_answers_until_stopped(sandbox: SandboxServer, control: httpx.Client) -> None:
    """kind=hang: the command never completes; the client's own timeout is what ends the wait."""
    control.post("/faults", json={"cmdlet": "Get-Mailbox", "kind": "hang", "times": 1})
    with open_pool(sandbox) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Mailbox").add_parameter("Identity", "rob@contoso.com")
        ps.begin_invoke()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            ps.poll_invoke(timeout=1)
        assert ps.state == 1  # still Running
        ps.stop()
        assert len(run(pool, "Get-Mailbox", Identity="rob@contoso.com").output) == 1
    assert sandbox.tenant.calls[-2].outcome == "fault: hang"


def test_faults_are_used_up_and_wildcards_match_any_command(sandbox: SandboxServer, control: httpx.Client) -> None:
    """times counts matching commands; "*" matches every command."""
    with open_pool(sandbox) as pool:
        control.post("/faults", json={"cmdlet": "*", "kind": "transient", "times": 2})
        outcomes = [run(pool, name).error_ids for name in ("Get-AcceptedDomain", "Get-Mailbox", "Get-AcceptedDomain")]
    assert outcomes[0][0].endswith("],Write-ErrorMessage")
    assert outcomes[1][0].endswith("],Write-ErrorMessage")
    assert outcomes[2] == []  # used up
    assert control.get("/state").json()["faults"] == []


def test_latency_is_added_per_command(sandbox: SandboxServer, control: httpx.Client) -> None:
    """latency_ms delays a command by name, "*" delays all the others."""
    control.post("/config", json={"latency_ms": {"Get-AcceptedDomain": 300, "*": 0}})
    with open_pool(sandbox) as pool:
        started = time.monotonic()
        run(pool, "Get-AcceptedDomain")
        slow = time.monotonic() - started
        started = time.monotonic()
        run(pool, "Get-BlockedSenderAddress")
        fast = time.monotonic() - started
    assert slow >= 0.3
    assert fast < 0.25


def test_the_call_log_records_every_command_in_order(sandbox: SandboxServer, control: httpx.Client) -> None:
    """Every command, its bound parameters (secrets as SHA-256 only), its runspace and its outcome."""
    with open_pool(sandbox) as pool:
        run(pool, "Update-MgUser", UserId="ann@contoso.com", PasswordProfile={"Password": "Zz-Secret-9876!"})
        run(pool, "No-Such-Thing")
    calls = control.get("/calls").json()
    names = [c["cmdlet"] for c in calls]
    assert names == ["Connect-ExchangeOnline", "Connect-MgGraph", "Update-MgUser", "No-Such-Thing"]
    assert [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)
    assert "Zz-Secret-9876!" not in str(calls)
    assert calls[2]["parameters"]["PasswordProfile"]["Password"].keys() == {"sha256"}
    assert calls[3]["outcome"] == "failed: CommandNotFoundException"
    assert calls[0]["runspace"].endswith("/1")
    assert control.get("/calls", params={"since": calls[1]["seq"]}).json() == calls[2:]


def test_control_api_arranges_the_tenant(sandbox: SandboxServer, control: httpx.Client) -> None:
    """state, users, senders and reset behave as the contract says."""
    state = control.get("/state").json()
    assert {u["upn"] for u in state["users"]} == {
        f"{n}@contoso.com" for n in ("rob", "laura", "julia", "ann", "ben", "victor")
    }
    assert {s["address"] for s in state["senders"]} == set(DEMO_RESTRICTED)
    assert state["shells"] == 0

    assert control.post("/users", json={"upn": "kim@contoso.com", "on_premises_sync": True}).status_code == 201
    assert control.post("/users", json={"upn": "kim@contoso.com"}).status_code == 409
    user = control.get("/users/kim@contoso.com").json()
    assert user["upn"] == "kim@contoso.com"
    assert set(user) >= {
        "password_sha256",
        "password_changed_at",
        "force_change_password",
        "sessions_revoked_at",
        "inbox_rules",
        "forwarding_smtp_address",
    }
    assert control.get("/users/nobody@contoso.com").status_code == 404

    assert control.post("/senders", json={"address": "kim@contoso.com", "temporary_block": True}).status_code == 201
    assert len(control.get("/state").json()["senders"]) == len(DEMO_RESTRICTED) + 1

    assert control.post("/reset", json={"seed": "empty"}).json() == {"seed": "empty"}
    assert control.get("/state").json()["users"] == []
    control.post("/reset", json={"seed": "demo"})
    assert len(control.get("/state").json()["users"]) == 6


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/faults", {"cmdlet": "x", "kind": "explode", "times": 1}),
        ("/faults", {"cmdlet": "x", "kind": "hang", "times": 0}),
        ("/faults", {"kind": "hang"}),
        ("/config", {"latency_ms": {"*": -5}}),
        ("/config", {"unblock_limit_per_day": "many"}),
        ("/users", {"upn": "not-an-address"}),
        ("/senders", {"reason": "x"}),
        ("/reset", {"seed": "galaxy"}),
    ],
)
def test_control_api_refuses_bad_input(control: httpx.Client, path: str, body: dict[str, object]) -> None:
    """Bad control requests are 400 with a message, and change nothing."""
    response = control.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("10.1.2.3", 403),
        ("::ffff:10.1.2.3", 403),
        ("fe80::1", 403),
        ("not-an-address", 403),
        ("127.0.0.1", 200),
        ("127.0.0.2", 200),
        ("::1", 200),
        ("::ffff:127.0.0.1", 200),
    ],
)
async def test_control_api_is_loopback_only(host: str, status: int) -> None:
    """A client from another machine is refused 403; every loopback form is let in."""
    tenant = Tenant("demo")
    app = LoopbackOnly(build_control_app(tenant, ShellRegistry(tenant)))
    transport = httpx.ASGITransport(app=app, client=(host, 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        response = await client.get("/_sandbox/state")
    assert response.status_code == status


FORWARDED_LOOPBACK = [
    ("x-forwarded-for", "127.0.0.1"),
    ("x-forwarded-proto", "http"),
    ("forwarded", "for=127.0.0.1"),
    ("x-real-ip", "127.0.0.1"),
]


async def _control_state(app: object, peer: str) -> int:
    """GET /_sandbox/state through ``app`` as a connection from ``peer`` that claims to come from loopback."""
    transport = httpx.ASGITransport(app=app, client=(peer, 5555))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as client:
        response = await client.get("/_sandbox/state", headers=dict(FORWARDED_LOOPBACK))
    return response.status_code


async def test_forwarded_headers_do_not_make_a_remote_peer_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox's server, as uvicorn assembles it, judges the socket peer even if every proxy is trusted.

    FORWARDED_ALLOW_IPS=* is what would let uvicorn's proxy-header middleware rewrite the client
    from X-Forwarded-For; the sandbox turns proxy headers off, so a remote peer claiming
    127.0.0.1 is still refused, and a loopback peer is still let in.
    """
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    server = SandboxServer(port=0)
    config = server._config()
    assert config.proxy_headers is False
    config.load()
    assert await _control_state(config.loaded_app, "203.0.113.9") == 403
    assert await _control_state(config.loaded_app, "10.1.2.3") == 403
    assert await _control_state(config.loaded_app, "127.0.0.1") == 200
    assert await _control_state(server.app.control, "203.0.113.9") == 403
