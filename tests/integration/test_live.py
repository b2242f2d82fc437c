"""Live timelines over Server-Sent Events: every event, in order, resumable, ending at a terminal state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service.api import live
from service.sandbox.server import SandboxServer
from tests.stack import running_stack


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(fields)
    return events


async def test_the_stream_sends_each_event_and_ends(database_url: str, sandbox: SandboxServer) -> None:
    """Accept: text/event-stream follows the case live and ends after it resolves; ids allow resuming."""
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        response = await stack.client.get(f"/v1/cases/{case_id}/events", headers={"Accept": "text/event-stream"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text)
        assert events[-1]["event"] == "end"
        assert json.loads(events[-1]["data"]) == {"state": "resolved", "outcome": "unblocked"}
        timeline = events[:-1]
        assert [int(e["id"]) for e in timeline] == sorted(int(e["id"]) for e in timeline)
        stored = await stack.events(case_id)
        assert [e["event"] for e in timeline] == [e["type"] for e in stored]
        assert json.loads(timeline[0]["data"])["type"] == "case.created"
        middle = timeline[len(timeline) // 2]["id"]
        resumed = await stack.client.get(
            f"/v1/cases/{case_id}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": middle}
        )
        rest = parse_sse(resumed.text)[:-1]
        assert [e["id"] for e in rest] == [e["id"] for e in timeline if int(e["id"]) > int(middle)]
        plain = await stack.client.get(f"/v1/cases/{case_id}/events")
        assert plain.headers["content-type"] == "application/json"


async def test_the_stream_has_its_own_operation_whose_events_match_their_schema(
    database_url: str, sandbox: SandboxServer
) -> None:
    """GET /v1/cases/{id}/events/stream (streamCaseEvents): the same stream without Accept, each event's
    data valid against EventPublic and the last against StreamEnd; an unknown case is 404 before any stream."""
    from jsonschema import Draft202012Validator

    from service.api.openapi_doc import StreamEnd
    from service.api.schemas import EventPublic

    event_schema = Draft202012Validator(EventPublic.model_json_schema())
    end_schema = Draft202012Validator(StreamEnd.model_json_schema())
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("julia@contoso.com"))["id"]
        response = await stack.client.get(f"/v1/cases/{case_id}/events/stream")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(response.text)
        assert events[-1]["event"] == "end"
        end_schema.validate(json.loads(events[-1]["data"]))
        for event in events[:-1]:
            data = json.loads(event["data"])
            event_schema.validate(data)
            assert event["event"] == data["type"]
            assert event["id"] == str(data["id"])
        missing = await stack.client.get("/v1/cases/01jd8v6k0s3x4y5z6a7b8c9d0e/events/stream")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


async def test_a_stream_ends_when_its_key_is_revoked(database_url: str, sandbox: SandboxServer) -> None:
    """A live stream re-checks its key every few seconds: revoked, the stream ends (it does not run on)."""
    import asyncio
    import time

    from service.api.live import RECHECK_SECONDS
    from service.persistence import keys as key_rows

    async with running_stack(database_url, sandbox, worker=False) as stack:
        case_id = (await stack.open("rob@contoso.com"))[
            "id"
        ]  # no worker: the case stays open, the stream would not end
        listening = asyncio.ensure_future(
            stack.client.get(f"/v1/cases/{case_id}/events", headers={"Accept": "text/event-stream"}, timeout=60)
        )
        await asyncio.sleep(0.5)
        assert not listening.done()
        from service.security.keys import prefix_of

        record = await key_rows.find_by_prefix(stack.runtime.db, prefix=prefix_of(stack.key) or "")
        assert record is not None
        await key_rows.revoke_key(stack.runtime.db, key_id=record.id, signer=stack.runtime.audit_signer)
        revoked_at = time.monotonic()
        response = await asyncio.wait_for(listening, RECHECK_SECONDS + 5)
        assert time.monotonic() - revoked_at <= RECHECK_SECONDS + 2
        events = parse_sse(response.text)
        assert [e["event"] for e in events] == ["case.created"]  # no "end": the case is still open


async def test_a_stream_has_a_maximum_lifetime(database_url: str, sandbox: SandboxServer) -> None:
    """No stream lives forever: at its lifetime it ends (without "end"), and the client reconnects."""
    import time

    from service.api.live import timeline

    async with running_stack(database_url, sandbox, worker=False) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]

        async def allowed() -> bool:
            return True

        started = time.monotonic()
        sent = [e async for e in timeline(stack.runtime, case_id, 0, allowed, lifetime=0.5)]
        assert time.monotonic() - started < 3
    assert [e["event"] for e in sent] == ["case.created"]


async def test_a_crafted_last_event_id_is_ignored_not_a_500(database_url: str, sandbox: SandboxServer) -> None:
    """Last-Event-ID values that are not plain ASCII digits ("²", "-1", "1e3") are ignored."""
    async with running_stack(database_url, sandbox) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        await stack.wait_for(case_id)
        # b"\xb2" is "²" as a header decodes it (latin-1): str.isdigit() says yes, int() says no
        for crafted in (b"\xb2", "\u00b2".encode(), b"-1", b"1e3", "٣".encode(), b"99999999999999999999"):
            response = await stack.client.get(
                f"/v1/cases/{case_id}/events",
                headers=[(b"Accept", b"text/event-stream"), (b"Last-Event-ID", crafted)],
            )
            assert response.status_code == 200, crafted
            assert parse_sse(response.text)[-1]["event"] == "end"


async def test_a_change_made_while_the_stream_is_busy_is_not_missed(
    database_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change published while the stream is sending (not yet waiting) wakes it all the same.

    The stream is held at its first event (as a slow client holds it); the case is cancelled
    meanwhile. With the poll pushed out of reach, the stream goes on at once only if it kept the
    word of that change instead of starting to wait after it.
    """
    monkeypatch.setattr(live, "POLL_SECONDS", 60.0)
    async with running_stack(database_url, sandbox, worker=False) as stack:
        case_id = (await stack.open("rob@contoso.com"))["id"]
        stream = live.timeline(stack.runtime, case_id, 0)
        first = await anext(stream)
        assert first["event"] == "case.created"
        cancelled = await stack.client.post(f"/v1/cases/{case_id}/cancel", json={"reason": "test"})
        assert cancelled.status_code == 200, cancelled.text

        async def rest() -> list[str]:
            return [event["event"] async for event in stream]

        sent = await asyncio.wait_for(rest(), 10)
        assert "case.cancelled" in sent
        assert sent[-1] == "end"
