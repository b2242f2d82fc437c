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
from datetime import datetime
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
from service.sandbox.tenant import Tenant, Tenants, as_tenants

#: Raw PSRP bytes per Receive answer; base64 and the envelope keep it under pypsrp's 150 KiB.
RECEIVE_CHUNK = 64 * 1024
RECEIVE_MAX = 96 * 1024

PS_VERSION = "5.1.20348.2849"
TERMINAL = {PSInvocationState.Completed, PSInvocationState.Failed, PSInvocationState.Stopped}

#: The endpoint's full session configurations: any tenant, chosen by Connect-ExchangeOnline / Connect-MgGraph.
FULL_CONFIGURATIONS = frozenset({"microsoft.powershell", "microsoft.powershell32", "powershell.7"})
#: The JEA configuration of the first tenant; each other tenant's is ``UnblockRunner-<name>``.
JEA_CONFIGURATION = "unblockrunner"


def serving(configuration: str, tenants: Tenants) -> tuple[Tenant, bool] | None:
    """The tenant a session configuration starts its runspaces in, and whether it is a JEA one; None
    for a configuration the endpoint does not have.

    ``UnblockRunner`` is the first tenant's (its startup script connected both modules to it),
    ``UnblockRunner-<name>`` each other tenant's (``UnblockRunner-fabrikam``); the full
    configurations start in the first tenant and go where Connect-* takes them.
    """
    key = configuration.lower()
    if key in FULL_CONFIGURATIONS:
        return tenants.first, False
    if key == JEA_CONFIGURATION:
        return tenants.first, True
    prefix = JEA_CONFIGURATION + "-"
    if key.startswith(prefix):
        tenant = tenants.get(key[len(prefix) :])
        if tenant is not None and tenant is not tenants.first:
            return tenant, True
    return None


@dataclass(frozen=True, slots=True)
class Arrival:
    """When a request reached the sandbox: for timing (monotonic) and for the call log (wall clock)."""

    monotonic: float
    at: datetime


@dataclass
class Outbox:
    """PSRP bytes waiting for one Receive target, and the last answer for re-delivery.

    Only a Receive carrying the same wsmv:OperationID as the last one gets the last answer again
    (MS-WSMV's robust-connection retry); a plain resend is a new Receive, as on Windows.
    """

    chunks: list[bytes] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    last_operation_id: str | None = None
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
    # When the request that carried the pipeline reached the endpoint (monotonic seconds, and the
    # wall clock): a command's latency counts from there, the sandbox's own handling included.
    arrived: Arrival | None = None

    @property
    def finished(self) -> bool:
        return self.pipeline.state in TERMINAL


class _RunspacePool(ServerRunspacePool):
    """psrpcore's server pool, reading message properties case-insensitively as PowerShell does.

    PowerShell looks PSObject properties up without regard to case; psrpcore reads them as Python
    attributes. pypsrp writes the call id of SET_MAX_RUNSPACES and SET_MIN_RUNSPACES as ``CI``
    (MS-PSRP 2.2.2.6/2.2.2.7 show ``ci``), which Windows accepts and psrpcore alone would not.
    """

    def _process_SetMaxRunspaces(self, event: SetMaxRunspacesEvent) -> None:
        _normalise_ci(event)
        super()._process_SetMaxRunspaces(event)

    def _process_SetMinRunspaces(self, event: SetMinRunspacesEvent) -> None:
        _normalise_ci(event)
        super()._process_SetMinRunspaces(event)


def _normalise_ci(event: Any) -> None:
    ps_object = event._ps_object
    if not hasattr(ps_object, "ci"):
        for prop in ps_object.PSObject.extended_properties:
            if prop.name.lower() == "ci":
                ps_object.ci = prop.get_value(ps_object)


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
        tenants: Tenants,
        jea: bool,
        idle_timeout: float,
    ) -> None:
        self.id = shell_id
        self.resource_uri = resource_uri
        self.configuration = configuration
        self.owner = owner
        self.client_ip = client_ip
        self.tenant = tenant  # the runspaces' own tenant (see cmdlets.Runspace): the JEA one, or the first
        self.tenants = tenants
        self.jea = jea  # a JEA configuration: connected by its startup script, the role capability's commands only
        self.idle_timeout = idle_timeout
        self.created = time.monotonic()
        self.last_activity = self.created
        self.pool = _RunspacePool(
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
        self._free: list[Runspace] = []  # a stack: the most recently released runspace is used next
        self._waiters: list[asyncio.Future[None]] = []
        self._serial = 0
        self.min_runspaces = 1
        self.max_runspaces = 1
        self.closed = False
        self.on_pipeline: Any = None  # set by the registry: callable(shell, run, metadata)
        self.discard: Any = None  # set by the registry: removes this shell from it and closes it
        self.on_metadata: Any = None  # set by the registry: callable(shell, run, GetMetadata request)

    # --- runspaces -----------------------------------------------------------------------------
    #
    # As PowerShell's RunspacePoolInternal does: MinRunspaces are created when the pool opens, more
    # are created on demand up to MaxRunspaces, and free runspaces are handed out from a stack
    # (last in, first out), so sequential pipelines of one client run in the same runspace and
    # find the module state (Connect-ExchangeOnline) an earlier pipeline left there.

    def _create_runspace(self) -> Runspace:
        self._serial += 1
        runspace = Runspace(shell_id=self.id, index=self._serial, tenant=self.tenant)
        self.runspaces.append(runspace)
        return runspace

    def _open_runspaces(self, minimum: int, maximum: int) -> None:
        self.min_runspaces, self.max_runspaces = max(1, minimum), max(1, maximum, minimum)
        while len(self.runspaces) < self.min_runspaces:
            self._free.append(self._create_runspace())

    @property
    def available(self) -> int:
        """What GetAvailableRunspaces answers: free runspaces plus those that may still be created."""
        return len(self._free) + max(0, self.max_runspaces - len(self.runspaces))

    async def acquire(self) -> Runspace:
        while True:
            if self._free:
                return self._free.pop()
            if len(self.runspaces) < self.max_runspaces:
                return self._create_runspace()
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def release(self, runspace: Runspace) -> None:
        if self.closed:
            return
        if len(self.runspaces) > self.max_runspaces:
            self.runspaces.remove(runspace)  # the pool was shrunk while this one was busy
        else:
            self._free.append(runspace)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def set_max_runspaces(self, count: int) -> bool:
        """RunspacePoolInternal.SetMaxRunspaces: refused below MinRunspaces; shrinking drops idle ones."""
        if count < self.min_runspaces or count < 1:
            return False
        self.max_runspaces = count
        while len(self.runspaces) > self.max_runspaces and self._free:
            self.runspaces.remove(self._free.pop(0))
        self._wake_one()
        return True

    def set_min_runspaces(self, count: int) -> bool:
        """RunspacePoolInternal.SetMinRunspaces: between 1 and MaxRunspaces; growing creates them."""
        if count < 1 or count > self.max_runspaces:
            return False
        self.min_runspaces = count
        while len(self.runspaces) < self.min_runspaces:
            self._free.append(self._create_runspace())
        return True

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

    def add_command(self, command_id: str, arrived: Arrival | None = None) -> CommandRun:
        key = command_id.upper()
        run = CommandRun(command_id=key, pipeline=ServerPipeline(self.pool, uuid.UUID(command_id)), arrived=arrived)
        self.commands[key] = run
        return run

    def _handle(self, event: Any) -> None:
        if isinstance(event, InitRunspacePoolEvent):
            self._open_runspaces(event.min_runspaces, event.max_runspaces)
        elif isinstance(event, SetMaxRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, self.set_max_runspaces(event.count))
        elif isinstance(event, SetMinRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, self.set_min_runspaces(event.count))
        elif isinstance(event, ResetRunspaceStateEvent):
            self.pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, GetAvailableRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, self.available)
        elif isinstance(event, CreatePipelineEvent):
            self.on_pipeline(self, self.commands[str(event.pipeline_id).upper()], event.pipeline)
        elif isinstance(event, GetCommandMetadataEvent):
            self.on_metadata(self, self.commands[str(event.pipeline_id).upper()], event.pipeline)
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

    def lose(self) -> None:
        """Vanish as a shell does after an idle timeout or a WinRM restart (the ``shell_lost`` fault)."""
        if self.discard is not None:
            self.discard()
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        for run in self.commands.values():
            run.outbox.event.set()  # a Receive long-polling on a command wakes and finds the shell gone
        for command_id in list(self.commands):
            self.terminate_command(command_id)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self.pool_outbox.event.set()


class ShellRegistry:
    """Every open shell of the sandbox, by id."""

    def __init__(self, tenants: Tenants | Tenant, *, max_shells: int = 512) -> None:
        self.tenants = as_tenants(tenants)
        self.max_shells = max_shells
        self.shells: dict[str, Shell] = {}
        self.on_pipeline: Any = None
        self.on_metadata: Any = None

    @property
    def tenant(self) -> Tenant:
        """The first (default) tenant."""
        return self.tenants.first

    def __len__(self) -> int:
        return len(self.shells)

    def open(self, shell: Shell) -> Shell:
        shell.on_pipeline = self.on_pipeline
        shell.on_metadata = self.on_metadata
        shell.discard = lambda: self.close(shell.id)
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
