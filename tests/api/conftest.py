"""App fixtures: the real application over httpx's ASGI transport, on a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from service.api.app import create_app
from service.config import Settings
from service.persistence.db import Database
from service.runtime import Runtime
from tests.resolver import StubResolver


@pytest.fixture
def make_settings(database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"database_url": database_url, "secret_key": ["0" * 64]}
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
async def runtime(make_settings: Callable[..., Settings]) -> AsyncIterator[Runtime]:
    settings = make_settings()
    rt = Runtime(settings=settings, db=Database(settings.database_url), resolver=StubResolver())
    yield rt
    await rt.db.dispose()


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(runtime)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
