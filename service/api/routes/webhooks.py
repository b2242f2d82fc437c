"""/v1/webhooks: subscriptions, their deliveries, and redelivery of dead letters.

Managed with ``webhooks:manage`` or ``admin``. A subscription carries the tenant scope of the key
that made it (or a narrower one it asked for) and receives only those tenants' events; a key
limited to tenants sees and manages only subscriptions within its tenants.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.api.auth import Principal, requires, scope_doc
from service.api.deps import RuntimeDep
from service.api.problems import COMMON_PROBLEMS, problem_doc
from service.domain.tenancy import NAME_PATTERN, visible
from service.domain.timeline import WebhookEventType
from service.errors import Forbidden, InvalidInput, TenantNotFound, WebhookNotFound
from service.logging import get_logger
from service.persistence import tenants, webhooks
from service.persistence.types import new_id
from service.persistence.webhooks import DeliveryRecord, DeliveryStatus, SubscriptionRecord
from service.runtime import Runtime
from service.security.destinations import check_destination
from service.security.scopes import Scope
from service.security.sealing import Sealer

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
log = get_logger(__name__)

WebhookId = Annotated[str, Path(pattern=r"^[0-9a-z]{26}$", description="the subscription id")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem_doc("no such subscription or delivery")}
TenantName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=32)]
#: Who may manage subscriptions: webhooks:manage within its tenants, or admin.
_NEEDS = "Requires `webhooks:manage` (within the key's tenants) or `admin`."
Manager = Annotated[Principal, requires(Scope.webhooks_manage, Scope.admin)]
#: What a subscription can ask for: each webhook event type, or "*" for all of them.
EventName = WebhookEventType | Literal["*"]


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
        description="https URL that receives signed POSTs; its host must be, or resolve to, globally reachable "
        "addresses (or addresses in UNBLOCK_WEBHOOK_ALLOW_NETWORKS)",
    )
    events: list[EventName] = Field(min_length=1, max_length=len(WebhookEventType) + 1)
    description: str | None = Field(None, max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")
    tenants: list[TenantName] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="deliver only these tenants' events; default: the tenants of the key that subscribes "
        "(every tenant for a key not limited to tenants). A key limited to tenants may name only its own",
    )

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("tenants")
    @classmethod
    def _unique_tenants(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(dict.fromkeys(value))


_WEBHOOK_EXAMPLE: dict[str, Any] = {
    "id": "01jd8v9q2m3n4p5q6r7s8t9v0w",
    "url": "https://contoso.service-now.com/api/x_unblock/events",
    "events": ["case.resolved", "case.failed", "case.escalated"],
    "description": "ServiceNow incident updates",
    "tenants": None,
    "created_by": "admin",
    "created_at": "2026-11-26T08:00:00Z",
}


class WebhookPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WEBHOOK_EXAMPLE]})

    id: str
    url: str
    events: list[str]
    description: str | None
    tenants: list[str] | None = Field(description="the tenants whose events it receives; null: every tenant's")
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, record: SubscriptionRecord) -> WebhookPublic:
        return cls(
            id=record.id,
            url=record.url,
            events=list(record.events),
            description=record.description,
            tenants=list(record.tenants) if record.tenants is not None else None,
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
                    "last_error": "http_503",
                    "created_at": "2026-11-26T09:00:00Z",
                    "delivered_at": None,
                }
            ]
        }
    )

    id: int
    event_id: int
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None = Field(
        pattern=r"^(timeout|connect_failed|tls|refused_address|http_[1-5][0-9]{2})$",
        description="why the last attempt failed, as a category: timeout, connect_failed, tls, refused_address "
        "(the receiver's address is not one webhooks may reach) or http_<status>; never the error's text",
    )
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


def _check_url(url: str) -> None:
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


def _sees(principal: Principal, record: SubscriptionRecord) -> bool:
    """A key limited to tenants sees the subscriptions limited to (some of) its tenants, and no others."""
    if principal.tenants is None:
        return True
    return record.tenants is not None and all(visible(t, principal.tenants) for t in record.tenants)


async def _subscription_for(runtime: Runtime, principal: Principal, webhook_id: str) -> SubscriptionRecord:
    record = await webhooks.get_subscription(runtime.db, subscription_id=webhook_id)
    if not _sees(principal, record):  # another tenant's subscription does not exist for this key
        raise WebhookNotFound(f"no webhook subscription has id {webhook_id}")
    return record


async def _tenants_for(runtime: Runtime, principal: Principal, asked: list[str] | None) -> list[str] | None:
    """The tenant scope of a new subscription: what was asked, within the key's own; by default the key's."""
    if asked is None:
        return list(principal.tenants) if principal.tenants is not None else None
    outside = [t for t in asked if not visible(t, principal.tenants)]
    if outside:
        raise Forbidden(
            f"this key is limited to tenants {', '.join(principal.tenants or ())}; it cannot subscribe to "
            f"{', '.join(outside)}"
        )
    for name in asked:
        try:
            await tenants.get(runtime.db, runtime.settings, name)
        except TenantNotFound:
            raise InvalidInput(f"no tenant is named {name}", field="tenants") from None
    return asked


async def _check_destination(url: str, runtime: Runtime) -> None:
    """Refuse a receiver the dispatcher would refuse: the same check, so a subscription never only dead-letters.

    The dispatcher checks again before every delivery (a name's addresses can change); this
    answer is the early, explained one.
    """
    parts = urlsplit(url)
    await check_destination(
        parts.scheme,
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
        policy=runtime.webhook_policy,
        resolve=runtime.resolver,
    )


@router.post(
    "",
    status_code=201,
    summary="Subscribe a webhook receiver",
    description=(
        "Creates a subscription and returns its signing secret once. Deliveries are signed per Standard Webhooks "
        "(`webhook-id`, `webhook-timestamp`, `webhook-signature`). " + _NEEDS
    ),
    response_model=WebhookCreated,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc(Scope.webhooks_manage, Scope.admin),
)
async def create_webhook(body: WebhookCreate, runtime: RuntimeDep, principal: Manager) -> WebhookCreated:
    _check_url(body.url)
    scope = await _tenants_for(runtime, principal, body.tenants)
    await _check_destination(body.url, runtime)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    sealer = Sealer(runtime.settings.secret_keys)
    subscription_id = new_id()
    sealed = sealer.seal(secret, context=subscription_id)
    record = await webhooks.create_subscription(
        runtime.db,
        subscription_id=subscription_id,
        url=body.url,
        events=[str(event) for event in body.events],
        description=body.description,
        secret_key_id=sealed.key_id,
        secret_sealed=sealed.blob,
        actor=principal.audit_actor,
        signer=runtime.audit_signer,
        now=runtime.clock(),
        tenants=scope,
    )
    parts = urlsplit(record.url)
    log.info("webhook_created", webhook_id=record.id, receiver=f"{parts.scheme}://{parts.hostname}")
    return WebhookCreated(**WebhookPublic.of(record).model_dump(), secret=secret)


@router.get(
    "",
    summary="List webhook subscriptions",
    description="Active subscriptions, oldest first; never the secrets. " + _NEEDS,
    response_model=WebhooksPage,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc(Scope.webhooks_manage, Scope.admin),
)
async def list_webhooks(runtime: RuntimeDep, principal: Manager) -> WebhooksPage:
    records = await webhooks.list_subscriptions(runtime.db)
    return WebhooksPage(items=[WebhookPublic.of(r) for r in records if _sees(principal, r)])


@router.get(
    "/{webhook_id}",
    summary="Get a webhook subscription",
    description="Requires `webhooks:manage` (within the key's tenants) or `admin`.",
    response_model=WebhookPublic,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc(Scope.webhooks_manage, Scope.admin),
)
async def get_webhook(webhook_id: WebhookId, runtime: RuntimeDep, principal: Manager) -> WebhookPublic:
    return WebhookPublic.of(await _subscription_for(runtime, principal, webhook_id))


@router.delete(
    "/{webhook_id}",
    status_code=204,
    summary="Delete a webhook subscription",
    description="Stops deliveries to it (pending ones are cancelled). " + _NEEDS,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc(Scope.webhooks_manage, Scope.admin),
)
async def delete_webhook(webhook_id: WebhookId, runtime: RuntimeDep, principal: Manager) -> Response:
    await _subscription_for(runtime, principal, webhook_id)
    await webhooks.delete_subscription(
        runtime.db,
        subscription_id=webhook_id,
        actor=principal.audit_actor,
        signer=runtime.audit_signer,
        now=runtime.clock(),
    )
    return Response(status_code=204)


@router.get(
    "/{webhook_id}/deliveries",
    summary="List deliveries",
    description="Newest first; `status=dead` lists the dead letters. " + _NEEDS,
    response_model=DeliveriesPage,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc(Scope.webhooks_manage, Scope.admin),
)
async def list_deliveries(
    webhook_id: WebhookId,
    runtime: RuntimeDep,
    principal: Manager,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeliveriesPage:
    await _subscription_for(runtime, principal, webhook_id)
    items = await webhooks.list_deliveries(runtime.db, subscription_id=webhook_id, status=status, limit=limit)
    return DeliveriesPage(items=[DeliveryPublic.of(d) for d in items])


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    summary="Redeliver",
    description="Queues a dead delivery again with a fresh retry window (409 for any other status). " + _NEEDS,
    response_class=Response,
    responses={
        202: {"description": "queued again; no body"},
        **NOT_FOUND,
        409: problem_doc("the delivery is not dead"),
        **COMMON_PROBLEMS,
    },
    openapi_extra=scope_doc(Scope.webhooks_manage, Scope.admin),
)
async def redeliver(
    webhook_id: WebhookId,
    delivery_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    runtime: RuntimeDep,
    principal: Manager,
) -> Response:
    await _subscription_for(runtime, principal, webhook_id)
    await webhooks.redeliver(
        runtime.db,
        subscription_id=webhook_id,
        delivery_id=delivery_id,
        actor=principal.audit_actor,
        signer=runtime.audit_signer,
        now=runtime.clock(),
    )
    runtime.events.publish("*webhooks*")  # SQLite's wake-up; on PostgreSQL the NOTIFY wakes every process
    return Response(status_code=202)
