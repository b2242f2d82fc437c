"""Discovery: poll the whole restricted list so a ticket can be opened before the user complains.

Every ``UNBLOCK_DISCOVERY_INTERVAL`` one ``Get-BlockedSenderAddress`` (the full list) is compared
with what was seen before. Each newly restricted sender is reported once as ``sender.restricted``
(unless an open case already covers it) and, with ``UNBLOCK_AUTO_REMEDIATE=true``, gets a case
opened by the actor ``discovery``. With several workers, a named lease in the database makes
sure only one of them polls at a time.
"""

from __future__ import annotations

import asyncio
import contextlib

from service import metrics
from service.errors import BridgeError, InvalidMailbox, Unavailable
from service.logging import get_logger
from service.persistence import discovery, leases
from service.persistence.discovery import Sighting
from service.runtime import Runtime
from service.security.inputs import normalize_mailbox

log = get_logger(__name__)

LEASE = "discovery"


class Discovery:
    def __init__(self, runtime: Runtime, *, worker_id: str) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        self.interval = runtime.settings.discovery_interval
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval > 0 and self.runtime.gateway is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="discovery")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            with contextlib.suppress(Exception):
                await leases.release(self.runtime.db, name=LEASE, owner=self.worker_id)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if await leases.acquire(
                    self.runtime.db, name=LEASE, owner=self.worker_id, now=self.runtime.clock(), ttl=self.interval * 2
                ):
                    await self.run_once()
            except (BridgeError, Unavailable) as error:
                metrics.DISCOVERY_RUNS.labels(outcome="failed").inc()
                log.warning("discovery_failed", error_class=type(error).__name__, detail=error.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def _valid(self, address: str, domains: list[str]) -> bool:
        try:
            normalized = normalize_mailbox(address)
        except InvalidMailbox:
            return False
        return not domains or normalized.rsplit("@", 1)[1] in domains

    async def run_once(self) -> list[Sighting]:
        gateway = self.runtime.gateway
        if gateway is None:
            return []
        listed = await gateway.list_restrictions()
        domains = self.runtime.settings.allowed_domains or await gateway.accepted_domains()
        valid = {r.sender_address.lower() for r in listed if self._valid(r.sender_address, domains)}
        settings = self.runtime.settings
        sightings = await discovery.record_listing(
            self.runtime.db,
            listed=listed,
            valid=valid,
            now=self.runtime.clock(),
            auto_remediate=settings.auto_remediate,
            require_approval=settings.require_approval,
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
