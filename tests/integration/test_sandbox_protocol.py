"""The sandbox as a WS-Management/PSRP server, driven by the unmodified pypsrp client."""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET

import httpx
import pytest
from pypsrp.exceptions import AuthenticationError, InvalidPSRPOperation, WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.serializer import TaggedValue
from pypsrp.shell import WinRS
from pypsrp.wsman import SelectorSet

from service.sandbox import wsman as w
from service.sandbox.server import SandboxServer
from service.sandbox.tenant import DEMO_RESTRICTED
from tests.sandbox_client import APP, open_pool, run, wsman_for


def test_open_and_close_a_runspace_pool(sandbox: SandboxServer) -> None:
    """Create opens one shell (the pool reaches Opened); Delete closes it."""
    client = wsman_for(sandbox)
    pool = RunspacePool(client)
    pool.open()
    assert pool.state == 2  # Opened
    assert sandbox.shells == 1
    assert pool.is_alive()
    pool.close()
    assert sandbox.shells == 0
    client.close()


def test_is_alive_is_false_for_a_shell_the_server_closed(sandbox: SandboxServer) -> None:
    """Get on a shell that no longer exists answers the invalid-selectors fault; pypsrp reads it as closed."""
    client = wsman_for(sandbox)
    pool = RunspacePool(client)
    pool.open()
    sandbox.close_shells()
    assert pool.is_alive() is False
    client.close()


def test_bad_credentials_are_refused(sandbox: SandboxServer) -> None:
    """Basic auth with the wrong password is a 401, which pypsrp reports as an AuthenticationError."""
    client = wsman_for(sandbox, password="wrong")
    with pytest.raises(AuthenticationError):
        RunspacePool(client).open()
    assert sandbox.shells == 0


def test_unknown_session_configuration_is_a_wsman_fault(sandbox: SandboxServer) -> None:
    """A configuration name the endpoint does not have is refused the way WinRM refuses it."""
    client = wsman_for(sandbox)
    with pytest.raises(WSManFaultError) as caught:
        RunspacePool(client, configuration_name="No.Such.Endpoint").open()
    assert caught.value.code == w.ERROR_INVALID_RESOURCE_URI
    assert "No.Such.Endpoint" in str(caught.value.reason)


def test_receive_on_an_unknown_shell_is_a_fault(sandbox: SandboxServer) -> None:
    """Operations on a shell id the server does not know answer 2150858843 (invalid selectors)."""
    client = wsman_for(sandbox)
    shell = WinRS(client, resource_uri="http://schemas.microsoft.com/powershell/Microsoft.PowerShell")
    selectors = SelectorSet()
    selectors.add_option("ShellId", "00000000-0000-0000-0000-00000000ABCD")
    shell._selector_set = selectors
    with pytest.raises(WSManFaultError) as caught:
        shell.receive("stdout")
    assert caught.value.code == w.ERROR_INVALID_SELECTORS


def test_an_idle_receive_times_out_with_the_operation_timeout_fault(sandbox: SandboxServer) -> None:
    """With nothing to say, a Receive answers the OperationTimeout fault (2150858793) when its time is up."""
    sandbox.tenant.add_fault("Get-AcceptedDomain", "hang", 1)
    with open_pool(sandbox) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-AcceptedDomain")
        ps.begin_invoke()
        ps.poll_invoke(timeout=1)  # takes the pipeline's Running state
        started = time.monotonic()
        with pytest.raises(WSManFaultError) as caught:
            pool.shell.receive("stdout", command_id=ps._command_id, timeout=1)
        assert caught.value.code == w.ERROR_OPERATION_TIMEOUT
        assert 0.5 < time.monotonic() - started < 3
        ps.stop()


def _with_operation_id(message: bytes, operation_id: str) -> bytes:
    """Add MS-WSMV's wsmv:OperationID header, as a client using robust connections does."""
    envelope = ET.fromstring(message)
    header = envelope.find("s:Header", w.NS)
    assert header is not None
    ET.SubElement(header, w.q("wsmv", "OperationID")).text = operation_id
    return ET.tostring(envelope)


def _receives_of_one_query(pool: RunspacePool, *, operation_id: str | None) -> list[tuple[bytes, bytes]]:
    """Run Get-BlockedSenderAddress and return each (Receive request, answer) that went over the wire."""
    exchanges: list[tuple[bytes, bytes]] = []
    transport = pool.connection.transport
    original = transport.send

    def recording(message: bytes, **kwargs: object) -> bytes:
        if operation_id and w.Action.RECEIVE.encode() in message:
            message = _with_operation_id(message, operation_id)
        answer = original(message, **kwargs)  # type: ignore[arg-type]
        if w.Action.RECEIVE.encode() in message:
            exchanges.append((message, answer))
        return answer

    transport.send = recording  # type: ignore[method-assign]
    ps = PowerShell(pool)
    ps.add_cmdlet("Get-BlockedSenderAddress").add_parameter("SenderAddress", "rob@contoso.com")
    assert len(ps.invoke()) == 1
    transport.send = original  # type: ignore[method-assign]
    return exchanges


def _resend(sandbox: SandboxServer, message: bytes) -> httpx.Response:
    return httpx.post(
        sandbox.url,
        content=message,
        auth=("sandbox", "sandbox"),
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
    )


def test_a_resent_receive_with_the_same_operation_id_gets_the_same_data_again(sandbox: SandboxServer) -> None:
    """MS-WSMV robust connections: a Receive resent with its wsmv:OperationID is answered with the same data."""
    with open_pool(sandbox) as pool:
        message, answer = _receives_of_one_query(pool, operation_id="uuid:4C9B7D0E-0000-4000-8000-000000000001")[-1]
        replay = _resend(sandbox, message)
    assert replay.status_code == 200
    assert replay.content == answer
    assert ET.fromstring(replay.content).findall(".//rsp:Stream", w.NS)


def test_a_resent_receive_without_an_operation_id_is_a_new_receive(sandbox: SandboxServer) -> None:
    """Without wsmv:OperationID, Windows treats a resend as a new Receive: data already sent is not sent again."""
    with open_pool(sandbox) as pool:
        message, answer = _receives_of_one_query(pool, operation_id=None)[-1]
        again = _resend(sandbox, message)
    assert again.status_code == 200
    assert again.content != answer
    assert ET.fromstring(again.content).findall(".//rsp:Stream", w.NS) == []


def test_max_runspaces_bounds_concurrent_pipelines(sandbox: SandboxServer) -> None:
    """Pipelines beyond the pool's max runspaces wait for a free runspace; within it they run at once."""
    sandbox.tenant.configure({"latency_ms": {"Get-AcceptedDomain": 300}})

    def elapsed(max_runspaces: int) -> float:
        with open_pool(sandbox, max_runspaces=max_runspaces) as pool:
            # every runspace of the pool needs its own connect: send one per runspace, at once
            shells = [PowerShell(pool) for _ in range(3)]
            started = time.monotonic()
            for ps in shells:
                ps.add_cmdlet("Get-AcceptedDomain")
                ps.begin_invoke()
            for ps in shells:
                ps.end_invoke()
                ps.close()
            return time.monotonic() - started

    parallel = elapsed(3)
    serial = elapsed(1)
    assert parallel < 0.75, parallel
    assert serial > 0.85, serial


def test_sequential_pipelines_in_a_growable_pool_share_one_runspace(sandbox: SandboxServer) -> None:
    """As on Windows (RunspacePoolInternal hands out free runspaces from a stack): connect once in a
    min=1,max=4 pool, and every later sequential pipeline finds that connection."""
    client = wsman_for(sandbox)
    with RunspacePool(client, min_runspaces=1, max_runspaces=4) as pool:
        assert not run(pool, "Connect-ExchangeOnline", ShowBanner=False, **APP).failed
        results = [run(pool, "Get-BlockedSenderAddress", SenderAddress="rob@contoso.com") for _ in range(5)]
    assert all(not r.failed and len(r.output) == 1 for r in results)
    assert len({call.runspace for call in sandbox.tenant.calls}) == 1
    client.close()


def test_a_pool_opens_min_runspaces_and_grows_on_demand_to_max(sandbox: SandboxServer) -> None:
    """GetAvailableRunspaces counts free runspaces plus those still to be created; concurrent pipelines
    create runspaces up to MaxRunspaces and no further."""
    sandbox.tenant.configure({"latency_ms": {"Connect-ExchangeOnline": 300}})
    client = wsman_for(sandbox)
    with RunspacePool(client, min_runspaces=1, max_runspaces=3) as pool:
        assert pool.get_available_runspaces() == 3
        flight = []
        for _ in range(5):
            ps = PowerShell(pool)
            ps.add_cmdlet("Connect-ExchangeOnline").add_parameters({**APP, "ShowBanner": False})
            ps.begin_invoke()
            flight.append(ps)
        for ps in flight:
            ps.end_invoke()
            ps.close()
        assert pool.get_available_runspaces() == 3  # all three exist now, and are free
    assert len({call.runspace for call in sandbox.tenant.calls}) == 3
    client.close()


def test_set_min_and_max_runspaces_refuse_impossible_values(sandbox: SandboxServer) -> None:
    """SetMinRunspaces needs 1 <= min <= max, SetMaxRunspaces needs max >= min; lowering max drops idle runspaces."""
    client = wsman_for(sandbox)
    with RunspacePool(client, min_runspaces=1, max_runspaces=4) as pool:
        with pytest.raises(InvalidPSRPOperation):
            pool.min_runspaces = 5  # above max
        with pytest.raises(InvalidPSRPOperation):
            pool.min_runspaces = 0
        pool.min_runspaces = 2
        with pytest.raises(InvalidPSRPOperation):
            pool.max_runspaces = 1  # below min
        pool.max_runspaces = 2
        assert pool.get_available_runspaces() == 2
    client.close()


def test_each_runspace_keeps_its_own_connection(sandbox: SandboxServer) -> None:
    """Module state is per runspace: connecting one runspace of a pool does not connect the others."""
    with open_pool(sandbox, connect=False, max_runspaces=2) as pool:
        sandbox.tenant.configure({"latency_ms": {"Connect-ExchangeOnline": 200}})
        first = PowerShell(pool)
        first.add_cmdlet("Connect-ExchangeOnline").add_parameters({**APP, "ShowBanner": False})
        first.begin_invoke()
        # while runspace 1 is busy connecting, this pipeline gets runspace 2, which is not connected
        result = run(pool, "Get-AcceptedDomain")
        first.end_invoke()
        first.close()
        assert result.failed
        assert result.error_ids == ["CommandNotFoundException"]


def test_securestring_parameters_work_after_key_exchange(sandbox: SandboxServer) -> None:
    """pypsrp's key exchange lets a SecureString reach the command; the tenant stores only its hash."""
    sandbox.tenant.add_user("sam@contoso.com", on_premises_sync=True)
    with open_pool(sandbox) as pool:
        pool.exchange_keys()
        result = run(
            pool,
            "Set-ADAccountPassword",
            Identity="sam",
            Reset=True,
            NewPassword=TaggedValue("SS", "N3w-Passw0rd!x"),
        )
        assert not result.failed
        assert result.errors == []
    user = sandbox.tenant.find_user("sam@contoso.com")
    assert user is not None
    import hashlib

    assert user.password_sha256 == hashlib.sha256(b"N3w-Passw0rd!x").hexdigest()
    call = sandbox.tenant.calls[-1]
    assert call.parameters["NewPassword"] == {"sha256": user.password_sha256}
    assert "N3w-Passw0rd!x" not in str([c.public() for c in sandbox.tenant.calls])


def test_a_plain_string_is_not_a_securestring(sandbox: SandboxServer) -> None:
    """As in PowerShell, a string cannot bind to a SecureString parameter."""
    sandbox.tenant.add_user("sam@contoso.com", on_premises_sync=True)
    with open_pool(sandbox) as pool:
        result = run(pool, "Set-ADAccountPassword", Identity="sam", Reset=True, NewPassword="N3w-Passw0rd!x")
    assert result.failed
    assert result.error_ids[0].startswith("CannotConvertArgumentNoMessage,")


def test_ctrl_c_stops_a_running_pipeline_and_frees_the_runspace(sandbox: SandboxServer) -> None:
    """A stopped pipeline releases its runspace: the next command runs."""
    sandbox.tenant.add_fault("Get-Mailbox", "hang", 1)
    with open_pool(sandbox) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Mailbox").add_parameter("Identity", "rob@contoso.com")
        ps.begin_invoke()
        ps.poll_invoke(timeout=1)
        ps.stop()
        assert len(run(pool, "Get-AcceptedDomain").output) == 2


def test_tls_with_a_generated_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--tls serves HTTPS with a self-signed certificate a client can pin as its CA bundle."""
    with SandboxServer(port=0, tls=True) as server:
        assert server.url.startswith("https://")
        with open_pool(server) as pool:
            assert len(run(pool, "Get-BlockedSenderAddress").output) == len(DEMO_RESTRICTED)
        assert server.shells == 0


def test_ten_clients_run_a_thousand_commands_without_error_or_leak(sandbox: SandboxServer) -> None:
    """Ten clients, each a pool of four runspaces with four pipelines in flight, 1,000 commands in all."""
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        try:
            with open_pool(sandbox, connect=False, max_runspaces=4) as pool:
                connects = []  # connect every runspace: four connects in flight at once
                for _ in range(4):
                    ps = PowerShell(pool)
                    ps.add_cmdlet("Connect-ExchangeOnline").add_parameters({**APP, "ShowBanner": False})
                    ps.begin_invoke()
                    connects.append(ps)
                for ps in connects:
                    ps.end_invoke()
                    ps.close()
                for batch in range(24):
                    flight = []
                    for slot in range(4):
                        ps = PowerShell(pool)
                        address = ["rob", "laura", "julia", "ann"][slot] + "@contoso.com"
                        ps.add_cmdlet("Get-BlockedSenderAddress").add_parameter("SenderAddress", address)
                        ps.begin_invoke()
                        flight.append(ps)
                    for ps in flight:
                        ps.end_invoke()
                        if ps.had_errors or ps.streams.error:
                            errors.append(f"client {index} batch {batch}: {ps.streams.error}")
                        ps.close()
                        with lock:
                            done[0] += 1
        except Exception as error:
            errors.append(f"client {index}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    commands = done[0] + 40  # the queries plus one connect per runspace
    assert commands == 1000
    assert sandbox.shells == 0
    assert len(sandbox.tenant.calls) == 1000
