"""A circuit breaker for the PowerShell endpoint: an outage costs one probe per interval.

After ``threshold`` consecutive failures that say the endpoint itself is unwell (unreachable,
dropped, timed out), the breaker opens: calls fail at once with EndpointUnavailable, touching
nothing. After ``interval`` one call is let through as a probe (half-open); its success closes
the breaker, its failure opens it for another interval. Failures where the endpoint answered
(an error record from the tenant) say nothing about the endpoint and do not count.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

from service.errors import EndpointUnavailable


class BreakerState(StrEnum):
    closed = "closed"
    open = "open"
    half_open = "half_open"


class CircuitBreaker:
    def __init__(self, *, threshold: int, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or interval <= 0:
            raise ValueError("threshold must be at least 1 and interval positive")
        self.threshold = threshold
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.closed
        if self._clock() - self._opened_at >= self.interval:
            return BreakerState.half_open
        return BreakerState.open

    def retry_in(self) -> float:
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.interval - (self._clock() - self._opened_at))

    def before_call(self) -> None:
        """Raise EndpointUnavailable while open, and for all but one caller while half-open."""
        with self._lock:
            state = self._state()
            if state is BreakerState.closed:
                return
            if state is BreakerState.half_open and not self._probing:
                self._probing = True
                return
            wait = max(0.0, self.interval - (self._clock() - (self._opened_at or 0.0)))
        raise EndpointUnavailable(
            f"the PowerShell endpoint is failing; calls are paused (circuit open, next probe in {wait:.0f}s)",
            retry_after=max(wait, 1.0),
        )

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def failed(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._probing = False

    def released(self) -> None:
        """A half-open probe ended without saying anything about the endpoint."""
        with self._lock:
            self._probing = False
