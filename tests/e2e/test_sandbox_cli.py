"""`unblock sandbox` as a user starts it: fast, prints its URL, answers plain pypsrp."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from service.sandbox.tenant import DEMO_RESTRICTED
from tests.helpers import UNBLOCK
from tests.sandbox_client import APP


def _start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], str, float]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [UNBLOCK, "sandbox", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line, time.monotonic() - started


def test_sandbox_starts_quickly_and_prints_its_url(tmp_path: Path) -> None:
    """It says `listening on http://H:P/wsman` once ready, and serves pypsrp. (How fast it starts is a
    number for `make bench`; the bound here only catches a start that hangs, even on a loaded machine.)"""
    proc, line, elapsed = _start(["--port", "0", "--seed", "demo"], tmp_path)
    try:
        match = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)/wsman\n", line)
        assert match, line
        assert elapsed < 20.0, f"took {elapsed:.2f}s"
        port = int(match.group(1))
        wsman = WSMan(
            "127.0.0.1",
            port=port,
            ssl=False,
            auth="basic",
            username="sandbox",
            password="sandbox",
            encryption="never",
        )
        with RunspacePool(wsman) as pool:
            ps = PowerShell(pool)
            ps.add_cmdlet("Connect-ExchangeOnline").add_parameters({**APP, "ShowBanner": False})
            ps.invoke()
            ps.close()
            ps = PowerShell(pool)
            ps.add_cmdlet("Get-BlockedSenderAddress")
            assert len(ps.invoke()) == len(DEMO_RESTRICTED)
            ps.close()
        state = httpx.get(f"http://127.0.0.1:{port}/_sandbox/state").json()
        assert state["shells"] == 0
        assert [t["name"] for t in state["tenants"]] == ["contoso", "fabrikam"]  # the demo seed's tenants
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def test_sandbox_tls_and_empty_seed(tmp_path: Path) -> None:
    """--tls serves https, --seed empty starts with no users (and contoso alone)."""
    proc, line, _ = _start(["--port", "0", "--tls", "--seed", "empty"], tmp_path)
    try:
        match = re.fullmatch(r"listening on https://127\.0\.0\.1:(\d+)/wsman\n", line)
        assert match, line
        url = f"https://127.0.0.1:{match.group(1)}/_sandbox/state"
        state = httpx.get(url, verify=False).json()  # noqa: S501 - the sandbox certificate is self-signed
        assert state["users"] == []
        assert [t["name"] for t in state["tenants"]] == ["contoso"]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
