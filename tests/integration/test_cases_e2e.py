"""Unblock cases end to end: the API, the worker, the bridge and the sandbox tenant, for real."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.domain.tenancy import TenantDomains
from service.sandbox.server import SandboxServer
from tests.stack import Stack, running_stack

PROBLEM = "application/problem+json"
CONNECTS = ("Connect-ExchangeOnline", "Connect-MgGraph")


@pytest.fixture
async def stack(database_url: str, sandbox: SandboxServer) -> AsyncIterator[Stack]:
    async with running_stack(database_url, sandbox) as s:
        yield s


def _states(events: list[dict[str, Any]]) -> list[str]:
    path = [events[0]["to_state"]]
    path += [e["to_state"] for e in events if e["type"] == "state.changed"]
    return path


async def test_a_restricted_mailbox_is_unblocked(stack: Stack) -> None:
    """received → … → resolved/unblocked; the reset strictly before the one Remove-BlockedSenderAddress."""
    created = await stack.open("ROB@contoso.com", ticket_ref="INC0012345", requested_by="servicedesk")
    assert created["mailbox"] == "rob@contoso.com"
    # Created held by the worker in this process, with its reset started in the same transaction.
    assert created["state"] == "securing_account"
    assert (created["steps"][0]["name"], created["steps"][0]["status"]) == ("reset_password", "running")
    case = await stack.wait_for(created["id"])
    assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
    assert case["restriction"]["limit_type"] == "External"
    assert case["restriction"]["external_recipients_today"] == 480
    assert [(s["name"], s["status"]) for s in case["steps"]] == [
        (name, "succeeded")
        for name in (
            "reset_password",
            "revoke_sessions",
            "investigate",
            "disable_inbox_rules",
            "remove_forwarding",
            "check_restriction",
            "unblock",
            "verify",
            "propagation",
        )
    ]
    assert case["credential"]["available"] is True
    assert case["sending_restored_by"] is not None
    assert _states(await stack.events(case["id"])) == [
        "received",
        "securing_account",
        "investigating",
        "containing",
        "checking_restriction",
        "unblocking",
        "verifying",
        "awaiting_propagation",
        "resolved",
    ]
    calls = stack.calls()
    reset = [c["seq"] for c in calls if c["cmdlet"] == "Update-MgUser"]
    removes = [c for c in calls if c["cmdlet"] == "Remove-BlockedSenderAddress"]
    assert len(removes) == 1
    assert removes[0]["outcome"] == "ok"
    assert reset
    assert max(reset) < removes[0]["seq"]
    assert stack.sandbox.tenant.lookup("rob@contoso.com") is None
    user = stack.sandbox.tenant.find_user("rob@contoso.com")
    assert user is not None
    assert user.force_change_password is True
    assert user.sessions_revoked_at is not None


async def test_a_mailbox_that_is_not_restricted(stack: Stack) -> None:
    """Secured, looked up, not listed: resolved as not_restricted, and nothing removed."""
    case = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
    assert (case["state"], case["outcome"]) == ("resolved", "not_restricted")
    assert [s["status"] for s in case["steps"]][-3:] == ["skipped"] * 3
    assert stack.calls("Remove-BlockedSenderAddress") == []
    assert case["credential"]["available"] is True  # the password was still reset, as Microsoft says


async def test_an_unknown_mailbox_fails(stack: Stack) -> None:
    """A user the tenant does not have: failed with mailbox_not_found; no password left to reveal."""
    case = await stack.wait_for((await stack.open("zed@contoso.com"))["id"])
    assert (case["state"], case["outcome"]) == ("failed", "failed")
    assert case["last_error"]["code"] == "mailbox_not_found"
    assert case["credential"] is None
    response = await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
    assert response.status_code == 404
    assert response.json()["type"] == "/problems/credential_not_found"


async def test_the_unblock_limit_escalates(stack: Stack) -> None:
    """The tenant refuses the unblock: escalated, with what a person must do."""
    stack.sandbox.tenant.configure({"unblock_limit_per_day": 0})
    case = await stack.wait_for((await stack.open("laura@contoso.com"))["id"])
    assert (case["state"], case["outcome"]) == ("escalated", "escalated")
    assert case["last_error"]["code"] == "unblock_limit_exceeded"
    assert "Microsoft support" in case["last_error"]["message"]
    assert case["last_error"]["retryable"] is False


async def test_a_reblock_during_the_wait_escalates(stack: Stack) -> None:
    """Still compromised: back on the list once it can send; the re-check escalates the case."""
    stack.sandbox.tenant.configure({"reblock_on_unblock": ["julia@contoso.com"], "send_restore_delay_s": 0.4})
    case = await stack.wait_for((await stack.open("julia@contoso.com"))["id"])
    assert (case["state"], case["outcome"]) == ("escalated", "escalated")
    assert case["last_error"]["code"] == "reblocked"
    assert case["steps"][-1]["status"] == "failed"


async def test_transient_faults_on_every_step_are_retried_to_success(stack: Stack) -> None:
    """One transient fault on each command the case runs (Graph's as a 429 with Retry-After), and an
    Exchange micro delay: every step retries and the case resolves, the delayed command is not repeated."""
    for cmdlet in ("Update-MgUser", "Get-BlockedSenderAddress", "Remove-BlockedSenderAddress"):
        stack.sandbox.tenant.add_fault(cmdlet, "transient", 1)
    stack.sandbox.tenant.configure({"throttle_retry_after_s": 1})
    stack.sandbox.tenant.add_fault("Revoke-MgUserSignInSession", "throttled", 1)
    stack.sandbox.tenant.add_fault("Get-BlockedSenderAddress", "throttled", 1)  # taken by the retry: a micro delay
    case = await stack.wait_for((await stack.open("rob@contoso.com"))["id"], timeout=30)
    assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
    attempts = {s["name"]: s["attempts"] for s in case["steps"]}
    assert attempts["reset_password"] == 2
    assert attempts["revoke_sessions"] == 2
    assert attempts["check_restriction"] >= 2
    assert attempts["unblock"] == 2
    assert len([c for c in stack.calls("Remove-BlockedSenderAddress") if c["outcome"] == "ok"]) == 1
    resets = stack.calls("Update-MgUser")
    assert len({r["parameters"]["PasswordProfile"]["Password"]["sha256"] for r in resets}) == 1  # same password
    kinds = [e["type"] for e in await stack.events(case["id"])]
    assert kinds.count("step.retry_scheduled") >= 4


@pytest.mark.parametrize("kind", ["session_expired", "shell_lost"])
async def test_a_case_whose_session_is_lost_resolves_after_a_reconnect(stack: Stack, kind: str) -> None:
    """The runspace loses its sign-in (or its remote shell) in the middle of the case, at a Graph and at an
    Exchange command: the bridge reconnects and runs the command again, and no person is needed."""
    await stack.wait_for((await stack.open("laura@contoso.com"))["id"])  # warm, connected runspaces
    connects_before = len(stack.calls("Connect-ExchangeOnline"))
    stack.sandbox.tenant.add_fault("Revoke-MgUserSignInSession", kind, 1)
    stack.sandbox.tenant.add_fault("Remove-BlockedSenderAddress", kind, 1)
    case = await stack.wait_for((await stack.open("rob@contoso.com"))["id"], timeout=30)
    assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
    assert case["last_error"] is None
    calls = stack.calls()
    assert len([c for c in calls if c["cmdlet"] == "Connect-ExchangeOnline"]) >= connects_before + 2  # reconnects
    assert [c["outcome"] for c in calls if c["cmdlet"] == "Remove-BlockedSenderAddress"][-2:] == [
        f"fault: {kind}" if kind == "shell_lost" else "failed: CommandNotFoundException",
        "ok",
    ]


async def test_approval(database_url: str, sandbox: SandboxServer) -> None:
    """With UNBLOCK_REQUIRE_APPROVAL the case waits; approve (cases:approve) lets it finish."""
    async with running_stack(database_url, sandbox, require_approval=True) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        waiting = await stack.wait_for(case_id, "awaiting_approval")
        assert waiting["next_action_at"] is None
        assert stack.calls("Remove-BlockedSenderAddress") == []
        approved = await stack.approve(case_id)
        assert approved.status_code == 200
        assert approved.json()["state"] == "unblocking"
        case = await stack.wait_for(case_id)
        assert case["outcome"] == "unblocked"
        again = await stack.approve(case_id)
        assert again.status_code == 409
        assert again.headers["content-type"] == PROBLEM
        assert again.json()["allowed_states"] == ["awaiting_approval"]
        approvals = [e for e in await stack.events(case_id) if e["type"] == "case.approved"]
        assert approvals[0]["actor"] == "approver"


async def test_cancel(database_url: str, sandbox: SandboxServer) -> None:
    """Cancel before the unblock: cancelled, nothing removed; after the unblock started: 409."""
    async with running_stack(database_url, sandbox, require_approval=True) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await stack.wait_for(case_id, "awaiting_approval")
        cancelled = await stack.client.post(f"/v1/cases/{case_id}/cancel")
        assert cancelled.status_code == 200
        assert (cancelled.json()["state"], cancelled.json()["outcome"]) == ("cancelled", "cancelled")
        assert stack.calls("Remove-BlockedSenderAddress") == []
        later = (await stack.open("laura@contoso.com"))["id"]
        await stack.wait_for(later, "awaiting_approval")
        assert (await stack.approve(later)).status_code == 200
        await stack.wait_for(later, {"verifying", "awaiting_propagation", "resolved"})
        refused = await stack.client.post(f"/v1/cases/{later}/cancel")
        assert refused.status_code == 409
        assert refused.json()["type"] == "/problems/invalid_transition"


async def test_retry_resumes_a_failed_case(stack: Stack) -> None:
    """A permanent failure, fixed in the tenant, then retried: the case resumes and finishes."""
    stack.sandbox.tenant.configure({"denied_cmdlets": ["Remove-BlockedSenderAddress"]})
    case_id = (await stack.open("rob@contoso.com"))["id"]
    escalated = await stack.wait_for(case_id)
    assert escalated["last_error"]["code"] == "permission_denied"
    stack.sandbox.tenant.configure({"denied_cmdlets": []})
    response = await stack.client.post(f"/v1/cases/{case_id}/retry")
    assert response.status_code == 200
    assert response.json()["state"] == "unblocking"
    case = await stack.wait_for(case_id)
    assert case["outcome"] == "unblocked"
    assert [s["attempts"] for s in case["steps"]][:2] == [1, 1]  # the reset was not repeated
    assert (await stack.client.post(f"/v1/cases/{case_id}/retry")).status_code == 409


async def test_duplicate_and_idempotent_creates(stack: Stack) -> None:
    """An open case for the mailbox: 409 naming it. Same Idempotency-Key: replay, or 422 with another body."""
    body = {"mailbox": "rob@contoso.com", "ticket_ref": "INC1"}
    first = await stack.client.post("/v1/cases", json=body, headers={"Idempotency-Key": "req-1"})
    assert first.status_code == 201
    assert first.headers["location"] == f"/v1/cases/{first.json()['id']}"
    replay = await stack.client.post("/v1/cases", json=body, headers={"Idempotency-Key": "req-1"})
    assert replay.status_code == 201
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    other = await stack.client.post(
        "/v1/cases", json={**body, "ticket_ref": "INC2"}, headers={"Idempotency-Key": "req-1"}
    )
    assert other.status_code == 422
    assert other.json()["type"] == "/problems/idempotency_key_reused"
    duplicate = await stack.client.post("/v1/cases", json={"mailbox": "Rob@Contoso.com"})
    assert duplicate.status_code == 409
    assert duplicate.json()["case_id"] == first.json()["id"]
    # The tenant's accepted domains change (as seen through the cache): a new create is refused,
    # but a client retrying after a lost response still gets its original answer.
    saved = stack.runtime.tenant_cache
    stack.runtime.tenant_cache = (time.monotonic(), (TenantDomains("default", True, ("fabrikam.com",)),))
    try:
        retried = await stack.client.post("/v1/cases", json=body, headers={"Idempotency-Key": "req-1"})
        assert retried.status_code == 201, retried.text
        assert retried.json() == first.json()
        fresh = await stack.client.post("/v1/cases", json=body, headers={"Idempotency-Key": "req-2"})
        assert fresh.status_code == 422
        assert fresh.json()["type"] == "/problems/foreign_mailbox"
    finally:
        stack.runtime.tenant_cache = saved
    await stack.wait_for(first.json()["id"])


async def test_concurrent_creates_for_one_mailbox_make_one_case(database_url: str, sandbox: SandboxServer) -> None:
    """Ten simultaneous creates for one mailbox: one 201, nine 409 (no worker, so the case stays open)."""
    async with running_stack(database_url, sandbox, worker=False) as stack:
        responses = await asyncio.gather(
            *(stack.client.post("/v1/cases", json={"mailbox": "ben@contoso.com"}) for _ in range(10))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] + [409] * 9
        listed = (await stack.client.get("/v1/cases", params={"mailbox": "ben@contoso.com"})).json()["items"]
        assert len(listed) == 1


@pytest.mark.parametrize(
    ("mailbox", "code"),
    [
        ("not-an-address", "invalid_input"),
        ("rob@fabrikam.com", "foreign_mailbox"),
        ("rob@contoso.com; Remove-Mailbox", "invalid_input"),
        ("*@contoso.com", "invalid_input"),
    ],
)
async def test_bad_and_foreign_mailboxes_are_422(stack: Stack, mailbox: str, code: str) -> None:
    """A bad address or one outside the tenant's accepted domains is refused; nothing reaches the tenant."""
    before = len(stack.calls())
    response = await stack.client.post("/v1/cases", json={"mailbox": mailbox})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"] == f"/problems/{code}"
    reached = [c for c in stack.calls()[before:] if c["cmdlet"] not in ("Get-AcceptedDomain", *CONNECTS)]
    assert reached == []


async def test_list_filters_and_pages(stack: Stack) -> None:
    """Filters by state, mailbox, ticket and open; cursor pages through newest first."""
    ids = []
    for mailbox in ("ann@contoso.com", "ben@contoso.com", "zed@contoso.com"):
        ids.append((await stack.open(mailbox, ticket_ref=f"T-{mailbox[:3]}"))["id"])
    for case_id in ids:
        await stack.wait_for(case_id)
    page = (await stack.client.get("/v1/cases", params={"limit": 2})).json()
    assert [c["id"] for c in page["items"]] == [ids[2], ids[1]]
    rest = (await stack.client.get("/v1/cases", params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [c["id"] for c in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None
    failed = (await stack.client.get("/v1/cases", params={"state": "failed"})).json()["items"]
    assert [c["mailbox"] for c in failed] == ["zed@contoso.com"]
    by_ticket = (await stack.client.get("/v1/cases", params={"ticket_ref": "T-ann"})).json()["items"]
    assert [c["id"] for c in by_ticket] == [ids[0]]
    assert (await stack.client.get("/v1/cases", params={"open": "true"})).json()["items"] == []
    closed = (await stack.client.get("/v1/cases", params={"open": "false"})).json()["items"]
    assert [c["id"] for c in closed] == [ids[2], ids[1], ids[0]]
    resolved = (await stack.client.get("/v1/cases", params={"state": "resolved", "open": "false"})).json()["items"]
    assert {c["mailbox"] for c in resolved} == {"ann@contoso.com", "ben@contoso.com"}
    assert (await stack.client.get("/v1/cases", params={"state": "resolved", "open": "true"})).json()["items"] == []
    bad = await stack.client.get("/v1/cases", params={"state": "sleeping"})
    assert bad.status_code == 422
    assert (await stack.client.get("/v1/cases", params={"cursor": "garbage!"})).status_code == 422
    assert (await stack.client.get("/v1/cases", params={"limit": 500})).status_code == 422


async def test_the_timeline_names_its_actors(stack: Stack) -> None:
    """Events oldest first, each with its actor: the key's name, or the worker."""
    case = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
    events = await stack.events(case["id"])
    assert events[0]["type"] == "case.created"
    assert events[0]["actor"] == "servicedesk"
    assert {e["actor"] for e in events[1:]} == {"worker"}
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert (await stack.client.get("/v1/cases/00000000000000000000000000/events")).status_code == 404


async def test_the_password_is_revealed_once(stack: Stack) -> None:
    """The temporary password the tenant got is revealed once, then 410; the case shows when."""
    case = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
    first = await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
    assert first.status_code == 200
    assert first.headers["cache-control"] == "no-store"
    password = first.json()["password"]
    user = stack.sandbox.tenant.find_user("ann@contoso.com")
    assert user is not None
    assert user.password_sha256 == hashlib.sha256(password.encode()).hexdigest()
    second = await stack.client.post(f"/v1/cases/{case['id']}/credential/reveal")
    assert second.status_code == 410
    after = await stack.get(case["id"])
    assert after["credential"]["available"] is False
    assert after["credential"]["revealed_at"] is not None
    revealed = [e for e in await stack.events(case["id"]) if e["type"] == "credential.revealed"]
    assert revealed[0]["actor"] == "servicedesk"
    assert password not in str(await stack.events(case["id"]))


async def test_keys_and_scopes(stack: Stack) -> None:
    """No key: 401 with WWW-Authenticate; a key without the scope: 403 naming it."""
    from tests.stack import make_key

    anonymous = await stack.client.get("/v1/cases", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    reader = await make_key(stack.runtime, "dashboard", ["cases:read"])
    refused = await stack.client.post(
        "/v1/cases", json={"mailbox": "rob@contoso.com"}, headers={"Authorization": f"Bearer {reader}"}
    )
    assert refused.status_code == 403
    assert refused.json()["required_scope"] == "cases:write"
    bogus = await stack.client.get("/v1/cases", headers={"Authorization": "Bearer ubk_aaaaaaaa_" + "x" * 43})
    assert bogus.status_code == 401


async def test_four_eyes_the_opener_cannot_approve(database_url: str, sandbox: SandboxServer) -> None:
    """With approval required, the key that opened a case cannot approve it (409 approver_is_requester);
    another key can. UNBLOCK_APPROVAL_ALLOW_SELF=true restores self-approval for small teams."""
    from tests.stack import make_key

    async with running_stack(database_url, sandbox, require_approval=True) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await stack.wait_for(case_id, "awaiting_approval")
        refused = await stack.client.post(f"/v1/cases/{case_id}/approve")
        assert refused.status_code == 409
        assert refused.json()["type"] == "/problems/approver_is_requester"
        other = await make_key(stack.runtime, "second-person", ["cases:approve", "cases:read"])
        approved = await stack.client.post(f"/v1/cases/{case_id}/approve", headers={"Authorization": f"Bearer {other}"})
        assert approved.status_code == 200, approved.text
        assert (await stack.wait_for(case_id))["outcome"] == "unblocked"
    async with running_stack(database_url, sandbox, require_approval=True, approval_allow_self=True) as stack:
        case_id = (await stack.open("laura@contoso.com"))["id"]
        await stack.wait_for(case_id, "awaiting_approval")
        assert (await stack.client.post(f"/v1/cases/{case_id}/approve")).status_code == 200


async def test_four_eyes_compares_old_cases_by_name(database_url: str, sandbox: SandboxServer) -> None:
    """Cases opened before identities were recorded (no kind/id) compare the approver by name."""
    from sqlalchemy import update

    from service.persistence.models import Case

    async with running_stack(database_url, sandbox, require_approval=True) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await stack.wait_for(case_id, "awaiting_approval")
        async with stack.runtime.db.write() as session:
            await session.exec(update(Case).where(Case.id == case_id).values(created_by_kind=None, created_by_id=None))  # type: ignore[call-overload]
        assert (await stack.client.post(f"/v1/cases/{case_id}/approve")).status_code == 409
