"""The scopes an API key or token can carry (contract section 4)."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    cases_read = "cases:read"
    cases_write = "cases:write"
    cases_approve = "cases:approve"
    credentials_reveal = "credentials:reveal"
    senders_read = "senders:read"
    # Webhook subscriptions within the key's tenants (admin may manage every subscription too).
    webhooks_manage = "webhooks:manage"
    admin = "admin"


ALL_SCOPES: frozenset[str] = frozenset(s.value for s in Scope)


def parse_scopes(values: list[str] | tuple[str, ...]) -> list[str]:
    """Validate scope names, keeping their order and dropping repeats."""
    unknown = [v for v in values if v not in ALL_SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; known: {', '.join(sorted(ALL_SCOPES))}")
    seen: list[str] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen
