"""What an injected fault or a missing permission looks like, per family of command.

Each family fails in its own way (``service/reference/error_records.json``): Exchange Online
slows a caller down with a "Micro delay applied" WARNING and still runs the command, and a
sign-in without the right role does not get the command at all; Microsoft Graph answers 429
with Retry-After and 403 Authorization_RequestDenied; the AD module reports an unreachable
domain controller and "Insufficient access rights".
"""

from __future__ import annotations

from typing import Any

from service.sandbox import records
from service.sandbox.cmdlets import Cmdlet
from service.sandbox.records import ErrorSpec


def _ad_class(cmdlet: Cmdlet) -> str:
    return cmdlet.class_name.rsplit(".", 1)[-1]


def transient(cmdlet: Cmdlet) -> ErrorSpec:
    if cmdlet.family == "graph":
        return records.graph_transient(cmdlet.graph_set)
    if cmdlet.family == "ad":
        return records.ad_server_down(cmdlet.name, _ad_class(cmdlet))
    return records.exo_transient(cmdlet.name)


def throttled(cmdlet: Cmdlet, retry_after: int) -> ErrorSpec:
    """Graph's 429 with Retry-After (the AD module has no throttling: its domain controller is busy)."""
    if cmdlet.family == "graph":
        return records.graph_throttled(cmdlet.graph_set, retry_after)
    return transient(cmdlet)


def forbidden(cmdlet: Cmdlet, bound: dict[str, Any]) -> ErrorSpec:
    """The command is there but the signed-in identity may not do this (``forbidden_cmdlets``)."""
    if cmdlet.family == "graph":
        return records.graph_denied(cmdlet.graph_set)
    if cmdlet.family == "ad":
        return records.ad_insufficient_access(cmdlet.name, _ad_class(cmdlet))
    identity = next((str(bound[k]) for k in ("Identity", "SenderAddress", "Mailbox") if bound.get(k)), "")
    return records.exo_write_scope_denied(identity, cmdlet.name)
