"""Settings: defaults from the contract, durations, and one-line errors naming the variable."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from service.config import Settings, SettingsError, derive_audit_key, load_settings, parse_duration


def test_defaults_follow_the_contract() -> None:
    """Every default of contract section 3 holds with an empty environment."""
    s = load_settings()
    assert s.database_url == "sqlite:///./unblock.db"
    assert (s.ps_port, s.ps_ssl, s.ps_path) == (5986, True, "wsman")
    assert s.ps_auth == "negotiate"
    assert s.ps_encryption == "auto"
    assert s.ps_cert_validation is True
    assert s.ps_configuration_name == "Microsoft.PowerShell"
    assert s.ps_pool_size == 4
    assert s.ps_call_timeout == 120
    assert s.password_backend == "graph"
    assert s.allowed_domains == []
    assert s.propagation_wait == 4 * 3600
    assert s.recheck_interval == 15 * 60
    assert s.require_approval is False
    assert s.credential_ttl == 24 * 3600
    assert s.discovery_interval == 300
    assert s.auto_remediate is False
    assert s.log_format is None  # console on a TTY, json otherwise


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("4h", 14400),
        ("1d", 86400),
        ("0", 0),
        ("1.5h", 5400),
        ("250ms", 0.25),
    ],
)
def test_durations_read_as_operators_write_them(text: str, seconds: float) -> None:
    """Waits are given in seconds or with a unit."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """UNBLOCK_* variables reach the settings, lists are comma-separated."""
    monkeypatch.setenv("UNBLOCK_PROPAGATION_WAIT", "30s")
    monkeypatch.setenv("UNBLOCK_ALLOWED_DOMAINS", "Contoso.com, @fabrikam.com")
    monkeypatch.setenv("UNBLOCK_PS_CERT_VALIDATION", "false")
    s = load_settings()
    assert s.propagation_wait == 30
    assert s.allowed_domains == ["contoso.com", "fabrikam.com"]
    assert s.ps_cert_validation is False


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    """A .env file in the working directory is read too."""
    (tmp_path / ".env").write_text("UNBLOCK_PS_POOL_SIZE=9\n")
    assert load_settings().ps_pool_size == 9


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("UNBLOCK_PS_PORT", "abc", "UNBLOCK_PS_PORT"),
        ("UNBLOCK_PS_PORT", "70000", "UNBLOCK_PS_PORT"),
        ("UNBLOCK_PROPAGATION_WAIT", "soon", "UNBLOCK_PROPAGATION_WAIT"),
        ("UNBLOCK_PS_AUTH", "magic", "UNBLOCK_PS_AUTH"),
        ("UNBLOCK_PS_ENCRYPTION", "sometimes", "UNBLOCK_PS_ENCRYPTION"),
        ("UNBLOCK_PASSWORD_BACKEND", "ldap", "UNBLOCK_PASSWORD_BACKEND"),
        ("UNBLOCK_REQUIRE_APPROVAL", "maybe", "UNBLOCK_REQUIRE_APPROVAL"),
        ("UNBLOCK_SECRET_KEY", "too-short", "UNBLOCK_SECRET_KEY"),
        ("UNBLOCK_DATABASE_URL", "mysql://x", "UNBLOCK_DATABASE_URL"),
        ("UNBLOCK_PS_CERT_VALIDATION", "/no/such/bundle.pem", "UNBLOCK_PS_CERT_VALIDATION"),
        ("UNBLOCK_PS_POOL_SIZE", "0", "UNBLOCK_PS_POOL_SIZE"),
        ("UNBLOCK_RECHECK_INTERVAL", "0", "UNBLOCK_RECHECK_INTERVAL"),
        ("UNBLOCK_PS_CALL_TIMEOUT", "0s", "UNBLOCK_PS_CALL_TIMEOUT"),
        ("UNBLOCK_CREDENTIAL_TTL", "0", "UNBLOCK_CREDENTIAL_TTL"),
        ("UNBLOCK_WORKER_LEASE", "0s", "UNBLOCK_WORKER_LEASE"),
        ("UNBLOCK_WEBHOOK_RETRY_INITIAL", "0", "UNBLOCK_WEBHOOK_RETRY_INITIAL"),
        ("UNBLOCK_WEBHOOK_TIMEOUT", "0", "UNBLOCK_WEBHOOK_TIMEOUT"),
        ("UNBLOCK_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/8,intranet", "UNBLOCK_WEBHOOK_ALLOW_NETWORKS: 'intranet'"),
        ("UNBLOCK_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/33", "UNBLOCK_WEBHOOK_ALLOW_NETWORKS: '10.0.0.0/33'"),
        ("UNBLOCK_WEBHOOK_ALLOW_NETWORKS", "10.1.2.3/8", "UNBLOCK_WEBHOOK_ALLOW_NETWORKS: '10.1.2.3/8'"),
        ("UNBLOCK_RETRY_INITIAL", "0", "UNBLOCK_RETRY_INITIAL"),
    ],
)
def test_bad_values_name_the_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    """A bad value is refused with one line that starts with the variable's name."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(fragment), message
    assert "\n" not in message


def test_webhook_networks_are_cidrs_and_none_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network is allowed beyond the Internet by default (not even loopback); operators list CIDRs."""
    assert load_settings().webhook_networks == ()
    assert load_settings().webhook_allow_http is False
    monkeypatch.setenv("UNBLOCK_WEBHOOK_ALLOW_NETWORKS", " 10.20.0.0/16, fd00::/8 ,192.0.2.7")
    settings = load_settings()
    assert settings.webhook_allow_networks == ["10.20.0.0/16", "fd00::/8", "192.0.2.7/32"]
    assert [str(n) for n in settings.webhook_networks] == ["10.20.0.0/16", "fd00::/8", "192.0.2.7/32"]


def test_a_cidr_with_host_bits_says_what_was_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    """10.1.2.3/8 is refused (it is not a network) with the network the operator probably meant."""
    monkeypatch.setenv("UNBLOCK_WEBHOOK_ALLOW_NETWORKS", "10.1.2.3/8")
    with pytest.raises(SettingsError, match=r"did you mean 10\.0\.0\.0/8"):
        load_settings()


def test_password_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """UNBLOCK_PS_PASSWORD_FILE supplies the remoting password (a mounted secret)."""
    secret = tmp_path / "pw"
    secret.write_text("s3cret!\n")
    monkeypatch.setenv("UNBLOCK_PS_PASSWORD_FILE", str(secret))
    assert load_settings().ps_password == "s3cret!"


def test_unreadable_password_file_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A password file that cannot be read is a configuration error, not a crash."""
    monkeypatch.setenv("UNBLOCK_PS_PASSWORD_FILE", "/nonexistent/pw")
    with pytest.raises(SettingsError, match=r"^UNBLOCK_PS_PASSWORD_FILE"):
        load_settings()


def test_secret_keys_rotate_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several sealing keys may be given; the first seals, all open."""
    new, old = "A" * 43 + "=", "0" * 64
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", f"{new},{old}")
    keys = load_settings().secret_keys
    assert len(keys) == 2
    assert all(len(k) == 32 for k in keys)


def test_secret_key_is_required_outside_the_sandbox() -> None:
    """The engine refuses to start without a sealing key, except in sandbox mode."""
    with pytest.raises(SettingsError, match=r"^UNBLOCK_SECRET_KEY"):
        Settings().require_secret_key()
    Settings(sandbox=True).require_secret_key()


def test_password_is_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings can be logged without leaking the remoting password or the sealing key."""
    monkeypatch.setenv("UNBLOCK_PS_PASSWORD", "hunter2-secret")
    assert "hunter2-secret" not in repr(load_settings())


@pytest.mark.parametrize(
    "missing", ["UNBLOCK_TENANT_APP_ID", "UNBLOCK_TENANT_ORGANIZATION", "UNBLOCK_TENANT_CERT_THUMBPRINT"]
)
def test_app_only_connect_names_the_missing_tenant_setting(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a PowerShell endpoint that must connect itself, each of the three tenant settings is required."""
    from service.serving import build_gateway

    values = {
        "UNBLOCK_PS_SERVER": "runner.contoso.com",
        "UNBLOCK_TENANT_APP_ID": "11111111-2222-3333-4444-555555555555",
        "UNBLOCK_TENANT_ORGANIZATION": "contoso.onmicrosoft.com",
        "UNBLOCK_TENANT_CERT_THUMBPRINT": "A" * 40,
    }
    for name, value in values.items():
        if name != missing:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(SettingsError, match=f"^{missing}: required"):
        build_gateway(load_settings())
    monkeypatch.setenv("UNBLOCK_PS_CONNECT_IN_SESSION", "false")
    assert build_gateway(load_settings()) is not None


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("UNBLOCK_TENANT_ORGANIZATION", "contoso.com", "initial domain"),
        ("UNBLOCK_TENANT_ORGANIZATION", "contoso.onmicrosoft.com.evil.example", "initial domain"),
        ("UNBLOCK_TENANT_APP_ID", "unblock-app", "GUID"),
        ("UNBLOCK_TENANT_CERT_THUMBPRINT", "A" * 39, "40 hexadecimal"),
        ("UNBLOCK_TENANT_CERT_THUMBPRINT", "Z" * 40, "40 hexadecimal"),
        ("UNBLOCK_TENANT_ID", "contoso", "neither"),
    ],
)
def test_tenant_settings_are_checked_against_what_app_only_sign_in_accepts(
    name: str, value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """App-only Connect-ExchangeOnline needs the .onmicrosoft.com domain, a GUID app id and a 40-hex
    thumbprint: a wrong value stops the process at start with one line naming the variable."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=f"^{name}: .*{says}") as caught:
        load_settings()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("organization", "normalised"),
    [
        ("Contoso.OnMicrosoft.com", "contoso.onmicrosoft.com"),
        ("fabrikam.onmicrosoft.us", "fabrikam.onmicrosoft.us"),
        ("tailspin.partner.onmschina.cn", "tailspin.partner.onmschina.cn"),
    ],
)
def test_initial_domains_of_every_cloud_are_accepted(
    organization: str, normalised: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNBLOCK_TENANT_ORGANIZATION", organization)
    monkeypatch.setenv("UNBLOCK_TENANT_CERT_THUMBPRINT", "ab" * 20)
    settings = load_settings()
    assert settings.tenant_organization == normalised
    assert settings.tenant_cert_thumbprint == "AB" * 20


def test_the_audit_key_comes_from_its_setting_else_from_the_secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """UNBLOCK_AUDIT_KEY first; without it, HKDF of each UNBLOCK_SECRET_KEY (never the sealing key itself)."""
    secret_a, secret_b, audit = (secrets.token_bytes(32) for _ in range(3))
    monkeypatch.setenv("UNBLOCK_SECRET_KEY", f"{secret_a.hex()},{secret_b.hex()}")
    derived = load_settings().audit_keys
    assert derived == [derive_audit_key(secret_a), derive_audit_key(secret_b)]
    assert derived[0] not in (secret_a, secret_b)
    assert derive_audit_key(secret_a) == derive_audit_key(secret_a)
    monkeypatch.setenv("UNBLOCK_AUDIT_KEY", audit.hex())
    assert load_settings().audit_keys == [audit]


def test_a_bad_audit_key_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same formats as UNBLOCK_SECRET_KEY (32 bytes, base64 or hex); anything else names UNBLOCK_AUDIT_KEY."""
    monkeypatch.setenv("UNBLOCK_AUDIT_KEY", "too-short")
    with pytest.raises(SettingsError, match=r"^UNBLOCK_AUDIT_KEY: each key must be 32 bytes"):
        load_settings()


def test_no_key_at_all_is_refused_where_the_log_is_written() -> None:
    """Without either setting, the commands that sign or check the log refuse with one line naming both."""
    with pytest.raises(SettingsError, match=r"^UNBLOCK_AUDIT_KEY or UNBLOCK_SECRET_KEY"):
        load_settings().require_audit_key()
