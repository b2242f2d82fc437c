"""Assembling a process: the API under uvicorn, with whatever runs beside it.

Kept apart from the CLI so that tests, the demo and ``unblock serve`` start exactly the same
things. ``--sandbox`` starts the sandbox tenant in a thread of this process and points the
bridge at it; everything else runs as in production.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import uvicorn

from service.api.app import Background, create_app
from service.config import PsAuth, PsEncryption, Settings, SettingsError
from service.discovery.poller import Discovery
from service.logging import get_logger
from service.notifications.delivery import WebhookDispatcher
from service.persistence.db import Database
from service.persistence.listen import listen
from service.persistence.migrate import upgrade
from service.persistence.writer import CASE_CHANNEL, PROCESS_TAG
from service.powershell.bridge import PowerShellBridge
from service.powershell.budget import RunspaceBudget
from service.runtime import Runtime
from service.sandbox.server import SandboxServer
from service.worker.gateways import Gateways
from service.worker.runner import running_worker

log = get_logger(__name__)

SANDBOX_APP_ID = "00000000-0000-0000-0000-0000000000ab"


def sandbox_settings(settings: Settings, server: SandboxServer) -> Settings:
    """Point the PowerShell side at an in-process sandbox tenant."""
    update: dict[str, Any] = {
        "ps_server": server.host,
        "ps_port": server.port,
        "ps_ssl": server.tls,
        "ps_path": server.path,
        "ps_auth": PsAuth.basic,
        "ps_encryption": PsEncryption.never if not server.tls else PsEncryption.auto,
        "ps_username": "sandbox",
        "ps_password": "sandbox",
        "ps_cert_validation": str(server.cert_path) if server.cert_path else True,
        "ps_configuration_name": "Microsoft.PowerShell",
        "ps_connect_in_session": True,
        "tenant_organization": "contoso.onmicrosoft.com",
        "tenant_app_id": SANDBOX_APP_ID,
        "tenant_cert_thumbprint": "0" * 40,
        "tenant_id": "contoso.onmicrosoft.com",
        "sandbox": True,
    }
    if not settings.secret_key:
        update["secret_key"] = [base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()]
        log.warning("sandbox_secret_key_generated", note="temporary passwords sealed now cannot be opened after exit")
    return settings.model_copy(update=update)


@contextmanager
def sandbox_for(settings: Settings) -> Iterator[Settings]:
    """With ``settings.sandbox``: run a sandbox tenant for the block and return settings using it."""
    if not settings.sandbox:
        yield settings
        return
    server = SandboxServer(port=0).start()
    log.info("sandbox_started", url=server.url)
    try:
        yield sandbox_settings(settings, server)
    finally:
        server.close()


def build_gateway(settings: Settings, *, budget: RunspaceBudget | None = None) -> PowerShellBridge | None:
    if not settings.ps_server:
        return None
    if settings.ps_connect_in_session:
        needed = {
            "UNBLOCK_TENANT_APP_ID": settings.tenant_app_id,
            "UNBLOCK_TENANT_ORGANIZATION": settings.tenant_organization,
            "UNBLOCK_TENANT_CERT_THUMBPRINT": settings.tenant_cert_thumbprint,
        }
        missing = [name for name, value in needed.items() if not value]
        if missing:
            raise SettingsError(
                f"{missing[0]}: required for app-only Connect-ExchangeOnline and Connect-MgGraph (with "
                f"{', '.join(n for n in needed if n != missing[0])}), or set UNBLOCK_PS_CONNECT_IN_SESSION=false "
                "for a JEA endpoint that connects itself"
            )
    return PowerShellBridge(settings, budget=budget)


def build_runtime(settings: Settings, *, tenant: bool = True) -> Runtime:
    """The process's parts; ``tenant=False`` for processes that must never talk to the runner host
    (API-only processes and the CLI's case commands read the tenant's facts from the database)."""
    db = Database.for_service(settings)
    if not tenant:
        return Runtime(settings=settings, db=db)
    budget = RunspaceBudget(settings.ps_pool_size)  # every tenant's runspaces together
    default = build_gateway(settings, budget=budget)
    gateways = Gateways(settings, db, default=default, factory=PowerShellBridge, budget=budget)
    return Runtime(settings=settings, db=db, gateway=default, gateways=gateways)


def services(runtime: Runtime, *, worker: bool, concurrency: int | None = None, api: bool = True) -> list[Background]:
    """What runs beside the API in one process: the bridge's warm pool, the feed of other processes'
    changes for live views (``api``: not in a worker alone), and the worker."""

    @asynccontextmanager
    async def gateway() -> AsyncIterator[object]:
        if runtime.gateway is not None:
            await runtime.gateway.start()
        try:
            yield runtime.gateway
        finally:
            if runtime.gateways is not None:
                await runtime.gateways.close()
            elif runtime.gateway is not None:
                await runtime.gateway.close()
            if runtime.background:  # bookkeeping writes (key last use) finish before the pool closes
                await asyncio.wait(runtime.background, timeout=5)
            await runtime.db.dispose()

    @asynccontextmanager
    async def engine() -> AsyncIterator[object]:
        async with running_worker(runtime, concurrency=concurrency) as running:
            dispatcher = WebhookDispatcher(runtime, worker_id=running.worker_id)
            poller = Discovery(runtime, worker_id=running.worker_id)
            await dispatcher.start()
            await poller.start()
            try:
                yield running
            finally:
                await poller.stop()
                await dispatcher.stop()

    @asynccontextmanager
    async def live_feed() -> AsyncIterator[object]:
        """Changes other processes make reach this process's live views at once (PostgreSQL NOTIFY);
        without it they would see them only at their next poll."""
        if not runtime.db.is_postgres:
            yield None
            return

        def changed(payload: str) -> None:
            case_id, _, tag = payload.partition(" ")
            if case_id and tag != PROCESS_TAG:  # this process's own changes were published in-process
                runtime.events.publish(case_id)

        task = asyncio.get_running_loop().create_task(listen(runtime.db.url, changed, channel=CASE_CHANNEL))
        try:
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return [gateway, *([live_feed] if api else []), *([engine] if worker else [])]


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off only on sockets that say they are TCP, and with
    # Nagle on, every response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SettingsError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def freeze_startup_objects() -> None:
    """Keep what start-up made (modules, the app, the routes, the models) out of the garbage collector.

    Those objects live as long as the process, yet every full collection walks them all: tens of
    milliseconds in the middle of whatever request or step is running. :func:`gc.freeze` moves them
    to a permanent generation that collections skip, so a collection walks only what was made since.
    """
    gc.collect()
    gc.freeze()


def serve_forever(
    settings: Settings, *, host: str, port: int, worker: bool, migrate: bool, extra: list[Background] | None = None
) -> None:
    # Not only the worker needs the key: the API seals webhook secrets and opens temporary
    # passwords (reveal) and the dashboard's session, so no process starts without one.
    settings.require_secret_key()
    if migrate:
        upgrade(settings.database_url, audit_keys=settings.audit_keys)
    sock = bind_socket(host, port)
    with sandbox_for(settings) as effective:
        if worker and not effective.ps_server:
            effective.require_endpoint()
        # Only a process with a worker opens PowerShell sessions; an API-only process serves every
        # route from the database (intake, the restricted list, the dashboard) and needs no
        # UNBLOCK_PS_* or UNBLOCK_TENANT_* setting at all.
        runtime = build_runtime(effective, tenant=worker)
        app = create_app(runtime, background=[*services(runtime, worker=worker), *(extra or [])])
        # proxy_headers off: X-Forwarded-For/-Proto are believed only from UNBLOCK_TRUSTED_PROXIES (security.clients)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=20,
            proxy_headers=False,
        )
        log.info("serving", url=f"http://{host}:{sock.getsockname()[1]}", worker=worker, sandbox=effective.sandbox)
        freeze_startup_objects()
        uvicorn.Server(config).run(sockets=[sock])


async def run_worker(settings: Settings, *, concurrency: int | None = None) -> None:
    """``unblock worker``: the bridge and the worker until SIGTERM or SIGINT, then a graceful stop."""
    runtime = build_runtime(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        for service in services(runtime, worker=True, concurrency=concurrency, api=False):
            await stack.enter_async_context(service())
        log.info("worker_ready")
        freeze_startup_objects()
        await stop.wait()
        log.info("worker_stopping", reason="signal")
