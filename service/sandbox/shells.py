"""Remote shells: one psrpcore ``ServerRunspacePool`` per WS-Management shell.

A shell turns the bytes of Create, Command and Send into PSRP events, and routes what the pool
wants to say back into outboxes: one for the pool (read by Receive without a CommandId) and
one per command. Receive drains an outbox, long-polling when it is empty. Everything runs on
the sandbox's event loop, so psrpcore's objects are never touched from two threads.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from psrpcore import ServerPipeline, ServerRunspacePool
from psrpcore._events import (
    CreatePipelineEvent,
    GetAvailableRunspacesEvent,
    GetCommandMetadataEvent,
    InitRunspacePoolEvent,
    PipelineInputEvent,
    ResetRunspaceStateEvent,
    SetMaxRunspacesEvent,
    SetMinRunspacesEvent,
)
from psrpcore._payload import ProtocolVersion, PSRPPayload, StreamType
from psrpcore.types import PSInvocationState, PSVersion, SessionCapability

from service.sandbox.cmdlets import Runspace
from service.sandbox.tenant import Tenant

#: Raw PSRP bytes per Receive answer; base64 and the envelope keep it under pypsrp's 150 KiB.
RECEIVE_CHUNK = 64 * 1024
RECEIVE_MAX = 96 * 1024

PS_VERSION = "5.1.20348.2849"
TERMINAL = {PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped}


@dataclass
class Outbox:
    """PSRP bytes waiting for one Receive target, and the last answer for re-delivery."""

    chunks: list[bytes] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    last_message_id: str | None = None
    last_answer: bytes | None = None

    def put(self, data: bytes) -> None:
        self.chunks.append(data)
        self.event.set()

    def take(self) -> list[bytes]:
        taken: list[bytes] = []
        size = 0
        while self.chunks and (not taken or size + len(self.chunks[0]) <= RECEIVE_MAX):
            chunk = self.chunks.pop(0)
            taken.append(chunk)
            size += len(chunk)
        if not self.chunks:
            self.event.clear()
        return taken


@dataclass
class CommandRun:
    command_id: str
    pipeline: ServerPipeline
    outbox: Outbox = field(default_factory=Outbox)
    task: asyncio.Task[None] | None = None
    inputs: list[Any] = field(default_factory=list)
    drop_next_receive: bool = False

    @property
    def finished(self) -> bool:
        return self.pipeline.state in TERMINAL


class Shell:
    """One remote shell: a runspace pool, its runspaces and its running commands."""

    def __init__(
        self,
        *,
        shell_id: str,
        resource_uri: str,
        configuration: str,
        owner: str,
        client_ip: str,
        tenant: Tenant,
        idle_timeout: float,
    ) -> None:
        self.id = shell_id
        self.resource_uri = resource_uri
        self.configuration = configuration
        self.owner = owner
        self.client_ip = client_ip
        self.tenant = tenant
        self.idle_timeout = idle_timeout
        self.created = time.monotonic()
        self.last_activity = self.created
        self.jea = configuration.lower() == "unblockrunner"
        self.pool = ServerRunspacePool(
            application_private_data={"PSVersionTable": {"PSVersion": PSVersion(PS_VERSION), "PSEdition": "Desktop"}}
        )
        # SessionCapability.PSVersion is 2.0 in every real PowerShell (it names the protocol
        # family); the version a client looks at is PSVersionTable in the private data above.
        self.pool.our_capability = SessionCapability(
            PSVersion=PSVersion("2.0"),
            protocolversion=ProtocolVersion.Pwsh5.value,
            SerializationVersion=PSVersion("1.1.0.1"),
        )
        self.pool_outbox = Outbox()
        self.commands: dict[str, CommandRun] = {}
        self.runspaces: list[Runspace] = []
        self._free: asyncio.Queue[Runspace] = asyncio.Queue()
        self.closed = False
        self.on_pipeline: Any = None  # set by the registry: callable(shell, run, metadata)

    # --- runspaces -----------------------------------------------------------------------------

    def _grow_to(self, count: int) -> None:
        while len(self.runspaces) < max(count, 1):
            runspace = Runspace(shell_id=self.id, index=len(self.runspaces) + 1)
            self.runspaces.append(runspace)
            self._free.put_nowait(runspace)

    async def acquire(self) -> Runspace:
        return await self._free.get()

    def release(self, runspace: Runspace) -> None:
        if not self.closed:
            self._free.put_nowait(runspace)

    # --- bytes in -------------------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def feed(self, data: bytes, command_id: str | None) -> None:
        """Process client bytes (creationXml, a pipeline fragment, stdin or pr data)."""
        self.touch()
        pipeline_id = uuid.UUID(command_id) if command_id else None
        self.pool.receive_data(PSRPPayload(data, StreamType.default, pipeline_id))
        while (event := self.pool.next_event()) is not None:
            self._handle(event)
        self.flush()

    def add_command(self, command_id: str) -> CommandRun:
        key = command_id.upper()
        run = CommandRun(command_id=key, pipeline=ServerPipeline(self.pool, uuid.UUID(command_id)))
        self.commands[key] = run
        return run

    def _handle(self, event: Any) -> None:
        if isinstance(event, InitRunspacePoolEvent):
            self._grow_to(event.max_runspaces)
        elif isinstance(event, SetMaxRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, True)
            self._grow_to(event.count)
        elif isinstance(event, SetMinRunspacesEvent | ResetRunspaceStateEvent):
            self.pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, GetAvailableRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, self._free.qsize())
        elif isinstance(event, CreatePipelineEvent):
            self.on_pipeline(self, self.commands[str(event.pipeline_id).upper()], event.pipeline)
        elif isinstance(event, GetCommandMetadataEvent):
            metadata_run = self.commands[str(event.pipeline_id).upper()]
            metadata_run.pipeline.start()
            metadata_run.pipeline.complete()
        elif isinstance(event, PipelineInputEvent):
            input_run = self.commands.get(str(event.pipeline_id).upper())
            if input_run is not None:
                input_run.inputs.append(event.data)

    # --- bytes out ------------------------------------------------------------------------------

    def flush(self) -> None:
        while (payload := self.pool.data_to_send(RECEIVE_CHUNK)) is not None:
            if payload.pipeline_id is None:
                self.pool_outbox.put(payload.data)
                continue
            run = self.commands.get(str(payload.pipeline_id).upper())
            if run is not None:
                run.outbox.put(payload.data)

    # --- signals and closing --------------------------------------------------------------------

    def stop_command(self, command_id: str) -> None:
        run = self.commands.get(command_id.upper())
        if run is None:
            return
        if run.task is not None and not run.task.done():
            run.task.cancel()
        if run.pipeline.state in (PSInvocationState.Running, PSInvocationState.Stopping):
            run.pipeline.stop()
        self.flush()

    def terminate_command(self, command_id: str) -> None:
        run = self.commands.pop(command_id.upper(), None)
        if run is None:
            return
        if run.task is not None and not run.task.done():
            run.task.cancel()
        if run.pipeline.state in (PSInvocationState.Running, PSInvocationState.Stopping):
            run.pipeline.stop()
        self.pool.pipeline_table.pop(run.pipeline.pipeline_id, None)

    def close(self) -> None:
        self.closed = True
        for command_id in list(self.commands):
            self.terminate_command(command_id)
        self.pool_outbox.event.set()


class ShellRegistry:
    """Every open shell of the sandbox, by id."""

    def __init__(self, tenant: Tenant, *, max_shells: int = 512) -> None:
        self.tenant = tenant
        self.max_shells = max_shells
        self.shells: dict[str, Shell] = {}
        self.on_pipeline: Any = None

    def __len__(self) -> int:
        return len(self.shells)

    def open(self, shell: Shell) -> Shell:
        shell.on_pipeline = self.on_pipeline
        self.shells[shell.id.upper()] = shell
        return shell

    def get(self, shell_id: str | None) -> Shell | None:
        return self.shells.get((shell_id or "").upper())

    def close(self, shell_id: str) -> bool:
        shell = self.shells.pop(shell_id.upper(), None)
        if shell is None:
            return False
        shell.close()
        return True

    def close_all(self) -> None:
        for shell_id in list(self.shells):
            self.close(shell_id)

    def reap_idle(self) -> int:
        now = time.monotonic()
        idle = [s.id for s in self.shells.values() if now - s.last_activity > s.idle_timeout]
        for shell_id in idle:
            self.close(shell_id)
        return len(idle)
