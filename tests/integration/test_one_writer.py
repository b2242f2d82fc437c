"""The one writer of case changes, seen from outside: what changed when every path went through it.

- a step that finishes after its case was cancelled keeps its result, and a reset that did go
  through makes its password revealable for the configured time (credential.available says so);
- a state change has one detail shape in the timeline and in webhooks ({"from", "to", "reason"});
- revealing or expiring the password is a change of the case like any other: its version moves.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from service.domain.states import StepName
from service.domain.timeline import CaseChange, step_started
from service.errors import ConcurrentUpdate
from service.persistence import credentials
from service.persistence.records import CaseSnapshot
from service.persistence.writer import CAS_ATTEMPTS, change_case
from service.sandbox.server import SandboxServer
from tests.stack import running_stack


async def _until_event(stack, case_id: str, kind: str, timeout: float = 15) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        events = await stack.events(case_id)
        if any(e["type"] == kind for e in events):
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} event on case {case_id} within {timeout}s")


async def test_a_reset_that_lands_after_a_cancel_is_kept_for_the_configured_time(
    database_url: str, sandbox: SandboxServer
) -> None:
    sandbox.tenant.configure({"latency_ms": {"Update-MgUser": 1500}})
    async with running_stack(database_url, sandbox, credential_ttl=900) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await _until_event(stack, case_id, "step.started")
        cancelled = await stack.client.post(f"/v1/cases/{case_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["state"] == "cancelled"
        cancelled_at = datetime.now(UTC)
        events = await _until_event(stack, case_id, "step.finished_late")
        late = next(e for e in events if e["type"] == "step.finished_late")
        assert (late["step"], late["detail"]) == ("reset_password", {"status": "succeeded"})
        available = [e for e in events if e["type"] == "credential.available"]
        assert len(available) == 1
        expires_at = datetime.fromisoformat(available[0]["detail"]["expires_at"])
        # The configured 900 s, not a fixed day.
        assert cancelled_at + timedelta(seconds=880) < expires_at < cancelled_at + timedelta(seconds=920)
        case = await stack.get(case_id)
        assert case["state"] == "cancelled"
        assert case["credential"]["available"] is True
        revealed = await stack.client.post(f"/v1/cases/{case_id}/credential/reveal")
        assert revealed.status_code == 200
        assert revealed.json()["password"]


async def test_a_state_change_reads_the_same_wherever_it_is_written(database_url: str, sandbox: SandboxServer) -> None:
    """Worker steps, the start of a step, and a person's retry: one detail shape in the timeline."""
    sandbox.tenant.configure({"unblock_limit_per_day": 0})
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await stack.wait_for(case_id)
        retried = await stack.client.post(f"/v1/cases/{case_id}/retry")
        assert retried.status_code == 200
        changes = [e for e in await stack.events(case_id) if e["type"] == "state.changed"]
        assert len(changes) >= 5
        for change in changes:
            assert set(change["detail"]) == {"from", "to", "reason"}
            assert (change["detail"]["from"], change["detail"]["to"]) == (change["from_state"], change["to_state"])
            assert change["detail"]["reason"]
        assert changes[-1]["actor"] == "servicedesk"


async def test_reveal_and_expiry_move_the_version(database_url: str, sandbox: SandboxServer) -> None:
    async with running_stack(database_url, sandbox, credential_ttl=60) as stack:
        first = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
        second = await stack.wait_for((await stack.open("rob@contoso.com"))["id"])
        assert (await stack.client.post(f"/v1/cases/{first['id']}/credential/reveal")).status_code == 200
        assert (await stack.get(first["id"]))["version"] == first["version"] + 1
        # Past the TTL (the revealed one is already gone: one expiry).
        assert await credentials.expire(stack.runtime.db, now=datetime.now(UTC) + timedelta(seconds=61)) == 1
        after = await stack.get(second["id"])
        assert after["version"] == second["version"] + 1
        assert after["credential"]["available"] is False
        # A reveal after the expiry is refused, and changes nothing more.
        assert (await stack.client.post(f"/v1/cases/{second['id']}/credential/reveal")).status_code == 410
        assert (await stack.get(second["id"]))["version"] == after["version"]


async def test_a_change_that_keeps_losing_gives_up_loudly(database_url: str, sandbox: SandboxServer) -> None:
    """The compare-and-set policy decides again on every loss, CAS_ATTEMPTS times, then raises ConcurrentUpdate."""
    async with running_stack(database_url, sandbox, worker=False) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        before = await stack.get(case_id)
        decided: list[int] = []

        def build(case: CaseSnapshot) -> CaseChange:
            decided.append(case.version)
            # A worker change from a worker that does not hold the lease: it can never win.
            return step_started(
                before=case.state,
                after=case.state,
                step=StepName.reset_password,
                attempt=1,
                first_start=True,
                reason="",
                lease_until=datetime.now(UTC),
            )

        with pytest.raises(ConcurrentUpdate, match="changed 5 times"):
            await change_case(
                stack.runtime.db, case_id=case_id, build=build, now=datetime.now(UTC), lease_owner="not-the-holder"
            )
        assert len(decided) == CAS_ATTEMPTS
        assert await stack.get(case_id) == before  # nothing half-written
