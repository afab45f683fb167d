"""The bootstrap admin token: from ``PRAXIS_ADMIN_TOKEN`` or a mounted file
(``PRAXIS_ADMIN_TOKEN_FILE``); unset means no bootstrap admin (API tokens and OIDC only); an
empty, placeholder or short one stops the gateway before it connects to anything."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from praxis_contracts.errors import Unauthenticated
from praxis_gateway.app import Settings, admin_token, authenticator_for
from praxis_gateway.security import ADMIN
from praxis_runtime.settings import EX_CONFIG, GENERATE_SECRETS

VARIABLES = ("PRAXIS_ADMIN_TOKEN", "PRAXIS_ADMIN_TOKEN_FILE", "NATS_USER", "NATS_PASSWORD")
TOKEN = secrets.token_urlsafe(32)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def refusal(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[str, str]:
    (error,) = exc.value.errors(include_url=False, include_input=False)
    return ".".join(map(str, error["loc"])).upper(), error["msg"]


WEAK = [
    pytest.param("", "is empty", id="empty"),
    pytest.param(" ", "is empty", id="blank"),
    pytest.param("change-me-to-a-long-random-token", "placeholder", id="shipped-placeholder"),
    pytest.param("ChangeMe-ChangeMe-ChangeMe", "placeholder", id="changeme"),
    pytest.param("secret", "placeholder", id="secret"),
    pytest.param("0123456789abcde", "shorter than 16", id="15-characters"),
]


@pytest.mark.parametrize(("value", "why"), WEAK)
def test_a_weak_admin_token_is_refused(value: str, why: str) -> None:
    with pytest.raises(ValidationError) as exc:
        Settings(praxis_admin_token=value)
    setting, message = refusal(exc)
    assert setting == "PRAXIS_ADMIN_TOKEN" and why in message and GENERATE_SECRETS in message


@pytest.mark.parametrize(("value", "why"), WEAK)
def test_a_weak_admin_token_file_is_refused(value: str, why: str, tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(value)
    with pytest.raises(ValidationError) as exc:
        Settings(praxis_admin_token_file=path)
    setting, message = refusal(exc)
    assert setting == "PRAXIS_ADMIN_TOKEN_FILE" and why in message and str(path) in message


def test_an_unreadable_admin_token_file_is_refused_by_its_path(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(ValidationError) as exc:
        Settings(praxis_admin_token_file=path)
    setting, message = refusal(exc)
    assert setting == "PRAXIS_ADMIN_TOKEN_FILE" and f"{path} cannot be read" in message


def test_both_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(TOKEN)
    with pytest.raises(ValidationError, match="are both set"):
        Settings(praxis_admin_token=TOKEN, praxis_admin_token_file=path)


async def test_the_token_from_a_file_is_the_bootstrap_admin(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(f"{TOKEN}\n")  # a Secret's file may end with a newline
    settings = Settings(praxis_admin_token_file=path)
    assert admin_token(settings) == TOKEN
    authenticator = authenticator_for(settings)
    assert await authenticator.principal(f"Bearer {TOKEN}") == ADMIN
    with pytest.raises(Unauthenticated):
        await authenticator.principal(f"Bearer {TOKEN[:-1]}")


async def test_the_token_from_the_environment_is_the_bootstrap_admin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PRAXIS_ADMIN_TOKEN", TOKEN)
    settings = Settings()
    assert admin_token(settings) == TOKEN
    assert await authenticator_for(settings).principal(f"Bearer {TOKEN}") == ADMIN


def test_no_token_no_bootstrap_admin() -> None:
    """As before: API tokens and OIDC only."""
    settings = Settings()
    assert admin_token(settings) is None
    assert authenticator_for(settings).admin_token is None


@pytest.mark.process
def test_the_gateway_refuses_to_start_with_the_shipped_placeholder() -> None:
    """Before it connects to anything: NATS_URL names a port nothing listens on."""
    placeholder = "change-me-to-a-long-random-token"
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env = {**clean, "PRAXIS_ADMIN_TOKEN": placeholder, "NATS_URL": "nats://127.0.0.1:1"}
    argv = [sys.executable, "-m", "praxis_gateway"]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "PRAXIS_ADMIN_TOKEN: the token is a placeholder" in done.stderr, done.stderr
    assert "python -m praxis_runtime.secrets" in done.stderr
    assert placeholder not in done.stderr and "Traceback" not in done.stderr
