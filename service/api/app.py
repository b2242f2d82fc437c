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
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from service import __version__
from service.api import errors, ui
from service.api.deps import strict_query
from service.api.middleware import BodyLimitMiddleware, RequestContextMiddleware, SecurityHeadersMiddleware
from service.api.problems import Problem
from service.api.routes import cases, health, senders, webhooks
from service.api.routes import metrics as metrics_route
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
    {"name": "health", "description": "Liveness, readiness and metrics."},
]


def _problem_media_types(schema: dict[str, Any]) -> dict[str, Any]:
    """Error responses are application/problem+json (RFC 9457), whatever FastAPI assumed."""
    problem = {"$ref": "#/components/schemas/Problem"}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "requestBody" in operation:  # answered before any route code runs
                responses = operation.setdefault("responses", {})
                responses.setdefault("400", {"description": "the body is not parseable JSON"})
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


def create_app(runtime: Runtime, *, background: Sequence[Background] = ()) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for service in background:
                await stack.enter_async_context(service())
            yield

    app = FastAPI(
        title="unblock-service",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.runtime = runtime
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_media_types(build_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    settings = runtime.settings
    app.state.rate_limiter = RateLimiter(settings.rate_limit, settings.rate_limit_storage)
    if settings.oidc_jwks_url:
        app.state.oidc = OidcVerifier(
            jwks_url=settings.oidc_jwks_url,
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            scope_claim=settings.oidc_scope_claim,
        )
    errors.install(app)
    app.include_router(cases.router, dependencies=[Depends(strict_query)])
    app.include_router(webhooks.router, dependencies=[Depends(strict_query)])
    app.include_router(senders.router, dependencies=[Depends(strict_query)])
    app.include_router(metrics_route.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=str(Path(ui.__file__).parent / "static")), name="ui-static")
    app.include_router(health.router)
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
