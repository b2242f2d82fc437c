"""Live timelines as Server-Sent Events (sse-starlette), for the API and the dashboard.

Each new timeline event is sent as it happens (woken at once by changes made in this process,
and by a one-second poll for changes made by workers elsewhere), with the event's id as the SSE
id so that a client reconnecting with ``Last-Event-ID`` resumes where it stopped. The stream
ends once the case is in a terminal state and every event up to then has been sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse

from service.domain.states import TERMINAL_STATES
from service.persistence import cases
from service.persistence.records import event_document
from service.runtime import Runtime

POLL_SECONDS = 1.0


def wants_stream(accept: str | None) -> bool:
    return "text/event-stream" in (accept or "")


def resume_from(last_event_id: str | None, after: int | None) -> int:
    if last_event_id and last_event_id.strip().isdigit():
        return min(int(last_event_id.strip()), 2**63 - 1)  # event ids are 64-bit
    return after or 0


async def timeline(runtime: Runtime, case_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    last = after
    while True:
        state, outcome, events = await cases.timeline_since(runtime.db, case_id=case_id, after_id=last)
        for event in events:
            last = event.id
            yield {"id": str(event.id), "event": event.type, "data": json.dumps(event_document(event))}
        if state in TERMINAL_STATES:
            yield {"event": "end", "data": json.dumps({"state": state, "outcome": outcome})}
            return
        await runtime.events.wait(case_id, POLL_SECONDS)


def stream(runtime: Runtime, case_id: str, after: int) -> EventSourceResponse:
    return EventSourceResponse(
        timeline(runtime, case_id, after), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
