"""The ``/wsman`` endpoint: WS-Management shell operations over HTTP, as raw ASGI.

Raw ASGI rather than a framework route, because a faithful peer must be able to do what a
framework hides: drop a connection mid-Receive (the ``drop_connection`` fault) and hold a
Receive open until its OperationTimeout.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import os
import time
import uuid
import xml.etree.ElementTree as ET

from starlette.types import Receive, Scope, Send

from service.sandbox import wsman
from service.sandbox.runner import start_metadata, start_pipeline
from service.sandbox.shells import Arrival, CommandRun, Outbox, Shell, ShellRegistry, serving
from service.sandbox.tenant import now_utc
from service.sandbox.wsman import NS, Action, Request, WSManFault, q

SOAP = b"application/soap+xml;charset=UTF-8"
MAX_BODY = 2 * 1024 * 1024
MAX_LONG_POLL = 60.0
#: The scope key of a request's arrival (:class:`~service.sandbox.shells.Arrival`).
ARRIVED = "unblock.sandbox.arrived"


class _Drop(Exception):
    """Close the connection without a complete answer (the drop_connection fault)."""


def _seconds(value: float) -> str:
    return f"PT{value:.3f}S"


class WSManEndpoint:
    def __init__(self, registry: ShellRegistry, *, username: str, password: str, machine: str = "sandbox") -> None:
        self.registry = registry
        self.registry.on_pipeline = start_pipeline
        self.registry.on_metadata = start_metadata
        self.credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.machine = machine
        self.endpoint_url = ""
        self._handlers = {
            Action.CREATE: self.create,
            Action.COMMAND: self.command,
            Action.SEND: self.send,
            Action.RECEIVE: self.receive,
            Action.SIGNAL: self.signal,
            Action.DELETE: self.delete,
            Action.GET: self.get,
        }

    # --- HTTP -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[ARRIVED] = Arrival(time.monotonic(), now_utc())  # before the body is read and parsed
        if scope["method"] != "POST":
            await _respond(send, 405, b"", extra=[(b"allow", b"POST")])
            return
        if not self._authorized(scope):
            await _respond(send, 401, b"", extra=[(b"www-authenticate", b'Basic realm="WSMAN"')])
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, b"")
            return
        if not body:
            await _respond(send, 200, b"")  # an empty POST only probes authentication
            return
        message_id: str | None = None
        try:
            request = wsman.parse_request(body)
            message_id = request.message_id
            handler = self._handlers.get(request.action)
            if handler is None:
                raise WSManFault(
                    wsman.ERROR_ACTION_NOT_SUPPORTED,
                    "wsa:ActionNotSupported",
                    f"The action {request.action} is not supported by the service.",
                )
            answer = await handler(request, scope)
        except _Drop:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", SOAP), (b"content-length", b"4096")],
                }
            )
            await send({"type": "http.response.body", "body": b"<s:Envelope", "more_body": True})
            return
        except WSManFault as fault:
            await _respond(send, 500, wsman.fault_envelope(fault, message_id))
            return
        await _respond(send, 200, answer)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "basic" and hmac.compare_digest(token.strip(), self.credentials)
        return False

    def _shell(self, request: Request) -> Shell:
        shell = self.registry.get(request.shell_id)
        if shell is None:
            raise wsman.shell_not_found_fault(request.shell_id or "")
        shell.touch()
        return shell

    # --- actions ----------------------------------------------------------------------------------

    async def create(self, request: Request, scope: Scope) -> bytes:
        if not request.resource_uri.startswith(wsman.POWERSHELL_RESOURCE_PREFIX):
            raise _invalid_resource(request.resource_uri)
        configuration = request.resource_uri[len(wsman.POWERSHELL_RESOURCE_PREFIX) :]
        served = serving(configuration, self.registry.tenants)
        if served is None:
            raise WSManFault(
                wsman.ERROR_INVALID_RESOURCE_URI,
                "w:DestinationUnreachable",
                f"The WS-Management service cannot process the request. Cannot find the {configuration} session "
                f"configuration in the WSMan: drive on the {self.machine} computer.",
            )
        shell_el = request.body.find("rsp:Shell", NS)
        creation = shell_el.find("pwsh:creationXml", NS) if shell_el is not None else None
        if shell_el is None or creation is None or not creation.text:
            raise wsman.bad_request_fault("A PowerShell shell needs a creationXml element.")
        if len(self.registry) >= self.registry.max_shells:
            raise WSManFault(
                wsman.ERROR_QUOTA_SHELLS,
                "w:QuotaLimit",
                "The WS-Management service cannot process the request. This user is allowed a maximum number of "
                f"{self.registry.max_shells} concurrent shells, which has been exceeded.",
            )
        shell_id = (shell_el.attrib.get("ShellId") or str(uuid.uuid4())).upper()
        idle_el = shell_el.find("rsp:IdleTimeOut", NS)
        idle = wsman.parse_duration(idle_el.text if idle_el is not None else None, 7200.0)
        client = scope.get("client") or ("", 0)
        shell = self.registry.open(
            Shell(
                shell_id=shell_id,
                resource_uri=request.resource_uri,
                configuration=configuration,
                owner="sandbox",
                client_ip=str(client[0]),
                tenant=served[0],
                tenants=self.registry.tenants,
                jea=served[1],
                idle_timeout=idle,
            )
        )
        try:
            shell.feed(_b64(creation.text), None)
        except Exception as error:  # noqa: BLE001 - any bad creationXml is the client's fault: a SOAP fault
            self.registry.close(shell_id)
            raise wsman.bad_request_fault(f"The creationXml could not be processed: {error}") from None
        children = wsman.resource_created(shell_id, self.endpoint_url, request.resource_uri, self._shell_xml(shell))
        return wsman.envelope(wsman.RESPONSE_OF[Action.CREATE], request.message_id, *children)

    async def command(self, request: Request, scope: Scope) -> bytes:
        shell = self._shell(request)
        line = request.body.find("rsp:CommandLine", NS)
        if line is None:
            raise wsman.bad_request_fault("Command needs a CommandLine element.")
        command_id = (line.attrib.get("CommandId") or str(uuid.uuid4())).upper()
        try:
            uuid.UUID(command_id)
        except ValueError:
            raise wsman.bad_request_fault("CommandId must be a GUID.") from None
        shell.add_command(command_id, arrived=scope.get(ARRIVED))
        for argument in line.findall("rsp:Arguments", NS):
            if argument.text:
                self._feed(shell, _b64(argument.text), command_id)
        response = ET.Element(q("rsp", "CommandResponse"))
        ET.SubElement(response, q("rsp", "CommandId")).text = command_id
        return wsman.envelope(wsman.RESPONSE_OF[Action.COMMAND], request.message_id, response)

    async def send(self, request: Request, _: Scope) -> bytes:
        shell = self._shell(request)
        for stream in request.body.findall("rsp:Send/rsp:Stream", NS):
            command_id = stream.attrib.get("CommandId")
            if command_id and command_id.upper() not in shell.commands:
                raise _command_not_found(shell.id, command_id)
            if stream.text:
                self._feed(shell, _b64(stream.text), command_id)
        return wsman.envelope(wsman.RESPONSE_OF[Action.SEND], request.message_id, ET.Element(q("rsp", "SendResponse")))

    def _feed(self, shell: Shell, data: bytes, command_id: str | None) -> None:
        try:
            shell.feed(data, command_id)
        except WSManFault:
            raise
        except Exception as error:  # noqa: BLE001 - bad PSRP bytes from a client become a SOAP fault, not a 500
            raise wsman.bad_request_fault(f"The PSRP data could not be processed: {error}") from None

    async def receive(self, request: Request, _: Scope) -> bytes:
        shell = self._shell(request)
        desired = request.body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = desired.attrib.get("CommandId") if desired is not None else None
        run: CommandRun | None = None
        if command_id:
            run = shell.commands.get(command_id.upper())
            if run is None:
                raise _command_not_found(shell.id, command_id)
            outbox = run.outbox
        else:
            outbox = shell.pool_outbox
        if request.operation_id and outbox.last_operation_id == request.operation_id and outbox.last_answer is not None:
            return outbox.last_answer  # a robust-connection retry of the same operation: same data again
        if run is not None and run.drop_next_receive:
            run.drop_next_receive = False
            raise _Drop
        if not outbox.chunks and not (run is not None and run.finished):
            wait = max(0.05, min(request.operation_timeout, MAX_LONG_POLL) - 0.2)
            try:
                await asyncio.wait_for(outbox.event.wait(), wait)
            except TimeoutError:
                raise wsman.operation_timeout_fault() from None
            if shell.closed:
                raise wsman.shell_not_found_fault(shell.id)
        answer = self._receive_answer(request, outbox, run)
        outbox.last_operation_id, outbox.last_answer = request.operation_id, answer
        return answer

    def _receive_answer(self, request: Request, outbox: Outbox, run: CommandRun | None) -> bytes:
        response = ET.Element(q("rsp", "ReceiveResponse"))
        for chunk in outbox.take():
            attrib = {"Name": "stdout"}
            if run is not None:
                attrib["CommandId"] = run.command_id
            ET.SubElement(response, q("rsp", "Stream"), attrib).text = base64.b64encode(chunk).decode()
        if run is not None:
            done = run.finished and not outbox.chunks
            state = ET.SubElement(
                response,
                q("rsp", "CommandState"),
                {"CommandId": run.command_id, "State": wsman.COMMAND_DONE if done else wsman.COMMAND_RUNNING},
            )
            if done:
                ET.SubElement(state, q("rsp", "ExitCode")).text = "0"
        return wsman.envelope(wsman.RESPONSE_OF[Action.RECEIVE], request.message_id, response)

    async def signal(self, request: Request, _: Scope) -> bytes:
        shell = self._shell(request)
        signal = request.body.find("rsp:Signal", NS)
        code_el = signal.find("rsp:Code", NS) if signal is not None else None
        if signal is None or code_el is None or not code_el.text:
            raise wsman.bad_request_fault("Signal needs a Code.")
        command_id = signal.attrib.get("CommandId", "")
        code = code_el.text.strip()
        if code == wsman.SIGNAL_TERMINATE:
            shell.terminate_command(command_id)
        elif code in (wsman.SIGNAL_CTRL_C, wsman.SIGNAL_PS_CTRL_C):
            shell.stop_command(command_id)
        elif code == wsman.SIGNAL_PS_CRASH:
            self.registry.close(shell.id)
        return wsman.envelope(
            wsman.RESPONSE_OF[Action.SIGNAL], request.message_id, ET.Element(q("rsp", "SignalResponse"))
        )

    async def delete(self, request: Request, _: Scope) -> bytes:
        if not self.registry.close(request.shell_id or ""):
            raise wsman.shell_not_found_fault(request.shell_id or "")
        return wsman.envelope(wsman.RESPONSE_OF[Action.DELETE], request.message_id)

    async def get(self, request: Request, _: Scope) -> bytes:
        if request.resource_uri == wsman.CONFIG_RESOURCE:
            config = ET.Element(q("cfg", "Config"))
            ET.SubElement(config, q("cfg", "MaxEnvelopeSizekb")).text = "500"
            ET.SubElement(config, q("cfg", "MaxTimeoutms")).text = "180000"
            return wsman.envelope(wsman.RESPONSE_OF[Action.GET], request.message_id, config)
        if request.resource_uri == wsman.SHELL_RESOURCE and request.shell_id:
            shell = self._shell(request)
            return wsman.envelope(wsman.RESPONSE_OF[Action.GET], request.message_id, self._shell_xml(shell))
        raise _invalid_resource(request.resource_uri)

    def _shell_xml(self, shell: Shell) -> ET.Element:
        el = ET.Element(q("rsp", "Shell"))
        values: list[tuple[str, str]] = [
            ("ShellId", shell.id),
            ("Name", f"Runspace{len(self.registry)}"),
            ("ResourceUri", shell.resource_uri),
            ("Owner", shell.owner),
            ("ClientIP", shell.client_ip),
            ("ProcessId", str(os.getpid())),
            ("IdleTimeOut", _seconds(shell.idle_timeout)),
            ("InputStreams", "stdin pr"),
            ("OutputStreams", "stdout"),
            ("MaxIdleTimeOut", "PT2147483.647S"),
            ("Locale", "en-US"),
            ("DataLocale", "en-US"),
            ("CompressionMode", "NoCompression"),
            ("ProfileLoaded", "Yes"),
            ("Encoding", "UTF8"),
            ("BufferMode", "Block"),
            ("State", "Connected"),
            ("ShellRunTime", "P0DT0H0M0S"),
            ("ShellInactivity", "P0DT0H0M0S"),
        ]
        for name, value in values:
            ET.SubElement(el, q("rsp", name)).text = value
        return el


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise wsman.bad_request_fault("The data is not valid base64.") from None


def _invalid_resource(uri: str) -> WSManFault:
    return WSManFault(
        wsman.ERROR_INVALID_RESOURCE_URI,
        "w:DestinationUnreachable",
        f"The WS-Management service cannot process the request. The resource URI {uri} was not found.",
    )


def _command_not_found(shell_id: str, command_id: str) -> WSManFault:
    return WSManFault(
        wsman.ERROR_INVALID_SELECTORS,
        "w:InvalidSelectors",
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the command with "
        f"CommandId {command_id} was not found on the server.",
    )


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, *, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers: list[tuple[bytes, bytes]] = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", SOAP))
    headers += extra or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
