"""SourceTree: isolated imports of protocol code, discovery and unloading."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from praxis_contracts.errors import ProtocolLoadFailed
from praxis_sdk import spec_of
from praxis_sdk.loader import SourceTree

MOD = """
from praxis_sdk import protocol_function

from . import helpers


@protocol_function(version="{version}")
async def f(volume: float = 1.0) -> str:
    return helpers.label("{version}", volume)


def plain_helper() -> int:
    return 1
"""

HELPERS = """
def label(version: str, volume: float) -> str:
    return f"{version}:{volume}"
"""

MakeTree = Callable[..., SourceTree]


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def make_tree(tmp_path: Path) -> Iterator[MakeTree]:
    """Write a tree under ``tmp_path`` and unload it after the test."""
    trees: list[SourceTree] = []

    def make(name: str, files: dict[str, str]) -> SourceTree:
        root = tmp_path / name
        write(root, files)
        tree = SourceTree(root, f"{tmp_path}:{name}")
        trees.append(tree)
        return tree

    yield make
    for tree in trees:
        tree.unload()


def protocol_tree(version: str) -> dict[str, str]:
    return {"protocols/mod.py": MOD.format(version=version), "protocols/helpers.py": HELPERS}


async def test_two_commits_of_one_module_load_side_by_side(make_tree: MakeTree) -> None:
    old = make_tree("old", protocol_tree("1.0.0"))
    new = make_tree("new", protocol_tree("2.0.0"))
    f_old = old.function("protocols.mod", "f")
    f_new = new.function("protocols.mod", "f")
    assert f_old is not f_new
    assert spec_of(f_old).version == "1.0.0"  # type: ignore[union-attr]
    assert spec_of(f_new).version == "2.0.0"  # type: ignore[union-attr]
    assert await f_old(2.0) == "1.0.0:2.0"
    assert await f_new() == "2.0.0:1.0"
    assert old.package != new.package
    old_mod = sys.modules[f"{old.package}.protocols.mod"]
    new_mod = sys.modules[f"{new.package}.protocols.mod"]
    assert old_mod is not new_mod
    assert "protocols" not in sys.modules and "protocols.mod" not in sys.modules
    assert str(old.root) not in sys.path


def test_discover_reports_module_paths_inside_the_tree(make_tree: MakeTree) -> None:
    tree = make_tree("tree", protocol_tree("1.0.0"))
    found = tree.discover()
    assert found.problems == []
    assert [(s.module, s.qualname, s.version) for s in found.functions] == [
        ("protocols.mod", "f", "1.0.0")
    ]


def test_a_broken_module_is_a_problem_not_a_failure(make_tree: MakeTree) -> None:
    files = protocol_tree("1.0.0")
    files["protocols/broken.py"] = "raise RuntimeError('cannot import me')\n"
    tree = make_tree("broken", files)
    found = tree.discover()
    assert [s.qualname for s in found.functions] == ["f"]
    assert [p.module for p in found.problems] == ["protocols.broken"]
    assert "RuntimeError: cannot import me" in found.problems[0].error
    with pytest.raises(ProtocolLoadFailed, match=r"cannot import protocols\.broken"):
        tree.function("protocols.broken", "f")


def test_re_exported_functions_are_discovered_once(make_tree: MakeTree) -> None:
    files = protocol_tree("1.0.0")
    files["protocols/again.py"] = "from .mod import f as also_f\n"
    found = make_tree("reexport", files).discover()
    assert [(s.module, s.qualname) for s in found.functions] == [("protocols.mod", "f")]


def test_test_and_hidden_directories_are_skipped(make_tree: MakeTree) -> None:
    files = protocol_tree("1.0.0")
    files["tests/test_mod.py"] = "raise RuntimeError('tests are not imported')\n"
    files[".venv/lib.py"] = "raise RuntimeError('hidden dirs are not imported')\n"
    files["conftest.py"] = "raise RuntimeError('conftest is not imported')\n"
    tree = make_tree("skips", files)
    assert list(tree.modules()) == ["protocols.helpers", "protocols.mod"]
    assert tree.discover().problems == []


@pytest.mark.parametrize(
    ("module", "qualname", "message"),
    [
        ("protocols.mod", "missing", "has no missing"),
        ("protocols.mod", "plain_helper", "is not a protocol function"),
        ("protocols.nowhere", "f", "cannot import protocols.nowhere"),
    ],
)
def test_function_refuses_what_is_not_a_protocol_function(
    make_tree: MakeTree, module: str, qualname: str, message: str
) -> None:
    tree = make_tree("refuse", protocol_tree("1.0.0"))
    with pytest.raises(ProtocolLoadFailed, match=re.escape(message)):
        tree.function(module, qualname)


def test_unload_forgets_every_module_of_the_tree(make_tree: MakeTree) -> None:
    keep = make_tree("keep", protocol_tree("1.0.0"))
    drop = make_tree("drop", protocol_tree("2.0.0"))
    keep.function("protocols.mod", "f")
    first = drop.function("protocols.mod", "f")
    assert any(n.startswith(drop.package) for n in sys.modules)
    drop.unload()
    assert not any(n == drop.package or n.startswith(f"{drop.package}.") for n in sys.modules)
    assert f"{keep.package}.protocols.mod" in sys.modules
    assert drop.function("protocols.mod", "f") is not first  # imported afresh
