"""The classification table, on error records in the formats the real modules use."""

from __future__ import annotations

import pytest
from psrpcore.types import ErrorCategory

from service import errors as e
from service import reference
from service.powershell.classify import (
    WSMAN_ACCESS_DENIED,
    WSMAN_INVALID_RESOURCE_URI,
    WSMAN_INVALID_SELECTORS,
    WSMAN_QUOTA,
    RecordInfo,
    classify,
    classify_wsman_fault,
    micro_delay,
    retry_after,
    signals_lost_session,
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


# --- every record of the corpus (service/reference/error_records.json) ---------------------------------

CORPUS_CLASSES: dict[str, type[e.BridgeError]] = {
    "exo.not_found": e.MailboxNotFound,
    "exo.not_found_referenced_object": e.MailboxNotFound,
    "exo.not_found_no_type": e.MailboxNotFound,
    "exo.not_found_replication": e.TransientError,
    "exo.ambiguous_identity": e.RemoteError,
    "exo.recipient_task_exception": e.RemoteError,
    "exo.pagination_expired": e.RemoteError,
    "exo.invalid_argument": e.RemoteError,
    "exo.write_scope_denied": e.PermissionDenied,
    "exo.no_management_role": e.PermissionDenied,
    "exo.rest_access_denied": e.PermissionDenied,
    "exo.not_connected": e.PermissionDenied,  # after one reconnect: the command is not there
    "exo.connect_app_not_found": e.RemoteError,
    "exo.unblock_limit": e.UnblockLimitExceeded,
    "exo.transient": e.TransientError,
    "exo.connect_organization_not_initial": e.RemoteError,
    "exo.connect_app_only_required": e.RemoteError,
    "graph.not_found": e.MailboxNotFound,
    "graph.access_denied": e.PermissionDenied,
    "graph.unauthorized_operation_500": e.PermissionDenied,
    "graph.password_complexity": e.InvalidPassword,
    "graph.onprem_mastered": e.SyncedUser,
    "graph.throttled_retries_exhausted": e.Throttled,
    "graph.throttled_429": e.Throttled,
    "graph.not_connected": e.TransientError,
    "graph.connect_cert_not_found": e.RemoteError,
    "graph.connect_failed": e.RemoteError,
    "graph.transient": e.TransientError,
    "ad.password_policy": e.InvalidPassword,
    "ad.identity_not_found": e.MailboxNotFound,
    "ad.insufficient_access": e.PermissionDenied,
    "ad.access_denied": e.PermissionDenied,
    "ad.server_down": e.TransientError,
    "powershell.command_not_found": e.PermissionDenied,
    "powershell.named_parameter_not_found": e.RemoteError,
    "powershell.missing_mandatory_parameter": e.RemoteError,
    "powershell.ambiguous_parameter": e.RemoteError,
    "powershell.ambiguous_parameter_set": e.RemoteError,
    "powershell.positional_parameter_not_found": e.RemoteError,
    "powershell.bool_argument_transformation": e.RemoteError,
    "powershell.switch_argument_transformation": e.RemoteError,
    "powershell.cannot_convert_argument_no_message": e.RemoteError,
    "powershell.validate_pattern": e.RemoteError,
    "powershell.host_not_interactive": e.RemoteError,
    "powershell.host_prompt_not_interactive": e.RemoteError,
    "powershell.noninteractive_prompt": e.RemoteError,
    "powershell.unexpected": e.RemoteError,
    "sandbox.not_emulated": e.RemoteError,
}
NOT_ERROR_RECORDS = {"exo.throttle_micro_delay", "wsman.shell_not_found", "wsman.client_session_unusable"}


class _Anything(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return {"retry_after": "7", "type": "Exception"}.get(key, f"x-{key}")


#: What the sandbox fills in where the corpus leaves the real text open (Microsoft does not publish it).
ASSUMED_VALUES = {"exo.unblock_limit": {"type": "UnblockLimitExceededException"}}


def _record(shape: reference.ErrorShape) -> tuple[RecordInfo, str]:
    values = _Anything(ASSUMED_VALUES.get(shape.id, {}))
    rendered = shape.render(
        **{
            name: values[name]
            for name in reference._PLACEHOLDER.findall(
                " ".join([shape.fqid, shape.activity, shape.reason, shape.message, *shape.exception_types])
            )
        }
    )
    first, _, _rest = rendered.message.partition("\n")
    graph_v2 = shape.family == "graph" and "\nStatus:" in rendered.message
    cmdlet = next((c for c in [*CMDLETS_OF.get(shape.id, ()), "Get-Mailbox"] if "{" not in c), "Get-Mailbox")
    info = RecordInfo(
        fqid=rendered.fqid,
        category=int(ErrorCategory[shape.category]) if shape.category else 0,
        reason=rendered.reason,
        exception_types=rendered.exception_types,
        message=first if graph_v2 else rendered.message,
        details=rendered.message if graph_v2 else "",
        activity=rendered.activity,
    )
    return info, cmdlet


CMDLETS_OF = {"exo.unblock_limit": ("Remove-BlockedSenderAddress",)}


def test_the_corpus_is_covered() -> None:
    """Every record in the corpus has an expected class here (adding a record means deciding its class)."""
    assert set(reference.error_shapes()) == set(CORPUS_CLASSES) | NOT_ERROR_RECORDS


@pytest.mark.parametrize("shape_id", sorted(CORPUS_CLASSES))
def test_every_real_record_is_classified(shape_id: str) -> None:
    """Each shape the real modules produce (or the sandbox emits, where marked assumed) lands in its class."""
    info, cmdlet = _record(reference.error_shape(shape_id))
    classified = classify(info, cmdlet=cmdlet)
    assert type(classified.error) is CORPUS_CLASSES[shape_id], (shape_id, classified.rule)
    if shape_id == "graph.throttled_429":
        assert classified.error.retry_after == 7


def test_lost_sessions_are_recognised_in_the_real_shapes() -> None:
    """Graph's "Authentication needed" always breaks the runspace; a missing Exchange command is a lost
    session on a full endpoint (everything is connected there) and on JEA only where it worked before."""
    graph, _ = _record(reference.error_shape("graph.not_connected"))
    missing, _ = _record(reference.error_shape("exo.not_connected"))
    assert signals_lost_session(graph, command="Get-MgUser", full_endpoint=False, worked_before=False)
    assert signals_lost_session(missing, command="Get-Mailbox", full_endpoint=True, worked_before=False)
    assert signals_lost_session(missing, command="Get-Mailbox", full_endpoint=False, worked_before=True)
    assert not signals_lost_session(missing, command="Get-Mailbox", full_endpoint=False, worked_before=False)
    found, _ = _record(reference.error_shape("exo.not_found"))
    assert not signals_lost_session(found, command="Get-Mailbox", full_endpoint=True, worked_before=True)


def test_an_unknown_error_of_the_unblock_is_presumed_to_be_the_limit() -> None:
    """Microsoft does not publish the limit's text: an unrecognised Remove-BlockedSenderAddress error
    escalates as the limit (a person must call Microsoft support), not as a retry."""
    info = RecordInfo("[Server=X,RequestId=1,TimeStamp=T],Write-ErrorMessage", 0, reason="Exception", message="||Nope")
    classified = classify(info, cmdlet="Remove-BlockedSenderAddress")
    assert isinstance(classified.error, e.UnblockLimitExceeded)
    assert "does not publish" in classified.error.message
    assert isinstance(classify(info, cmdlet="Get-Mailbox").error, e.RemoteError)


def test_the_micro_delay_warning_is_read_as_pacing() -> None:
    assert micro_delay(["Micro delay applied. The cmdlet was delayed by 2500 milliseconds."]) == 2.5
    assert micro_delay(["Micro delay applied."]) == 1.0
    assert micro_delay(["Something else"]) is None
