"""One warm runspace: a pypsrp RunspacePool of a single runspace, used by one thread at a time.

pypsrp is blocking and its RunspacePool is not thread-safe (shared serializer and fragmenter
state), so a :class:`Runspace` is only ever touched by the worker thread that holds it. Module
state lives in the remote runspace, so each is connected once (Connect-ExchangeOnline,
Connect-MgGraph) when it opens, and that cost is paid once per runspace, not per command.

Everything that can go wrong below PowerShell (refused or dropped connections, HTTP errors,
WS-Management faults, a call past its deadline) surfaces as :class:`RunspaceFailure` carrying
a classified :class:`~service.errors.BridgeError` and whether the runspace is now unusable.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, cast

import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import (
    AuthenticationError,
    InvalidPipelineStateError,
    InvalidPSRPOperation,
    InvalidRunspacePoolStateError,
    WinRMError,
    WinRMTransportError,
    WSManFaultError,
)
from pypsrp.powershell import PowerShell
from pypsrp.powershell import RunspacePool as PypsrpPool
from pypsrp.serializer import TaggedValue
from pypsrp.wsman import WSMan

from service.config import Settings
from service.errors import BridgeError, CallTimeout, EndpointUnavailable, PermissionDenied
from service.powershell.classify import (
    WSMAN_INVALID_SELECTORS,
    WSMAN_OPERATION_TIMEOUT,
    RecordInfo,
    classify,
    classify_wsman_fault,
)
from service.powershell.commands import CONNECT_EXCHANGE, CONNECT_GRAPH, EXCHANGE_COMMANDS, Invocation


class RunspaceFailure(Exception):
    """The call failed below PowerShell; ``broken`` means the runspace must be replaced.

    ``session_lost`` says the remote shell itself is gone (an idle timeout, a WinRM restart): the
    command did not run there, and a fresh runspace can run it.
    """

    def __init__(self, error: BridgeError, *, broken: bool, session_lost: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.broken = broken
        self.session_lost = session_lost


class Secret:
    """A value to send as a SecureString (after the pool's key exchange)."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Secret(****)"


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    server: str
    port: int
    ssl: bool
    path: str
    auth: str
    username: str | None
    password: str | None = field(repr=False)
    cert_validation: bool | str
    encryption: str
    configuration_name: str
    operation_timeout: int
    connect_in_session: bool
    organization: str | None
    app_id: str | None
    cert_thumbprint: str | None
    tenant_id: str | None
    exchange_keys: bool
    runner_functions: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointOptions:
        return cls(
            server=settings.ps_server or "localhost",
            port=settings.ps_port,
            ssl=settings.ps_ssl,
            path=settings.ps_path,
            auth=settings.ps_auth.value,
            username=settings.ps_username,
            password=settings.ps_password,
            cert_validation=settings.ps_cert_validation,
            encryption=settings.ps_encryption.value,
            configuration_name=settings.ps_configuration_name,
            operation_timeout=settings.ps_operation_timeout,
            connect_in_session=settings.ps_connect_in_session,
            organization=settings.tenant_organization,
            app_id=settings.tenant_app_id,
            cert_thumbprint=settings.tenant_cert_thumbprint,
            tenant_id=settings.tenant_id or settings.tenant_organization,
            exchange_keys=settings.password_backend.value == "ad" or settings.ps_runner_functions,
            runner_functions=settings.ps_runner_functions,
        )


@dataclass(slots=True)
class RawResult:
    """What one pipeline produced: output objects, error records (classified later), warnings."""

    output: list[Any]
    records: list[RecordInfo]
    failed: bool
    warnings: list[str]


def properties(obj: Any) -> dict[str, Any]:
    """The properties of a deserialized object, adapted and extended merged."""
    merged: dict[str, Any] = {}
    for attr in ("adapted_properties", "extended_properties"):
        values = getattr(obj, attr, None)
        if isinstance(values, dict):
            merged.update(values)
    return merged


def record_info(record: Any, *, terminating: bool = False) -> RecordInfo:
    exception = getattr(record, "exception", None)
    types = tuple(str(t) for t in (getattr(exception, "types", None) or ()))
    message = str(properties(exception).get("Message") or "") if exception is not None else ""
    if not message:
        message = str(getattr(record, "_to_string", None) or getattr(record, "message", "") or "")
    return RecordInfo(
        fqid=str(getattr(record, "fq_error", "") or ""),
        category=int(getattr(record, "category", 0) or 0),
        reason=str(getattr(record, "reason", "") or ""),
        exception_types=types,
        message=message,
        terminating=terminating,
        details=str(getattr(record, "details_message", "") or ""),
        activity=str(getattr(record, "activity", "") or ""),
    )


def _transport_failure(error: Exception) -> RunspaceFailure:
    if isinstance(error, AuthenticationError):
        return RunspaceFailure(
            PermissionDenied("the PowerShell endpoint refused the remoting credential (UNBLOCK_PS_USERNAME/PASSWORD)"),
            broken=True,
        )
    if isinstance(error, WSManFaultError):
        return RunspaceFailure(
            classify_wsman_fault(error.code, str(error.reason or error)),
            broken=True,
            session_lost=error.code == WSMAN_INVALID_SELECTORS,
        )
    if isinstance(error, WinRMTransportError):
        return RunspaceFailure(EndpointUnavailable(f"the PowerShell endpoint answered HTTP {error.code}"), broken=True)
    kind = type(error).__name__
    return RunspaceFailure(EndpointUnavailable(f"the PowerShell endpoint is unreachable ({kind})"), broken=True)


TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    requests.exceptions.RequestException,
    WinRMError,
    InvalidPSRPOperation,
    InvalidRunspacePoolStateError,
    InvalidPipelineStateError,
    OSError,
)


def _wsman(o: EndpointOptions, timeout: float) -> WSMan:
    return WSMan(
        o.server,
        port=o.port,
        ssl=o.ssl,
        path=o.path,
        auth=o.auth,
        username=o.username,
        password=o.password,
        cert_validation=cast(Any, o.cert_validation),  # pypsrp takes a CA bundle path too
        encryption=o.encryption,
        operation_timeout=o.operation_timeout,
        connection_timeout=max(1, min(10, math.ceil(timeout))),
        read_timeout=max(o.operation_timeout + 5, min(60, math.ceil(timeout))),
        reconnection_retries=0,
        reconnection_backoff=0.1,
        no_proxy=True,
    )


def _settle(wsman: WSMan) -> None:
    """Stop requests from reading the environment again on every PSRP message.

    pypsrp reads the proxy and CA settings from the environment once, when it builds its
    requests session on the first message (we ask for no proxy, so none is used either way), and
    leaves ``trust_env`` on, so requests scans the environment for proxies again on every later
    request: measurable CPU on each of the two or three messages a command costs. What the
    environment said is already in the session; turning ``trust_env`` off keeps it.
    """
    session = getattr(getattr(wsman, "transport", None), "session", None)
    if session is not None:
        session.trust_env = False


def ping(options: EndpointOptions, timeout: float) -> bool:
    """Does the endpoint answer an authenticated WS-Management request at all?"""
    wsman = _wsman(options, timeout)
    try:
        wsman.get_server_config()
    except WSManFaultError:
        return True  # a fault is an answer: the endpoint is up (non-admins may not read config)
    except Exception:  # noqa: BLE001 - any transport or configuration failure means "not reachable"
        return False
    finally:
        wsman.close()
    return True


def connect_invocations(o: EndpointOptions) -> tuple[Invocation, Invocation]:
    """The in-session sign-ins of a runspace on a full endpoint: app-only, certificate, no prompts."""
    return (
        CONNECT_EXCHANGE(
            AppId=o.app_id,
            CertificateThumbprint=o.cert_thumbprint,
            Organization=o.organization,
            ShowBanner=False,
            CommandName=list(EXCHANGE_COMMANDS),
            SkipLoadingFormatData=True,
        ),
        CONNECT_GRAPH(ClientId=o.app_id, CertificateThumbprint=o.cert_thumbprint, TenantId=o.tenant_id, NoWelcome=True),
    )


class Runspace:
    def __init__(self, options: EndpointOptions, *, name: str) -> None:
        self.options = options
        self.name = name
        self.calls = 0
        self.worked: set[str] = set()  # commands that ran here without going missing
        self._wsman: WSMan | None = None
        self._pool: PypsrpPool | None = None
        self._pending_close: PowerShell | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self, deadline: float) -> None:
        o = self.options
        self._wsman = _wsman(o, deadline - time.monotonic())
        self._pool = PypsrpPool(self._wsman, configuration_name=o.configuration_name, min_runspaces=1, max_runspaces=1)
        try:
            self._pool.open()
            if o.exchange_keys:
                self._pool.exchange_keys()
        except TRANSPORT_ERRORS as error:
            self.close()
            raise _transport_failure(error) from error
        _settle(self._wsman)
        if o.connect_in_session:
            self._bootstrap(deadline)
        self.calls = 0  # the connects do not count towards recycling

    def _bootstrap(self, deadline: float) -> None:
        connects = connect_invocations(self.options)
        for connect in connects:
            try:
                result = self.invoke((connect,), deadline)
                self.finish()
            except RunspaceFailure:
                self.close()
                raise
            relevant = [r for r in result.records if r.terminating] or result.records
            if result.failed or relevant:
                self.close()
                classified = classify(relevant[0], cmdlet=connect.name) if relevant else None
                error = classified.error if classified else EndpointUnavailable(f"{connect.name} failed")
                raise RunspaceFailure(error, broken=True)

    def command_metadata(self, names: list[str]) -> dict[str, set[str]]:
        """PSRP GetCommandMetadata: which of ``names`` this runspace offers, with their parameter names
        (lower-cased). A name the endpoint does not offer is simply absent from the answer."""
        if self._pool is None:
            raise RunspaceFailure(EndpointUnavailable("the runspace is not open"), broken=True)
        try:
            found = self._pool.get_command_metadata(names)
        except TRANSPORT_ERRORS as error:
            raise _transport_failure(error) from error
        return {
            str(meta.name).lower(): {str(p).lower() for p in (meta.parameters or {})} for meta in found if meta.name
        }

    def is_alive(self, timeout: int = 3) -> bool:
        if self._pool is None:
            return False
        try:
            return bool(self._pool.is_alive(timeout=timeout))
        except TRANSPORT_ERRORS:
            return False

    def close(self) -> None:
        """Close the remote shell; never raises (the endpoint may already be gone)."""
        pool, wsman = self._pool, self._wsman
        self._pool = self._wsman = None
        self._pending_close = None
        # best effort: the connection may already be broken
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close()
        if wsman is not None:
            with contextlib.suppress(Exception):
                wsman.close()

    # --- calls ----------------------------------------------------------------------------------

    def invoke(self, invocations: tuple[Invocation, ...], deadline: float) -> RawResult:
        """Run one pipeline of named commands with bound parameters; poll until done or ``deadline``."""
        if self._pool is None:
            raise RunspaceFailure(EndpointUnavailable("the runspace is not open"), broken=True)
        self.calls += 1
        ps = PowerShell(self._pool)
        for invocation in invocations:
            ps.add_cmdlet(invocation.name)
            for name, value in invocation.values:
                ps.add_parameter(name, TaggedValue("SS", value.value) if isinstance(value, Secret) else value)
        try:
            ps.begin_invoke()
            while ps.state == PSInvocationState.RUNNING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._stop_quietly(ps)
                    raise RunspaceFailure(
                        CallTimeout(f"{invocations[-1].name} did not finish within the call timeout"), broken=True
                    )
                try:
                    ps.poll_invoke(timeout=max(1, min(self.options.operation_timeout, math.ceil(remaining))))
                except WSManFaultError as fault:
                    if fault.code != WSMAN_OPERATION_TIMEOUT:
                        raise
        except RunspaceFailure:
            raise
        except TRANSPORT_ERRORS as error:
            raise _transport_failure(error) from error
        self._pending_close = ps
        failed = bool(ps.had_errors) or ps.state == PSInvocationState.FAILED
        records = [record_info(r) for r in ps.streams.error]
        if failed and records:
            records[-1] = record_info(ps.streams.error[-1], terminating=True)
        warnings = [str(getattr(w, "message", w)) for w in ps.streams.warning]
        return RawResult(output=list(ps.output), records=records, failed=failed, warnings=warnings)

    def finish(self) -> None:
        """Release the last pipeline on the server (Terminate), off the caller's critical path."""
        ps, self._pending_close = self._pending_close, None
        if ps is None:
            return
        try:
            ps.close()
        except TRANSPORT_ERRORS as error:
            raise _transport_failure(error) from error

    def _stop_quietly(self, ps: PowerShell) -> None:
        with contextlib.suppress(Exception):  # the runspace is being discarded anyway
            ps.stop()
