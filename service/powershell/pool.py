"""The warm pool: N connected runspaces shared by async callers without blocking the event loop.

Each call borrows one runspace for the whole pipeline (so at most one pipeline per runspace),
runs it in a worker thread, and gives it back. Call N+1 waits its turn. A call that outlives
its timeout returns :class:`~service.errors.CallTimeout` to its caller at once; the thread
finishes on its own and the runspace is thrown away. A runspace that breaks (dropped
connection, fault, timeout) is closed and a replacement is opened in the background, so the
next caller finds a warm one. Runspaces are recycled after a number of calls because the
Exchange module does not free its memory on disconnect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service.errors import CallTimeout, EndpointUnavailable, Throttled, TransientError
from service.logging import get_logger
from service.powershell.circuit import BreakerState, CircuitBreaker
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
        self._idle: deque[Runspace] = deque()
        self._total = 0  # open or being opened, by callers or the warmer
        self._opening = 0
        self._in_use = 0
        self._cond: asyncio.Condition | None = None
        self._warmer: asyncio.Task[None] | None = None
        self._closed = False
        self._serial = 0
        self._background: set[asyncio.Task[None]] = set()
        self._closing: set[concurrent.futures.Future[None]] = set()
        self._orphans: list[tuple[asyncio.Future[None], Runspace]] = []
        self.last_success = 0.0

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> PoolStats:
        return PoolStats(size=self.size, in_use=self._in_use, idle=len(self._idle), opening=self._opening)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin warming every runspace in the background (unless lazy); never fails."""
        if not self.lazy:
            self._kick_warmer()

    async def close(self) -> None:
        self._closed = True
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warmer
        if self._background:
            # pipelines being terminated hand their runspace back; those are closed below or by _give_back
            await asyncio.wait(self._background, timeout=10)
        async with self.cond:
            idle = list(self._idle)
            self._idle.clear()
            self.cond.notify_all()
        for runspace in idle:
            self._close_later(runspace)
        for job, runspace in self._orphans:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(job), 15)
            self._close_later(runspace)
        if self._closing:
            await asyncio.wait([asyncio.wrap_future(job) for job in list(self._closing)], timeout=10)
        self._executor.shutdown(wait=False)

    def _name(self) -> str:
        self._serial += 1
        return f"rs{self._serial}"

    async def _open(self, *, gated: bool = True) -> Runspace:
        runspace = self._factory(self.options, self._name())
        deadline = time.monotonic() + self.open_timeout
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if gated:
            self.breaker.before_call()
        self._opening += 1
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
        finally:
            self._opening -= 1
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
                missing = self.size - self._total
                if missing <= 0:
                    return
                self._total += missing
            batch = asyncio.gather(*(self._open() for _ in range(missing)), return_exceptions=True)
            try:
                results = await asyncio.shield(batch)
            except asyncio.CancelledError:
                # Closing: runspaces that finish opening now are closed, not dropped with their shells
                # (a cancel arriving just as the batch completes would otherwise lose its results).
                for result in await batch:
                    if not isinstance(result, BaseException):
                        self._close_later(result)
                raise
            failures = 0
            async with self.cond:
                for result in results:
                    if not isinstance(result, BaseException):
                        if self.closed:  # closed while this runspace was opening
                            self._total -= 1
                            self._close_later(result)
                        else:
                            self._idle.append(result)
                    else:
                        failures += 1
                        self._total -= 1
                self.cond.notify_all()
            if failures:
                first = next(r for r in results if isinstance(r, BaseException))
                log.warning("runspace_open_failed", count=failures, error_class=type(first).__name__, detail=str(first))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
            else:
                backoff = 1.0

    # --- borrowing -------------------------------------------------------------------------------

    async def _acquire(self, deadline: float) -> Runspace:
        if self._orphans:
            self._reap_orphans()
        async with self.cond:
            while True:
                if self._closed:
                    raise EndpointUnavailable("the PowerShell bridge is closed")
                if self._idle:
                    self._in_use += 1
                    return self._idle.popleft()
                if self._total < self.size:
                    self._total += 1
                    self._in_use += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # Nothing was sent: like an outage, this does not use up a case's attempts.
                    raise EndpointUnavailable("no runspace became free in time (a slow endpoint, or a small pool)")
                try:
                    await asyncio.wait_for(self.cond.wait(), remaining)
                except TimeoutError:
                    continue
        # The call that needs it has passed the breaker. The opening runs on its own: if the caller
        # stops waiting, a runspace that opens later joins the pool instead of being thrown away.
        opening = asyncio.ensure_future(self._open(gated=False))
        try:
            return await asyncio.wait_for(asyncio.shield(opening), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            opening.add_done_callback(self._adopt)
            raise EndpointUnavailable("a runspace was still opening when the call's time ran out") from None
        except BaseException:
            if not opening.done():
                opening.add_done_callback(self._adopt)
                raise
            async with self.cond:
                self._total -= 1
                self._in_use -= 1
                self.cond.notify()
            raise

    def _adopt(self, opening: asyncio.Future[Runspace]) -> None:
        """A runspace opened for a caller who left: keep it if it works, give back its slot if not."""

        async def settle() -> None:
            async with self.cond:
                self._in_use -= 1
                if opening.cancelled() or opening.exception() is not None or self._closed:
                    self._total -= 1
                    if not opening.cancelled() and opening.exception() is None:
                        self._close_later(opening.result())
                else:
                    self._idle.append(opening.result())
                self.cond.notify()

        self._spawn(settle())

    async def _give_back(self, runspace: Runspace, *, broken: bool, reason: str = "") -> None:
        retire = broken or runspace.calls >= self.recycle_after or self._closed
        async with self.cond:
            self._in_use -= 1
            if retire:
                self._total -= 1
            else:
                self._idle.append(runspace)
            self.cond.notify()
        if retire:
            log.info("runspace_retired", runspace=runspace.name, reason=reason or "recycled", calls=runspace.calls)
            self._close_later(runspace)
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
        """Run one pipeline on a borrowed runspace; raises a classified BridgeError on failure."""
        limit = limit or self.call_timeout
        deadline = time.monotonic() + limit
        self.breaker.before_call()
        try:
            runspace = await self._acquire(deadline)
        except BaseException:
            self.breaker.released()  # an open that failed has told the breaker already
            raise
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, runspace.invoke, invocations, deadline)
        try:
            result = await asyncio.wait_for(asyncio.shield(job), max(0.0, deadline - time.monotonic()) + 1.0)
        except TimeoutError:
            self._abandon(runspace, job)
            self.breaker.failed()
            raise CallTimeout(f"{invocations[-1].name} did not finish within {limit:.0f}s") from None
        except RunspaceFailure as failure:
            self._judge(failure.error)
            await self._give_back(runspace, broken=failure.broken, reason=failure.error.code)
            raise failure.error from None
        except asyncio.CancelledError:
            self.breaker.released()
            self._abandon(runspace, job)
            raise
        self.breaker.succeeded()
        self.last_success = time.monotonic()
        self._spawn(self._finish(runspace))
        return result

    async def _finish(self, runspace: Runspace) -> None:
        """Terminate the finished pipeline on the server, then make the runspace available again."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, runspace.finish)
        except RunspaceFailure as failure:
            await self._give_back(runspace, broken=True, reason=failure.error.code)
            return
        except RuntimeError:  # executor shut down
            return
        await self._give_back(runspace, broken=False)

    def _abandon(self, runspace: Runspace, job: asyncio.Future[RawResult]) -> None:
        """A caller gave up: the runspace is lost to it; close it once its thread lets go."""

        def closed(_: object) -> None:
            self._close_later(runspace)

        job.add_done_callback(closed)

        async def release() -> None:
            async with self.cond:
                self._in_use -= 1
                self._total -= 1
                self.cond.notify()
            log.info("runspace_retired", runspace=runspace.name, reason="abandoned")
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
            runspace = self._idle.popleft() if self._idle else None
            if runspace is not None:
                self._in_use += 1
        if runspace is not None:
            alive = await loop.run_in_executor(self._executor, runspace.is_alive, max(1, int(seconds)))
            await self._give_back(runspace, broken=not alive, reason="probe failed")
            if alive:
                return
        elif self._in_use and time.monotonic() - self.last_success < 30:
            return  # every runspace is busy, and calls are succeeding
        reachable = await loop.run_in_executor(self._executor, ping, self.options, seconds)
        if not reachable:
            raise EndpointUnavailable("the PowerShell endpoint does not answer")
        if self.breaker.state is not BreakerState.closed:
            self.breaker.succeeded()  # the endpoint answers again: let calls through
