"""Profiles: where an API is and the token to use there, kept in one file only its owner reads.

The file is ``$PRAXIS_CONFIG``, else ``$XDG_CONFIG_HOME/praxis/config.json``, else
``~/.config/praxis/config.json``: ``{"current": "lab", "profiles": {"lab": {"url", "token"}}}``.
Which profile a command uses: ``--profile``, else ``$PRAXIS_PROFILE``, else ``current``.
``--url`` / ``--token`` (or ``$PRAXIS_URL`` / ``$PRAXIS_TOKEN``) override the profile's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Profile:
    name: str
    url: str
    token: str | None


class ConfigError(Exception):
    """The configuration cannot be used as asked (an unknown profile, an unreadable file)."""


def config_path() -> Path:
    explicit = os.environ.get("PRAXIS_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "praxis" / "config.json"


def load(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"current": None, "profiles": {}}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise ConfigError(f"{path} is not a praxis configuration")
    return data


def save(data: dict[str, Any], path: Path | None = None) -> Path:
    """Write the configuration readable by its owner only (it holds bearer tokens)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.replace(temporary, path)
    return path


def resolve(profile: str | None, url: str | None, token: str | None) -> Profile:
    """The profile a command uses, with the overrides given."""
    data = load()
    asked = profile or os.environ.get("PRAXIS_PROFILE") or None
    name = asked or data.get("current")
    stored: dict[str, Any] = {}
    if name is not None:
        if name not in data["profiles"] and asked is not None:
            known = ", ".join(sorted(data["profiles"])) or "none (praxis login adds one)"
            raise ConfigError(f"no profile {name!r}; profiles: {known}")
        stored = data["profiles"].get(name, {})
    return Profile(
        name=name or "default",
        url=url or os.environ.get("PRAXIS_URL") or stored.get("url") or DEFAULT_URL,
        token=token or os.environ.get("PRAXIS_TOKEN") or stored.get("token"),
    )


def remember(name: str, url: str, token: str | None) -> Path:
    """Store a profile and make it the current one."""
    data = load()
    data["profiles"][name] = {"url": url, "token": token}
    data["current"] = name
    return save(data)
