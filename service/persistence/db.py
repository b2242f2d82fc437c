"""Engines and transactions for SQLite (embedded default) and PostgreSQL (scale-out).

Two rules shape this module. Every state change is one transaction, opened with
:meth:`Database.write`. On SQLite a write transaction starts with ``BEGIN IMMEDIATE``: SQLite
has one writer at a time, and taking the write lock up front makes concurrent writers wait
(busy_timeout) instead of failing when a read transaction tries to upgrade. Reads use
:meth:`Database.read`. A database that cannot be reached surfaces as
:class:`~service.errors.Unavailable`, which the API answers with 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from service.errors import Unavailable


def async_url(url: str) -> str:
    if url.startswith("sqlite+aiosqlite"):
        return url
    if url.startswith("sqlite"):
        return "sqlite+aiosqlite" + url.removeprefix("sqlite")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sync_url(url: str) -> str:
    if url.startswith("sqlite+aiosqlite"):
        return "sqlite" + url.removeprefix("sqlite+aiosqlite")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _is_disconnect(error: DBAPIError) -> bool:
    return bool(error.connection_invalidated) or isinstance(error, OperationalError | InterfaceError)


class Database:
    """The service's handle on its database; one per process."""

    def __init__(self, url: str, *, pool_size: int = 20) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(async_url(url), immediate=True)
            self._read_engine = _sqlite_engine(async_url(url), immediate=False)
        else:
            self.engine = create_async_engine(
                async_url(url),
                # A fixed set of connections: under a burst, requests wait their turn for one
                # rather than each opening (and closing) a PostgreSQL backend of its own.
                pool_size=pool_size,
                max_overflow=0,
                pool_pre_ping=True,
                pool_recycle=1800,
            )
            self._read_engine = self.engine
        self._writer = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._reader = async_sessionmaker(self._read_engine, class_=AsyncSession, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        try:
            async with self._writer() as session, session.begin():
                yield session
        except DBAPIError as error:
            if _is_disconnect(error):
                raise Unavailable("the database is unavailable") from error
            raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._reader() as session:
                yield session
        except DBAPIError as error:
            if _is_disconnect(error):
                raise Unavailable("the database is unavailable") from error
            raise

    @asynccontextmanager
    async def connect_read(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for Core reads: no ORM session to set up and tear down."""
        try:
            async with self._read_engine.connect() as connection:
                yield connection
        except DBAPIError as error:
            if _is_disconnect(error):
                raise Unavailable("the database is unavailable") from error
            raise

    async def ping(self) -> None:
        try:
            async with self._read_engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except DBAPIError as error:
            raise Unavailable("the database is unavailable") from error

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._read_engine is not self.engine:
            await self._read_engine.dispose()
