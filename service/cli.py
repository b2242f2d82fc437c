"""``unblock``: the command line (contract section 2).

Every command reads its configuration from the environment. Bad input gives one line on
stderr and exit status 2, never a traceback: :func:`main` is the only entry point and it
turns every expected error into that line.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from service import __version__
from service.config import Settings, SettingsError, load_settings, parse_duration
from service.errors import InvalidInput, NotFound, ServiceError
from service.logging import configure as configure_logging

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


def _cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


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
    upgrade(settings.database_url)
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
        int | None, typer.Option(min=1, max=256, help="Cases run at once (default: the PowerShell pool size).")
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
        upgrade(settings.database_url)
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


# --- keys -------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key, e.g. servicenow.")],
    scope: Annotated[list[str], typer.Option("--scope", help="A scope; repeat for several.")],
    expires_in: Annotated[
        str | None, typer.Option("--expires-in", help="Lifetime, e.g. 90d or 12h; default: no expiry.")
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
    try:
        scopes = parse_scopes(scope)
        lifetime = parse_duration(expires_in) if expires_in else None
    except ValueError as error:
        fail(str(error))
    settings = settings_for_cli()

    async def create() -> Any:
        from service.persistence.types import utcnow

        db = Database(settings.database_url)
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
                actor=_cli_actor(),
            )
            return record, new.plaintext
        finally:
            await db.dispose()

    record, plaintext = run(create())
    typer.echo(f"created API key {record.id} named {record.name!r} ({record.prefix}) with scopes {', '.join(scopes)}")
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
        db = Database(settings.database_url)
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

    async def revoke() -> Any:
        db = Database(settings.database_url)
        try:
            return await key_rows.revoke_key(db, key_id=key_id, actor=_cli_actor())
        finally:
            await db.dispose()

    record = run(revoke())
    typer.echo(f"revoked API key {record.id} ({record.prefix}, {record.name!r})")


@keys_app.command("secret")
def keys_secret() -> None:
    """Print a new random value for UNBLOCK_SECRET_KEY."""
    from service.security.keys import generate_secret_key

    typer.echo(generate_secret_key())


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
    spec = create_app(Runtime(settings=settings, db=Database(settings.database_url))).openapi()
    text = json.dumps(spec, indent=2)
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
        typer.echo(f"wrote {output} ({len(spec['paths'])} paths)")
    else:
        typer.echo(text)


# --- audit ------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit log's hash chain; exit 1 naming the first record that does not match."""
    from service.persistence import audit
    from service.persistence.db import Database

    settings = settings_for_cli()

    async def check() -> Any:
        db = Database(settings.database_url)
        try:
            return await audit.check(db)
        finally:
            await db.dispose()

    count, broken = run(check())
    if broken is not None:
        fail(f"audit log broken at record {broken.seq}: {broken.reason}", code=1)
    typer.echo(f"audit log intact: {count} records")


@audit_app.command("list")
def audit_list(limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many of the latest.")] = 50) -> None:
    """Print the latest audit records."""
    from service.persistence import audit
    from service.persistence.db import Database

    settings = settings_for_cli()

    async def fetch() -> Any:
        db = Database(settings.database_url)
        try:
            return await audit.recent(db, limit=limit)
        finally:
            await db.dispose()

    for row in run(fetch()):
        typer.echo(
            f"{row.seq:>6}  {row.at.isoformat(timespec='seconds')}  {row.actor:24}  {row.action:22}  {row.target or ''}"
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
    if current_revision(settings.database_url) != head_revision(settings.database_url):
        fail("the database schema is not current; run `unblock migrate` first")

    async def go() -> retention.PurgeReport:
        db = Database(settings.database_url)
        try:
            now = datetime.now(UTC)
            cutoff = now - timedelta(seconds=seconds)
            if dry_run:
                return await retention.count(db, cutoff=cutoff)
            return await retention.purge(db, cutoff=cutoff, now=now, actor=_cli_actor())
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

    return build_runtime(settings.model_copy(update={"ps_open_lazily": True}))


async def _fetch_case(runtime: Any, case_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from service.api.schemas import CasePublic, EventPublic
    from service.persistence import cases

    case = await cases.get_case(runtime.db, case_id=case_id)
    events = await cases.list_events(runtime.db, case_id=case_id)
    return CasePublic.of(case).model_dump(mode="json"), [EventPublic.of(e).model_dump(mode="json") for e in events]


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
) -> None:
    """Open a case (the same path as POST /v1/cases); the running worker picks it up."""
    import getpass
    import json

    from pydantic import ValidationError

    from service.api.operations import open_case
    from service.api.schemas import CaseCreate

    try:
        body = CaseCreate(mailbox=mailbox, ticket_ref=ticket, requested_by=getpass.getuser())
    except ValidationError as error:
        fail(f"{mailbox!r}: {error.errors()[0]['msg'].removeprefix('Value error, ')}")
    settings = settings_for_cli()
    runtime = _case_runtime(settings)
    actor = f"cli:{getpass.getuser()}"

    async def go() -> dict[str, Any]:
        try:
            stored = await open_case(runtime, body, actor=actor, principal_id=actor)
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
