"""WS-Management envelopes: reading requests, writing responses and faults the way Windows does.

Only the subset a PSRP client uses is understood (MS-WSMV shell operations: Create, Command,
Send, Receive, Signal, Delete, plus Get of a shell or of the config). Faults are HTTP 500
SOAP faults carrying a ``WSManFault`` with the decimal Windows error code, because that is
what clients (pypsrp included) parse.
"""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmv": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wsmanfault": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
    "cfg": "http://schemas.microsoft.com/wbem/wsman/1/config",
    "xml": "http://www.w3.org/XML/1998/namespace",
    "pwsh": "http://schemas.microsoft.com/powershell",
}
for _prefix, _uri in NS.items():
    if _prefix != "xml":
        ET.register_namespace(_prefix, _uri)

_T = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
_SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"


class Action:
    CREATE = _T + "Create"
    DELETE = _T + "Delete"
    GET = _T + "Get"
    COMMAND = _SHELL + "Command"
    SEND = _SHELL + "Send"
    RECEIVE = _SHELL + "Receive"
    SIGNAL = _SHELL + "Signal"
    FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"


RESPONSE_OF = {
    Action.CREATE: _T + "CreateResponse",
    Action.DELETE: _T + "DeleteResponse",
    Action.GET: _T + "GetResponse",
    Action.COMMAND: _SHELL + "CommandResponse",
    Action.SEND: _SHELL + "SendResponse",
    Action.RECEIVE: _SHELL + "ReceiveResponse",
    Action.SIGNAL: _SHELL + "SignalResponse",
}

SHELL_RESOURCE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
CONFIG_RESOURCE = "http://schemas.microsoft.com/wbem/wsman/1/config"
POWERSHELL_RESOURCE_PREFIX = "http://schemas.microsoft.com/powershell/"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"

COMMAND_DONE = _SHELL + "CommandState/Done"
COMMAND_RUNNING = _SHELL + "CommandState/Running"
SIGNAL_TERMINATE = _SHELL + "signal/Terminate"
SIGNAL_CTRL_C = _SHELL + "signal/ctrl_c"
SIGNAL_PS_CTRL_C = "powershell/signal/ctrl_c"
SIGNAL_PS_CRASH = "powershell/signal/crash"

_DURATION = re.compile(r"^PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


def q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


class WSManFault(Exception):
    """A fault to send back; ``code`` is the Windows error code (decimal in the XML)."""

    def __init__(self, code: int, subcode: str, reason: str, *, machine: str = "sandbox") -> None:
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason
        self.machine = machine


# The faults Windows returns for what can go wrong here (decimal codes as WinRM reports them).
ERROR_OPERATION_TIMEOUT = 2150858793  # 0x80338029 ERROR_WSMAN_OPERATION_TIMEDOUT
ERROR_INVALID_SELECTORS = 2150858843  # 0x8033805B shell not found / bad selectors
ERROR_ACTION_NOT_SUPPORTED = 2150858771  # 0x80338013
ERROR_SCHEMA_VALIDATION = 2150858817  # 0x80338041
ERROR_INVALID_RESOURCE_URI = 2150858770  # 0x80338012
ERROR_QUOTA_SHELLS = 2150859173  # 0x803381A5 too many shells for this user


def operation_timeout_fault() -> WSManFault:
    return WSManFault(
        ERROR_OPERATION_TIMEOUT,
        "w:TimedOut",
        "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
    )


def shell_not_found_fault(shell_id: str) -> WSManFault:
    return WSManFault(
        ERROR_INVALID_SELECTORS,
        "w:InvalidSelectors",
        f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not "
        "found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer "
        "exists on the server. Provide the correct ShellId or create a new shell and retry the operation.",
    )


def bad_request_fault(detail: str) -> WSManFault:
    return WSManFault(
        ERROR_SCHEMA_VALIDATION,
        "w:SchemaValidationError",
        f"The SOAP XML in the message does not match the corresponding XML schema definition. {detail}",
    )


@dataclass
class Request:
    action: str
    message_id: str
    resource_uri: str
    selectors: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    operation_timeout: float = 60.0
    max_envelope_size: int = 153600
    body: ET.Element = field(default_factory=lambda: ET.Element(q("s", "Body")))
    #: MS-WSMV's wsmv:OperationID: a client that may resend a request after losing its answer names
    #: the operation, and a resend carrying the same id gets the same answer again.
    operation_id: str | None = None

    @property
    def shell_id(self) -> str | None:
        return self.selectors.get("ShellId")


def parse_duration(text: str | None, default: float) -> float:
    if not text:
        return default
    match = _DURATION.match(text.strip())
    if not match:
        return default
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_request(data: bytes) -> Request:
    try:
        envelope = ET.fromstring(data)  # noqa: S314 - a test peer; expat limits entity expansion
    except ET.ParseError as error:
        raise bad_request_fault(f"Malformed XML: {error}.") from None
    header = envelope.find("s:Header", NS)
    body = envelope.find("s:Body", NS)
    if envelope.tag != q("s", "Envelope") or header is None or body is None:
        raise bad_request_fault("A SOAP Envelope with Header and Body is required.")

    def text(path: str) -> str | None:
        element = header.find(path, NS)
        return element.text.strip() if element is not None and element.text else None

    action = text("wsa:Action")
    message_id = text("wsa:MessageID")
    resource_uri = text("wsman:ResourceURI")
    if not action or not message_id:
        raise bad_request_fault("The Action and MessageID headers are required.")
    selectors = {
        s.attrib.get("Name", ""): (s.text or "").strip() for s in header.findall("wsman:SelectorSet/wsman:Selector", NS)
    }
    options = {
        o.attrib.get("Name", ""): (o.text or "").strip() for o in header.findall("wsman:OptionSet/wsman:Option", NS)
    }
    max_size_text = text("wsman:MaxEnvelopeSize")
    return Request(
        action=action,
        message_id=message_id,
        resource_uri=resource_uri or "",
        selectors=selectors,
        options=options,
        operation_timeout=parse_duration(text("wsman:OperationTimeout"), 60.0),
        max_envelope_size=int(max_size_text) if max_size_text and max_size_text.isdigit() else 153600,
        body=body,
        operation_id=text("wsmv:OperationID"),
    )


def _header(action: str, relates_to: str) -> ET.Element:
    header = ET.Element(q("s", "Header"))
    ET.SubElement(header, q("wsa", "Action")).text = action
    ET.SubElement(header, q("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, q("wsa", "To")).text = ANONYMOUS
    ET.SubElement(header, q("wsa", "RelatesTo")).text = relates_to
    return header


def envelope(action: str, relates_to: str, *children: ET.Element) -> bytes:
    root = ET.Element(q("s", "Envelope"))
    root.append(_header(action, relates_to))
    body = ET.SubElement(root, q("s", "Body"))
    for child in children:
        body.append(child)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False))


def fault_envelope(fault: WSManFault, relates_to: str | None) -> bytes:
    root = ET.Element(q("s", "Envelope"))
    root.append(_header(Action.FAULT, relates_to or ""))
    body = ET.SubElement(root, q("s", "Body"))
    soap_fault = ET.SubElement(body, q("s", "Fault"))
    code = ET.SubElement(soap_fault, q("s", "Code"))
    ET.SubElement(code, q("s", "Value")).text = "s:Receiver"
    sub = ET.SubElement(code, q("s", "Subcode"))
    ET.SubElement(sub, q("s", "Value")).text = fault.subcode
    reason = ET.SubElement(soap_fault, q("s", "Reason"))
    ET.SubElement(reason, q("s", "Text"), {q("xml", "lang"): "en-US"}).text = fault.reason
    detail = ET.SubElement(soap_fault, q("s", "Detail"))
    wsman_fault = ET.SubElement(
        detail, q("wsmanfault", "WSManFault"), {"Code": str(fault.code), "Machine": fault.machine}
    )
    ET.SubElement(wsman_fault, q("wsmanfault", "Message")).text = fault.reason
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False))


def resource_created(shell_id: str, endpoint: str, resource_uri: str, shell_xml: ET.Element) -> list[ET.Element]:
    created = ET.Element(q("wst", "ResourceCreated"))
    ET.SubElement(created, q("wsa", "Address")).text = endpoint
    params = ET.SubElement(created, q("wsa", "ReferenceParameters"))
    ET.SubElement(params, q("wsman", "ResourceURI")).text = resource_uri
    selectors = ET.SubElement(params, q("wsman", "SelectorSet"))
    ET.SubElement(selectors, q("wsman", "Selector"), {"Name": "ShellId"}).text = shell_id
    return [created, shell_xml]
