"""The tenants the service acts on: the settings' own (``default``) and the rows of ``tenants``.

Reads return :class:`TenantRecord`, which never holds a secret: the remoting password stays
sealed in its row and is opened only by the worker that connects with it (:func:`sealed_password`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, inspect
from sqlmodel import col, select

from service.config import PasswordBackend, PsAuth, Settings, is_guid, is_initial_domain, is_thumbprint
from service.domain.tenancy import DEFAULT_TENANT, TenantDomains, TenantStatus, check_name
from service.errors import Conflict, InvalidInput, TenantNotFound
from service.persistence import tenant_facts
from service.persistence.db import Database
from service.persistence.models import Tenant


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """A tenant as the API, the CLI and the worker see it (no secret)."""

    name: str
    organization: str | None
    app_id: str | None
    cert_thumbprint: str | None
    tenant_id: str | None
    password_backend: str
    status: TenantStatus
    status_detail: str | None
    ps_server: str | None = None
    ps_port: int | None = None
    ps_ssl: bool | None = None
    ps_auth: str | None = None
    ps_username: str | None = None
    ps_password_set: bool = False
    ps_configuration_name: str | None = None
    from_settings: bool = False
    created_at: datetime | None = None
    validated_at: datetime | None = None

    @property
    def enabled(self) -> bool:
        return self.status is not TenantStatus.disabled

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "organization": self.organization,
            "app_id": self.app_id,
            "cert_thumbprint": self.cert_thumbprint,
            "tenant_id": self.tenant_id,
            "password_backend": self.password_backend,
            "status": self.status.value,
            "status_detail": self.status_detail,
            "endpoint": {
                "server": self.ps_server,
                "port": self.ps_port,
                "ssl": self.ps_ssl,
                "auth": self.ps_auth,
                "username": self.ps_username,
                "password_set": self.ps_password_set,
                "configuration_name": self.ps_configuration_name,
            },
            "from_settings": self.from_settings,
            "created_at": _iso(self.created_at),
            "validated_at": _iso(self.validated_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def settings_tenant(settings: Settings) -> TenantRecord:
    """``default``: the UNBLOCK_TENANT_* and UNBLOCK_PS_* settings, as the service always had them."""
    return TenantRecord(
        name=DEFAULT_TENANT,
        organization=settings.tenant_organization,
        app_id=settings.tenant_app_id,
        cert_thumbprint=settings.tenant_cert_thumbprint,
        tenant_id=settings.tenant_id,
        password_backend=settings.password_backend.value,
        status=TenantStatus.active,
        status_detail=None,
        from_settings=True,
    )


def _record(row: Tenant) -> TenantRecord:
    return TenantRecord(
        name=row.name,
        organization=row.organization,
        app_id=row.app_id,
        cert_thumbprint=row.cert_thumbprint,
        tenant_id=row.tenant_id,
        password_backend=row.password_backend,
        status=TenantStatus(row.status),
        status_detail=row.status_detail,
        ps_server=row.ps_server,
        ps_port=row.ps_port,
        ps_ssl=row.ps_ssl,
        ps_auth=row.ps_auth,
        ps_username=row.ps_username,
        ps_password_set=row.ps_password_sealed is not None,
        ps_configuration_name=row.ps_configuration_name,
        created_at=row.created_at,
        validated_at=row.validated_at,
    )


async def table_exists(db: Database) -> bool:
    """Has ``unblock migrate`` made the tenants table? Before it no tenant can be stored, and a
    command that runs before it (``unblock doctor``) knows only ``default``."""

    def has_table(connection: Connection) -> bool:
        return inspect(connection).has_table(Tenant.__tablename__)

    async with db.connect_read() as connection:
        return await connection.run_sync(has_table)


async def stored(db: Database) -> list[TenantRecord]:
    async with db.read() as session:
        rows = (await session.exec(select(Tenant).order_by(col(Tenant.name)))).all()
    return [_record(r) for r in rows]


async def every(db: Database, settings: Settings) -> list[TenantRecord]:
    """``default`` first, then the stored tenants by name.

    ``default`` is there when this process names an endpoint (UNBLOCK_PS_SERVER), when a worker
    has read it (API processes have no endpoint of their own), or when no tenant is stored (a
    single-tenant service as before tenants); an MSP that only stores tenants does not see it.
    """
    rows = await stored(db)
    own = not rows or bool(settings.ps_server)
    if not own:
        own = (await tenant_facts.load(db, tenant=DEFAULT_TENANT)).domains_refreshed_at is not None
    return [settings_tenant(settings), *rows] if own else rows


async def get(db: Database, settings: Settings, name: str) -> TenantRecord:
    if name == DEFAULT_TENANT:
        return settings_tenant(settings)
    async with db.read() as session:
        row = await session.get(Tenant, name)
    if row is None:
        raise TenantNotFound(f"no tenant {name}")
    return _record(row)


async def add(db: Database, *, row: Tenant) -> TenantRecord:
    if row.name == DEFAULT_TENANT:
        raise Conflict("`default` is the tenant of the UNBLOCK_TENANT_* settings; choose another name")
    async with db.write() as session:
        if await session.get(Tenant, row.name) is not None:
            raise Conflict(f"a tenant {row.name} exists")
        session.add(row)
    return _record(row)


async def set_status(
    db: Database,
    *,
    name: str,
    status: TenantStatus,
    detail: str | None,
    now: datetime,
    validated: bool = False,
) -> TenantRecord:
    """Record what a worker (or an operator) found; ``default`` has no row and takes no status."""
    async with db.write() as session:
        row = await session.get(Tenant, name)
        if row is None:
            raise TenantNotFound(f"no stored tenant {name}")
        row.status = status.value
        row.status_detail = detail[:500] if detail else None
        row.updated_at = now
        if validated:
            row.validated_at = now
        session.add(row)
    return _record(row)


async def sealed_password(db: Database, name: str) -> tuple[str, bytes] | None:
    """The tenant's remoting password, still sealed (key id, blob), for the worker that connects."""
    async with db.read() as session:
        row = await session.get(Tenant, name)
    if row is None or row.ps_password_sealed is None or row.ps_password_key_id is None:
        return None
    return row.ps_password_key_id, row.ps_password_sealed


async def intake_view(db: Database, settings: Settings) -> list[TenantDomains]:
    """Every tenant with whether it takes cases and its accepted domains as workers stored them.

    ``default`` keeps UNBLOCK_ALLOWED_DOMAINS when set (it applies to ``default`` only).
    """
    out: list[TenantDomains] = []
    for tenant in await every(db, settings):
        if tenant.from_settings and settings.allowed_domains:
            domains: tuple[str, ...] | None = tuple(d.lower() for d in settings.allowed_domains)
        else:
            known = (await tenant_facts.load(db, tenant=tenant.name)).accepted_domains
            domains = tuple(known) if known is not None else None
        out.append(TenantDomains(tenant.name, tenant.enabled, domains))
    return out


@dataclass(frozen=True, slots=True)
class NewTenant:
    """What `unblock tenants add` and POST /v1/tenants take (checked by :func:`check`)."""

    name: str
    organization: str
    app_id: str
    cert_thumbprint: str
    tenant_id: str | None = None
    password_backend: str = "graph"  # noqa: S105 - the name of a backend, not a password
    ps_server: str | None = None
    ps_port: int | None = None
    ps_ssl: bool | None = None
    ps_auth: str | None = None
    ps_username: str | None = None
    ps_password: str | None = None
    ps_configuration_name: str | None = None


def check(new: NewTenant) -> NewTenant:
    """One clear refusal per bad value (the settings' own rules for the same values)."""
    name = check_name(new.name)
    organization = new.organization.strip().lower()
    if not is_initial_domain(organization):
        raise InvalidInput(
            f"{new.organization!r} is not the tenant's initial domain (<name>.onmicrosoft.com): app-only "
            "Connect-ExchangeOnline does not take a vanity domain",
            field="organization",
        )
    if not is_guid(new.app_id):
        raise InvalidInput(f"{new.app_id!r} is not an application (client) id; it is a GUID", field="app_id")
    if not is_thumbprint(new.cert_thumbprint):
        raise InvalidInput("a certificate thumbprint is 40 hexadecimal digits (no spaces)", field="cert_thumbprint")
    if new.tenant_id is not None and not (is_guid(new.tenant_id) or is_initial_domain(new.tenant_id)):
        raise InvalidInput(f"{new.tenant_id!r} is not a directory (tenant) id GUID", field="tenant_id")
    if new.password_backend not in {b.value for b in PasswordBackend}:
        raise InvalidInput("password_backend is graph or ad", field="password_backend")
    if new.ps_auth is not None and new.ps_auth not in {a.value for a in PsAuth}:
        raise InvalidInput(f"ps_auth is one of {', '.join(a.value for a in PsAuth)}", field="ps_auth")
    if new.ps_port is not None and not 1 <= new.ps_port <= 65535:
        raise InvalidInput("ps_port is 1-65535", field="ps_port")
    return replace(
        new,
        name=name,
        organization=organization,
        app_id=new.app_id.strip(),
        cert_thumbprint=new.cert_thumbprint.strip().upper(),
        tenant_id=new.tenant_id.strip() if new.tenant_id else None,
    )


def row_for(new: NewTenant, *, sealed_password: tuple[str, bytes] | None, now: datetime) -> Tenant:
    return Tenant(
        name=new.name,
        organization=new.organization,
        app_id=new.app_id,
        cert_thumbprint=new.cert_thumbprint,
        tenant_id=new.tenant_id,
        password_backend=new.password_backend,
        ps_server=new.ps_server,
        ps_port=new.ps_port,
        ps_ssl=new.ps_ssl,
        ps_auth=new.ps_auth,
        ps_username=new.ps_username,
        ps_password_key_id=sealed_password[0] if sealed_password else None,
        ps_password_sealed=sealed_password[1] if sealed_password else None,
        ps_configuration_name=new.ps_configuration_name,
        status=TenantStatus.pending.value,
        created_at=now,
        updated_at=now,
    )


async def disable(db: Database, *, name: str, now: datetime) -> TenantRecord:
    if name == DEFAULT_TENANT:
        raise Conflict("`default` is the tenant of the settings; unset UNBLOCK_PS_SERVER to retire it")
    return await set_status(db, name=name, status=TenantStatus.disabled, detail="disabled by an operator", now=now)
