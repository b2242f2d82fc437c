"""Liveness and readiness: what a load balancer and an orchestrator ask."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.deps import RuntimeDep
from service.api.problems import problem_doc, problem_response
from service.errors import ServiceError
from service.logging import get_logger

router = APIRouter(tags=["health"])
log = get_logger(__name__)

READY_TIMEOUT = 3.0


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


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=Readiness,
    description="200 only when the database and the PowerShell endpoint answer; otherwise 503 naming the failing part.",
    responses={503: problem_doc("a dependency is not ready")},
)
async def readyz(runtime: RuntimeDep, request: Request) -> Readiness | JSONResponse:
    probes: list[tuple[str, Any]] = [("database", runtime.db.ping)]
    if runtime.gateway is not None:
        probes.append(("powershell", runtime.gateway.probe))
    checks = dict(await asyncio.gather(*(_check(name, probe) for name, probe in probes)))
    failing = [name for name, status in checks.items() if status != "ok"]
    if failing:
        return problem_response(
            status=503,
            code="not_ready",
            title="Not ready",
            detail="; ".join(f"{name}: {checks[name]}" for name in failing),
            instance=request.url.path,
            request_id=getattr(request.state, "request_id", None),
            checks=checks,
            failing=failing,
        )
    return Readiness(status="ready", checks=checks)
