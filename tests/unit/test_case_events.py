"""In-process news of case changes (service.runtime.CaseEvents): a view's watch keeps what it was told."""

from __future__ import annotations

from service.runtime import CaseEvents


async def test_a_change_published_before_the_view_waits_is_kept_for_its_wait() -> None:
    events = CaseEvents()
    with events.watch("c1") as watch:
        events.publish("c1")  # while the view was reading or sending
        assert await watch.wait(5)
        assert not await watch.wait(0.05)  # told once per change


async def test_a_watch_hears_only_its_case_and_the_star_hears_every_case() -> None:
    events = CaseEvents()
    with events.watch("c1") as one, events.watch("*") as every:
        events.publish("c2")
        assert not await one.wait(0.05)
        assert await every.wait(5)


async def test_a_watch_that_ended_is_told_nothing() -> None:
    events = CaseEvents()
    with events.watch("c1") as watch:
        pass
    events.publish("c1")
    assert not await watch.wait(0.05)
    assert not await events.wait("c1", 0.05)  # a wait is a watch of its own, from now on
