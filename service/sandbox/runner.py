"""Running a pipeline: each command in turn, with its tenant's latency and injected faults.

Each command runs against one tenant (:func:`service.sandbox.cmdlets.tenant_for`): that tenant's
faults strike it, that tenant's config delays, hides or forbids it, it reads and writes that
tenant's state, and the call log records it under that tenant's name.

A pipeline waits for a free runspace of its pool (so min/max runspaces hold), runs its
statements, pipes the output of one command into the next, and ends Completed or Failed the
way PowerShell reports it: terminating errors (binding errors, unknown commands, thrown
exceptions) fail the pipeline with an error record in its state; non-terminating errors go
to the error stream and the pipeline completes.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from psrpcore.types import ErrorCategoryInfo, ErrorDetails, ErrorRecord, NETException, PSInvocationState

from service.sandbox import binding, cmdlets, faults, records
from service.sandbox import metadata as command_metadata
from service.sandbox.records import CmdletError, ErrorSpec
from service.sandbox.shells import Arrival, CommandRun, Shell
from service.sandbox.tenant import COMMAND_FAULTS, SESSION_FAULTS, now_utc


class ShellLost(Exception):
    """The ``shell_lost`` fault: the remote shell disappears, as after an idle timeout or a WinRM restart."""


def _exception(spec: ErrorSpec) -> NETException:
    exception = NETException(Message=spec.message, HResult=-2146233087)
    exception.PSObject.type_names = [*spec.exception_types, "System.Object"]
    return exception


def _category(spec: ErrorSpec, cmdlet: str) -> ErrorCategoryInfo:
    return ErrorCategoryInfo(
        Category=spec.category,
        Activity=spec.activity if spec.shape else cmdlet,
        Reason=spec.reason or spec.exception_name,
        TargetName=spec.target_name,
        TargetType="String" if spec.target_name else "",
    )


def _details(spec: ErrorSpec) -> ErrorDetails | None:
    return ErrorDetails(Message=spec.details) if spec.details else None


def error_record(spec: ErrorSpec, cmdlet: str) -> ErrorRecord:
    return ErrorRecord(
        Exception=_exception(spec),
        CategoryInfo=_category(spec, cmdlet),
        TargetObject=spec.target_name or None,
        FullyQualifiedErrorId=spec.fqid,
        ErrorDetails=_details(spec),
    )


def _write_error(run: CommandRun, spec: ErrorSpec, cmdlet: str) -> None:
    run.pipeline.write_error(
        _exception(spec),
        category_info=_category(spec, cmdlet),
        target_object=spec.target_name or None,
        fully_qualified_error_id=spec.fqid,
        error_details=_details(spec),
    )


def _start(run: CommandRun) -> None:
    """Mark the pipeline Running without telling the client.

    PowerShell's server sends a pipeline's state only when it ends (Completed, Failed, Stopped:
    ServerPowerShellDriver.HandlePowerShellInvocationStateChanged in PowerShell/PowerShell), and
    psrpcore's ``start()`` would send Running too: one more answer, so one more Receive round trip
    per command, than a client of Exchange Online pays.
    """
    # psrpcore 0.3.1 has no public way to change a pipeline's state without a message.
    run.pipeline._change_state(PSInvocationState.Running, emit=False)


def _fail(run: CommandRun, spec: ErrorSpec, cmdlet: str) -> None:
    # psrpcore 0.3.1 has no public way to fail a pipeline with an error record.
    run.pipeline._change_state(PSInvocationState.Failed, error_record(spec, cmdlet))


def _raw_parameters(command: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (name, value) in enumerate(command.parameters):
        out[name or f"[{index}]"] = cmdlets._plain(value)
    return out


async def _run_command(
    shell: Shell,
    run: CommandRun,
    runspace: cmdlets.Runspace,
    command: Any,
    piped: list[Any],
    has_input: bool,
    arrived: Arrival | None = None,
) -> list[Any]:
    """Run one command of a pipeline; ``arrived``: when the request carrying it reached the sandbox
    (the pipeline's first command), from which its latency counts."""
    name = str(command.command_text)
    received = arrived.at if arrived is not None else now_utc()
    # The tenant the command runs against: its faults, its config, its data, its name in the call log.
    tenant = cmdlets.tenant_for(runspace, name, jea=shell.jea)

    def log(outcome: str, parameters: dict[str, Any]) -> None:
        call = tenant.record_call(runspace=runspace.name, cmdlet=name, parameters=parameters, outcome=outcome)
        call.at = received

    if command.is_script:
        log("failed: ScriptsNotAllowed", {"script": "<script text>"})
        raise CmdletError(records.script_not_allowed(), terminating=True)
    if not cmdlets.is_connect(name):
        session_fault = tenant.take_fault(name, SESSION_FAULTS)
        if session_fault == "shell_lost":
            log("fault: shell_lost", _raw_parameters(command))
            raise ShellLost
        if session_fault == "session_expired":
            runspace.expire()  # what the command does next is what it does in a runspace that lost its sign-in
            log("fault: session_expired (the runspace forgot its connections)", _raw_parameters(command))
    found = cmdlets.lookup(name, runspace, jea=shell.jea, hidden=cmdlets.hidden_in(runspace, jea=shell.jea))
    if isinstance(found, ErrorSpec):
        log(f"failed: {_short(found)}", _raw_parameters(command))
        raise CmdletError(found, terminating=True)
    name = found.name
    try:
        bound = binding.bind(
            found.syntax,
            command.parameters,
            has_input=has_input,
            target=found.binding_target,
            pattern_for=cmdlets.pattern_for(found, jea=shell.jea),
        )
    except CmdletError as error:
        log(f"failed: {_short(error.spec)}", _raw_parameters(command))
        raise
    parameters = cmdlets.loggable(found, bound)
    tenant = cmdlets.named_tenant(found, bound, shell.tenants) or tenant  # a Connect-* runs against the one it names
    runspace.calls += 1
    if has_input and not piped and any(p.pipeline for p in found.syntax.parameters):
        log("ok (no pipeline input)", parameters)  # a process block with nothing to process
        return []

    fault = tenant.take_fault(found.name, COMMAND_FAULTS)
    if fault == "hang":
        log("fault: hang", parameters)
        await asyncio.Event().wait()  # until the client stops, terminates or deletes
    latency = tenant.config.latency_for(found.name)
    if arrived is not None:  # the latency is the tenant's time for the command, reading the request included
        latency -= time.monotonic() - arrived.monotonic
    if latency > 0:
        await asyncio.sleep(latency)
    micro_delay_ms = 0
    if fault == "transient":
        log("fault: transient", parameters)
        raise CmdletError(faults.transient(found), terminating=True)
    if fault == "fatal":
        log("fault: fatal", parameters)
        raise CmdletError(records.fatal(found.name), terminating=True)
    if fault == "throttled":
        retry_after = tenant.config.throttle_retry_after_s
        if found.family == "exchange":
            # Exchange Online slows the caller down and still runs the command, with a WARNING.
            micro_delay_ms = max(1, retry_after) * 100
            await asyncio.sleep(micro_delay_ms / 1000)
        else:
            log("fault: throttled", parameters)
            _write_error(run, faults.throttled(found, retry_after), found.name)
            return []

    if tenant.config.forbids(found.name):
        denied = faults.forbidden(found, bound)
        log(f"error: {_short(denied)}", parameters)
        _write_error(run, denied, found.name)
        return []
    ctx = cmdlets.Context(tenant=tenant, runspace=runspace, jea=shell.jea, tenants=shell.tenants, now=received)
    if micro_delay_ms:
        ctx.warnings.append(records.exo_micro_delay(micro_delay_ms))
    try:
        output = found.run(ctx, bound, piped)
    except CmdletError as error:
        log(f"failed: {_short(error.spec)}", parameters)
        raise
    for spec in ctx.errors:
        _write_error(run, spec, found.name)
    for message in ctx.information:
        run.pipeline.write_information(message, found.name)
    for message in ctx.warnings:
        run.pipeline.write_warning(message)
    for activity, status, percent in ctx.progress:
        run.pipeline.write_progress(activity, 1, status, percent_complete=percent)
    outcome = "ok" if not ctx.errors else f"error: {_short(ctx.errors[0])}"
    if micro_delay_ms:
        outcome += " (fault: throttled, micro delay applied)"
    if fault == "drop_connection":
        run.drop_next_receive = True
        outcome += " (connection dropped)"
    log(outcome, parameters)
    return output


def _short(spec: ErrorSpec) -> str:
    """What the call log says about an error: the exception's short name (Exchange v3 and AD ids say
    little), else the head of the FullyQualifiedErrorId (PowerShell's and Graph's ids name the error)."""
    head = spec.fqid.split(",")[0]
    if spec.fqid.endswith("Write-ErrorMessage") or head.startswith("ActiveDirectory") or not head:
        return spec.reason or spec.exception_name
    return head


def _statements(metadata: Any) -> list[list[Any]]:
    statements: list[list[Any]] = [[]]
    for command in metadata.commands:
        statements[-1].append(command)
        if command.end_of_statement:
            statements.append([])
    return [s for s in statements if s]


async def run_pipeline(shell: Shell, run: CommandRun, metadata: Any) -> None:
    waiting = time.monotonic()
    runspace = await shell.acquire()
    waited = time.monotonic() - waiting
    # A pipeline that waited for a free runspace starts when it gets one: the wait is not the command's.
    arrived = run.arrived
    if arrived is not None:
        arrived = Arrival(arrived.monotonic + waited, arrived.at + timedelta(seconds=waited))
    current = ""
    try:
        _start(run)
        shell.flush()
        for statement in _statements(metadata):
            piped: list[Any] = list(run.inputs)
            has_input = bool(piped)
            for command in statement:
                current = str(command.command_text)
                piped = await _run_command(shell, run, runspace, command, piped, has_input, arrived)
                arrived = None  # the commands after the first start when the one before ends
                has_input = True
                shell.flush()
            for value in piped:
                run.pipeline.write_output(value)
            shell.flush()
        run.pipeline.complete()
    except CmdletError as error:
        _fail(run, error.spec, current)
    except ShellLost:
        shell.lose()  # the client's next request on this shell gets WS-Management's "shell not found" fault
        return
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - a bug in an emulation must still end the pipeline
        _fail(run, records.fatal(f"{current}: {type(error).__name__}: {error}"), current)
    finally:
        shell.release(runspace)
        if not shell.closed:
            shell.flush()


def start_pipeline(shell: Shell, run: CommandRun, metadata: Any) -> None:
    run.task = asyncio.get_running_loop().create_task(run_pipeline(shell, run, metadata))


async def answer_metadata(shell: Shell, run: CommandRun, request: Any) -> None:
    """A GET_COMMAND_METADATA pipeline: it runs in a runspace of the pool like any other pipeline."""
    runspace = await shell.acquire()
    try:
        _start(run)
        found = command_metadata.matching(
            command_metadata.available(runspace, jea=shell.jea, hidden=cmdlets.hidden_in(runspace, jea=shell.jea)),
            request.name,
        )
        for value in command_metadata.metadata_answer(found):
            run.pipeline.write_output(value)
        run.pipeline.complete()
    finally:
        shell.release(runspace)
        if not shell.closed:
            shell.flush()


def start_metadata(shell: Shell, run: CommandRun, request: Any) -> None:
    run.task = asyncio.get_running_loop().create_task(answer_metadata(shell, run, request))
