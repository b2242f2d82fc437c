"""`make bench`: every figure beside its goal, in bench/results/latest.json and latest.md.

    python -m bench.run            # the full run (about 13 minutes on a 2-core machine)
    python -m bench.run --quick    # smaller counts, for trying a change

Needs the local PostgreSQL (UNBLOCK_BENCH_DATABASE_URL, default the CI machine's); each part
makes a database of its own and drops it. Figures, not pass/fail: a missed goal is reported,
never raised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.processes import PG_DEFAULT

RESULTS = Path(__file__).resolve().parent / "results"
#: (pool size, cases) per throughput run, full and --quick
THROUGHPUT_RUNS = {False: [(1, 60), (4, 200), (16, 400)], True: [(1, 15), (4, 50), (16, 100)]}
PARTS = ["overhead", "sqlite", "split", "throughput", "baseline", "api", "memory"]


@dataclass(frozen=True)
class Row:
    what: str
    value: float
    unit: str
    goal: str
    met: bool | None

    def markdown(self) -> str:
        mark = "" if self.met is None else ("yes" if self.met else "**no**")
        if self.unit == "x":  # a ratio is judged against a goal in hundredths: show the third decimal
            number = f"{self.value:.3f}"
        else:
            number = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:.2f}"
        return f"| {self.what} | {number} {self.unit} | {self.goal} | {mark} |"


def _goal(value: float, limit: float, *, at_most: bool) -> bool:
    return value <= limit if at_most else value >= limit


def rows_of(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    o = results.get("overhead")
    if o:
        rows += [
            Row(
                "overhead ratio, median (end-to-end / time the endpoint was busy with the case)",
                o["overhead_ratio_p50"],
                "x",
                "<= 1.10",
                _goal(o["overhead_ratio_p50"], 1.10, at_most=True),
            ),
            Row(
                "overhead ratio, p99",
                o["overhead_ratio_p99"],
                "x",
                "<= 1.20",
                _goal(o["overhead_ratio_p99"], 1.20, at_most=True),
            ),
            Row(
                f"  the protocol's floor: the same commands through pypsrp alone cost "
                f"{o['protocol_ms_per_command']:.1f} ms each beyond their latency; {o['sequential_commands']:.0f} of "
                "the case's commands wait for the one before, so a service that added nothing else would reach",
                o["protocol_floor_ratio"],
                "x",
                "",
                None,
            ),
            Row("dispatch latency p50 (created -> first command at the tenant)", o["dispatch_ms_p50"], "ms", "", None),
            Row(
                "dispatch latency p99 (PostgreSQL)",
                o["dispatch_ms_p99"],
                "ms",
                "<= 50 ms",
                _goal(o["dispatch_ms_p99"], 50, at_most=True),
            ),
            Row("per-case end-to-end, median", o["e2e_s_p50"], "s", f"floor {o['floor_s']:.2f} s", None),
            Row(
                "  of which the endpoint idle between commands (median case)",
                o["between_commands_ms_p50"],
                "ms",
                "",
                None,
            ),
            Row("  of which after the last command until the client saw the end", o["tail_ms_p50"], "ms", "", None),
        ]
    q = results.get("sqlite")
    if q:
        rows += [
            Row("dispatch latency p50 on SQLite", q["dispatch_ms_p50"], "ms", "", None),
            Row(
                "dispatch latency p99 (SQLite)",
                q["dispatch_ms_p99"],
                "ms",
                "<= 50 ms",
                _goal(q["dispatch_ms_p99"], 50, at_most=True),
            ),
            Row("overhead ratio on SQLite, median", q["overhead_ratio_p50"], "x", "", None),
        ]
    d = results.get("split")
    if d:
        rows += [
            Row(
                "dispatch latency p50, API and worker in separate processes (NOTIFY and a claim)",
                d["dispatch_ms_p50"],
                "ms",
                "",
                None,
            ),
            Row("dispatch latency p99, API and worker in separate processes", d["dispatch_ms_p99"], "ms", "", None),
            Row("overhead ratio, API and worker in separate processes, median", d["overhead_ratio_p50"], "x", "", None),
        ]
    for t in results.get("throughput", []):
        judged = t["pool_size"] in (1, 4)  # pool 16 is reported (where the CPU goes), not judged
        cpu = t.get("cpu_ms_per_case", {})
        split = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
        rows.append(
            Row(
                f"throughput, pool {t['pool_size']} ({t['cases_per_s']:.2f} of {t['ideal_cases_per_s']:.2f} cases/s; "
                f"CPU ms per case: {split}; machine {t.get('cpu_busy_of_machine', 0):.0%} busy)",
                t["efficiency"],
                "of ideal",
                ">= 0.85" if judged else "",
                _goal(t["efficiency"], 0.85, at_most=False) if judged else None,
            )
        )
    b = results.get("baseline")
    if b and o:
        rows.append(
            Row(
                f"per-call connections: {b['per_case_s']:.1f} s per case vs {o['e2e_s_p50']:.2f} s",
                b["per_case_s"] / o["e2e_s_p50"],
                "x slower",
                "",
                None,
            )
        )
    a = results.get("api")
    if a:
        rows += [
            Row("GET /v1/cases/{id}, 50 clients: throughput", a["get"]["rps"], "req/s", "", None),
            Row("GET /v1/cases/{id}: p50 latency", a["get"]["p50_ms"], "ms", "", None),
            Row(
                "  Starlette + psycopg alone, same 50 clients: p99 latency (the goal's reach on this machine)",
                a["floor_get"]["p99_ms"],
                "ms",
                "",
                None,
            ),
            Row(
                "GET /v1/cases/{id}: p99 latency",
                a["get"]["p99_ms"],
                "ms",
                "<= 50 ms",
                _goal(a["get"]["p99_ms"], 50, at_most=True),
            ),
            Row(
                f"GET /v1/cases/{{id}} vs Starlette + psycopg alone ({a['floor_get']['rps']:,.0f} req/s, "
                f"p99 {a['floor_get']['p99_ms']:.0f} ms): p99 ratio",
                a["get_p99_vs_floor"],
                "x",
                "<= 1.5",
                _goal(a["get_p99_vs_floor"], 1.5, at_most=True),
            ),
            Row("GET /v1/cases/{id}: the floor's throughput over the API's", a["get_rps_vs_floor"], "x", "", None),
            Row(
                "  the same row through FastAPI + SQLAlchemy alone (no auth, middleware, logs, metrics): throughput",
                a["frameworks_get"]["rps"],
                "req/s",
                "",
                None,
            ),
            *[
                Row(f"  process time per GET (1 / throughput), {who}", 1000 / figures["rps"], "ms", "", None)
                for who, figures in (
                    ("Starlette + psycopg", a["floor_get"]),
                    ("FastAPI + SQLAlchemy", a["frameworks_get"]),
                    ("the service", a["get"]),
                )
            ],
            Row("GET /v1/cases?state=resolved&limit=50: throughput", a["list"]["rps"], "req/s", "", None),
            Row(
                f"list page (50 cases of {a['cases']:,}): p99 latency",
                a["list"]["p99_ms"],
                "ms",
                "<= 150 ms",
                _goal(a["list"]["p99_ms"], 150, at_most=True),
            ),
            *(
                [
                    Row(
                        f"  the same page from Starlette + psycopg alone ({a['floor_list']['rps']:,.0f} req/s): "
                        "p99 latency",
                        a["floor_list"]["p99_ms"],
                        "ms",
                        "",
                        None,
                    )
                ]
                if "floor_list" in a
                else []
            ),
        ]
    m = results.get("memory")
    if m:
        rows += [
            Row(
                f"RSS of `unblock serve` (API + worker), {m['open_cases']:,} open cases",
                m["serve_rss_mb"],
                "MB",
                "<= 200 MB",
                _goal(m["serve_rss_mb"], 200, at_most=True),
            ),
            Row(
                "RSS split: `serve --no-worker` + `worker`",
                m["split_rss_mb"]["api"] + m["split_rss_mb"]["worker"],
                "MB",
                "",
                None,
            ),
        ]
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['date']} on {results['machine']['cores']} cores ({results['machine']['platform']}), "
        f"PostgreSQL, commands {scenarios.COMMAND_MS:.0f} ms and Connect-* {scenarios.CONNECT_MS:.0f} ms at the "
        f"sandbox{' (quick run)' if results['quick'] else ''}.",
        "",
        "| measure | result | goal | met |",
        "|---|---|---|---|",
        *[r.markdown() for r in rows_of(results)],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="unblock-service benchmarks")
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter runs")
    parser.add_argument("--only", choices=PARTS, action="append")
    args = parser.parse_args()
    pg = os.environ.get("UNBLOCK_BENCH_DATABASE_URL", PG_DEFAULT)
    quick = args.quick
    only = set(args.only or PARTS)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": quick,
        "settings": {"command_ms": scenarios.COMMAND_MS, "connect_ms": scenarios.CONNECT_MS},
    }

    def part(name: str, run: Callable[[], Any]) -> None:
        if name not in only:
            return
        started = time.monotonic()
        print(f"== {name} ...", flush=True)
        results[name] = run()
        print(f"   done in {time.monotonic() - started:.0f}s: {json.dumps(results[name], default=str)[:400]}")

    part("overhead", lambda: scenarios.overhead(pg, 10 if quick else 50))
    part("sqlite", lambda: scenarios.overhead(pg, 10 if quick else 30, sqlite=True))
    part("split", lambda: scenarios.overhead(pg, 10 if quick else 30, split=True))
    sequence = results.get("overhead", {}).get("sequence") or [
        "Update-MgUser",
        "Revoke-MgUserSignInSession",
        "Get-BlockedSenderAddress",
        "Remove-BlockedSenderAddress",
        "Get-BlockedSenderAddress",
        "Get-BlockedSenderAddress",
    ]
    part(
        "throughput",
        # about the same length of run at each size: the pool's ideal grows with it
        lambda: [scenarios.throughput(pg, cases, size) for size, cases in THROUGHPUT_RUNS[quick]],
    )
    part("baseline", lambda: scenarios.baseline(1 if quick else 3, sequence))
    part("api", lambda: scenarios.api_load(pg, 10_000 if quick else 100_000, 50, 5 if quick else 20))
    part("memory", lambda: scenarios.memory(pg, 2_000 if quick else 10_000))

    RESULTS.mkdir(exist_ok=True)
    table = markdown(results)
    name = "quick" if quick else "latest"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(table)
    print()
    print(table)
    print(f"written to {RESULTS / (name + '.json')} and {name}.md")


if __name__ == "__main__":
    main()
