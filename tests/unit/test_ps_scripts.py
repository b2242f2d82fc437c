"""What an administrator installs on the runner host (ps_scripts/), checked without PowerShell.

Every file is parsed with tree-sitter-powershell. The data files (.psrc, .pssc, .psd1) are then
read from their syntax trees by a small evaluator of the PowerShell data-file subset (hashtables,
arrays, comma lists, string literals, $true/$false/$null, integers) that refuses anything else.
The role capability is compared with the command catalogue (service/powershell/commands.py) and
with the sandbox's emulation of the endpoint, so that the endpoint exposes exactly what the
service sends, no more, and accepts every value the bridge really sends. The module's two wrappers
(UnblockRunner.psm1) are read from their syntax trees too: their parameters are the catalogue's,
and they call exactly what they replace, with fixed values, without ever running text as script.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import tree_sitter_powershell as tsp
from tree_sitter import Language, Node, Parser, Tree

from service import reference
from service.config import Settings
from service.powershell import commands as c
from service.powershell.bridge import PowerShellBridge
from service.powershell.commands import Invocation
from service.powershell.runspace import RawResult
from service.sandbox.cmdlets import JEA_VISIBLE

ROOT = Path(__file__).resolve().parents[2]
PS_DIR = ROOT / "ps_scripts"
DOC = ROOT / "docs" / "runner-host.md"
PS_SUFFIXES = (".ps1", ".psm1", ".psrc", ".pssc", ".psd1")
PS_FILES = sorted(p for p in PS_DIR.iterdir() if p.suffix in PS_SUFFIXES)

PSRC = PS_DIR / "UnblockRunner.psrc"
PSSC = PS_DIR / "UnblockRunner.pssc"
PSD1 = PS_DIR / "UnblockRunner.psd1"
PSM1 = PS_DIR / "UnblockRunner.psm1"
CONNECT = PS_DIR / "Connect-UnblockRunner.ps1"
INSTALLER = PS_DIR / "Install-UnblockRunner.ps1"

RUNNER_NAMES = frozenset(cmd.name for cmd in c.RUNNER_COMMANDS)
CATALOGUE_PARAMETERS = {cmd.name: frozenset(cmd.parameters) for cmd in c.RUNNER_COMMANDS}
AD_NAMES = frozenset(name for name in RUNNER_NAMES if "-AD" in name)
GRAPH_NAMES = frozenset(name for name in RUNNER_NAMES if "-Mg" in name)
#: The UnblockRunner module's functions, and the commands they replace on the JEA endpoint.
WRAPPERS = {cmd.name: cmd for cmd in c.CATALOGUE if cmd.runner}
WRAPPED = {cmd.name: cmd for cmd in c.CATALOGUE if cmd.direct}
#: What each wrapper runs, with the values it fixes ("$Name": the wrapper's own parameter).
INNER_CALLS = {
    c.SET_RUNNER_PASSWORD.name: (c.UPDATE_MG_USER.name, {"UserId": "$UserId", "ErrorAction": "Stop"}),
    c.CLEAR_RUNNER_FORWARDING.name: (
        c.SET_MAILBOX.name,
        {
            "Identity": "$Identity",
            "ForwardingSmtpAddress": "$null",
            "ForwardingAddress": "$null",
            "DeliverToMailboxAndForward": "$false",
            "Confirm": "$false",
            "ErrorAction": "Stop",
        },
    ),
}

#: A user's (or service principal's) object id as Graph writes it: a lower-case GUID.
OBJECT_ID = "00000000-0000-4000-8000-000000000001"

#: The parameters whose value is one mailbox or user address: all share the role capability's
#: address pattern (and the wrappers repeat it), so no command accepts an address another refuses.
ADDRESS_PARAMETERS = frozenset(
    {
        ("Get-BlockedSenderAddress", "SenderAddress"),
        ("Remove-BlockedSenderAddress", "SenderAddress"),
        ("Get-InboxRule", "Mailbox"),
        ("Disable-InboxRule", "Mailbox"),
        ("Get-Mailbox", "Identity"),
        ("Get-MailboxPermission", "Identity"),
        ("Get-RecipientPermission", "Identity"),
        ("Get-MgUser", "UserId"),
        ("Revoke-MgUserSignInSession", "UserId"),
        ("Get-MgUserAuthenticationMethod", "UserId"),
        ("Set-UnblockUserPassword", "UserId"),
        ("Clear-UnblockForwarding", "Identity"),
    }
)

#: JEA always allows the common parameters, -Confirm and -WhatIf included, and they must not be
#: listed: on a command that supports ShouldProcess, a listed -Confirm becomes a second -Confirm
#: parameter of JEA's proxy function and every call fails. The catalogue's Confirm is one of these.
COMMON_PARAMETERS = frozenset(
    {
        "Confirm",
        "WhatIf",
        "Verbose",
        "Debug",
        "ErrorAction",
        "WarningAction",
        "InformationAction",
        "ErrorVariable",
        "WarningVariable",
        "InformationVariable",
        "OutVariable",
        "OutBuffer",
        "PipelineVariable",
        "ProgressAction",
    }
)

#: Bound from the pipeline (Get-ADUser | Set-ADAccountPassword | Set-ADUser), never by name, so the
#: catalogue does not declare them; JEA must keep them or the ADUser object cannot bind.
PIPELINE_BOUND: dict[str, frozenset[str]] = {
    "Set-ADAccountPassword": frozenset({"Identity"}),
    "Set-ADUser": frozenset({"Identity"}),
}

#: The only parameters listed without ValidateSet/ValidatePattern, each for the reason the psrc
#: gives: the value is not a string JEA can read (a SecureString), or it is bound from the pipeline.
UNCONSTRAINED = frozenset(
    {
        ("Set-UnblockUserPassword", "NewPassword"),
        ("Set-ADAccountPassword", "NewPassword"),
        ("Set-ADAccountPassword", "Identity"),
        ("Set-ADUser", "Identity"),
    }
)

#: Cmdlets and .NET calls that change the machine; the installer must run each under ShouldProcess.
STATE_CHANGING_COMMANDS = frozenset(
    {
        "Install-Module",
        "Install-PackageProvider",
        "Add-WindowsCapability",
        "Install-WindowsFeature",
        "Import-PfxCertificate",
        "New-Item",
        "Copy-Item",
        "Move-Item",
        "Remove-Item",
        "Set-Item",
        "Set-Content",
        "Out-File",
        "Set-Acl",
        "Unblock-File",
        "New-ModuleManifest",
        "Register-PSSessionConfiguration",
        "Unregister-PSSessionConfiguration",
        "Set-PSSessionConfiguration",
    }
)
STATE_CHANGING_METHODS = frozenset({"WriteAllText", "WriteAllBytes", "AppendAllText", "Delete", "CreateDirectory"})


# --- parsing ------------------------------------------------------------------------------------------

PARSER = Parser(Language(tsp.language()))


def parse(source: str | bytes) -> Tree:
    return PARSER.parse(source.encode("utf-8") if isinstance(source, str) else source)


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def first_error(node: Node) -> Node | None:
    """The first ERROR or MISSING node in document order, if any."""
    return next((n for n in walk(node) if n.is_error or n.is_missing), None)


def describe(node: Node, name: str) -> str:
    row, column = node.start_point
    kind = f"MISSING {node.type}" if node.is_missing else node.type
    snippet = node.text.decode("utf-8", "replace")[:60] if node.text else ""
    return f"{name}:{row + 1}:{column + 1}: {kind} at {snippet!r}"


def text(node: Node) -> str:
    return node.text.decode("utf-8") if node.text else ""


def named(node: Node) -> list[Node]:
    """Named children, comments left out (they may appear anywhere)."""
    return [child for child in node.named_children if child.type != "comment"]


# --- the data-file subset -------------------------------------------------------------------------------


class NotData(ValueError):
    """The node is not plain data (it computes, expands or calls something)."""


_SINGLE_CHILD = frozenset(
    {
        "program",
        "pipeline",
        "pipeline_chain",
        "logical_expression",
        "bitwise_expression",
        "comparison_expression",
        "additive_expression",
        "multiplicative_expression",
        "format_expression",
        "range_expression",
        "unary_expression",
    }
)


def evaluate(node: Node) -> Any:
    """Python value of a data-file expression: dict, list, str, bool, int or None."""
    kind = node.type
    if kind == "statement_list":
        statements = named(node)
        if len(statements) != 1:
            raise NotData(f"expected one statement, found {len(statements)} at {node.start_point}")
        return evaluate(statements[0])
    if kind == "script_parameter_default":  # = <expression>
        return evaluate(named(node)[-1])
    if kind in _SINGLE_CHILD:
        children = named(node)
        if len(children) != 1 or any(not child.is_named for child in node.children):
            raise NotData(f"{kind} with operators is not data: {text(node)[:60]!r}")
        return evaluate(children[0])
    if kind == "array_literal_expression":
        items = [evaluate(child) for child in named(node)]
        return items if any(child.type == "," for child in node.children) else items[0]
    if kind == "array_expression":
        values: list[Any] = []
        for body in named(node):
            for statement in named(body):
                value = evaluate(statement)
                values.extend(value if isinstance(value, list) else [value])
        return values
    if kind == "hash_literal_expression":
        return {key: evaluate(value) for key, value in hash_entries(node).items()}
    if kind == "string_literal":
        return _string(node)
    if kind == "variable":
        constants: dict[str, Any] = {"$true": True, "$false": False, "$null": None}
        if text(node).lower() not in constants:
            raise NotData(f"variable {text(node)} is not data")
        return constants[text(node).lower()]
    if kind == "integer_literal":
        return int(text(node))
    raise NotData(f"{kind} is not data: {text(node)[:60]!r}")


def _string(node: Node) -> str:
    (literal,) = named(node)
    raw = text(literal)
    if literal.type == "verbatim_string_characters" and raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    if literal.type == "expandable_string_literal" and raw.startswith('"'):
        body = raw[1:-1]
        if "$" in body or "`" in body:
            raise NotData(f"expandable string {raw!r} is not data")
        return body.replace('""', '"')
    raise NotData(f"{literal.type} {raw[:40]!r} is not a plain string")


def hash_entries(node: Node) -> dict[str, Node]:
    """Key -> value node of a hashtable literal, without evaluating the values."""
    if node.type != "hash_literal_expression":
        raise NotData(f"{node.type} is not a hashtable")
    entries: dict[str, Node] = {}
    for body in named(node):
        for entry in named(body):
            key_node, value = named(entry)
            (key,) = named(key_node)
            name = text(key) if key.type == "simple_name" else str(evaluate(key))
            if name in entries:
                raise NotData(f"duplicate key {name}")
            entries[name] = value
    return entries


def data_file(source: str) -> dict[str, Any]:
    tree = parse(source)
    error = first_error(tree.root_node)
    assert error is None, describe(error, "data file")
    value = evaluate(tree.root_node)
    assert isinstance(value, dict), "a PowerShell data file is one hashtable"
    return value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- the role capability ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visible:
    name: str
    kind: str  # "function" (VisibleFunctions) or "cmdlet" (VisibleCmdlets)
    parameters: dict[str, dict[str, Any]]  # parameter name -> {ValidateSet|ValidatePattern: ...} or {}


def visible_commands(data: dict[str, Any]) -> dict[str, Visible]:
    commands: dict[str, Visible] = {}
    for key, kind in (("VisibleFunctions", "function"), ("VisibleCmdlets", "cmdlet")):
        for entry in as_list(data.get(key, [])):
            assert isinstance(entry, dict), f"{entry!r} in {key} has no parameter list, so JEA allows every parameter"
            assert set(entry) == {"Name", "Parameters"}, f"{entry.get('Name')}: unexpected keys {sorted(entry)}"
            name = entry["Name"]
            assert name not in commands, f"{name} is listed twice"
            parameters: dict[str, dict[str, Any]] = {}
            for parameter in as_list(entry["Parameters"]):
                assert isinstance(parameter, dict), f"{name}: parameter entry {parameter!r} is not a hashtable"
                parameter_name = parameter["Name"]
                assert parameter_name not in parameters, f"{name} lists -{parameter_name} twice"
                parameters[parameter_name] = {k: v for k, v in parameter.items() if k != "Name"}
            commands[name] = Visible(name, kind, parameters)
    return commands


@cache
def role_capability() -> dict[str, Any]:
    return data_file(PSRC.read_text(encoding="utf-8"))


@cache
def visible() -> dict[str, Visible]:
    return visible_commands(role_capability())


def strip_region(source: str, name: str) -> str:
    """What Install-UnblockRunner.ps1 (Remove-TextRegion) does without -IncludeActiveDirectory."""
    kept: list[str] = []
    inside = False
    for line in source.splitlines():
        if line.strip() == f"#region {name}":
            inside = True
        elif line.strip() == f"#endregion {name}":
            inside = False
        elif not inside:
            kept.append(line)
    assert not inside, f"#region {name} is not closed"
    return "\n".join(kept) + "\n"


def ps_string(value: Any) -> str:
    """How PowerShell turns a bound value into the string JEA validates."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def jea_accepts(constraint: dict[str, Any], value: Any) -> bool:
    """JEA's check: ValidatePattern as '^(p)$' (case-insensitive) or ValidateSet, per element; $null fails."""
    if "ValidatePattern" in constraint:
        regex = re.compile("^(" + "|".join(as_list(constraint["ValidatePattern"])) + ")$", re.IGNORECASE)

        def ok(element: Any) -> bool:
            return regex.search(ps_string(element)) is not None

    elif "ValidateSet" in constraint:
        allowed = {str(v).lower() for v in as_list(constraint["ValidateSet"])}

        def ok(element: Any) -> bool:
            return ps_string(element).lower() in allowed

    else:
        return True
    if value is None:
        return False
    elements = list(value) if isinstance(value, list | tuple) else [value]
    return all(element is not None and ok(element) for element in elements)


# --- (a) every file parses --------------------------------------------------------------------------------


def test_the_runner_host_files_are_all_there() -> None:
    """The installer, the startup script, the module and its manifest, the role capability, the session file."""
    assert {p.name for p in PS_FILES} >= {PSRC.name, PSSC.name, PSD1.name, PSM1.name, CONNECT.name, INSTALLER.name}


@pytest.mark.parametrize("path", PS_FILES, ids=[p.name for p in PS_FILES])
def test_every_file_parses_without_errors(path: Path) -> None:
    """tree-sitter-powershell finds no ERROR or MISSING node in any file of ps_scripts/."""
    tree = parse(path.read_bytes())
    error = first_error(tree.root_node)
    assert error is None, describe(error, path.name)
    assert not tree.root_node.has_error


@pytest.mark.parametrize(
    "snippet",
    [
        "@{ Name = 'Get-X'; Parameters = @{ Name = 'P' ",
        "function f { param([string] $a }",
        "if ($x) { 'a' ",
        "@{ A = 'x' B }",
    ],
)
def test_the_parse_check_catches_broken_powershell(snippet: str) -> None:
    """Negative control: a broken snippet does produce an ERROR or MISSING node."""
    assert first_error(parse(snippet).root_node) is not None


@pytest.mark.parametrize(
    "snippet",
    ["@{ A = 'x' + 'y' }", '@{ A = "$env:COMPUTERNAME" }', "@{ A = (Get-Date) }", "@{ A = $config }"],
)
def test_the_data_evaluator_refuses_code(snippet: str) -> None:
    """Negative control: an expression that computes something is not read as data."""
    with pytest.raises(NotData):
        data_file(snippet)


def test_the_data_evaluator_reads_the_data_subset() -> None:
    """Hashtables, @() arrays, comma lists, doubled quotes, $true/$false/$null and comments."""
    value = data_file(
        "@{\n  # c\n  A = 'it''s', \"x\"\n  B = @(\n    @{ N = 1 }\n    @{ N = 2 }, @{ N = 3 }\n  )\n"
        "  C = @()\n  D = $true; E = $null; 'F G' = 'h'\n}\n"
    )
    assert value == {
        "A": ["it's", "x"],
        "B": [{"N": 1}, {"N": 2}, {"N": 3}],
        "C": [],
        "D": True,
        "E": None,
        "F G": "h",
    }


# --- (b), (c) the role capability against the catalogue --------------------------------------------------


def test_the_role_capability_exposes_exactly_the_runner_commands() -> None:
    """VisibleFunctions + VisibleCmdlets = RUNNER_COMMANDS: nothing missing, no extra privilege."""
    names = set(visible())
    assert names - RUNNER_NAMES == set(), "commands the service does not need"
    assert RUNNER_NAMES - names == set(), "commands the service needs"
    assert all("*" not in name and "\\" not in name for name in names)


def test_the_wrapped_commands_are_not_visible() -> None:
    """Update-MgUser and Set-Mailbox are reachable only through the wrappers, never by the caller."""
    assert set(WRAPPED) == {"Update-MgUser", "Set-Mailbox"}
    assert set(WRAPPERS) == {"Set-UnblockUserPassword", "Clear-UnblockForwarding"}
    assert not set(WRAPPED) & set(visible()), "a wrapped command is visible"
    assert set(WRAPPERS) <= set(visible())
    # Listing a command under another name (module-qualified, wildcard) would expose it as well.
    listed = {name.lower() for name in visible()}
    for name in WRAPPED:
        assert not any(name.lower() in entry or "*" in entry for entry in listed), name


def test_functions_and_cmdlets_are_listed_where_powershell_has_them() -> None:
    """Exchange Online and Graph SDK commands and the wrappers are functions; the ActiveDirectory ones are cmdlets."""
    kinds = {name: command.kind for name, command in visible().items()}
    functions = (set(c.EXCHANGE_COMMANDS) & RUNNER_NAMES) | GRAPH_NAMES | set(WRAPPERS)
    assert {n for n, k in kinds.items() if k == "function"} == functions
    assert {n for n, k in kinds.items() if k == "cmdlet"} == AD_NAMES


@pytest.mark.parametrize("command", sorted(RUNNER_NAMES))
def test_each_command_allows_exactly_the_catalogue_parameters(command: str) -> None:
    """The parameters JEA keeps are the catalogue's, minus common ones, plus pipeline-bound ones."""
    allowed = set(visible()[command].parameters)
    catalogue = CATALOGUE_PARAMETERS[command]
    expected = (catalogue - COMMON_PARAMETERS) | PIPELINE_BOUND.get(command, frozenset())
    assert allowed == expected
    for parameter in catalogue:
        assert parameter in allowed or parameter in COMMON_PARAMETERS, f"-{parameter} would be refused"
    assert not allowed & COMMON_PARAMETERS, "a listed common parameter breaks JEA's proxy"


def test_constraints_are_well_formed_and_only_missing_where_impossible() -> None:
    """At most one of ValidateSet/ValidatePattern each; unconstrained only where JEA cannot constrain."""
    unconstrained = set()
    for command in visible().values():
        for parameter, constraint in command.parameters.items():
            assert set(constraint) <= {"ValidateSet", "ValidatePattern"}, (command.name, parameter)
            assert len(constraint) <= 1, f"{command.name} -{parameter}: JEA takes ValidateSet or ValidatePattern"
            if "ValidatePattern" in constraint:
                for pattern in as_list(constraint["ValidatePattern"]):
                    re.compile(pattern)
                    assert pattern.startswith("^"), (command.name, parameter)
                    assert pattern.endswith("$"), (command.name, parameter)
            if not constraint:
                unconstrained.add((command.name, parameter))
    assert unconstrained == UNCONSTRAINED


async def test_every_value_the_bridge_sends_passes_the_endpoint() -> None:
    """Run every bridge operation as set up for this endpoint (both password backends); check values as JEA would."""
    pipelines: list[tuple[Invocation, ...]] = []
    address = "o'brien.smith+it@contoso.com"
    # Get-MgUser's answer carries the object id that the app-consent filter is built from; Get-Mailbox's
    # is taken only when it names the address.
    user = SimpleNamespace(
        adapted_properties={"Id": OBJECT_ID.upper(), "UserPrincipalName": address, "PrimarySmtpAddress": address}
    )

    class RecordingPool:
        async def call(self, invocations: tuple[Invocation, ...], *, limit: float | None = None) -> RawResult:
            pipelines.append(invocations)
            return RawResult(output=[user], records=[], failed=False, warnings=[])

        async def close(self) -> None:
            return None

    for backend in ("graph", "ad"):
        # docs/runner-host.md, "Point the service at it": the settings used with this endpoint.
        settings = Settings(
            ps_server="runner.contoso.com",
            password_backend=backend,
            ps_configuration_name="UnblockRunner",
            ps_connect_in_session=False,
            ps_runner_functions=True,
        )
        bridge = PowerShellBridge(settings, pool=cast(Any, RecordingPool()))
        await bridge.get_restriction(address)
        await bridge.list_restrictions()
        await bridge.remove_restriction(address, reason="unblock-service case 0190c1d2 ticket INC-0042")
        await bridge.remove_restriction(address)
        await bridge.accepted_domains()
        await bridge.list_inbox_rules(address)
        await bridge.get_forwarding(address)
        await bridge.list_mailbox_permissions(address)
        await bridge.list_send_as(address)
        await bridge.list_auth_methods(address)
        await bridge.list_oauth_grants(address)
        await bridge.get_service_principal(OBJECT_ID)
        await bridge.disable_inbox_rule(address, "O'Brien, Rob\\16204938563291545601")
        await bridge.clear_forwarding(address)
        await bridge.get_user(address)
        await bridge.reset_password(address, "Tmp-Pass-1234!", force_change=True)
        await bridge.reset_password(address, "Tmp-Pass-5678!", force_change=False)
        await bridge.revoke_sessions(address)

    exercised = {invocation.name for pipeline in pipelines for invocation in pipeline}
    assert exercised == RUNNER_NAMES, "every command the endpoint exposes is one the bridge runs"
    assert not exercised & set(WRAPPED), "the bridge runs a command the endpoint only has inside a wrapper"
    for pipeline in pipelines:
        for invocation in pipeline:
            command = visible()[invocation.name]
            for parameter, value in invocation.values:
                if parameter in COMMON_PARAMETERS:
                    continue
                assert parameter in command.parameters, f"JEA would refuse {invocation.name} -{parameter}"
                assert jea_accepts(command.parameters[parameter], value), (
                    f"JEA would refuse {invocation.name} -{parameter} {value!r}"
                )


@pytest.mark.parametrize(
    ("command", "parameter", "value"),
    [
        ("Get-BlockedSenderAddress", "SenderAddress", "*@contoso.com"),
        ("Remove-BlockedSenderAddress", "SenderAddress", "rob@contoso.com; Remove-Mailbox rob"),
        ("Remove-BlockedSenderAddress", "SenderAddress", None),
        ("Remove-BlockedSenderAddress", "Reason", "no case"),
        ("Clear-UnblockForwarding", "Identity", "*"),
        ("Clear-UnblockForwarding", "Identity", "rob@contoso.com -ForwardingSmtpAddress eve@example.net"),
        ("Clear-UnblockForwarding", "Identity", None),
        ("Get-InboxRule", "Mailbox", "rob"),
        ("Get-InboxRule", "IncludeHidden", False),
        ("Get-Mailbox", "Identity", "*"),
        ("Get-Mailbox", "Identity", None),
        ("Get-Mailbox", "Identity", "rob@contoso.com, eve@contoso.com"),
        ("Get-MailboxPermission", "Identity", "rob"),
        ("Get-MailboxPermission", "Identity", None),
        ("Get-RecipientPermission", "Identity", "*@contoso.com"),
        ("Get-RecipientPermission", "Identity", None),
        ("Get-MgUserAuthenticationMethod", "UserId", "*"),
        ("Get-MgUserAuthenticationMethod", "All", False),
        ("Get-MgOauth2PermissionGrant", "Filter", "principalId eq 'x' or true"),
        ("Get-MgOauth2PermissionGrant", "Filter", f"principalId eq '{OBJECT_ID}' or true"),
        ("Get-MgOauth2PermissionGrant", "Filter", f"principalId eq '{OBJECT_ID}' or consentType eq 'AllPrincipals'"),
        ("Get-MgOauth2PermissionGrant", "Filter", f"principalId eq '{OBJECT_ID}' and clientId eq '{OBJECT_ID}'"),
        ("Get-MgOauth2PermissionGrant", "Filter", f"principalId eq '{OBJECT_ID}'\nor true"),
        ("Get-MgOauth2PermissionGrant", "Filter", "principalId eq 00000000-0000-4000-8000-000000000001"),
        ("Get-MgOauth2PermissionGrant", "Filter", "clientId eq '00000000-0000-4000-8000-000000000001'"),
        ("Get-MgOauth2PermissionGrant", "Filter", "principalId ne '00000000-0000-4000-8000-000000000001'"),
        ("Get-MgOauth2PermissionGrant", "Filter", "consentType eq 'AllPrincipals'"),
        ("Get-MgOauth2PermissionGrant", "Filter", ""),
        ("Get-MgOauth2PermissionGrant", "Filter", None),
        ("Get-MgOauth2PermissionGrant", "All", False),
        ("Get-MgServicePrincipal", "ServicePrincipalId", "*"),
        ("Get-MgServicePrincipal", "ServicePrincipalId", "appId='00000003-0000-0000-c000-000000000000'"),
        ("Get-MgServicePrincipal", "ServicePrincipalId", "00000003-0000-0000-c000-000000000000/owners"),
        ("Get-MgServicePrincipal", "ServicePrincipalId", None),
        ("Get-MgServicePrincipal", "Property", ["Id", "KeyCredentials"]),
        ("Get-MgServicePrincipal", "Property", "*"),
        ("Disable-InboxRule", "Identity", "Rob\\*"),
        ("Get-MgUser", "UserId", "00000000-0000-0000-0000-000000000000"),
        ("Get-MgUser", "Property", ["Id", "SignInActivity"]),
        ("Set-UnblockUserPassword", "UserId", "rob@contoso.com' -AccountEnabled $false"),
        ("Set-UnblockUserPassword", "UserId", "*@contoso.com"),
        ("Set-UnblockUserPassword", "ForceChangePasswordNextSignIn", "maybe"),
        ("Set-UnblockUserPassword", "ForceChangePasswordNextSignIn", None),
        ("Revoke-MgUserSignInSession", "UserId", "rob@"),
        ("Get-ADUser", "LDAPFilter", "(userPrincipalName=*)"),
        ("Get-ADUser", "LDAPFilter", "(|(userPrincipalName=rob@contoso.com)(adminCount=1))"),
        ("Get-ADUser", "LDAPFilter", "(userPrincipalName=rob@contoso.com)(adminCount=1)"),
        ("Set-ADAccountPassword", "Reset", False),
        ("Set-ADAccountPassword", "PassThru", False),
    ],
)
def test_values_the_service_never_sends_are_refused(command: str, parameter: str, value: Any) -> None:
    """The constraints are tight: wildcards, other identities, other properties, other switches fail."""
    assert not jea_accepts(visible()[command].parameters[parameter], value)


def test_address_parameters_share_one_pattern() -> None:
    """Every address-valued parameter has the same ValidatePattern, which takes one plain address."""
    listed = {
        (command.name, parameter)
        for command in visible().values()
        for parameter in command.parameters
        if (command.name, parameter) in ADDRESS_PARAMETERS
    }
    assert listed == ADDRESS_PARAMETERS
    patterns = {str(visible()[name].parameters[parameter].get("ValidatePattern")) for name, parameter in listed}
    assert len(patterns) == 1, patterns
    (address,) = patterns
    assert jea_accepts({"ValidatePattern": address}, "o'brien.smith+it@contoso.com")
    for value in ("*", "rob", "rob@contoso.com; eve@example.net", "*@contoso.com"):
        assert not jea_accepts({"ValidatePattern": address}, value), value


def test_switches_allow_only_true() -> None:
    """A visible switch parameter (per Microsoft's syntax, service/reference) is constrained to 'True' only."""
    switches = []
    for command in visible().values():
        documented = reference.command(command.name)
        for parameter, constraint in command.parameters.items():
            if documented.resolve(parameter).is_switch:
                switches.append((command.name, parameter))
                assert as_list(constraint.get("ValidateSet")) == ["True"], (command.name, parameter)
    assert {("Get-InboxRule", "IncludeHidden"), ("Get-MgUserAuthenticationMethod", "All")} <= set(switches)
    assert ("Get-MgOauth2PermissionGrant", "All") in switches


def test_selectable_properties_are_exactly_the_catalogue_lists() -> None:
    """-Property of Get-MgUser and Get-MgServicePrincipal allows exactly the properties the service reads."""
    user = visible()[c.GET_MG_USER.name].parameters["Property"]
    assert sorted(as_list(user["ValidateSet"])) == sorted(c.USER_PROPERTIES)
    app = visible()[c.GET_SERVICE_PRINCIPAL.name].parameters["Property"]
    assert sorted(as_list(app["ValidateSet"])) == sorted(c.SERVICE_PRINCIPAL_PROPERTIES)
    assert len(c.SERVICE_PRINCIPAL_PROPERTIES) == 5


@pytest.mark.parametrize(
    "object_id",
    [OBJECT_ID, "9f1c2a0e-1b2c-4d5e-8f90-123456789abc", "ffffffff-ffff-ffff-ffff-ffffffffffff"],
)
def test_the_app_consent_filter_admits_one_user_by_object_id(object_id: str) -> None:
    """-Filter takes exactly principalId eq '<GUID>' (what the bridge builds); -ServicePrincipalId a GUID."""
    grants = visible()[c.GET_OAUTH_GRANTS.name].parameters
    assert jea_accepts(grants["Filter"], f"principalId eq '{object_id}'")
    assert jea_accepts(grants["All"], True)
    apps = visible()[c.GET_SERVICE_PRINCIPAL.name].parameters
    assert jea_accepts(apps["ServicePrincipalId"], object_id)
    assert jea_accepts(apps["Property"], list(c.SERVICE_PRINCIPAL_PROPERTIES))


def test_without_active_directory_the_installer_leaves_a_valid_smaller_role_capability() -> None:
    """Dropping the ActiveDirectory region leaves valid PowerShell exposing the other commands only."""
    source = PSRC.read_text(encoding="utf-8")
    markers = [line.strip() for line in source.splitlines() if line.strip().startswith(("#region", "#endregion"))]
    assert markers == ["#region ActiveDirectory", "#endregion ActiveDirectory"] * 2
    stripped = strip_region(source, "ActiveDirectory")
    data = data_file(stripped)
    assert "VisibleCmdlets" not in data
    assert "ActiveDirectory" not in as_list(data["ModulesToImport"])
    assert set(visible_commands(data)) == RUNNER_NAMES - AD_NAMES
    installer = parse(INSTALLER.read_bytes()).root_node
    (call,) = commands_named(installer, "Remove-TextRegion")
    assert "-Name 'ActiveDirectory'" in text(call)


# --- (d) the session configuration and the module ---------------------------------------------------------


def test_the_session_configuration_is_a_restricted_jea_endpoint() -> None:
    """RestrictedRemoteServer, NoLanguage, a virtual account, transcripts, and the UnblockRunner role."""
    data = data_file(PSSC.read_text(encoding="utf-8"))
    assert data["SessionType"] == "RestrictedRemoteServer"
    assert data["LanguageMode"] == "NoLanguage"
    assert data["RunAsVirtualAccount"] is True
    assert re.fullmatch(r"[A-Za-z]:\\.+", data["TranscriptDirectory"])
    roles = data["RoleDefinitions"]
    assert isinstance(roles, dict)
    assert len(roles) == 1
    (role,) = roles.values()
    assert as_list(role["RoleCapabilities"]) == [PSRC.stem]
    # Startup scripts run after JEA builds its proxies: the sign-in happens in ModulesToImport instead.
    assert "ScriptsToProcess" not in data


def test_the_installer_fills_in_the_session_configuration_placeholders() -> None:
    """The group and transcript placeholders the installer replaces are the ones in the .pssc."""
    installer = parse(INSTALLER.read_bytes()).root_node
    pssc = data_file(PSSC.read_text(encoding="utf-8"))
    group = evaluate(assigned_value(installer, "$GroupPlaceholder"))
    transcripts = evaluate(assigned_value(installer, "$TranscriptPlaceholder"))
    assert group == "'" + next(iter(pssc["RoleDefinitions"])) + "'"
    assert transcripts == "'" + pssc["TranscriptDirectory"] + "'"


def test_the_module_signs_in_before_jea_builds_its_proxies() -> None:
    """The role capability imports UnblockRunner after Exchange Online; its manifest signs in, then loads the .psm1."""
    modules = as_list(role_capability()["ModulesToImport"])
    required = [
        "ExchangeOnlineManagement",
        "Microsoft.Graph.Users",
        "Microsoft.Graph.Users.Actions",
        "Microsoft.Graph.Identity.SignIns",
        "Microsoft.Graph.Applications",
        "Microsoft.Graph.Authentication",
        "ActiveDirectory",
    ]
    assert set(modules) == {*required, PSD1.stem}
    assert modules.index("ExchangeOnlineManagement") < modules.index(PSD1.stem)
    assert modules.index(PSD1.stem) < min(modules.index(m) for m in modules if m.startswith("Microsoft.Graph"))
    manifest = data_file(PSD1.read_text(encoding="utf-8"))
    # Import-Module runs ScriptsToProcess (in the importer's scope) before it loads the RootModule.
    assert as_list(manifest["ScriptsToProcess"]) == [CONNECT.name]
    assert manifest["RootModule"] == PSM1.name
    assert "NestedModules" not in manifest
    # RequiredModules load before the sign-in: a Graph module there would load before Exchange Online.
    assert as_list(manifest["RequiredModules"]) == ["ExchangeOnlineManagement"]
    exported = as_list(manifest["FunctionsToExport"])
    assert len(exported) == len(set(exported))
    assert set(exported) == set(WRAPPERS), "the module exports exactly the wrappers"
    for key in ("CmdletsToExport", "VariablesToExport", "AliasesToExport"):
        assert manifest[key] == [], f"the module exports nothing but the wrappers ({key})"


# --- (e) the installer -----------------------------------------------------------------------------------


def commands_named(root: Node, name: str) -> list[Node]:
    return [
        n
        for n in walk(root)
        if n.type == "command"
        and any(ch.type == "command_name" and text(ch).lower() == name.lower() for ch in n.children)
    ]


def assigned_value(root: Node, variable: str) -> Node:
    """The expression assigned to ``variable`` (exactly one assignment expected), unwrapped."""
    values = [
        named(n)[-1]
        for n in walk(root)
        if n.type == "assignment_expression" and text(named(n)[0]).lower() == variable.lower()
    ]
    assert len(values) == 1, f"{variable} is assigned {len(values)} times"
    return unwrap(values[0])


def unwrap(node: Node) -> Node:
    """The expression under the grammar's chain of single-child wrappers (pipeline, ..., unary)."""
    while node.type in _SINGLE_CHILD or node.type == "array_literal_expression":
        children = named(node)
        if len(children) != 1 or any(child.type == "," for child in node.children):
            break
        node = children[0]
    return node


def help_sections(root: Node) -> list[tuple[str, str]]:
    """(keyword, text) of each section of the comment-based help (the <# #> block with .SYNOPSIS)."""
    block = next(
        (n for n in walk(root) if n.type == "comment" and text(n).startswith("<#") and ".SYNOPSIS" in text(n)),
        None,
    )
    assert block is not None, "no comment-based help"
    sections: list[tuple[str, list[str]]] = []
    for line in text(block)[2:-2].splitlines():
        keyword = re.match(r"\s*\.([A-Z]+)\b\s*(.*)$", line)
        if keyword:
            sections.append((keyword.group(1), [keyword.group(2)]))
        elif sections:
            sections[-1][1].append(line)
    return [(keyword, " ".join(" ".join(lines).split())) for keyword, lines in sections]


def script_parameters(root: Node) -> dict[str, Node]:
    """Name -> script_parameter node of the script's own param block."""
    (block,) = [n for n in root.children if n.type == "param_block"]
    parameters: dict[str, Node] = {}
    for parameter in walk_type(block, "script_parameter"):
        variable = next(child for child in named(parameter) if child.type == "variable")
        parameters[text(variable).removeprefix("$")] = parameter
    return parameters


def top_level_assignments(root: Node) -> dict[str, Node]:
    """Lower-cased variable -> assigned expression, for assignments at the top of the script."""
    assignments: dict[str, Node] = {}
    for statements in (n for n in root.children if n.type == "statement_list"):
        for statement in named(statements):
            for expression in named(statement) if statement.type == "pipeline" else []:
                if expression.type == "assignment_expression":
                    assignments[text(named(expression)[0]).lower()] = named(expression)[-1]
    return assignments


def walk_type(root: Node, kind: str) -> list[Node]:
    return [n for n in walk(root) if n.type == kind]


def guarded_by_should_process(node: Node) -> bool:
    """Is ``node`` inside the then-block of an if/elseif whose condition calls $PSCmdlet.ShouldProcess?"""
    current: Node | None = node
    while current is not None:
        parent = current.parent
        if (
            current.type == "statement_block"
            and parent is not None
            and parent.type in ("if_statement", "elseif_clause")
        ):
            condition = next(ch for ch in named(parent) if ch.type == "pipeline")
            if "$pscmdlet.shouldprocess(" in text(condition).lower():
                return True
        current = parent
    return False


def test_the_installer_supports_whatif_and_documents_every_parameter() -> None:
    """CmdletBinding(SupportsShouldProcess), #Requires -RunAsAdministrator, help for each parameter."""
    root = parse(INSTALLER.read_bytes()).root_node
    (block,) = [n for n in root.children if n.type == "param_block"]
    binding = [a for a in walk_type(block, "attribute") if text(a).lower().startswith("[cmdletbinding(")]
    assert len(binding) == 1
    arguments = {text(named(arg)[0]).lower(): arg for arg in walk_type(binding[0], "attribute_argument")}
    assert "supportsshouldprocess" in arguments
    assert text(arguments["supportsshouldprocess"]).replace(" ", "").lower() in (
        "supportsshouldprocess",
        "supportsshouldprocess=$true",
    )

    comments = [text(n) for n in walk(root) if n.type == "comment"]
    assert any(re.fullmatch(r"#Requires\s+-RunAsAdministrator\s*", comment, re.IGNORECASE) for comment in comments)

    parameters = script_parameters(root)
    assert set(parameters) == {
        "AppId",
        "CertificateThumbprint",
        "CertificatePath",
        "CertificatePassword",
        "Organization",
        "TenantId",
        "RunnerGroup",
        "ConfigurationName",
        "IncludeActiveDirectory",
    }
    types = {name: [text(t).lower() for t in walk_type(p, "type_literal")] for name, p in parameters.items()}
    assert types["CertificatePassword"] == ["[securestring]"]
    assert types["IncludeActiveDirectory"] == ["[switch]"]
    (default,) = walk_type(parameters["ConfigurationName"], "script_parameter_default")
    assert evaluate(default) == "UnblockRunner"

    sections = help_sections(root)
    keywords = {keyword for keyword, _ in sections}
    assert {"SYNOPSIS", "DESCRIPTION", "PARAMETER", "EXAMPLE"} <= keywords
    assert all(body for _, body in sections), "an empty help section"
    documented = {body.split(" ", 1)[0]: body for keyword, body in sections if keyword == "PARAMETER"}
    assert set(documented) == set(parameters)
    assert all(len(body.split()) > 3 for body in documented.values()), "a .PARAMETER without a description"


def test_the_installer_installs_every_module_the_role_capability_imports() -> None:
    """$RequiredModules is ModulesToImport minus UnblockRunner (the installer writes it) and ActiveDirectory (RSAT)."""
    installer = parse(INSTALLER.read_bytes()).root_node
    installed = as_list(evaluate(assigned_value(installer, "$RequiredModules")))
    imported = as_list(role_capability()["ModulesToImport"])
    assert len(installed) == len(set(installed))
    assert set(installed) == set(imported) - {PSD1.stem, "ActiveDirectory"}
    help_text = " ".join(body for keyword, body in help_sections(installer) if keyword == "DESCRIPTION")
    for module in installed:
        assert module in help_text, f"the installer's help does not name {module}"


def test_the_installer_installs_every_module_file() -> None:
    """The .psm1, the sign-in script and the manifest go to the module folder; the .psrc under RoleCapabilities."""
    root = parse(INSTALLER.read_bytes()).root_node
    writes = commands_named(root, "Set-FileIfChanged")
    order: list[str] = []
    for name in (PSM1.name, CONNECT.name, PSD1.name):
        (write,) = [w for w in writes if f"-ChildPath '{name}'" in text(w)]
        assert "-Path $ModuleDir" in text(write).replace("(Join-Path ", "")
        assert f"Read-SourceFile -Name '{name}'" in text(write)
        order.append(name)
    (role,) = [w for w in writes if f"-ChildPath '{PSRC.name}'" in text(w)]
    assert "$RoleCapabilityDir" in text(role)
    # A manifest is written after the files it names, the role capability after the functions it lists.
    position = {name: next(w.start_byte for w in writes if f"'{name}'" in text(w)) for name in order}
    assert position[PSM1.name] < position[PSD1.name]
    assert position[CONNECT.name] < position[PSD1.name]
    assert position[PSD1.name] < role.start_byte


def test_the_installer_changes_nothing_outside_should_process() -> None:
    """Every state-changing cmdlet or file write runs under $PSCmdlet.ShouldProcess (so -WhatIf works)."""
    root = parse(INSTALLER.read_bytes()).root_node
    changes = [n for name in STATE_CHANGING_COMMANDS for n in commands_named(root, name)]
    changes += [
        n
        for n in walk_type(root, "invokation_expression")
        if any(ch.type == "member_name" and text(ch) in STATE_CHANGING_METHODS for ch in n.children)
    ]
    assert {text(n).split()[0] for n in changes} >= {"Install-Module", "Register-PSSessionConfiguration", "Set-Acl"}
    for change in changes:
        if "$scratch" in text(change):  # the validation copy in %TEMP%, written and removed in place
            continue
        assert guarded_by_should_process(change), f"line {change.start_point[0] + 1}: {text(change)[:70]}"
    preference = top_level_assignments(root).get("$erroractionpreference")
    assert preference is not None, "no top-level $ErrorActionPreference"
    assert evaluate(preference) == "Stop"


# --- (f) the startup script ------------------------------------------------------------------------------


def splatted(root: Node, command: str) -> dict[str, Node]:
    """The hashtable entries splatted into the one call of ``command`` (Command @name)."""
    (call,) = commands_named(root, command)
    splats = [n for n in walk(call) if n.type == "variable" and text(n).startswith("@")]
    assert len(splats) == 1, f"{command} is not called with one splatted hashtable"
    return hash_entries(assigned_value(root, "$" + text(splats[0])[1:]))


def test_the_startup_script_loads_exactly_the_exchange_commands() -> None:
    """Connect-ExchangeOnline -CommandName is EXCHANGE_COMMANDS, with the catalogue's bootstrap parameters."""
    root = parse(CONNECT.read_bytes()).root_node
    exchange = splatted(root, "Connect-ExchangeOnline")
    assert evaluate(exchange["CommandName"]) == list(c.EXCHANGE_COMMANDS)
    assert set(c.CONNECT_EXCHANGE.parameters) <= set(exchange)
    assert evaluate(exchange["ShowBanner"]) is False
    assert evaluate(exchange["SkipLoadingFormatData"]) is True
    graph = splatted(root, "Connect-MgGraph")
    assert set(c.CONNECT_GRAPH.parameters) <= set(graph)
    assert evaluate(graph["NoWelcome"]) is True


def test_the_startup_script_takes_no_input_and_stops_on_errors() -> None:
    """No param block (only runner.json is read); $ErrorActionPreference = 'Stop'; Exchange before Graph."""
    root = parse(CONNECT.read_bytes()).root_node
    assert not walk_type(root, "param_block")
    assert evaluate(assigned_value(root, "$ErrorActionPreference")) == "Stop"
    assert "runner.json" in CONNECT.read_text(encoding="utf-8")
    (exchange,) = commands_named(root, "Connect-ExchangeOnline")
    (graph_module,) = commands_named(root, "Import-Module")
    (graph,) = commands_named(root, "Connect-MgGraph")
    assert exchange.start_byte < graph_module.start_byte < graph.start_byte
    assert "Microsoft.Graph.Authentication" in text(graph_module)


# --- (g) the wrappers of the UnblockRunner module ---------------------------------------------------------


@cache
def module_tree() -> Node:
    tree = parse(PSM1.read_bytes())
    error = first_error(tree.root_node)
    assert error is None, describe(error, PSM1.name)
    return tree.root_node


def functions(root: Node) -> dict[str, Node]:
    """Name -> function_statement, for every function the file defines (at any depth)."""
    found: dict[str, Node] = {}
    for statement in walk_type(root, "function_statement"):
        (name,) = [ch for ch in statement.children if ch.type == "function_name"]
        assert text(name) not in found, f"{text(name)} is defined twice"
        found[text(name)] = statement
    return found


def function_parameters(function: Node) -> dict[str, Node]:
    """Name -> script_parameter of a function's param() block (the function's own, not a nested one)."""
    (body,) = [ch for ch in function.children if ch.type == "script_block"]
    (block,) = [ch for ch in body.children if ch.type == "param_block"]
    parameters: dict[str, Node] = {}
    for parameter in walk_type(block, "script_parameter"):
        variable = next(child for child in named(parameter) if child.type == "variable")
        parameters[text(variable).removeprefix("$")] = parameter
    return parameters


def attributes(node: Node) -> dict[str, Node]:
    """Lower-cased attribute name -> attribute node (type literals such as [string] under "type")."""
    found: dict[str, Node] = {}
    for attribute in (n for n in node.children if n.type == "attribute_list"):
        for item in named(attribute):
            literal = [ch for ch in item.children if ch.type == "type_literal"]
            name = "type" if literal else text(next(ch for ch in item.children if ch.type == "attribute_name"))
            found[name.lower()] = literal[0] if literal else item
    return found


def attribute_strings(attribute: Node) -> list[str]:
    """The string arguments of an attribute, e.g. the pattern of [ValidatePattern('...')]."""
    return [evaluate(named(arg)[-1]) for arg in walk_type(attribute, "attribute_argument") if not walk_type(arg, "=")]


def command_arguments(command: Node) -> dict[str, str | None]:
    """-Name -> text of its argument (None for a switch), for a command with named arguments only."""
    (elements,) = [ch for ch in command.children if ch.type == "command_elements"]
    arguments: dict[str, str | None] = {}
    current: str | None = None
    for element in named(elements):
        if element.type == "command_argument_sep":
            continue
        if element.type == "command_parameter":
            current = text(element).removeprefix("-").rstrip(":")
            assert current not in arguments, f"-{current} twice"
            arguments[current] = None
        else:
            assert current is not None, f"positional argument {text(element)!r}"
            assert arguments[current] is None, f"-{current} has two arguments"
            arguments[current] = text(element)
    return arguments


def called_commands(node: Node) -> list[Node]:
    return walk_type(node, "command")


#: Anything that runs text as PowerShell, or runs a command chosen at run time.
SCRIPT_TEXT_COMMANDS = frozenset(
    {"invoke-expression", "iex", "invoke-command", "icm", "add-type", "new-module", "import-module", "start-job"}
)
SCRIPT_TEXT_METHODS = frozenset({"create", "expandstring", "newscriptblock", "invokescript", "invoke"})


def script_text_problems(root: Node) -> list[str]:
    """Constructs through which a value could become script text or pick the command to run."""
    problems: list[str] = []
    for command in called_commands(root):
        names = [ch for ch in command.children if ch.type == "command_name"]
        if not names or any(ch.type == "command_invokation_operator" for ch in command.children):
            problems.append(f"command chosen at run time: {text(command)[:60]!r}")
        elif text(names[0]).lower() in SCRIPT_TEXT_COMMANDS:
            problems.append(f"{text(names[0])} runs text as script")
    for call in walk_type(root, "invokation_expression"):
        member = [ch for ch in call.children if ch.type == "member_name"]
        if member and text(member[0]).lower() in SCRIPT_TEXT_METHODS:
            problems.append(f"{text(call)[:60]!r} turns text into script")
    for literal in walk_type(root, "expandable_string_literal"):
        if walk_type(literal, "variable") or walk_type(literal, "sub_expression"):
            problems.append(f"expandable string {text(literal)[:60]!r} builds text from values")
    return problems


def error_rewrapping(root: Node) -> list[str]:
    """Constructs that would replace an inner command's error record by a new one."""
    problems = [
        f"{n.type} at line {n.start_point[0] + 1}" for n in walk(root) if n.type in ("catch_clause", "trap_statement")
    ]
    problems += [text(n)[:60] for n in walk_type(root, "flow_control_statement") if text(n).lower().startswith("throw")]
    problems += [text(cmd)[:60] for cmd in commands_named(root, "Write-Error")]
    for call in walk_type(root, "invokation_expression"):
        member = [ch for ch in call.children if ch.type == "member_name"]
        if member and text(member[0]).lower() in ("throwterminatingerror", "writeerror"):
            problems.append(text(call)[:60])
    return problems


def test_the_module_defines_and_exports_exactly_the_wrappers() -> None:
    """UnblockRunner.psm1 defines the catalogue's runner commands, no helper, and exports them all."""
    root = module_tree()
    assert set(functions(root)) == set(WRAPPERS)
    (export,) = commands_named(root, "Export-ModuleMember")
    exported = command_arguments(export)["Function"]
    assert exported is not None
    assert set(as_list(evaluate(parse(exported).root_node))) == set(WRAPPERS)
    # Outside the functions only Set-StrictMode and Export-ModuleMember run: importing changes nothing.
    inside = {(cmd.start_byte, cmd.end_byte) for f in functions(root).values() for cmd in called_commands(f)}
    outside = [cmd for cmd in called_commands(root) if (cmd.start_byte, cmd.end_byte) not in inside]
    assert sorted(text(next(ch for ch in cmd.children if ch.type == "command_name")) for cmd in outside) == [
        "Export-ModuleMember",
        "Set-StrictMode",
    ]


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_each_wrapper_takes_exactly_the_catalogue_parameters(wrapper: str) -> None:
    """param() names are the catalogue's, all mandatory; addresses use the role capability's own pattern."""
    function = functions(module_tree())[wrapper]
    (body,) = [ch for ch in function.children if ch.type == "script_block"]
    (block,) = [ch for ch in body.children if ch.type == "param_block"]
    assert "cmdletbinding" in attributes(block)
    parameters = function_parameters(function)
    assert set(parameters) == set(WRAPPERS[wrapper].parameters)
    role = visible()[wrapper].parameters
    for name, parameter in parameters.items():
        found = attributes(parameter)
        assert text(found["parameter"]).replace(" ", "").lower() in (
            "[parameter(mandatory)]",
            "[parameter(mandatory=$true)]",
        )
        if "ValidatePattern" in role[name]:
            # The same pattern as the endpoint, so a direct call of the module cannot accept more.
            assert attribute_strings(found["validatepattern"]) == as_list(role[name]["ValidatePattern"]), name
    types = {name: text(attributes(p)["type"]).lower() for name, p in parameters.items()}
    expected = {
        "UserId": "[string]",
        "Identity": "[string]",
        "NewPassword": "[securestring]",
        "ForceChangePasswordNextSignIn": "[bool]",
    }
    assert types == {name: expected[name] for name in parameters}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_each_wrapper_is_documented(wrapper: str) -> None:
    """Comment-based help with a synopsis, a description, an example and every parameter."""
    sections = help_sections(functions(module_tree())[wrapper])
    assert {"SYNOPSIS", "DESCRIPTION", "PARAMETER", "EXAMPLE"} <= {keyword for keyword, _ in sections}
    assert all(body for _, body in sections), "an empty help section"
    documented = {body.split(" ", 1)[0] for keyword, body in sections if keyword == "PARAMETER"}
    assert documented == set(WRAPPERS[wrapper].parameters)


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_each_wrapper_runs_only_what_it_replaces_with_fixed_values(wrapper: str) -> None:
    """One call of the wrapped command, with the catalogue's parameters, fixed values and -ErrorAction Stop."""
    inner, fixed = INNER_CALLS[wrapper]
    function = functions(module_tree())[wrapper]
    calls = called_commands(function)
    assert [text(next(ch for ch in cmd.children if ch.type == "command_name")) for cmd in calls] == [inner]
    arguments = command_arguments(calls[0])
    assert set(arguments) == set(WRAPPED[inner].parameters) | {"ErrorAction"}
    for name, value in fixed.items():
        assert arguments[name] == value, f"{inner} -{name}"
    preference = [
        n for n in walk_type(function, "assignment_expression") if text(named(n)[0]).lower() == "$erroractionpreference"
    ]
    assert [evaluate(unwrap(named(n)[-1])) for n in preference] == ["Stop"]


def test_the_password_wrapper_builds_the_profile_and_clears_the_plain_password() -> None:
    """The SecureString becomes plain text in a variable that the finally block clears, with the profile."""
    function = functions(module_tree())[c.SET_RUNNER_PASSWORD.name]
    assignments = [
        (text(named(n)[0]).lower(), unwrap(named(n)[-1])) for n in walk_type(function, "assignment_expression")
    ]
    (plain,) = [variable for variable, value in assignments if "NetworkCredential" in text(value)]
    (conversion,) = [value for variable, value in assignments if variable == plain and value.type != "variable"]
    assert text(conversion) == "[System.Net.NetworkCredential]::new('', $NewPassword).Password"
    (call,) = called_commands(function)
    profile = command_arguments(call)["PasswordProfile"]
    assert profile is not None
    (table,) = [value for variable, value in assignments if variable == profile.lower() and value.type != "variable"]
    entries = hash_entries(table)
    assert set(entries) == {"Password", "ForceChangePasswordNextSignIn"}
    assert text(unwrap(entries["Password"])).lower() == plain
    assert text(unwrap(entries["ForceChangePasswordNextSignIn"])) == "$ForceChangePasswordNextSignIn"
    (cleanup,) = walk_type(function, "finally_clause")
    cleared = {
        text(named(n)[0]).lower()
        for n in walk_type(cleanup, "assignment_expression")
        if text(unwrap(named(n)[-1])) == "$null"
    }
    assert {plain, profile.lower()} <= cleared
    assert f"{profile}.Clear()".lower() in text(cleanup).lower()


def test_the_wrappers_never_run_text_and_pass_errors_through_unchanged() -> None:
    """No Invoke-Expression & co., no expanded strings; no catch/trap/throw that would replace an error record."""
    root = module_tree()
    assert script_text_problems(root) == []
    assert error_rewrapping(root) == []


@pytest.mark.parametrize(
    "snippet",
    [
        'function f {\n    param([string] $UserId)\n    Invoke-Expression "Update-MgUser -UserId $UserId"\n}\n',
        "function f {\n    param([string] $Name)\n    & $Name\n}\n",
        "function f {\n    param([string] $UserId)\n    [scriptblock]::Create($UserId)\n}\n",
        'function f {\n    param([string] $UserId)\n    Get-MgUser -UserId "$UserId"\n}\n',
    ],
)
def test_the_script_text_check_catches_what_it_looks_for(snippet: str) -> None:
    """Negative control: each way of turning a value into script text is reported."""
    root = parse(snippet).root_node
    assert first_error(root) is None
    assert script_text_problems(root) != []


@pytest.mark.parametrize(
    "snippet",
    [
        "try {\n    Update-MgUser -UserId $u\n}\ncatch {\n    throw 'reset failed'\n}\n",
        "try {\n    Set-Mailbox -Identity $i\n}\ncatch {\n    $PSCmdlet.ThrowTerminatingError($_)\n}\n",
        "trap {\n    continue\n}\nSet-Mailbox -Identity $i\n",
        "Write-Error -Message 'forwarding not cleared'\n",
    ],
)
def test_the_error_check_catches_what_it_looks_for(snippet: str) -> None:
    """Negative control: catching, trapping or writing a new error is reported."""
    root = parse(snippet).root_node
    assert first_error(root) is None
    assert error_rewrapping(root) != []


def test_the_session_loads_what_the_wrappers_call() -> None:
    """Set-Mailbox is loaded by the sign-in (not exposed); Microsoft.Graph.Users is imported (Update-MgUser)."""
    assert c.SET_MAILBOX.name in c.EXCHANGE_COMMANDS
    assert c.SET_MAILBOX.name not in visible()
    assert "Microsoft.Graph.Users" in as_list(role_capability()["ModulesToImport"])


# --- (h) the sandbox emulates what is installed ------------------------------------------------------------


def test_the_sandbox_exposes_what_the_role_capability_exposes() -> None:
    """service.sandbox.cmdlets.JEA_VISIBLE is the role capability's visible set, lower-cased."""
    assert {name.lower() for name in visible()} == JEA_VISIBLE


# --- the documentation ------------------------------------------------------------------------------------


def test_the_runner_host_page_names_only_real_settings() -> None:
    """Every UNBLOCK_* variable docs/runner-host.md mentions is a setting of service.config."""
    # A name ending in "_" is a family (UNBLOCK_TENANT_*), not a variable.
    mentioned = set(re.findall(r"\bUNBLOCK_([A-Z0-9_]*[A-Z0-9])\b", DOC.read_text(encoding="utf-8")))
    assert {"PS_CONFIGURATION_NAME", "PS_CONNECT_IN_SESSION", "PS_RUNNER_FUNCTIONS", "PS_SERVER"} <= mentioned
    assert {name.lower() for name in mentioned} <= set(Settings.model_fields)


def test_the_runner_host_page_counts_the_visible_commands() -> None:
    """The 'Check it' step says how many commands Get-Command lists, with and without AD."""
    (match,) = re.findall(r"the (\d+) \((\d+) without AD\) commands", DOC.read_text(encoding="utf-8"))
    assert (int(match[0]), int(match[1])) == (len(RUNNER_NAMES), len(RUNNER_NAMES - AD_NAMES))
    assert "UNBLOCK_PS_RUNNER_FUNCTIONS=true" in DOC.read_text(encoding="utf-8")
