"""The stack's floor for `GET /v1/cases/{id}` and the list page: the same stored rows, served by the
least code that can.

Starlette on uvicorn (the same server, event loop and HTTP parser as `unblock serve`) and psycopg
(the same driver), with nothing else: no FastAPI dependencies, no authentication, no middleware,
no logging or metrics, no SQLAlchemy. The bench serves the same requests from it and from the
service in the same run, so the API's cost reads as a ratio to what these parts can do on this
machine, whatever the machine.

    python -m bench.floor --database-url postgresql://... --port 8123 [--stack fastapi]

``--stack fastapi`` serves it through the service's frameworks instead (FastAPI, SQLAlchemy),
still without any of the service's own code, to tell the frameworks' cost from the service's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.serving import bind_socket

CONNECTIONS = 20  # as many as the service keeps by default (UNBLOCK_DB_POOL_SIZE)


class Connections:
    """A fixed set of autocommit connections handed out in turn (what a pool does, minus its checks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.idle: asyncio.Queue[psycopg.AsyncConnection[tuple[bytes | None]]] = asyncio.Queue()

    async def open(self) -> None:
        for _ in range(CONNECTIONS):
            self.idle.put_nowait(await psycopg.AsyncConnection.connect(self.url, autocommit=True))

    async def close(self) -> None:
        while not self.idle.empty():
            await self.idle.get_nowait().close()

    async def document(self, case_id: str) -> bytes | None:
        connection = await self.idle.get()
        try:
            cursor = await connection.execute("SELECT document FROM cases WHERE id = %s", (case_id,))
            row = await cursor.fetchone()
        finally:
            self.idle.put_nowait(connection)
        return None if row is None else row[0]

    async def page(self, state: str, limit: int) -> list[bytes]:
        connection = await self.idle.get()
        try:
            cursor = await connection.execute(
                # the service's page for a terminal state (service.persistence.snapshots._page): the
                # state, and that the case is closed, so both read ix_cases_closed_created
                "SELECT document FROM cases WHERE state = %s AND NOT is_open"
                " ORDER BY created_at DESC, id DESC LIMIT %s",
                (state, limit + 1),
            )
            rows = await cursor.fetchall()
        finally:
            self.idle.put_nowait(connection)
        return [bytes(row[0]) for row in rows[:limit] if row[0] is not None]


def app(url: str) -> Starlette:
    connections = Connections(url)

    async def case(request: Request) -> Response:
        body = await connections.document(request.path_params["case_id"])
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type="application/json")

    async def cases(request: Request) -> Response:
        """The list page as the service answers it: the stored documents joined (no cursor)."""
        items = await connections.page(request.query_params["state"], int(request.query_params.get("limit", 50)))
        return Response(b'{"items":[' + b",".join(items) + b'],"next_cursor":null}', media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await connections.open()
        yield
        await connections.close()

    return Starlette(routes=[Route("/v1/cases/{case_id}", case), Route("/v1/cases", cases)], lifespan=lifespan)


def framework_app(url: str) -> FastAPI:
    """The frameworks the service is built on, with nothing of the service's own: FastAPI and a
    SQLAlchemy async engine (psycopg, the service's pool settings), one route, one Core query, no
    authentication, middleware, logging or metrics. Between this and :func:`app` lies what the
    frameworks cost; between this and the service, what the service's own request path costs."""
    engine = create_async_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=CONNECTIONS, max_overflow=0
    )
    query = text("SELECT document FROM cases WHERE id = :id")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    api = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @api.get("/v1/cases/{case_id}")
    async def case(case_id: str) -> Response:
        async with engine.connect() as connection:
            body = (await connection.execute(query, {"id": case_id})).scalar()
        if body is None:
            return Response(status_code=404)
        return Response(body, media_type="application/json")

    return api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True, help="a libpq URL (postgresql://...)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--stack", choices=["starlette", "fastapi"], default="starlette", help="starlette + psycopg, or the frameworks"
    )
    args = parser.parse_args()
    served = app(args.database_url) if args.stack == "starlette" else framework_app(args.database_url)
    config = uvicorn.Config(served, log_config=None, access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[bind_socket("127.0.0.1", args.port)])


if __name__ == "__main__":
    main()
