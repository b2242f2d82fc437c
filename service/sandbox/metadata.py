"""What the endpoint says about its commands: PSRP GetCommandMetadata and Get-Command.

MS-PSRP 3.1.4.x: a client asks a runspace pool for command metadata with a GET_COMMAND_METADATA
pipeline (name patterns, command types); the server answers with one CommandMetadataCount
object (2.2.3.21) followed by one CommandMetadata object per command (2.2.3.22), each carrying
its parameters as ParameterMetadata (2.2.3.23). What is listed is what the runspace that answers
can run: on a full endpoint the Exchange commands exist only after Connect-ExchangeOnline (and
only those named by its -CommandName), the runner module's wrappers only on the JEA endpoint,
and nothing in ``denied_cmdlets``. Parameters are Microsoft's documented ones
(``service/reference/cmdlets.json``) plus the common ones; their .NET types are approximated
from the documented type names (the README's fidelity table says so).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

from psrpcore.types import CommandMetadataCount, CommandTypes, PSCustomObject, PSNoteProperty, PSObject, PSType

from service.reference import ParameterSyntax
from service.sandbox.cmdlets import CMDLETS, Cmdlet, Runspace, lookup
from service.sandbox.records import ErrorSpec

_DOTNET = {
    "String": "System.String",
    "String[]": "System.String[]",
    "SwitchParameter": "System.Management.Automation.SwitchParameter",
    "Boolean": "System.Boolean",
    "Int32": "System.Int32",
    "UInt32": "System.UInt32",
    "Int64": "System.Int64",
    "Double": "System.Double",
    "SecureString": "System.Security.SecureString",
    "Hashtable": "System.Collections.Hashtable",
    "PSCredential": "System.Management.Automation.PSCredential",
    "X509Certificate2": "System.Security.Cryptography.X509Certificates.X509Certificate2",
    "Object": "System.Object",
}


@PSType(
    type_names=["System.Management.Automation.ParameterMetadata"],
    adapted_properties=[
        PSNoteProperty("Name"),
        PSNoteProperty("ParameterType"),
        PSNoteProperty("Aliases"),
        PSNoteProperty("IsDynamic"),
        PSNoteProperty("SwitchParameter"),
    ],
)
class ParameterMetadata(PSObject):
    """MS-PSRP 2.2.3.23."""


def dotnet_type(parameter: ParameterSyntax) -> str:
    return _DOTNET.get(parameter.type, "System.Object")


def command_type(cmdlet: Cmdlet) -> CommandTypes:
    """Compiled cmdlets (AD, Graph's sign-in, Get-Command) or functions (Exchange v3, Graph's generated
    commands, the runner module's wrappers)."""
    return CommandTypes.Cmdlet if cmdlet.compiled else CommandTypes.Function


def available(runspace: Runspace, *, jea: bool, hidden: Callable[[str], bool]) -> list[Cmdlet]:
    """Every command a pipeline in this runspace could run now."""
    return [c for c in CMDLETS.values() if not isinstance(lookup(c.name, runspace, jea=jea, hidden=hidden), ErrorSpec)]


def matching(commands: Iterable[Cmdlet], patterns: Iterable[str] | None) -> list[Cmdlet]:
    wanted = [p.lower() for p in (patterns or ["*"])]
    return [c for c in commands if any(fnmatch.fnmatchcase(c.name.lower(), p) for p in wanted)]


def _parameters(cmdlet: Cmdlet) -> dict[str, ParameterMetadata]:
    return {
        p.name: ParameterMetadata(
            Name=p.name,
            ParameterType=dotnet_type(p),
            Aliases=list(p.aliases),
            IsDynamic=False,
            SwitchParameter=p.is_switch,
        )
        for p in cmdlet.syntax.all_parameters()
    }


def command_metadata(cmdlet: Cmdlet) -> PSCustomObject:
    """MS-PSRP 2.2.3.22 CommandMetadata."""
    return PSCustomObject(
        PSTypeName="Selected.System.Management.Automation.CommandInfo",
        Name=cmdlet.name,
        Namespace=cmdlet.syntax.module,
        HelpUri=cmdlet.syntax.url,
        CommandType=command_type(cmdlet),
        OutputType=[],
        Parameters=_parameters(cmdlet),
    )


def metadata_answer(commands: list[Cmdlet]) -> list[Any]:
    """The objects a GET_COMMAND_METADATA pipeline writes, in order."""
    return [CommandMetadataCount(Count=len(commands)), *(command_metadata(c) for c in commands)]


def command_info(cmdlet: Cmdlet) -> PSCustomObject:
    """What Get-Command writes for one command (the properties a caller reads)."""
    kind = command_type(cmdlet)
    return PSCustomObject(
        PSTypeName="System.Management.Automation.CmdletInfo"
        if kind is CommandTypes.Cmdlet
        else "System.Management.Automation.FunctionInfo",
        Name=cmdlet.name,
        CommandType=kind,
        ModuleName=cmdlet.syntax.module,
        Source=cmdlet.syntax.module,
        HelpUri=cmdlet.syntax.url,
        Parameters={p.name: dotnet_type(p) for p in cmdlet.syntax.all_parameters()},
    )
