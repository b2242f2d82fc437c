"""The port the engine and the API depend on: the tenant operations, as typed async calls.

The pypsrp bridge (:mod:`service.powershell.bridge`) implements it against a Windows runner
host or the sandbox tenant. Every method is one remote command with bound parameters, and
every failure is one of the :class:`~service.errors.BridgeError` classes.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from service.domain.tenant import (
    AuthMethod,
    Forwarding,
    InboxRule,
    MailboxPermission,
    OAuthGrant,
    RecipientPermission,
    Restriction,
    ServicePrincipal,
    UserInfo,
)


class GatewayDirectory(Protocol):
    """The gateways of a process by tenant name (service.worker.gateways.Gateways)."""

    @property
    def default(self) -> TenantGateway | None: ...

    async def for_tenant(self, name: str) -> TenantGateway: ...

    def started(self) -> dict[str, TenantGateway]: ...

    async def close(self) -> None: ...


@runtime_checkable
class TenantGateway(Protocol):
    async def start(self) -> None:
        """Open the warm runspaces (or arrange to open them on first use)."""

    async def close(self) -> None:
        """Close every runspace and its remote shell."""

    async def probe(self) -> None:
        """A cheap round trip for /readyz; raises a BridgeError when the endpoint is not usable."""

    async def get_restriction(self, address: str) -> Restriction | None: ...

    async def list_restrictions(self) -> list[Restriction]: ...

    async def remove_restriction(self, address: str, *, reason: str | None = None) -> bool:
        """Unblock; False when the sender was not on the list."""

    async def reset_password(self, upn: str, password: str, *, force_change: bool = True) -> None: ...

    async def revoke_sessions(self, upn: str) -> None: ...

    async def list_inbox_rules(self, mailbox: str) -> list[InboxRule]:
        """Every rule, hidden ones included (marked ``hidden``)."""

    async def get_forwarding(self, mailbox: str) -> Forwarding: ...

    async def list_mailbox_permissions(self, mailbox: str) -> list[MailboxPermission]: ...

    async def list_send_as(self, mailbox: str) -> list[RecipientPermission]: ...

    async def list_auth_methods(self, upn: str) -> list[AuthMethod]: ...

    async def list_oauth_grants(self, upn: str) -> list[OAuthGrant]: ...

    async def get_service_principal(self, object_id: str) -> ServicePrincipal | None: ...

    async def disable_inbox_rule(self, mailbox: str, identity: str) -> None: ...

    async def clear_forwarding(self, mailbox: str) -> None: ...

    async def accepted_domains(self) -> list[str]: ...

    async def get_user(self, upn: str) -> UserInfo | None: ...

    async def user_exists(self, upn: str) -> bool: ...
