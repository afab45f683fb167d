"""Cross-cutting guard rails: service boundaries, entry points and handler coverage."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import praxis_contracts
from praxis_contracts.base import Command, Request, all_message_types
from praxis_contracts.deadletters import REPLAY_TYPES
from praxis_runtime.bus import Handlers

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"


def service_packages() -> dict[str, Path]:
    """``{package name: package dir}`` for every ``services/<name>/src/<package>``."""
    found = {pkg.name: pkg for pkg in SERVICES.glob("*/src/*") if (pkg / "__init__.py").is_file()}
    assert len(found) == 6, found
    return found


PACKAGES = service_packages()


def package_of(service_dir: str) -> Path:
    (pkg,) = (SERVICES / service_dir / "src").glob("*/__init__.py")
    return pkg.parent


def imported_modules(source: str) -> Iterator[str]:
    """Absolute module names imported; ``from a import b`` yields ``a`` and ``a.b``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def imports_of(package: Path) -> dict[str, set[str]]:
    return {
        str(path.relative_to(package.parent)): set(imported_modules(path.read_text()))
        for path in sorted(package.rglob("*.py"))
    }


def violations(package: Path, forbidden: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for file, modules in imports_of(package).items():
        bad = sorted(m for m in modules if any(m == f or m.startswith(f"{f}.") for f in forbidden))
        if bad:
            found[file] = bad
    return found


def test_import_scanner_sees_from_imports_of_submodules() -> None:
    source = "from praxis_runtime import db\nimport sqlalchemy.orm as orm\nfrom . import x\n"
    assert set(imported_modules(source)) == {
        "praxis_runtime",
        "praxis_runtime.db",
        "sqlalchemy.orm",
    }


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_services_never_import_each_other(package: str) -> None:
    others = set(PACKAGES) - {package}
    assert violations(PACKAGES[package], others) == {}


@pytest.mark.parametrize("service", ["scheduler", "gateway"])
def test_scheduler_and_gateway_never_touch_protocol_code(service: str) -> None:
    forbidden = {"pylabrobot", "praxis_sdk", "praxis_plr"}
    assert violations(package_of(service), forbidden) == {}


def test_orchestrator_never_touches_the_database() -> None:
    forbidden = {"sqlalchemy", "asyncpg", "alembic", "praxis_runtime.db", "praxis_runtime.query"}
    assert violations(package_of("orchestrator"), forbidden) == {}


# -- entry points ----------------------------------------------------------------------------


def is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    return (
        isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_main_only_builds_settings_and_runs(package: str) -> None:
    path = PACKAGES[package] / "__main__.py"
    assert path.is_file(), f"{package} has no __main__.py"
    body = ast.parse(path.read_text()).body
    statements = [
        s
        for s in body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))  # docstring
    ]
    guards = [s for s in statements if isinstance(s, ast.If) and is_main_guard(s)]
    others = [s for s in statements if not isinstance(s, (ast.Import, ast.ImportFrom))]
    assert len(guards) == 1 and others == guards, "only imports and one __main__ guard"
    (guard,) = guards
    assert len(guard.body) == 1 and isinstance(guard.body[0], ast.Expr)
    call = guard.body[0].value
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    assert call.func.id in {"run", "serve"}
    # Built in __main__ and passed down: ``load_settings(Settings)`` (which refuses, with a
    # message, a setting that would weaken a guarantee).
    (load,) = [n for n in ast.walk(call) if isinstance(n, ast.Call) and n.func is not call.func]
    assert isinstance(load.func, ast.Name) and load.func.id == "load_settings", (
        "settings are loaded in __main__ (load_settings) and passed down"
    )
    assert [a.id for a in load.args if isinstance(a, ast.Name)] == ["Settings"]


def test_importing_a_main_module_does_not_start_the_service() -> None:
    for package in PACKAGES:
        module = importlib.import_module(f"{package}.__main__")
        assert module.__name__ == f"{package}.__main__"


# -- handler coverage ------------------------------------------------------------------------


def handler_groups() -> dict[str, Handlers[Any]]:
    from praxis_orchestrator.handlers import handlers_for

    groups: dict[str, Handlers[Any]] = {
        name: importlib.import_module(f"{name}.handlers").handlers
        for name in (
            "praxis_scheduler",
            "praxis_code_manager",
            "praxis_asset_manager",
            "praxis_audit",
        )
    }
    groups["praxis_orchestrator"] = handlers_for("demo")
    groups["praxis_asset_manager.inventory"] = importlib.import_module(
        "praxis_asset_manager.inventory_handlers"
    ).handlers
    groups["praxis_asset_manager.snapshots"] = importlib.import_module(
        "praxis_asset_manager.snapshots"
    ).handlers
    return groups


def contract_types(kind: type) -> set[type]:
    for info in pkgutil.iter_modules(praxis_contracts.__path__, "praxis_contracts."):
        importlib.import_module(info.name)
    return {t for t in all_message_types() if issubclass(t, kind)}


def test_every_request_type_has_exactly_one_rpc_handler() -> None:
    """(A dead letter's replay is answered by every bus with consumers: ``praxis_runtime.
    replay``, tested with the bus.)"""
    served = Counter(
        route.request_type for group in handler_groups().values() for route in group.rpcs
    )
    requests = contract_types(Request) - set(REPLAY_TYPES)
    missing = sorted(t.__name__ for t in requests - served.keys())
    assert not missing, f"requests nobody answers: {missing}"
    assert {t.__name__: n for t, n in served.items() if n > 1} == {}
    assert set(served) == requests


def test_every_command_type_is_consumed_by_exactly_one_service() -> None:
    consumed: Counter[type] = Counter()
    for group in handler_groups().values():
        consumed.update(
            {r.message_type for r in group.consumers if issubclass(r.message_type, Command)}
        )
    commands = contract_types(Command)
    missing = sorted(t.__name__ for t in commands - consumed.keys())
    assert not missing, f"commands nobody consumes: {missing}"
    assert {t.__name__: n for t, n in consumed.items() if n > 1} == {}
    assert set(consumed) == commands


def test_durable_consumer_names_are_unique_across_services() -> None:
    durables = Counter(
        route.durable for group in handler_groups().values() for route in group.consumers
    )
    assert {d: n for d, n in durables.items() if n > 1} == {}


def test_the_edge_loads_no_database_client() -> None:
    """The orchestrator has no database: its start-up (a workcell's stall when its edge is
    upgraded) does not pay for importing SQLAlchemy, Alembic or asyncpg (about a second)."""
    import subprocess
    import sys

    probe = (
        "import sys, praxis_orchestrator.app, praxis_orchestrator.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'sqlalchemy', 'alembic', 'asyncpg'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_measured_figures_live_in_the_readme_not_in_source_comments() -> None:
    """A figure measured once ages in a comment; the README's Design measurements table and
    ``make bench`` carry them. A source line saying it measured something holds no number."""
    figure = re.compile(r"measured.*\d|\d.*measured", re.IGNORECASE)
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for base in (ROOT / "libs", ROOT / "services")
        for path in sorted(base.glob("*/src/**/*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if figure.search(line)
    ]
    assert found == []
