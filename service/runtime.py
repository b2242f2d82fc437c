"""The parts one process runs with, built once and handed to the API and the worker.

The CLI builds a :class:`Runtime` from the settings; tests build one around a temporary
database and the sandbox. Nothing here holds logic: it is the wiring diagram.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from service.config import Settings
from service.domain.audit import AuditSigner
from service.domain.tenancy import TenantDomains
from service.domain.timeline import CaseChange
from service.persistence.db import Database
from service.persistence.records import CaseSnapshot, Claim, Lease
from service.security.destinations import DestinationPolicy, Resolver, system_resolver

if TYPE_CHECKING:
    from service.powershell.port import GatewayDirectory, TenantGateway


def utc_now() -> datetime:
    return datetime.now(UTC)


class WorkSignal:
    """A wake-up kept until the next wait: the in-process worker's when the API creates or changes a
    case, a webhook dispatcher's, a live view's watch of a case (:meth:`CaseEvents.watch`)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """True when notified (now or since the last wait), False after ``seconds``."""
        if self._event.is_set():
            self._event.clear()
            return True
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            return False
        self._event.clear()
        return True


class CaseEvents:
    """In-process news of case changes, so live views (SSE, the dashboard) react at once.

    Other processes' changes arrive through PostgreSQL NOTIFY or the views' own slow polling.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[WorkSignal]] = {}
        self.listeners: list[Callable[[str], None]] = []

    def publish(self, case_id: str) -> None:
        for signal in self._waiters.get(case_id, set()) | self._waiters.get("*", set()):
            signal.notify()
        for listener in self.listeners:
            listener(case_id)

    @contextlib.contextmanager
    def watch(self, case_id: str) -> Iterator[WorkSignal]:
        """News of ``case_id`` (``"*"``: of every case) for as long as the block runs.

        A view reads, then sends what it read, then waits: a change published while it reads or
        sends is kept for its next wait, which returns at once. A waiter made only when the view
        starts waiting would miss it, and the view would sit until its next poll.
        """
        signal = WorkSignal()
        self._waiters.setdefault(case_id, set()).add(signal)
        try:
            yield signal
        finally:
            waiters = self._waiters.get(case_id)
            if waiters is not None:
                waiters.discard(signal)
                if not waiters:
                    del self._waiters[case_id]

    async def wait(self, case_id: str, seconds: float) -> bool:
        """Did ``case_id`` change within ``seconds`` from now?"""
        with self.watch(case_id) as signal:
            return await signal.wait(seconds)


class Reservation(Protocol):
    """Room the worker in this process keeps for one case intake is creating (:meth:`LocalWorker.reserve`)."""

    @property
    def lease(self) -> Lease:
        """The lease the case is created with: the worker holds it from its first commit."""

    def start(self, case: CaseSnapshot) -> CaseChange | None:
        """The worker's start of the case's first step, decided on the case as inserted and written
        in the creating transaction; None leaves the start to the worker (as for a claimed case)."""

    def forget(self) -> None:
        """Drop what the start kept for the worker (the reset's password): the case went elsewhere."""


class LocalWorker(Protocol):
    """The worker running in this process, as intake sees it: a new case can be created already held
    by it, its first step started (:meth:`reserve`, then :meth:`take` once the case is committed, or
    :meth:`unreserve`), so that its first command goes out after one commit, without the worker
    being woken, claiming it or starting it in transactions of its own."""

    def reserve(self, now: datetime) -> Reservation | None:
        """Room for one more case; None when the worker is full or stopping."""

    def unreserve(self, reservation: Reservation) -> None:
        """The reserved case was not created (or not with the lease): forget ``reservation``."""

    def take(self, claim: Claim, reservation: Reservation) -> None:
        """Run a case created with ``reservation``."""


@dataclass
class Runtime:
    settings: Settings
    db: Database
    gateway: TenantGateway | None = None  # the settings' own tenant, ``default``
    gateways: GatewayDirectory | None = None  # every tenant's, ``default`` included (workers only)
    clock: Callable[[], datetime] = utc_now
    work: WorkSignal = field(default_factory=WorkSignal)
    events: CaseEvents = field(default_factory=CaseEvents)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    tenant_cache: tuple[float, tuple[TenantDomains, ...]] | None = None  # intake's view, re-read every 30 s
    local_worker: LocalWorker | None = None  # set by a worker running in this process
    instance: str = "unblock"

    #: How host names become addresses for the webhook destination check; tests put a stub here.
    resolver: Resolver = system_resolver

    @property
    def webhook_policy(self) -> DestinationPolicy:
        """Where webhooks may go, from the settings: never the PowerShell endpoint, whatever is allowed."""
        settings = self.settings
        return DestinationPolicy(
            allow_networks=settings.webhook_networks,
            allow_http=settings.webhook_allow_http,
            # bounded well inside an API request's deadline: a hung resolver is "does not resolve", not a 503
            resolve_timeout=min(settings.webhook_timeout, 5.0),
            reserved_endpoints=((settings.ps_server, settings.ps_port),) if settings.ps_server else (),
        )

    @cached_property
    def audit_signer(self) -> AuditSigner:
        """The keys everything this process appends to the audit log is signed with."""
        return AuditSigner.from_secrets(self.settings.audit_keys)
