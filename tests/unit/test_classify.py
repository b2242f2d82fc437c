"""The classification table, on error records in the formats the real modules use."""

from __future__ import annotations

import pytest

from service import errors as e
from service.powershell.classify import (
    WSMAN_ACCESS_DENIED,
    WSMAN_INVALID_RESOURCE_URI,
    WSMAN_INVALID_SELECTORS,
    WSMAN_QUOTA,
    RecordInfo,
    classify,
    classify_wsman_fault,
    retry_after,
)

EXO = "[Server=SN4PR01,RequestId=1,TimeStamp=Thu] [FailureCategory=Cmdlet-{}] 2C9A2E66,Microsoft.Exchange.Management.X"

CASES = [
    ("unblock limit", RecordInfo(EXO.format("UnblockLimitExceededException"), 29), e.UnblockLimitExceeded),
    ("exo not found", RecordInfo(EXO.format("ManagementObjectNotFoundException"), 0), e.MailboxNotFound),
    ("exo access denied", RecordInfo(EXO.format("AccessDeniedException"), 18), e.PermissionDenied),
    (
        "graph not found",
        RecordInfo("Request_ResourceNotFound,Microsoft.Graph.PowerShell.Cmdlets.GetMgUser_Get", 7),
        e.MailboxNotFound,
    ),
    (
        "graph denied",
        RecordInfo("Authorization_RequestDenied,Microsoft.Graph.PowerShell.Cmdlets.UpdateMgUser_UpdateExpanded", 18),
        e.PermissionDenied,
    ),
    (
        "graph synced user",
        RecordInfo(
            "Request_BadRequest,Microsoft.Graph.PowerShell.Cmdlets.UpdateMgUser_UpdateExpanded",
            7,
            message="Unable to update the specified properties for on-premises mastered Directory Sync objects",
        ),
        e.SyncedUser,
    ),
    (
        "graph weak password",
        RecordInfo(
            "Request_BadRequest,Microsoft.Graph.PowerShell.Cmdlets.UpdateMgUser_UpdateExpanded",
            7,
            message="The specified password does not comply with password complexity requirements.",
        ),
        e.InvalidPassword,
    ),
    (
        "ad not found",
        RecordInfo(
            "ActiveDirectoryCmdlet:Microsoft.ActiveDirectory.Management.ADIdentityNotFoundException,"
            "Microsoft.ActiveDirectory.Management.Commands.GetADUser",
            13,
        ),
        e.MailboxNotFound,
    ),
    (
        "ad password policy",
        RecordInfo("ActiveDirectoryServer:1325,Microsoft.ActiveDirectory.Management.Commands.SetADAccountPassword", 6),
        e.InvalidPassword,
    ),
    ("throttled by id", RecordInfo("TooManyRequests,Get-MgUser", 29, message="Retry-After: 12 seconds"), e.Throttled),
    ("throttled by quota", RecordInfo("SomethingElse", 30), e.Throttled),
    ("transient by category", RecordInfo("ServerUnavailable,Get-BlockedSenderAddress", 27), e.TransientError),
    (
        "transient by exception",
        RecordInfo("X", 0, exception_types=("System.Net.Http.HttpRequestException", "System.Exception")),
        e.TransientError,
    ),
    (
        "graph session lost",
        RecordInfo("Microsoft.Graph.PowerShell.Authentication.Helpers.AuthenticationHelpers,Get-MgUser", 28),
        e.TransientError,
    ),
    ("command not offered", RecordInfo("CommandNotFoundException", 13), e.PermissionDenied),
    ("binding bug", RecordInfo("NamedParameterNotFound,Microsoft.Exchange.Management.X", 5), e.RemoteError),
    ("anything else", RecordInfo("System.NullReferenceException,Get-MgUser", 0), e.RemoteError),
]


@pytest.mark.parametrize(("label", "record", "expected"), CASES, ids=[c[0] for c in CASES])
def test_records_map_to_error_classes(label: str, record: RecordInfo, expected: type[e.BridgeError]) -> None:
    """Each kind of record lands in the class the engine acts on (exact class, not a parent)."""
    classified = classify(record, cmdlet="Some-Cmdlet")
    assert type(classified.error) is expected, (label, classified.rule)
    assert classified.error.cmdlet == "Some-Cmdlet"
    assert classified.error.error_id == record.fqid


def test_retryable_classes() -> None:
    """Only transport-like failures are retryable; tenant refusals are not."""
    assert e.TransientError.retryable
    assert e.Throttled.retryable
    assert e.CallTimeout.retryable
    for cls in (e.MailboxNotFound, e.UnblockLimitExceeded, e.PermissionDenied, e.SyncedUser, e.InvalidPassword):
        assert not cls.retryable


def test_the_session_lost_rule_breaks_the_runspace() -> None:
    """An expired Graph/Exchange session means the runspace must be replaced to reconnect."""
    record = RecordInfo("X,Get-MgUser", 28, exception_types=("System.Security.Authentication.AuthenticationException",))
    assert classify(record, cmdlet="Get-MgUser").breaks_runspace


def test_retry_after_is_read_from_the_message() -> None:
    """Throttling says how long to wait; the value travels on the error."""
    record = RecordInfo("TooManyRequests,Get-MgUser", 29, message="Too many. Retry-After: 42 seconds.")
    assert retry_after(record) == 42
    error = classify(record, cmdlet="Get-MgUser").error
    assert error.retry_after == 42
    assert retry_after(RecordInfo("x", 0, message="please retry after 5 minutes")) == 5
    assert retry_after(RecordInfo("x", 0, message="no hint")) is None


def test_messages_name_the_command_and_keep_to_one_line() -> None:
    """The message that reaches a case is short and says which command failed."""
    record = RecordInfo("X", 0, message="first line\n\nStatus: 404\nErrorCode: Y")
    error = classify(record, cmdlet="Get-MgUser").error
    assert error.message == "Get-MgUser: first line"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (WSMAN_INVALID_RESOURCE_URI, e.RemoteError),
        (WSMAN_ACCESS_DENIED, e.PermissionDenied),
        (WSMAN_QUOTA, e.Throttled),
        (WSMAN_INVALID_SELECTORS, e.EndpointUnavailable),
        (None, e.EndpointUnavailable),
    ],
)
def test_wsman_faults(code: int | None, expected: type[e.BridgeError]) -> None:
    """A misconfigured endpoint is permanent; a lost shell or an unknown fault is transient."""
    assert type(classify_wsman_fault(code, "reason")) is expected
