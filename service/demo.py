"""`make demo`: the whole procedure for rob@contoso.com against the sandbox tenant, live.

It starts what `unblock serve --sandbox` starts (the API, the worker, the PowerShell bridge,
and the sandbox tenant in this process), opens a case for rob@contoso.com through the HTTP API,
shows its progress step by step until it is resolved, prints the case and what the tenant
received, and leaves the API running until Ctrl-C. Only the propagation wait is shortened (from
Microsoft's hours to seconds); everything else runs as in production. The demo keeps its own
database, ``unblock-demo.db``, recreated on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.json import JSON
from rich.table import Table

from service.api.app import create_app
from service.config import SettingsError, load_settings
from service.domain.audit import Actor
from service.logging import configure
from service.persistence import keys as key_rows
from service.persistence.migrate import upgrade
from service.progress import watch
from service.security.keys import generate_key
from service.security.scopes import ALL_SCOPES
from service.serving import bind_socket, build_runtime, sandbox_for, services

DEMO_DB = Path("unblock-demo.db")
MAILBOX = "rob@contoso.com"


def _fresh_database() -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{DEMO_DB}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///./{DEMO_DB}"


async def _run(console: Console, port: int, wait: float, stay: bool) -> int:
    url = _fresh_database()
    settings = load_settings(
        database_url=url,
        sandbox=True,
        propagation_wait=wait,
        recheck_interval=max(1.0, wait / 4),
        log_level="warning",
    )
    upgrade(url, audit_keys=settings.audit_keys)
    sock = bind_socket("127.0.0.1", port)
    port = int(sock.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    with sandbox_for(settings) as effective:
        runtime = build_runtime(effective)
        app = create_app(runtime, background=services(runtime, worker=True))
        server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", proxy_headers=False)
        )
        serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serving.done():
                await serving
                return 1
            await asyncio.sleep(0.02)
        new = generate_key()
        await key_rows.create_key(
            runtime.db,
            name="demo",
            prefix=new.prefix,
            key_hash=new.key_hash,
            scopes=sorted(ALL_SCOPES),
            actor=Actor.service("demo"),
            signer=runtime.audit_signer,
        )
        sandbox_url = f"http://{effective.ps_server}:{effective.ps_port}/_sandbox"
        console.print(f"[bold]API[/] {base}  (docs: {base}/docs)   [bold]sandbox tenant[/] {sandbox_url}/state")
        console.print("[bold]API key[/] (all scopes, for this demo):", new.plaintext, "\n", soft_wrap=True)
        headers = {"Authorization": f"Bearer {new.plaintext}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
            response = await client.post(
                "/v1/cases", json={"mailbox": MAILBOX, "ticket_ref": "DEMO-1", "requested_by": "make demo"}
            )
            if response.status_code != 201:
                console.print(f"[red]could not open the case: {response.status_code} {response.text}[/]")
                return 1
            case_id = response.json()["id"]
            console.print(f"opened case {case_id} for {MAILBOX} (POST /v1/cases)\n")

            async def fetch() -> tuple[dict[str, Any], list[dict[str, Any]]]:
                case = (await client.get(f"/v1/cases/{case_id}")).json()
                events = (await client.get(f"/v1/cases/{case_id}/events")).json()["items"]
                return case, events

            final = await watch(fetch, console=console)
            console.print("\n[bold]The case[/] (GET /v1/cases/{id}):")
            console.print(JSON.from_data(final))
            calls = (await client.get(f"{sandbox_url}/calls")).json()
        _print_calls(console, calls)
        console.print("\nThe temporary password waits, sealed, to be revealed once:")
        console.print(
            f"  curl -X POST -H 'Authorization: Bearer {new.plaintext}' {base}/v1/cases/{case_id}/credential/reveal\n",
            soft_wrap=True,
            markup=False,
        )
        if stay:
            console.print(f"[bold]The API keeps running on {base}[/] - press Ctrl-C to stop.")
            await serving
        else:
            server.should_exit = True
            await serving
        return 0 if final.get("outcome") == "unblocked" else 1


def _print_calls(console: Console, calls: list[dict[str, Any]]) -> None:
    table = Table(title="what the sandbox tenant received (GET /_sandbox/calls)", title_justify="left")
    for column in ("seq", "runspace", "command", "outcome"):
        table.add_column(column)
    for call in calls:
        table.add_row(str(call["seq"]), call["runspace"][-10:], call["cmdlet"], call["outcome"])
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    parser.add_argument("--wait", type=float, default=20.0, help="propagation wait in seconds (default 20)")
    parser.add_argument("--exit", action="store_true", help="stop when the case is resolved")
    args = parser.parse_args(argv)
    console = Console()
    configure("console", "warning")
    console.print(
        "[bold cyan]unblock-service demo[/]: Microsoft's procedure for a restricted sender, run by the service "
        "against the sandbox tenant.\n"
        f"Only the propagation wait is shortened: {args.wait:g} seconds instead of Microsoft's hours "
        "(UNBLOCK_PROPAGATION_WAIT). Everything else runs as in production. "
        f"Database: {DEMO_DB} (recreated each run).\n"
    )
    try:
        return asyncio.run(_run(console, args.port, args.wait, stay=not args.exit))
    except SettingsError as error:
        console.print(f"[red]make demo: {error}[/]")
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
