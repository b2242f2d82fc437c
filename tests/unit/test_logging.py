"""The redaction processor: secrets never reach a log line."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from service.logging import REDACTED, configure, redact, secret_in_flight


def _run(**event: object) -> dict[str, object]:
    return dict(redact(None, "info", dict(event)))


def test_secret_looking_keys_are_removed() -> None:
    """Fields named like secrets are replaced, whatever their value."""
    out = _run(event="x", password="p", new_password="p", api_key="k", Authorization="Bearer abc", token="t")
    for key in ("password", "new_password", "api_key", "Authorization", "token"):
        assert out[key] == REDACTED


def test_nested_structures_are_scrubbed() -> None:
    """Secrets inside dicts and lists are caught too."""
    out = _run(event="x", parameters={"UserId": "rob@contoso.com", "PasswordProfile": {"Password": "p"}})
    params = out["parameters"]
    assert isinstance(params, dict)
    assert params["UserId"] == "rob@contoso.com"
    assert params["PasswordProfile"] == REDACTED


def test_bearer_tokens_and_our_keys_are_masked_in_text() -> None:
    """A key pasted into a message is masked."""
    out = _run(event="header was Bearer ubk_abcdefgh_0123456789abcdefghijklmnopqrstuvwxyzABCDEF0 ok")
    assert "ubk_abcdefgh_0123" not in str(out["event"])
    out = _run(event="x", detail="secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert "whsec_MfKQ" not in str(out["detail"])


def test_a_secret_in_flight_is_masked_anywhere() -> None:
    """While a new password is held, its value is masked in every field of every line."""
    with secret_in_flight("Zx9!temporary-Pw"):
        out = _run(event="sent Zx9!temporary-Pw to tenant", note="pw=Zx9!temporary-Pw")
    assert "Zx9!temporary-Pw" not in json.dumps(out)
    assert _run(event="Zx9!temporary-Pw")["event"] == "Zx9!temporary-Pw"  # released afterwards


def test_json_lines_carry_context(capsys: pytest.CaptureFixture[str]) -> None:
    """Lines are JSON off a TTY and carry bound context such as request_id and case_id."""
    configure("json", "info")
    with structlog.contextvars.bound_contextvars(request_id="r1", case_id="c1"):
        structlog.get_logger("t").info("case_transitioned", from_state="received", password="nope")
    logging.getLogger("service.stdlib").warning("from the standard library")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    first = lines[0]
    assert first["event"] == "case_transitioned"
    assert (first["request_id"], first["case_id"]) == ("r1", "c1")
    assert first["password"] == REDACTED
    assert lines[1]["event"] == "from the standard library"
