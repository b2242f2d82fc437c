"""Settings: the only reader of ``UNBLOCK_*`` variables (contract section 3).

Everything the service can be told comes through :class:`Settings`, read once from the
environment and a ``.env`` file. A bad value stops the process with one line that names
the variable (:func:`load_settings` raises :class:`SettingsError`), because a service desk
tool that starts half-configured resets passwords in the wrong tenant.
"""

from __future__ import annotations

import base64
import binascii
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "UNBLOCK_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class SettingsError(ValueError):
    """The configuration is invalid; the message is one line naming the variable."""


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``30s``, ``15m``, ``4h`` or ``1d``: how operators write waits."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if match is None:
            raise ValueError(f"{value!r} is not a duration (use seconds or 30s/15m/4h/1d)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "s").lower()]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
# A wait that must not be zero: zero would mean a hot loop (retries, re-checks) or a timeout
# that every call hits.
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class PsAuth(StrEnum):
    negotiate = "negotiate"
    ntlm = "ntlm"
    kerberos = "kerberos"
    basic = "basic"
    certificate = "certificate"
    credssp = "credssp"


class PsEncryption(StrEnum):
    auto = "auto"
    always = "always"
    never = "never"


class PasswordBackend(StrEnum):
    graph = "graph"
    ad = "ad"


class LogFormat(StrEnum):
    console = "console"
    json = "json"


def _cert_validation(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in {"true", "1", "yes", "on"}:
        return True
    if text.lower() in {"false", "0", "no", "off"}:
        return False
    if not Path(text).is_file():
        raise ValueError(f"must be true, false or the path of a CA bundle; {text!r} is none of these")
    return text


def decode_secret_key(text: str) -> bytes:
    """A 32-byte AES key from its base64 (standard or url-safe) or 64-hex form."""
    text = text.strip()
    candidates: list[bytes] = []
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        candidates.append(bytes.fromhex(text))
    for decoder in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            candidates.append(decoder(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            continue
    for key in candidates:
        if len(key) == 32:
            return key
    raise ValueError("each key must be 32 bytes, base64 or hex (make one: unblock keys secret)")


class Settings(BaseSettings):
    """Every setting of contract section 3, plus the few operational knobs it leaves open."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    database_url: str = "sqlite:///./unblock.db"
    db_pool_size: int = Field(default=20, ge=1, le=500, description="PostgreSQL connections per process")

    ps_server: str | None = None
    ps_port: int = Field(default=5986, ge=1, le=65535)
    ps_ssl: bool = True
    ps_path: str = "wsman"
    ps_auth: PsAuth = PsAuth.negotiate
    ps_encryption: PsEncryption = PsEncryption.auto
    ps_username: str | None = None
    ps_password: str | None = Field(default=None, repr=False)
    ps_password_file: Path | None = None
    ps_cert_validation: Annotated[bool | str, BeforeValidator(_cert_validation)] = True
    ps_configuration_name: str = "Microsoft.PowerShell"
    ps_pool_size: int = Field(default=4, ge=1, le=64)
    ps_call_timeout: PositiveDuration = 120.0
    ps_open_lazily: bool = False
    ps_connect_in_session: bool = Field(
        default=True,
        description="run Connect-ExchangeOnline/Connect-MgGraph in each runspace; false when the "
        "endpoint (e.g. a JEA endpoint with a startup script) is already connected",
    )
    ps_runner_functions: bool = Field(
        default=False,
        description="use the UnblockRunner module's wrappers (Set-UnblockUserPassword, Clear-UnblockForwarding) "
        "that the JEA endpoint exposes instead of Update-MgUser and Set-Mailbox",
    )
    ps_recycle_after: int = Field(default=500, ge=1, description="calls before a runspace is recycled")
    ps_operation_timeout: int = Field(default=5, ge=1, le=60, description="WSMan long-poll, seconds")

    tenant_organization: str | None = None
    tenant_app_id: str | None = None
    tenant_cert_thumbprint: str | None = None
    tenant_id: str | None = None

    password_backend: PasswordBackend = PasswordBackend.graph
    allowed_domains: CommaList = Field(default_factory=list)

    propagation_wait: Duration = 4 * 3600.0
    recheck_interval: PositiveDuration = 15 * 60.0
    require_approval: bool = False

    secret_key: CommaList = Field(default_factory=list, repr=False)
    credential_ttl: PositiveDuration = 24 * 3600.0

    discovery_interval: Duration = 5 * 60.0
    auto_remediate: bool = False

    log_format: LogFormat | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    retry_initial: PositiveDuration = 2.0
    retry_max: PositiveDuration = 300.0
    retry_attempts: int = Field(default=6, ge=1, le=100)
    retry_outage_attempts: int = Field(default=288, ge=1, le=100_000)
    ps_breaker_threshold: int = Field(default=5, ge=1, le=1000)
    ps_breaker_interval: PositiveDuration = 10.0

    worker_lease: PositiveDuration = 60.0
    worker_poll_interval: Duration | None = Field(
        default=None, description="fallback poll; default 30s on PostgreSQL (NOTIFY wakes workers), 2s on SQLite"
    )
    worker_concurrency: int | None = Field(default=None, ge=1, le=256)

    webhook_timeout: PositiveDuration = 10.0
    webhook_max_age: PositiveDuration = 24 * 3600.0
    webhook_retry_initial: PositiveDuration = 5.0
    webhook_retry_max: PositiveDuration = 3600.0
    webhook_allow_http: bool = Field(default=False, description="allow http:// receivers beyond loopback")

    rate_limit: str = "600/minute"
    rate_limit_storage: str = "memory://"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    cors_origins: CommaList = Field(default_factory=list)

    oidc_jwks_url: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_scope_claim: str = "roles"

    sandbox: bool = Field(default=False, description="set by `serve --sandbox`; not read from users")

    @field_validator("allowed_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [d.lower().lstrip("@") for d in value]

    @field_validator("secret_key")
    @classmethod
    def _valid_keys(cls, value: list[str]) -> list[str]:
        for text in value:
            decode_secret_key(text)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate such as 600/minute or 20/second") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql+psycopg:// URLs are supported")
        return value

    @model_validator(mode="after")
    def _read_password_file(self) -> Settings:
        if self.ps_password is None and self.ps_password_file is not None:
            try:
                self.ps_password = self.ps_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"ps_password_file: cannot read {self.ps_password_file}: {exc.strerror}") from exc
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def poll_interval(self) -> float:
        if self.worker_poll_interval is not None:
            return self.worker_poll_interval
        return 2.0 if self.is_sqlite else 30.0

    @property
    def secret_keys(self) -> list[bytes]:
        """Sealing keys, newest first: the first seals, all of them open."""
        return [decode_secret_key(text) for text in self.secret_key]

    def require_secret_key(self) -> None:
        """Refuse to run the engine without a key, except in sandbox mode."""
        if not self.secret_key and not self.sandbox:
            raise SettingsError(
                "UNBLOCK_SECRET_KEY: required to seal temporary passwords (generate one with `unblock keys secret`)"
            )

    def require_endpoint(self) -> None:
        if not self.ps_server:
            raise SettingsError("UNBLOCK_PS_SERVER: required (the PowerShell remoting endpoint), or use --sandbox")


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    location = [str(part) for part in first.get("loc", ()) if part != "__root__"]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if location:
        return f"{ENV_PREFIX}{location[0].upper()}: {message}"
    if ":" in message:
        name, _, rest = message.partition(":")
        return f"{ENV_PREFIX}{name.strip().upper()}:{rest}"
    return message


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning a validation error into one line that names the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None
