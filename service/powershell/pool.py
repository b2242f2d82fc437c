"""The warm pool: N connected runspaces shared by async callers without blocking the event loop.

Each call borrows one runspace for the whole pipeline (so at most one pipeline per runspace),
runs it in a worker thread, and gives it back. Call N+1 waits its turn. A call that outlives
its timeout returns :class:`~service.errors.CallTimeout` to its caller at once; the thread
finishes on its own and the runspace is thrown away. A runspace that breaks (dropped
connection, fault, timeout) is closed and a replacement is opened in the background, so the
next caller finds a warm one. Runspaces are recycled after a number of calls because the
Exchange module does not free its memory on disconnect.

The bookkeeping is one :class:`Slot` per runspace, in one of four states (opening, idle, busy,
closing), changed only through :meth:`WarmPool._move` along the edges of ``_MOVES``; every count
(what is open, what is lent out, how much room is left) is derived from the slots, and
:meth:`WarmPool.check` states the invariants the tests hold it to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from service.errors import CallTimeout, EndpointUnavailable, Throttled, TransientError
from service.logging import get_logger
from service.powershell.budget import RunspaceBudget, notify
from service.powershell.circuit import BreakerState, CircuitBreaker
from service.powershell.classify import breaks_runspace, signals_lost_session
from service.powershell.commands import Invocation
from service.powershell.runspace import EndpointOptions, RawResult, Runspace, RunspaceFailure, ping

log = get_logger(__name__)

RunspaceFactory = Callable[[EndpointOptions, str], Runspace]


def _default_factory(options: EndpointOptions, name: str) -> Runspace:
    return Runspace(options, name=name)


@dataclass(frozen=True, slots=True)
class PoolStats:
    size: int
    in_use: int
    idle: int
    opening: int


class SlotState(StrEnum):
    opening = "opening"  # a runspace is being opened for it
    idle = "idle"  # open, waiting for a call
    busy = "busy"  # lent to a call (or ending that call's pipeline on the server)
    closing = "closing"  # being closed: it no longer takes up room in the pool


#: The only state changes a slot makes. A slot that is done closing (or never opened) is dropped.
_MOVES: dict[SlotState, frozenset[SlotState]] = {
    SlotState.opening: frozenset({SlotState.idle, SlotState.busy, SlotState.closing}),
    SlotState.idle: frozenset({SlotState.busy, SlotState.closing}),
    SlotState.busy: frozenset({SlotState.idle, SlotState.closing, SlotState.opening}),  # opening: reconnecting
    SlotState.closing: frozenset(),
}
_ROOM_TAKEN = frozenset({SlotState.opening, SlotState.idle, SlotState.busy})


@dataclass(eq=False)
class Slot:
    number: int
    state: SlotState
    runspace: Runspace | None = None
    since: float = field(default_factory=time.monotonic)


class WarmPool:
    def __init__(
        self,
        options: EndpointOptions,
        *,
        size: int,
        call_timeout: float,
        recycle_after: int = 500,
        lazy: bool = False,
        open_timeout: float = 60.0,
        factory: RunspaceFactory = _default_factory,
        breaker: CircuitBreaker | None = None,
        budget: RunspaceBudget | None = None,
    ) -> None:
        self.options = options
        self.size = size
        self.call_timeout = call_timeout
        self.recycle_after = recycle_after
        self.lazy = lazy
        self.open_timeout = open_timeout
        self._factory = factory
        self.breaker = breaker or CircuitBreaker(threshold=5, interval=10.0)
        self._executor = ThreadPoolExecutor(max_workers=size * 2 + 2, thread_name_prefix="psrp")
        self._slots: dict[int, Slot] = {}
        self._serial = 0
        self._opened = 0
        self._cond: asyncio.Condition | None = None
        self._warmer: asyncio.Task[None] | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self._closing: set[concurrent.futures.Future[None]] = set()
        self._orphans: list[tuple[asyncio.Future[None], Runspace]] = []
        self.last_success = 0.0
        self._not_before = 0.0  # Exchange asked us to slow down (a micro delay): no new call before this
        # The cap shared with the other tenants' pools of this process (None: this pool is alone).
        self.budget = budget
        if budget is not None:
            budget.join(self)

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the slots ------------------------------------------------------------------------------

    def _count(self, *states: SlotState) -> int:
        return sum(1 for slot in self._slots.values() if slot.state in states)

    @property
    def held(self) -> int:
        """The runspaces this pool holds (opening, idle or busy): what counts against its caps."""
        return self._count(*_ROOM_TAKEN)

    @property
    def _room(self) -> int:
        own = self.size - self.held
        return own if self.budget is None else min(own, self.budget.room_for(self))

    # --- sharing the budget with other tenants' pools (see service.powershell.budget) -------------

    def idle_for(self) -> float | None:
        idle = self._next_idle()
        return None if idle is None else time.monotonic() - idle.since

    def surrender_idle(self) -> bool:
        idle = self._next_idle()
        if idle is None:
            return False
        name = idle.runspace.name if idle.runspace is not None else f"slot{idle.number}"
        self._retire(idle)
        log.info("runspace_retired", runspace=name, reason="lent to another tenant")
        return True

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            self._spawn(notify(self.cond))

    def stats(self) -> PoolStats:
        return PoolStats(
            size=self.size,
            in_use=self._count(SlotState.busy),
            idle=self._count(SlotState.idle),
            opening=self._count(SlotState.opening),
        )

    def check(self) -> None:
        """The invariants of the bookkeeping (the tests call this between operations)."""
        assert self._count(*_ROOM_TAKEN) <= self.size, f"more runspaces than {self.size}: {self._slots}"
        for slot in self._slots.values():
            if slot.state in (SlotState.idle, SlotState.busy):
                assert slot.runspace is not None, f"{slot.state} slot without a runspace: {slot}"
        runspaces = [id(s.runspace) for s in self._slots.values() if s.runspace is not None]
        assert len(runspaces) == len(set(runspaces)), "one runspace in two slots"

    def _new_slot(self, state: SlotState) -> Slot:
        self._serial += 1
        slot = Slot(number=self._serial, state=state)
        self._slots[slot.number] = slot
        return slot

    def _move(self, slot: Slot, to: SlotState) -> None:
        if to not in _MOVES[slot.state]:
            raise AssertionError(f"runspace slot {slot.number}: {slot.state} -> {to} is not a move")
        freed = slot.state in _ROOM_TAKEN and to not in _ROOM_TAKEN
        slot.state = to
        slot.since = time.monotonic()
        if freed and self.budget is not None:
            self.budget.released()

    def _drop(self, slot: Slot) -> None:
        dropped = self._slots.pop(slot.number, None)
        if dropped is not None and dropped.state in _ROOM_TAKEN and self.budget is not None:
            self.budget.released()

    def _next_idle(self) -> Slot | None:
        idle = [slot for slot in self._slots.values() if slot.state is SlotState.idle]
        return min(idle, key=lambda s: s.since) if idle else None  # the longest idle first: all stay warm

    def _retire(self, slot: Slot, *, after: asyncio.Future[Any] | None = None) -> None:
        """Close a slot's runspace in the background (once ``after`` is done) and forget the slot."""
        self._move(slot, SlotState.closing)
        runspace = slot.runspace

        def close(_: object = None) -> None:
            if runspace is not None:
                self._close_later(runspace)
            self._drop(slot)

        if after is not None and not after.done():
            after.add_done_callback(close)
        else:
            close()

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin warming every runspace in the background (unless lazy); never fails."""
        if not self.lazy:
            self._kick_warmer()

    async def close(self) -> None:
        self._closed = True
        if self.budget is not None:
            self.budget.leave(self)
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warmer
        if self._background:
            # pipelines being terminated hand their runspace back; those are closed below or by _give_back
            await asyncio.wait(self._background, timeout=10)
        async with self.cond:
            for slot in [s for s in self._slots.values() if s.state is SlotState.idle]:
                self._retire(slot)
            self.cond.notify_all()
        for job, runspace in self._orphans:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(job), 15)
            self._close_later(runspace)
        if self._closing:
            await asyncio.wait([asyncio.wrap_future(job) for job in list(self._closing)], timeout=10)
        self._executor.shutdown(wait=False)

    def _name(self) -> str:
        self._opened += 1
        return f"rs{self._opened}"

    async def _open(self, *, gated: bool = True) -> Runspace:
        runspace = self._factory(self.options, self._name())
        deadline = time.monotonic() + self.open_timeout
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if gated:
            self.breaker.before_call()
        job = loop.run_in_executor(self._executor, runspace.open, deadline)
        try:
            await asyncio.wait_for(asyncio.shield(job), self.open_timeout + 5)
        except (TimeoutError, asyncio.CancelledError) as stopped:
            # Whoever waited is gone; if the open still succeeds, close it rather than leak a shell.
            self._orphans.append((job, runspace))
            if isinstance(stopped, asyncio.CancelledError):
                self.breaker.released()
                raise
            self.breaker.failed()
            raise EndpointUnavailable("opening a runspace on the PowerShell endpoint timed out") from None
        except RunspaceFailure as failure:
            self._judge(failure.error)
            if isinstance(failure.error, CallTimeout):  # a connect that hung: the endpoint, not a command
                raise EndpointUnavailable(f"opening a runspace timed out ({failure.error.message})") from None
            raise failure.error from None
        self.breaker.succeeded()
        log.info(
            "runspace_opened", runspace=runspace.name, duration_ms=round((time.perf_counter() - started) * 1000, 1)
        )
        return runspace

    def _kick_warmer(self) -> None:
        if self._closed or self.lazy:
            return
        if self._warmer is None or self._warmer.done():
            self._warmer = asyncio.get_running_loop().create_task(self._warm())

    def _reap_orphans(self) -> None:
        """Close runspaces whose opening finished after their caller gave up."""
        waiting = []
        for job, runspace in self._orphans:
            if job.done():
                self._close_later(runspace)
            else:
                waiting.append((job, runspace))
        self._orphans = waiting

    def _judge(self, error: BaseException) -> None:
        """Tell the breaker whether a failure says the endpoint itself is unwell."""
        if isinstance(error, TransientError) and not isinstance(error, Throttled):
            self.breaker.failed()
        else:
            self.breaker.released()

    async def _warm(self) -> None:
        """Open runspaces until the pool is full; on failure back off and try again."""
        backoff = 1.0
        while not self._closed:
            wait = self.breaker.retry_in()
            if wait > 0:  # the breaker is open: the warmer's next open is its probe
                await asyncio.sleep(wait)
                continue
            async with self.cond:
                if self._room <= 0:
                    return
                slots = [self._new_slot(SlotState.opening) for _ in range(self._room)]
            batch = asyncio.gather(*(self._open() for _ in slots), return_exceptions=True)
            try:
                results = await asyncio.shield(batch)
            except asyncio.CancelledError:
                # Closing: runspaces that finish opening now are closed, not dropped with their shells
                # (a cancel arriving just as the batch completes would otherwise lose its results).
                for slot, result in zip(slots, await batch, strict=True):
                    slot.runspace = None if isinstance(result, BaseException) else result
                    self._retire(slot)
                raise
            failures: list[BaseException] = []
            async with self.cond:
                for slot, result in zip(slots, results, strict=True):
                    if isinstance(result, BaseException):
                        failures.append(result)
                        self._drop(slot)
                        continue
                    slot.runspace = result
                    if self.closed:  # closed while this runspace was opening
                        self._retire(slot)
                    else:
                        self._move(slot, SlotState.idle)
                self.cond.notify_all()
            if failures:
                first = failures[0]
                log.warning(
                    "runspace_open_failed", count=len(failures), error_class=type(first).__name__, detail=str(first)
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            else:
                backoff = 1.0

    # --- borrowing -------------------------------------------------------------------------------

    async def _acquire(self, deadline: float) -> Slot:
        if self._orphans:
            self._reap_orphans()
        async with self.cond:
            while True:
                if self._closed:
                    raise EndpointUnavailable("the PowerShell bridge is closed")
                idle = self._next_idle()
                if idle is not None:
                    self._move(idle, SlotState.busy)
                    return idle
                if self._room > 0:
                    slot = self._new_slot(SlotState.opening)
                    break
                shared = self.budget is not None and self.held < self.size  # the global cap stops us
                if shared and self.budget is not None and self.budget.reclaim_for(self):
                    continue  # another tenant's idle runspace made room
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Nothing was sent: like an outage, this does not use up a case's attempts.
                    raise EndpointUnavailable("no runspace became free in time (a slow endpoint, or a small pool)")
                if shared and self.budget is not None:
                    # Waiting on the shared cap: say so (poorer waiters get room first) and look again
                    # now and then, since another pool's runspace may turn idle without waking us.
                    self.budget.waiting(self, +1)
                    try:
                        await asyncio.wait_for(self.cond.wait(), min(remaining, 1.0))
                    except TimeoutError:
                        continue
                    finally:
                        self.budget.waiting(self, -1)
                    continue
                try:
                    await asyncio.wait_for(self.cond.wait(), remaining)
                except TimeoutError:
                    continue
        # The call that needs it has passed the breaker. The opening runs on its own: if the caller
        # stops waiting, a runspace that opens later joins the pool instead of being thrown away.
        opening = asyncio.ensure_future(self._open(gated=False))
        try:
            slot.runspace = await asyncio.wait_for(asyncio.shield(opening), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            opening.add_done_callback(lambda done: self._adopt(slot, done))
            raise EndpointUnavailable("a runspace was still opening when the call's time ran out") from None
        except BaseException:
            if not opening.done():
                opening.add_done_callback(lambda done: self._adopt(slot, done))
                raise
            async with self.cond:
                self._drop(slot)
                self.cond.notify()
            raise
        self._move(slot, SlotState.busy)
        return slot

    def _adopt(self, slot: Slot, opening: asyncio.Future[Runspace]) -> None:
        """A runspace opened for a caller who left: keep it if it works, give back its room if not."""

        async def settle() -> None:
            async with self.cond:
                opened = not opening.cancelled() and opening.exception() is None
                if not opened:
                    self._drop(slot)
                else:
                    slot.runspace = opening.result()
                    if self._closed:
                        self._retire(slot)
                    else:
                        self._move(slot, SlotState.idle)
                self.cond.notify()

        self._spawn(settle())

    async def _give_back(self, slot: Slot, *, broken: bool, reason: str = "") -> None:
        runspace = slot.runspace
        retire = broken or runspace is None or runspace.calls >= self.recycle_after or self._closed
        async with self.cond:
            lend = not retire and self.budget is not None and self.budget.owes(self)
            retire = retire or lend
            if lend:
                reason = "lent to another tenant"
            if retire:
                self._retire(slot)
            else:
                self._move(slot, SlotState.idle)
            self.cond.notify()
        if retire:
            name = runspace.name if runspace else f"slot{slot.number}"
            log.info(
                "runspace_retired", runspace=name, reason=reason or "recycled", calls=runspace.calls if runspace else 0
            )
            self._kick_warmer()

    def _close_later(self, runspace: Runspace) -> None:
        try:
            job = self._executor.submit(runspace.close)
        except RuntimeError:  # the executor is shut down: still close the remote shell
            threading.Thread(target=runspace.close, name="psrp-close", daemon=True).start()
            return
        self._closing.add(job)
        job.add_done_callback(self._closing.discard)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def call(self, invocations: tuple[Invocation, ...], *, limit: float | None = None) -> RawResult:
        """Run one pipeline on a borrowed runspace; raises a classified BridgeError on failure.

        A runspace that turns out to have lost its session (the remote shell is gone, the sign-in
        lapsed, the connected commands vanished) is closed, a fresh one is opened in its slot
        (connecting again), and the pipeline runs once more there. Every operation the bridge runs
        is safe to repeat, and a lost shell never ran it.
        """
        limit = limit or self.call_timeout
        deadline = time.monotonic() + limit
        pause = self._not_before - time.monotonic()
        if pause > 0:
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        self.breaker.before_call()
        try:
            slot = await self._acquire(deadline)
        except BaseException:
            self.breaker.released()  # an open that failed has told the breaker already
            raise
        for attempt in (1, 2):
            last = attempt == 2
            try:
                result = await self._invoke(slot, invocations, deadline, limit, may_retry=not last)
            except RunspaceFailure as failure:  # the shell is gone; only raised when a retry is allowed
                await self._replace(slot, reason=failure.error.message)
                continue
            runspace = self._runspace(slot)
            lost = self._lost_session(runspace, invocations, result)
            if lost and not last:
                await self._replace(slot, reason="the session lapsed (commands missing or sign-in needed)")
                continue
            self.breaker.succeeded()
            self.last_success = time.monotonic()
            if lost and any(breaks_runspace(record) for record in result.records):
                # still signed out after a fresh connect: the caller classifies it; this runspace goes
                self._spawn(self._give_back(slot, broken=True, reason="session_lost"))
            elif lost:  # a command this endpoint does not have: the runspace itself is fine
                self._spawn(self._finish(slot))
            else:
                runspace.worked.update(invocation.name for invocation in invocations)
                self._spawn(self._finish(slot))
            return result
        raise AssertionError("unreachable: the second attempt always returns or raises")

    @staticmethod
    def _runspace(slot: Slot) -> Runspace:
        if slot.runspace is None:
            raise AssertionError(f"slot {slot.number} ({slot.state}) has no runspace")
        return slot.runspace

    def slow_down(self, seconds: float) -> None:
        """Pace every caller: Exchange Online said (a "Micro delay applied" warning) it is delaying us.

        The command that carried the warning succeeded, so nothing is repeated; the calls after it
        wait that long before they start, instead of adding to the load that caused it.
        """
        self._not_before = max(self._not_before, time.monotonic() + seconds)

    async def _invoke(
        self, slot: Slot, invocations: tuple[Invocation, ...], deadline: float, limit: float, *, may_retry: bool
    ) -> RawResult:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._runspace(slot).invoke, invocations, deadline)
        try:
            return await asyncio.wait_for(asyncio.shield(job), max(0.0, deadline - time.monotonic()) + 1.0)
        except TimeoutError:
            self._abandon(slot, job)
            self.breaker.failed()
            raise CallTimeout(f"{invocations[-1].name} did not finish within {limit:.0f}s") from None
        except RunspaceFailure as failure:
            if failure.session_lost and may_retry:
                raise
            self._judge(failure.error)
            await self._give_back(slot, broken=failure.broken, reason=failure.error.code)
            raise failure.error from None
        except asyncio.CancelledError:
            self.breaker.released()
            self._abandon(slot, job)
            raise

    def _lost_session(self, runspace: Runspace, invocations: tuple[Invocation, ...], result: RawResult) -> bool:
        worked_before = any(invocation.name in runspace.worked for invocation in invocations)
        return any(
            signals_lost_session(
                record,
                command=invocations[-1].name,
                full_endpoint=self.options.connect_in_session,
                worked_before=worked_before,
            )
            for record in result.records
        )

    async def _replace(self, slot: Slot, *, reason: str) -> None:
        """Close a runspace that lost its session and open a fresh one in the same slot."""
        old = self._runspace(slot)
        log.warning("runspace_session_lost", runspace=old.name, detail=reason[:300], calls=old.calls)
        self._close_later(old)
        slot.runspace = None
        self._move(slot, SlotState.opening)
        try:
            fresh = await self._open(gated=False)
        except BaseException:
            async with self.cond:
                self._drop(slot)
                self.cond.notify()
            self._kick_warmer()
            raise
        slot.runspace = fresh
        self._move(slot, SlotState.busy)
        log.info("runspace_reconnected", runspace=fresh.name, replaced=old.name)

    async def _finish(self, slot: Slot) -> None:
        """Terminate the finished pipeline on the server, then make the runspace available again."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._runspace(slot).finish)
        except RunspaceFailure as failure:
            await self._give_back(slot, broken=True, reason=failure.error.code)
            return
        except RuntimeError:  # executor shut down
            return
        await self._give_back(slot, broken=False)

    def _abandon(self, slot: Slot, job: asyncio.Future[RawResult]) -> None:
        """A caller gave up: the runspace is lost to it; its room is free now, and it closes once its
        thread lets go."""
        name = self._runspace(slot).name
        self._retire(slot, after=job)

        async def release() -> None:
            async with self.cond:
                self.cond.notify()
            log.info("runspace_retired", runspace=name, reason="abandoned")
            self._kick_warmer()

        self._spawn(release())

    async def probe(self, seconds: float = 3.0) -> None:
        """Raise EndpointUnavailable unless the endpoint answers.

        Cheap by design (a WS-Management Get, no PowerShell): the shell of an idle runspace if
        there is one, otherwise a fresh connection that asks for the service configuration.
        """
        loop = asyncio.get_running_loop()
        if self.breaker.retry_in() > 0:
            raise EndpointUnavailable(
                f"circuit open after repeated failures (next probe in {self.breaker.retry_in():.0f}s)"
            )
        async with self.cond:
            slot = self._next_idle()
            if slot is not None:
                self._move(slot, SlotState.busy)
        if slot is not None:
            alive = await loop.run_in_executor(self._executor, self._runspace(slot).is_alive, max(1, int(seconds)))
            await self._give_back(slot, broken=not alive, reason="probe failed")
            if alive:
                return
        elif self._count(SlotState.busy) and time.monotonic() - self.last_success < 30:
            return  # every runspace is busy, and calls are succeeding
        reachable = await loop.run_in_executor(self._executor, ping, self.options, seconds)
        if not reachable:
            raise EndpointUnavailable("the PowerShell endpoint does not answer")
        if self.breaker.state is not BreakerState.closed:
            self.breaker.succeeded()  # the endpoint answers again: let calls through
