"""Live timelines as Server-Sent Events (sse-starlette), for the API and the dashboard.

Each new timeline event is sent as it happens (woken at once by changes made in this process,
and by a one-second poll for changes made by workers elsewhere), with the event's id as the SSE
id so that a client reconnecting with ``Last-Event-ID`` resumes where it stopped. The stream
ends once the case is in a terminal state and every event up to then has been sent.

A stream is authenticated when it opens and again every ``RECHECK_SECONDS``: a revoked or
expired key (or dashboard session, or an expired token) ends it. No stream lives longer than
``MAX_SECONDS``; clients reconnect with ``Last-Event-ID`` and are checked anew.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sse_starlette.sse import EventSourceResponse

from service.domain.states import TERMINAL_STATES
from service.persistence import snapshots
from service.persistence.records import event_document
from service.runtime import Runtime

POLL_SECONDS = 1.0
RECHECK_SECONDS = 5.0
MAX_SECONDS = 900.0

#: Still allowed to watch? Re-runs the stream's authentication (a key, a token or a dashboard session).
StillAllowed = Callable[[], Awaitable[bool]]
_EVENT_ID = re.compile(r"^[0-9]{1,19}$")  # ASCII digits only: str.isdigit() also accepts "²"


def wants_stream(accept: str | None) -> bool:
    return "text/event-stream" in (accept or "")


def resume_from(last_event_id: str | None, after: int | None) -> int:
    """Where a stream resumes: a well-formed ``Last-Event-ID`` wins, anything else is ignored."""
    text = (last_event_id or "").strip()
    if _EVENT_ID.match(text):
        return min(int(text), 2**63 - 1)  # event ids are 64-bit
    return after or 0


async def timeline(
    runtime: Runtime,
    case_id: str,
    after: int,
    allowed: StillAllowed | None = None,
    *,
    recheck: float = RECHECK_SECONDS,
    lifetime: float = MAX_SECONDS,
) -> AsyncIterator[dict[str, Any]]:
    last = after
    opened = checked = time.monotonic()
    # Watched from before the first read: a change made while the stream reads or sends is not lost.
    with runtime.events.watch(case_id) as news:
        while True:
            now = time.monotonic()
            if now - opened >= lifetime:
                return  # reconnect with Last-Event-ID
            if allowed is not None and now - checked >= recheck:
                checked = now
                if not await allowed():
                    return
            state, outcome, events = await snapshots.timeline_since(runtime.db, case_id=case_id, after_id=last)
            for event in events:
                last = event.id
                yield {"id": str(event.id), "event": event.type, "data": json.dumps(event_document(event))}
            if state in TERMINAL_STATES:
                yield {"event": "end", "data": json.dumps({"state": state, "outcome": outcome})}
                return
            await news.wait(POLL_SECONDS)


def stream(runtime: Runtime, case_id: str, after: int, allowed: StillAllowed) -> EventSourceResponse:
    return EventSourceResponse(
        timeline(runtime, case_id, after, allowed),
        ping=15,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
