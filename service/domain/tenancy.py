"""Which tenant a mailbox belongs to, and who may see which tenant's cases.

One deployment serves many Microsoft 365 tenants (an MSP's customers). Each tenant is named
(``contoso``, ``fabrikam``; the settings' own tenant is ``default``) and workers store the
accepted domains they read from it. A case names its tenant; when the caller does not, the
tenant is the one whose accepted domains hold the mailbox's domain. These rules are here, pure,
so the API, the CLI and the worker decide the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from service.errors import AmbiguousTenant, ForeignMailbox, InvalidInput, UnknownTenant

#: The tenant that the UNBLOCK_TENANT_* settings describe (and every case from before tenants existed).
DEFAULT_TENANT = "default"
#: A tenant's name: DNS-label-like, lowercase (the API's schemas use the same pattern).
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)


class TenantStatus(StrEnum):
    pending = "pending"  # stored; a worker has not reached it yet
    active = "active"  # connected once; its accepted domains are known
    invalid = "invalid"  # the endpoint refused its identity (the detail says why)
    disabled = "disabled"  # kept for its cases' history; takes no new cases


def check_name(name: str) -> str:
    """Tenant names are DNS-label-like (they become the JEA configuration `UnblockRunner-<name>`)."""
    value = name.strip().lower()
    if not _NAME.match(value):
        raise InvalidInput(
            "a tenant name is 1-32 lowercase letters, digits and inner hyphens (it names the JEA "
            "configuration UnblockRunner-<name>)",
            field="name",
        )
    return value


@dataclass(frozen=True, slots=True)
class TenantDomains:
    """What intake knows of a tenant: whether it takes cases, and its accepted domains (None: not read yet)."""

    name: str
    enabled: bool
    domains: tuple[str, ...] | None


def route(mailbox: str, tenants: Sequence[TenantDomains], *, requested: str | None = None) -> str | None:
    """The tenant a new case for ``mailbox`` belongs to; None when it cannot be told yet.

    A tenant the caller names must exist and take cases, and (if its domains are known) accept the
    mailbox's domain. Otherwise the tenant whose domains hold it; two such tenants are ambiguous;
    none is a foreign mailbox once every enabled tenant's domains are known, and undecided (None:
    the worker decides once it has read them) while some are not, unless there is only one tenant.
    """
    domain = mailbox.rsplit("@", 1)[1].lower()
    enabled = [t for t in tenants if t.enabled]
    if requested is not None:
        chosen = next((t for t in enabled if t.name == requested), None)
        if chosen is None:
            raise UnknownTenant(f"no tenant {requested} takes cases", field="tenant")
        if chosen.domains is not None and domain not in chosen.domains:
            raise ForeignMailbox(f"{domain} is not an accepted domain of tenant {requested}", domain=domain)
        return chosen.name
    matching = [t.name for t in enabled if t.domains is not None and domain in t.domains]
    if len(matching) > 1:
        raise AmbiguousTenant(
            f"{domain} is accepted by tenants {', '.join(sorted(matching))}: name the tenant", domain=domain
        )
    if matching:
        return matching[0]
    unknown = [t.name for t in enabled if t.domains is None]
    if len(enabled) == 1 and unknown:
        return unknown[0]  # the only tenant: its worker checks the domain before it sends anything
    if unknown:
        return None
    known = sorted({d for t in enabled for d in t.domains or ()})
    raise ForeignMailbox(
        f"{domain} is not one of the domains this service may act on ({', '.join(known)})", domain=domain
    )


def accepted_by(mailbox: str, tenant: str | None, tenants: Sequence[TenantDomains]) -> bool:
    """Whether ``tenant``'s accepted domains, as known, hold the mailbox's domain: False while they
    are not known (``route`` may still have chosen it: the only tenant, or the one the caller named)."""
    domain = mailbox.rsplit("@", 1)[1].lower()
    chosen = next((t for t in tenants if t.name == tenant), None)
    return chosen is not None and chosen.domains is not None and domain in chosen.domains


def visible(tenant: str | None, scope: Iterable[str] | None) -> bool:
    """Whether a principal limited to ``scope`` tenants (None: all) may see something of ``tenant``.

    Something of no tenant yet (an undecided case) is seen only by unlimited principals.
    """
    if scope is None:
        return True
    return tenant is not None and tenant in set(scope)
