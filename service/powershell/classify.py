"""Error classification: every remote failure becomes one error class the engine can act on.

Error records are matched by what identifies them reliably: the FullyQualifiedErrorId
(Exchange's ``[FailureCategory=Cmdlet-<Exception>]``, Graph's ``<ErrorCode>,<Cmdlet>``, the AD
module's ``ActiveDirectoryCmdlet:<Exception>``, PowerShell's own binding ids), then the error
category, then the exception's type names. The message is read only where the first three
cannot tell cases apart (Graph answers ``Request_BadRequest`` both for a weak password and for
an on-premises-synced user) and to pick up a server's Retry-After.

The table is data, first match wins, so adding a case is adding a row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from service.errors import (
    BridgeError,
    EndpointUnavailable,
    InvalidPassword,
    MailboxNotFound,
    PermissionDenied,
    RemoteError,
    SyncedUser,
    Throttled,
    TransientError,
    UnblockLimitExceeded,
)

# System.Management.Automation.ErrorCategory values used below.
CONNECTION_ERROR = 27
AUTHENTICATION_ERROR = 28
PERMISSION_DENIED = 18
LIMITS_EXCEEDED = 29
QUOTA_EXCEEDED = 30
RESOURCE_UNAVAILABLE = 21
OPERATION_TIMEOUT = 15

_RETRY_AFTER = re.compile(r"retry[- ]?after\D{0,4}(\d+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What a PowerShell error record says, independent of the client library."""

    fqid: str
    category: int
    reason: str = ""
    exception_types: tuple[str, ...] = ()
    message: str = ""
    terminating: bool = False

    def id_has(self, *parts: str) -> bool:
        return any(part.lower() in self.fqid.lower() for part in parts)

    def id_starts(self, *prefixes: str) -> bool:
        return any(self.fqid.lower().startswith(p.lower()) for p in prefixes)

    def exception_is(self, *names: str) -> bool:
        short = {t.split("[", 1)[0].rsplit(".", 1)[-1].lower() for t in self.exception_types}
        full = {t.split("[", 1)[0].lower() for t in self.exception_types}
        return any(n.lower() in short or n.lower() in full for n in names)


Test = Callable[[RecordInfo], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    test: Test
    error: type[BridgeError]
    breaks_runspace: bool = False
    note: str = ""


@dataclass(frozen=True, slots=True)
class Classified:
    error: BridgeError
    rule: str
    breaks_runspace: bool = False
    details: dict[str, str] = field(default_factory=dict)


RULES: tuple[Rule, ...] = (
    Rule(
        "unblock_limit",
        lambda r: r.id_has("UnblockLimitExceeded") or r.exception_is("UnblockLimitExceededException"),
        UnblockLimitExceeded,
    ),
    Rule(
        "throttled",
        lambda r: (
            r.id_starts("TooManyRequests", "Throttl")
            or r.id_has("ThrottlingException", "MicroDelay")
            or r.exception_is("ThrottlingException")
            or r.category == QUOTA_EXCEEDED
        ),
        Throttled,
    ),
    Rule(
        "permission_denied",
        lambda r: (
            r.id_has("AccessDeniedException")
            or r.id_starts("Authorization_RequestDenied", "Authorization_", "Forbidden")
            or r.category == PERMISSION_DENIED
            or r.exception_is("UnauthorizedAccessException", "AccessDeniedException")
        ),
        PermissionDenied,
    ),
    Rule(
        "not_connected",
        lambda r: r.category == AUTHENTICATION_ERROR or r.exception_is("AuthenticationException"),
        TransientError,
        breaks_runspace=True,
        note="the runspace lost its Exchange or Graph session; a fresh runspace connects again",
    ),
    Rule(
        "command_missing",
        lambda r: r.id_starts("CommandNotFoundException") or r.exception_is("CommandNotFoundException"),
        PermissionDenied,
        note="the endpoint does not offer this command: a missing role, or the JEA role capability",
    ),
    Rule(
        "synced_user",
        lambda r: r.id_starts("Request_BadRequest") and "on-premises mastered" in r.message.lower(),
        SyncedUser,
    ),
    Rule(
        "invalid_password",
        lambda r: (
            (r.id_starts("Request_BadRequest") and "password" in r.message.lower())
            or r.exception_is("ADPasswordComplexityException")
            or r.id_starts("ActiveDirectoryServer:1325")
        ),
        InvalidPassword,
    ),
    Rule(
        "not_found",
        lambda r: (
            r.id_has("ManagementObjectNotFoundException", "ADIdentityNotFoundException")
            or r.id_starts("Request_ResourceNotFound", "ResourceNotFound", "MailboxNotFound")
            or r.exception_is("ManagementObjectNotFoundException", "ADIdentityNotFoundException")
        ),
        MailboxNotFound,
    ),
    Rule(
        "transient",
        lambda r: (
            r.category in (CONNECTION_ERROR, RESOURCE_UNAVAILABLE, OPERATION_TIMEOUT)
            or r.id_starts("ServerUnavailable", "ServiceUnavailable", "GatewayTimeout", "BadGateway")
            or r.exception_is("WebException", "HttpRequestException", "TimeoutException", "SocketException")
        ),
        TransientError,
    ),
)


def retry_after(record: RecordInfo) -> float | None:
    match = _RETRY_AFTER.search(record.message)
    return float(match.group(1)) if match else None


def first_line(text: str, limit: int = 300) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:limit]


def classify(record: RecordInfo, *, cmdlet: str) -> Classified:
    """The error class for one error record of ``cmdlet`` (default: a permanent remote error)."""
    for rule in RULES:
        if rule.test(record):
            message = f"{cmdlet}: {first_line(record.message) or rule.name}"
            if rule.note:
                message = f"{message} ({rule.note})"
            error = rule.error(
                message,
                retry_after=retry_after(record) if rule.error is Throttled else None,
                cmdlet=cmdlet,
                error_id=record.fqid,
            )
            return Classified(error=error, rule=rule.name, breaks_runspace=rule.breaks_runspace)
    error = RemoteError(f"{cmdlet}: {first_line(record.message) or record.fqid}", cmdlet=cmdlet, error_id=record.fqid)
    return Classified(error=error, rule="remote_error")


# --- failures below PowerShell: the transport -------------------------------------------------------

WSMAN_OPERATION_TIMEOUT = 2150858793
WSMAN_INVALID_SELECTORS = 2150858843  # the shell is gone
WSMAN_INVALID_RESOURCE_URI = 2150858770  # no such session configuration
WSMAN_QUOTA = 2150859173
WSMAN_ACCESS_DENIED = 5


def classify_wsman_fault(code: int | str | None, reason: str) -> BridgeError:
    """A WS-Management fault: a misconfigured endpoint is permanent, everything else is transient."""
    if code == WSMAN_INVALID_RESOURCE_URI:
        return RemoteError(
            f"the PowerShell endpoint refused the session configuration: {first_line(reason)} "
            "(check UNBLOCK_PS_CONFIGURATION_NAME)"
        )
    if code == WSMAN_ACCESS_DENIED:
        return PermissionDenied(f"the PowerShell endpoint denied access: {first_line(reason)}")
    if code == WSMAN_QUOTA:
        return Throttled(f"the PowerShell endpoint has too many shells open: {first_line(reason)}", retry_after=30)
    return EndpointUnavailable(f"the PowerShell endpoint failed the request: {first_line(reason)} (fault {code})")
