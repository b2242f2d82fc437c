"""Settings: the only reader of ``UNBLOCK_*`` variables (contract section 3).

Everything the service can be told comes through :class:`Settings`, read once from the
environment and a ``.env`` file. A bad value stops the process with one line that names
the variable (:func:`load_settings` raises :class:`SettingsError`), because a service desk
tool that starts half-configured resets passwords in the wrong tenant.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
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


def parse_networks(values: list[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDRs as operators write them (``10.0.0.0/8``, ``fd00::/8``, a bare address); ValueError names the bad one."""
    return tuple(_network(text.strip()) for text in values)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        reason = str(error)
    try:
        hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
    except ValueError:
        hint = " (write a network such as 10.0.0.0/8 or fd00::/8)"
    raise ValueError(f"{text!r} is not a network in CIDR form: {reason}{hint}")


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


#: The initial (``*.onmicrosoft.*``) domains Microsoft gives a tenant, by cloud: app-only
#: Connect-ExchangeOnline needs this domain as -Organization, not a vanity domain (Microsoft's
#: "App-only authentication for unattended scripts in Exchange Online PowerShell" page).
INITIAL_DOMAIN_SUFFIXES = (".onmicrosoft.com", ".onmicrosoft.us", ".partner.onmschina.cn")
_INITIAL_DOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_THUMBPRINT = re.compile(r"^[0-9a-f]{40}$", re.IGNORECASE)


def is_initial_domain(value: str) -> bool:
    """``contoso.onmicrosoft.com`` (or a sovereign cloud's equivalent), not ``contoso.com``."""
    text = value.strip().lower()
    for suffix in INITIAL_DOMAIN_SUFFIXES:
        if text.endswith(suffix):
            return bool(_INITIAL_DOMAIN.match(text[: -len(suffix)]))
    return False


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value.strip()))


def is_thumbprint(value: str) -> bool:
    """A certificate's SHA-1 thumbprint as Windows shows it: 40 hexadecimal digits."""
    return bool(_THUMBPRINT.match(value.strip()))


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


#: HKDF's ``info``: binds the derived key to this one use, so it differs from the sealing key
#: it comes from and from anything else ever derived from that key. Changing it changes the key.
AUDIT_KEY_INFO = b"unblock-service audit chain v1"


def derive_audit_key(secret_key: bytes) -> bytes:
    """The audit key when UNBLOCK_AUDIT_KEY is not set: HKDF-SHA256 of a secret (sealing) key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=AUDIT_KEY_INFO).derive(secret_key)


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
    db_connect_timeout: PositiveDuration = Field(default=3.0, description="setting up a PostgreSQL connection")
    db_pool_timeout: PositiveDuration = Field(
        default=3.0, description="waiting for a pooled connection (serve, worker)"
    )
    db_statement_timeout: PositiveDuration = Field(
        default=5.0,
        description="PostgreSQL statement_timeout for serve and worker; API requests are bounded by pool + this",
    )

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
    ps_tenant_pool_size: int | None = Field(
        default=None, ge=1, le=64, description="runspaces per stored tenant (default UNBLOCK_PS_POOL_SIZE)"
    )
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
    # the values of service.domain.findings.Containment (config stays free of the domain: the sandbox reads it)
    containment: Literal["enforce", "report", "off"] = Field(
        default="enforce",
        description="enforce: disable suspicious inbox rules and clear external forwarding before the unblock; "
        "report: record findings, change nothing at the mailbox; off: no investigation. Findings a person must "
        "judge (a new sign-in method, an app consent, a delegate) stop the case for approval under both",
    )
    approval_allow_self: bool = Field(
        default=False, description="let the principal that opened a case approve it too (no four-eyes)"
    )

    secret_key: CommaList = Field(default_factory=list, repr=False)
    audit_key: CommaList = Field(
        default_factory=list,
        repr=False,
        description="keys of the audit chain's MACs, newest first; default: derived from UNBLOCK_SECRET_KEY",
    )
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
    webhook_allow_networks: CommaList = Field(
        default_factory=list,
        description="CIDRs of internal webhook receivers (e.g. 10.20.0.0/16); every other loopback, private, "
        "link-local or special-purpose address is refused",
    )
    webhook_allow_http: bool = Field(
        default=False,
        description="accept http:// receivers anywhere; without it, http only for receivers inside "
        "UNBLOCK_WEBHOOK_ALLOW_NETWORKS (the address check applies either way)",
    )

    rate_limit: str = "600/minute"
    auth_failure_limit: str = Field(
        default="20/minute", description="failed authentications allowed per client address before 429"
    )
    trusted_proxies: CommaList = Field(
        default_factory=list, description="CIDRs whose X-Forwarded-For/-Proto headers are believed"
    )
    rate_limit_storage: str = "memory://"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    cors_origins: CommaList = Field(default_factory=list)

    oidc_jwks_url: str | None = None
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_scope_claim: str = "roles"
    oidc_tenant_id: str | None = Field(default=None, description="Entra ID: the only `tid` accepted in tokens")
    oidc_tenants_claim: str | None = Field(
        default=None,
        description="the claim listing the tenants a token's principal may see (array or space-separated); "
        "when set, a token without it is refused",
    )

    sandbox: bool = Field(default=False, description="set by `serve --sandbox`; not read from users")

    @field_validator("allowed_domains")
    @classmethod
    def _lower_domains(cls, value: list[str]) -> list[str]:
        return [d.lower().lstrip("@") for d in value]

    @field_validator("tenant_organization")
    @classmethod
    def _initial_domain(cls, value: str | None) -> str | None:
        if value is not None and not is_initial_domain(value):
            raise ValueError(
                f"{value!r} is not the tenant's initial domain; app-only Connect-ExchangeOnline needs "
                "<name>.onmicrosoft.com (or .onmicrosoft.us / .partner.onmschina.cn), not a vanity domain"
            )
        return value.strip().lower() if value else value

    @field_validator("tenant_app_id")
    @classmethod
    def _app_id(cls, value: str | None) -> str | None:
        if value is not None and not is_guid(value):
            raise ValueError(f"{value!r} is not an application (client) id; it is a GUID")
        return value.strip() if value else value

    @field_validator("tenant_cert_thumbprint")
    @classmethod
    def _thumbprint(cls, value: str | None) -> str | None:
        if value is not None and not is_thumbprint(value):
            raise ValueError("a certificate thumbprint is 40 hexadecimal digits (no spaces)")
        return value.strip().upper() if value else value

    @field_validator("tenant_id")
    @classmethod
    def _tenant_id(cls, value: str | None) -> str | None:
        if value is not None and not (is_guid(value) or is_initial_domain(value)):
            raise ValueError(f"{value!r} is neither a directory (tenant) id GUID nor the tenant's initial domain")
        return value.strip() if value else value

    @field_validator("secret_key", "audit_key")
    @classmethod
    def _valid_keys(cls, value: list[str]) -> list[str]:
        for text in value:
            decode_secret_key(text)
        return value

    @field_validator("webhook_allow_networks", "trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        return [str(network) for network in parse_networks(value)]

    @field_validator("rate_limit", "auth_failure_limit")
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
    def _oidc_pinned(self) -> Settings:
        """Entra ID signs every tenant's tokens with the same keys: a JWKS URL alone would let any
        tenant mint a token for this service. Issuer and audience must be pinned too."""
        if self.oidc_jwks_url:
            for name in ("oidc_issuer", "oidc_audience"):
                if not getattr(self, name):
                    raise ValueError(
                        f"{name}: required with UNBLOCK_OIDC_JWKS_URL (tokens from any issuer or for any audience "
                        "would otherwise be accepted)"
                    )
        return self

    @model_validator(mode="after")
    def _read_password_file(self) -> Settings:
        if self.ps_password is None and self.ps_password_file is not None:
            try:
                self.ps_password = self.ps_password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"ps_password_file: cannot read {self.ps_password_file}: {exc.strerror}") from exc
        return self

    @property
    def request_deadline(self) -> float:
        """How long an API request may wait on the database before it answers 503."""
        return self.db_pool_timeout + self.db_statement_timeout

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def poll_interval(self) -> float:
        if self.worker_poll_interval is not None:
            return self.worker_poll_interval
        return 2.0 if self.is_sqlite else 30.0

    @property
    def webhook_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The networks webhooks may reach beyond the Internet (validated when read)."""
        return parse_networks(self.webhook_allow_networks)

    @property
    def secret_keys(self) -> list[bytes]:
        """Sealing keys, newest first: the first seals, all of them open."""
        return [decode_secret_key(text) for text in self.secret_key]

    @property
    def audit_keys(self) -> list[bytes]:
        """The audit chain's keys, newest first: the first signs, all of them verify.

        UNBLOCK_AUDIT_KEY when it is set; otherwise one key derived (HKDF) from each
        UNBLOCK_SECRET_KEY, so the chain is keyed without a new setting, and rotating the secret
        key (new first, old still listed) keeps the older records verifiable.
        """
        if self.audit_key:
            return [decode_secret_key(text) for text in self.audit_key]
        return [derive_audit_key(key) for key in self.secret_keys]

    def require_audit_key(self) -> None:
        """Refuse to write or check the audit log without a key (the chain would prove nothing)."""
        if not self.audit_key and not self.secret_key:
            raise SettingsError(
                "UNBLOCK_AUDIT_KEY or UNBLOCK_SECRET_KEY: required to sign and verify the audit log "
                "(generate one with `unblock keys secret`)"
            )

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
