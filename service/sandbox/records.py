"""Error records in the shapes the real modules produce.

Each helper returns an :class:`ErrorSpec`: the exception type chain, message, category and
FullyQualifiedErrorId that PowerShell, ExchangeOnlineManagement, Microsoft.Graph and
ActiveDirectory put on their error records. The bridge classifies by these fields, so they
follow the real formats: Exchange's ``[FailureCategory=Cmdlet-<Exception>]`` ids, Graph's
``<ErrorCode>,Microsoft.Graph.PowerShell.Cmdlets.<Cmdlet>_<Set>`` ids, the AD module's
``ActiveDirectoryCmdlet:<Exception>,<Cmdlet>`` ids, and PowerShell's own binding errors.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from psrpcore.types import ErrorCategory


@dataclass(frozen=True)
class ErrorSpec:
    message: str
    exception_types: tuple[str, ...]
    fqid: str
    category: ErrorCategory = ErrorCategory.NotSpecified
    target_name: str = ""
    reason: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def exception_name(self) -> str:
        return self.exception_types[0].rsplit(".", 1)[-1]


class CmdletError(Exception):
    """Raised by an emulated command; ``terminating`` fails the whole pipeline."""

    def __init__(self, spec: ErrorSpec, *, terminating: bool = False) -> None:
        super().__init__(spec.message)
        self.spec = spec
        self.terminating = terminating


_RUNTIME = ("System.Management.Automation.RuntimeException", "System.SystemException", "System.Exception")


def _exo_id(exception: str, cmdlet_class: str) -> str:
    request = str(uuid.uuid4())
    return (
        f"[Server=SN4PR0101MB3344,RequestId={request},TimeStamp=Thu, 26 Nov 2026 00:00:00 GMT] "
        f"[FailureCategory=Cmdlet-{exception}] {request[:8].upper()},{cmdlet_class}"
    )


def command_not_found(name: str) -> ErrorSpec:
    return ErrorSpec(
        message=(
            f"The term '{name}' is not recognized as a name of a cmdlet, function, script file, or executable "
            "program.\nCheck the spelling of the name, or if a path was included, verify that the path is correct "
            "and try again."
        ),
        exception_types=(
            "System.Management.Automation.CommandNotFoundException",
            "System.Management.Automation.RuntimeException",
            "System.SystemException",
            "System.Exception",
        ),
        fqid="CommandNotFoundException",
        category=ErrorCategory.ObjectNotFound,
        target_name=name,
    )


def _binding(fqid: str, message: str, cmdlet_class: str, target: str = "") -> ErrorSpec:
    return ErrorSpec(
        message=message,
        exception_types=(
            "System.Management.Automation.ParameterBindingException",
            "System.Management.Automation.RuntimeException",
            "System.SystemException",
            "System.Exception",
        ),
        fqid=f"{fqid},{cmdlet_class}",
        category=ErrorCategory.InvalidArgument,
        target_name=target,
    )


def parameter_not_found(name: str, cmdlet_class: str) -> ErrorSpec:
    return _binding(
        "NamedParameterNotFound",
        f"A parameter cannot be found that matches parameter name '{name}'.",
        cmdlet_class,
        name,
    )


def ambiguous_parameter(name: str, candidates: list[str], cmdlet_class: str) -> ErrorSpec:
    return _binding(
        "AmbiguousParameter",
        f"Parameter cannot be processed because the parameter name '{name}' is ambiguous. "
        f"Possible matches include: {' '.join('-' + c for c in candidates)}.",
        cmdlet_class,
        name,
    )


def missing_mandatory(names: list[str], cmdlet_class: str) -> ErrorSpec:
    return _binding(
        "MissingMandatoryParameter",
        f"Cannot process command because of one or more missing mandatory parameters: {' '.join(names)}.",
        cmdlet_class,
    )


def positional_not_found(value: object, cmdlet_class: str) -> ErrorSpec:
    return _binding(
        "PositionalParameterNotFound",
        f"A positional parameter cannot be found that accepts argument '{value}'.",
        cmdlet_class,
    )


def cannot_convert(parameter: str, value: object, type_name: str, cmdlet_class: str) -> ErrorSpec:
    shown = type(value).__name__
    return _binding(
        "CannotConvertArgumentNoMessage",
        f'Cannot bind parameter \'{parameter}\'. Cannot convert the "{value!s:.60}" value of type "{shown}" '
        f'to type "{type_name}".',
        cmdlet_class,
        parameter,
    )


def validation_failed(parameter: str, value: object, pattern: str, cmdlet_class: str) -> ErrorSpec:
    return _binding(
        "ParameterArgumentValidationError",
        f"Cannot validate argument on parameter '{parameter}'. The argument \"{value!s:.60}\" does not match "
        f'the "{pattern}" pattern. Supply an argument that matches "{pattern}" and try the command again.',
        cmdlet_class,
        parameter,
    )


def script_not_allowed() -> ErrorSpec:
    return ErrorSpec(
        message="The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode.",
        exception_types=("System.Management.Automation.ParseException", *_RUNTIME),
        fqid="ScriptsNotAllowed",
        category=ErrorCategory.ParserError,
    )


# --- Exchange Online -------------------------------------------------------------------------


def exo_not_found(identity: str, cmdlet_class: str) -> ErrorSpec:
    return ErrorSpec(
        message=(
            f"The operation couldn't be performed because object '{identity}' couldn't be found on "
            "'SN4PR0101DC001.NAMPR01A001.PROD.OUTLOOK.COM'."
        ),
        exception_types=(
            "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
            "Microsoft.Exchange.Configuration.Tasks.LocalizedException",
            "System.Exception",
        ),
        fqid=_exo_id("ManagementObjectNotFoundException", cmdlet_class),
        category=ErrorCategory.NotSpecified,
        target_name=identity,
    )


def exo_unblock_limit(address: str, limit: int) -> ErrorSpec:
    return ErrorSpec(
        message=(
            f"The sender '{address}' has been unblocked {limit} times in the last 24 hours, which is the maximum "
            "allowed. The sender can't be removed from the Restricted entities list. Contact Microsoft support."
        ),
        exception_types=(
            "Microsoft.Exchange.Management.Hygiene.UnblockLimitExceededException",
            "Microsoft.Exchange.Configuration.Tasks.LocalizedException",
            "System.Exception",
        ),
        fqid=_exo_id(
            "UnblockLimitExceededException",
            "Microsoft.Exchange.Management.Hygiene.RemoveBlockedSenderAddress",
        ),
        category=ErrorCategory.LimitsExceeded,
        target_name=address,
    )


def exo_access_denied(cmdlet: str, cmdlet_class: str) -> ErrorSpec:
    return ErrorSpec(
        message=(
            f"The user isn't assigned to any management roles that allow running {cmdlet}. "
            "Ask your administrator to assign a role that includes this cmdlet."
        ),
        exception_types=(
            "Microsoft.Exchange.Configuration.Tasks.AccessDeniedException",
            "Microsoft.Exchange.Configuration.Tasks.LocalizedException",
            "System.Exception",
        ),
        fqid=_exo_id("AccessDeniedException", cmdlet_class),
        category=ErrorCategory.PermissionDenied,
    )


def exo_not_connected(cmdlet: str) -> ErrorSpec:
    # Before Connect-ExchangeOnline the module has not generated its commands at all.
    return command_not_found(cmdlet)


def exo_connect_invalid(detail: str) -> ErrorSpec:
    return ErrorSpec(
        message=detail,
        exception_types=("System.ArgumentException", "System.SystemException", "System.Exception"),
        fqid="Microsoft.Exchange.Management.ExoPowershellSnapin.ConnectExchangeOnline",
        category=ErrorCategory.InvalidArgument,
    )


# --- Microsoft Graph ---------------------------------------------------------------------------


def _graph(
    code: str, message: str, cmdlet_set: str, *, category: ErrorCategory = ErrorCategory.InvalidOperation
) -> ErrorSpec:
    return ErrorSpec(
        message=f"{message}\n\nStatus: {_GRAPH_STATUS.get(code, 400)}\nErrorCode: {code}",
        exception_types=(
            "Microsoft.Graph.PowerShell.Runtime.RestException`1[[Microsoft.Graph.PowerShell.Models.IMicrosoftGraphODataErrorsMainError]]",
            "Microsoft.Graph.PowerShell.Runtime.RestException",
            "System.Exception",
        ),
        fqid=f"{code},Microsoft.Graph.PowerShell.Cmdlets.{cmdlet_set}",
        category=category,
        reason="RestException`1",
        extra={"ErrorCode": code},
    )


_GRAPH_STATUS = {
    "Request_ResourceNotFound": 404,
    "Authorization_RequestDenied": 403,
    "Request_BadRequest": 400,
    "TooManyRequests": 429,
}


def graph_user_not_found(user_id: str, cmdlet_set: str) -> ErrorSpec:
    return _graph(
        "Request_ResourceNotFound",
        f"Resource '{user_id}' does not exist or one of its queried reference-property objects are not present.",
        cmdlet_set,
    )


def graph_password_complexity(cmdlet_set: str) -> ErrorSpec:
    return _graph(
        "Request_BadRequest",
        "The specified password does not comply with password complexity requirements. "
        "Please provide a different password.",
        cmdlet_set,
    )


def graph_synced_user(cmdlet_set: str) -> ErrorSpec:
    return _graph(
        "Request_BadRequest",
        "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects "
        "currently undergoing migration.",
        cmdlet_set,
    )


def graph_denied(cmdlet_set: str) -> ErrorSpec:
    return _graph(
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
        cmdlet_set,
        category=ErrorCategory.PermissionDenied,
    )


def graph_not_connected(cmdlet: str) -> ErrorSpec:
    return ErrorSpec(
        message="Authentication needed. Please call Connect-MgGraph.",
        exception_types=(
            "System.Security.Authentication.AuthenticationException",
            "System.SystemException",
            "System.Exception",
        ),
        fqid=f"Microsoft.Graph.PowerShell.Authentication.Helpers.AuthenticationHelpers,{cmdlet}",
        category=ErrorCategory.AuthenticationError,
    )


# --- Active Directory ------------------------------------------------------------------------


def ad_not_found(identity: str, cmdlet_class: str) -> ErrorSpec:
    return ErrorSpec(
        message=f"Cannot find an object with identity: '{identity}' under: 'DC=contoso,DC=com'.",
        exception_types=(
            "Microsoft.ActiveDirectory.Management.ADIdentityNotFoundException",
            "Microsoft.ActiveDirectory.Management.ADException",
            "System.Exception",
        ),
        fqid=f"ActiveDirectoryCmdlet:Microsoft.ActiveDirectory.Management.ADIdentityNotFoundException,{cmdlet_class}",
        category=ErrorCategory.ObjectNotFound,
        target_name=identity,
    )


def ad_password_policy(cmdlet_class: str) -> ErrorSpec:
    return ErrorSpec(
        message=("The password does not meet the length, complexity, or history requirement of the domain."),
        exception_types=(
            "Microsoft.ActiveDirectory.Management.ADPasswordComplexityException",
            "Microsoft.ActiveDirectory.Management.ADException",
            "System.Exception",
        ),
        fqid=f"ActiveDirectoryServer:1325,{cmdlet_class}",
        category=ErrorCategory.InvalidData,
    )


# --- injected faults ---------------------------------------------------------------------------


def transient(cmdlet: str) -> ErrorSpec:
    return ErrorSpec(
        message=(
            "The remote server returned an error: (503) Server Unavailable. The service is temporarily "
            "unavailable; try the request again."
        ),
        exception_types=("System.Net.WebException", "System.InvalidOperationException", "System.Exception"),
        fqid=f"ServerUnavailable,{cmdlet}",
        category=ErrorCategory.ConnectionError,
    )


def throttled(cmdlet: str, retry_after: int) -> ErrorSpec:
    return ErrorSpec(
        message=(f"The request was throttled because too many requests were sent. Retry-After: {retry_after} seconds."),
        exception_types=(
            "Microsoft.Exchange.Management.RestApiClient.ThrottlingException",
            "System.Exception",
        ),
        fqid=f"TooManyRequests,{cmdlet}",
        category=ErrorCategory.LimitsExceeded,
        extra={"RetryAfter": str(retry_after)},
    )


def fatal(cmdlet: str) -> ErrorSpec:
    return ErrorSpec(
        message=f"An internal error occurred while running {cmdlet}: the object reference is not set.",
        exception_types=("System.NullReferenceException", "System.SystemException", "System.Exception"),
        fqid=f"System.NullReferenceException,{cmdlet}",
        category=ErrorCategory.NotSpecified,
    )
