"""The shared runspace budget's rules, without any pool: who may open, who lends, who gives back."""

from __future__ import annotations

import pytest

from service.powershell.budget import LEND_IDLE_AFTER, RunspaceBudget, deserves, room_for


@pytest.mark.parametrize(
    ("richer", "poorer", "fairer"),
    [
        (2, 0, True),
        (1, 0, True),  # a tenant with nothing gets one from a tenant with one
        (0, 0, False),
        (3, 1, True),
        (2, 1, False),  # moving one would only swap who has more
        (4, 3, False),
        (5, 3, True),
    ],
)
def test_a_runspace_moves_only_when_the_split_gets_fairer(richer: int, poorer: int, fairer: bool) -> None:
    assert deserves(richer, poorer) is fairer


def test_free_room_goes_to_poorer_waiters_first() -> None:
    # cap 8, holdings 3 + 3 + 0 + 0: two free
    assert room_for(8, [3, 3, 0, 0], mine=3, waiting=[]) == 2
    assert room_for(8, [3, 3, 0, 0], mine=3, waiting=[0]) == 1  # one poorer tenant waits: it goes first
    assert room_for(8, [3, 3, 0, 0], mine=3, waiting=[0, 0]) == 0
    assert room_for(8, [3, 3, 0, 0], mine=0, waiting=[0, 3]) == 2  # nobody poorer than me waits
    assert room_for(8, [4, 4], mine=4, waiting=[]) == 0  # full


class FakePool:
    """What the budget sees of a pool: holdings, idle runspaces and how long they idled."""

    def __init__(self, budget: RunspaceBudget, held: int = 0, idle: int = 0, idle_for: float = 0.0) -> None:
        self._held, self.idle, self._idle_for, self.woken = held, idle, idle_for, 0
        budget.join(self)

    @property
    def held(self) -> int:
        return self._held

    def idle_for(self) -> float | None:
        return self._idle_for if self.idle else None

    def surrender_idle(self) -> bool:
        if not self.idle:
            return False
        self.idle -= 1
        self._held -= 1
        return True

    def wake(self) -> None:
        self.woken += 1


def test_a_tenant_without_runspaces_takes_an_idle_one_from_the_richest() -> None:
    budget = RunspaceBudget(4)
    busy = FakePool(budget, held=1)
    rich = FakePool(budget, held=3, idle=2)
    newcomer = FakePool(budget)
    assert budget.used == 4
    assert budget.reclaim_for(newcomer)
    assert (rich.held, busy.held, budget.used) == (2, 1, 3)
    budget.check()


def test_no_idle_runspace_moves_when_the_split_is_already_even_unless_it_idled_long() -> None:
    budget = RunspaceBudget(4)
    a = FakePool(budget, held=2, idle=1)
    b = FakePool(budget, held=2)
    assert not budget.reclaim_for(b)
    assert a.held == 2
    a._idle_for = LEND_IDLE_AFTER + 1  # an idle runspace nobody used for a while is lent
    assert budget.reclaim_for(b)
    assert a.held == 1


def test_nothing_is_reclaimed_while_there_is_free_room() -> None:
    budget = RunspaceBudget(4)
    a = FakePool(budget, held=3, idle=3)
    b = FakePool(budget)
    assert budget.room_for(b) == 1
    assert not budget.reclaim_for(b)
    assert a.held == 3


def test_a_busy_tenant_gives_back_what_a_poorer_waiting_tenant_deserves() -> None:
    budget = RunspaceBudget(4)
    rich = FakePool(budget, held=4)
    poor = FakePool(budget)
    assert not budget.owes(rich)  # nobody waits
    budget.waiting(poor, +1)
    assert budget.owes(rich)
    assert not budget.owes(poor)
    budget.released()
    assert poor.woken == 1
    assert rich.woken == 0
    budget.waiting(poor, -1)
    assert not budget.owes(rich)


def test_a_pool_that_leaves_stops_counting() -> None:
    budget = RunspaceBudget(2)
    a = FakePool(budget, held=2)
    FakePool(budget)
    assert budget.used == 2
    budget.leave(a)
    assert budget.used == 0
