"""The FastAPI application factory.

``create_app`` takes a :class:`~service.runtime.Runtime` and optional background services
(the in-process worker, webhook delivery, discovery), each an async context manager entered
for the lifetime of the app. The API itself never imports the worker: the CLI decides what
runs beside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.utils import generate_unique_id
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from service import __version__
from service.api import docs, errors, openapi_doc, ui
from service.api.deps import strict_query
from service.api.middleware import (
    BodyLimitMiddleware,
    DeadlineMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from service.api.problems import Problem
from service.api.routes import cases, health, senders, tenants, webhooks
from service.api.routes import metrics as metrics_route
from service.config import parse_networks
from service.runtime import Runtime
from service.security.oidc import OidcVerifier
from service.security.ratelimit import RateLimiter

Background = Callable[[], AbstractAsyncContextManager[object]]

DESCRIPTION = """
Brings Microsoft 365 accounts back from Exchange Online's restricted-sender list, following
Microsoft's procedure: reset the password at once (never e-mailed), look the sender up with
`Get-BlockedSenderAddress`, unblock it with `Remove-BlockedSenderAddress`, then wait for
sending to come back while watching for a re-block.

Each request opens a **case**, a durable state machine the service drives to the end.
Errors are `application/problem+json` (RFC 9457). Authenticate with
`Authorization: Bearer <api key>`; each operation names the scope it needs.
"""

TAGS = [
    {"name": "cases", "description": "Open, follow and steer unblock cases."},
    {"name": "credentials", "description": "The temporary password, revealed once."},
    {"name": "senders", "description": "The tenant's live restricted-sender list."},
    {"name": "webhooks", "description": "Signed event deliveries to ticketing systems."},
    {"name": "tenants", "description": "The Microsoft 365 tenants the service acts on (an MSP runs many)."},
    {"name": "health", "description": "Liveness, readiness and metrics."},
]


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are application/problem+json (RFC 9457), whatever FastAPI assumed."""
    problem = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation:  # answered before any route code runs
                responses = operation.setdefault("responses", {})
                responses.setdefault(
                    "400", {"description": "the body could not be decoded at all (text that is not JSON is 422)"}
                )
                responses.setdefault("413", {"description": "the body is larger than UNBLOCK_MAX_BODY_BYTES"})
            for code, response in operation.get("responses", {}).items():
                if code.isdigit() and int(code) >= 400:
                    content = response.get("content", {})
                    found = (content.get("application/json") or {}).get("schema")
                    if found == {"$ref": "#/components/schemas/HTTPValidationError"}:
                        found = problem
                    response["content"] = {"application/problem+json": {"schema": found or problem}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


#: The operationId of every operation, by the name of its route function: what generated clients call
#: their methods (``client.create_case``), so they are chosen here rather than derived from paths.
OPERATION_IDS: dict[str, str] = {
    "create_case": "createCase",
    "list_cases": "listCases",
    "get_case": "getCase",
    "case_events": "listCaseEvents",
    "stream_case_events": "streamCaseEvents",
    "approve": "approveCase",
    "cancel": "cancelCase",
    "retry": "retryCase",
    "reveal": "revealCredential",
    "create_webhook": "createWebhook",
    "list_webhooks": "listWebhooks",
    "get_webhook": "getWebhook",
    "delete_webhook": "deleteWebhook",
    "list_deliveries": "listWebhookDeliveries",
    "redeliver": "redeliverWebhookDelivery",
    "restricted_senders": "listRestrictedSenders",
    "list_tenants": "listTenants",
    "get_tenant": "getTenant",
    "create_tenant": "createTenant",
    "disable_tenant": "disableTenant",
    "prometheus": "getMetrics",
    "healthz": "getHealth",
    "readyz": "getReadiness",
}


def operation_id(route: APIRoute) -> str:
    """Described operations have a chosen id (tests/api/test_openapi.py checks every one has);
    the dashboard's routes, outside the description, keep FastAPI's default."""
    return OPERATION_IDS.get(route.name) or generate_unique_id(route)


def create_app(runtime: Runtime, *, background: Sequence[Background] = ()) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for service in background:
                await stack.enter_async_context(service())
            yield

    app = FastAPI(
        generate_unique_id_function=operation_id,
        title="unblock-service",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,  # service.api.docs serves /docs without a CDN or inline script
        redoc_url=None,
    )
    app.state.runtime = runtime
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_doc.complete(_problem_media_types(build_openapi()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    settings = runtime.settings
    app.state.rate_limiter = RateLimiter(settings.rate_limit, settings.rate_limit_storage)
    app.state.auth_failures = RateLimiter(settings.auth_failure_limit, settings.rate_limit_storage)
    app.state.trusted_proxies = parse_networks(settings.trusted_proxies)
    if settings.oidc_jwks_url and settings.oidc_issuer and settings.oidc_audience:  # the settings require all three
        app.state.oidc = OidcVerifier(
            jwks_url=settings.oidc_jwks_url,
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            scope_claim=settings.oidc_scope_claim,
            tenant_id=settings.oidc_tenant_id,
            tenants_claim=settings.oidc_tenants_claim,
        )
    errors.install(app)
    app.include_router(cases.router, dependencies=[Depends(strict_query)])
    app.include_router(webhooks.router, dependencies=[Depends(strict_query)])
    app.include_router(senders.router, dependencies=[Depends(strict_query)])
    app.include_router(tenants.router, dependencies=[Depends(strict_query)])
    app.include_router(metrics_route.router)
    app.include_router(ui.router)
    docs.install(app)
    app.mount("/ui/static", StaticFiles(directory=str(Path(ui.__file__).parent / "static")), name="ui-static")
    app.include_router(health.router)
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_deadline)
    app.add_middleware(BodyLimitMiddleware, max_bytes=runtime.settings.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origins:  # off unless asked for: the API is for servers, not browsers elsewhere
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
        )
    app.add_middleware(RequestContextMiddleware)
    return app
