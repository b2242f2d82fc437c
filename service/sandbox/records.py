"""Error records in the shapes the real modules produce, rendered from the corpus.

Every error the sandbox writes is one of the records of ``service/reference/error_records.json``
(each verified against a public transcript, Microsoft's reference or PowerShell's own resources,
or marked as assumed there): Exchange Online v3's ``Write-ErrorMessage`` records
(``Ex<hex>|<Type>|<text>`` messages, reason = the exception's short name), Microsoft Graph's
``<ErrorCode>,Microsoft.Graph.PowerShell.Cmdlets.<Cmdlet>_<Set>`` records with the
``Status:``/``ErrorCode:`` block in ErrorDetails, the AD module's ``ActiveDirectoryServer:`` and
``ActiveDirectoryCmdlet:`` ids, and Windows PowerShell 5.1's binding and host errors. The
service's classifier is tested against the same corpus, so the two cannot drift apart without
the reference noticing.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from psrpcore.types import ErrorCategory

from service.reference import BindingError, RenderedError, error_shape

_FRONT_END = "SN4PR0101MB3344"
_AD_PARTITION = "DC=contoso,DC=com"


@dataclass(frozen=True)
class ErrorSpec:
    message: str
    exception_types: tuple[str, ...]
    fqid: str
    category: ErrorCategory = ErrorCategory.NotSpecified
    target_name: str = ""
    reason: str = ""
    activity: str = ""
    details: str = ""  # ErrorDetails.Message: Graph v2 puts its Status/ErrorCode/Headers block here
    shape: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def exception_name(self) -> str:
        return self.exception_types[0].split("[", 1)[0].rsplit(".", 1)[-1]


class CmdletError(Exception):
    """Raised by an emulated command; ``terminating`` fails the whole pipeline."""

    def __init__(self, spec: ErrorSpec, *, terminating: bool = False) -> None:
        super().__init__(spec.message)
        self.spec = spec
        self.terminating = terminating


def _spec(rendered: RenderedError, *, target_name: str = "", details: str = "") -> ErrorSpec:
    return ErrorSpec(
        message=rendered.message,
        exception_types=(*rendered.exception_types, "System.Exception")
        if rendered.exception_types and rendered.exception_types[-1] != "System.Exception"
        else rendered.exception_types or ("System.Exception",),
        fqid=rendered.fqid,
        category=ErrorCategory[rendered.category] if rendered.category else ErrorCategory.NotSpecified,
        target_name=target_name,
        reason=rendered.reason,
        activity=rendered.activity,
        details=details,
        shape=rendered.shape,
    )


def _exchange(shape: str, cmdlet: str, *, target_name: str = "", **values: object) -> ErrorSpec:
    """A v3 record: the proxy rethrows through Write-ErrorMessage, naming a front end and a request."""
    defaults: dict[str, object] = {
        "cmdlet": cmdlet,
        "server": _FRONT_END,
        "request_id": uuid.uuid4(),
        "timestamp": format_datetime(datetime.now(UTC), usegmt=True),
        "ex_code": f"Ex{secrets.token_hex(3).upper()}",
    }
    rendered = error_shape(shape).render(**{**defaults, **values})
    return _spec(rendered, target_name=target_name)


def _graph_names(cmdlet_set: str) -> tuple[str, str]:
    """``GetMgUser_Get`` -> (``Get-MgUser``, ``Get``): the cmdlet and variant in a Graph record's activity."""
    head, _, variant = cmdlet_set.partition("_")
    verb, mg, noun = head.partition("Mg")
    return f"{verb}-{mg}{noun}", variant


def _graph(shape: str, cmdlet_set: str, *, target_name: str = "", **values: object) -> ErrorSpec:
    """A Graph v2 record: Exception.Message is the first line, ErrorDetails the whole block."""
    cmdlet, variant = _graph_names(cmdlet_set)
    rendered = error_shape(shape).render(
        cmdlet=cmdlet,
        variant=variant,
        cmdlet_class=cmdlet_set,
        timestamp=format_datetime(datetime.now(UTC), usegmt=True).replace("GMT", "+00:00"),
        headers=f"Cache-Control : no-cache\nrequest-id : {uuid.uuid4()}",
        **values,
    )
    first, _, _ = rendered.message.partition("\n")
    spec = _spec(rendered, target_name=target_name, details=rendered.message)
    return ErrorSpec(**{**spec.__dict__, "message": first})


def _powershell(shape: str, *, target_name: str = "", **values: object) -> ErrorSpec:
    return _spec(error_shape(shape).render(**values), target_name=target_name)


# --- PowerShell itself (Windows PowerShell 5.1 wording) ------------------------------------------


def command_not_found(name: str) -> ErrorSpec:
    return _powershell("powershell.command_not_found", target_name=name, command=name)


_BINDING_SHAPES = {
    "NamedParameterNotFound": "powershell.named_parameter_not_found",
    "MissingMandatoryParameter": "powershell.missing_mandatory_parameter",
    "AmbiguousParameter": "powershell.ambiguous_parameter",
    "AmbiguousParameterSet": "powershell.ambiguous_parameter_set",
    "PositionalParameterNotFound": "powershell.positional_parameter_not_found",
}


def _binding(error_id: str, message: str, target: str, activity: str, parameter: str = "") -> ErrorSpec:
    """PowerShell's ParameterBindingException; ``target`` is the function name or the cmdlet's class."""
    return ErrorSpec(
        message=message,
        exception_types=(
            "System.Management.Automation.ParameterBindingException",
            "System.Management.Automation.RuntimeException",
            "System.SystemException",
            "System.Exception",
        ),
        fqid=f"{error_id},{target}",
        category=ErrorCategory.InvalidArgument,
        target_name=parameter,
        reason="ParameterBindingException",
        activity=activity,
        shape=_BINDING_SHAPES.get(error_id, ""),
    )


def binding_error(error: BindingError, target: str, activity: str) -> ErrorSpec:
    """A refusal of :mod:`service.reference`'s binder (its messages are the corpus's 5.1 texts)."""
    return _binding(error.error_id, error.message, target, activity, error.parameter)


def missing_mandatory(names: list[str], target: str, activity: str) -> ErrorSpec:
    rendered = error_shape("powershell.missing_mandatory_parameter").render(
        command_type=target, cmdlet=activity, parameters=" ".join(names)
    )
    return _binding("MissingMandatoryParameter", rendered.message, target, activity)


def cannot_convert(
    parameter: str, value: object, source_type: str, target_type: str, target: str, activity: str
) -> ErrorSpec:
    """A value PowerShell cannot turn into the parameter's type, in Windows PowerShell 5.1's words for it."""
    if target_type in ("System.Boolean", "System.Management.Automation.SwitchParameter"):
        shape = "powershell.bool_argument_transformation"
        if target_type != "System.Boolean":
            shape = "powershell.switch_argument_transformation"
        rendered = error_shape(shape).render(
            parameter=parameter, type=source_type, command_type=target, cmdlet=activity, function=activity
        )
        return ErrorSpec(
            message=rendered.message,
            exception_types=(*rendered.exception_types, "System.Exception"),
            fqid=rendered.fqid,
            category=ErrorCategory.InvalidData,
            target_name=parameter,
            reason=rendered.reason,
            activity=activity,
            shape=shape,
        )
    rendered = error_shape("powershell.cannot_convert_argument_no_message").render(
        parameter=parameter,
        value=f"{value!s:.60}",
        type=target_type,
        detail=f'Cannot convert the "{value!s:.60}" value of type "{source_type}" to type "{target_type}".',
        command_type=target,
        cmdlet=activity,
    )
    return _binding("CannotConvertArgumentNoMessage", rendered.message, target, activity, parameter)


def validation_failed(parameter: str, value: object, pattern: str, target: str, activity: str) -> ErrorSpec:
    rendered = error_shape("powershell.validate_pattern").render(
        parameter=parameter, value=f"{value!s:.60}", pattern=pattern, command_type=target, cmdlet=activity
    )
    return ErrorSpec(
        message=rendered.message,
        exception_types=(*rendered.exception_types, "System.Exception"),
        fqid=rendered.fqid,
        category=ErrorCategory.InvalidData,
        target_name=parameter,
        reason=rendered.reason,
        activity=activity,
        shape="powershell.validate_pattern",
    )


def prompt_not_supported(cmdlet: str, target: str, prompt: str) -> ErrorSpec:
    """A command that needs to ask (a confirmation) in a host that cannot: pypsrp sends no host."""
    return _powershell("powershell.host_prompt_not_interactive", command_type=target, cmdlet=cmdlet, prompt=prompt)


def script_not_allowed() -> ErrorSpec:
    return ErrorSpec(
        message="The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode.",
        exception_types=(
            "System.Management.Automation.ParseException",
            "System.Management.Automation.RuntimeException",
            "System.SystemException",
            "System.Exception",
        ),
        fqid="ScriptsNotAllowed",
        category=ErrorCategory.ParserError,
    )


def not_emulated(cmdlet: str, detail: str) -> ErrorSpec:
    return _powershell("sandbox.not_emulated", cmdlet=cmdlet, detail=detail)


# --- Exchange Online (v3 module) -------------------------------------------------------------------


def exo_not_found(identity: str, cmdlet: str) -> ErrorSpec:
    # one {server} fills both the FQID's front end and the message's domain controller
    return _exchange("exo.not_found", cmdlet, target_name=identity, identity=identity)


def exo_unblock_limit(address: str, limit: int) -> ErrorSpec:
    """Microsoft documents that this error exists, not its text: everything but the cmdlet is assumed."""
    return _exchange(
        "exo.unblock_limit",
        "Remove-BlockedSenderAddress",
        target_name=address,
        type="UnblockLimitExceededException",
        message=(
            f"|Microsoft.Exchange.Management.Hygiene.UnblockLimitExceededException|The sender '{address}' has been "
            f"unblocked {limit} times in the last 24 hours, which is the maximum allowed. Contact Microsoft support."
        ),
    )


def exo_write_scope_denied(identity: str, cmdlet: str) -> ErrorSpec:
    return _exchange(
        "exo.write_scope_denied",
        cmdlet,
        target_name=identity,
        identity=identity,
        details="The role assignment of the signed-in application does not cover this object.",
    )


def exo_transient(cmdlet: str) -> ErrorSpec:
    return _exchange("exo.transient", cmdlet)


def exo_connect_refused(detail: str) -> ErrorSpec:
    return _powershell("exo.connect_app_only_required", detail=detail)


def exo_connect_not_initial_domain(organization: str) -> ErrorSpec:
    return _powershell("exo.connect_organization_not_initial", organization=organization)


def exo_micro_delay(milliseconds: int) -> str:
    """The WARNING Exchange Online writes while it slows a caller down; the command still succeeds."""
    shape = error_shape("exo.throttle_micro_delay")
    return shape.render(details=f"The cmdlet was delayed by {milliseconds} milliseconds.").message


# --- Microsoft Graph -----------------------------------------------------------------------------------


def graph_user_not_found(user_id: str, cmdlet_set: str) -> ErrorSpec:
    return _graph("graph.not_found", cmdlet_set, target_name=user_id, identity=user_id)


def graph_password_complexity(cmdlet_set: str) -> ErrorSpec:
    return _graph("graph.password_complexity", cmdlet_set)


def graph_synced_user(cmdlet_set: str) -> ErrorSpec:
    return _graph("graph.onprem_mastered", cmdlet_set)


def graph_denied(cmdlet_set: str) -> ErrorSpec:
    # the corpus shows this record for Update-MgUser; other cmdlets differ only in the class and activity
    spec = _graph("graph.access_denied", cmdlet_set)
    cmdlet, variant = _graph_names(cmdlet_set)
    return ErrorSpec(
        **{
            **spec.__dict__,
            "fqid": f"Authorization_RequestDenied,Microsoft.Graph.PowerShell.Cmdlets.{cmdlet_set}",
            "activity": f"{cmdlet}_{variant}",
        }
    )


def graph_throttled(cmdlet_set: str, retry_after: int) -> ErrorSpec:
    return _graph(
        "graph.throttled_429",
        cmdlet_set,
        identifier="00000000-0000-4000-8000-00000000000a",
        category="throttle.aad.ags.appId.large",
        retry_after=retry_after,
    )


def graph_transient(cmdlet_set: str) -> ErrorSpec:
    return _graph("graph.transient", cmdlet_set)


def graph_not_connected(cmdlet_set: str) -> ErrorSpec:
    cmdlet, variant = _graph_names(cmdlet_set)
    return _powershell("graph.not_connected", cmdlet_class=cmdlet_set, cmdlet=cmdlet, variant=variant)


def graph_connect_refused(detail: str) -> ErrorSpec:
    return _powershell("graph.connect_failed", credential_type="ClientCertificateCredential", message=detail)


def graph_connect_thumbprint_length(thumbprint: str) -> ErrorSpec:
    return _powershell(
        "graph.connect_failed",
        credential_type="ClientCertificateCredential",
        message=(
            f"'{thumbprint}' must have a length of 40. Ensure you have the right certificate thumbprint then try again."
        ),
    )


# --- Active Directory ------------------------------------------------------------------------------


def ad_not_found(identity: str, cmdlet: str, cmdlet_class: str) -> ErrorSpec:
    return _powershell(
        "ad.identity_not_found",
        target_name=identity,
        identity=identity,
        partition=_AD_PARTITION,
        cmdlet=cmdlet,
        cmdlet_class=cmdlet_class,
    )


def ad_password_policy() -> ErrorSpec:
    return _powershell("ad.password_policy")


def ad_insufficient_access(cmdlet: str, cmdlet_class: str) -> ErrorSpec:
    return _powershell("ad.insufficient_access", cmdlet=cmdlet, cmdlet_class=cmdlet_class)


def ad_server_down(cmdlet: str, cmdlet_class: str) -> ErrorSpec:
    return _powershell("ad.server_down", cmdlet=cmdlet, cmdlet_class=cmdlet_class)


# --- injected faults -------------------------------------------------------------------------------


def fatal(cmdlet: str) -> ErrorSpec:
    return _powershell("powershell.unexpected", cmdlet=cmdlet)
