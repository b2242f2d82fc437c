"""Assembling a process: the API under uvicorn, with whatever runs beside it.

Kept apart from the CLI so that tests and the demo start exactly what ``unblock serve``
starts.
"""

from __future__ import annotations

import uvicorn

from service.api.app import create_app
from service.config import Settings
from service.logging import get_logger
from service.persistence.db import Database
from service.persistence.migrate import upgrade
from service.runtime import Runtime

log = get_logger(__name__)


def build_runtime(settings: Settings) -> Runtime:
    return Runtime(settings=settings, db=Database(settings.database_url))


def serve_forever(settings: Settings, *, host: str, port: int, worker: bool, migrate: bool) -> None:
    if migrate:
        upgrade(settings.database_url)
    runtime = build_runtime(settings)
    app = create_app(runtime)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on")
    log.info("serving", url=f"http://{host}:{port}", worker=worker)
    uvicorn.Server(config).run()
