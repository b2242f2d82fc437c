"""``unblock``: the command line (contract section 2).

Every command reads its configuration from the environment. Bad input gives one line on
stderr and exit status 2, never a traceback: :func:`main` is the only entry point and it
turns every expected error into that line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from service import __version__
from service.config import Settings, SettingsError, load_settings, parse_duration
from service.errors import InvalidInput, NotFound, ServiceError
from service.logging import configure as configure_logging

if TYPE_CHECKING:
    from service.domain.audit import Actor, AuditSigner, Head
    from service.persistence.audit import ChainReport
    from service.persistence.db import Database
    from service.persistence.tenants import TenantRecord
    from service.powershell.doctor import Doctor, Status

T = TypeVar("T")

app = typer.Typer(
    name="unblock",
    help="Bring Microsoft 365 accounts back from Exchange Online's restricted-sender list.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
case_app = typer.Typer(help="Open, show and watch unblock cases.", no_args_is_help=True)
app.add_typer(case_app, name="case")
audit_app = typer.Typer(help="Inspect and verify the audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
tenants_app = typer.Typer(help="The Microsoft 365 tenants the service acts on.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")


class CliError(Exception):
    """An expected failure: one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 2) -> NoReturn:
    raise CliError(message, code)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (uvicorn[standard] brings it): a faster event loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not a hard requirement
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def settings_for_cli(**overrides: Any) -> Settings:
    settings = load_settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _cli_actor() -> Actor:
    """The operator, for the audit log: kind ``cli`` and the OS user running the command."""
    import getpass

    from service.domain.audit import Actor

    return Actor.cli(getpass.getuser())


def _audit_signer(settings: Settings) -> AuditSigner:
    """The audit keys, or one line naming the settings: commands that write or check the log need them."""
    from service.domain.audit import AuditSigner

    settings.require_audit_key()
    return AuditSigner.from_secrets(settings.audit_keys)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"unblock-service {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Bring Microsoft 365 accounts back from Exchange Online's restricted-sender list."""


@app.command()
def migrate() -> None:
    """Upgrade the database schema to the latest version (alembic upgrade head)."""
    from service.persistence.migrate import current_revision, upgrade

    settings = settings_for_cli()
    upgrade(settings.database_url, audit_keys=settings.audit_keys)
    typer.echo(f"database at revision {current_revision(settings.database_url)}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    sandbox: Annotated[
        bool, typer.Option("--sandbox", help="Also start the sandbox tenant in-process and use it.")
    ] = False,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="Serve the API only.")] = False,
    no_migrate: Annotated[bool, typer.Option("--no-migrate", help="Do not migrate the database on start.")] = False,
) -> None:
    """Run the API (and, unless --no-worker, the worker in the same process)."""
    from service.serving import serve_forever

    settings = settings_for_cli(sandbox=sandbox)
    serve_forever(settings, host=host, port=port, worker=not no_worker, migrate=not no_migrate)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=256, help="Cases run at once (default: twice the PowerShell pool size).")
    ] = None,
    no_migrate: Annotated[bool, typer.Option("--no-migrate", help="Do not migrate the database on start.")] = False,
) -> None:
    """Run the worker alone (scale out: several may run against one PostgreSQL)."""
    from service.persistence.migrate import upgrade
    from service.serving import run_worker

    settings = settings_for_cli()
    settings.require_secret_key()
    settings.require_endpoint()
    if not no_migrate:
        upgrade(settings.database_url, audit_keys=settings.audit_keys)
    run(run_worker(settings, concurrency=concurrency))


class Seed(StrEnum):
    demo = "demo"
    empty = "empty"


@app.command()
def sandbox(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one).")] = 5985,
    tls: Annotated[bool, typer.Option("--tls", help="Serve HTTPS with a generated self-signed certificate.")] = False,
    seed: Annotated[Seed, typer.Option(help="Initial tenant: demo users and senders, or empty.")] = Seed.demo,
) -> None:
    """Run the sandbox tenant alone: a PowerShell remoting endpoint emulating Exchange Online."""
    from service.sandbox.server import SandboxError, SandboxServer

    settings_for_cli()
    server = SandboxServer(host, port, tls=tls, seed=seed.value)

    def ready(s: SandboxServer) -> None:
        typer.echo(f"listening on {s.url}")
        if s.cert_path:
            typer.echo(f"certificate: {s.cert_path}")
        typer.echo(f"control API: {s.base_url}/_sandbox/state (loopback only); credentials sandbox/sandbox")

    try:
        run(server.serve_forever(ready))
    except SandboxError as error:
        fail(str(error), code=2)
    finally:
        server.close()


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON (for automation).")] = False,
    mailbox: Annotated[
        str | None, typer.Option(help="An address to read in the probes (default: a made-up one in your domain).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=1, max=600, help="Seconds to wait for the endpoint.")] = 60.0,
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="Check only this tenant; repeat for several (default: every enabled tenant)."),
    ] = None,
) -> None:
    """Check the PowerShell endpoint before the first case: commands, parameters, read-only probes, permissions.

    Every enabled tenant is checked (or only the --tenant ones), each connected as its own gateway
    would connect. Exit 0 when everything the service needs is there for each, 1 otherwise.
    """
    import json

    from service.powershell.doctor import Doctor, report

    settings = settings_for_cli()
    results: list[tuple[TenantRecord, Doctor]] = []
    for target in _doctor_targets(settings, tenant or []):
        checker = Doctor(target.settings, timeout=timeout, mailbox=mailbox)
        if target.problem is None:
            checker.run()
        else:
            checker.add(*target.problem)
        results.append((target.tenant, checker))
    passed = all(checker.passed for _, checker in results)
    if as_json:
        if len(results) == 1:  # the shape from before tenants, which automation already reads
            body: dict[str, Any] = {"passed": passed, "checks": report(results[0][1].checks)}
        else:
            body = {
                "passed": passed,
                "tenants": [
                    {"tenant": record.name, "passed": checker.passed, "checks": report(checker.checks)}
                    for record, checker in results
                ],
            }
        typer.echo(json.dumps(body, indent=2))
    elif len(results) == 1:
        _print_checks(results[0][1])
    else:
        for record, checker in results:
            typer.echo(f"== tenant {record.name}" + (f" ({record.organization})" if record.organization else ""))
            _print_checks(checker)
            typer.echo("")
        failed = [record.name for record, checker in results if not checker.passed]
        typer.echo(
            f"all checks passed in {len(results)} tenants"
            if not failed
            else f"{len(failed)} of {len(results)} tenants failed: {', '.join(failed)}"
        )
    if not passed:
        raise typer.Exit(1)


def _print_checks(checker: Doctor) -> None:
    """One tenant's checks as a table, what to do under each failure or warning, and a summary line."""
    from service.powershell.doctor import Status

    checks = checker.checks
    width = max(len(check.name) for check in checks)
    for check in checks:
        typer.echo(f"{check.status.value:<5} {check.name:<{width}}  {check.detail}")
        if check.fix and check.status in (Status.fail, Status.warn):
            typer.echo(f"{'':<5} {'':<{width}}  -> {check.fix}")
    failed = [check.name for check in checks if check.status is Status.fail]
    typer.echo("all checks passed" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}")


@dataclass(frozen=True, slots=True)
class _DoctorTarget:
    """A tenant for `doctor`: the settings its gateway connects with, or why it cannot connect at all.

    ``problem`` is a failed check's name, status, detail and fix, reported instead of running the
    checks (a remoting password no configured key opens), so the other tenants are still checked.
    """

    tenant: TenantRecord
    settings: Settings
    problem: tuple[str, Status, str, str] | None = None


def _doctor_targets(settings: Settings, names: list[str]) -> list[_DoctorTarget]:
    """The tenants `doctor` checks: the named ones, or every enabled one; one line and exit 2 for a
    name that is unknown or disabled (a typo must not pass as "all checks passed").

    ``default`` connects with the settings themselves, as its gateway does; a stored tenant with
    its identity, endpoint overrides and remoting password, as Gateways.for_tenant connects it.
    doctor is meant to run before `unblock migrate`: with no database yet (a SQLite file is not
    created) or no tenants table, the settings' tenant is the only one.
    """
    from service.domain.tenancy import DEFAULT_TENANT
    from service.errors import TenantNotFound
    from service.persistence import tenants
    from service.persistence.db import sqlite_file_missing
    from service.powershell.doctor import Status
    from service.security.sealing import SealingError
    from service.worker.gateways import tenant_password, tenant_settings

    wanted = list(dict.fromkeys(name.strip().lower() for name in names))

    async def connect_as(db: Database, tenant: TenantRecord) -> _DoctorTarget:
        if tenant.from_settings:
            return _DoctorTarget(tenant, settings)
        try:
            password = await tenant_password(db, settings, tenant.name)
        except SealingError as error:
            fix = "run doctor with the UNBLOCK_SECRET_KEY values of the service (the key that sealed it among them)"
            problem = ("remoting password", Status.fail, error.message, fix)
            return _DoctorTarget(tenant, tenant_settings(settings, tenant), problem)
        return _DoctorTarget(tenant, tenant_settings(settings, tenant, password=password))

    async def choose(db: Database | None) -> list[_DoctorTarget]:
        if db is None or not await tenants.table_exists(db):
            unknown = [name for name in wanted if name != DEFAULT_TENANT]
            if unknown:
                raise TenantNotFound(f"no tenant {unknown[0]} (the database holds no tenants yet)")
            return [_DoctorTarget(tenants.settings_tenant(settings), settings)]
        if wanted:
            chosen = [await tenants.get(db, settings, name) for name in wanted]
            for record in chosen:
                if not record.enabled:
                    raise TenantNotFound(f"tenant {record.name} is disabled")
        else:
            chosen = [record for record in await tenants.every(db, settings) if record.enabled]
        return [await connect_as(db, record) for record in chosen]

    try:
        targets = run(choose(None)) if sqlite_file_missing(settings.database_url) else _with_database(settings, choose)
    except TenantNotFound as error:
        fail(error.message)
    if not targets:
        fail("no tenant to check: every stored tenant is disabled")
    if any(target.tenant.from_settings for target in targets):
        settings.require_endpoint()  # default's endpoint is the settings' own, as it always was
    return targets


def _with_database(settings: Settings, use: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``use`` with the CLI's database handle, disposed of afterwards, as every reading command does."""
    from service.persistence.db import Database

    async def go() -> T:
        db = Database.for_cli(settings)
        try:
            return await use(db)
        finally:
            await db.dispose()

    return run(go())


# --- keys -------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key, e.g. servicenow.")],
    scope: Annotated[list[str], typer.Option("--scope", help="A scope; repeat for several.")],
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime, e.g. 90d or 12h; default: no expiry.")
    ] = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="Limit the key to a tenant's cases; repeat for several (default: all)."),
    ] = None,
) -> None:
    """Create an API key; the key itself is printed once, alone on the last line."""
    from service.persistence import keys as key_rows
    from service.persistence.db import Database
    from service.security.keys import generate_key
    from service.security.scopes import parse_scopes

    name = name.strip()
    if not name or len(name) > 128:
        fail("--name must be 1 to 128 characters")
    from service.domain.tenancy import check_name
    from service.errors import InvalidInput

    try:
        scopes = parse_scopes(scope)
        lifetime = parse_duration(expires_in) if expires_in else None
        limited = [check_name(t) for t in tenant] if tenant else None
    except ValueError as error:
        fail(str(error))
    except InvalidInput as error:
        fail(f"--tenant: {error.message}")
    if limited is not None and "admin" in scopes:
        fail("--tenant: a key limited to tenants cannot hold admin (admin sees every tenant)")
    settings = settings_for_cli()
    signer = _audit_signer(settings)

    async def create() -> Any:
        from service.persistence.types import utcnow

        db = Database.for_cli(settings)
        try:
            new = generate_key()
            expires = utcnow() + timedelta(seconds=lifetime) if lifetime else None
            record = await key_rows.create_key(
                db,
                name=name,
                prefix=new.prefix,
                key_hash=new.key_hash,
                scopes=scopes,
                expires_at=expires,
                tenants=limited,
                actor=_cli_actor(),
                signer=signer,
            )
            return record, new.plaintext
        finally:
            await db.dispose()

    from service.errors import ApiKeyNameTaken

    try:
        record, plaintext = run(create())
    except ApiKeyNameTaken as error:
        fail(error.message)
    typer.echo(f"created API key {record.id} named {record.name!r} ({record.prefix}) with scopes {', '.join(scopes)}")
    if record.tenants is not None:
        typer.echo(f"limited to tenants {', '.join(record.tenants)}")
    if record.expires_at:
        typer.echo(f"it expires at {record.expires_at.isoformat()}")
    typer.echo("store it now: it is shown only this once")
    typer.echo(plaintext)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys (never the keys themselves)."""
    from service.persistence import keys as key_rows
    from service.persistence.db import Database
    from service.persistence.types import utcnow

    settings = settings_for_cli()

    async def fetch() -> Any:
        db = Database.for_cli(settings)
        try:
            return await key_rows.list_keys(db)
        finally:
            await db.dispose()

    rows = run(fetch())
    now = utcnow()
    typer.echo(f"{'ID':26}  {'PREFIX':12}  {'NAME':20}  {'STATUS':8}  {'LAST USED':25}  SCOPES")
    for row in rows:
        status = "revoked" if row.revoked_at else ("active" if row.usable(now) else "expired")
        last = row.last_used_at.isoformat(timespec="seconds") if row.last_used_at else "never"
        typer.echo(f"{row.id:26}  {row.prefix:12}  {row.name[:20]:20}  {status:8}  {last:25}  {' '.join(row.scopes)}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id or prefix.")]) -> None:
    """Revoke an API key at once."""
    from service.persistence import keys as key_rows
    from service.persistence.db import Database

    settings = settings_for_cli()
    signer = _audit_signer(settings)

    async def revoke() -> Any:
        db = Database.for_cli(settings)
        try:
            return await key_rows.revoke_key(db, key_id=key_id, actor=_cli_actor(), signer=signer)
        finally:
            await db.dispose()

    record = run(revoke())
    typer.echo(f"revoked API key {record.id} ({record.prefix}, {record.name!r})")


@keys_app.command("secret")
def keys_secret() -> None:
    """Print a new random value for UNBLOCK_SECRET_KEY."""
    from service.security.keys import generate_secret_key

    typer.echo(generate_secret_key())


# --- tenants -------------------------------------------------------------------------------------------


def _print_tenant(tenant: Any) -> None:
    record = tenant.public()
    endpoint = {k: v for k, v in record.pop("endpoint").items() if v not in (None, False)}
    for key, value in record.items():
        if value is not None:
            typer.echo(f"{key:18} {value}")
    for key, value in endpoint.items():
        typer.echo(f"{'ps_' + key:18} {value}")


async def _validate_tenant(settings: Settings, name: str, wait: float) -> Any:
    """Connect as the tenant once (the worker's way) and store its accepted domains; say what happened."""
    from service.domain.tenancy import TenantStatus
    from service.errors import BridgeError
    from service.persistence import tenant_facts, tenants
    from service.persistence.db import Database
    from service.persistence.types import utcnow
    from service.powershell.bridge import PowerShellBridge
    from service.worker.gateways import Gateways

    db = Database.for_cli(settings)
    gateways = Gateways(settings, db, default=None, factory=PowerShellBridge)
    try:
        try:
            gateway = await asyncio.wait_for(gateways.for_tenant(name), wait)
            domains = await asyncio.wait_for(gateway.accepted_domains(), wait)
        except (BridgeError, TimeoutError) as error:
            message = error.message if isinstance(error, BridgeError) else f"no answer within {wait:g}s"
            retryable = not isinstance(error, BridgeError) or error.retryable
            status = TenantStatus.pending if retryable else TenantStatus.invalid
            return await tenants.set_status(db, name=name, status=status, detail=message, now=utcnow())
        await tenant_facts.store_domains(db, domains=domains, now=utcnow(), tenant=name)
        return await tenants.set_status(
            db, name=name, status=TenantStatus.active, detail=None, now=utcnow(), validated=True
        )
    finally:
        await gateways.close()
        await db.dispose()


@tenants_app.command("add")
def tenants_add(
    name: Annotated[str, typer.Argument(help="A short name: lowercase letters, digits, hyphens (e.g. fabrikam).")],
    organization: Annotated[str, typer.Option(help="The tenant's initial domain, X.onmicrosoft.com.")],
    app_id: Annotated[str, typer.Option("--app-id", help="The app registration's application (client) id.")],
    cert_thumbprint: Annotated[str, typer.Option("--cert-thumbprint", help="Its certificate's thumbprint.")],
    tenant_id: Annotated[str | None, typer.Option("--tenant-id", help="The directory (tenant) id.")] = None,
    password_backend: Annotated[str, typer.Option("--password-backend", help="graph or ad.")] = "graph",  # noqa: S107
    ps_server: Annotated[str | None, typer.Option("--ps-server", help="Another runner host for this tenant.")] = None,
    ps_port: Annotated[int | None, typer.Option("--ps-port", min=1, max=65535)] = None,
    ps_ssl: Annotated[bool | None, typer.Option("--ps-ssl/--no-ps-ssl")] = None,
    ps_auth: Annotated[str | None, typer.Option("--ps-auth")] = None,
    ps_username: Annotated[str | None, typer.Option("--ps-username")] = None,
    ps_password_file: Annotated[
        str | None,
        typer.Option("--ps-password-file", help="A file holding the remoting password (sealed when stored)."),
    ] = None,
    ps_configuration_name: Annotated[
        str | None,
        typer.Option("--ps-configuration-name", help="Session configuration (default UnblockRunner-<name> on JEA)."),
    ] = None,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Connect now if the endpoint answers.")
    ] = True,
    timeout: Annotated[float, typer.Option(min=1, max=600, help="Seconds to wait for the endpoint.")] = 60.0,
) -> None:
    """Add a tenant. With the endpoint reachable it connects once as the tenant and stores its
    accepted domains (active); otherwise it is stored pending and a worker validates it."""
    from pathlib import Path

    from service.errors import Conflict, InvalidInput
    from service.persistence import tenants
    from service.persistence.db import Database
    from service.persistence.types import utcnow
    from service.security.sealing import Sealer

    password = None
    if ps_password_file:
        try:
            password = Path(ps_password_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            fail(f"--ps-password-file: {error.strerror or error}")
    try:
        new = tenants.check(
            tenants.NewTenant(
                name=name,
                organization=organization,
                app_id=app_id,
                cert_thumbprint=cert_thumbprint,
                tenant_id=tenant_id,
                password_backend=password_backend,
                ps_server=ps_server,
                ps_port=ps_port,
                ps_ssl=ps_ssl,
                ps_auth=ps_auth,
                ps_username=ps_username,
                ps_password=password,
                ps_configuration_name=ps_configuration_name,
            )
        )
    except InvalidInput as error:
        fail(f"{error.context.get('field', 'tenant')}: {error.message}")
    settings = settings_for_cli()
    sealed = None
    if password is not None:
        box = Sealer(settings.secret_keys).seal(password, context=f"tenant:{new.name}")
        sealed = (box.key_id, box.blob)

    async def add() -> Any:
        db = Database.for_cli(settings)
        try:
            return await tenants.add(db, row=tenants.row_for(new, sealed_password=sealed, now=utcnow()))
        finally:
            await db.dispose()

    try:
        record = run(add())
    except Conflict as error:
        fail(error.message)
    if validate and (settings.ps_server or new.ps_server):
        record = run(_validate_tenant(settings, new.name, timeout))
    typer.echo(
        f"tenant {record.name}: {record.status.value}" + (f" ({record.status_detail})" if record.status_detail else "")
    )


@tenants_app.command("list")
def tenants_list() -> None:
    """Every tenant: the settings' own (default) and the stored ones, with their status."""
    from service.persistence import tenant_facts, tenants

    settings = settings_for_cli()

    async def fetch(db: Database) -> Any:
        out = []
        for tenant in await tenants.every(db, settings):
            facts = await tenant_facts.load(db, tenant=tenant.name)
            out.append((tenant, facts.accepted_domains))
        return out

    rows = _with_database(settings, fetch)
    typer.echo(f"{'NAME':16}  {'STATUS':9}  {'ORGANIZATION':32}  DOMAINS")
    for tenant, domains in rows:
        shown = ", ".join(domains) if domains is not None else "(not read yet)"
        typer.echo(f"{tenant.name:16}  {tenant.status.value:9}  {tenant.organization or '-':32}  {shown}")


@tenants_app.command("show")
def tenants_show(name: Annotated[str, typer.Argument(help="The tenant's name.")]) -> None:
    """One tenant's settings (never its remoting password) and status."""
    from service.errors import TenantNotFound
    from service.persistence import tenants

    settings = settings_for_cli()

    async def fetch(db: Database) -> Any:
        return await tenants.get(db, settings, name.strip().lower())

    try:
        _print_tenant(_with_database(settings, fetch))
    except TenantNotFound as error:
        fail(error.message)


@tenants_app.command("disable")
def tenants_disable(name: Annotated[str, typer.Argument(help="The tenant's name.")]) -> None:
    """Take no new cases for the tenant (its cases stay, with their history)."""
    from service.errors import Conflict, TenantNotFound
    from service.persistence import tenants
    from service.persistence.db import Database
    from service.persistence.types import utcnow

    settings = settings_for_cli()

    async def change() -> Any:
        db = Database.for_cli(settings)
        try:
            return await tenants.disable(db, name=name.strip().lower(), now=utcnow())
        finally:
            await db.dispose()

    try:
        record = run(change())
    except (TenantNotFound, Conflict) as error:
        fail(error.message)
    typer.echo(f"tenant {record.name}: {record.status.value}")


@app.command()
def openapi(
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Write the OpenAPI description of the HTTP API (JSON)."""
    import json
    from pathlib import Path

    from service.api.app import create_app
    from service.persistence.db import Database
    from service.runtime import Runtime

    settings = settings_for_cli()
    spec = create_app(Runtime(settings=settings, db=Database.for_cli(settings))).openapi()
    text = json.dumps(spec, indent=2)
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {output} ({len(spec['paths'])} paths)")
    else:
        typer.echo(text)


# --- audit ------------------------------------------------------------------------------


def _check_chain(settings: Settings, expect: Head | None = None) -> ChainReport:
    """The chain's report, once it verifies; else one line naming the first bad record, exit 1."""
    from service.persistence import audit
    from service.persistence.db import Database

    signer = _audit_signer(settings)

    async def check() -> ChainReport:
        db = Database.for_cli(settings)
        try:
            return await audit.check(db, signer=signer, expect=expect)
        finally:
            await db.dispose()

    report = run(check())
    if report.broken is not None:
        fail(f"audit log broken at record {report.broken.seq}: {report.broken.reason}", code=1)
    return report


@audit_app.command("verify")
def audit_verify(
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            metavar="SEQ:MAC",
            help="A head printed earlier by `unblock audit head`: fail unless the chain still holds it.",
        ),
    ] = None,
) -> None:
    """Check the audit log's keyed MAC chain; exit 1 naming the first record that does not verify.

    The chain proves that no record was edited, inserted or removed by anyone without the audit
    key; that none was cut off the end needs --expect-head with a head kept elsewhere.
    """
    from service.domain.audit import parse_head

    try:
        expect = parse_head(expect_head) if expect_head is not None else None
    except ValueError as error:
        fail(f"--expect-head: {error}")
    report = _check_chain(settings_for_cli(), expect)
    held = f", including head {expect.seq}" if expect is not None else ""
    typer.echo(f"audit log intact: {report.count} records{held}")


@audit_app.command("head")
def audit_head() -> None:
    """Print the newest record as SEQ:MAC, once the chain verifies; keep it where the database's writers cannot.

    A later `unblock audit verify --expect-head SEQ:MAC` then also detects records cut off the end
    of the log, or a log rewritten from before that record.
    """
    head = _check_chain(settings_for_cli()).head
    if head is None:
        fail("the audit log is empty: there is no head yet", code=1)
    typer.echo(str(head))


@audit_app.command("list")
def audit_list(limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the latest.")] = 50) -> None:
    """Print the latest audit records."""
    from service.persistence import audit
    from service.persistence.db import Database

    settings = settings_for_cli()

    async def fetch() -> Any:
        db = Database.for_cli(settings)
        try:
            return await audit.recent(db, limit=limit)
        finally:
            await db.dispose()

    for row in run(fetch()):
        typer.echo(
            f"{row.seq:>6}  {row.at.isoformat(timespec='seconds')}  {row.actor:24}  {row.action:22}  "
            f"{row.target or '-':26}  {row.actor_kind}:{row.actor_id}"
        )


# --- retention ----------------------------------------------------------------------------

_MIN_RETENTION = 86_400.0


@app.command()
def purge(
    older_than: Annotated[
        str, typer.Option("--older-than", metavar="DURATION", help="Delete what closed before this long ago (400d).")
    ],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
) -> None:
    """Delete closed cases (with their steps, timeline and events) older than the retention period.

    Open cases are never deleted, nor the audit log; each batch is one transaction and is itself
    recorded in the audit log. Run it daily (cron, a Kubernetes CronJob) on one machine.
    """
    from datetime import UTC, datetime

    from service.persistence import retention
    from service.persistence.db import Database
    from service.persistence.migrate import current_revision, head_revision

    try:
        seconds = parse_duration(older_than)
    except ValueError as error:
        fail(f"--older-than: {error}")
    if seconds < _MIN_RETENTION:
        fail("--older-than must be at least 1d (a shorter period would delete cases still being worked on)")
    settings = settings_for_cli()
    signer = None if dry_run else _audit_signer(settings)
    if current_revision(settings.database_url) != head_revision(settings.database_url):
        fail("the database schema is not current; run `unblock migrate` first")

    async def go() -> retention.PurgeReport:
        db = Database.for_cli(settings)
        try:
            now = datetime.now(UTC)
            cutoff = now - timedelta(seconds=seconds)
            if signer is None:
                return await retention.count(db, cutoff=cutoff)
            return await retention.purge(db, cutoff=cutoff, now=now, actor=_cli_actor(), signer=signer)
        finally:
            await db.dispose()

    report = run(go())
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"{verb} {report.cases} closed cases, {report.outbox_events} events, "
        f"{report.idempotency_records} idempotency records, {report.restricted_senders} cleared senders"
    )


# --- cases ------------------------------------------------------------------------------


def _case_runtime(settings: Settings) -> Any:
    from service.serving import build_runtime

    return build_runtime(settings, tenant=False)


async def _fetch_case(runtime: Any, case_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from service.persistence import snapshots
    from service.persistence.records import case_document, event_document

    case = await snapshots.get_case(runtime.db, case_id=case_id)
    events = await snapshots.list_events(runtime.db, case_id=case_id)
    return case_document(case), [event_document(e) for e in events]


async def _watch(runtime: Any, case_id: str) -> dict[str, Any]:
    from service.progress import watch

    return await watch(lambda: _fetch_case(runtime, case_id))


def _close(runtime: Any) -> Coroutine[Any, Any, None]:
    async def close() -> None:
        if runtime.gateway is not None:
            await runtime.gateway.close()
        await runtime.db.dispose()

    return close()


@case_app.command("open")
def case_open(
    mailbox: Annotated[str, typer.Argument(metavar="MAILBOX", help="The restricted sender, e.g. rob@contoso.com.")],
    ticket: Annotated[str | None, typer.Option("--ticket", help="Your ticket reference.")] = None,
    watch_it: Annotated[bool, typer.Option("--watch", help="Show live progress until the case ends.")] = False,
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="The mailbox's tenant (default: the one whose accepted domains hold it)."),
    ] = None,
) -> None:
    """Open a case (the same path as POST /v1/cases); the running worker picks it up."""
    import getpass
    import json

    from pydantic import ValidationError

    from service.api.operations import open_case
    from service.api.schemas import CaseCreate
    from service.domain.tenancy import check_name
    from service.errors import InvalidInput

    try:
        tenant = check_name(tenant) if tenant is not None else None
    except InvalidInput as error:
        fail(f"--tenant {tenant!r}: {error.message}")
    try:
        body = CaseCreate(mailbox=mailbox, ticket_ref=ticket, requested_by=getpass.getuser(), tenant=tenant)
    except ValidationError as error:
        fail(f"{mailbox!r}: {error.errors()[0]['msg'].removeprefix('Value error, ')}")
    settings = settings_for_cli()
    runtime = _case_runtime(settings)
    actor = f"cli:{getpass.getuser()}"

    async def go() -> dict[str, Any]:
        try:
            stored = await open_case(runtime, body, actor=actor, principal_id=actor, principal_kind="cli")
            if watch_it:
                return await _watch(runtime, stored.body["id"])
            return stored.body
        finally:
            await _close(runtime)

    try:
        case = run(go())
    except ServiceError as error:
        from service.errors import OpenCaseExists

        if isinstance(error, OpenCaseExists):
            fail(f"{mailbox} already has an open case: {error.case_id}")
        raise
    typer.echo(json.dumps(case, indent=2))


@case_app.command("show")
def case_show(case_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Print a case as JSON."""
    import json

    settings = settings_for_cli()
    runtime = _case_runtime(settings)

    async def go() -> dict[str, Any]:
        try:
            case, _ = await _fetch_case(runtime, case_id)
            return case
        finally:
            await _close(runtime)

    typer.echo(json.dumps(run(go()), indent=2))


@case_app.command("watch")
def case_watch(case_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
    """Show a case's progress live until it ends."""
    settings = settings_for_cli()
    runtime = _case_runtime(settings)

    async def go() -> dict[str, Any]:
        try:
            return await _watch(runtime, case_id)
        finally:
            await _close(runtime)

    run(go())


# --- entry point ------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every expected failure is one line on stderr and exit status 2."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="unblock", standalone_mode=False)
    except typer.Abort:
        typer.echo("unblock: aborted", err=True)
        return 130
    except typer.TyperException as error:
        ctx = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError" and ctx is not None:
            # `unblock` or `unblock keys` alone: the help itself, as written, is the useful answer.
            # (Matched by name: Typer vendors click, so the class lives in a private module.)
            typer.echo(ctx.get_help(), err=True)
            return 2
        # Usage errors (unknown option, missing parameter, bad value) from Typer's click.
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"unblock: error: {_one_line(message)}{hint}", err=True)
        return 2
    except CliError as error:
        typer.echo(f"unblock: error: {_one_line(str(error))}", err=True)
        return error.code
    except SettingsError as error:
        typer.echo(f"unblock: configuration error: {_one_line(str(error))}", err=True)
        return 2
    except (InvalidInput, NotFound) as error:
        typer.echo(f"unblock: error: {_one_line(error.message)}", err=True)
        return 2
    except ServiceError as error:
        typer.echo(f"unblock: error: {_one_line(error.message)}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the promise is one line, never a traceback
        typer.echo(f"unblock: internal error: {type(error).__name__}: {_one_line(str(error))}", err=True)
        return 1
    return result if isinstance(result, int) else 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
