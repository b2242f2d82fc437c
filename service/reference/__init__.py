"""What Microsoft publishes about the commands we call, as data: syntax and real error records.

``cmdlets.json`` is the documented syntax of every command the bridge, the runner module or
the sandbox knows (parameter names, types, aliases, parameter sets, mandatory, positions,
ShouldProcess), each entry naming the reference page and commit it was transcribed from.
``error_records.json`` is a corpus of error records in the shapes the real modules produce,
each with its public source or marked as assumed.

Both the service and the sandbox read these files, and neither may edit them to agree with
the other: the unit tests bind every catalogue invocation against this syntax, and the
sandbox binds every remote command against it, so a parameter the real cmdlet lacks fails in
the tests exactly as it would on the runner host. This package is the standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

#: The parameter-set name PowerShell uses for a parameter that belongs to every set.
ALL_SETS = "__AllParameterSets"

#: Windows PowerShell 5.1's common parameters (about_CommonParameters); every cmdlet and advanced
#: function takes them. (-ProgressAction arrived in PowerShell 7.4 and is not among them.)
COMMON_PARAMETERS: tuple[str, ...] = (
    "Debug",
    "ErrorAction",
    "ErrorVariable",
    "InformationAction",
    "InformationVariable",
    "OutBuffer",
    "OutVariable",
    "PipelineVariable",
    "Verbose",
    "WarningAction",
    "WarningVariable",
)
COMMON_ALIASES: Mapping[str, str] = {
    "db": "Debug",
    "ea": "ErrorAction",
    "ev": "ErrorVariable",
    "infa": "InformationAction",
    "iv": "InformationVariable",
    "ob": "OutBuffer",
    "ov": "OutVariable",
    "pv": "PipelineVariable",
    "vb": "Verbose",
    "wa": "WarningAction",
    "wv": "WarningVariable",
}
#: Added to a command only when it declares SupportsShouldProcess.
SHOULD_PROCESS_PARAMETERS: tuple[str, ...] = ("WhatIf", "Confirm")
SHOULD_PROCESS_ALIASES: Mapping[str, str] = {"wi": "WhatIf", "cf": "Confirm"}


class BindingError(Exception):
    """A parameter binding PowerShell would refuse; ``error_id`` is PowerShell's FullyQualifiedErrorId head."""

    def __init__(self, error_id: str, message: str, *, parameter: str = "", candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.error_id = error_id
        self.message = message
        self.parameter = parameter
        self.candidates = candidates


@dataclass(frozen=True, slots=True)
class Membership:
    mandatory: bool
    position: int | None


@dataclass(frozen=True, slots=True)
class ParameterSyntax:
    name: str
    type: str
    aliases: tuple[str, ...] = ()
    pipeline: bool = False
    sets: Mapping[str, Membership] = field(default_factory=dict)
    pattern: str | None = None
    common: bool = False

    def membership(self, parameter_set: str) -> Membership | None:
        return self.sets.get(parameter_set) or self.sets.get(ALL_SETS)

    def in_set(self, parameter_set: str) -> bool:
        return self.membership(parameter_set) is not None

    @property
    def is_switch(self) -> bool:
        return self.type == "SwitchParameter"


@dataclass(frozen=True, slots=True)
class CommandSyntax:
    name: str
    module: str
    url: str
    should_process: bool
    complete: bool
    parameter_sets: tuple[str, ...]
    default_set: str | None
    parameters: tuple[ParameterSyntax, ...]
    notes: str = ""

    def all_parameters(self) -> tuple[ParameterSyntax, ...]:
        """Documented parameters, then -WhatIf/-Confirm when the command supports ShouldProcess, then common ones."""
        return _everything(self)

    def resolve(self, written: str) -> ParameterSyntax:
        """The parameter a name given by a caller means: exact name, alias, or an unambiguous prefix."""
        wanted = written.lower().lstrip("-")
        exact = _by_name(self).get(wanted)
        if exact is not None:
            return exact
        everything = _everything(self)
        matches = [p for p in everything if p.name.lower().startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise BindingError(
                "AmbiguousParameter",
                f"Parameter cannot be processed because the parameter name '{written}' is ambiguous. "
                f"Possible matches include: {' '.join('-' + m.name for m in matches)}.",
                parameter=written,
                candidates=tuple(m.name for m in matches),
            )
        raise BindingError(
            "NamedParameterNotFound",
            f"A parameter cannot be found that matches parameter name '{written}'.",
            parameter=written,
        )

    def choose_set(self, bound: Iterable[str], *, has_input: bool = False) -> str:
        """The parameter set these bound parameters select, as PowerShell's binder picks it.

        Every bound parameter must belong to the set; among several candidates the default set
        wins, then the only one whose mandatory parameters are all bound. Raises BindingError
        with AmbiguousParameterSet or MissingMandatoryParameter as PowerShell does. Where the
        reference does not say which set is the default, the first documented one is taken (an
        assumption the README's fidelity table lists).
        """
        names = set(bound)
        documented = {p.name: p for p in self.parameters}
        candidates = [s for s in self.parameter_sets if all(documented[n].in_set(s) for n in names if n in documented)]
        satisfied = [s for s in candidates if not self.missing_mandatory(s, names, has_input=has_input)]
        if len(candidates) == 1:
            chosen = candidates[0]
        elif self.default_set in satisfied:
            chosen = self.default_set
        elif len(satisfied) == 1:
            chosen = satisfied[0]
        elif self.default_set in candidates:
            chosen = self.default_set
        elif self.default_set is None and satisfied:
            # The reference names no default set although the cmdlet must declare one for this call
            # to work at all (Get-Mailbox with no parameter does): take the first documented set.
            chosen = satisfied[0]
        else:
            raise BindingError(
                "AmbiguousParameterSet",
                "Parameter set cannot be resolved using the specified named parameters.",
            )
        missing = self.missing_mandatory(chosen, names, has_input=has_input)
        if missing:
            raise BindingError(
                "MissingMandatoryParameter",
                f"Cannot process command because of one or more missing mandatory parameters: {' '.join(missing)}.",
                candidates=tuple(missing),
            )
        return chosen

    def missing_mandatory(self, parameter_set: str, bound: set[str], *, has_input: bool) -> list[str]:
        missing = []
        for parameter in self.parameters:
            membership = parameter.membership(parameter_set)
            if membership is None or not membership.mandatory or parameter.name in bound:
                continue
            if parameter.pipeline and has_input:
                continue
            missing.append(parameter.name)
        return missing

    def positional(self, parameter_set: str | None = None) -> list[ParameterSyntax]:
        """Parameters that take positional arguments, in position order (for the given or any set)."""
        ranked: list[tuple[int, ParameterSyntax]] = []
        for parameter in self.parameters:
            sets = [parameter.membership(parameter_set)] if parameter_set else list(parameter.sets.values())
            positions = [m.position for m in sets if m is not None and m.position is not None]
            if positions:
                ranked.append((min(positions), parameter))
        return [p for _, p in sorted(ranked, key=lambda item: item[0])]

    def check(self, names: Iterable[str]) -> str:
        """Bind parameter names the way the caller wrote them; the chosen set, or BindingError."""
        resolved = [self.resolve(name) for name in names]
        return self.choose_set(p.name for p in resolved if not p.common)


_EVERYTHING: dict[str, tuple[ParameterSyntax, ...]] = {}
_BY_NAME: dict[str, Mapping[str, ParameterSyntax]] = {}


def _everything(command: CommandSyntax) -> tuple[ParameterSyntax, ...]:
    """Computed once per command (binding runs for every remote command the sandbox receives)."""
    found = _EVERYTHING.get(command.name)
    if found is None:
        extra = [_should_process(name) for name in SHOULD_PROCESS_PARAMETERS] if command.should_process else []
        found = _EVERYTHING[command.name] = (*command.parameters, *extra, *(_common(n) for n in COMMON_PARAMETERS))
    return found


def _by_name(command: CommandSyntax) -> Mapping[str, ParameterSyntax]:
    """Every exact spelling (name, alias, a common parameter's short alias), lower-cased."""
    found = _BY_NAME.get(command.name)
    if found is None:
        found = _BY_NAME[command.name] = _spellings(command)
    return found


def _spellings(command: CommandSyntax) -> Mapping[str, ParameterSyntax]:
    everything = {p.name: p for p in _everything(command)}
    names: dict[str, ParameterSyntax] = {}
    aliases = {**COMMON_ALIASES, **(SHOULD_PROCESS_ALIASES if command.should_process else {})}
    for alias, name in aliases.items():
        if name in everything:
            names[alias] = everything[name]
    for parameter in everything.values():
        for alias in parameter.aliases:
            names[alias.lower()] = parameter
        names[parameter.name.lower()] = parameter
    return names


def _should_process(name: str) -> ParameterSyntax:
    """-WhatIf/-Confirm: real parameters of a ShouldProcess command (the command reads them)."""
    return ParameterSyntax(name=name, type="SwitchParameter", sets={ALL_SETS: Membership(False, None)})


def _common(name: str) -> ParameterSyntax:
    kind = "SwitchParameter" if name in ("Debug", "Verbose") else "Object"
    return ParameterSyntax(name=name, type=kind, sets={ALL_SETS: Membership(False, None)}, common=True)


def _parameter(data: Mapping[str, Any]) -> ParameterSyntax:
    return ParameterSyntax(
        name=data["name"],
        type=data["type"],
        aliases=tuple(data.get("aliases") or ()),
        pipeline=bool(data.get("pipeline")),
        sets={
            name: Membership(bool(m.get("mandatory")), m.get("position"))
            for name, m in (data.get("sets") or {}).items()
        },
        pattern=data.get("pattern"),
    )


def _read(name: str) -> Any:
    return json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))


@cache
def syntax() -> Mapping[str, CommandSyntax]:
    """Every command of ``cmdlets.json``, by lower-cased name."""
    table: dict[str, CommandSyntax] = {}
    for name, data in _read("cmdlets.json")["commands"].items():
        table[name.lower()] = CommandSyntax(
            name=name,
            module=data["module"],
            url=data["source"]["url"],
            should_process=bool(data["should_process"]),
            complete=bool(data["complete"]),
            parameter_sets=tuple(data["parameter_sets"]),
            default_set=data.get("default_set"),
            parameters=tuple(_parameter(p) for p in data["parameters"]),
            notes=data.get("notes", ""),
        )
    return table


def command(name: str) -> CommandSyntax:
    """The documented syntax of ``name``; KeyError for a command nobody has looked up yet."""
    return syntax()[name.lower()]


# --- error records -----------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """One error record as a real module writes it, with ``{placeholders}`` for what varies."""

    id: str
    family: str
    fqid: str
    category: str
    activity: str
    reason: str
    exception_types: tuple[str, ...]
    message: str
    stream: str
    terminating: bool
    verified: bool

    def render(self, **values: object) -> RenderedError:
        """Fill the placeholders; a placeholder without a value is a bug in the caller."""

        def fill(text: str) -> str:
            def value(match: re.Match[str]) -> str:
                name = match.group(1)
                if name not in values:
                    raise KeyError(f"error shape {self.id}: no value for {{{name}}}")
                return str(values[name])

            return _PLACEHOLDER.sub(value, text)

        return RenderedError(
            shape=self.id,
            fqid=fill(self.fqid),
            category=self.category,
            activity=fill(self.activity),
            reason=fill(self.reason),
            exception_types=tuple(fill(t) for t in self.exception_types),
            message=fill(self.message),
        )


@dataclass(frozen=True, slots=True)
class RenderedError:
    shape: str
    fqid: str
    category: str
    activity: str
    reason: str
    exception_types: tuple[str, ...]
    message: str


@cache
def error_shapes() -> Mapping[str, ErrorShape]:
    """Every record of ``error_records.json``, by id."""
    shapes: dict[str, ErrorShape] = {}
    for data in _read("error_records.json")["records"]:
        shapes[data["id"]] = ErrorShape(
            id=data["id"],
            family=data["family"],
            fqid=data["fqid"],
            category=data["category"],
            activity=data["activity"],
            reason=data["reason"],
            exception_types=tuple(data["exception_types"]),
            message=data["message"],
            stream=data["stream"],
            terminating=bool(data["terminating"]),
            verified=data["status"] == "verified",
        )
    return shapes


def error_shape(shape_id: str) -> ErrorShape:
    return error_shapes()[shape_id]
