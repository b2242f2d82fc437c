"""/v1/tenants: the Microsoft 365 tenants the service acts on (admin).

API processes never talk to the PowerShell endpoint, so a tenant added here is stored
``pending``; a worker connects as it, stores its accepted domains and marks it ``active`` (or
``invalid``, saying why). Secrets are never returned: a remoting password is sealed when stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import Principal, requires, scope_doc
from service.api.deps import RuntimeDep
from service.api.problems import COMMON_PROBLEMS, problem_doc
from service.domain.tenancy import TenantStatus
from service.persistence import tenant_facts, tenants
from service.persistence.tenants import TenantRecord
from service.security.sealing import Sealer

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])

_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
_GUID = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
# config.is_initial_domain's rule (a DNS label, then a cloud's initial-domain suffix), in lowercase
_INITIAL_DOMAIN = r"^[a-z0-9][a-z0-9-]{0,62}\.(?:onmicrosoft\.(?:com|us)|partner\.onmschina\.cn)$"
TenantName = Annotated[str, Path(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$", description="the tenant's name")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem_doc("no such tenant")}

_EXAMPLE: dict[str, Any] = {
    "name": "fabrikam",
    "organization": "fabrikam.onmicrosoft.com",
    "app_id": "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
    "cert_thumbprint": "0123456789ABCDEF0123456789ABCDEF01234567",
    "tenant_id": None,
    "password_backend": "graph",
    "status": "active",
    "status_detail": None,
    "endpoint": {
        "server": None,
        "port": None,
        "ssl": None,
        "auth": None,
        "username": None,
        "password_set": False,
        "configuration_name": None,
    },
    "from_settings": False,
    "accepted_domains": ["fabrikam.com", "fabrikam.onmicrosoft.com"],
    "created_at": "2026-11-30T18:00:00Z",
    "validated_at": "2026-11-30T18:00:05Z",
}


class TenantCreate(BaseModel):
    """A tenant to act on: its app registration (certificate sign-in) and, optionally, its own endpoint."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "fabrikam",
                    "organization": "fabrikam.onmicrosoft.com",
                    "app_id": "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
                    "cert_thumbprint": "0123456789ABCDEF0123456789ABCDEF01234567",
                }
            ]
        },
    )

    name: str = Field(
        max_length=32, pattern=_NAME, description="lowercase letters, digits and inner hyphens (not `default`)"
    )
    organization: str = Field(
        max_length=255, pattern=_INITIAL_DOMAIN, description="the initial domain, x.onmicrosoft.com (lowercase)"
    )
    app_id: str = Field(max_length=36, pattern=_GUID, description="the app registration's application (client) id")
    cert_thumbprint: str = Field(max_length=40, pattern=r"^[0-9A-Fa-f]{40}$", description="its certificate's")
    tenant_id: str | None = Field(None, max_length=36, pattern=_GUID, description="the directory (tenant) id")
    password_backend: Literal["graph", "ad"] = "graph"  # noqa: S105 - a backend's name
    ps_server: str | None = Field(None, max_length=255, description="another runner host for this tenant")
    ps_port: int | None = Field(None, ge=1, le=65535)
    ps_ssl: bool | None = None
    ps_auth: Literal["basic", "ntlm", "negotiate", "kerberos", "credssp", "certificate"] | None = None
    ps_username: str | None = Field(None, max_length=255)
    ps_password: str | None = Field(None, max_length=1024, description="sealed when stored; never returned")
    ps_configuration_name: str | None = Field(None, max_length=255)


class EndpointPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE["endpoint"]]})

    server: str | None
    port: int | None
    ssl: bool | None
    auth: str | None
    username: str | None
    password_set: bool
    configuration_name: str | None


class TenantPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    name: str
    organization: str | None
    app_id: str | None
    cert_thumbprint: str | None
    tenant_id: str | None
    password_backend: str
    status: TenantStatus
    status_detail: str | None
    endpoint: EndpointPublic = Field(description="overrides of the UNBLOCK_PS_* endpoint (null: the settings')")
    from_settings: bool = Field(description="`default`: the UNBLOCK_TENANT_* settings, not stored")
    accepted_domains: list[str] | None = Field(description="as a worker last read them; null before")
    created_at: datetime | None
    validated_at: datetime | None


class TenantsPage(BaseModel):
    items: list[TenantPublic]


async def _public(runtime: Any, tenant: TenantRecord) -> TenantPublic:
    facts = await tenant_facts.load(runtime.db, tenant=tenant.name)
    return TenantPublic(**tenant.public(), accepted_domains=facts.accepted_domains)


@router.get(
    "",
    summary="List tenants",
    description="`default` (the settings' tenant, when an endpoint is configured), then the stored ones. "
    "Requires `admin`.",
    response_model=TenantsPage,
    responses=COMMON_PROBLEMS,
    openapi_extra=scope_doc("admin"),
)
async def list_tenants(runtime: RuntimeDep, _: Annotated[Principal, requires("admin")]) -> TenantsPage:
    return TenantsPage(items=[await _public(runtime, t) for t in await tenants.every(runtime.db, runtime.settings)])


@router.get(
    "/{name}",
    summary="Get a tenant",
    description="Never its secrets. Requires `admin`.",
    response_model=TenantPublic,
    responses={**NOT_FOUND, **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def get_tenant(name: TenantName, runtime: RuntimeDep, _: Annotated[Principal, requires("admin")]) -> TenantPublic:
    return await _public(runtime, await tenants.get(runtime.db, runtime.settings, name))


@router.post(
    "",
    status_code=201,
    summary="Add a tenant",
    description=(
        "Stores the tenant `pending`; a worker connects as it, reads its accepted domains and marks it `active` "
        "(or `invalid`, with the reason). 409 if the name is taken. Requires `admin`."
    ),
    response_model=TenantPublic,
    responses={409: problem_doc("a tenant of this name exists"), **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def create_tenant(
    body: TenantCreate, runtime: RuntimeDep, _: Annotated[Principal, requires("admin")]
) -> TenantPublic:
    new = tenants.check(tenants.NewTenant(**body.model_dump()))
    sealed = None
    if new.ps_password is not None:
        box = Sealer(runtime.settings.secret_keys).seal(new.ps_password, context=f"tenant:{new.name}")
        sealed = (box.key_id, box.blob)
    record = await tenants.add(runtime.db, row=tenants.row_for(new, sealed_password=sealed, now=runtime.clock()))
    runtime.tenant_cache = None
    return await _public(runtime, record)


@router.post(
    "/{name}/disable",
    summary="Disable a tenant",
    description="It takes no new cases; its cases and their history stay. Requires `admin`.",
    response_model=TenantPublic,
    responses={**NOT_FOUND, 409: problem_doc("`default` cannot be disabled here"), **COMMON_PROBLEMS},
    openapi_extra=scope_doc("admin"),
)
async def disable_tenant(
    name: TenantName, runtime: RuntimeDep, _: Annotated[Principal, requires("admin")]
) -> TenantPublic:
    record = await tenants.disable(runtime.db, name=name, now=runtime.clock())
    runtime.tenant_cache = None
    return await _public(runtime, record)
