"""One cap on the runspaces every tenant's pool holds together, shared fairly.

Each tenant has its own warm pool (a runspace is connected to one tenant), and each pool has its
own cap (``UNBLOCK_PS_TENANT_POOL_SIZE``); together they may hold no more than the global cap
(``UNBLOCK_PS_POOL_SIZE``), because the runner host and Exchange Online limit sessions per host
and per app, not per tenant. Without sharing rules the first tenant with an incident would fill
the whole budget and every other tenant's case would wait for it to end.

The rules are max-min fairness over what each pool *holds* (opening, idle or busy runspaces):

- free room goes to the poorest pool that is waiting for a runspace, before a richer one
  (:func:`room_for`);
- when the budget is full, a waiting pool takes an *idle* runspace from a pool holding at least two
  more than it (or from any pool if it holds none, or when that runspace has sat idle a while):
  the idle runspace is closed and its room opened for the waiter (:meth:`RunspaceBudget.reclaim_for`);
- a pool that gets a runspace back from a call while a pool it out-holds waits closes it instead of
  keeping it (:meth:`RunspaceBudget.owes`), so a busy tenant's share shrinks toward the others'.

Moving a runspace between tenants costs a sign-in (seconds), so room moves only when it makes
the split strictly fairer. What a pool holds is counted from its own slots, never kept twice, so
the budget cannot drift from the pools. Every pool of a process lives on one event loop: the
budget needs no lock of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Protocol

#: An idle runspace older than this may be lent to a waiting tenant even when the split is already even.
LEND_IDLE_AFTER = 10.0


def deserves(richer: int, poorer: int) -> bool:
    """Whether moving one runspace from a pool holding ``richer`` to one holding ``poorer`` is fairer.

    Strictly fairer when the gap is two or more; a pool with nothing always deserves one from a
    pool with something (otherwise, with more busy tenants than room, some would never run).
    """
    return richer >= poorer + 2 or (poorer == 0 and richer > 0)


def room_for(total: int, holdings: Iterable[int], mine: int, waiting: Iterable[int]) -> int:
    """How many new runspaces a pool holding ``mine`` may open now.

    ``holdings`` are what every pool holds (its own included), ``waiting`` what each *other* pool
    that is waiting for room holds. Free room serves poorer waiters first.
    """
    free = total - sum(holdings)
    if free <= 0:
        return 0
    poorer = sum(1 for held in waiting if held < mine)
    return max(0, free - poorer)


class SharingPool(Protocol):
    """What the budget needs of a pool (:class:`~service.powershell.pool.WarmPool` is one)."""

    @property
    def held(self) -> int: ...

    def idle_for(self) -> float | None:
        """How long its longest-idle runspace has been idle; None when none is idle."""
        ...

    def surrender_idle(self) -> bool:
        """Close its longest-idle runspace, freeing its room; False if none is idle."""
        ...

    def wake(self) -> None:
        """Let its callers waiting for room look again."""
        ...


class RunspaceBudget:
    """The global cap, and the pools sharing it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._pools: list[SharingPool] = []
        self._waiting: dict[int, int] = {}  # id(pool) -> callers of that pool waiting for room

    def join(self, pool: SharingPool) -> None:
        if all(p is not pool for p in self._pools):
            self._pools.append(pool)

    def leave(self, pool: SharingPool) -> None:
        self._pools = [p for p in self._pools if p is not pool]
        self._waiting.pop(id(pool), None)
        self.released()

    @property
    def used(self) -> int:
        return sum(pool.held for pool in self._pools)

    def _waiters(self, besides: SharingPool | None = None) -> list[SharingPool]:
        return [p for p in self._pools if p is not besides and self._waiting.get(id(p), 0) > 0]

    def room_for(self, pool: SharingPool) -> int:
        return room_for(
            self.total, (p.held for p in self._pools), pool.held, (p.held for p in self._waiters(besides=pool))
        )

    def waiting(self, pool: SharingPool, delta: int) -> None:
        """A caller of ``pool`` starts (+1) or stops (-1) waiting for room."""
        count = self._waiting.get(id(pool), 0) + delta
        if count > 0:
            self._waiting[id(pool)] = count
        else:
            self._waiting.pop(id(pool), None)

    def reclaim_for(self, pool: SharingPool) -> bool:
        """The budget is full and ``pool`` needs room: close an idle runspace of a pool that can spare it."""
        if self.used < self.total:
            return False
        mine = pool.held
        lenders = []
        for other in self._pools:
            idle = other.idle_for() if other is not pool else None
            if idle is not None and (deserves(other.held, mine) or idle >= LEND_IDLE_AFTER):
                lenders.append(other)
        if not lenders:
            return False
        return max(lenders, key=lambda p: p.held).surrender_idle()

    def owes(self, pool: SharingPool) -> bool:
        """Whether ``pool`` should close the runspace a call just gave back, for a poorer waiting pool."""
        if self.used < self.total:
            return False
        return any(deserves(pool.held, other.held) for other in self._waiters(besides=pool))

    def released(self) -> None:
        """Room was freed: the waiting pools look again, the poorest first."""
        for pool in sorted(self._waiters(), key=lambda p: p.held):
            pool.wake()

    def check(self) -> None:
        """The invariant the tests hold it to: the pools together never hold more than the cap."""
        assert self.used <= self.total, f"{self.used} runspaces held, the cap is {self.total}"


async def notify(condition: asyncio.Condition) -> None:
    """Wake every caller waiting on ``condition`` (a helper for :meth:`SharingPool.wake`)."""
    async with condition:
        condition.notify_all()
