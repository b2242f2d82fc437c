"""FastAPI dependencies, as ``Annotated`` aliases routes can name in their signatures."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.persistence.db import Database
from service.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_db(request: Request) -> Database:
    return get_runtime(request).db


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
DatabaseDep = Annotated[Database, Depends(get_db)]
