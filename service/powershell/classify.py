"""Error classification: every remote failure becomes one error class the engine can act on.

The shapes are the real modules' (``service/reference/error_records.json``, where each is
verified against a public source or marked assumed; the unit tests classify every record of
that corpus):

* Exchange Online v3 (REST cmdlets behind generated proxy functions) writes every error through
  ``Write-ErrorMessage``: the FullyQualifiedErrorId is ``[Server=..,RequestId=..,TimeStamp=..],
  Write-ErrorMessage`` and says nothing about the error, the category is NotSpecified, and what
  identifies it is the CategoryInfo *reason* (the exception's short name) and the message, which
  comes as ``Ex<hex>|<Exception.Type>|<text>``, ``|<Type>|<text>``, ``||<text>`` or plain text.
* Microsoft Graph's id starts with its error code (``Request_ResourceNotFound,Microsoft.Graph...``);
  v2 puts the ``Status:``/``ErrorCode:``/``Headers:`` block (with Retry-After) in ErrorDetails.
* The AD module's ids are ``ActiveDirectoryCmdlet:<Exception>,<Cmdlet>`` and
  ``ActiveDirectoryServer:<win32 code>,<Cmdlet>``.
* PowerShell's own: CommandNotFoundException, binding errors, HostFunctionNotImplemented.
* The retired remote-PowerShell form (``[FailureCategory=Cmdlet-<Exception>]``) is still understood.

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
QUOTA_EXCEEDED = 30
RESOURCE_UNAVAILABLE = 21
OPERATION_TIMEOUT = 15

_RETRY_AFTER = re.compile(r"retry[- ]?after\s*[:=]?\s*(\d+)", re.IGNORECASE)
#: Exchange Online v3's message forms: "Ex94914C|Type|text", "|Type|text", "||text".
_V3_MESSAGE = re.compile(r"^(?:Ex[0-9A-Fa-f]{4,8})?\|([A-Za-z0-9_.`\[\]]*)\|(.*)$", re.DOTALL)
#: Exchange's WARNING while it slows a caller down; the command it accompanies succeeded.
MICRO_DELAY = "Micro delay applied"
_DELAY_MS = re.compile(r"(\d+)\s*(?:ms|milliseconds)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RecordInfo:
    """What a PowerShell error record says, independent of the client library."""

    fqid: str
    category: int
    reason: str = ""
    exception_types: tuple[str, ...] = ()
    message: str = ""
    terminating: bool = False
    details: str = ""  # ErrorDetails.Message (Graph v2: Status, ErrorCode, Headers)
    activity: str = ""

    @property
    def text(self) -> str:
        """The message without Exchange v3's ``Ex..|Type|`` prefix."""
        match = _V3_MESSAGE.match(self.message)
        return match.group(2) if match else self.message

    @property
    def v3_type(self) -> str:
        match = _V3_MESSAGE.match(self.message)
        return match.group(1) if match else ""

    def id_has(self, *parts: str) -> bool:
        return any(part.lower() in self.fqid.lower() for part in parts)

    def id_starts(self, *prefixes: str) -> bool:
        return any(self.fqid.lower().startswith(p.lower()) for p in prefixes)

    def says(self, *phrases: str) -> bool:
        haystack = f"{self.message}\n{self.details}".lower()
        return any(phrase.lower() in haystack for phrase in phrases)

    def exception_is(self, *names: str) -> bool:
        """The exception's type (short or full name), the category reason, or the type in a v3 message."""
        types = [*self.exception_types, self.v3_type, self.reason]
        short = {t.split("[", 1)[0].split("`", 1)[0].rsplit(".", 1)[-1].lower() for t in types if t}
        full = {t.split("[", 1)[0].lower() for t in types if t}
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


def is_command_missing(record: RecordInfo) -> bool:
    return record.id_starts("CommandNotFoundException") or record.exception_is("CommandNotFoundException")


def _not_found(r: RecordInfo) -> bool:
    if r.says("couldn't be read from domain controller"):
        return False  # replication delay: same exception type, but it will be found (the transient rule)
    return (
        r.id_has("ManagementObjectNotFoundException", "ADIdentityNotFoundException")
        or r.id_starts("Request_ResourceNotFound", "ResourceNotFound", "MailboxNotFound", "Directory_ObjectNotFound")
        or r.exception_is("ManagementObjectNotFoundException", "ADIdentityNotFoundException")
        or r.says("couldn't be found on", "Couldn't find object")
    )


RULES: tuple[Rule, ...] = (
    Rule(
        "unblock_limit",
        lambda r: r.id_has("UnblockLimitExceeded") or r.exception_is("UnblockLimitExceededException"),
        UnblockLimitExceeded,
    ),
    Rule(
        "throttled",
        lambda r: (
            r.id_starts("TooManyRequests", "Throttl", "Request_ThrottledTemporarily", "ErrorServerBusy")
            or r.id_has("ThrottlingException", "MicroDelay")
            or r.exception_is("ThrottlingException")
            or r.says("Too many retries performed", "Status: 429")
            or r.category == QUOTA_EXCEEDED
        ),
        Throttled,
    ),
    Rule(
        "permission_denied",
        lambda r: (
            r.id_has("AccessDeniedException", "UnauthorizedAccessException")
            or r.id_starts("Authorization_RequestDenied", "Authorization_", "Forbidden")
            or r.id_starts("ActiveDirectoryServer:8344")
            or r.category == PERMISSION_DENIED
            or r.exception_is("UnauthorizedAccessException", "AccessDeniedException", "CmdletAccessDeniedException")
            or r.says("out of the current user's write scope", "AccessDeniedException|")
        ),
        PermissionDenied,
    ),
    Rule(
        "not_connected",
        lambda r: (
            r.category == AUTHENTICATION_ERROR
            or r.exception_is("AuthenticationException")
            or r.says("Please call Connect-MgGraph")
        ),
        TransientError,
        breaks_runspace=True,
        note="the runspace lost its Exchange or Graph session; a fresh runspace connects again",
    ),
    Rule(
        "command_missing",
        is_command_missing,
        PermissionDenied,
        note="the endpoint does not offer this command: a missing role, or the JEA role capability",
    ),
    Rule(
        "synced_user",
        lambda r: r.id_starts("Request_BadRequest") and r.says("on-premises mastered"),
        SyncedUser,
    ),
    Rule(
        "invalid_password",
        lambda r: (
            (r.id_starts("Request_BadRequest") and r.says("password"))
            or r.exception_is("ADPasswordComplexityException")
            or r.id_starts("ActiveDirectoryServer:1325")
        ),
        InvalidPassword,
    ),
    Rule("not_found", _not_found, MailboxNotFound),
    Rule(
        "transient",
        lambda r: (
            r.category in (CONNECTION_ERROR, RESOURCE_UNAVAILABLE, OPERATION_TIMEOUT)
            or r.id_starts("ServerUnavailable", "ServiceUnavailable", "GatewayTimeout", "BadGateway")
            or r.id_starts("ActiveDirectoryServer:0,")
            or r.exception_is(
                "WebException", "HttpRequestException", "TimeoutException", "SocketException", "ADServerDownException"
            )
            or r.says("(503) Server Unavailable", "(502) Bad Gateway", "(504) Gateway Timeout")
            or r.says("Status: 503", "Status: 502", "Status: 504", "couldn't be read from domain controller")
        ),
        TransientError,
    ),
)


def breaks_runspace(record: RecordInfo) -> bool:
    """The runspace that produced this record cannot be used again (its sign-in is gone)."""
    return any(rule.breaks_runspace and rule.test(record) for rule in RULES)


def signals_lost_session(record: RecordInfo, *, command: str, full_endpoint: bool, worked_before: bool) -> bool:
    """Does this error record say the runspace lost its sign-in rather than that the tenant refused?

    A lapsed Graph token reads "Authentication needed" (the ``not_connected`` rule). A lapsed
    Exchange session makes the module's commands disappear, exactly as before a connect: on a full
    endpoint every catalogue command is connected in-session, so a missing one is a lost session
    first; on a JEA endpoint a missing command is a lost session only where it worked before in
    that runspace (otherwise the role capability does not offer it: a permission problem).
    """
    if breaks_runspace(record):
        return True
    if is_command_missing(record):
        return full_endpoint or worked_before
    return False


def retry_after(record: RecordInfo) -> float | None:
    match = _RETRY_AFTER.search(f"{record.message}\n{record.details}")
    return float(match.group(1)) if match else None


def micro_delay(warnings: list[str]) -> float | None:
    """Seconds Exchange says it slowed us down by ("Micro delay applied"), or None without one.

    The warning's wording after its first sentence is not published; a delay in milliseconds is
    read when it names one, else one second is assumed.
    """
    for warning in warnings:
        if warning.startswith(MICRO_DELAY):
            match = _DELAY_MS.search(warning)
            return min(30.0, int(match.group(1)) / 1000) if match else 1.0
    return None


def first_line(text: str, limit: int = 300) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line[:limit]


def classify(record: RecordInfo, *, cmdlet: str) -> Classified:
    """The error class for one error record of ``cmdlet`` (default: a permanent remote error)."""
    for rule in RULES:
        if rule.test(record):
            message = f"{cmdlet}: {first_line(record.text) or rule.name}"
            if rule.note:
                message = f"{message} ({rule.note})"
            error = rule.error(
                message,
                retry_after=retry_after(record) if rule.error is Throttled else None,
                cmdlet=cmdlet,
                error_id=record.fqid,
            )
            return Classified(error=error, rule=rule.name, breaks_runspace=rule.breaks_runspace)
    if cmdlet == UNBLOCK_CMDLET:
        # Microsoft documents an unblock limit but not its error: whatever Remove-BlockedSenderAddress
        # answers that is none of the above is taken to be it, and needs a person (Microsoft support).
        presumed = UnblockLimitExceeded(
            f"{cmdlet}: {first_line(record.text) or record.fqid} (not a known error of this command: most likely "
            "the unblock limit, whose text Microsoft does not publish)",
            cmdlet=cmdlet,
            error_id=record.fqid,
        )
        return Classified(error=presumed, rule="unblock_limit_presumed")
    error = RemoteError(f"{cmdlet}: {first_line(record.text) or record.fqid}", cmdlet=cmdlet, error_id=record.fqid)
    return Classified(error=error, rule="remote_error")


UNBLOCK_CMDLET = "Remove-BlockedSenderAddress"


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
    if code == WSMAN_INVALID_SELECTORS:
        return EndpointUnavailable(
            f"the remote shell is gone (an idle timeout or a WinRM restart): {first_line(reason)} (fault {code})"
        )
    return EndpointUnavailable(f"the PowerShell endpoint failed the request: {first_line(reason)} (fault {code})")
