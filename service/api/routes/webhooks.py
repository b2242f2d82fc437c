"""/v1/webhooks: subscriptions (admin), their deliveries, and redelivery of dead letters."""

from __future__ import annotations

import base64
import ipaddress
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.auth import Principal, requires, scope_doc
from service.api.deps import RuntimeDep
from service.api.problems import COMMON_PROBLEMS, problem_doc
from service.errors import InvalidInput
from service.logging import get_logger
from service.persistence import webhooks
from service.persistence.outbox import EVENT_TYPES
from service.persistence.types import new_id
from service.persistence.webhooks import DeliveryRecord, SubscriptionRecord
from service.runtime import Runtime
from service.security.sealing import Sealer

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
log = get_logger(__name__)

WebhookId = Annotated[str, Path(pattern=r"^[0-9a-z]{26}$", description="the subscription id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem_doc("no such subscription or delivery")}
EventName = Literal[
    "case.created",
    "case.state_changed",
    "case.resolved",
    "case.failed",
    "case.escalated",
    "credential.revealed",
    "sender.restricted",
    "*",
]


class WebhookCreate(BaseModel):
    """Subscribe a receiver to events; `*` means every event."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://contoso.service-now.com/api/x_unblock/events",
                    "events": ["case.resolved", "case.failed", "case.escalated"],
                    "description": "ServiceNow incident updates",
                }
            ]
        },
    )

    url: str = Field(
        max_length=2048,
        # the shape only: absolute http(s), visible ASCII (IDN hosts in punycode), no user:password@;
        # whether http is allowed is checked against configuration
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://[\x21\x22\x24-\x2e\x30-\x3e\x41-\x7e]+(?:[/?#][\x21-\x7e]*)?$",
        description="https URL that receives signed POSTs",
    )
    events: list[EventName] = Field(min_length=1, max_length=len(EVENT_TYPES) + 1)
    description: str | None = Field(None, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


_WEBHOOK_EXAMPLE: dict[str, Any] = {
    "id": "01jd8v9q2m3n4p5q6r7s8t9v0w",
    "url": "https://contoso.service-now.com/api/x_unblock/events",
    "events": ["case.resolved", "case.failed", "case.escalated"],
    "description": "ServiceNow incident updates",
    "created_by": "admin",
    "created_at": "2026-11-26T08:00:00Z",
}


class WebhookPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WEBHOOK_EXAMPLE]})

    id: str
    url: str
    events: list[str]
    description: str | None
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, record: SubscriptionRecord) -> WebhookPublic:
        return cls(
            id=record.id,
            url=record.url,
            events=list(record.events),
            description=record.description,
            created_by=record.created_by,
            created_at=record.created_at,
        )


class WebhookCreated(WebhookPublic):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_WEBHOOK_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}
    )

    secret: str = Field(description="the Standard Webhooks signing secret (`whsec_...`); shown only now")


class WebhooksPage(BaseModel):
    items: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "event_id": 42,
                    "event_type": "case.resolved",
                    "status": "dead",
                    "attempts": 23,
                    "next_attempt_at": "2026-11-27T09:00:00Z",
                    "last_status_code": 503,
                    "last_error": "HTTP 503",
                    "created_at": "2026-11-26T09:00:00Z",
                    "delivered_at": None,
                }
            ]
        }
    )

    id: int
    event_id: int
    event_type: str
    status: Literal["pending", "delivered", "dead", "cancelled"]
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, record: DeliveryRecord) -> DeliveryPublic:
        return cls(
            id=record.id,
            event_id=record.event_id,
            event_type=record.event_type,
            status=record.status,
            attempts=record.attempts,
            next_attempt_at=record.next_attempt_at,
            last_status_code=record.last_status_code,
            last_error=record.last_error,
            created_at=record.created_at,
            delivered_at=record.delivered_at,
        )


class DeliveriesPage(BaseModel):
    items: list[DeliveryPublic]


def _check_url(url: str, runtime: Runtime) -> None:
    if not url.isascii() or not url.isprintable() or " " in url:
        raise InvalidInput("url must be visible ASCII (write an international host name in punycode)", field="url")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port out of range
    except ValueError as error:
        raise InvalidInput(f"url is not a valid URL: {error}", field="url") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidInput("url must be an absolute http(s) URL", field="url")
    if parts.username or parts.password:
        raise InvalidInput("url must not carry credentials; the signature authenticates the sender", field="url")
    if parts.scheme == "http" and not runtime.settings.webhook_allow_http:
        try:
            loopback = ipaddress.ip_address(parts.hostname).is_loopback
        except ValueError:
            loopback = parts.hostname == "localhost"
        if not loopback:
            raise InvalidInput("url must use https (set UNBLOCK_WEBHOOK_ALLOW_HTTP=true to allow http)", field="url")


@router.post(
    "",
    status_code=201,
    summary="Subscribe a webhook receiver",
    description=(
        "Creates a subscription and returns its signing secret once. Deliveries are signed per Standard Webhooks "
        "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). Requires `admin`."
    ),
    response_model=WebhookCreated,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc("admin"),
)
async def create_webhook(
    body: WebhookCreate, runtime: RuntimeDep, principal: Annotated[Principal, requires("admin")]
) -> WebhookCreated:
    _check_url(body.url, runtime)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    sealer = Sealer(runtime.settings.secret_keys)
    subscription_id = new_id()
    sealed = sealer.seal(secret, context=subscription_id)
    record = await webhooks.create_subscription(
        runtime.db,
        subscription_id=subscription_id,
        url=body.url,
        events=list(body.events),
        description=body.description,
        secret_key_id=sealed.key_id,
        secret_sealed=sealed.blob,
        actor=principal.actor,
        now=runtime.clock(),
    )
    parts = urlsplit(record.url)
    log.info("webhook_created", webhook_id=record.id, receiver=f"{parts.scheme}://{parts.hostname}")
    return WebhookCreated(**WebhookPublic.of(record).model_dump(), secret=secret)


@router.get(
    "",
    summary="List webhook subscriptions",
    description="Active subscriptions, oldest first; never the secrets. Requires `admin`.",
    response_model=WebhooksPage,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc("admin"),
)
async def list_webhooks(runtime: RuntimeDep, _: Annotated[Principal, requires("admin")]) -> WebhooksPage:
    return WebhooksPage(items=[WebhookPublic.of(r) for r in await webhooks.list_subscriptions(runtime.db)])


@router.get(
    "/{webhook_id}",
    summary="Get a webhook subscription",
    description="Requires `admin`.",
    response_model=WebhookPublic,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def get_webhook(
    webhook_id: WebhookId, runtime: RuntimeDep, _: Annotated[Principal, requires("admin")]
) -> WebhookPublic:
    return WebhookPublic.of(await webhooks.get_subscription(runtime.db, subscription_id=webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Delete a webhook subscription",
    description="Stops deliveries to it (pending ones are cancelled). Requires `admin`.",
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def delete_webhook(
    webhook_id: WebhookId, runtime: RuntimeDep, principal: Annotated[Principal, requires("admin")]
) -> Response:
    await webhooks.delete_subscription(
        runtime.db, subscription_id=webhook_id, actor=principal.actor, now=runtime.clock()
    )
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    summary="List deliveries",
    description="Newest first; `status=dead` lists the dead letters. Requires `admin`.",
    response_model=DeliveriesPage,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def list_deliveries(
    webhook_id: WebhookId,
    runtime: RuntimeDep,
    _: Annotated[Principal, requires("admin")],
    status: Annotated[Literal["pending", "delivered", "dead", "cancelled"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveriesPage:
    items = await webhooks.list_deliveries(runtime.db, subscription_id=webhook_id, status=status, limit=limit)
    return DeliveriesPage(items=[DeliveryPublic.of(d) for d in items])


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Redeliver",
    description="Queues a dead delivery again with a fresh retry window (409 for any other status). Requires `admin`.",
    responses={**NOT_FOUND, 409: problem_doc("the delivery is not dead"), **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def redeliver(
    webhook_id: WebhookId,
    delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    runtime: RuntimeDep,
    principal: Annotated[Principal, requires("admin")],
) -> Response:
    await webhooks.redeliver(
        runtime.db, subscription_id=webhook_id, delivery_id=delivery_id, actor=principal.actor, now=runtime.clock()
    )
    runtime.events.publish("*webhooks*")  # SQLite's wake-up; on PostgreSQL the NOTIFY wakes every process
    return Response(status_code=202)
