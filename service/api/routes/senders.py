"""/v1/restricted-senders: the tenant's restricted list as workers last read it.

API processes never talk to the PowerShell endpoint. Workers store the whole list on the
discovery schedule (at least every few minutes) and update an address whenever a case looks
it up or unblocks it; ``fetched_at`` says when the list was last read in full.
``?refresh=true`` asks a worker for a fresh read through the database and waits a few seconds
for it, then answers with whatever is stored.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import Principal, requires, scope_doc
from service.api.deps import RuntimeDep
from service.api.problems import COMMON_PROBLEMS, problem_doc
from service.domain.tenancy import DEFAULT_TENANT
from service.errors import TenantNotFound
from service.persistence import tenant_facts
from service.persistence.tenant_facts import SenderRow
from service.runtime import Runtime

router = APIRouter(prefix="/v1/restricted-senders", tags=["senders"])

REFRESH_WAIT_SECONDS = 5.0
REFRESH_POLL_SECONDS = 0.2


class SenderPublic(BaseModel):
    sender_address: str
    reason: str
    blocked_at: datetime | None
    changed_at: datetime | None
    temporary_block: bool


class SendersPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "sender_address": "rob@contoso.com",
                            "reason": "EmailSendingLimitExceeded;InternalRecipientCountToday=12;"
                            "ExternalRecipientCountToday=480;ExceedingLimitType=External",
                            "blocked_at": "2026-11-26T08:02:11Z",
                            "changed_at": "2026-11-26T08:02:11Z",
                            "temporary_block": False,
                        }
                    ],
                    "fetched_at": "2026-11-26T09:00:00Z",
                }
            ]
        }
    )

    items: list[SenderPublic]
    fetched_at: datetime | None = Field(
        description="when a worker last read the whole list from the tenant (null: no worker has yet)"
    )


def _public(r: SenderRow) -> SenderPublic:
    return SenderPublic(
        sender_address=r.sender_address,
        reason=r.reason,
        blocked_at=r.blocked_at,
        changed_at=r.changed_at,
        temporary_block=r.temporary_block,
    )


@router.get(
    "",
    summary="The restricted-sender list",
    description=(
        "Exchange Online's restricted list (Get-BlockedSenderAddress) as workers last read it: in full on the "
        "discovery schedule (at least every few minutes), and per address whenever a case looks it up or unblocks "
        "it. `fetched_at` is when it was last read in full (null: not yet). With `refresh=true` the request asks a "
        f"worker for a fresh read and waits up to {REFRESH_WAIT_SECONDS:.0f} seconds for it; without a worker "
        "answering in time it returns what is stored. Requires `senders:read`."
    ),
    response_model=SendersPage,
    responses={404: problem_doc("no such tenant (for this credential)"), **COMMON_PROBLEMS},
    openapi_extra=scope_doc("senders:read"),
)
async def restricted_senders(
    runtime: RuntimeDep,
    principal: Annotated[Principal, requires("senders:read")],
    refresh: Annotated[bool, Query(description="ask a worker for a fresh read first")] = False,
    tenant: Annotated[
        str | None,
        Query(
            max_length=32,
            pattern=r"^[a-z0-9-]+$",
            description="whose list (default: `default`, or a key's only tenant)",
        ),
    ] = None,
) -> SendersPage:
    if tenant is None:
        tenant = principal.tenants[0] if principal.tenants and len(principal.tenants) == 1 else DEFAULT_TENANT
    if not principal.sees(tenant):
        raise TenantNotFound(f"no tenant {tenant}")
    if refresh:
        await _fresh_read(runtime, tenant)
    rows, fetched_at = await tenant_facts.senders(runtime.db, tenant=tenant)
    return SendersPage(items=[_public(r) for r in rows], fetched_at=fetched_at)


async def _fresh_read(runtime: Runtime, tenant: str) -> None:
    asked = runtime.clock()
    await tenant_facts.request_senders_refresh(runtime.db, now=asked, tenant=tenant)
    deadline = time.monotonic() + REFRESH_WAIT_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(REFRESH_POLL_SECONDS)
        fetched = (await tenant_facts.load(runtime.db, tenant=tenant)).senders_fetched_at
        if fetched is not None and fetched >= asked:
            return
