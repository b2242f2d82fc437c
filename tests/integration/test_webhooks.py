"""Signed webhooks end to end: a real receiver, Standard Webhooks verification, order, outages, dead letters."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from service.persistence import webhooks
from service.sandbox.server import SandboxServer
from tests.helpers import until
from tests.receiver import Receiver
from tests.stack import Stack, running_stack

FAST = {"webhook_retry_initial": 0.2, "webhook_retry_max": 0.5}
# The test receiver listens on loopback, which webhooks may reach only when the operator says so.
LOOPBACK = {"webhook_allow_networks": "127.0.0.0/8"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


async def _subscribe(stack: Stack, url: str, events: list[str]) -> dict[str, Any]:
    response = await stack.client.post("/v1/webhooks", json={"url": url, "events": events})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["secret"].startswith("whsec_")
    return dict(body)


def _verified(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    hook = Webhook(secret)
    payloads = []
    for item in receiver.received:
        payloads.append(hook.verify(item.body, item.headers))  # raises on a bad signature
    return payloads


def _events_of(payloads: list[dict[str, Any]], case_id: str) -> list[dict[str, Any]]:
    return [p for p in payloads if p["data"].get("case", {}).get("id") == case_id]


async def test_every_delivery_is_signed_and_each_case_arrives_in_order(
    database_url: str, sandbox: SandboxServer, receiver: Receiver
) -> None:
    """Standard Webhooks signatures verify; per case: created, each state change in order, then resolved."""
    async with running_stack(database_url, sandbox, **LOOPBACK, **FAST) as stack:
        subscription = await _subscribe(stack, receiver.url, ["*"])
        ids = [(await stack.open(m))["id"] for m in ("rob@contoso.com", "ann@contoso.com")]
        cases = [await stack.wait_for(i) for i in ids]
        for case in cases:
            timeline = [e for e in await stack.events(case["id"]) if e["type"] == "state.changed"]
            expected = 2 + len(timeline)  # created + one per state change + resolved
            await until(
                lambda c=case, n=expected: len(_events_of(_verified(receiver, subscription["secret"]), c["id"])) >= n,
                f"{expected} events for {case['mailbox']}",
            )
        payloads = _verified(receiver, subscription["secret"])
        for case in cases:
            events = _events_of(payloads, case["id"])
            assert events[0]["type"] == "case.created"
            assert events[-1]["type"] == "case.resolved"
            changes = [e for e in events if e["type"] == "case.state_changed"]
            states = [e["data"]["case"]["state"] for e in changes]
            timeline = [e for e in await stack.events(case["id"]) if e["type"] == "state.changed"]
            assert states == [e["to_state"] for e in timeline]
            # One shape for a state change: the webhook carries the timeline's detail unchanged.
            assert [e["data"]["change"] for e in changes] == [e["detail"] for e in timeline]
            assert all(set(e["data"]["change"]) == {"from", "to", "reason"} for e in changes)
        ids_seen = [r.headers["webhook-id"] for r in receiver.received]
        assert len(ids_seen) == len(set(ids_seen))
        assert all(r.headers["content-type"] == "application/json" for r in receiver.received)


async def test_filters_only_send_what_was_asked(database_url: str, sandbox: SandboxServer, receiver: Receiver) -> None:
    """A subscription to terminal events gets exactly those."""
    async with running_stack(database_url, sandbox, **LOOPBACK, **FAST) as stack:
        subscription = await _subscribe(stack, receiver.url, ["case.resolved", "case.failed"])
        ok = await stack.wait_for((await stack.open("ann@contoso.com"))["id"])
        bad = await stack.wait_for((await stack.open("zed@contoso.com"))["id"])
        await until(lambda: len(receiver.received) >= 2, "two deliveries")
        await asyncio.sleep(0.5)
        payloads = _verified(receiver, subscription["secret"])
        assert sorted((p["type"], p["data"]["case"]["id"]) for p in payloads) == sorted(
            [("case.resolved", ok["id"]), ("case.failed", bad["id"])]
        )


async def test_deliveries_survive_the_receiver_being_down(database_url: str, sandbox: SandboxServer) -> None:
    """With the receiver gone, events wait and retry; when it returns they arrive, in order."""
    receiver = Receiver().start()
    port = receiver.port
    async with running_stack(database_url, sandbox, **LOOPBACK, **FAST) as stack:
        subscription = await _subscribe(stack, receiver.url, ["*"])
        receiver.stop()
        case = await stack.wait_for((await stack.open("laura@contoso.com"))["id"])
        await asyncio.sleep(1.0)
        hook_id = subscription["id"]
        pending = (await stack.client.get(f"/v1/webhooks/{hook_id}/deliveries", params={"status": "pending"})).json()
        assert pending["items"]
        assert max(d["attempts"] for d in pending["items"]) >= 1
        # what failed, as a category: the connection error's text would map the network for the subscriber
        assert {d["last_error"] for d in pending["items"] if d["attempts"]} == {"connect_failed"}
        back = Receiver(port=port).start()
        try:
            await until(lambda: any(json.loads(b)["type"] == "case.resolved" for b in back.bodies()), "the backlog")
            events = _events_of(_verified(back, subscription["secret"]), case["id"])
            assert events[0]["type"] == "case.created"
            assert events[-1]["type"] == "case.resolved"
        finally:
            back.stop()


async def test_dead_letters_and_redelivery(database_url: str, sandbox: SandboxServer, receiver: Receiver) -> None:
    """A receiver that keeps failing: dead after the max age, listed, redelivered once it works."""
    receiver.status = 503
    async with running_stack(database_url, sandbox, webhook_max_age=1.5, **LOOPBACK, **FAST) as stack:
        subscription = await _subscribe(stack, receiver.url, ["case.created"])
        await stack.open("ann@contoso.com")
        hook_id = subscription["id"]

        async def dead() -> list[dict[str, Any]]:
            response = await stack.client.get(f"/v1/webhooks/{hook_id}/deliveries", params={"status": "dead"})
            return list(response.json()["items"])

        deadline = time.monotonic() + 15
        while not (letters := await dead()):
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.2)
        assert letters[0]["event_type"] == "case.created"
        assert letters[0]["last_status_code"] == 503
        assert letters[0]["last_error"] == "http_503"
        assert letters[0]["attempts"] >= 2
        receiver.status = 200
        redeliver = await stack.client.post(f"/v1/webhooks/{hook_id}/deliveries/{letters[0]['id']}/redeliver")
        assert redeliver.status_code == 202
        await until(lambda: len(receiver.received) == 1, "the redelivery")
        assert _verified(receiver, subscription["secret"])[0]["type"] == "case.created"
        # Delivered now: queuing it again would send the event twice.
        again = await stack.client.post(f"/v1/webhooks/{hook_id}/deliveries/{letters[0]['id']}/redeliver")
        assert again.status_code == 409, again.text
        assert (await stack.client.delete(f"/v1/webhooks/{hook_id}")).status_code == 204
        gone = await stack.client.post(f"/v1/webhooks/{hook_id}/deliveries/{letters[0]['id']}/redeliver")
        assert gone.status_code == 404, gone.text


async def test_a_failing_receivers_backlog_does_not_look_due(
    database_url: str, sandbox: SandboxServer, receiver: Receiver
) -> None:
    """The dispatcher sleeps until the first undelivered event of a case may be retried.

    Later events of that case wait behind it; if they counted as due, the dispatcher would wake
    at once, claim nothing, and spin on empty transactions until the receiver came back.
    """
    receiver.status = 503
    async with running_stack(
        database_url, sandbox, webhook_retry_initial=60, webhook_retry_max=60, **LOOPBACK
    ) as stack:
        subscription = await _subscribe(stack, receiver.url, ["*"])
        case = await stack.open("ann@contoso.com")
        await stack.wait_for(case["id"])
        await until(lambda: receiver.attempts >= 1, "the first attempt")

        async def pending() -> list[dict[str, Any]]:
            response = await stack.client.get(
                f"/v1/webhooks/{subscription['id']}/deliveries", params={"status": "pending"}
            )
            return list(response.json()["items"])

        backlog = await pending()
        assert len(backlog) >= 3, backlog  # created, the state changes, resolved: all behind the first
        await asyncio.sleep(1.0)
        assert receiver.attempts == 1, "a later event overtook the failed one, or it was retried at once"
        due = await webhooks.next_due_at(stack.runtime.db)
        assert due is not None
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)
        assert due > datetime.now(UTC) + timedelta(seconds=30), due


async def test_subscription_management(database_url: str, sandbox: SandboxServer, receiver: Receiver) -> None:
    """Create (secret once), list and get (no secret), delete (stops deliveries), bad URLs refused."""
    async with running_stack(database_url, sandbox, worker=False, **LOOPBACK) as stack:
        created = await _subscribe(stack, receiver.url, ["case.created", "case.created"])
        assert created["events"] == ["case.created"]
        listed = (await stack.client.get("/v1/webhooks")).json()["items"]
        assert [w["id"] for w in listed] == [created["id"]]
        assert "secret" not in listed[0]
        assert "secret" not in (await stack.client.get(f"/v1/webhooks/{created['id']}")).json()
        for url in ("ftp://x/y", "http://example.com/hook", "https://user:pw@example.com/x", "not a url"):
            response = await stack.client.post("/v1/webhooks", json={"url": url, "events": ["*"]})
            assert response.status_code == 422, url
        assert (
            await stack.client.post("/v1/webhooks", json={"url": receiver.url, "events": ["nope"]})
        ).status_code == 422
        assert (await stack.client.delete(f"/v1/webhooks/{created['id']}")).status_code == 204
        assert (await stack.client.get(f"/v1/webhooks/{created['id']}")).status_code == 404
        assert (await stack.client.get("/v1/webhooks")).json()["items"] == []
