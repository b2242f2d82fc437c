"""Parameter binding against Microsoft's documented syntax, with PowerShell's errors.

The sandbox binds every remote command against ``service/reference/cmdlets.json``: a name the
real cmdlet does not document (``-Confirm`` on Remove-BlockedSenderAddress, ``-ResultSize`` on
Get-BlockedSenderAddress) is refused here exactly as PowerShell refuses it. Binding follows the
rules a client can observe: names are case-insensitive and may be abbreviated to an unambiguous
prefix or given by alias; positional arguments fill positional parameters in order; the bound
names must select one parameter set, whose mandatory parameters must be bound (a remote
session cannot prompt); values are converted to the parameter's type or refused with
PowerShell's error ids. A SecureString parameter accepts only a SecureString.

For a command whose table entry is a subset (``complete: false``), a documented parameter the
table leaves out is refused too; the README's fidelity table says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from psrpcore.types import PSSecureString

from service.reference import BindingError, CommandSyntax, ParameterSyntax
from service.sandbox import records
from service.sandbox.records import CmdletError

Kind = str  # "string" | "strings" | "switch" | "bool" | "int" | "securestring" | "hashtable" | "object"

_STRING_TYPES = {
    "String",
    "SmtpAddress",
    "ProxyAddress",
    "Unlimited",
    "Uri",
    "Guid",
}
_INT_TYPES = {"Int32", "UInt32", "Int64", "Double"}


def kind_of(parameter: ParameterSyntax) -> Kind:
    """How the sandbox converts a value for a parameter of this documented type."""
    documented = parameter.type
    if documented == "SwitchParameter":
        return "switch"
    if documented == "Boolean":
        return "bool"
    if documented in _INT_TYPES:
        return "int"
    if documented == "SecureString":
        return "securestring"
    if documented in ("Hashtable", "IDictionary") or documented.startswith("IMicrosoftGraph"):
        return "hashtable"  # Graph's model parameters take a hashtable of the model's properties
    if documented in ("String[]", "MultiValuedProperty"):
        return "strings"
    if documented in _STRING_TYPES or documented.endswith("IdParameter"):
        return "string"
    return "object"


def dotnet_type(value: Any) -> str:
    """The .NET type PowerShell would name for a deserialised value (for binding errors)."""
    if isinstance(value, bool):
        return "System.Boolean"
    if isinstance(value, int):
        return "System.Int32"
    if isinstance(value, float):
        return "System.Double"
    if isinstance(value, str):
        return "System.String"
    if isinstance(value, list | tuple):
        return "System.Object[]"
    if isinstance(value, dict):
        return "System.Collections.Hashtable"
    if isinstance(value, PSSecureString):
        return "System.Security.SecureString"
    names = getattr(getattr(value, "PSObject", None), "type_names", None)
    return str(names[0]) if names else "System.Management.Automation.PSObject"


_TARGET_TYPE = {
    "switch": "System.Management.Automation.SwitchParameter",
    "bool": "System.Boolean",
    "int": "System.Int32",
    "securestring": "System.Security.SecureString",
    "hashtable": "System.Collections.Hashtable",
    "strings": "System.String[]",
    "string": "System.String",
}


def convert(parameter: ParameterSyntax, value: Any, *, pattern: str | None, target: str, activity: str) -> Any:
    """``value`` as the parameter's type; ``target`` names the command in a refusal's error id."""
    kind = kind_of(parameter)

    def refuse() -> CmdletError:
        return CmdletError(
            records.cannot_convert(
                parameter.name, value, dotnet_type(value), _TARGET_TYPE.get(kind, "System.Object"), target, activity
            ),
            terminating=True,
        )

    if value is None:
        if kind == "switch":
            return True
        return None
    if kind in ("switch", "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        raise refuse()
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise refuse()
        try:
            return int(value)
        except ValueError:
            raise refuse() from None
    if kind == "securestring":
        if isinstance(value, PSSecureString):
            return str(value.decrypt())
        raise refuse()
    if kind == "hashtable":
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        raise refuse()
    if kind == "strings":
        items = list(value) if isinstance(value, list | tuple) else [value]
        if not all(isinstance(v, str | int) and not isinstance(v, bool) for v in items):
            raise refuse()
        return [str(v) for v in items]
    if kind == "string":
        if isinstance(value, bool | str | int | float):
            text = value if isinstance(value, str) else str(value)
        else:
            raise refuse()
        if pattern and not re.fullmatch(pattern, text, flags=re.IGNORECASE):
            raise CmdletError(
                records.validation_failed(parameter.name, text, pattern, target, activity), terminating=True
            )
        return text
    return value


def bind(
    syntax: CommandSyntax,
    raw: list[tuple[str | None, Any]],
    *,
    has_input: bool,
    target: str,
    pattern_for: Callable[[ParameterSyntax], str | None] = lambda p: p.pattern,
) -> dict[str, Any]:
    """Bind named then positional arguments; the documented parameters only, common ones dropped.

    ``target`` is what PowerShell names in the error id: the command name for a function (the
    Exchange Online v3 and Graph commands are functions), the class for a compiled cmdlet.
    """
    bound: dict[str, Any] = {}
    common: set[str] = set()
    positional: list[Any] = []
    try:
        for name, value in raw:
            if name is None:
                positional.append(value)
                continue
            parameter = syntax.resolve(name)
            if parameter.name in bound or parameter.name in common:
                raise BindingError(
                    "ParameterAlreadyBound",
                    f"Cannot bind parameter because parameter '{parameter.name}' is specified more than once. To "
                    "provide multiple values to parameters that can accept multiple values, use the array syntax. "
                    'For example, "-parameter value1,value2,value3".',
                    parameter=parameter.name,
                )
            if parameter.common:
                common.add(parameter.name)
                continue
            bound[parameter.name] = convert(
                parameter, value, pattern=pattern_for(parameter), target=target, activity=syntax.name
            )
        for value in positional:
            free = next((p for p in syntax.positional() if p.name not in bound), None)
            if free is None:
                raise BindingError(
                    "PositionalParameterNotFound",
                    f"A positional parameter cannot be found that accepts argument '{value}'.",
                )
            bound[free.name] = convert(free, value, pattern=pattern_for(free), target=target, activity=syntax.name)
        syntax.choose_set(bound, has_input=has_input)
    except BindingError as error:
        raise CmdletError(records.binding_error(error, target, syntax.name), terminating=True) from None
    return bound
