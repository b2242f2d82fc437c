"""/metrics: Prometheus text format (no authentication; expose it only to your scraper's network)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.api.deps import RuntimeDep
from service.domain.states import CaseState
from service.domain.tenancy import DEFAULT_TENANT
from service.errors import Unavailable
from service.persistence import snapshots

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Cases by state, transitions, step and remote-call durations and failures, pool usage, "
    "webhook deliveries, discovery runs, HTTP requests.",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {
                CONTENT_TYPE_LATEST: {
                    "schema": {"type": "string"},
                    "example": "# HELP unblock_cases Cases by state (read from the database at scrape time)\n"
                    "# TYPE unblock_cases gauge\n"
                    'unblock_cases{state="resolved",tenant="default"} 12.0\n',
                }
            },
        }
    },
)
async def prometheus(runtime: RuntimeDep) -> Response:
    try:
        counts = await snapshots.count_by_state(runtime.db)
    except Unavailable:
        counts = {}
    metrics.CASES.clear()  # a tenant whose cases are gone leaves no stale series behind
    for tenant in {tenant for tenant, _ in counts} or {DEFAULT_TENANT}:
        for state in CaseState:
            metrics.CASES.labels(state=state.value, tenant=tenant or "").set(counts.get((tenant, state), 0))
    directory = runtime.gateways
    started = directory.started() if directory is not None else {}
    if not started and runtime.gateway is not None:
        started = {DEFAULT_TENANT: runtime.gateway}
    if started:  # a process with a worker: its tenants' pools and breakers
        metrics.POOL_SIZE.set(runtime.settings.ps_pool_size)
        metrics.POOL_RUNSPACES.clear()
        metrics.CIRCUIT_STATE.clear()
    for tenant, gateway in started.items():
        stats = getattr(gateway, "stats", None)  # the pypsrp bridge's; the port does not promise a pool
        if callable(stats):
            pool = stats()
            metrics.POOL_RUNSPACES.labels(state="in_use", tenant=tenant).set(pool.in_use)
            metrics.POOL_RUNSPACES.labels(state="idle", tenant=tenant).set(pool.idle)
            metrics.POOL_RUNSPACES.labels(state="opening", tenant=tenant).set(pool.opening)
        circuit = getattr(gateway, "circuit_state", None)
        if isinstance(circuit, str):
            metrics.CIRCUIT_STATE.labels(tenant=tenant).set(0 if circuit == "closed" else 1)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
