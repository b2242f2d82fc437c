"""One gateway per tenant: a runspace pool connected with that tenant's identity, and only that.

A runspace runs Connect-ExchangeOnline and Connect-MgGraph once, with one tenant's app id,
certificate and organization (or, on a JEA endpoint, opens that tenant's session configuration
``UnblockRunner-<name>``, whose startup script connects as it), so a pool serves one tenant and a
case's commands run only in its tenant's pool. ``default`` is the settings' own gateway; the
others are built the first time a worker needs them, from the tenant's stored record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from service.config import PasswordBackend, PsAuth, Settings
from service.domain.tenancy import DEFAULT_TENANT
from service.errors import TenantNotFound
from service.logging import get_logger
from service.persistence import tenants
from service.persistence.db import Database
from service.persistence.tenants import TenantRecord
from service.powershell.budget import RunspaceBudget
from service.powershell.port import TenantGateway
from service.security.sealing import Sealed, Sealer, SealingError

log = get_logger(__name__)

#: The JEA session configuration the installer registers for the first tenant; others get a suffix.
RUNNER_CONFIGURATION = "UnblockRunner"


def tenant_settings(settings: Settings, tenant: TenantRecord, *, password: str | None = None) -> Settings:
    """The settings a tenant's bridge runs with: its identity, and the endpoint with its overrides."""
    update: dict[str, Any] = {
        "tenant_organization": tenant.organization,
        "tenant_app_id": tenant.app_id,
        "tenant_cert_thumbprint": tenant.cert_thumbprint,
        "tenant_id": tenant.tenant_id,
        "password_backend": PasswordBackend(tenant.password_backend),
    }
    for field in ("ps_server", "ps_port", "ps_ssl", "ps_username"):
        value = getattr(tenant, field)
        if value is not None:
            update[field] = value
    if tenant.ps_auth is not None:
        update["ps_auth"] = PsAuth(tenant.ps_auth)
    if password is not None:
        update["ps_password"] = password
        update["ps_password_file"] = None
    if tenant.ps_configuration_name:
        update["ps_configuration_name"] = tenant.ps_configuration_name
    elif settings.ps_configuration_name == RUNNER_CONFIGURATION:
        update["ps_configuration_name"] = f"{RUNNER_CONFIGURATION}-{tenant.name}"
    # model_copy does not validate: every value above already has its field's type.
    return settings.model_copy(update=update)


async def tenant_password(db: Database, settings: Settings, name: str) -> str | None:
    """A stored tenant's remoting password, opened (None when it has none of its own).

    It is sealed like temporary passwords, bound to ``tenant:<name>``; opening it needs one of
    the service's UNBLOCK_SECRET_KEY values (SealingError otherwise).
    """
    sealed = await tenants.sealed_password(db, name)
    if sealed is None:
        return None
    if not settings.secret_keys:
        raise SealingError(f"UNBLOCK_SECRET_KEY: required to open tenant {name}'s sealed remoting password")
    return Sealer(settings.secret_keys).open(Sealed(*sealed), context=f"tenant:{name}")


class Gateways:
    """The gateways of this process, by tenant name."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        default: TenantGateway | None,
        factory: Callable[..., TenantGateway],
        budget: RunspaceBudget | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.factory = factory
        # UNBLOCK_PS_POOL_SIZE caps the runspaces of every tenant's pool together (the default's too).
        self.budget = budget or RunspaceBudget(settings.ps_pool_size)
        self._gateways: dict[str, TenantGateway] = {}
        if default is not None:
            self._gateways[DEFAULT_TENANT] = default
        self._lock = asyncio.Lock()

    @property
    def default(self) -> TenantGateway | None:
        return self._gateways.get(DEFAULT_TENANT)

    def started(self) -> dict[str, TenantGateway]:
        return dict(self._gateways)

    async def for_tenant(self, name: str) -> TenantGateway:
        """The tenant's gateway, built and started on first use. Raises TenantNotFound for a tenant
        that is unknown or disabled (its cases wait, fail or escalate like any other refusal)."""
        found = self._gateways.get(name)
        if found is not None:
            return found
        async with self._lock:
            found = self._gateways.get(name)
            if found is not None:
                return found
            tenant = await tenants.get(self.db, self.settings, name)
            if not tenant.enabled:
                raise TenantNotFound(f"tenant {name} is disabled")
            password = await tenant_password(self.db, self.settings, name)
            gateway = self.factory(tenant_settings(self.settings, tenant, password=password), budget=self.budget)
            await gateway.start()
            self._gateways[name] = gateway
            log.info("tenant_gateway_started", tenant=name)
            return gateway

    async def forget(self, name: str) -> None:
        """Close a tenant's gateway (its identity or endpoint changed, or it was disabled)."""
        gateway = self._gateways.pop(name, None) if name != DEFAULT_TENANT else None
        if gateway is not None:
            await gateway.close()

    async def close(self) -> None:
        for gateway in self._gateways.values():
            await gateway.close()
        self._gateways.clear()
