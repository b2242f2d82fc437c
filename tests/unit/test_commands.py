"""The command catalogue, LDAP escaping, PowerShell date parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.powershell import commands as c
from service.powershell.bridge import parse_ps_datetime


def test_undeclared_parameters_are_refused_before_anything_is_sent() -> None:
    """The catalogue is the whole vocabulary: a parameter it does not declare cannot be bound."""
    with pytest.raises(ValueError, match="Identity"):
        c.GET_BLOCKED_SENDER(Identity="x")
    invocation = c.GET_BLOCKED_SENDER(SenderAddress="rob@contoso.com")
    assert invocation.values == (("SenderAddress", "rob@contoso.com"),)


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("rob@contoso.com", "rob@contoso.com"),
        ("*)(uid=*", "\\2a\\29\\28uid=\\2a"),
        ("a\\b", "a\\5cb"),
        ("nul\x00", "nul\\00"),
        ("jürgen@contoso.com", "j\\c3\\bcrgen@contoso.com"),
    ],
)
def test_ldap_escape(value: str, escaped: str) -> None:
    """RFC 4515: a value can never close the filter or add a wildcard."""
    assert c.ldap_escape(value) == escaped


def test_the_runner_exposes_everything_but_the_connects() -> None:
    """The JEA endpoint connects itself, so the connects are not among the runner's commands."""
    names = {cmd.name for cmd in c.RUNNER_COMMANDS}
    assert "Connect-ExchangeOnline" not in names
    assert "Remove-BlockedSenderAddress" in names
    assert set(c.EXCHANGE_COMMANDS) - {c.SET_MAILBOX.name} <= names  # Set-Mailbox only behind its wrapper
    assert not {cmd.name for cmd in c.CATALOGUE if cmd.direct} & names


@pytest.mark.parametrize(
    "text",
    ["2026-11-26T16:53:29.2181783+00:00", "2026-11-26T16:53:29.218178Z", "2026-11-26T16:53:29.2181783Z"],
)
def test_powershell_datetimes(text: str) -> None:
    """pypsrp hands DateTime over as text with up to seven fractional digits; all parse as UTC."""
    parsed = parse_ps_datetime(text)
    assert parsed is not None
    assert parsed.replace(microsecond=0) == datetime(2026, 11, 26, 16, 53, 29, tzinfo=UTC)


def test_unparseable_datetimes_are_none() -> None:
    """A value that is not a date does not crash the bridge."""
    assert parse_ps_datetime("yesterday") is None
    assert parse_ps_datetime(None) is None
