"""The circuit breaker, with a fake clock: closed, open after N failures, one probe when half-open."""

from __future__ import annotations

import pytest

from service.errors import EndpointUnavailable
from service.powershell.circuit import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_lets_one_probe_through_later() -> None:
    """Three failures open it; calls then fail at once; after the interval exactly one probe passes."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, interval=10, clock=clock)
    for _ in range(2):
        breaker.before_call()
        breaker.failed()
    assert breaker.state is BreakerState.closed
    breaker.before_call()
    breaker.failed()
    assert breaker.state is BreakerState.open
    with pytest.raises(EndpointUnavailable, match="circuit open") as caught:
        breaker.before_call()
    assert caught.value.retry_after == 10
    clock.now += 10
    assert breaker.state is BreakerState.half_open
    breaker.before_call()  # the probe
    with pytest.raises(EndpointUnavailable):
        breaker.before_call()  # everyone else waits for the probe's verdict
    breaker.succeeded()
    assert breaker.state is BreakerState.closed
    breaker.before_call()


def test_a_failed_probe_reopens_for_another_interval() -> None:
    """Half-open and the probe fails: open again, from now."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, interval=5, clock=clock)
    breaker.failed()
    clock.now += 5
    breaker.before_call()
    breaker.failed()
    assert breaker.state is BreakerState.open
    assert breaker.retry_in() == 5


def test_successes_reset_the_count() -> None:
    """Only consecutive failures count."""
    breaker = CircuitBreaker(threshold=2, interval=5, clock=Clock())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state is BreakerState.closed
