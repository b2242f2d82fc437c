"""Driving one claimed case: claim → decide → run step → record, until it has to wait.

The engine keeps its lease while the next step is due at once (so a case runs its account
steps, lookup, unblock and verification back to back) and lets it go when the case waits for a
retry, the propagation period or a person. Each write is a compare-and-set; losing one means
someone else changed the case (a cancel, or another worker after our lease ran out), and the
engine stops touching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from service import metrics
from service.domain import decide as rules
from service.domain.password import generate_password
from service.domain.retry import RetryPolicy
from service.domain.states import StepName, StepStatus
from service.logging import bound, get_logger, secret_in_flight
from service.persistence import cases
from service.persistence.records import CaseSnapshot, Claim
from service.runtime import Runtime
from service.security.sealing import Sealed, Sealer
from service.worker.steps import Outcome, perform

log = get_logger(__name__)


class Engine:
    def __init__(self, runtime: Runtime, *, worker_id: str) -> None:
        self.runtime = runtime
        self.worker_id = worker_id
        settings = runtime.settings
        self.lease = settings.worker_lease
        self.policy = RetryPolicy(
            initial_interval=settings.retry_initial,
            maximum_interval=max(settings.retry_max, settings.retry_initial),
            maximum_attempts=settings.retry_attempts,
            maximum_outage_attempts=max(settings.retry_outage_attempts, settings.retry_attempts),
        )
        self.timing = rules.Timing(
            propagation_wait=settings.propagation_wait, recheck_interval=settings.recheck_interval
        )
        self.sealer = Sealer(settings.secret_keys)
        self.random = random.Random()

    def now(self) -> datetime:
        return self.runtime.clock()

    async def process(self, claim: Claim) -> None:
        with bound(case_id=claim.case_id, worker_id=self.worker_id):
            case = await cases.load_claimed(self.runtime.db, case_id=claim.case_id)
            if case.lease_owner != self.worker_id:
                return
            while True:
                step = rules.next_step(case.view())
                now = self.now()
                if step is None or case.next_action_at is None or case.next_action_at > now:
                    await cases.release_lease(self.runtime.db, case_id=case.id, worker_id=self.worker_id)
                    return
                after = await self._run_step(case, step)
                if after is None:
                    return
                case = after
                if case.lease_owner != self.worker_id:
                    return

    async def _run_step(self, case: CaseSnapshot, step: StepName) -> CaseSnapshot | None:
        db = self.runtime.db
        now = self.now()
        password, new_secret = await self._password_for(case, step)
        started = await cases.start_step(
            db,
            case=case,
            worker_id=self.worker_id,
            step=step,
            action=rules.begin(case.view(), step),
            now=now,
            lease_until=now + timedelta(seconds=self.lease),
            new_secret=new_secret,
        )
        if started is None:
            log.info("case_lost", step=step.value, reason="changed before the step started")
            return None
        gateway = self.runtime.gateway
        if gateway is None:
            raise RuntimeError("the worker needs a PowerShell endpoint (UNBLOCK_PS_SERVER or --sandbox)")
        view_step = started.view().step(step)
        with bound(step=step.value, attempt=view_step.attempts):
            log.info("step_started", from_state=case.state, to_state=started.state)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with password_guard(password):
                outcome = await self._with_heartbeat(
                    started.id,
                    perform(step, started, gateway, password=password, precheck=rules.needs_precheck(view_step)),
                )
            duration_ms = round((loop.time() - began) * 1000, 1)
            return await self._record(started, step, outcome, duration_ms)

    async def _record(
        self, case: CaseSnapshot, step: StepName, outcome: Outcome, duration_ms: float
    ) -> CaseSnapshot | None:
        now = self.now()
        decision = rules.decide(
            case.view(), step, outcome.result, now, policy=self.policy, timing=self.timing, spread=self.random.random()
        )
        keep = decision.next_action_at is not None and decision.next_action_at <= now
        recorded = await cases.record_decision(
            self.runtime.db,
            case=case,
            decision=decision,
            now=now,
            actor="worker",
            worker_id=self.worker_id,
            step=step,
            keep_lease_until=now + timedelta(seconds=self.lease) if keep else None,
            detail=outcome.detail,
            credential_ttl=self.runtime.settings.credential_ttl,
        )
        failed = isinstance(outcome.result, rules.Failed)
        metrics.STEP_DURATION.labels(step=step.value).observe(duration_ms / 1000)
        if isinstance(outcome.result, rules.Failed):
            metrics.STEP_FAILURES.labels(step=step.value, code=outcome.result.code).inc()
        log.info(
            "step_failed" if failed else "step_succeeded",
            duration_ms=duration_ms,
            error_class=outcome.result.code if isinstance(outcome.result, rules.Failed) else None,
            retryable=outcome.result.retryable if isinstance(outcome.result, rules.Failed) else None,
        )
        if recorded is None:
            await self._late(case, step, outcome, now)
            return None
        if decision.changes_state:
            metrics.TRANSITIONS.labels(from_state=case.state, to_state=recorded.state).inc()
            log.info("case_transitioned", from_state=case.state, to_state=recorded.state, outcome=recorded.outcome)
        self.runtime.events.publish(recorded.id)
        return recorded

    async def _late(self, case: CaseSnapshot, step: StepName, outcome: Outcome, now: datetime) -> None:
        current = await cases.get_case(self.runtime.db, case_id=case.id)
        if current.state == "cancelled":
            status = StepStatus.failed if isinstance(outcome.result, rules.Failed) else StepStatus.succeeded
            error = outcome.result.as_error() if isinstance(outcome.result, rules.Failed) else None
            await cases.record_late_result(
                self.runtime.db, case_id=case.id, step=step, status=status, error=error, now=now
            )
            log.info("step_finished_after_cancel", step=step.value, status=status.value)
        else:
            log.warning("case_lost", step=step.value, reason="lease taken over; result dropped", state=current.state)

    async def _password_for(self, case: CaseSnapshot, step: StepName) -> tuple[str | None, cases.SealedSecret | None]:
        """The reset's password: sealed and stored before the first attempt, reused by retries."""
        if step is not StepName.reset_password:
            return None, None
        existing = await cases.load_secret(self.runtime.db, case_id=case.id)
        if existing is not None:
            return self.sealer.open(Sealed(existing.key_id, existing.blob), context=case.id), None
        password = generate_password()
        sealed = self.sealer.seal(password, context=case.id)
        return password, cases.SealedSecret(key_id=sealed.key_id, blob=sealed.blob)

    async def _with_heartbeat(self, case_id: str, work: Coroutine[Any, Any, Outcome]) -> Outcome:
        async def beat() -> None:
            while True:
                await asyncio.sleep(max(self.lease / 3, 0.2))
                until = self.now() + timedelta(seconds=self.lease)
                if not await cases.extend_lease(
                    self.runtime.db, case_id=case_id, worker_id=self.worker_id, until=until
                ):
                    log.warning("lease_lost", case_id=case_id)
                    return

        heart = asyncio.get_running_loop().create_task(beat())
        try:
            return await work
        finally:
            heart.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await heart


def password_guard(password: str | None) -> contextlib.AbstractContextManager[None]:
    return secret_in_flight(password) if password else contextlib.nullcontext()
