"""Liveness and readiness: what a load balancer and an orchestrator ask."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.deps import RuntimeDep
from service.api.problems import problem_doc, problem_response
from service.errors import ServiceError
from service.logging import get_logger

router = APIRouter(tags=["health"])
log = get_logger(__name__)

READY_TIMEOUT = 3.0
READY_RETRY_AFTER = 5


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", summary="Liveness", response_model=Health, description="Answers while the process runs.")
async def healthz() -> Health:
    return Health(status="ok")


async def _check(name: str, probe: Any) -> tuple[str, str]:
    try:
        await asyncio.wait_for(probe(), READY_TIMEOUT)
    except TimeoutError:
        return name, "timeout"
    except ServiceError as error:
        return name, f"unavailable: {error.message}"
    except Exception as error:  # noqa: BLE001 - any failure means "not ready", never a 500
        log.warning("readiness_check_failed", check=name, error_class=type(error).__name__)
        return name, f"unavailable: {type(error).__name__}"
    return name, "ok"


class Component(StrEnum):
    powershell = "powershell"


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=Readiness,
    description=(
        "200 whenever the database answers: the process can accept and store cases, so a tenant or runner-host "
        "outage never takes it out of a load balancer. `checks` lists each component's status (`powershell` only "
        "in processes that run a worker: `ok` or `unavailable: ...`). With `require=powershell` the PowerShell "
        "endpoint must answer too (503 naming it otherwise), for monitoring."
    ),
    responses={503: problem_doc("the database (or a required component) is not ready", retry_after=True)},
)
async def readyz(
    runtime: RuntimeDep,
    request: Request,
    require: Annotated[
        list[Component] | None, Query(description="components that must answer too (repeatable)")
    ] = None,
) -> Readiness | JSONResponse:
    probes: list[tuple[str, Any]] = [("database", runtime.db.ping)]
    if runtime.gateway is not None:
        probes.append((Component.powershell.value, runtime.gateway.probe))
    checks = dict(await asyncio.gather(*(_check(name, probe) for name, probe in probes)))
    required = {"database", *(c.value for c in require or [])}
    for name in required - set(checks):
        checks[name] = "not configured in this process (it runs no worker)"
    failing = sorted(name for name in required if checks[name] != "ok")
    if failing:
        return problem_response(
            status=503,
            code="not_ready",
            title="Not ready",
            detail="; ".join(f"{name}: {checks[name]}" for name in failing),
            instance=request.url.path,
            request_id=getattr(request.state, "request_id", None),
            headers={"Retry-After": str(READY_RETRY_AFTER)},
            checks=checks,
            failing=failing,
        )
    return Readiness(status="ready", checks=checks)
