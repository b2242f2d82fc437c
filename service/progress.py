"""A live view of one case for terminals (``unblock case watch``, ``make demo``).

It renders the case document of the API (``case_document``) and its timeline with rich, whatever
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

from service.domain.states import TERMINAL_STATES, CaseState, StepStatus

TERMINAL = frozenset(state.value for state in TERMINAL_STATES)

_STATUS_STYLE: dict[str, tuple[str, str]] = {
    StepStatus.pending: ("·", "dim"),
    StepStatus.running: ("…", "yellow"),
    StepStatus.succeeded: ("✔", "green"),
    StepStatus.skipped: ("-", "dim"),
    StepStatus.failed: ("✘", "red"),
}
_STATE_STYLE: dict[str, str] = {
    CaseState.resolved: "bold green",
    CaseState.failed: "bold red",
    CaseState.escalated: "bold magenta",
    CaseState.cancelled: "dim",
}

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
    findings = _findings(case.get("findings"))
    timeline = Table(show_header=False, box=None, pad_edge=False)
    for event in events[-8:]:
        change = ""
        if event.get("to_state") and event.get("from_state"):
            change = f"{event['from_state']} → {event['to_state']}"
        elif event.get("step"):
            change = event["step"]
        timeline.add_row(_time(event.get("at")), event.get("type", ""), change, event.get("actor", ""))
    parts: list[Any] = [header, Text(""), steps]
    if findings is not None:
        parts += [Text(""), Text("findings", style="bold"), findings]
    parts += [Text(""), Text("timeline", style="bold"), timeline]
    if case.get("next_action_at") and state not in TERMINAL:
        parts.append(Text(f"next action at {_time(case['next_action_at'])}", style="dim"))
    if case.get("last_error"):
        parts.append(Text(f"last error: {case['last_error']['code']}: {case['last_error']['message']}", style="red"))
    return Panel(Group(*parts), title=f"case {case.get('id')}", border_style="cyan")


_ACTION_STYLE = {"disabled": "green", "cleared": "green", "review": "bold magenta", "reported": "yellow"}


def _findings(found: list[dict[str, Any]] | None) -> Table | Text | None:
    """What the investigation found and what was done about each (None: it has not run)."""
    if found is None:
        return None
    if not found:
        return Text("nothing found", style="dim")
    table = Table(show_header=False, box=None, pad_edge=False)
    for finding in found:
        action = str(finding.get("action", ""))
        why = "; ".join(finding.get("reasons") or [])
        table.add_row(
            Text(action, style=_ACTION_STYLE.get(action, "dim")),
            Text(str(finding.get("summary", "")), style="bold" if finding.get("suspicious") else ""),
            Text(why, style="dim"),
        )
    return table


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
