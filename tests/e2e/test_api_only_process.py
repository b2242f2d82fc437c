"""`unblock serve --no-worker` with no PowerShell settings at all: intake and reads from the database."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.helpers import UNBLOCK, free_port, sandbox_env, unblock_process, wait_http


def test_an_api_only_process_needs_no_powershell_and_opens_no_session(database_url: str, tmp_path: Path) -> None:
    """The API process starts without UNBLOCK_PS_*/UNBLOCK_TENANT_*, accepts a case, serves the restricted list
    and the dashboard; the sandbox sees nothing from it. A separate worker then finishes the case."""
    base_env = {"UNBLOCK_DATABASE_URL": database_url, "UNBLOCK_SECRET_KEY": "0" * 64}
    key = (
        subprocess.run(
            [
                UNBLOCK,
                "keys",
                "create",
                "--name",
                "desk",
                "--scope",
                "cases:write",
                "--scope",
                "cases:read",
                "--scope",
                "senders:read",
            ],
            env={**os.environ, **base_env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    headers = {"Authorization": f"Bearer {key}"}
    sandbox_port = free_port()
    with unblock_process(["sandbox", "--port", str(sandbox_port)], env={}, tmp_path=tmp_path, name="sandbox") as sbx:
        control = f"http://127.0.0.1:{sandbox_port}/_sandbox"
        wait_http(f"{control}/state", sbx)
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        with unblock_process(
            ["serve", "--no-worker", "--port", str(api_port)], env=base_env, tmp_path=tmp_path, name="api"
        ) as api:
            wait_http(f"{api_url}/healthz", api)
            ready = httpx.get(f"{api_url}/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok"}
            created = httpx.post(f"{api_url}/v1/cases", json={"mailbox": "rob@contoso.com"}, headers=headers)
            assert created.status_code == 201, created.text
            senders = httpx.get(f"{api_url}/v1/restricted-senders", headers=headers)
            assert senders.status_code == 200
            assert senders.json() == {"items": [], "fetched_at": None}
            assert httpx.get(f"{api_url}/ui/login").status_code == 200
            state = httpx.get(f"{control}/state").json()
            assert (state["shells"], httpx.get(f"{control}/calls").json()) == (0, []), "the API process reached it"
            worker_env = {
                **base_env,
                **sandbox_env(sandbox_port),
                "UNBLOCK_PROPAGATION_WAIT": "1s",
                "UNBLOCK_RECHECK_INTERVAL": "0.5s",
                "UNBLOCK_WORKER_POLL_INTERVAL": "0.5",
            }
            with unblock_process(["worker"], env=worker_env, tmp_path=tmp_path, name="worker") as worker:
                deadline = time.monotonic() + 60
                case = created.json()
                while case["state"] != "resolved":
                    assert worker.alive(), worker.output()
                    assert time.monotonic() < deadline, case
                    time.sleep(0.2)
                    case = httpx.get(f"{api_url}/v1/cases/{case['id']}", headers=headers).json()
                assert case["outcome"] == "unblocked"
                # The worker reads the whole list on its own schedule (first tick after start), not as
                # part of a case: on a loaded machine the case can finish first, so wait for the read.
                listed = httpx.get(f"{api_url}/v1/restricted-senders", headers=headers).json()
                while listed["fetched_at"] is None:
                    assert worker.alive(), worker.output()
                    assert time.monotonic() < deadline, (listed, worker.output()[-4000:])
                    time.sleep(0.2)
                    listed = httpx.get(f"{api_url}/v1/restricted-senders", headers=headers).json()
                assert "rob@contoso.com" not in {i["sender_address"] for i in listed["items"]}
