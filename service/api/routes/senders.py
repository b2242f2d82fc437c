"""/v1/restricted-senders: the tenant's live restricted list, briefly cached for busy dashboards."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import Principal, requires, scope_doc
from service.api.deps import RuntimeDep
from service.api.problems import COMMON_PROBLEMS
from service.domain.tenant import Restriction
from service.errors import Unavailable

router = APIRouter(prefix="/v1/restricted-senders", tags=["senders"])

CACHE_SECONDS = 10.0


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
    fetched_at: datetime = Field(description="when the list was read from the tenant (cached up to 10 s)")


def _public(r: Restriction) -> SenderPublic:
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
        "Exchange Online's live restricted list (Get-BlockedSenderAddress), cached for up to 10 seconds so a busy "
        "dashboard does not hammer the tenant. Requires `senders:read`."
    ),
    response_model=SendersPage,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc("senders:read"),
)
async def restricted_senders(runtime: RuntimeDep, _: Annotated[Principal, requires("senders:read")]) -> SendersPage:
    cached = runtime.senders_cache
    if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
        return SendersPage.model_validate(cached[1])
    if runtime.gateway is None:
        raise Unavailable("no PowerShell endpoint is configured")
    listed = await runtime.gateway.list_restrictions()
    page = SendersPage(items=[_public(r) for r in listed], fetched_at=runtime.clock())
    runtime.senders_cache = (time.monotonic(), page.model_dump(mode="json"))
    return page
