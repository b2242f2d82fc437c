"""Containment before unblock, end to end: the API, the worker, the bridge and the sandbox tenant.

With default settings (UNBLOCK_CONTAINMENT=enforce): rob's attacker rules are disabled and his
outside forwarding cleared before the one Remove-BlockedSenderAddress, his own rule left alone;
victor's new sign-in method and mail consent stop his case for a second person before any unblock;
a clean account has nothing suspicious; under ``report`` nothing at the mailbox changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from service.sandbox.server import SandboxServer
from tests.stack import Stack, running_stack

CONTAINMENT_COMMANDS = ("Disable-InboxRule", "Set-Mailbox", "Clear-UnblockForwarding")


def _by_kind(case: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in case["findings"] if f["kind"] == kind]


def _rule(case: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in _by_kind(case, "inbox_rule") if f["details"]["name"] == name)


def _enabled(stack: Stack, upn: str) -> dict[str, bool]:
    user = stack.sandbox.tenant.find_user(upn)
    assert user is not None
    return {r.name: r.enabled for r in user.inbox_rules}


def _forwarding(stack: Stack, upn: str) -> str | None:
    user = stack.sandbox.tenant.find_user(upn)
    assert user is not None
    return user.forwarding_smtp_address


async def test_robs_attacker_rules_and_forwarding_go_before_the_unblock(
    database_url: str, sandbox: SandboxServer
) -> None:
    async with running_stack(database_url, sandbox) as stack:
        case = await stack.wait_for((await stack.open("rob@contoso.com"))["id"])
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        assert case["actions"]["investigate"] is True
        assert _rule(case, "invoice")["action"] == "disabled"
        assert _rule(case, ".")["action"] == "disabled"
        assert "sends mail outside the tenant to payments@fabrikam.example" in _rule(case, "invoice")["reasons"]
        team = _rule(case, "Team updates")
        assert (team["suspicious"], team["action"]) == (False, "none")
        (forwarding,) = _by_kind(case, "forwarding")
        assert forwarding["action"] == "cleared"
        assert "collector@fabrikam.example" in forwarding["summary"]
        assert not [f for f in case["findings"] if f["action"] == "review"]
        # At the tenant: the two rules are off, the team rule is on, forwarding is gone...
        rules = _enabled(stack, "rob@contoso.com")
        assert (rules["invoice"], rules["."], rules["Team updates"]) == (False, False, True)
        assert _forwarding(stack, "rob@contoso.com") is None
        # ... and all of it happened before the one Remove-BlockedSenderAddress.
        calls = stack.calls()
        removes = [c["seq"] for c in calls if c["cmdlet"] == "Remove-BlockedSenderAddress"]
        contained = [c["seq"] for c in calls if c["cmdlet"] in CONTAINMENT_COMMANDS]
        assert len(removes) == 1
        assert len([c for c in calls if c["cmdlet"] == "Disable-InboxRule"]) == 2
        assert contained
        assert max(contained) < removes[0]
        # The timeline says what was found, and the states passed through investigation and containment.
        events = await stack.events(case["id"])
        assert any(e["type"] == "findings.recorded" for e in events)
        states = [e["to_state"] for e in events if e["type"] == "state.changed"]
        assert states[:4] == ["securing_account", "investigating", "containing", "checking_restriction"]


async def test_victor_stops_for_a_second_person_before_any_unblock(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("victor@contoso.com"))["id"]
        waiting = await stack.wait_for(case_id, "awaiting_approval")
        review = [f for f in waiting["findings"] if f["action"] == "review"]
        assert {f["kind"] for f in review} == {"auth_method", "oauth_grant"}
        method = next(f for f in review if f["kind"] == "auth_method")
        consent = next(f for f in review if f["kind"] == "oauth_grant")
        assert "microsoftAuthenticator" in method["summary"]
        assert "Mail.ReadWrite" in consent["summary"]
        change = [e for e in await stack.events(case_id) if e["type"] == "state.changed"][-1]
        assert change["to_state"] == "awaiting_approval"
        assert method["summary"] in change["detail"]["reason"]
        assert consent["summary"] in change["detail"]["reason"]
        assert stack.calls("Remove-BlockedSenderAddress") == []
        # The opener cannot wave it through; a second person can.
        assert (await stack.client.post(f"/v1/cases/{case_id}/approve")).status_code == 409
        approved = await stack.approve(case_id)
        assert approved.status_code == 200, approved.text
        done = await stack.wait_for(case_id)
        assert (done["state"], done["outcome"]) == ("resolved", "unblocked")
        assert len(stack.calls("Remove-BlockedSenderAddress")) == 1


async def test_a_clean_account_has_nothing_suspicious(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox) as stack:
        case = await stack.wait_for((await stack.open("laura@contoso.com"))["id"])
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        assert case["findings"] is not None
        assert not [f for f in case["findings"] if f["suspicious"]]
        assert stack.calls("Disable-InboxRule") == []
        # The investigation read the rules (with and without -IncludeHidden); nothing to disable is
        # nothing to read back, so no other Get-InboxRule reaches the tenant.
        assert len(stack.calls("Get-InboxRule")) == 2
        steps = {s["name"]: s["status"] for s in case["steps"]}
        assert (steps["disable_inbox_rules"], steps["remove_forwarding"]) == ("skipped", "skipped")


#: The investigation's reads (the consents' Get-MgUser included), each this slow at the tenant.
_READS = (
    "Get-InboxRule",
    "Get-Mailbox",
    "Get-MailboxPermission",
    "Get-RecipientPermission",
    "Get-MgUserAuthenticationMethod",
    "Get-MgUser",
    "Get-MgOauth2PermissionGrant",
)
_READ_MS = 300


async def test_the_investigation_reads_in_two_rounds_on_a_pool_of_four(
    database_url: str, sandbox: SandboxServer
) -> None:
    """Eight reads, four runspaces: the two reads that wait for another one (the consents for the
    user's id, the hidden rules for the visible ones) queue first, so the reads take two rounds at
    the tenant, not three."""
    sandbox.tenant.configure({"latency_ms": dict.fromkeys(_READS, _READ_MS)})
    async with running_stack(database_url, sandbox, ps_pool_size=4) as stack:
        case = await stack.wait_for((await stack.open("laura@contoso.com"))["id"])
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        starts = sorted(datetime.fromisoformat(c["at"]) for c in stack.calls() if c["cmdlet"] in _READS)
        assert len(starts) == 8
        # A read can start only once a runspace is free, at least one read's latency after the round
        # before began: count the rounds by that, whatever else slows the machine down.
        rounds = [starts[0]]
        for start in starts:
            if (start - rounds[-1]).total_seconds() * 1000 >= 0.9 * _READ_MS:
                rounds.append(start)
        assert len(rounds) == 2, f"the reads went out in {len(rounds)} rounds, at {starts}"


async def test_report_records_and_changes_nothing_at_the_mailbox(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, containment="report") as stack:
        case = await stack.wait_for((await stack.open("rob@contoso.com"))["id"])
        assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
        assert case["actions"]["disable_suspicious_inbox_rules"] is False
        assert _rule(case, "invoice")["action"] == "reported"
        assert _by_kind(case, "forwarding")[0]["action"] == "reported"
        rules = _enabled(stack, "rob@contoso.com")
        assert (rules["invoice"], rules["."], rules["Team updates"]) == (True, True, True)
        assert _forwarding(stack, "rob@contoso.com") == "smtp:collector@fabrikam.example"
        assert [c for c in stack.calls() if c["cmdlet"] in CONTAINMENT_COMMANDS] == []
        # The rest of Microsoft's procedure still ran.
        assert stack.calls("Update-MgUser")
        assert len(stack.calls("Remove-BlockedSenderAddress")) == 1


async def test_an_explicit_false_leaves_the_rules_even_under_enforce(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox) as stack:
        actions = {"disable_suspicious_inbox_rules": False}
        case = await stack.wait_for((await stack.open("rob@contoso.com", actions=actions))["id"])
        assert case["state"] == "resolved"
        assert _rule(case, "invoice")["action"] == "reported"
        assert _by_kind(case, "forwarding")[0]["action"] == "cleared"
        assert _enabled(stack, "rob@contoso.com")["invoice"] is True


async def test_an_unrestricted_mailbox_with_findings_for_a_person_is_escalated(
    database_url: str, sandbox: SandboxServer
) -> None:
    tenant = sandbox.tenant
    tenant.add_auth_method(
        "ann@contoso.com",
        "microsoftAuthenticatorAuthenticationMethod",
        created=datetime.now(UTC) - timedelta(hours=3),
        fields={"displayName": "Unknown phone"},
    )
    async with running_stack(database_url, sandbox) as stack:
        case = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
        assert (case["state"], case["outcome"]) == ("escalated", "not_restricted")
        assert case["last_error"]["code"] == "findings_need_review"
        assert "Unknown phone" in case["last_error"]["message"]
        assert stack.calls("Remove-BlockedSenderAddress") == []
        # Once a person has removed the method, a retry investigates again and the case resolves.
        user = tenant.find_user("ann@contoso.com")
        assert user is not None
        with tenant.lock:
            user.auth_methods = [m for m in user.auth_methods if m.fields.get("displayName") != "Unknown phone"]
        retried = await stack.client.post(f"/v1/cases/{case['id']}/retry")
        assert retried.status_code == 200, retried.text
        again = await stack.wait_for(case["id"])
        assert (again["state"], again["outcome"]) == ("resolved", "not_restricted")
