"""Settings from environment variables (the seed's names where they apply)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
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
    database_pool_size: int = Field(default=10, ge=1, description="DATABASE_POOL_SIZE")


def nats_servers(url: str) -> list[str]:
    """``NATS_URL`` as the list of servers it names (one, or a cluster's members)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


def nats_password(settings: ServiceSettings) -> str | None:
    """The NATS password: ``NATS_PASSWORD``, else the content of ``NATS_PASSWORD_FILE``."""
    if settings.nats_password is not None:
        return settings.nats_password.get_secret_value()
    if settings.nats_password_file is not None:
        return settings.nats_password_file.read_text().strip()
    return None


def load_settings(cls: type[S]) -> S:
    """The service's settings from the environment; a setting that would weaken a guarantee
    (or is malformed) stops the process at once with a message naming it and why."""
    try:
        return cls()
    except ValidationError as exc:
        lines = [f"{cls.__module__.split('.')[0]} refused to start; fix its configuration:"]
        for error in exc.errors(include_url=False, include_input=False):
            name = ".".join(map(str, error["loc"])).upper() or "settings"
            lines.append(f"  {name}: {error['msg'].removeprefix('Value error, ')}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None
