"""Settings from environment variables (the seed's names where they apply).

Secrets come from the environment or, in Kubernetes, from files mounted from Secrets (the
``*_FILE`` settings: a file's surrounding whitespace is ignored). No known secret ever runs:
an empty value, a placeholder (``change-me-...``, ``example``) or one too short to be random
stops the service at start-up (:func:`refuse_weak_secret`), with a message naming the setting
and the command that generates real ones (:data:`GENERATE_SECRETS`). The floors are
:data:`MIN_ADMIN_TOKEN_LENGTH` and :data:`MIN_PASSWORD_LENGTH`; what ``make run`` and the tests
generate (``secrets.token_urlsafe``/``token_hex``) is far longer.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Self, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound="ServiceSettings")

EX_CONFIG = 78
"""Exit status of a service that refused its configuration (sysexits' EX_CONFIG)."""

MIN_INFRA_RETRY_SECONDS = 60.0


def at_least(value: float, minimum: float, name: str, why: str) -> float:
    """``value`` if it is at least ``minimum``; else a refusal saying why the floor exists."""
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum:g} (got {value:g}): {why}")
    return value


# ---------------------------------------------------------------------------------- secrets

GENERATE_SECRETS = "python -m praxis_runtime.secrets --workcell <workcell> ... --output-dir <dir>"
"""The command that generates every secret of a deployment (``praxis_runtime.secrets``)."""

MIN_ADMIN_TOKEN_LENGTH = 16
"""The admin token is a bearer anyone on the network may try: 16 characters at least (the
generator makes 43, ``secrets.token_urlsafe(32)``)."""

MIN_PASSWORD_LENGTH = 12
"""NATS and PostgreSQL passwords are only ever typed by machines: 12 characters at least (the
generator makes 32 or more). Shorter is a word someone chose, not a random secret."""

PLACEHOLDER_MARKERS = (
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
)
"""A value containing one of these (in any case) was copied from an example."""

WELL_KNOWN_SECRETS = frozenset(
    {"example", "secret", "password", "passw0rd", "postgres", "admin", "token", "test", "nats"}
)
"""Whole values (in any case) that are somebody's default, never a generated secret."""


def refuse_weak_secret(value: str, what: str, minimum: int) -> str:
    """``value`` if it may be a generated secret; else a refusal saying how to generate one.

    ``what`` names the value in the message (the value itself is never shown: it may be a
    real secret that merely is too short)."""
    stripped = value.strip()
    how = f"generate real secrets with `{GENERATE_SECRETS}`"
    if not stripped:
        raise ValueError(f"{what} is empty: {how}")
    lowered = stripped.lower()
    if lowered in WELL_KNOWN_SECRETS or any(m in lowered for m in PLACEHOLDER_MARKERS):
        raise ValueError(f"{what} is a placeholder, not a secret: {how}")
    if len(stripped) < minimum:
        raise ValueError(
            f"{what} is shorter than {minimum} characters, too short to be random: {how}"
        )
    return value


def read_secret_file(path: Path) -> str:
    """The content of a mounted secret file, surrounding whitespace removed; a file that cannot
    be read is a refusal naming it (a missing Secret key, a mount the user may not read)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{path} cannot be read ({reason})") from None


def _readable(path: Path | None) -> Path | None:
    """``path`` if it can be read now: a missing mount fails at start-up, not at connect."""
    if path is not None:
        read_secret_file(path)
    return path


def _one_of(value: object, file: Path | None, name: str) -> None:
    """Refuse a secret given both directly and as a file: silently preferring one would run
    with a value the operator may believe replaced."""
    if value is not None and file is not None:
        raise ValueError(
            f"{name} and {name}_FILE are both set: set one (which is meant is unclear)"
        )


def database_password(url: str) -> str | None:
    """The password in a PostgreSQL URL (its user info or a ``password`` query parameter);
    None for any other URL or one without a password (trust, peer or certificate auth)."""
    parts = urlsplit(url)
    if not parts.scheme.startswith("postgres"):
        return None
    if parts.password is not None:
        return unquote(parts.password)
    query = parse_qs(parts.query).get("password")
    return query[-1] if query else None


class ServiceSettings(BaseSettings):
    """Settings every service shares. Services subclass it to add their own."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    service_name: str = Field(default="praxis", description="Used in logs and as queue group.")
    nats_url: str = Field(
        default="nats://127.0.0.1:4222",
        description="NATS_URL: one server, or a comma-separated list of a cluster's members "
        "(the client fails over between them)",
    )
    nats_user: str | None = Field(
        default=None,
        description="NATS_USER: the service's NATS identity (see praxis_contracts.permissions)",
    )
    nats_password: SecretStr | None = Field(default=None, description="NATS_PASSWORD")
    nats_password_file: Path | None = Field(
        default=None,
        description="NATS_PASSWORD_FILE: a mounted file holding the password (instead of "
        "NATS_PASSWORD; surrounding whitespace is ignored)",
    )
    nats_tls_ca_file: Path | None = Field(
        default=None,
        description="NATS_TLS_CA_FILE: connect with TLS, trusting the server certificates this "
        "CA bundle (PEM) signed (use with tls:// in NATS_URL)",
    )
    nats_tls_cert_file: Path | None = Field(
        default=None,
        description="NATS_TLS_CERT_FILE: a client certificate (PEM) for servers that verify "
        "clients; needs NATS_TLS_KEY_FILE",
    )
    nats_tls_key_file: Path | None = Field(
        default=None, description="NATS_TLS_KEY_FILE: the client certificate's private key (PEM)"
    )
    log_level: str = Field(default="INFO", description="LOG_LEVEL")
    log_format: str = Field(default="json", description="LOG_FORMAT: json or text")
    health_host: str = Field(default="0.0.0.0", description="HEALTH_HOST")
    health_port: int | None = Field(
        default=None, description="HEALTH_PORT: /healthz, /readyz, /metrics; 0 = any free port."
    )
    request_timeout_seconds: float = Field(default=5.0, gt=0, description="REQUEST_TIMEOUT_SECONDS")
    graceful_timeout_seconds: float = Field(
        default=20.0, gt=0, description="GRACEFUL_TIMEOUT_SECONDS"
    )
    max_deliver: int = Field(
        default=5, ge=1, description="MAX_DELIVER: attempts at a message that fails on its own"
    )
    infra_retry_seconds: float = Field(
        default=600.0,
        gt=0,
        description="INFRA_RETRY_SECONDS: how long a message whose handler failed because "
        "PostgreSQL or NATS is unavailable is retried before it is dead-lettered",
    )
    nats_replicas: int = Field(
        default=1, ge=1, le=5, description="NATS_REPLICAS: replicas of every stream and bucket"
    )

    @field_validator("infra_retry_seconds")
    @classmethod
    def _outlives_a_restart(cls, value: float) -> float:
        return at_least(
            value,
            MIN_INFRA_RETRY_SECONDS,
            "INFRA_RETRY_SECONDS",
            "a PostgreSQL or NATS restart takes tens of seconds, and a message whose handler "
            "waits for one must be delayed, not dead-lettered (nothing may be lost)",
        )

    @field_validator("nats_url")
    @classmethod
    def _no_weak_password_in_url(cls, value: str) -> str:
        for server in value.split(","):
            password = urlsplit(server.strip()).password
            if password is not None:
                refuse_weak_secret(unquote(password), "its password", MIN_PASSWORD_LENGTH)
        return value

    @field_validator("nats_password")
    @classmethod
    def _strong_nats_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            refuse_weak_secret(value.get_secret_value(), "the password", MIN_PASSWORD_LENGTH)
        return value

    @field_validator("nats_password_file")
    @classmethod
    def _strong_nats_password_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            refuse_weak_secret(
                read_secret_file(value), f"the content of {value}", MIN_PASSWORD_LENGTH
            )
        return value

    @field_validator("nats_tls_ca_file", "nats_tls_cert_file", "nats_tls_key_file")
    @classmethod
    def _tls_file_readable(cls, value: Path | None) -> Path | None:
        return _readable(value)

    @model_validator(mode="after")
    def _nats_credentials_complete(self) -> Self:
        _one_of(self.nats_password, self.nats_password_file, "NATS_PASSWORD")
        has_password = self.nats_password is not None or self.nats_password_file is not None
        if self.nats_user is not None and not has_password:
            raise ValueError(
                f"NATS_USER is {self.nats_user!r} but neither NATS_PASSWORD nor "
                f"NATS_PASSWORD_FILE is set: generate the passwords with `{GENERATE_SECRETS}`"
            )
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together: set both")
        nats_tls(self)  # a bundle that is not PEM, a key that does not match: refused now
        return self


class SandboxedSettings(BaseSettings):
    """Settings of a service that runs untrusted code (``praxis_runtime.sandbox``)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    sandbox_uid: int | None = Field(
        default=None,
        description="SANDBOX_UID: the user sandboxed children run as when the service is root "
        "(default 65534, nobody)",
    )
    sandbox_gid: int | None = Field(default=None, description="SANDBOX_GID (default: the uid)")
    sandbox_require_landlock: bool = Field(
        default=True,
        description="SANDBOX_REQUIRE_LANDLOCK: refuse to start where the kernel has no "
        "Landlock (sandboxed code could then read the service's files)",
    )


class DatabaseSettings(ServiceSettings):
    """Settings of a service that owns a PostgreSQL schema."""

    database_url: SecretStr = Field(
        default=SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/praxis"),
        description="DATABASE_URL",
    )
    database_url_file: Path | None = Field(
        default=None,
        description="DATABASE_URL_FILE: a mounted file holding the URL (instead of "
        "DATABASE_URL; surrounding whitespace is ignored)",
    )
    database_pool_size: int = Field(default=10, ge=1, description="DATABASE_POOL_SIZE")

    @field_validator("database_url")
    @classmethod
    def _strong_database_password(cls, value: SecretStr) -> SecretStr:
        _refuse_weak_database_url(value.get_secret_value(), "its password")
        return value

    @field_validator("database_url_file")
    @classmethod
    def _strong_database_url_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            url = read_secret_file(value)
            if not url:
                raise ValueError(f"{value} is empty")
            _refuse_weak_database_url(url, f"the password of the URL in {value}")
        return value

    @model_validator(mode="after")
    def _one_database_url(self) -> Self:
        explicit = self.database_url if "database_url" in self.model_fields_set else None
        _one_of(explicit, self.database_url_file, "DATABASE_URL")
        return self


def _refuse_weak_database_url(url: str, what: str) -> None:
    """A URL without a password is allowed: PostgreSQL then trusts the peer or a certificate."""
    password = database_password(url)
    if password is not None:
        refuse_weak_secret(password, what, MIN_PASSWORD_LENGTH)


def nats_servers(url: str) -> list[str]:
    """``NATS_URL`` as the list of servers it names (one, or a cluster's members)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


def nats_password(settings: ServiceSettings) -> str | None:
    """The NATS password: ``NATS_PASSWORD``, else the content of ``NATS_PASSWORD_FILE`` (read
    when connecting, so a rotated Secret is used at the next start)."""
    if settings.nats_password is not None:
        return settings.nats_password.get_secret_value()
    if settings.nats_password_file is not None:
        return read_secret_file(settings.nats_password_file)
    return None


def nats_tls(settings: ServiceSettings) -> ssl.SSLContext | None:
    """The TLS context the bus connects with when ``NATS_TLS_CA_FILE`` (or a client
    certificate) is set: server certificates are verified against that CA, host names
    included. None: the system's CAs. (nats-py upgrades to TLS when the server's greeting
    requires it, whatever the URL's scheme: a server with TLS configured always does.)"""
    ca, cert, key = (
        settings.nats_tls_ca_file,
        settings.nats_tls_cert_file,
        settings.nats_tls_key_file,
    )
    if ca is None and cert is None:
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"NATS_TLS_CA_FILE: {ca} holds no usable CA certificate ({exc})") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"NATS_TLS_CERT_FILE / NATS_TLS_KEY_FILE: {cert} and {key} are not a "
                f"certificate and its key ({exc})"
            ) from None
    return context


def database_url(settings: DatabaseSettings) -> str:
    """The database URL: the content of ``DATABASE_URL_FILE`` if set, else ``DATABASE_URL``."""
    if settings.database_url_file is not None:
        return read_secret_file(settings.database_url_file)
    return settings.database_url.get_secret_value()


def load_settings(cls: type[S]) -> S:
    """The service's settings from the environment; a setting that would weaken a guarantee
    (or is malformed) stops the process at once with a message naming it and why."""
    try:
        return cls()
    except ValidationError as exc:
        lines = [f"{cls.__module__.split('.')[0]} refused to start; fix its configuration:"]
        for error in exc.errors(include_url=False, include_input=False):
            name = ".".join(map(str, error["loc"])).upper()
            message = error["msg"].removeprefix("Value error, ")
            # A check of several settings names them in its message.
            lines.append(f"  {name}: {message}" if name else f"  {message}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None
