"""A live view of one case for terminals (``unblock case watch``, ``make demo``).

It renders the case dictionary of the API (CasePublic) and its timeline with rich, whatever
the source: the database (the CLI) or the HTTP API (the demo).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

TERMINAL = {"resolved", "failed", "escalated", "cancelled"}

_STATUS_STYLE = {
    "pending": ("·", "dim"),
    "running": ("…", "yellow"),
    "succeeded": ("✔", "green"),
    "skipped": ("-", "dim"),
    "failed": ("✘", "red"),
}
_STATE_STYLE = {"resolved": "bold green", "failed": "bold red", "escalated": "bold magenta", "cancelled": "dim"}

Fetch = Callable[[], Awaitable[tuple[dict[str, Any], list[dict[str, Any]]]]]


def _time(value: str | None) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        return value


def render(case: dict[str, Any], events: list[dict[str, Any]]) -> Panel:
    state = str(case.get("state"))
    header = Text.assemble(
        (f"{case.get('mailbox')}", "bold"),
        "  ",
        (state, _STATE_STYLE.get(state, "bold cyan")),
        (f"  outcome: {case['outcome']}" if case.get("outcome") else ""),
    )
    steps = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    steps.add_column("step")
    steps.add_column("status")
    steps.add_column("tries", justify="right")
    steps.add_column("finished")
    steps.add_column("error")
    for step in case.get("steps", []):
        mark, style = _STATUS_STYLE.get(step["status"], ("?", ""))
        error = (step.get("error") or {}).get("message", "")
        steps.add_row(
            step["name"],
            Text(f"{mark} {step['status']}", style=style),
            str(step.get("attempts", 0)),
            _time(step.get("finished_at")),
            Text(error[:70], style="red") if error else "",
        )
    timeline = Table(show_header=False, box=None, pad_edge=False)
    for event in events[-8:]:
        change = ""
        if event.get("to_state") and event.get("from_state"):
            change = f"{event['from_state']} → {event['to_state']}"
        elif event.get("step"):
            change = event["step"]
        timeline.add_row(_time(event.get("at")), event.get("type", ""), change, event.get("actor", ""))
    parts: list[Any] = [header, Text(""), steps, Text(""), Text("timeline", style="bold"), timeline]
    if case.get("next_action_at") and state not in TERMINAL:
        parts.append(Text(f"next action at {_time(case['next_action_at'])}", style="dim"))
    if case.get("last_error"):
        parts.append(Text(f"last error: {case['last_error']['code']}: {case['last_error']['message']}", style="red"))
    return Panel(Group(*parts), title=f"case {case.get('id')}", border_style="cyan")


async def watch(fetch: Fetch, *, console: Console | None = None, interval: float = 0.25) -> dict[str, Any]:
    """Redraw until the case is terminal; returns the final case."""
    console = console or Console()
    case, events = await fetch()
    with Live(render(case, events), console=console, refresh_per_second=8, transient=False) as live:
        while case.get("state") not in TERMINAL:
            await asyncio.sleep(interval)
            case, events = await fetch()
            live.update(render(case, events))
    return case
