"""Live timelines over Server-Sent Events: every event, in order, resumable, ending at a terminal state."""

from __future__ import annotations

import json
from typing import Any

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
