"""Prometheus metrics (prometheus-client), defined once per process and served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# Tenants label what an MSP watches per customer (cases, state changes, failures, runspaces, the
# breaker); the duration histograms stay unlabelled by tenant: hundreds of tenants times steps times
# buckets would be series nobody reads. ``tenant`` is empty for a case no tenant has taken yet.
CASES = Gauge(
    "unblock_cases",
    "Cases by state and tenant (read from the database at scrape time)",
    ["state", "tenant"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "unblock_case_transitions_total",
    "State changes made in this process",
    ["from_state", "to_state", "tenant"],
    registry=REGISTRY,
)
STEP_DURATION = Histogram(
    "unblock_step_duration_seconds",
    "Time a step took, remote calls included",
    ["step"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
STEP_FAILURES = Counter(
    "unblock_step_failures_total", "Failed step attempts", ["step", "code", "tenant"], registry=REGISTRY
)
REMOTE_DURATION = Histogram(
    "unblock_remote_call_duration_seconds", "PowerShell remote calls", ["cmdlet"], buckets=_SECONDS, registry=REGISTRY
)
REMOTE_ERRORS = Counter(
    "unblock_remote_call_errors_total",
    "Remote calls that failed, by class",
    ["cmdlet", "error_class"],
    registry=REGISTRY,
)
POOL_RUNSPACES = Gauge(
    "unblock_pool_runspaces", "Runspaces of each tenant's warm pool", ["state", "tenant"], registry=REGISTRY
)
POOL_SIZE = Gauge("unblock_pool_size", "Runspaces all tenants' pools may hold together", registry=REGISTRY)
CIRCUIT_STATE = Gauge(
    "unblock_circuit_open",
    "1 while a tenant's PowerShell circuit breaker is open",
    ["tenant"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "unblock_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"], registry=REGISTRY
)
DISCOVERY_RUNS = Counter(
    "unblock_discovery_runs_total", "Restricted-list polls by outcome", ["outcome"], registry=REGISTRY
)
HTTP_REQUESTS = Counter("unblock_http_requests_total", "API requests", ["method", "route", "status"], registry=REGISTRY)
HTTP_DURATION = Histogram(
    "unblock_http_request_duration_seconds",
    "API request latency",
    ["method", "route"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
DATABASE_UP = Gauge(
    "unblock_database_up",
    "1 while this process's last database operation succeeded, 0 during an outage",
    registry=REGISTRY,
)
DATABASE_OUTAGES = Counter(
    "unblock_database_outages_total", "Database outages this process has seen begin", registry=REGISTRY
)
DATABASE_UP.set(1)
