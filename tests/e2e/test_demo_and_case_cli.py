"""`make demo`'s program, and `unblock case open --watch` against separately started processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import UNBLOCK, free_port, sandbox_env, unblock_process, wait_http


def test_the_demo_resolves_rob(tmp_path: Path) -> None:
    """The demo opens a case for rob@contoso.com through the API and shows it resolved, unblocked."""
    result = subprocess.run(
        [sys.executable, "-m", "service.demo", "--port", "0", "--wait", "1", "--exit"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "rob@contoso.com" in out
    assert '"outcome": "unblocked"' in out
    assert "Remove-BlockedSenderAddress" in out  # the tenant's side is shown too
    assert "Only the propagation wait is shortened" in out
    assert (tmp_path / "unblock-demo.db").exists()


def test_case_open_watch_with_separate_processes(database_url: str, tmp_path: Path) -> None:
    """sandbox, serve and `case open --watch` as three processes sharing only configuration."""
    sandbox_port = free_port()
    with unblock_process(["sandbox", "--port", str(sandbox_port)], env={}, tmp_path=tmp_path, name="sandbox") as sbx:
        wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/state", sbx)
        env = {
            "UNBLOCK_DATABASE_URL": database_url,
            "UNBLOCK_SECRET_KEY": "0" * 64,
            **sandbox_env(sandbox_port),
            "UNBLOCK_PROPAGATION_WAIT": "1s",
            "UNBLOCK_RECHECK_INTERVAL": "0.5s",
            "UNBLOCK_WORKER_POLL_INTERVAL": "0.5",
        }
        api_port = free_port()
        with unblock_process(["serve", "--port", str(api_port)], env=env, tmp_path=tmp_path, name="serve") as api:
            wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
            full_env = {**os.environ, **env}
            opened = subprocess.run(
                [UNBLOCK, "case", "open", "rob@contoso.com", "--ticket", "INC42", "--watch"],
                env=full_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=90,
                check=False,
            )
            assert opened.returncode == 0, opened.stdout + opened.stderr + api.output()
            case = json.loads(opened.stdout[opened.stdout.index("{\n") :])
            assert (case["state"], case["outcome"]) == ("resolved", "unblocked")
            assert case["ticket_ref"] == "INC42"
            shown = subprocess.run(
                [UNBLOCK, "case", "show", case["id"]],
                env=full_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=False,
            )
            assert json.loads(shown.stdout)["id"] == case["id"]
            again = subprocess.run(
                [UNBLOCK, "case", "open", "not an address"],
                env=full_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                check=False,
            )
            assert again.returncode == 2
            assert again.stderr.count("\n") == 1
            calls = httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/calls").json()
            assert [c["cmdlet"] for c in calls if c["cmdlet"] == "Remove-BlockedSenderAddress"] == [
                "Remove-BlockedSenderAddress"
            ]
