"""Retry policy as data, and the pure function that schedules the next attempt."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a step is retried after a transient failure.

    Attempt ``n`` (1-based) that failed is followed by a wait of
    ``initial_interval * coefficient ** (n - 1)``, capped at ``maximum_interval``, spread by
    up to ``jitter`` of itself so that many cases failing together do not retry together.
    After ``maximum_attempts`` failed attempts the step fails for good. Failures that only say
    the endpoint could not be reached (``outage_codes``: nothing was done, and waiting costs
    nothing) get the larger budget ``maximum_outage_attempts``, so that a runner host down for an
    hour delays cases instead of failing them.
    """

    initial_interval: float = 2.0
    coefficient: float = 2.0
    maximum_interval: float = 300.0
    maximum_attempts: int = 6
    jitter: float = 0.2
    non_retryable_codes: frozenset[str] = field(default_factory=frozenset)
    maximum_outage_attempts: int = 288
    outage_codes: frozenset[str] = frozenset({"endpoint_unavailable"})

    def __post_init__(self) -> None:
        if self.initial_interval <= 0:
            raise ValueError("initial_interval must be positive")
        if self.coefficient < 1:
            raise ValueError("coefficient must be at least 1")
        if self.maximum_interval < self.initial_interval:
            raise ValueError("maximum_interval must be at least initial_interval")
        if self.maximum_attempts < 1:
            raise ValueError("maximum_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    def is_outage(self, code: str) -> bool:
        return code in self.outage_codes

    def retries_left(self, failures: int, code: str, *, attempts: int = 0) -> bool:
        """``failures``: consecutive failures that used up an attempt; ``attempts``: every start of the step."""
        if code in self.non_retryable_codes:
            return False
        if self.is_outage(code):
            return attempts < self.maximum_outage_attempts
        return failures < self.maximum_attempts


def backoff_seconds(policy: RetryPolicy, attempt: int, *, spread: float = 0.5) -> float:
    """Wait after failed attempt ``attempt``; ``spread`` in [0, 1) picks the jitter (0.5 = none)."""
    base = min(policy.initial_interval * policy.coefficient ** max(attempt - 1, 0), policy.maximum_interval)
    return base * (1 + policy.jitter * (2 * spread - 1))


def next_attempt_at(
    policy: RetryPolicy,
    attempt: int,
    now: datetime,
    *,
    retry_after: float | None = None,
    spread: float = 0.5,
) -> datetime:
    """When to try again; a server's Retry-After is honoured when it asks for longer."""
    wait = backoff_seconds(policy, attempt, spread=spread)
    if retry_after is not None:
        wait = max(wait, retry_after)
    return now + timedelta(seconds=wait)
