"""A thin pypsrp client for tests that talk to the sandbox the way any PSRP client would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from service.sandbox.server import SandboxServer
from service.sandbox.tenant import FABRIKAM_TENANT_ID

APP = {
    "AppId": "11111111-2222-3333-4444-555555555555",
    "CertificateThumbprint": "A" * 40,
    "Organization": "contoso.onmicrosoft.com",
}
GRAPH = {
    "ClientId": "11111111-2222-3333-4444-555555555555",
    "CertificateThumbprint": "A" * 40,
    "TenantId": "contoso.onmicrosoft.com",
}
#: The same app-only sign-ins to the demo seed's second tenant, fabrikam.
FABRIKAM_APP = {**APP, "Organization": "fabrikam.onmicrosoft.com"}
FABRIKAM_GRAPH = {**GRAPH, "TenantId": FABRIKAM_TENANT_ID}


def wsman_for(server: SandboxServer, **overrides: Any) -> WSMan:
    options: dict[str, Any] = {
        "port": server.port,
        "ssl": server.tls,
        "auth": "basic",
        "username": "sandbox",
        "password": "sandbox",
        "encryption": "never" if not server.tls else "auto",
        "operation_timeout": 5,
        "cert_validation": str(server.cert_path) if server.cert_path else True,
    }
    options.update(overrides)
    return WSMan(server.host, **options)


@dataclass
class Result:
    output: list[Any]
    errors: list[Any]
    failed: bool
    information: list[Any] = field(default_factory=list)
    warnings: list[Any] = field(default_factory=list)
    progress: list[Any] = field(default_factory=list)

    @property
    def error_ids(self) -> list[str]:
        return [str(e.fq_error) for e in self.errors]

    @property
    def messages(self) -> list[str]:
        return [str(e.exception.adapted_properties.get("Message")) for e in self.errors]

    def prop(self, index: int, name: str) -> Any:
        item = self.output[index]
        return item.extended_properties.get(name, item.adapted_properties.get(name))


def run(
    pool: RunspacePool, cmdlet: str, *, piped: list[tuple[str, dict[str, Any]]] | None = None, **params: Any
) -> Result:
    """Run one named command (and optionally commands piped after it) with bound parameters."""
    ps = PowerShell(pool)
    ps.add_cmdlet(cmdlet)
    for name, value in params.items():
        ps.add_parameter(name, value)
    for next_cmdlet, next_params in piped or []:
        ps.add_cmdlet(next_cmdlet)
        for name, value in next_params.items():
            ps.add_parameter(name, value)
    output = ps.invoke()
    result = Result(
        output=list(output),
        errors=list(ps.streams.error),
        failed=bool(ps.had_errors),
        information=list(ps.streams.information),
        warnings=list(ps.streams.warning),
        progress=list(ps.streams.progress),
    )
    ps.close()
    return result


@contextmanager
def open_pool(
    server: SandboxServer,
    *,
    connect: bool = True,
    configuration: str = "Microsoft.PowerShell",
    max_runspaces: int = 1,
    exchange: dict[str, Any] | None = None,
    graph: dict[str, Any] | None = None,
    **wsman_options: Any,
) -> Iterator[RunspacePool]:
    """A pool; with ``connect``, Exchange and Graph connected (to contoso, or with the sign-ins given:
    ``exchange=FABRIKAM_APP, graph=FABRIKAM_GRAPH`` for fabrikam)."""
    wsman = wsman_for(server, **wsman_options)
    pool = RunspacePool(wsman, configuration_name=configuration, max_runspaces=max_runspaces)
    pool.open()
    try:
        if connect:
            assert not run(pool, "Connect-ExchangeOnline", ShowBanner=False, **(exchange or APP)).failed
            assert not run(pool, "Connect-MgGraph", NoWelcome=True, **(graph or GRAPH)).failed
        yield pool
    finally:
        pool.close()
        wsman.close()
