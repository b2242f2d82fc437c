"""Webhook delivery: signed per Standard Webhooks, retried with backoff for up to a day, then dead.

Deliveries are taken from the outbox's rows in order per subscription and case (an event is not
sent before the earlier events of the same case reached that subscription), signed with the
``standardwebhooks`` library (headers ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
and POSTed as JSON. A 2xx is success; anything else is retried with exponential backoff until
``UNBLOCK_WEBHOOK_MAX_AGE``, then dead-lettered, visible through the API with a redeliver action.

Every attempt checks the receiver's address again and connects only to an address it allowed
(:mod:`service.notifications.transport`), without following redirects. A failure is stored as a
category (``timeout``, ``connect_failed``, ``tls``, ``refused_address``, ``http_<status>``), never
as the exception's text, which would tell the subscriber what answers inside the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta

import httpx
from standardwebhooks.webhooks import Webhook

from service import metrics
from service.domain.retry import RetryPolicy, backoff_seconds
from service.errors import RefusedDestination, Unavailable, UnresolvableHost
from service.logging import get_logger
from service.notifications.transport import CheckedDestinationTransport, failure_category
from service.persistence import webhooks
from service.persistence.listen import listen
from service.persistence.outbox import WEBHOOK_CHANNEL
from service.persistence.webhooks import DueDelivery
from service.runtime import Runtime, WorkSignal
from service.security.sealing import Sealed, Sealer

log = get_logger(__name__)

USER_AGENT = "unblock-service-webhooks/1"


def sign(secret: str, *, msg_id: str, at: datetime, body: str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


class WebhookDispatcher:
    def __init__(self, runtime: Runtime, *, worker_id: str, concurrency: int = 8) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.policy = RetryPolicy(
            initial_interval=settings.webhook_retry_initial,
            maximum_interval=max(settings.webhook_retry_max, settings.webhook_retry_initial),
            maximum_attempts=10_000,
            jitter=0.1,
        )
        self.max_age = settings.webhook_max_age
        self.timeout = settings.webhook_timeout
        self.signal = WorkSignal()
        self._sealer = Sealer(settings.secret_keys)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def poke(self) -> None:
        self.signal.notify()

    async def start(self) -> None:
        if not self.runtime.db.is_postgres:
            # SQLite has no NOTIFY: every change published in this process may have made a
            # delivery. On PostgreSQL the outbox notifies only when it did, so a case's steps
            # (which mostly fan out to nobody) do not each cost this loop two transactions.
            self.runtime.events.listeners.append(lambda _: self.poke())
        transport = CheckedDestinationTransport(
            policy=lambda: self.runtime.webhook_policy, resolver=lambda: self.runtime.resolver
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=self.timeout,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
            trust_env=False,
        )
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._loop(), name="webhook-delivery"))
        if self.runtime.db.is_postgres:
            self._tasks.append(
                loop.create_task(listen(self.runtime.db.url, lambda _: self.poke(), channel=WEBHOOK_CHANNEL))
            )

    async def stop(self) -> None:
        self._stopping.set()
        self.poke()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            await self._client.aclose()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                due = await webhooks.claim_due(
                    self.runtime.db,
                    worker_id=self.worker_id,
                    now=self.runtime.clock(),
                    lease=self.timeout * 3,
                    limit=self.concurrency,
                )
            except Unavailable:
                await self.signal.wait(2.0)
                continue
            if due:
                await asyncio.gather(*(self._deliver(d) for d in due))
                continue
            await self.signal.wait(await self._sleep_for())

    async def _sleep_for(self) -> float:
        try:
            nxt = await webhooks.next_due_at(self.runtime.db)
        except Unavailable:
            return 2.0
        if nxt is None:
            return 30.0
        return max(0.0, min(30.0, (nxt - self.runtime.clock()).total_seconds() + 0.01))

    async def _deliver(self, delivery: DueDelivery) -> None:
        assert self._client is not None
        now = self.runtime.clock()
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
        secret = self._sealer.open(
            Sealed(delivery.secret_key_id, delivery.secret_sealed), context=delivery.subscription_id
        )
        headers = {
            "Content-Type": "application/json",
            **sign(secret, msg_id=f"evt_{delivery.event_id}", at=now, body=body),
        }
        status: int | None = None
        error: str | None = None
        error_class: str | None = None
        try:
            response = await self._client.post(delivery.url, content=body.encode("utf-8"), headers=headers)
            status = response.status_code
            ok = 200 <= status < 300
            if not ok:
                error = f"http_{status}"
        except (RefusedDestination, httpx.InvalidURL) as failure:
            ok, error, error_class = False, "refused_address", type(failure).__name__
        except UnresolvableHost as failure:
            ok, error, error_class = False, "connect_failed", type(failure).__name__
        except httpx.HTTPError as failure:
            ok, error, error_class = False, failure_category(failure), type(failure).__name__
        attempt = delivery.attempts + 1
        next_at: datetime | None = None
        if not ok:
            next_at = now + timedelta(seconds=backoff_seconds(self.policy, attempt))
            if next_at - delivery.created_at > timedelta(seconds=self.max_age):
                next_at = None
        outcome = "delivered" if ok else ("dead" if next_at is None else "retrying")
        metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
        log.info(
            "webhook_delivered" if ok else "webhook_failed",
            delivery_id=delivery.id,
            event_type=delivery.payload.get("type"),
            status=status,
            attempt=attempt,
            outcome=outcome,
            error=error,
            error_class=error_class,
        )
        await webhooks.record_outcome(
            self.runtime.db,
            delivery_id=delivery.id,
            worker_id=self.worker_id,
            now=self.runtime.clock(),
            delivered=ok,
            status_code=status,
            error=error,
            next_attempt_at=next_at,
        )
