"""The service's exception tree.

Every error the service raises on purpose is a :class:`ServiceError`; its docstring is its
default message and ``code`` is the stable machine-readable name that reaches cases
(``last_error.code``) and API clients (problem+json ``type``). Only ``service.api.errors``
turns these into HTTP statuses.

    ServiceError
    ├── InvalidInput ........................ the request is wrong; fixing it is the caller's job
    │   ├── InvalidMailbox
    │   ├── ForeignMailbox
    │   ├── IdempotencyKeyReused
    │   ├── RefusedDestination .............. a URL's host is or resolves to an address not contacted
    │   └── UnresolvableHost ................ a URL's host name has no address
    ├── NotFound
    │   ├── CaseNotFound
    │   ├── ApiKeyNotFound
    │   └── WebhookNotFound
    ├── Conflict
    │   ├── OpenCaseExists ................... carries case_id of the open case
    │   ├── InvalidTransition ................ carries action, current state, allowed states
    │   ├── ApiKeyNameTaken .................. API key names are unique (audit records name them)
    │   ├── ConcurrentUpdate ................. lost a compare-and-set on version
    │   └── ApproverIsRequester .............. four eyes: the opener cannot approve
    ├── Gone
    │   └── CredentialGone
    ├── Unauthenticated
    ├── Forbidden
    ├── RateLimited .......................... carries retry_after
    ├── Unavailable .......................... a dependency is down (database, endpoint)
    ├── AuditKeyMissing ...................... nothing to sign the audit log with
    └── BridgeError .......................... the tenant said no, or could not be reached
        ├── TransientError ................... retryable: connection, 5xx, timeout
        │   ├── EndpointUnavailable
        │   ├── CallTimeout
        │   └── Throttled .................... carries retry_after
        ├── MailboxNotFound
        ├── UnblockLimitExceeded
        ├── PermissionDenied
        ├── SyncedUser ....................... password must be reset in on-premises AD
        ├── InvalidPassword
        └── RemoteError ...................... anything else the tenant refused: permanent
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar


class ServiceError(Exception):
    """The service could not do what was asked."""

    code: ClassVar[str] = "service_error"

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.message = message or (type(self).__doc__ or "").strip().splitlines()[0]
        self.context: dict[str, Any] = dict(context)
        super().__init__(self.message)


class InvalidInput(ServiceError):
    """The request is not valid."""

    code = "invalid_input"


class InvalidMailbox(InvalidInput):
    """The mailbox is not a single, plain SMTP address."""

    code = "invalid_mailbox"


class ForeignMailbox(InvalidInput):
    """The mailbox is outside the domains this service may act on."""

    code = "foreign_mailbox"


class UnknownTenant(InvalidInput):
    """No tenant of this name takes cases."""

    code = "unknown_tenant"


class AmbiguousTenant(InvalidInput):
    """The mailbox's domain is accepted by more than one tenant: name the tenant."""

    code = "ambiguous_tenant"


class IdempotencyKeyReused(InvalidInput):
    """This Idempotency-Key was already used with a different request body."""

    code = "idempotency_key_reused"


class RefusedDestination(InvalidInput):
    """The URL leads to an address this service does not contact."""

    code = "refused_destination"


class UnresolvableHost(InvalidInput):
    """The URL's host name does not resolve."""

    code = "unresolvable_host"


class NotFound(ServiceError):
    """Nothing is there."""

    code = "not_found"


class TenantNotFound(NotFound):
    """No tenant has this name."""

    code = "tenant_not_found"


class CaseNotFound(NotFound):
    """No case has this id."""

    code = "case_not_found"


class ApiKeyNotFound(NotFound):
    """No API key has this id."""

    code = "api_key_not_found"


class WebhookNotFound(NotFound):
    """No webhook subscription has this id."""

    code = "webhook_not_found"


class CredentialNotFound(NotFound):
    """This case has no temporary password: no reset was asked for, or the reset did not succeed."""

    code = "credential_not_found"


class Conflict(ServiceError):
    """The request conflicts with the current state."""

    code = "conflict"


class CredentialNotReady(Conflict):
    """The password reset has not run yet; ask again once the case has passed it."""

    code = "credential_not_ready"


class OpenCaseExists(Conflict):
    """This mailbox already has an open case."""

    code = "open_case_exists"

    def __init__(self, case_id: str, message: str | None = None) -> None:
        super().__init__(message, case_id=case_id)
        self.case_id = case_id


class InvalidTransition(Conflict):
    """The case cannot do that from its current state."""

    code = "invalid_transition"

    def __init__(self, action: str, current: str, allowed: Iterable[str]) -> None:
        self.action = action
        self.current = current
        self.allowed = tuple(sorted(allowed))
        allowed_text = ", ".join(self.allowed) or "no state"
        super().__init__(
            f"cannot {action} a case in state {current}; allowed from: {allowed_text}",
            action=action,
            state=current,
            allowed_states=list(self.allowed),
        )


class ApiKeyNameTaken(Conflict):
    """Another API key already has this name."""

    code = "api_key_name_taken"


class ConcurrentUpdate(Conflict):
    """The case changed while this request was being handled; read it again and retry."""

    code = "concurrent_update"


class ApproverIsRequester(Conflict):
    """Approval needs a second person: whoever opened the case cannot approve it."""

    code = "approver_is_requester"


class Gone(ServiceError):
    """It existed once and is gone for good."""

    code = "gone"


class CredentialGone(Gone):
    """The temporary password was already revealed or has expired; it cannot be shown again."""

    code = "credential_gone"


class Unauthenticated(ServiceError):
    """A valid API key or bearer token is required."""

    code = "unauthenticated"


class Forbidden(ServiceError):
    """The credential lacks the scope this operation needs."""

    code = "forbidden"


class RateLimited(ServiceError):
    """Too many requests for this key; slow down."""

    code = "rate_limited"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class Unavailable(ServiceError):
    """A dependency of the service is unavailable."""

    code = "unavailable"


class AuditKeyMissing(ServiceError):
    """No audit key is configured: set UNBLOCK_AUDIT_KEY or UNBLOCK_SECRET_KEY."""

    code = "audit_key_missing"


class BridgeError(ServiceError):
    """The tenant refused the command."""

    code = "remote_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        cmdlet: str | None = None,
        error_id: str | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.retry_after = retry_after
        self.cmdlet = cmdlet
        self.error_id = error_id

    def as_dict(self) -> dict[str, Any]:
        """The ``last_error`` shape of the contract: code, message, retryable."""
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class TransientError(BridgeError):
    """The endpoint could not be reached or did not answer in time; trying again may work."""

    code = "endpoint_unavailable"
    retryable = True


class EndpointUnavailable(TransientError):
    """The PowerShell endpoint is unreachable."""

    code = "endpoint_unavailable"


class CallTimeout(TransientError):
    """The remote command did not finish within the call timeout."""

    code = "call_timeout"


class Throttled(TransientError):
    """The tenant is throttling requests."""

    code = "throttled"


class MailboxNotFound(BridgeError):
    """The tenant has no such user or mailbox."""

    code = "mailbox_not_found"


class UnblockLimitExceeded(BridgeError):
    """This sender has been unblocked too many times; only Microsoft support can lift it now."""

    code = "unblock_limit_exceeded"


class PermissionDenied(BridgeError):
    """The remoting account lacks the role this command needs."""

    code = "permission_denied"


class SyncedUser(BridgeError):
    """The account is synced from on-premises AD; its password must be reset there."""

    code = "synced_user"


class InvalidPassword(BridgeError):
    """The tenant refused the new password (complexity or history rules)."""

    code = "invalid_password"


class RemoteError(BridgeError):
    """The tenant refused the command."""

    code = "remote_error"
