"""The tenant's facts, kept fresh in the database by workers; and discovery of new restrictions.

API processes never ask the tenant: they read what workers stored (:mod:`service.persistence.
tenant_facts`). So a worker reads the accepted domains on start and every
``DOMAINS_INTERVAL``, and the whole restricted list (one ``Get-BlockedSenderAddress``) every
``UNBLOCK_DISCOVERY_INTERVAL``, or every ``SNAPSHOT_INTERVAL`` when discovery is off, and at
once when an API process asks (``GET /v1/restricted-senders?refresh=true`` writes a request
row). With discovery on, each newly restricted sender is reported once as ``sender.restricted``
(unless an open case already covers it) and, with ``UNBLOCK_AUTO_REMEDIATE=true``, gets a case
opened by the actor ``discovery``. With several workers, a named lease in the database makes
sure only one of them reads the tenant at a time; the others only look, once a second, whether
something is due.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from service import metrics
from service.domain.findings import Containment
from service.domain.plan import RequestedActions
from service.domain.tenancy import DEFAULT_TENANT, TenantStatus
from service.errors import BridgeError, InvalidMailbox, TenantNotFound, Unavailable
from service.logging import get_logger
from service.persistence import discovery, leases, tenant_facts, tenants
from service.persistence.discovery import Sighting
from service.persistence.tenant_facts import Facts
from service.persistence.tenants import TenantRecord
from service.powershell.port import TenantGateway
from service.runtime import Runtime
from service.security.inputs import normalize_mailbox

log = get_logger(__name__)

LEASE = "discovery"
LEASE_SECONDS = 60.0
TICK_SECONDS = 1.0
#: How often the restricted list is read when discovery is off (the API serves it from the database).
SNAPSHOT_INTERVAL = 180.0
DOMAINS_INTERVAL = 600.0


def _lease(tenant: str) -> str:
    """One reader per tenant at a time (``discovery`` for ``default``, as before tenants)."""
    return LEASE if tenant == DEFAULT_TENANT else f"{LEASE}:{tenant}"


def _due(last: datetime | None, every: float, now: datetime) -> bool:
    return last is None or now - last >= timedelta(seconds=every)


class Discovery:
    """Runs on every worker process; reads the tenant only while holding the lease."""

    def __init__(self, runtime: Runtime, *, worker_id: str) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        self.interval = runtime.settings.discovery_interval
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def reporting(self) -> bool:
        """Discovery proper (report new restrictions) is on; the snapshot is kept either way."""
        return self.interval > 0

    @property
    def listing_interval(self) -> float:
        return self.interval if self.reporting else SNAPSHOT_INTERVAL

    async def start(self) -> None:
        if self.runtime.gateways is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="tenant-facts")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            with contextlib.suppress(Exception):
                await leases.release(self.runtime.db, name=LEASE, owner=self.worker_id)

    async def _tenants(self) -> list[TenantRecord]:
        return [t for t in await tenants.every(self.runtime.db, self.runtime.settings) if t.enabled]

    async def _loop(self) -> None:
        try:
            for tenant in await self._tenants():  # on start, whoever holds the lease
                with contextlib.suppress(BridgeError, TenantNotFound):
                    await self.refresh_domains(tenant.name)
        except Unavailable:
            pass
        except Exception as error:  # logged; the reads below carry on regardless
            log.error("tenant_reader_failed", error_class=type(error).__name__, exc_info=error)
        resting: dict[str, float] = {}  # a tenant whose endpoint failed rests a while (no hammering)
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                for tenant in await self._tenants():
                    if resting.get(tenant.name, 0.0) > loop.time():
                        continue
                    try:
                        await self.tick(tenant.name)
                    except (BridgeError, TenantNotFound) as error:
                        metrics.DISCOVERY_RUNS.labels(outcome="failed").inc()
                        log.warning(
                            "tenant_read_failed",
                            tenant=tenant.name,
                            error_class=type(error).__name__,
                            detail=error.message,
                        )
                        resting[tenant.name] = loop.time() + min(self.listing_interval, 30.0)
                        await self._note_failure(tenant, error)
            except Unavailable:
                pass  # the database logs its own outage, once; the next tick looks again
            except Exception as error:  # a bug must not end the tenant reader silently for good
                log.error("tenant_reader_failed", error_class=type(error).__name__, exc_info=error)
            await self._sleep(TICK_SECONDS)

    async def _note_failure(self, tenant: TenantRecord, error: Exception) -> None:
        """A stored tenant that has never connected and is refused for good is marked invalid."""
        if tenant.from_settings or tenant.status is not TenantStatus.pending:
            return
        if isinstance(error, BridgeError) and not error.retryable:
            await tenants.set_status(
                self.runtime.db,
                name=tenant.name,
                status=TenantStatus.invalid,
                detail=error.message,
                now=self.runtime.clock(),
            )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _what_is_due(self, facts: Facts, now: datetime) -> tuple[bool, bool]:
        domains = _due(facts.domains_refreshed_at, DOMAINS_INTERVAL, now)
        senders = facts.refresh_pending or _due(facts.senders_fetched_at, self.listing_interval, now)
        return domains, senders

    async def tick(self, tenant: str = DEFAULT_TENANT) -> None:
        """Read what is due of one tenant, if anything, under that tenant's lease."""
        db = self.runtime.db
        facts = await tenant_facts.load(db, tenant=tenant)
        now = self.runtime.clock()
        domains_due, senders_due = self._what_is_due(facts, now)
        if not (domains_due or senders_due):
            return
        if not await leases.acquire(db, name=_lease(tenant), owner=self.worker_id, now=now, ttl=LEASE_SECONDS):
            return
        if domains_due:
            await self.refresh_domains(tenant)
        if senders_due:
            await self.run_once(tenant=tenant)

    async def _gateway(self, tenant: str) -> TenantGateway | None:
        directory = self.runtime.gateways
        if directory is None:
            return self.runtime.gateway if tenant == DEFAULT_TENANT else None
        return await directory.for_tenant(tenant)

    async def refresh_domains(self, tenant: str = DEFAULT_TENANT) -> list[str]:
        """Read and store a tenant's accepted domains; the first success validates a stored tenant."""
        gateway = await self._gateway(tenant)
        if gateway is None:
            return []
        domains = await gateway.accepted_domains()
        now = self.runtime.clock()
        await tenant_facts.store_domains(self.runtime.db, domains=domains, now=now, tenant=tenant)
        if tenant != DEFAULT_TENANT:
            record = await tenants.get(self.runtime.db, self.runtime.settings, tenant)
            if record.status is not TenantStatus.active:
                await tenants.set_status(
                    self.runtime.db, name=tenant, status=TenantStatus.active, detail=None, now=now, validated=True
                )
        log.info("accepted_domains_refreshed", tenant=tenant, count=len(domains))
        return domains

    def _valid(self, address: str, domains: list[str]) -> bool:
        try:
            normalized = normalize_mailbox(address)
        except InvalidMailbox:
            return False
        return not domains or normalized.rsplit("@", 1)[1] in domains

    async def run_once(self, *, report: bool | None = None, tenant: str = DEFAULT_TENANT) -> list[Sighting]:
        """Read a tenant's whole restricted list, store it, and (discovery on) report what is new."""
        gateway = await self._gateway(tenant)
        if gateway is None:
            return []
        listed = await gateway.list_restrictions()
        stored = (await tenant_facts.load(self.runtime.db, tenant=tenant)).accepted_domains
        allowed = self.runtime.settings.allowed_domains if tenant == DEFAULT_TENANT else []
        domains = allowed or stored or await self.refresh_domains(tenant)
        valid = {r.sender_address.lower() for r in listed if self._valid(r.sender_address, domains)}
        settings = self.runtime.settings
        sightings = await discovery.record_listing(
            self.runtime.db,
            listed=listed,
            valid=valid,
            now=self.runtime.clock(),
            auto_remediate=settings.auto_remediate,
            require_approval=settings.require_approval,
            actions=RequestedActions().resolve(Containment(settings.containment)),
            report=self.reporting if report is None else report,
            tenant=tenant,
        )
        metrics.DISCOVERY_RUNS.labels(outcome="ok").inc()
        opened = [s for s in sightings if s.case_id and s.reported]
        if opened:
            self.runtime.work.notify()
        if sightings:
            log.info("senders_discovered", listed=len(listed), new=len(sightings), cases_opened=len(opened))
        for sighting in sightings:
            if sighting.case_id:
                self.runtime.events.publish(sighting.case_id)
        if any(s.reported for s in sightings):
            self.runtime.events.publish("*discovery*")  # SQLite's webhook wake-up (PostgreSQL: NOTIFY)
        return sightings
