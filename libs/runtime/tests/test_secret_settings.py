"""No known secret ever runs: an empty, placeholder or too short password, from the environment
or from a mounted file, stops a service at start-up with a message naming the setting and the
command that generates real ones; a file that cannot be read is named, never a traceback."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from praxis_contracts.permissions import ANY_WORKCELL
from praxis_runtime.natsauth import NatsAuth
from praxis_runtime.settings import (
    EX_CONFIG,
    GENERATE_SECRETS,
    MIN_ADMIN_TOKEN_LENGTH,
    MIN_PASSWORD_LENGTH,
    DatabaseSettings,
    ServiceSettings,
    database_url,
    load_settings,
    nats_password,
    refuse_weak_secret,
)

pytestmark = pytest.mark.process  # starts processes: not in `make test-unit`

SECRET_VARIABLES = (
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_PASSWORD_FILE",
    "NATS_TLS_CA_FILE",
    "NATS_TLS_CERT_FILE",
    "NATS_TLS_KEY_FILE",
    "DATABASE_URL",
    "DATABASE_URL_FILE",
)

WEAK = [
    pytest.param("", "is empty", id="empty"),
    pytest.param("   \n", "is empty", id="whitespace"),
    pytest.param("change-me-scheduler", "placeholder", id="change-me"),
    pytest.param("CHANGEME-0123456789", "placeholder", id="changeme-any-case"),
    pytest.param("a-placeholder-value-here", "placeholder", id="placeholder"),
    pytest.param("password", "placeholder", id="password"),
    pytest.param("Secret", "placeholder", id="secret"),
    pytest.param("example", "placeholder", id="example"),
    pytest.param("s3cret", "shorter than", id="short"),
]

STRONG = secrets.token_urlsafe(24)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks see only what each test sets (not a developer's shell)."""
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def refusal(exc: pytest.ExceptionInfo[ValidationError]) -> tuple[str, str]:
    """(setting, message) of the one error ``load_settings`` would print."""
    (error,) = exc.value.errors(include_url=False, include_input=False)
    return ".".join(map(str, error["loc"])).upper(), error["msg"]


@pytest.mark.parametrize(("value", "why"), WEAK)
def test_weak_values_are_refused_with_how_to_generate_one(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as exc:
        refuse_weak_secret(value, "the value", MIN_PASSWORD_LENGTH)
    assert GENERATE_SECRETS in str(exc.value)


def test_generated_values_pass() -> None:
    """What the generator, ``make run`` and the test fixtures make is never refused."""
    generated = [
        secrets.token_urlsafe(32),  # admin tokens
        secrets.token_urlsafe(24),  # NATS passwords (natsauth.random_passwords)
        secrets.token_hex(24),  # PostgreSQL passwords of local runs
        secrets.token_hex(16),  # the Docker PostgreSQL of the tests
        *NatsAuth((ANY_WORKCELL, "demo")).passwords.values(),
    ]
    for value in generated:
        assert refuse_weak_secret(value, "x", MIN_ADMIN_TOKEN_LENGTH) == value


# ----------------------------------------------------------------------------------- NATS


@pytest.mark.parametrize(("value", "why"), WEAK)
def test_a_weak_nats_password_from_the_environment_is_refused(
    value: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_USER", "scheduler")
    monkeypatch.setenv("NATS_PASSWORD", value)
    with pytest.raises(ValidationError) as exc:
        ServiceSettings()
    setting, message = refusal(exc)
    assert setting == "NATS_PASSWORD" and why in message and GENERATE_SECRETS in message


@pytest.mark.parametrize(("value", "why"), WEAK)
def test_a_weak_nats_password_file_is_refused(
    value: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "password"
    path.write_text(value)
    monkeypatch.setenv("NATS_USER", "scheduler")
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(path))
    with pytest.raises(ValidationError) as exc:
        ServiceSettings()
    setting, message = refusal(exc)
    assert setting == "NATS_PASSWORD_FILE" and why in message and str(path) in message


@pytest.mark.parametrize("kind", ["missing", "directory", "not-text"])
def test_an_unreadable_password_file_is_refused_by_its_path(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Tests may run as root, who reads any file whatever its mode: the cases here are
    unreadable for anyone.)"""
    path = tmp_path / "password"
    if kind == "directory":
        path.mkdir()
    elif kind == "not-text":
        path.write_bytes(b"\xff\xfe" + os.urandom(30))
    monkeypatch.setenv("NATS_USER", "scheduler")
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(path))
    with pytest.raises(ValidationError) as exc:
        ServiceSettings()
    setting, message = refusal(exc)
    assert setting == "NATS_PASSWORD_FILE" and f"{path} cannot be read" in message


def test_good_nats_passwords_are_read_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_USER", "scheduler")
    monkeypatch.setenv("NATS_PASSWORD", STRONG)
    assert nats_password(ServiceSettings()) == STRONG
    monkeypatch.delenv("NATS_PASSWORD")
    path = tmp_path / "password"
    path.write_text(f"{STRONG}\n")  # as a Secret mounted from a file with a newline
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(path))
    assert nats_password(ServiceSettings()) == STRONG


def test_a_nats_user_needs_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_USER", "scheduler")
    with pytest.raises(ValidationError, match="neither NATS_PASSWORD nor NATS_PASSWORD_FILE"):
        ServiceSettings()
    assert ServiceSettings(nats_user=None).nats_user is None  # no user: the URL's credentials


def test_a_password_from_both_the_environment_and_a_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "password"
    path.write_text(secrets.token_urlsafe(24))
    monkeypatch.setenv("NATS_PASSWORD", STRONG)
    monkeypatch.setenv("NATS_PASSWORD_FILE", str(path))
    with pytest.raises(ValidationError, match="are both set"):
        ServiceSettings()


@pytest.mark.parametrize(("value", "why"), WEAK[2:])
def test_a_weak_password_in_nats_url_is_refused(value: str, why: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ServiceSettings(nats_url=f"nats://a:4222,nats://operator:{value}@b:4222")
    setting, message = refusal(exc)
    assert setting == "NATS_URL" and why in message
    assert ServiceSettings(nats_url=f"nats://operator:{STRONG}@b:4222")


# ------------------------------------------------------------------------------- database


@pytest.mark.parametrize(("value", "why"), WEAK[2:])
@pytest.mark.parametrize(
    "template",
    [
        "postgresql+asyncpg://praxis:{}@db.internal:5432/praxis",
        "postgresql://praxis:{}@db.internal/praxis",
        "postgres://db.internal/praxis?user=praxis&password={}",
    ],
)
def test_a_weak_database_password_is_refused(template: str, value: str, why: str) -> None:
    with pytest.raises(ValidationError) as exc:
        DatabaseSettings(database_url=template.format(value))
    setting, message = refusal(exc)
    assert setting == "DATABASE_URL" and why in message and GENERATE_SECRETS in message
    assert template.format(value) not in message  # never the URL, which holds the password


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://praxis@db.internal:5432/praxis",  # trust, peer or certificate
        "postgresql+asyncpg://postgres@127.0.0.1:5432/praxis",
        f"postgresql+asyncpg://praxis_scheduler:{STRONG}@db.internal:5432/praxis",
        "postgresql://praxis:p%40ss%2Fw0rd-Long-enough@db/praxis",  # quoted characters
    ],
)
def test_good_database_urls_are_accepted(url: str) -> None:
    assert database_url(DatabaseSettings(database_url=url)) == url


def test_the_default_database_url_is_accepted() -> None:
    assert database_url(DatabaseSettings()).startswith("postgresql+asyncpg://postgres@")


def test_the_database_url_is_read_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"postgresql+asyncpg://praxis_scheduler:{STRONG}@db.internal:5432/praxis"
    path = tmp_path / "url"
    path.write_text(f"  {url}\n")
    monkeypatch.setenv("DATABASE_URL_FILE", str(path))
    assert database_url(DatabaseSettings()) == url


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "is empty"),
        ("postgresql+asyncpg://praxis:change-me@postgres.example.internal:5432/praxis", "placeh"),
        ("postgresql://praxis:short@db/praxis", "shorter than"),
        (None, "cannot be read"),
    ],
)
def test_a_bad_database_url_file_is_refused(
    content: str | None, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "url"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("DATABASE_URL_FILE", str(path))
    with pytest.raises(ValidationError) as exc:
        DatabaseSettings()
    setting, message = refusal(exc)
    assert setting == "DATABASE_URL_FILE" and why in message and str(path) in message


def test_a_database_url_from_both_the_environment_and_a_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "url"
    path.write_text("postgresql+asyncpg://praxis@db/praxis")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://praxis@db/praxis")
    monkeypatch.setenv("DATABASE_URL_FILE", str(path))
    with pytest.raises(ValidationError, match="DATABASE_URL and DATABASE_URL_FILE are both set"):
        DatabaseSettings()


# -------------------------------------------------------------------------- load_settings


def test_load_settings_names_the_setting_and_the_command_never_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_USER", "scheduler")
    monkeypatch.setenv("NATS_PASSWORD", "change-me-scheduler")
    monkeypatch.setenv("DATABASE_URL", "postgresql://praxis:hunter2@db/praxis")
    with pytest.raises(SystemExit) as exc:
        load_settings(DatabaseSettings)
    assert exc.value.code == EX_CONFIG
    err = capsys.readouterr().err
    assert "NATS_PASSWORD: the password is a placeholder" in err
    assert "DATABASE_URL: its password is shorter than" in err
    assert GENERATE_SECRETS in err
    assert "change-me-scheduler" not in err and "hunter2" not in err


def test_a_check_of_several_settings_is_printed_without_a_placeholder_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_USER", "scheduler")
    with pytest.raises(SystemExit):
        load_settings(ServiceSettings)
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("  NATS_USER is 'scheduler' but neither NATS_PASSWORD"), lines


@pytest.mark.parametrize(
    ("service", "env", "setting", "shown"),
    [
        (
            "praxis_scheduler",
            {"NATS_USER": "scheduler", "NATS_PASSWORD": "change-me-scheduler"},
            "NATS_PASSWORD",
            "placeholder",
        ),
        (
            "praxis_asset_manager",
            {"DATABASE_URL": "postgresql+asyncpg://praxis:change-me@db.example:5432/praxis"},
            "DATABASE_URL",
            "placeholder",
        ),
        (
            "praxis_code_manager",
            {"NATS_USER": "code-manager", "NATS_PASSWORD_FILE": "/nonexistent/praxis/password"},
            "NATS_PASSWORD_FILE",
            "/nonexistent/praxis/password cannot be read",
        ),
    ],
)
def test_a_service_with_a_known_secret_refuses_to_start(
    service: str, env: dict[str, str], setting: str, shown: str
) -> None:
    """Before it connects to anything: NATS_URL names a port nothing listens on."""
    clean = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    environ = {**clean, **env, "NATS_URL": "nats://127.0.0.1:1"}
    argv = [sys.executable, "-m", service]
    done = subprocess.run(
        argv, check=False, env=environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == EX_CONFIG, done.stderr
    assert f"{setting}: " in done.stderr and shown in done.stderr, done.stderr
    assert "python -m praxis_runtime.secrets" in done.stderr or "cannot be read" in shown
    assert "Traceback" not in done.stderr and "change-me" not in done.stderr
