"""The worker: claims due cases and runs them, up to ``concurrency`` at a time.

It sleeps until something is due: woken at once by the in-process signal (a case created in
this process) or by PostgreSQL NOTIFY (created elsewhere), by a timer set to the earliest
scheduled action or lease expiry, and by a slow fallback poll for anything missed. It never
sleeps in a loop to find work. On stop it claims nothing more, lets running steps finish for
a grace period, and releases what it still holds, so another worker can take over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from service.errors import Unavailable
from service.logging import get_logger
from service.persistence import cases, credentials
from service.persistence.listen import listen
from service.persistence.records import Claim, Lease
from service.runtime import Reservation, Runtime
from service.worker.engine import Engine, Opening

log = get_logger(__name__)

HOUSEKEEPING_INTERVAL = 60.0
CLAIM_RETRY_MAX = 2.0
#: Cases a worker runs at once per warm runspace, unless told otherwise. A case spends part of each
#: step writing to the database, not at the tenant; with one more case per runspace, the runspace
#: it leaves runs another case's command meanwhile instead of standing idle (the bench's throughput).
CASES_PER_RUNSPACE = 2


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class Worker:
    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        grace: float = 20.0,
    ) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.worker_id = worker_id or new_worker_id()
        self.concurrency = concurrency or settings.worker_concurrency or CASES_PER_RUNSPACE * settings.ps_pool_size
        self.poll_interval = settings.poll_interval
        self.lease = settings.worker_lease
        self.grace = grace
        self.engine = Engine(runtime, worker_id=self.worker_id)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0  # cases intake in this process is creating with our lease (LocalWorker)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def busy(self) -> int:
        return len(self._inflight)

    def now(self) -> datetime:
        return self.runtime.clock()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._dispatch(), name="worker-dispatch"))
        self._tasks.append(loop.create_task(self._housekeeping(), name="worker-housekeeping"))
        if self.runtime.db.is_postgres:
            self._tasks.append(
                loop.create_task(
                    listen(self.runtime.db.url, lambda _: self.runtime.work.notify()), name="worker-listen"
                )
            )
        if self.runtime.local_worker is None:
            self.runtime.local_worker = self
        log.info("worker_started", worker_id=self.worker_id, concurrency=self.concurrency)

    async def stop(self) -> None:
        self._stopping.set()
        if self.runtime.local_worker is self:
            self.runtime.local_worker = None
        self.runtime.work.notify()
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=self.grace)
        unfinished = list(self._inflight)
        for task in self._inflight.values():
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for task in [*self._tasks, *self._inflight.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for case_id in unfinished:
            with contextlib.suppress(Exception):
                await cases.release_lease(self.runtime.db, case_id=case_id, worker_id=self.worker_id)
        log.info("worker_stopped", worker_id=self.worker_id, released=len(unfinished))

    # --- the loop --------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        backoff = 0.25
        while not self._stopping.is_set():
            free = self._free()
            try:
                claimed = await self._claim(free)
                backoff = 0.25
            except Unavailable:
                # The database logs the outage once (database_unavailable); claiming again is the probe
                # for its return, capped so that recovery is seen within CLAIM_RETRY_MAX seconds.
                await self.runtime.work.wait(backoff)
                backoff = min(backoff * 2, CLAIM_RETRY_MAX)
                continue
            if claimed and claimed == free:
                continue  # the claim was full: there may be more
            await self.runtime.work.wait(await self._sleep_for())

    async def _claim(self, free: int) -> int:
        """Claim up to ``free`` due cases and start them; how many were claimed."""
        if free <= 0:
            return 0
        claims = await cases.claim_due(
            self.runtime.db, worker_id=self.worker_id, now=self.now(), lease=self.lease, limit=free
        )
        for claim in claims:
            self._inflight[claim.case_id] = asyncio.get_running_loop().create_task(self._run(claim))
        return len(claims)

    def _free(self) -> int:
        return self.concurrency - len(self._inflight) - self._reserved

    # --- cases created in this process (service.runtime.LocalWorker) ------------------------------

    def reserve(self, now: datetime) -> Opening | None:
        if self._stopping.is_set() or self._free() <= 0:
            return None
        self._reserved += 1
        return self.engine.opening(Lease(owner=self.worker_id, until=now + timedelta(seconds=self.lease)), now)

    def unreserve(self, reservation: Reservation) -> None:
        self._reserved -= 1
        reservation.forget()

    def take(self, claim: Claim, reservation: Reservation) -> None:
        self._reserved -= 1
        if self._stopping.is_set():  # held by us, but we are going: let another worker have it at once
            reservation.forget()  # it starts the step again, with the password stored with it
            release = cases.release_lease(self.runtime.db, case_id=claim.case_id, worker_id=self.worker_id)
            task = asyncio.get_running_loop().create_task(release)
            self.runtime.background.add(task)
            task.add_done_callback(self.runtime.background.discard)
            return
        # A context of its own, as a claimed case has: not the creating request's (its request id,
        # its principal), which would otherwise label every line the worker logs for the case.
        opened = reservation if isinstance(reservation, Opening) else None
        task = asyncio.get_running_loop().create_task(self._run(claim, opened), context=contextvars.Context())
        self._inflight[claim.case_id] = task

    async def _sleep_for(self) -> float:
        if self._free() <= 0:
            return self.poll_interval  # a finishing case wakes us
        try:
            due = await cases.next_due_at(self.runtime.db, now=self.now())
        except Unavailable:
            return 1.0
        if due is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, (due - self.now()).total_seconds() + 0.01))

    async def _run(self, claim: Claim, opened: Opening | None = None) -> None:
        try:
            await self.engine.process(claim, opened)
        except asyncio.CancelledError:
            raise
        except Unavailable as error:  # not expected (the engine waits outages out), but never an error line
            log.warning("case_processing_interrupted", case_id=claim.case_id, detail=error.message)
        except Exception as error:
            log.error(
                "case_processing_crashed", case_id=claim.case_id, error_class=type(error).__name__, exc_info=error
            )
            with contextlib.suppress(Exception):
                await cases.release_lease(self.runtime.db, case_id=claim.case_id, worker_id=self.worker_id)
        finally:
            self._inflight.pop(claim.case_id, None)
            self.runtime.work.notify()

    async def _housekeeping(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(Unavailable):
                expired = await credentials.expire(self.runtime.db, now=self.now())
                if expired:
                    log.info("credentials_expired", count=expired)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HOUSEKEEPING_INTERVAL)


@asynccontextmanager
async def running_worker(runtime: Runtime, **options: object) -> AsyncIterator[Worker]:
    worker = Worker(runtime, **options)  # type: ignore[arg-type]
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
