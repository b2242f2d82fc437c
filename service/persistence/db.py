"""Engines and transactions for SQLite (embedded default) and PostgreSQL (scale-out).

Two rules shape this module. Every state change is one transaction, opened with
:meth:`Database.write`. On SQLite a write transaction starts with ``BEGIN IMMEDIATE``: SQLite
has one writer at a time, and taking the write lock up front makes concurrent writers wait
(busy_timeout) instead of failing when a read transaction tries to upgrade. Reads use
:meth:`Database.read`. A database that cannot be reached surfaces as
:class:`~service.errors.Unavailable`, which the API answers with 503.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from service import metrics
from service.config import Settings
from service.errors import Unavailable
from service.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a process waits on PostgreSQL before it calls the database unavailable.

    ``connect`` bounds setting up a connection (libpq's connect_timeout), ``pool`` waiting for
    a pooled one, ``statement`` each statement on the server (PostgreSQL's statement_timeout;
    None for the CLI, whose migrations, purges and audit checks may run long). A frozen server
    enforces no statement_timeout of its own: the API bounds whole requests on top of this.
    """

    connect: float = 5.0
    pool: float = 30.0
    statement: float | None = None


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


def sqlite_file_missing(url: str) -> bool:
    """Does ``url`` name a SQLite file that does not exist yet? Opening it would create it, empty:
    a command that only looks (``unblock doctor`` before ``unblock migrate``) must not leave one behind."""
    if not url.startswith("sqlite"):
        return False
    path = make_url(url).database
    return bool(path) and path != ":memory:" and not Path(str(path)).exists()


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # The busy timeout first, so the statements after it wait for a lock instead of failing. The
        # journal mode is switched only when it is not WAL yet, and a switch that finds the database
        # busy is left to a later connection: the switch needs the database to itself and answers
        # "database is locked" at once (SQLite does not apply the busy handler to it), which two
        # processes opening a new database together hit. WAL is persistent, so one switch is enough;
        # until it happens the connection works in the rollback journal, waiting on busy_timeout.
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() != "wal":
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as error:
                if "locked" not in str(error):
                    raise
                log.debug("sqlite_wal_switch_deferred", detail=str(error))
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _consume(task: asyncio.Future[Any]) -> None:
    """Read an abandoned task's outcome so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()


def _is_disconnect(error: DBAPIError) -> bool:
    return bool(error.connection_invalidated) or isinstance(error, OperationalError | InterfaceError)


def _connect_args(timeouts: Timeouts) -> dict[str, Any]:
    # bytea_output=escape: the stored case documents are JSON, nearly all printable ASCII, which the
    # escape form sends as is; the default hex form sends every byte as two. A list page of 50
    # documents is half the bytes to read and costs psycopg about 30% less CPU; the bytes read back
    # are the same (libpq decodes either form).
    settings = ["bytea_output=escape"]
    if timeouts.statement is not None:
        settings.append(f"statement_timeout={math.ceil(timeouts.statement * 1000)}")
    return {
        "connect_timeout": max(2, math.ceil(timeouts.connect)),  # libpq: whole seconds, >= 2
        "options": " ".join(f"-c {setting}" for setting in settings),
    }


class Database:
    """The service's handle on its database; one per process.

    It also knows whether the database is up: the first operation that fails because the
    database cannot be reached logs ``database_unavailable`` (a warning: the service is built
    to wait an outage out) and sets ``unblock_database_up`` to 0; the first that succeeds
    afterwards logs ``database_available``. One pair per outage, however many operations failed.
    """

    @classmethod
    def for_service(cls, settings: Settings) -> Database:
        """serve and worker: every wait on the database is bounded by the UNBLOCK_DB_* timeouts."""
        timeouts = Timeouts(
            connect=settings.db_connect_timeout, pool=settings.db_pool_timeout, statement=settings.db_statement_timeout
        )
        return cls(settings.database_url, pool_size=settings.db_pool_size, timeouts=timeouts)

    @classmethod
    def for_cli(cls, settings: Settings) -> Database:
        """The CLI: a connect timeout only, since migrations, purges and audit checks may run long."""
        return cls(settings.database_url, timeouts=Timeouts(connect=settings.db_connect_timeout))

    def __init__(self, url: str, *, pool_size: int = 20, timeouts: Timeouts | None = None) -> None:
        self.url = url
        self.timeouts = timeouts or Timeouts()
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self.up = True
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
                pool_timeout=self.timeouts.pool,
                pool_pre_ping=True,
                pool_recycle=1800,
                # The connection used last goes out first: the few a steady load needs stay warm,
                # with the statements psycopg has prepared on them (it prepares a statement on a
                # connection after its fifth run there; a queue spread over 20 connections rarely got there).
                pool_use_lifo=True,
                connect_args=_connect_args(self.timeouts),
            )
            self._read_engine = self.engine
        self._writer = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._reader = async_sessionmaker(self._read_engine, class_=AsyncSession, expire_on_commit=False)

    # --- outages ----------------------------------------------------------------------------------

    def _unavailable(self, error: BaseException) -> Unavailable:
        if self.up:
            self.up = False
            metrics.DATABASE_UP.set(0)
            metrics.DATABASE_OUTAGES.inc()
            log.warning(
                "database_unavailable", error_class=type(error).__name__, detail=str(error).splitlines()[0][:200]
            )
        if isinstance(error, PoolTimeout):
            return Unavailable(f"the database is unavailable (no connection free within {self.timeouts.pool:g}s)")
        return Unavailable("the database is unavailable")

    def _available(self) -> None:
        if not self.up:
            self.up = True
            metrics.DATABASE_UP.set(1)
            log.info("database_available")

    def _translate(self, error: BaseException) -> BaseException:
        if isinstance(error, PoolTimeout) or (isinstance(error, DBAPIError) and _is_disconnect(error)):
            return self._unavailable(error)
        return error

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        try:
            async with self._writer() as session, session.begin():
                yield session
        except (DBAPIError, PoolTimeout) as error:
            raise self._translate(error) from error
        self._available()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads. Its transaction ends with COMMIT, not the ROLLBACK a closed session
        sends: the same to PostgreSQL for a transaction that wrote nothing, but psycopg forgets every
        statement it prepared on a connection that rolls back, and the writer's would be parsed again."""
        try:
            async with self._reader() as session:
                yield session
                if session.in_transaction():
                    await session.commit()
        except (DBAPIError, PoolTimeout) as error:
            raise self._translate(error) from error
        self._available()

    @asynccontextmanager
    async def connect_read(self) -> AsyncIterator[AsyncConnection]:
        """A plain connection for Core reads: no ORM session to set up and tear down.

        On PostgreSQL it runs in autocommit: each statement is its own transaction, as in READ
        COMMITTED a statement sees what was committed before it either way, and there is no BEGIN
        to send nor a ROLLBACK when it goes back to the pool (two round trips of the three a
        one-statement read cost; psycopg sends nothing to roll back an idle connection).
        """
        try:
            async with self._read_engine.connect() as connection:
                if self.is_postgres:
                    await connection.execution_options(isolation_level="AUTOCOMMIT")
                yield connection
        except (DBAPIError, PoolTimeout) as error:
            raise self._translate(error) from error
        self._available()

    async def ping(self, budget: float = 3.0) -> None:
        """Does the database answer within ``budget`` seconds? Never takes longer, whatever the server does.

        On PostgreSQL it uses a connection of its own (not the pool, which a frozen server may have
        exhausted) and does not wait for a query that overruns to be cancelled: that finishes in
        the background.
        """
        if not self.is_postgres:
            async with self.connect_read() as connection:
                await connection.execute(text("SELECT 1"))
            return
        probe = asyncio.ensure_future(self._probe(budget))
        done, _ = await asyncio.wait({probe}, timeout=budget)
        if probe not in done:
            probe.cancel()
            probe.add_done_callback(_consume)
            raise self._unavailable(TimeoutError(f"no answer within {budget:g}s"))
        try:
            probe.result()
        except Exception as error:
            raise self._unavailable(error) from error
        self._available()

    async def _probe(self, budget: float) -> None:
        import psycopg

        from service.persistence.listen import conninfo

        connection = await psycopg.AsyncConnection.connect(
            conninfo(self.url), autocommit=True, connect_timeout=max(2, math.ceil(budget))
        )
        try:
            await connection.execute("SELECT 1")
        finally:
            await connection.close()

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._read_engine is not self.engine:
            await self._read_engine.dispose()
