"""FastAPI dependencies, as ``Annotated`` aliases routes can name in their signatures.

They are ``async def`` although they do not await: FastAPI runs plain ``def`` dependencies in
a thread pool, a hop that costs more than the work they do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from service.errors import InvalidInput
from service.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _declared_query(dependant: Dependant) -> frozenset[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _declared_query(sub)
    return frozenset(names)


_QUERY_NAMES: dict[int, frozenset[str]] = {}


async def strict_query(request: Request) -> None:
    """Refuse query parameters the operation does not have, and any given twice.

    A misspelt filter (``?State=failed``) would otherwise be ignored and the caller would act
    on every case instead of the failed ones. And frameworks differ on which copy of a repeated
    parameter wins, so a proxy and the service could read ``?state=a&state=b`` differently
    (HTTP parameter pollution); refusing is unambiguous.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _QUERY_NAMES.get(id(route))
    if declared is None:
        declared = _QUERY_NAMES[id(route)] = _declared_query(route.dependant)
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if key not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise InvalidInput(f"unknown query parameter {key!r} (this operation takes: {allowed})", field=key)
        if key in seen:
            raise InvalidInput(f"query parameter {key} is given more than once", field=key)
        seen.add(key)
