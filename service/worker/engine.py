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
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from service import metrics
from service.domain import decide as rules
from service.domain import timeline
from service.domain.password import generate_password
from service.domain.retry import RetryPolicy
from service.domain.states import TERMINAL_STATES, CaseState, StepName, StepStatus
from service.domain.tenancy import DEFAULT_TENANT, TenantDomains, route
from service.domain.tenant import Restriction
from service.domain.timeline import CaseChange, CredentialChange, CredentialMove
from service.domain.transitions import apply
from service.errors import BridgeError, ConcurrentUpdate, ForeignMailbox, InvalidInput, TenantNotFound, Unavailable
from service.logging import bound, get_logger, secret_in_flight
from service.persistence import cases, tenant_facts, tenants, writer
from service.persistence.records import CaseSnapshot, Claim, Lease
from service.persistence.writer import Along, SealedSecret, Written, change_case
from service.powershell.port import GatewayDirectory, TenantGateway
from service.runtime import Runtime
from service.security.sealing import Sealed, Sealer
from service.worker.steps import StepContext, StepOutcome, failed, perform

log = get_logger(__name__)

#: How long a worker trusts the accepted domains it read from the database (workers refresh them there).
DOMAIN_CACHE_SECONDS = 60.0
#: The longest pause between two tries of a database write during an outage (how soon recovery is seen).
DB_RETRY_MAX = 2.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SentAhead:
    """A step sent while the write that starts it was being made (see :meth:`Engine._record`): a
    read (``READ_STEPS``), or an effect made the same however often (``EARLY_EFFECTS``).

    Its answer is used only if that write did start this step, at this attempt, on this case;
    otherwise it is dropped (never cancelled: a cancelled command gives up its runspace).
    """

    case_id: str
    step: StepName
    attempt: int
    began: float  # the event loop's clock when it was sent
    task: asyncio.Task[StepOutcome]
    #: For an effect: what keeps its result once it is dropped (:meth:`Engine._keep_dropped`).
    keep: Callable[[SentAhead], None] | None = None

    def drop(self) -> None:
        """Let it finish unheard: its answer (or failure) is read only so nothing reports it as lost.

        A read dropped is only wasted. An effect dropped (the write that started it did not commit,
        and what was written instead does not start it: a cancel or another worker came between
        during a database outage) may have changed the tenant with no step recording it: ``keep``
        records it on the case once it has answered, if nothing else will.
        """
        if self.keep is not None:
            log.warning("sent_ahead_effect_dropped", step=self.step.value)
            self.keep(self)
            return
        self.task.add_done_callback(_unheard)
        log.info("sent_ahead_dropped", step=self.step.value)

    def fits(self, case: CaseSnapshot, step: StepName) -> bool:
        return self.case_id == case.id and self.step is step and self.attempt == case.step(step).attempts


def _unheard(task: asyncio.Task[StepOutcome]) -> None:
    # A step reports the tenant's refusals as its outcome; what it raises is a fault of the
    # service's own, and nobody awaits this task to see it: say so here.
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("sent_ahead_failed", error_class=type(error).__name__, exc_info=error)


@dataclass(slots=True)
class Opening:
    """A case intake in this process creates held by this worker (:class:`service.runtime.Reservation`).

    Its first step is started in the transaction that creates the case, as the worker would start
    it (:meth:`Engine._starting`; the reset's password generated and sealed first), so the first
    command waits for one commit, not two. Intake asks for this only when it placed the case by
    the tenant's known accepted domains (:func:`service.domain.tenancy.accepted_by`); any other case
    is left to the worker, which places it and checks its domain before anything is sealed or sent.
    """

    engine: Engine
    lease: Lease
    now: datetime
    step: StepName | None = None  # the step the creating transaction started
    password: str | None = field(default=None, repr=False)  # the reset's, in memory until it is sent

    def start(self, case: CaseSnapshot) -> CaseChange | None:
        self.step, self.password = None, None  # a create tried again decides afresh
        step = rules.next_step(case.view())
        if step is None or case.tenant is None:
            return None
        password, secret = self.engine.new_password(case.id) if step is StepName.reset_password else (None, None)
        change = self.engine._starting(case, step, secret, self.now)
        if change is not None:
            self.step, self.password = step, password
        return change

    def forget(self) -> None:
        self.step, self.password = None, None


def _outcome_fields(outcome: StepOutcome) -> dict[str, str | None]:
    """How an effect sent ahead ended, for the log lines about it."""
    result = outcome.result
    if isinstance(result, rules.Failed):
        return {"outcome": "failed", "error_class": result.code}
    return {"outcome": "succeeded", "error_class": None}


#: What a step left for the next: the case as recorded, whether that write started the next step,
#: and the next step's read if it was sent ahead.
Ran = tuple[CaseSnapshot, bool, SentAhead | None]


def _tenant_failure(message: str, code: str = "tenant_unavailable") -> rules.Failed:
    """A case whose tenant cannot be used (disabled, unknown, or no tenant takes its mailbox)."""
    return rules.Failed(code=code, message=message, retryable=False)


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
        self._domain_cache: dict[str, tuple[float, list[str]]] = {}

    def now(self) -> datetime:
        return self.runtime.clock()

    def opening(self, lease: Lease, now: datetime) -> Opening:
        """The start of a case intake in this process is about to create with ``lease``."""
        return Opening(self, lease, now)

    async def process(self, claim: Claim, opened: Opening | None = None) -> None:
        """Run ``claim``'s case while its next step is due; ``opened``: intake created it started."""
        db = self.runtime.db
        with bound(case_id=claim.case_id, worker_id=self.worker_id):
            case = claim.case
            if case.lease_owner != self.worker_id:
                return
            # True when the write that recorded the last step also started the next one (one commit
            # per step boundary), or the write that created the case started its first. Only our own
            # write says so: a running step found on a claimed case was left by a worker that died,
            # and is started again (a new attempt, with its precheck).
            begun = opened is not None and opened.step is not None
            if begun and opened is not None and opened.step is StepName.reset_password and opened.password is None:
                raise AssertionError("a reset started at intake without its password")
            password = None
            if opened is not None:  # held here only until the reset is sent
                password, opened.password = opened.password, None
            ahead: SentAhead | None = None
            while True:
                step = rules.next_step(case.view())
                now = self.now()
                if step is None or (not begun and (case.next_action_at is None or case.next_action_at > now)):
                    if ahead is not None:
                        ahead.drop()
                    await self._durably(
                        lambda: cases.release_lease(db, case_id=claim.case_id, worker_id=self.worker_id)
                    )
                    return
                ran = await self._run_step(case, step, begun=begun, ahead=ahead, password=password)
                ahead, password = None, None
                if ran is None:
                    # The write was refused: someone else changed the case, or a write whose answer an
                    # outage swallowed did land. Carry on only if the case is still ours.
                    current = await self._durably(lambda: cases.load_claimed(db, case_id=claim.case_id))
                    if current.lease_owner != self.worker_id or current.version == case.version:
                        return
                    case, begun = current, False
                else:
                    case, begun, ahead = ran
                if case.lease_owner != self.worker_id:
                    if ahead is not None:
                        ahead.drop()
                    return

    async def _durably(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A database operation the worker waits out an outage for instead of giving up on.

        A case in flight stays this worker's: its step's result waits in memory while the
        database is away (probed every DB_RETRY_MAX seconds at most), and is written the moment it
        is back. If the lease ran out meanwhile and another worker took the case, the
        compare-and-set refuses the write and the step's idempotency makes the other's redo safe.
        """
        delay = 0.1
        while True:
            try:
                return await operation()
            except Unavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, DB_RETRY_MAX)

    async def _run_step(
        self,
        case: CaseSnapshot,
        step: StepName,
        *,
        begun: bool,
        ahead: SentAhead | None = None,
        password: str | None = None,
    ) -> Ran | None:
        """Start ``step`` (unless ``begun``: the last write did), run it, record its result.

        ``ahead``: the step's read, sent while the last write was made; its answer is the step's
        if that write started this very step (``begun``) and nothing refuses the step now.
        ``password``: a begun reset's, sealed by the write that started it (intake's, see :class:`Opening`).
        Returns what :meth:`_record` returns; None when a write was refused (the case changed
        under us).
        """
        tenant, gateway, refused = await self._durably(lambda: self._tenant_of(case))
        domains: list[str] = []
        if refused is None and gateway is not None:
            refused, domains = await self._durably(lambda: self._domain_refusal(case, tenant, gateway))
        if begun:  # a reset only from intake's write, which sealed its password (given here)
            started: CaseSnapshot | None = case
        else:
            # A mailbox outside the tenant's domains gets no password sealed and no command sent.
            password, new_secret = (
                (None, None) if refused else await self._durably(lambda: self._password_for(case, step))
            )
            now = self.now()
            written = await self._durably(lambda: self._start(case, step, new_secret, now))
            started = written.case if written is not None else None
        if ahead is not None and not (
            begun and started is not None and refused is None and gateway is not None and ahead.fits(started, step)
        ):
            ahead.drop()
            ahead = None
        if started is None:
            log.info("case_lost", step=step.value, reason="changed before the step started")
            return None
        view_step = started.view().step(step)
        with bound(step=step.value, attempt=view_step.attempts):
            log.info("step_started", from_state=case.state, to_state=started.state)
            loop = asyncio.get_running_loop()
            began = loop.time() if ahead is None else ahead.began
            if ahead is not None:
                outcome = await self._with_heartbeat(started.id, ahead.task)
            elif refused is not None or gateway is None:
                outcome = refused or StepOutcome(_tenant_failure(f"no gateway for tenant {tenant}"), {})
            else:
                context = self._context(view_step, tuple(domains), password)
                with password_guard(password):
                    outcome = await self._with_heartbeat(started.id, perform(step, started, gateway, context))
            duration_ms = round((loop.time() - began) * 1000, 1)
            # What the step saw of the address goes to the stored restricted list in the same
            # transaction as its result (or on its own, if the result could not be written).
            seen, restriction = self._seen(step, outcome)
            along = self._note_along(started, restriction) if seen else None
            reads = (gateway, tuple(domains)) if refused is None and gateway is not None else None
            recorded = await self._record(started, step, outcome, duration_ms, along=along, reads=reads)
            if seen and recorded is None:
                await self._note_sender(started, restriction)
            return recorded

    async def _tenant_of(self, case: CaseSnapshot) -> tuple[str, TenantGateway | None, StepOutcome | None]:
        """The case's tenant and its gateway; a case intake could not place is placed now.

        Intake leaves the tenant open only while some tenant's accepted domains are unknown; here
        every tenant's are read (stored, or Get-AcceptedDomain through its own gateway), and the
        mailbox's domain decides: one tenant takes it, none is foreign_mailbox, two are ambiguous.
        """
        tenant = case.tenant
        if tenant is None:
            try:
                views = [
                    TenantDomains(t.name, True, tuple(await self._domains(t.name)))
                    for t in await tenants.every(self.runtime.db, self.runtime.settings)
                    if t.enabled
                ]
                tenant = route(case.mailbox, views)
            except BridgeError as error:
                return (
                    DEFAULT_TENANT,
                    None,
                    StepOutcome(failed(error), {"cmdlet": error.cmdlet} if error.cmdlet else {}),
                )
            except InvalidInput as error:  # foreign_mailbox, ambiguous_tenant
                return DEFAULT_TENANT, None, StepOutcome(_tenant_failure(error.message, error.code), {})
            if tenant is None:
                return DEFAULT_TENANT, None, StepOutcome(_tenant_failure(f"no tenant accepts {case.mailbox}"), {})
            await writer.assign_tenant(self.runtime.db, case_id=case.id, tenant=tenant, now=self.now())
            log.info("tenant_assigned", tenant=tenant)
        try:
            gateway = await self._gateways().for_tenant(tenant)
        except TenantNotFound as error:
            return tenant, None, StepOutcome(_tenant_failure(error.message), {})
        return tenant, gateway, None

    def _gateways(self) -> GatewayDirectory:
        directory = self.runtime.gateways
        if directory is None:
            raise RuntimeError("the worker needs a PowerShell endpoint (UNBLOCK_PS_SERVER or --sandbox)")
        return directory

    async def _domain_refusal(
        self, case: CaseSnapshot, tenant: str, gateway: TenantGateway
    ) -> tuple[StepOutcome | None, list[str]]:
        """A case accepted before any domain list was known is checked here, before anything is sent.

        The domains are UNBLOCK_ALLOWED_DOMAINS, else the accepted domains workers stored, else
        read now (Get-AcceptedDomain, which names no mailbox) and stored. A mailbox outside them
        fails the case (foreign_mailbox); a tenant that cannot be read is an ordinary retry. The
        domains also tell the investigation which addresses are outside the tenant.
        """
        try:
            domains = await self._domains(tenant, gateway)
        except BridgeError as error:
            return StepOutcome(failed(error), {"cmdlet": error.cmdlet} if error.cmdlet else {}), []
        domain = case.mailbox.rsplit("@", 1)[-1].lower()
        if domain in domains:
            return None, domains
        return StepOutcome(
            rules.Failed(
                code=ForeignMailbox.code,
                message=f"{domain} is not one of the tenant's accepted domains ({', '.join(domains) or 'none'})",
                retryable=False,
            ),
            {"domain": domain},
        ), domains

    async def _domains(self, tenant: str, gateway: TenantGateway | None = None) -> list[str]:
        """A tenant's accepted domains: UNBLOCK_ALLOWED_DOMAINS for ``default``, else as stored, else read."""
        settings = self.runtime.settings
        if tenant == DEFAULT_TENANT and settings.allowed_domains:
            return settings.allowed_domains
        cached = self._domain_cache.get(tenant)
        if cached is not None and time.monotonic() - cached[0] < DOMAIN_CACHE_SECONDS:
            return cached[1]
        stored = (await tenant_facts.load(self.runtime.db, tenant=tenant)).accepted_domains
        if stored is not None:
            self._domain_cache[tenant] = (time.monotonic(), stored)
            return stored
        if gateway is None:
            gateway = await self._gateways().for_tenant(tenant)
        domains = await gateway.accepted_domains()
        await tenant_facts.store_domains(self.runtime.db, domains=domains, now=self.now(), tenant=tenant)
        return [d.lower() for d in domains]

    @staticmethod
    def _seen(step: StepName, outcome: StepOutcome) -> tuple[bool, Restriction | None]:
        """Whether this step's result tells the restricted list something about the address, and what."""
        result = outcome.result
        if not isinstance(result, rules.Succeeded):
            return False, None
        if step in (StepName.check_restriction, StepName.verify, StepName.propagation):
            return True, result.restriction
        if step is StepName.unblock:
            return True, None
        return False, None

    def _note_along(self, case: CaseSnapshot, restriction: Restriction | None) -> Along:
        """The note of what the step saw, written in the transaction that records the step."""
        return tenant_facts.sender_note(
            address=case.mailbox,
            restriction=restriction,
            now=self.now(),
            case_id=case.id,
            tenant=case.tenant or DEFAULT_TENANT,
        )

    async def _note_sender(self, case: CaseSnapshot, restriction: Restriction | None) -> None:
        """The same note on its own, when the step's result was not written (the case changed under us)."""
        try:
            await tenant_facts.note_sender(
                self.runtime.db,
                address=case.mailbox,
                restriction=restriction,
                now=self.now(),
                case_id=case.id,
                tenant=case.tenant or DEFAULT_TENANT,
            )
        except Unavailable as error:  # the snapshot catches up at the next full read
            log.warning("sender_note_failed", detail=error.message)

    async def _start(
        self, known: CaseSnapshot, step: StepName, secret: SealedSecret | None, now: datetime
    ) -> Written | None:
        """Mark ``step`` running (one more attempt), moving the case on if starting it says so."""

        def build(case: CaseSnapshot) -> CaseChange | None:
            if rules.next_step(case.view()) is not step:
                return None  # someone else moved the case since we read it
            return self._starting(case, step, secret, now)

        return await change_case(
            self.runtime.db, case_id=known.id, build=build, now=now, lease_owner=self.worker_id, known=known
        )

    def _starting(
        self, case: CaseSnapshot, step: StepName, secret: SealedSecret | None, now: datetime
    ) -> CaseChange | None:
        """The change that starts ``step`` on ``case``, if the case is still ours."""
        if case.lease_owner != self.worker_id:
            return None
        view = case.view()
        record = case.step(step)
        action = rules.begin(view, step)
        return timeline.step_started(
            before=case.state,
            after=apply(action, case.state) if action is not None else case.state,
            step=step,
            attempt=record.attempts + 1,
            first_start=record.started_at is None or record.status is not StepStatus.running,
            reason=f"starting {step.value}",
            lease_until=now + timedelta(seconds=self.lease),
            secret=CredentialChange(CredentialMove.store, secret.key_id, secret.blob) if secret else None,
        )

    def _next_start(self, now: datetime) -> Callable[[CaseSnapshot], CaseChange | None]:
        """Starts the case's next step in the transaction that records this one, when it is due now.

        Not the reset: its password must be sealed (and stored by its start) before it runs.
        """

        def build(case: CaseSnapshot) -> CaseChange | None:
            step = rules.next_step(case.view())
            if step is None or step is StepName.reset_password:
                return None
            if case.next_action_at is None or case.next_action_at > now:
                return None
            return self._starting(case, step, None, now)

        return build

    async def _record(
        self,
        started: CaseSnapshot,
        step: StepName,
        outcome: StepOutcome,
        duration_ms: float,
        *,
        along: Along | None,
        reads: tuple[TenantGateway, tuple[str, ...]] | None = None,
    ) -> Ran | None:
        """Write the step's result, decided on the case as it is when written, and start the next step.

        Usually that is the case as the step started. If it changed meanwhile (a password
        revealed, a person cancelling) the result is decided again on the current case: a
        cancelled case keeps the result as a late one; a case another worker took over (our lease
        ran out) gets nothing from us. When the decision makes the next step due at once, the
        same transaction starts it (returned True): one commit per step boundary, not two.

        ``reads`` gives the gateway and domains this step used; with them the next step can go
        out before the transaction commits, so the tenant works while the database does:

        - a step that only reads the tenant (``rules.READ_STEPS``) as soon as the decision is
          made. A read changes nothing there, so one sent for a write that then did not happen
          is only wasted;
        - an effect made the same however often (``rules.EARLY_EFFECTS``) once the write holds
          the case's row (the next step's start is decided then, on the case as this result
          leaves it): from there nothing can come between but a failed commit, after which the
          step runs again and makes the same change.

        The step sent ahead is returned with the case; it is the next step's only if the write
        did start that step (:meth:`SentAhead.fits`), and dropped otherwise.
        """
        now = self.now()
        settings = self.runtime.settings

        spread = self.random.random()

        def build(case: CaseSnapshot) -> CaseChange | None:
            if case.state is CaseState.cancelled:
                return self._finished_late(case, step, outcome, now)
            if case.lease_owner != self.worker_id or case.step(step).status is not StepStatus.running:
                return None
            decision = rules.decide(
                case.view(), step, outcome.result, now, policy=self.policy, timing=self.timing, spread=spread
            )
            keep = decision.next_action_at is not None and decision.next_action_at <= now
            return timeline.step_decided(
                decision,
                before=case.state,
                step=step,
                step_detail=outcome.detail,
                now=now,
                credential_ttl=settings.credential_ttl,
                keep_lease_until=now + timedelta(seconds=self.lease) if keep else None,
            )

        ahead: SentAhead | None = None

        def decided(case: CaseSnapshot, change: CaseChange) -> None:
            nonlocal ahead
            if ahead is not None or reads is None or change.decision is None:
                return  # at most once a boundary: a decision made again (the case changed) sends no more
            if change.lease is None or change.lease.until is None:
                return
            following = rules.due_after(case.view(), change.decision, now)
            if following in rules.READ_STEPS:
                ahead = self._send_ahead(case, following, *reads)

        start_next = self._next_start(now)

        def then(case: CaseSnapshot) -> CaseChange | None:
            nonlocal ahead
            change = start_next(case)  # the first change holds the row now
            if change is not None and ahead is None and reads is not None:
                following = rules.next_step(case.view())
                if following in rules.EARLY_EFFECTS:
                    ahead = self._send_ahead(case, following, *reads)
            return change

        try:
            written = await self._durably(
                lambda: change_case(
                    self.runtime.db,
                    case_id=started.id,
                    build=build,
                    now=now,
                    lease_owner=self.worker_id,
                    known=started,
                    then=then,
                    along=along,
                    decided=decided,
                )
            )
        except BaseException:
            if ahead is not None:  # sent, and nobody will hear its answer now
                ahead.drop()
            raise
        if ahead is not None and (written is None or written.then is None):
            ahead.drop()
            ahead = None
        failed = isinstance(outcome.result, rules.Failed)
        tenant = started.tenant or ""
        metrics.STEP_DURATION.labels(step=step.value).observe(duration_ms / 1000)
        if isinstance(outcome.result, rules.Failed):
            metrics.STEP_FAILURES.labels(step=step.value, code=outcome.result.code, tenant=tenant).inc()
        log.info(
            "step_failed" if failed else "step_succeeded",
            duration_ms=duration_ms,
            error_class=outcome.result.code if isinstance(outcome.result, rules.Failed) else None,
            retryable=outcome.result.retryable if isinstance(outcome.result, rules.Failed) else None,
        )
        if written is None:
            log.warning("case_lost", step=step.value, reason="lease taken over; result dropped")
            return None
        recorded, change = written.case, written.change
        if change.decision is None:
            log.info("step_finished_after_cancel", step=step.value)
        elif change.changes_state:
            metrics.TRANSITIONS.labels(
                from_state=change.before.value, to_state=change.after.value, tenant=recorded.tenant or ""
            ).inc()
            log.info(
                "case_transitioned",
                from_state=change.before.value,
                to_state=change.after.value,
                outcome=recorded.outcome.value if recorded.outcome else None,
            )
        if written.then is not None:
            recorded = written.then.case
        self.runtime.events.publish(recorded.id)
        return recorded, written.then is not None, ahead

    def _context(self, step: rules.StepView, domains: tuple[str, ...], password: str | None = None) -> StepContext:
        """What a step is run with, whether it is sent at its start or ahead of it."""
        return StepContext(password=password, precheck=rules.needs_precheck(step), domains=domains, now=self.now())

    def _send_ahead(
        self, case: CaseSnapshot, step: StepName, gateway: TenantGateway, domains: tuple[str, ...]
    ) -> SentAhead:
        """Send ``step`` now, as its start would (the attempt it will be, the tenant's domains)."""
        attempt = case.step(step).attempts + 1
        context = self._context(rules.StepView(step, StepStatus.running, attempt), domains)
        loop = asyncio.get_running_loop()
        with bound(step=step.value, attempt=attempt):  # the task's logs name its own step
            task = loop.create_task(perform(step, case, gateway, context), name=f"ahead-{step.value}")
            log.debug("sent_ahead")
        keep = self._keep_dropped if step in rules.EARLY_EFFECTS else None
        return SentAhead(case.id, step, attempt, loop.time(), task, keep)

    def _keep_dropped(self, ahead: SentAhead) -> None:
        """Record a dropped effect's result (:meth:`_record_dropped`) in the background: the worker
        goes on, and the service waits for it on the way out as for its other bookkeeping writes."""
        task = asyncio.get_running_loop().create_task(self._record_dropped(ahead), name=f"dropped-{ahead.step.value}")
        self.runtime.background.add(task)
        task.add_done_callback(self.runtime.background.discard)

    async def _record_dropped(self, ahead: SentAhead) -> None:
        """Once an effect sent ahead and then dropped has answered, keep its result on the case if
        nothing else will: the case ended meanwhile (a person cancelled it while the write that
        started the effect was being made again), so no worker runs the step again. It is written
        as a step that finished after the case ended (:func:`service.domain.timeline.finished_late`),
        as a reset answering after a cancel is. A case still open is left alone: whoever holds it
        runs the step again, makes the same change, and records it.
        """
        step = ahead.step
        await asyncio.wait([ahead.task])  # its answer or its failure, whichever it gives
        if ahead.task.cancelled() or ahead.task.exception() is not None:
            _unheard(ahead.task)  # a fault of the step's own: said as for any step sent ahead
            return
        outcome = ahead.task.result()
        now = self.now()

        def build(case: CaseSnapshot) -> CaseChange | None:
            if case.state not in TERMINAL_STATES or case.step(step).status is StepStatus.running:
                return None
            return self._finished_late(case, step, outcome, now)

        try:
            written = await change_case(self.runtime.db, case_id=ahead.case_id, build=build, now=now)
        except (Unavailable, ConcurrentUpdate) as error:
            log.warning("sent_ahead_effect_unrecorded", step=step.value, reason=error.code, **_outcome_fields(outcome))
            return
        if written is None:
            log.info("sent_ahead_effect_left_to_the_case", step=step.value, **_outcome_fields(outcome))
            return
        log.info("sent_ahead_effect_recorded", step=step.value, **_outcome_fields(outcome))
        self.runtime.events.publish(ahead.case_id)

    def _finished_late(self, case: CaseSnapshot, step: StepName, outcome: StepOutcome, now: datetime) -> CaseChange:
        """``step``'s result kept on a case that ended while it ran (see :func:`timeline.finished_late`)."""
        result = outcome.result
        return timeline.finished_late(
            state=case.state,
            step=step,
            status=StepStatus.failed if isinstance(result, rules.Failed) else StepStatus.succeeded,
            error=result.as_error() if isinstance(result, rules.Failed) else None,
            now=now,
            ttl=self.runtime.settings.credential_ttl,
        )

    async def _password_for(self, case: CaseSnapshot, step: StepName) -> tuple[str | None, SealedSecret | None]:
        """The reset's password: sealed and stored before the first attempt, reused by retries."""
        if step is not StepName.reset_password:
            return None, None
        # No credential row on the case as read (its first attempt): nothing to look up.
        existing = None if case.credential is None else await cases.load_secret(self.runtime.db, case_id=case.id)
        if existing is not None:
            return self.sealer.open(Sealed(existing.key_id, existing.blob), context=case.id), None
        return self.new_password(case.id)

    def new_password(self, case_id: str) -> tuple[str, SealedSecret]:
        """A new temporary password for the case's reset, and the same sealed for its credential row."""
        password = generate_password()
        sealed = self.sealer.seal(password, context=case_id)
        return password, SealedSecret(key_id=sealed.key_id, blob=sealed.blob)

    async def _with_heartbeat(self, case_id: str, work: Awaitable[StepOutcome]) -> StepOutcome:
        async def beat() -> None:
            while True:
                await asyncio.sleep(max(self.lease / 3, 0.2))
                until = self.now() + timedelta(seconds=self.lease)
                try:
                    extended = await cases.extend_lease(
                        self.runtime.db, case_id=case_id, worker_id=self.worker_id, until=until
                    )
                except Unavailable:
                    continue  # the database is away: keep trying; the step's result will wait for it
                if not extended:
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
