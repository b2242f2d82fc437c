"""Running a pipeline: each command in turn, with the tenant's latency and injected faults.

A pipeline waits for a free runspace of its pool (so min/max runspaces hold), runs its
statements, pipes the output of one command into the next, and ends Completed or Failed the
way PowerShell reports it: terminating errors (binding errors, unknown commands, thrown
exceptions) fail the pipeline with an error record in its state; non-terminating errors go
to the error stream and the pipeline completes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from psrpcore.types import ErrorCategoryInfo, ErrorRecord, NETException, PSInvocationState

from service.sandbox import cmdlets, records
from service.sandbox.records import CmdletError, ErrorSpec
from service.sandbox.shells import CommandRun, Shell
from service.sandbox.tenant import now_utc


def _exception(spec: ErrorSpec) -> NETException:
    exception = NETException(Message=spec.message, HResult=-2146233087)
    exception.PSObject.type_names = [*spec.exception_types, "System.Object"]
    return exception


def _category(spec: ErrorSpec, cmdlet: str) -> ErrorCategoryInfo:
    return ErrorCategoryInfo(
        Category=spec.category,
        Activity=cmdlet,
        Reason=spec.reason or spec.exception_name,
        TargetName=spec.target_name,
        TargetType="String" if spec.target_name else "",
    )


def error_record(spec: ErrorSpec, cmdlet: str) -> ErrorRecord:
    return ErrorRecord(
        Exception=_exception(spec),
        CategoryInfo=_category(spec, cmdlet),
        TargetObject=spec.target_name or None,
        FullyQualifiedErrorId=spec.fqid,
    )


def _write_error(run: CommandRun, spec: ErrorSpec, cmdlet: str) -> None:
    run.pipeline.write_error(
        _exception(spec),
        category_info=_category(spec, cmdlet),
        target_object=spec.target_name or None,
        fully_qualified_error_id=spec.fqid,
    )


def _fail(run: CommandRun, spec: ErrorSpec, cmdlet: str) -> None:
    # psrpcore 0.3.1 has no public way to fail a pipeline with an error record.
    run.pipeline._change_state(PSInvocationState.Failed, error_record(spec, cmdlet))


def _raw_parameters(command: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, (name, value) in enumerate(command.parameters):
        out[name or f"[{index}]"] = cmdlets._plain(value)
    return out


async def _run_command(
    shell: Shell, run: CommandRun, runspace: cmdlets.Runspace, command: Any, piped: list[Any], has_input: bool
) -> list[Any]:
    tenant = shell.tenant
    name = str(command.command_text)
    received = now_utc()

    def log(outcome: str, parameters: dict[str, Any]) -> None:
        call = tenant.record_call(runspace=runspace.name, cmdlet=name, parameters=parameters, outcome=outcome)
        call.at = received

    if command.is_script:
        log("failed: ScriptsNotAllowed", {"script": "<script text>"})
        raise CmdletError(records.script_not_allowed(), terminating=True)
    found = cmdlets.lookup(name, runspace, jea=shell.jea)
    if isinstance(found, ErrorSpec):
        log(f"failed: {found.fqid.split(',')[0]}", _raw_parameters(command))
        raise CmdletError(found, terminating=True)
    name = found.name
    try:
        bound = cmdlets.bind(found, command.parameters)
        cmdlets.check_mandatory(found, bound, has_input)
    except CmdletError as error:
        log(f"failed: {error.spec.fqid.split(',')[0]}", _raw_parameters(command))
        raise
    parameters = cmdlets.loggable(found, bound)
    runspace.calls += 1
    if has_input and not piped and any(p.pipeline for p in found.params):
        log("ok (no pipeline input)", parameters)  # a process block with nothing to process
        return []

    fault = tenant.take_fault(found.name)
    if fault == "hang":
        log("fault: hang", parameters)
        await asyncio.Event().wait()  # until the client stops, terminates or deletes
    latency = tenant.config.latency_for(found.name)
    if latency:
        await asyncio.sleep(latency)
    if fault == "transient":
        log("fault: transient", parameters)
        raise CmdletError(records.transient(found.name), terminating=True)
    if fault == "fatal":
        log("fault: fatal", parameters)
        raise CmdletError(records.fatal(found.name), terminating=True)
    if fault == "throttled":
        log("fault: throttled", parameters)
        _write_error(run, records.throttled(found.name, tenant.config.throttle_retry_after_s), found.name)
        return []

    if tenant.config.denies(found.name):
        denied = (
            records.graph_denied(found.graph_set)
            if found.graph_set
            else records.exo_access_denied(found.name, found.class_name)
        )
        log(f"error: {_short(denied.fqid)}", parameters)
        _write_error(run, denied, found.name)
        return []
    ctx = cmdlets.Context(tenant=tenant, runspace=runspace, jea=shell.jea, now=received)
    try:
        output = found.run(ctx, bound, piped)
    except CmdletError as error:
        log(f"failed: {error.spec.fqid.split(',')[0].rsplit(' ', 1)[-1]}", parameters)
        raise
    for spec in ctx.errors:
        _write_error(run, spec, found.name)
    for message in ctx.information:
        run.pipeline.write_information(message, found.name)
    for message in ctx.warnings:
        run.pipeline.write_warning(message)
    for activity, status, percent in ctx.progress:
        run.pipeline.write_progress(activity, 1, status, percent_complete=percent)
    outcome = "ok" if not ctx.errors else f"error: {_short(ctx.errors[0].fqid)}"
    if fault == "drop_connection":
        run.drop_next_receive = True
        outcome += " (connection dropped)"
    log(outcome, parameters)
    return output


def _short(fqid: str) -> str:
    head = fqid.split(",")[0]
    if "FailureCategory=Cmdlet-" in fqid:
        return fqid.split("FailureCategory=Cmdlet-", 1)[1].split("]", 1)[0]
    return head


def _statements(metadata: Any) -> list[list[Any]]:
    statements: list[list[Any]] = [[]]
    for command in metadata.commands:
        statements[-1].append(command)
        if command.end_of_statement:
            statements.append([])
    return [s for s in statements if s]


async def run_pipeline(shell: Shell, run: CommandRun, metadata: Any) -> None:
    runspace = await shell.acquire()
    current = ""
    try:
        run.pipeline.start()
        shell.flush()
        for statement in _statements(metadata):
            piped: list[Any] = list(run.inputs)
            has_input = bool(piped)
            for command in statement:
                current = str(command.command_text)
                piped = await _run_command(shell, run, runspace, command, piped, has_input)
                has_input = True
                shell.flush()
            for value in piped:
                run.pipeline.write_output(value)
            shell.flush()
        run.pipeline.complete()
    except CmdletError as error:
        _fail(run, error.spec, current)
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
